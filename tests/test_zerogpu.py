"""The hosted Space, emulated on a CPU: the real app (app.py) in a subprocess, driven through gradio_client, with
ZeroGPU on (spaces' own forked, reused worker; only the scheduler's HTTP client and the CUDA hand-over stubbed, see
zerogpu_app.py) and off (a dedicated GPU or a CPU: the same code in the handler's thread).

Every backend — the built-in model and the tiny random hub models saved in their real layouts — returns an mp4;
three calls in a row reuse one worker; Stop ends the worker's job within a step and the next call works; a cancelled
call frees the worker; a mode and a sampler switched mid-run reach the running worker and its manifest shows the
steps that used them; the duration asked of the scheduler is the request's own estimate.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vdemo.cost import request_seconds

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parent.parent
HUB = ("animatediff", "zeroshot", "svd", "svd-xt", "anyflow-far", "wan", "wan-vace")
START_TIMEOUT_S = 240
LIMIT_S = 40  # the Space's GPU seconds per run


def settings(backend: str, steps: int = 2, frames: int = 4, mode: str = "full", sampler: str = "DDIM") -> list:
    return [backend, mode, sampler, steps, 3.0, frames, 8, 1, False]  # ..., guidance, frames, fps, seed, random


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=["on", "off"], ids=["zerogpu", "dedicated"])
def space(request, tiny_model_dir, hub_root, tmp_path_factory):
    """The app as a Space serves it: every backend loaded at start-up, hub frames 32×32 (VDEMO_<NAME>_SIZE)."""
    zero_gpu = request.param
    log = tmp_path_factory.mktemp("schedule") / "schedule.jsonl"
    env = {**os.environ, "VDEMO_TINY_DIR": str(tiny_model_dir), "VDEMO_SPACE_BACKENDS": "all",
           "VDEMO_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": str(REPO), "VDEMO_GPU_LIMIT_S": str(LIMIT_S)}
    for name in HUB:
        key = name.upper().replace("-", "_")
        env[f"VDEMO_{key}_DIR"] = str(hub_root)
        env[f"VDEMO_{key}_SIZE"] = "32x32"
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "zerogpu_app.py"), "--port", str(port),
                             "--zero-gpu", zero_gpu, "--schedule-log", str(log)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True)  # its own process group: the worker and manager end with it
    lines, url, deadline = [], None, time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("READY "):
            url = line.split()[1]
            break
    if url is None:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the app did not start:\n" + "".join(lines[-40:]))
    from gradio_client import Client

    yield {"client": Client(url, verbose=False), "url": url, "pid": proc.pid, "zero_gpu": zero_gpu == "on",
           "log": log}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the forked GPU worker and the live-settings manager, if still there
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("space-image") / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return str(path)


def manifest_of(result) -> dict:
    return result[4]


def check_mp4(result, frames: int) -> None:
    import imageio_ffmpeg

    video = result[2]
    path = Path(video["video"] if isinstance(video, dict) else video)
    reader = imageio_ffmpeg.read_frames(str(path))
    next(reader)
    assert sum(1 for _ in reader) == frames


def check_where_it_ran(space, manifest: dict) -> None:
    gpu = manifest["gpu"]
    assert gpu["zero_gpu"] is space["zero_gpu"]
    if space["zero_gpu"]:
        assert gpu["worker_pid"] != space["pid"], "on ZeroGPU the run happens in the forked worker"
    else:
        assert gpu["worker_pid"] == space["pid"], "off ZeroGPU the run happens in the app's own process"


@pytest.mark.parametrize("backend", ["tiny", "tiny-v2", "animatediff", "zeroshot"])
def test_text_backends_return_an_mp4(space, backend):
    result = space["client"].predict("a red circle moves right", False, *settings(backend), api_name="/text_to_video")
    manifest = manifest_of(result)
    assert manifest["backend"] == backend and manifest["timings"]["steps_done"] == 2
    check_mp4(result, 4)
    check_where_it_ran(space, manifest)


@pytest.mark.parametrize("backend", ["svd", "svd-xt"])
def test_image_backends_return_an_mp4(space, backend, image_file):
    from gradio_client import handle_file

    result = space["client"].predict("", handle_file(image_file), *settings(backend, mode="temporal",
                                                                               sampler="Euler"),
                                     api_name="/image_to_video")
    assert manifest_of(result)["backend"] == backend
    check_mp4(result, 4)
    check_where_it_ran(space, manifest_of(result))


def test_causal_backend_streams_its_chunks_from_the_worker(space):
    """AnyFlow-FAR's finished chunks (ChunkDone events) cross from the worker while it runs and show as the clip so
    far; its mp4 has the requested frames."""
    job = space["client"].submit("a red circle moves right", False,
                                 *settings("anyflow-far", frames=5, mode="causal", sampler="Euler"),
                                 api_name="/text_to_video")
    result = job.result(timeout=180)
    statuses = [output[0] for output in job.outputs()]
    assert [s.split("**")[1] for s in statuses if "chunk" in s and "done" in s] == ["chunk 1/2 done", "chunk 2/2 done"]
    manifest = manifest_of(result)
    assert manifest["backend"] == "anyflow-far" and manifest["chunks"]["partition"] == [1, 1]
    check_mp4(result, 5)
    check_where_it_ran(space, manifest)


def test_wan_text_and_vace_pose_run_in_the_worker(space):
    """Wan 2.1 (a 4k + 1-frame model: 5 generated, the 4 asked for returned) from text, and VACE from a pose preset
    as its control video, both through the GPU entry point."""
    text = space["client"].predict("a red circle moves right", False, *settings("wan", sampler="UniPC"),
                                   api_name="/text_to_video")
    assert manifest_of(text)["frames"] == {"requested": 4, "generated": 5, "latent": 2}
    pose = space["client"].predict("a person walks", "Preset", "walk", None, None,
                                   *settings("wan-vace", mode="causal", sampler="DPM++ 2M"), api_name="/pose_to_video")
    assert manifest_of(pose)["vace"]["control"] == "pose" and manifest_of(pose)["attention_modes_used"] == ["causal"]
    for result in (text, pose):
        check_mp4(result, 4)
        check_where_it_ran(space, manifest_of(result))


@pytest.mark.parametrize("backend", ["animatediff", "zeroshot"])
def test_controlnets_were_loaded_at_start_up(space, backend):
    """Pose through a ControlNet that the Space loaded before launch (nothing loads inside GPU time)."""
    result = space["client"].predict("a person walks", "Preset", "walk", None, None, *settings(backend),
                                     api_name="/pose_to_video")
    assert "controlnet_pose" in manifest_of(result)["models"]
    check_mp4(result, 4)


def test_three_calls_in_a_row_reuse_the_worker(space):
    pids = []
    for seed in range(3):
        args = settings("tiny")
        args[7] = seed
        result = space["client"].predict("a blue square moves up", False, *args, api_name="/text_to_video")
        pids.append(manifest_of(result)["gpu"]["worker_pid"])
    assert len(set(pids)) == 1, f"one worker for all three calls, got pids {pids}"


def _wait_for_steps(job, steps: int, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if len(job.outputs()) >= 1 + steps:  # "starting…", then one output per step
            return
        if job.done():
            pytest.fail(f"the run ended before step {steps}: {job.outputs()[-1:]}")
        time.sleep(0.05)
    pytest.fail(f"no step {steps} within {timeout_s} s")


def test_stop_ends_the_workers_job_within_a_step_and_the_next_call_works(space):
    from gradio_client import Client

    client = Client(space["url"], verbose=False)  # its own session: Stop reaches only this session's run
    job = client.submit("a red circle moves right", False, *settings("tiny", steps=60, frames=8),
                        api_name="/text_to_video")
    _wait_for_steps(job, 2)
    seen = len(job.outputs()) - 1
    client.predict(api_name="/stop")
    manifest = manifest_of(job.result(timeout=120))
    assert manifest["stopped"] is True
    assert manifest["timings"]["steps_done"] <= seen + 2, "the worker stops within a step of the click"
    after = client.predict("a red circle moves right", False, *settings("tiny"), api_name="/text_to_video")
    assert manifest_of(after)["stopped"] is False and manifest_of(after)["timings"]["steps_done"] == 2
    assert manifest_of(after)["gpu"]["worker_pid"] == manifest["gpu"]["worker_pid"]


def test_a_cancelled_call_frees_the_worker(space):
    from gradio_client import Client

    client = Client(space["url"], verbose=False)
    job = client.submit("a green triangle moves left", False, *settings("tiny", steps=80, frames=8),
                        api_name="/text_to_video")
    _wait_for_steps(job, 2)
    job.cancel()  # Gradio closes the handler's generator: spaces sets the worker's stop event
    started = time.perf_counter()
    after = client.predict("a green triangle moves left", False, *settings("tiny"), api_name="/text_to_video")
    assert manifest_of(after)["timings"]["steps_done"] == 2
    assert time.perf_counter() - started < 30, "the cancelled job must not keep the worker busy for 80 steps"


@pytest.mark.parametrize("backend", ["tiny", "animatediff"])
def test_mode_and_sampler_switched_mid_run_reach_the_worker(space, backend):
    from gradio_client import Client

    client = Client(space["url"], verbose=False)
    job = client.submit("a red circle moves right", False, *settings(backend, steps=40, frames=4, mode="full",
                                                                      sampler="DDIM"),
                        api_name="/text_to_video")
    _wait_for_steps(job, 2)
    client.predict("causal", api_name="/set_attention_mode")
    client.predict("Euler", api_name="/set_sampler")
    steps = manifest_of(job.result(timeout=180))["steps"]
    assert len(steps) == 40 and steps[0]["mode"] == "full" and steps[0]["sampler"] == "DDIM"
    assert steps[-1]["mode"] == "causal" and steps[-1]["sampler"] == "Euler", "the switch reached the worker"
    switched = next(i for i, s in enumerate(steps) if s["mode"] == "causal")
    assert all(s["mode"] == "full" for s in steps[:switched]) and all(s["mode"] == "causal" for s in steps[switched:])


def test_requested_duration_is_the_requests_estimate(space):
    """The scheduler is asked for the estimate of this very request (vdemo.cost), not a fixed default."""
    from vdemo.backends import load_backend
    from vdemo.pipeline import GenerationRequest

    before = space["log"].read_text().count("\n") if space["log"].exists() else 0
    space["client"].predict("a red circle moves right", False, *settings("tiny", steps=7, frames=12),
                            api_name="/text_to_video")
    lines = space["log"].read_text().splitlines() if space["log"].exists() else []
    entries = [json.loads(line) for line in lines[before:]]
    if not space["zero_gpu"]:
        assert entries == [], "off ZeroGPU spaces.GPU is a plain call: no scheduler is asked"
        return
    expected = request_seconds(load_backend("tiny"), GenerationRequest(num_frames=12, num_steps=7, sampler="DDIM",
                                                                       attention_mode="full"))
    assert [e["duration_s"] for e in entries] == [expected]


def test_errors_are_one_line_and_the_app_stays_healthy(space):
    from gradio_client import Client

    client = Client(space["url"], verbose=False)
    with pytest.raises(Exception) as err:  # gradio_client raises AppError with the message
        client.predict("a red circle", False, *settings("tiny", frames=500), api_name="/text_to_video")
    assert "greater than maximum value 32" in str(err.value)  # Gradio's own slider check, one line
    with pytest.raises(Exception) as err:
        client.predict("a" * 600, False, *settings("tiny"), api_name="/text_to_video")
    assert "prompt must be at most 500 characters, got 600" in str(err.value)
    with pytest.raises(Exception) as err:
        client.predict("a red circle", False, *settings("svd"), api_name="/text_to_video")
    assert "does not support text conditioning" in str(err.value)
    ok = client.predict("a red circle moves right", False, *settings("tiny"), api_name="/text_to_video")
    assert manifest_of(ok)["timings"]["steps_done"] == 2


def test_a_request_over_the_limit_is_refused_before_any_gpu_time(space):
    before = space["log"].read_text() if space["log"].exists() else ""
    with pytest.raises(Exception) as err:
        space["client"].predict("a red circle moves right", False, *settings("tiny", steps=100, frames=32),
                                api_name="/text_to_video")
    message = str(err.value)
    assert f"over this Space's {LIMIT_S} s limit per run" in message and "these would fit:" in message
    assert (space["log"].read_text() if space["log"].exists() else "") == before, "no GPU time was asked for"


def test_the_page_on_a_zerogpu_space(space, tmp_path):
    """As a visitor sees it: the GPU-time estimate next to Generate, previews streaming from the worker, Stop, and a
    request over the limit refused with its message visible as text."""
    if not space["zero_gpu"]:
        pytest.skip("the estimate and the worker exist only on a ZeroGPU Space")  # the dedicated page: browser tests
    from playwright.sync_api import sync_playwright
    from test_app_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, set_number

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.set_default_timeout(60_000)
        page.goto(space["url"])
        page.wait_for_selector("#vd-generate-text")
        estimate = "(text) => (document.querySelector('#vd-gpu-estimate')?.innerText || '').includes(text)"
        page.wait_for_function(estimate, arg="GPU time")
        set_number(page, "vd-steps", 60)
        set_number(page, "vd-frames", 8)
        page.wait_for_function(estimate, arg="≈ 17 s")  # tiny-v2 (the page opens on it): 60 steps × 8 frames, 128 px
        page.click("#vd-generate-text")
        page.wait_for_function("() => document.querySelector('#vd-status').innerText.includes('step 3/')")
        page.click("#vd-stop")
        page.wait_for_function("() => document.querySelector('#vd-status').innerText.includes('stopped')")
        page.screenshot(path=str(tmp_path / "zerogpu-stopped.png"))
        set_number(page, "vd-steps", 100)
        set_number(page, "vd-frames", 32)
        page.wait_for_function(estimate, arg="try ")
        page.click("#vd-generate-text")
        message = page.get_by_text(f"over this Space's {LIMIT_S} s limit per run").first
        message.wait_for(state="visible")
        print("refusal shown in:", message.evaluate("e => e.closest('[class]').className"), message.bounding_box())
        page.screenshot(path=str(tmp_path / "zerogpu-refused.png"))
        browser.close()
    print(f"screenshots in {tmp_path}")
