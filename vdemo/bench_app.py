"""Benchmarks of the running app, as users meet it: the queue's honesty and resource use over many generations.

    python -m vdemo.bench queue --users 8     # every waiting user's first estimate vs the wait they really had
    python -m vdemo.bench soak --gens 200     # RSS, open files, threads, disk after warm-up and at the end

Both start `python app.py` serving one built-in model (`--backend`; default: the default, tiny-v2) in its own process
on a free local port, drive it through `gradio_client` as API users would, and measure that process from outside.
Runs are small (a few steps, 4-8 frames) so that what is measured is the app, not the model.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from vdemo.config import DEFAULT_BACKEND

PROMPT = "a red circle moves right on a black background"
SETTLE_S = 3.0  # before a resource sample
WAIT_RE = re.compile(r"(\d+)(?:st|nd|rd|th) in line, about ([\d.]+) s")


@contextmanager
def app_process(env: dict[str, str] | None = None, backend: str = DEFAULT_BACKEND):
    """`python app.py` serving one built-in model in its own process on a free local port, as a user starts it; yields
    (url, pid). Measured from outside, so the clients' own threads and sockets are not counted."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GRADIO_SERVER_PORT": str(port), "VDEMO_SPACE_BACKENDS": backend,
                                 **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/config", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not start (exit code {proc.poll()})") from None
                time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def text_args(steps: int, frames: int, seed: int = 1, backend: str = DEFAULT_BACKEND) -> list:
    """The Text tab's API inputs for a run on `backend` at its own guidance (its size is the page's)."""
    from vdemo.backends import backend_info

    guidance = backend_info(backend).default_guidance
    return [PROMPT, True, backend, "full", "DDIM", steps, guidance, frames, 8, seed, False]


# ------------------------------------------------------------------------------------------------ queue honesty
def measure_queue(users: int = 8, steps: int = 8, frames: int = 8, warm_runs: int = 3,
                  backend: str = DEFAULT_BACKEND) -> dict:
    """`warm_runs` runs alone (the app measures its step times, as a running app has), then `users` clients submit at
    once. For each user:
    the first wait the status promised (and their place), and the real wait (submit → the run's "starting" status)."""
    from gradio_client import Client

    with app_process(backend=backend) as (url, _pid):
        client = Client(url, verbose=False)
        for i in range(warm_runs):
            client.predict(*text_args(steps, frames, 100 + i, backend), api_name="/text_to_video")
        results: list[dict] = [{} for _ in range(users)]
        barrier = threading.Barrier(users)

        def user(i: int) -> None:
            c = Client(url, verbose=False)
            barrier.wait()
            submitted = time.perf_counter()
            job = c.submit(*text_args(steps, frames, i, backend), api_name="/text_to_video")
            promised = started = None
            seen = 0
            while not job.done() or seen < len(job.outputs()):
                outputs = job.outputs()
                for out in outputs[seen:]:
                    status = out[0] if isinstance(out, (list, tuple)) else ""
                    match = WAIT_RE.search(status or "")
                    if match and promised is None:
                        promised = (int(match[1]), float(match[2]), time.perf_counter() - submitted)
                    if started is None and str(status).startswith("starting"):
                        started = time.perf_counter() - submitted
                seen = len(outputs)
                time.sleep(0.05)
            job.result()
            results[i] = {"place": promised[0] if promised else 1, "promised_s": promised[1] if promised else 0.0,
                          "promised_at_s": round(promised[2], 2) if promised else 0.0,
                          "waited_s": round(started or 0.0, 2), "total_s": round(time.perf_counter() - submitted, 2)}

        threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = sorted(results, key=lambda r: r["place"])
    for r in rows:  # the promise was made promised_at_s after submitting: compare it with the wait left then
        left = r["waited_s"] - r["promised_at_s"]
        r["error"] = round((r["promised_s"] - left) / left, 3) if r["place"] > 1 and left > 0 else None
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    return {"backend": backend, "users": users, "steps": steps, "frames": frames, "rows": rows,
            "max_abs_error": max(errors) if errors else None,
            "median_abs_error": statistics.median(errors) if errors else None}


def format_queue(result: dict) -> str:
    lines = [f"{result['users']} users at once, {result['steps']} steps × {result['frames']} frames each "
             f"({result.get('backend', 'tiny')}); the first estimate each waiting user read vs the wait they had "
             "from then",
             f"{'place':>5} {'promised s':>10} {'real s':>8} {'error':>7} {'total s':>8}"]
    for r in result["rows"]:
        real = r["waited_s"] - r["promised_at_s"]
        error = "–" if r["error"] is None else f"{r['error']:+.0%}"
        lines.append(f"{r['place']:>5} {r['promised_s']:>10.1f} {real:>8.1f} {error:>7} {r['total_s']:>8.1f}")
    if result["max_abs_error"] is not None:
        lines.append(f"max |error| {result['max_abs_error']:.0%}, median {result['median_abs_error']:.0%}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- soak
def resources(pid: int, folders: list[Path]) -> dict:
    """The process's RSS (MiB), open file descriptors, threads, and the bytes under `folders`."""
    import psutil

    proc = psutil.Process(pid)
    disk = 0
    for folder in folders:
        if folder.is_dir():
            disk += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"rss_mib": round(proc.memory_info().rss / 2**20, 1), "open_files": proc.num_fds(),
            "threads": proc.num_threads(), "disk_mib": round(disk / 2**20, 2)}


def soak(gens: int = 200, users: int = 8, steps: int = 2, frames: int = 4, cancel_every: int = 10,
         warm_up: int = 20, disk_cap_mb: float | None = 16, log=print, backend: str = DEFAULT_BACKEND) -> dict:
    """Warm-up (`warm_up` generations, then `users` at once), then `gens` generations one after another (every
    `cancel_every`-th submitted and cancelled after its first preview), `users` at once again, and `warm_up` more;
    the app's resources sampled after the warm-up, every 50 generations and at the end. `disk_cap_mb` sets
    the run-folder and Gradio-cache caps (`VDEMO_RUNS_MAX_MB`, `VDEMO_CACHE_MAX_MB`) low enough that 200 small
    generations reach them: what is shown is that disk use stops growing at the cap (None: the app's defaults)."""
    from gradio.utils import get_upload_folder
    from gradio_client import Client

    from vdemo.ui.run import CACHE_MAX_MB_ENV, CACHE_MIN_AGE_ENV, RUNS_DIR, RUNS_MAX_MB_ENV

    env = {} if disk_cap_mb is None else {RUNS_MAX_MB_ENV: str(disk_cap_mb), CACHE_MAX_MB_ENV: str(disk_cap_mb),
                                          CACHE_MIN_AGE_ENV: "0"}  # a short soak: results may go at once

    folders = [RUNS_DIR, Path(get_upload_folder())]
    samples, cancelled = [], 0

    def sample(label: str) -> None:
        time.sleep(SETTLE_S)  # closed connections and finished handler threads settle
        samples.append({"after": label, **resources(pid, folders)})
        log(f"after {label}: {samples[-1]}")

    with app_process(env, backend) as (url, pid):
        client = Client(url, verbose=False)

        def sequential(count: int, first_seed: int, cancel: bool) -> int:
            n = 0
            for i in range(count):
                if cancel and cancel_every and i % cancel_every == cancel_every - 1:
                    job = client.submit(*text_args(steps, frames, first_seed + i, backend), api_name="/text_to_video")
                    while not job.outputs() and not job.done():
                        time.sleep(0.02)
                    job.cancel()
                    n += 1
                else:
                    client.predict(*text_args(steps, frames, first_seed + i, backend), api_name="/text_to_video")
                if cancel and (i + 1) % 50 == 0:
                    sample(f"{i + 1} generations")
            return n

        def concurrent(first_seed: int) -> None:
            threads = [threading.Thread(target=lambda s=s: Client(url, verbose=False).predict(
                *text_args(steps, frames, first_seed + s, backend), api_name="/text_to_video")) for s in range(users)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        sequential(warm_up, 10_000, cancel=False)  # warm-up: one user, then `users` at once (thread pool, sockets)
        concurrent(20_000)
        sample(f"warm-up ({warm_up} + {users} concurrent)")
        cancelled = sequential(gens, 0, cancel=True)
        concurrent(30_000)
        sample(f"{gens} + {users} concurrent")
        sequential(warm_up, 40_000, cancel=False)
        sample(f"{gens} + {users} concurrent + {warm_up}")
    warm, end = samples[0], samples[-1]
    growth = {k: round(end[k] - warm[k], 2) for k in ("rss_mib", "open_files", "threads", "disk_mib")}
    return {"backend": backend, "gens": gens, "users": users, "cancelled": cancelled, "disk_cap_mb": disk_cap_mb,
            "samples": samples,
            "growth_after_warm_up": growth}
