"""Benchmarks, one subcommand each: measured time next to what theory predicts.

    python -m vdemo.bench attention                          # every mode, frames 8 16 32 × tokens 64 256 1024
    python -m vdemo.bench attention --frames 16 --tokens 256 --json
    python -m vdemo.bench pipeline                           # s per 16-frame clip, first preview, per mode/sampler
    python -m vdemo.bench backends                           # hub backends on a GPU space (downloads; not in CI)
    python -m vdemo.bench dit-attention                      # per mode at Wan 2.1 1.3B's real grid (32,760 tokens)
    python -m vdemo.bench dit-step                           # ms/step + peak memory per mode, Wan 1.3B random weights

`attention` times `vdemo.attention.attend` per mode (under torch.no_grad; one warm-up round per config, not counted)
and prints the measured speedup over `full` next to the theoretical one, P(full) / P(mode), where P is the number of
attention pairs (`vdemo.attention.pair_count`). Modes are timed round-robin (one run of each mode per round, the
order rotating from round to round) so that load from other processes hits every mode alike; ms is the median over
rounds and a speedup is full's ms / the mode's ms. Configs whose P·batch·heads exceeds --max-pairs are reported,
not run.

Subcommands live in `SUBCOMMANDS` (name -> (add_args, run)); add one there to extend the CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from vdemo.attention import attend, pair_count, parse_mode
from vdemo.config import ATTENTION_MODES


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1000.0


def warn_if_busy(log: Callable[[str], None]) -> None:
    """Say so loudly when other processes compete for the CPUs: then every ratio below is noise-bound."""
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 * cpus:
        log(f"WARNING: load average {load:.1f} on {cpus} CPUs; other processes compete, so timings are noisy and the "
            "modes made of several kernel calls (causal, sparse_causal) suffer most. Re-run on an idle machine "
            "(or compare with --threads 1).")


# ------------------------------------------------------------------------------------------------------ attention
def bench_attention(
    frames: Sequence[int] = (8, 16, 32),
    tokens: Sequence[int] = (64, 256, 1024),
    modes: Sequence[str] = ATTENTION_MODES,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 32,
    repeats: int | None = None,
    budget_s: float = 4.0,
    max_pairs: float = 1e10,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time `attend` per mode and config; one row per (frames, tokens, mode).

    repeats=None picks it per config: as many rounds as fit in budget_s (1–15); ms is the median over rounds.
    """
    modes = [parse_mode(m) for m in modes]
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    with torch.no_grad():
        for num_frames in frames:
            for num_tokens in tokens:
                shape = (batch, heads, num_frames * num_tokens, head_dim)
                q, k, v = (torch.randn(shape, generator=gen).to(dev, dtype) for _ in range(3))  # (B, h, F·N, d)
                runnable = [m for m in modes if pair_count(m, num_frames, num_tokens) * batch * heads <= max_pairs]
                peaks = {m: _peak_mb(partial(attend, q, k, v, m, num_frames), dev) for m in runnable}  # warm-up
                times = _time_round_robin(q, k, v, runnable, num_frames, repeats, budget_s, dev)
                rows += _attention_rows(times, peaks, modes, num_frames, num_tokens, max_pairs)
                if log:
                    rounds = max((len(t) for t in times.values()), default=0)
                    log(f"  frames {num_frames:>3} tokens {num_tokens:>5}: {rounds} rounds")
    return rows


def _peak_mb(fn: Callable[[], object], dev: torch.device) -> float | None:
    """Run fn once (the warm-up); on CUDA return the peak memory it allocated beyond what was there, in MiB."""
    if dev.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    fn()
    torch.cuda.synchronize(dev)
    return (torch.cuda.max_memory_allocated(dev) - before) / 2**20


def _time_round_robin(q, k, v, modes, num_frames, repeats, budget_s, dev) -> dict:
    """{mode: [ms, ...]}: rounds of one run per mode; the number of rounds is `repeats` or fits `budget_s`."""
    times = {m: [] for m in modes}
    rounds, spent_s = 0, 0.0
    while modes:
        for mode in modes[rounds % len(modes) :] + modes[: rounds % len(modes)]:  # rotate: no mode always follows full
            times[mode].append(_time_once_ms(partial(attend, q, k, v, mode, num_frames), dev))
        rounds += 1
        spent_s += sum(t[-1] for t in times.values()) / 1000.0
        if repeats is not None:
            if rounds >= repeats:
                break
        elif rounds >= 15 or spent_s * (rounds + 1) / rounds > budget_s:
            break
    return times


def _attention_rows(times: dict, peaks: dict, modes, num_frames: int, num_tokens: int, max_pairs: float) -> list[dict]:
    full = parse_mode("full")
    full_pairs = pair_count(full, num_frames, num_tokens)
    full_ms = statistics.median(times[full]) if times.get(full) else None
    rows = []
    for mode in modes:
        pairs = pair_count(mode, num_frames, num_tokens)
        ms = statistics.median(times[mode]) if times.get(mode) else None
        row = {
            "mode": mode.value, "frames": num_frames, "tokens": num_tokens, "ms": ms, "pairs": pairs,
            "speedup_vs_full": full_ms / ms if ms and full_ms else None,
            "theoretical_speedup_vs_full": full_pairs / pairs,
            "repeats": len(times.get(mode, [])),
            "peak_mb": peaks.get(mode),  # CUDA only
        }
        if ms is None:
            row["note"] = f"skipped: pairs x batch x heads > --max-pairs {max_pairs:.0e}"
        rows.append(row)
    return rows


def format_attention_table(rows: list[dict]) -> str:
    """Plain-text table, one line per row; efficiency = measured speedup / theoretical speedup."""
    with_peak = any(r.get("peak_mb") is not None for r in rows)
    lines = [f"{'frames':>6} {'tokens':>6}  {'mode':<13} {'ms':>10} {'pairs':>14} {'speedup':>8} {'theory':>8} "
             f"{'efficiency':>10} {'runs':>4}" + (f" {'peak MiB':>9}" if with_peak else "")]
    for r in rows:
        ms = f"{r['ms']:.2f}" if r["ms"] is not None else "skipped"
        sp = f"{r['speedup_vs_full']:.2f}" if r["speedup_vs_full"] is not None else "-"
        eff = f"{r['speedup_vs_full'] / r['theoretical_speedup_vs_full']:.2f}" if r["speedup_vs_full"] else "-"
        line = (f"{r['frames']:>6} {r['tokens']:>6}  {r['mode']:<13} {ms:>10} {r['pairs']:>14,} {sp:>8} "
                f"{r['theoretical_speedup_vs_full']:>8.2f} {eff:>10} {r['repeats']:>4}")
        if with_peak:
            line += f" {r['peak_mb']:>9.1f}" if r.get("peak_mb") is not None else f" {'-':>9}"
        lines.append(line)
    return "\n".join(lines)


def add_attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256, 1024], help="spatial tokens per frame")
    p.add_argument("--modes", nargs="+", default=list(ATTENTION_MODES), choices=ATTENTION_MODES)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None, help="rounds per config (default: as many as fit --budget-s)")
    p.add_argument("--budget-s", type=float, default=4.0, help="time per config when --repeats is not given")
    p.add_argument("--max-pairs", type=float, default=1e10, help="skip calls computing more pairs×batch×heads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")


def run_attention(args: argparse.Namespace) -> int:
    """time each attention mode against full attention"""
    if args.threads:
        torch.set_num_threads(args.threads)
    if "full" not in args.modes:
        args.modes = ["full", *args.modes]  # speedups are relative to full
    log = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    if log:
        log(f"attention: batch {args.batch}, heads {args.heads}, head_dim {args.head_dim}, {args.dtype}, "
            f"{args.device}, {torch.get_num_threads()} CPU threads")
        warn_if_busy(log)
    rows = bench_attention(
        frames=args.frames, tokens=args.tokens, modes=args.modes, batch=args.batch, heads=args.heads,
        head_dim=args.head_dim, repeats=args.repeats, budget_s=args.budget_s, max_pairs=args.max_pairs,
        device=args.device, dtype=getattr(torch, args.dtype), log=log,
    )
    print(json.dumps(rows, indent=1) if args.json else format_attention_table(rows))
    return 0


# ------------------------------------------------------------------------------------------------------- pipeline
class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms by a thread), in MiB."""

    def __enter__(self) -> PeakRSS:
        import threading

        import psutil

        self._proc, self._stop, self.peak_mb = psutil.Process(), threading.Event(), 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)
            self._stop.wait(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def time_clip(pipe, request) -> dict:
    """Seconds for one whole clip and to the first preview, and the run's peak RSS."""
    from vdemo.pipeline import Progress

    with PeakRSS() as mem:
        start = time.perf_counter()
        first = None
        for event in pipe.generate(request):
            if first is None and isinstance(event, Progress):
                first = time.perf_counter() - start
        total = time.perf_counter() - start
    return {"clip_s": total, "first_preview_s": first, "peak_rss_mb": mem.peak_mb}


def bench_pipeline(pipe, *, repeats: int = 5, modes: Sequence[str] = ATTENTION_MODES,
                   samplers: Sequence[str] = (), num_frames: int = 16, num_steps: int | None = None,
                   log: Callable[[str], None] | None = None) -> list[dict]:
    """End-to-end clips at the backend's defaults (frame size, steps unless given, guidance, mode, sampler): the
    default row, then one per attention mode and per sampler."""
    from vdemo.pipeline import GenerationRequest

    backend = pipe.backend
    num_steps = num_steps or backend.default_steps
    height, width = backend.default_size
    prompt = "a red circle moves right on a black background"
    mode0, sampler0 = backend.default_attention_mode, backend.default_sampler
    cases = [("default", mode0, sampler0, repeats)]
    cases += [("mode", m, sampler0, max(1, repeats // 2)) for m in modes]
    cases += [("sampler", mode0, s, 1) for s in samplers]

    def request(**kw) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, num_frames=num_frames, height=height, width=width,
                                 guidance=backend.default_guidance, **kw)

    time_clip(pipe, request(num_steps=2))  # warm-up
    rows = []
    for kind, mode, sampler, n in cases:
        runs = [time_clip(pipe, request(num_steps=num_steps, attention_mode=mode, sampler=sampler, seed=i))
                for i in range(n)]
        row = {"case": kind, "mode": mode, "sampler": sampler, "frames": num_frames, "steps": num_steps,
               "repeats": n, "clip_s": statistics.median(r["clip_s"] for r in runs),
               "first_preview_s": statistics.median(r["first_preview_s"] for r in runs),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        rows.append(row)
        if log:
            log(json.dumps(row))
    return rows


def format_pipeline_table(rows: list[dict]) -> str:
    lines = [f"{'case':<8} {'mode':<13} {'sampler':<16} {'clip s':>7} {'1st preview s':>13} {'peak RSS MiB':>12} "
             f"{'runs':>4}"]
    lines += [f"{r['case']:<8} {r['mode']:<13} {r['sampler']:<16} {r['clip_s']:>7.2f} {r['first_preview_s']:>13.3f} "
              f"{r['peak_rss_mb']:>12.0f} {r['repeats']:>4}" for r in rows]
    return "\n".join(lines)


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=5, help="clips for the default row (median reported)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="default: the backend's (tiny: 20, tiny-v2: 10)")
    p.add_argument("--modes", nargs="*", default=list(ATTENTION_MODES), choices=ATTENTION_MODES)
    p.add_argument("--samplers", nargs="*", default=None, help="samplers to time (default: all the backend has)")
    from vdemo.backends import BUILTIN, DEFAULT_BACKEND

    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BUILTIN, help="which built-in model")
    p.add_argument("--model-dir", default=None, help="built-in model folder (default: assets/tiny, assets/tiny_v2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")


def run_pipeline(args: argparse.Namespace) -> int:
    """end-to-end seconds per clip and to first preview on the built-in model"""
    from vdemo.backends import load_backend
    from vdemo.pipeline import VideoPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = VideoPipeline(load_backend(args.backend, args.model_dir))
    samplers = pipe.backend.samplers if args.samplers is None else args.samplers
    log = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    if log:
        log(f"pipeline: {args.backend} backend ({pipe.backend.describe()['compute']}), {torch.get_num_threads()} "
            f"CPU threads")
        warn_if_busy(log)
    rows = bench_pipeline(pipe, repeats=args.repeats, modes=args.modes, samplers=samplers, num_frames=args.frames,
                          num_steps=args.steps, log=log)
    print(json.dumps(rows, indent=1) if args.json else format_pipeline_table(rows))
    return 0


# ------------------------------------------------------------------------------------------------------- backends
def add_backends_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", help="hub backends to time (default: all registered)")
    p.add_argument("--out", default="runs/bench_backends", help="writes <out>.json and <out>.md")


def run_backends(args: argparse.Namespace) -> int:
    """download (when online) and time each hub backend at its default settings (GPU; not part of CI)"""
    from vdemo.backends.hub.bench import run_backends_bench

    paths = run_backends_bench(args.names or None, args.out)
    print(Path(paths["markdown"]).read_text())
    return 0


# ------------------------------------------------------------------------------------------------------- GPU time
def add_gpu_time_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=float, default=None,
                   help="seconds per run a Space allows (default: $VDEMO_GPU_LIMIT_S, else ZeroGPU's 120)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a markdown table")


def gpu_time_rows(limit_s: float) -> list[dict]:
    """Each backend's estimated GPU seconds per run at its defaults (vdemo.cost), per attention mode."""
    from vdemo.backends import backend_info, backend_names
    from vdemo.cost import fitting_settings, model_calls, request_seconds
    from vdemo.pipeline import GenerationRequest

    rows = []
    for name in backend_names():
        backend = caps = backend_info(name)
        height, width = caps.default_size
        frames = caps.default_num_frames
        for mode in caps.attention_modes:
            req = GenerationRequest(num_frames=frames, height=height, width=width, num_steps=caps.default_steps,
                                    sampler=caps.default_sampler, attention_mode=mode)
            seconds = request_seconds(backend, req)
            rows.append({"backend": name, "mode": mode, "default_mode": mode == caps.default_attention_mode,
                         "frames": frames, "size": f"{width}×{height}", "steps": req.num_steps,
                         "sampler": req.sampler, "model_calls": model_calls(req.sampler, req.num_steps),
                         "gpu_s": seconds, "fits": seconds <= limit_s,
                         "would_fit": "" if seconds <= limit_s else ", ".join(fitting_settings(backend, req, limit_s))})
    return rows


def run_gpu_time(args: argparse.Namespace) -> int:
    """estimated GPU seconds per run of every backend at its defaults, per mode, against a Space's limit"""
    from vdemo.cost import ZERO_GPU_LIMIT_S, gpu_limit_s

    limit = args.limit or gpu_limit_s() or ZERO_GPU_LIMIT_S
    rows = gpu_time_rows(limit)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"| backend | mode | frames | size | steps ({'sampler'}) | model calls | GPU s | fits {limit:g} s? |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = f"**{r['mode']}** (default)" if r["default_mode"] else r["mode"]
        fits = "yes" if r["fits"] else f"no — {r['would_fit'] or 'nothing single fits'}"
        print(f"| {r['backend']} | {mode} | {r['frames']} | {r['size']} | {r['steps']} ({r['sampler']}) | "
              f"{r['model_calls']} | {r['gpu_s']} | {fits} |")
    return 0


# -------------------------------------------------------------------------------------------------- DiT attention
WAN_1_3B = {"heads": 12, "head_dim": 128, "layers": 30, "calls_per_step": 2}  # Wan 2.1 T2V 1.3B; 2 calls: CFG
WAN_VAE_STRIDE = (4, 8, 8)  # Wan VAE: 4× in time (plus the first frame), 8× in space
WAN_PATCH = (1, 2, 2)


def wan_token_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Wan 2.1's self-attention grid in tokens: (frames-1)/4+1 latent frames, then patch (1, 2, 2) over H/8 × W/8."""
    st, sh, sw = WAN_VAE_STRIDE
    if (frames - 1) % st or height % (sh * WAN_PATCH[1]) or width % (sw * WAN_PATCH[2]):
        raise ValueError(f"Wan needs frames = 4k+1 and height, width divisible by 16, got {frames}, {height}×{width}")
    return ((frames - 1) // st + 1) // WAN_PATCH[0], height // sh // WAN_PATCH[1], width // sw // WAN_PATCH[2]


def bench_dit_attention(frames: int = 81, height: int = 480, width: int = 832, heads: int = 1,
                        grid: Sequence[int] | None = None, repeats: int = 1, seed: int = 0) -> list[dict]:
    """Per mode: pairs and FLOPs of Wan 2.1 1.3B's self-attention at a video size, next to the measured time of one
    `attend` call (float32, `heads` × 128 on this device's CPU) at that grid, or at `grid` (F, H, W tokens) if given."""
    real = wan_token_grid(frames, height, width)
    measured = tuple(grid) if grid else real
    fm, hm, wm = measured
    model = WAN_1_3B
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, fm * hm * wm, model["head_dim"], generator=gen) for _ in range(3))  # (1, h, S, d)
    modes = [parse_mode(m) for m in ATTENTION_MODES]
    cpu = torch.device("cpu")
    with torch.no_grad():
        warm = min(fm, 2) * hm * wm  # warm-up on two frames: the full grid's full attention is too dear to run twice
        for mode in modes:
            attend(q[:, :, :warm], k[:, :, :warm], v[:, :, :warm], mode, min(fm, 2))
        times = _time_round_robin(q, k, v, modes, fm, repeats, 0.0, cpu)
    full_pairs, full_ms = pair_count("full", real[0], real[1] * real[2]), statistics.median(times[parse_mode("full")])
    rows = []
    for mode in modes:
        pairs, ms = pair_count(mode, real[0], real[1] * real[2]), statistics.median(times[mode])
        measured_pairs = pair_count(mode, fm, hm * wm)
        scale = pairs / measured_pairs  # 1 when the real grid was measured
        per_call = model["heads"] * model["layers"] * model["calls_per_step"]
        rows.append({
            "mode": mode.value, "grid": list(real), "measured_grid": list(measured), "pairs_per_head": pairs,
            "tflop_per_step": 4 * pairs * model["head_dim"] * per_call / 1e12,
            "pairs_ratio_vs_full": pairs / full_pairs, "ms": ms, "heads_measured": heads, "repeats": len(times[mode]),
            "measured_pairs_ratio_vs_full": measured_pairs / pair_count("full", fm, hm * wm),
            "time_ratio_vs_full": ms / full_ms,
            "projected_s_per_step": ms / 1000 * scale * per_call / heads,
        })
    return rows


def format_dit_attention_table(rows: list[dict]) -> str:
    real, measured = rows[0]["grid"], rows[0]["measured_grid"]
    other = real != measured  # then time/full sits next to the measured grid's pairs/full
    lines = [f"{'mode':<13} {'pairs/head':>15} {'TFLOP/step':>10} {'pairs/full':>10} {'ms/call':>10} "
             + (f"{'meas. pairs/full':>16} " if other else "") + f"{'time/full':>9} {'s/step (proj.)':>14}"]
    for r in rows:
        lines.append(f"{r['mode']:<13} {r['pairs_per_head']:>15,} {r['tflop_per_step']:>10.1f} "
                     f"{r['pairs_ratio_vs_full']:>10.3f} {r['ms']:>10.1f} "
                     + (f"{r['measured_pairs_ratio_vs_full']:>16.3f} " if other else "")
                     + f"{r['time_ratio_vs_full']:>9.3f} {r['projected_s_per_step']:>14.1f}")
    how = ("ms × 12 heads × 30 layers × 2 calls" if real == measured else
           f"measured on {'×'.join(map(str, measured))}, scaled to the real grid by pairs, × 12 heads × 30 layers × 2")
    lines.append(f"s/step (proj.) = {how} / {rows[0]['heads_measured']} measured head(s); self-attention only")
    return "\n".join(lines)


def add_dit_attention_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--heads", type=int, default=1, help="heads to time (× 128 dim); the projection scales to 12")
    p.add_argument("--grid", type=int, nargs=3, default=None, metavar=("F", "H", "W"),
                   help="time on this token grid instead of the real one (full attention at 32,760 tokens is slow)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per mode (the median is shown)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")


def run_dit_attention(args: argparse.Namespace) -> int:
    """attention pairs, FLOPs and measured time per mode at Wan 2.1 1.3B's real token grid"""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.json:
        grid = wan_token_grid(args.frames, args.height, args.width)
        measured = tuple(args.grid) if args.grid else grid
        print(f"Wan 2.1 T2V 1.3B, {args.width}×{args.height}, {args.frames} frames -> tokens "
              f"{'×'.join(map(str, grid))} = {math.prod(grid):,}; 12 heads × 128, 30 layers, 2 calls/step (CFG)\n"
              f"measured: one self-attention call, {args.heads} head(s) × 128, float32, grid "
              f"{'×'.join(map(str, measured))} = {math.prod(measured):,} tokens, {torch.get_num_threads()} CPU "
              f"threads, {args.repeats} run(s) per mode", file=sys.stderr, flush=True)
        warn_if_busy(lambda s: print(s, file=sys.stderr, flush=True))
    rows = bench_dit_attention(args.frames, args.height, args.width, args.heads, args.grid, args.repeats)
    print(json.dumps(rows, indent=1) if args.json else format_dit_attention_table(rows))
    return 0


# ------------------------------------------------------------------------------------------------------- DiT step
# Wan 2.1 T2V 1.3B's transformer, as diffusers' `WanTransformer3DModel` kwargs: diffusers'
# scripts/convert_wan_to_diffusers.py ("Wan-T2V-1.3B") and the Wan repo's wan/configs/wan_t2v_1_3B.py (dim 1536 =
# 12 heads × 128, ffn 8960, 30 layers, eps 1e-6); rope_max_seq_len is the class default, as in the hub's config.json.
WAN_T2V_1_3B_CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
}
WAN_TEXT_TOKENS = 512  # Wan's text_len: umt5-xxl prompt embeddings padded to 512 tokens (wan/configs/shared_config.py)
WAN_GUIDANCE = 5.0  # WanPipeline's default guidance_scale
CPU_MAX_TOKEN_LAYERS = 8192  # self-attention tokens × layers the CPU code-path check may take on


def build_wan_transformer(config: dict | None = None, layers: int | None = None, device: str = "cpu",
                          dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """`WanTransformer3DModel` from a config with random weights (no download), built on `device` and cast as
    `from_pretrained(torch_dtype=dtype)` casts: parameters under `_keep_in_fp32_modules` stay float32."""
    from diffusers import WanTransformer3DModel

    cfg = {**(config or WAN_T2V_1_3B_CONFIG), **({"num_layers": layers} if layers else {})}
    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3DModel(**cfg)  # an unknown key raises
    keep = model._keep_in_fp32_modules or []
    for name, param in model.named_parameters():
        if param.is_floating_point() and not any(m in name.split(".") for m in keep):
            param.data = param.data.to(dtype)
    return model.eval()


def dit_step_inputs(config: dict, frames: int, height: int, width: int, text_tokens: int = WAN_TEXT_TOKENS,
                    device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Random inputs of one WanPipeline step: latent (1, C, (frames-1)/4+1, H/8, W/8), a timestep, and the prompt's
    and negative prompt's text embeddings (1, text_tokens, text_dim)."""
    wan_token_grid(frames, height, width)  # validates the size
    gen = torch.Generator().manual_seed(seed)
    latent = (1, config["in_channels"], (frames - 1) // WAN_VAE_STRIDE[0] + 1,
              height // WAN_VAE_STRIDE[1], width // WAN_VAE_STRIDE[2])  # (B, C, F, H, W)
    text = (1, text_tokens, config["text_dim"])
    return {"latents": torch.randn(latent, generator=gen).to(device, dtype),
            "timestep": torch.tensor([500.0], device=device),
            "prompt_embeds": torch.randn(text, generator=gen).to(device, dtype),
            "negative_prompt_embeds": torch.randn(text, generator=gen).to(device, dtype)}


def dit_step(model: torch.nn.Module, inputs: dict, guidance: float = WAN_GUIDANCE) -> torch.Tensor:
    """One denoising step's model work as WanPipeline does it: a conditional and an unconditional forward, then CFG."""
    def forward(context: torch.Tensor) -> torch.Tensor:
        return model(hidden_states=inputs["latents"], timestep=inputs["timestep"], encoder_hidden_states=context,
                     return_dict=False)[0]

    cond, uncond = forward(inputs["prompt_embeds"]), forward(inputs["negative_prompt_embeds"])
    return uncond + guidance * (cond - uncond)  # (B, C, F, H, W) velocity


def _param_mib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


class _BlockClock:
    """Milliseconds spent in a transformer's blocks (first block's start to last block's end), summed over forwards:
    CUDA events on a GPU, so that it adds no synchronisation, perf_counter on a CPU. Splits a step's time into blocks
    (which scale with the layer count) and the rest (embeddings, patchify, head)."""

    def __init__(self, model: torch.nn.Module, dev: torch.device):
        self.dev, self.spans, self._start = dev, [], None
        model.blocks[0].register_forward_pre_hook(lambda *_: setattr(self, "_start", self._mark()))
        model.blocks[-1].register_forward_hook(lambda *_: self.spans.append((self._start, self._mark())))

    def _mark(self):
        if self.dev.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def take_ms(self) -> float:
        """The block time since the last call; call it after a synchronisation."""
        cuda = self.dev.type == "cuda"
        ms = sum(a.elapsed_time(b) if cuda else (b - a) * 1000.0 for a, b in self.spans)
        self.spans = []
        return ms


def bench_dit_step(frames: int = 81, height: int = 480, width: int = 832, layers: int | None = None,
                   modes: Sequence[str] = ATTENTION_MODES, repeats: int = 3, device: str = "cpu",
                   dtype: torch.dtype = torch.float32, config: dict | None = None,
                   text_tokens: int = WAN_TEXT_TOKENS, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> list[dict]:
    """Per mode: ms per denoising step (2 forwards, CFG) of Wan 2.1 1.3B built from its config with random weights
    and the grid processors installed; median of `repeats` after one warm-up step. On CUDA also the peak memory."""
    from vdemo.backends.hub.wan_attention import grid_pairs, install_grid_attention

    config = config or WAN_T2V_1_3B_CONFIG
    full_layers = config["num_layers"]
    layers = layers or full_layers
    if not 1 <= layers <= full_layers:
        raise ValueError(f"layers must be 1–{full_layers}, got {layers}")
    grid = wan_token_grid(frames, height, width)
    modes = [parse_mode(m) for m in dict.fromkeys(["full", *modes])]  # full first: ratios and diffs are against it
    dev = torch.device(device)
    model = build_wan_transformer(config, layers, device, dtype, seed)
    ctx = install_grid_attention(model)
    clock = _BlockClock(model, dev)
    inputs = dit_step_inputs(config, frames, height, width, text_tokens, device, dtype, seed)
    weights_mib = _param_mib(model)
    full_weights_mib = weights_mib + (full_layers - layers) * _param_mib(model.blocks[0])
    if log:
        log(f"  built {layers} of {full_layers} layers: {weights_mib:,.0f} MiB of weights ({full_weights_mib:,.0f} MiB "
            f"at {full_layers}); latent {tuple(inputs['latents'].shape)}, text {tuple(inputs['prompt_embeds'].shape)}")
    rows, full_out = [], None
    with torch.no_grad():
        for mode in modes:
            ctx.mode = mode
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            out = dit_step(model, inputs).float()  # the warm-up step, not timed
            full_out = out if full_out is None else full_out
            _sync(dev)
            clock.take_ms()
            ms, block_ms = [], []
            for _ in range(repeats):
                ms.append(_time_once_ms(partial(dit_step, model, inputs), dev))
                block_ms.append(clock.take_ms())
            step_ms, blocks_ms = statistics.median(ms), statistics.median(block_ms)
            peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
            rows.append({
                "mode": mode.value, "frames": frames, "height": height, "width": width, "grid": list(grid),
                "tokens": math.prod(grid), "latent": list(inputs["latents"].shape), "text_tokens": text_tokens,
                "layers": layers, "device": dev.type, "dtype": str(dtype).removeprefix("torch."),
                "ms_per_step": step_ms, "blocks_ms_per_step": blocks_ms, "repeats": repeats,
                "projected_ms_per_step": step_ms - blocks_ms + blocks_ms * full_layers / layers,
                "pairs_ratio_vs_full": grid_pairs(mode, grid) / grid_pairs("full", grid),
                "peak_mib": peak, "weights_mib": weights_mib,
                "projected_peak_mib": None if peak is None else peak - weights_mib + full_weights_mib,
                "max_abs_diff_vs_full": (out - full_out).abs().max().item(), "finite": bool(out.isfinite().all()),
            })
            if log:
                log(f"  {mode.value:<13} {rows[-1]['ms_per_step']:10.1f} ms/step")
    full_ms = rows[0]["ms_per_step"]
    for row in rows:
        row["time_ratio_vs_full"] = row["ms_per_step"] / full_ms
    return rows


def format_dit_step_table(rows: list[dict], full_layers: int = WAN_T2V_1_3B_CONFIG["num_layers"]) -> str:
    r0 = rows[0]
    with_peak = r0["peak_mib"] is not None
    proj = r0["layers"] != full_layers
    lines = [f"{'mode':<13} {'ms/step':>10} " + (f"{f'ms/step @{full_layers}L':>13} " if proj else "")
             + f"{'time/full':>9} {'pairs/full':>10} "
             + (f"{'peak MiB':>9} " + (f"{f'peak @{full_layers}L':>11} " if proj else "") if with_peak else "")
             + f"{'max|Δ| vs full':>14}"]
    for r in rows:
        lines.append(f"{r['mode']:<13} {r['ms_per_step']:>10.1f} "
                     + (f"{r['projected_ms_per_step']:>13.1f} " if proj else "")
                     + f"{r['time_ratio_vs_full']:>9.3f} {r['pairs_ratio_vs_full']:>10.3f} "
                     + (f"{r['peak_mib']:>9,.0f} " + (f"{r['projected_peak_mib']:>11,.0f} " if proj else "")
                        if with_peak else "")
                     + f"{r['max_abs_diff_vs_full']:>14.3g}" + ("" if r["finite"] else "  NON-FINITE"))
    lines.append(f"one step = 2 transformer forwards (CFG), median of {r0['repeats']} after a warm-up; "
                 f"{r0['layers']} layer(s), {r0['dtype']} on {r0['device']}"
                 + (f"; '@{full_layers}L' scales the blocks' time by {full_layers}/{r0['layers']} (the rest as "
                    "measured) and adds the missing layers' weights to the peak" if proj else ""))
    if r0["device"] != "cuda":
        lines.append("CPU CODE-PATH CHECK at a reduced size: these times are not the GPU figure.")
    return "\n".join(lines)


def add_dit_step_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--layers", type=int, default=None, help="transformer blocks to build (default: all 30); "
                   "the time is also shown scaled to 30")
    p.add_argument("--modes", nargs="+", default=list(ATTENTION_MODES), choices=ATTENTION_MODES)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per mode after the warm-up (median shown; default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="default: bfloat16 on CUDA (as the backend loads Wan), float32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")


def run_dit_step(args: argparse.Namespace) -> int:
    """ms per denoising step and peak memory per mode: Wan 2.1 1.3B with random weights at the real size (GPU)"""
    err = partial(print, file=sys.stderr, flush=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        err(f"dit-step: --device {device} but torch sees no CUDA device; drop --device to run the CPU code-path "
            "check (e.g. --layers 1 --frames 9 --height 128 --width 128)")
        return 2
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    layers = WAN_T2V_1_3B_CONFIG["num_layers"] if args.layers is None else args.layers
    try:
        grid = wan_token_grid(args.frames, args.height, args.width)
        if not 1 <= layers <= WAN_T2V_1_3B_CONFIG["num_layers"]:
            raise ValueError(f"--layers must be 1–{WAN_T2V_1_3B_CONFIG['num_layers']}, got {layers}")
    except ValueError as e:
        err(f"dit-step: {e}")
        return 2
    if not device.startswith("cuda") and math.prod(grid) * layers > CPU_MAX_TOKEN_LAYERS:
        err(f"dit-step: {math.prod(grid):,} tokens × {layers} layers is a GPU measurement (CPU limit: tokens × layers "
            f"≤ {CPU_MAX_TOKEN_LAYERS:,}); on CPU run the code-path check: --layers 1 --frames 9 --height 128 "
            "--width 128")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    log = None if args.json else err
    if log:
        log(f"dit-step: Wan 2.1 T2V 1.3B config, random weights, {layers} layer(s), {dtype_name}, {device}; "
            f"{args.width}×{args.height}, {args.frames} frames -> tokens {'×'.join(map(str, grid))} = "
            f"{math.prod(grid):,}; text {WAN_TEXT_TOKENS} × {WAN_T2V_1_3B_CONFIG['text_dim']}")
        if device.startswith("cuda"):
            log(f"  {torch.cuda.get_device_name(device)}")
        else:
            log("  CPU CODE-PATH CHECK: not the GPU figure (run this on a CUDA machine without --layers for that)")
            warn_if_busy(log)
    repeats = args.repeats or (3 if device.startswith("cuda") else 1)
    rows = bench_dit_step(args.frames, args.height, args.width, layers, args.modes, repeats, device,
                          getattr(torch, dtype_name), log=log)
    print(json.dumps(rows, indent=1) if args.json else format_dit_step_table(rows))
    return 0


# ------------------------------------------------------------------------------------------------ the running app
def add_app_backend_arg(p: argparse.ArgumentParser) -> None:
    from vdemo.backends import BUILTIN, DEFAULT_BACKEND

    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BUILTIN, help="the built-in model the app serves")


def add_queue_args(p: argparse.ArgumentParser) -> None:
    add_app_backend_arg(p)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--json", action="store_true")


def run_queue(args: argparse.Namespace) -> int:
    """the app's queue: each waiting user's first estimate vs the real wait (users submit at once)"""
    from vdemo.bench_app import format_queue, measure_queue

    result = measure_queue(args.users, args.steps, args.frames, backend=args.backend)
    print(json.dumps(result, indent=1) if args.json else format_queue(result))
    return 0


def add_soak_args(p: argparse.ArgumentParser) -> None:
    add_app_backend_arg(p)
    p.add_argument("--gens", type=int, default=200)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--cancel-every", type=int, default=10)
    p.add_argument("--disk-cap-mb", type=float, default=16,
                   help="run-folder and Gradio-cache caps for the soak (MiB; 0: the app's defaults, 256 and 512)")
    p.add_argument("--json", action="store_true")


def run_soak(args: argparse.Namespace) -> int:
    """many generations, cancels and concurrent users: RSS, open files, threads and disk after warm-up and at the end"""
    from vdemo.bench_app import soak

    result = soak(args.gens, args.users, args.steps, args.frames, args.cancel_every,
                  disk_cap_mb=args.disk_cap_mb or None, log=partial(print, file=sys.stderr, flush=True),
                  backend=args.backend)
    print(json.dumps(result, indent=1) if args.json else
          f"{result['gens']} generations ({result['cancelled']} cancelled) + {result['users']} concurrent users; "
          f"growth after warm-up: {result['growth_after_warm_up']}")
    return 0


# ------------------------------------------------------------------------------------------------------------ CLI
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "attention": (add_attention_args, run_attention),
    "pipeline": (add_pipeline_args, run_pipeline),
    "backends": (add_backends_args, run_backends),
    "gpu-time": (add_gpu_time_args, run_gpu_time),
    "dit-attention": (add_dit_attention_args, run_dit_attention),
    "dit-step": (add_dit_step_args, run_dit_step),
    "queue": (add_queue_args, run_queue),
    "soak": (add_soak_args, run_soak),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vdemo.bench", description="vdemo benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=(run.__doc__ or "").strip())
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
