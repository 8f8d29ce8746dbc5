"""Compare attention modes and samplers on one request: same prompt, controls, seed and initial noise, 2–5 variants.

    python -m vdemo.compare --prompt "a red circle moves right on a black background" \\
        --modes spatial temporal full causal sparse_causal --frames 16 --steps 20 --out runs/compare

`stream_compare(backend, request, variants, control)` runs the variants one after another on one loaded backend (one
job: a ZeroGPU Space asks for one duration) and yields each run's Progress events, then one `CompareResult`;
`compare_runs` is the same without streaming. Every variant is the request with only `attention_mode` / `sampler`
changed, so the built-in model draws the same initial noise (`torch.Generator().manual_seed(request.seed)`, and the
same layout plan) for each. One `RunControl` steers them all: a Stop ends the current run and skips the rest.

Per run (`RunRecord`):
  - cost: wall time, seconds per scheduler step, peak memory (CUDA: `torch.cuda.max_memory_allocated`; CPU: the
    process's resident set size sampled every 5 ms by psutil, minus its size at the start of the run — torch's CPU
    allocator keeps no statistics and tracemalloc does not see it), the attention pairs of one model call as counted
    from the `vdemo.attention.attend` calls themselves (batch × heads × `pair_count` at each layer's token grid, all
    layers) and at the top token grid from `vdemo.cost` (the estimate the Space's GPU time uses), and the share of
    the run's wall time spent inside `attend` (a timing wrapper installed for the run only, `AttendMeter`);
  - quality against the `full`-attention clip, as sparse-attention papers report a sparse kernel against dense
    attention (Sparse VideoGen, Xi et al. 2025; SpargeAttn, Zhang et al. 2025): PSNR and SSIM per frame
    (`skimage.metrics.structural_similarity`); temporal flicker, the mean absolute change between consecutive frames
    (/255; lower is steadier); on the built-in world, identity kept (the object the prompt names, or the reference's
    first-frame object, found by `vdemo.world.detect` with its colour and shape, per frame) and stroke / plan
    following (distance of that object's centre from the stroke's point per frame, a fraction of the diagonal, as
    `vdemo.eval.track_error` measures it). `full` is run as the reference even when it was not chosen (the result
    says so: `reference.added`).

`mode_masks` probes `vdemo.attention.attend` itself — the kernels the model runs — with q = k = 0 (softmax uniform
over the allowed keys) and one-hot values (each output row shows which keys its query saw): the picture of what each
mode sees is measured, never drawn by hand, and its nonzero count is checked against `pair_count`.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vdemo import attention
from vdemo.attention import pair_count, parse_mode
from vdemo.backends import BUILTIN
from vdemo.errors import UserError
from vdemo.pipeline import Done, GenerationRequest, Progress, RunControl

MIN_VARIANTS, MAX_VARIANTS = 2, 5
REFERENCE_MODE = "full"
PROBE_FRAMES, PROBE_GRID = 6, 4  # the mask pictures: 6 frames of a 4×4 token grid
MEMORY_SAMPLE_S = 0.005


class CompareError(UserError):
    """A bad comparison (variant list, backend support); one line."""


@dataclass(frozen=True)
class Variant:
    """One run of the comparison: the request with this attention mode and sampler."""

    mode: str
    sampler: str

    @property
    def label(self) -> str:
        return f"{self.mode} · {self.sampler}"

    @property
    def slug(self) -> str:
        return f"{self.mode}-{self.sampler}".replace(" ", "_").replace("+", "p").lower()


def make_variants(modes: Sequence[str] | None, samplers: Sequence[str] | None, backend, default_mode: str,
                  default_sampler: str) -> list[Variant]:
    """modes × samplers (an empty list: the request's own) -> 2..5 variants; one-line CompareError otherwise."""
    modes = [str(m) for m in (modes or []) if str(m).strip()]
    samplers = [str(s) for s in (samplers or []) if str(s).strip()]
    try:
        modes = [parse_mode(m).value for m in modes] or [parse_mode(default_mode).value]
    except ValueError as err:
        raise CompareError(str(err)) from None
    samplers = samplers or [default_sampler]
    for mode in modes:
        if mode not in backend.attention_modes:
            raise CompareError(f"backend {backend.name!r} does not support attention mode {mode!r}; choose from: "
                               f"{', '.join(backend.attention_modes)}")
    for sampler in samplers:
        if sampler not in backend.samplers:
            raise CompareError(f"backend {backend.name!r} does not support sampler {sampler!r}; choose from: "
                               f"{', '.join(backend.samplers)}")
    variants = list(dict.fromkeys(Variant(m, s) for m in modes for s in samplers))
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise CompareError(f"a comparison needs {MIN_VARIANTS}–{MAX_VARIANTS} runs (modes × samplers), got "
                           f"{len(variants)}: pick {'more' if len(variants) < MIN_VARIANTS else 'fewer'} modes or "
                           f"samplers")
    return variants


def reference_for(variants: Sequence[Variant], backend) -> tuple[Variant, bool]:
    """The `full` run quality is measured against (with the first variant's sampler) and whether it must be added."""
    if REFERENCE_MODE not in backend.attention_modes:
        return variants[0], False
    for v in variants:
        if v.mode == REFERENCE_MODE:
            return v, False
    return Variant(REFERENCE_MODE, variants[0].sampler), True


# ---------------------------------------------------------------------------------------------------- measuring
class AttendMeter:
    """`with AttendMeter() as m:` times and counts every `vdemo.attention.attend` call until exit, then puts the
    original back (the diffusers processors look `attend` up in that module at each call). Calls from other threads
    in the same process are counted too: the app runs one generation at a time (one GPU queue)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.pairs = 0  # batch × heads × pair_count, summed over calls
        self._original = None

    def _wrapped(self, q, k, v, mode, num_frames):
        cuda = q.is_cuda
        if cuda:
            torch.cuda.synchronize(q.device)
        start = time.perf_counter()
        out = self._original(q, k, v, mode, num_frames)
        if cuda:
            torch.cuda.synchronize(q.device)
        self.seconds += time.perf_counter() - start
        B, h, S, _ = q.shape  # (B, h, F·N, d)
        self.calls += 1
        self.pairs += B * h * pair_count(mode, num_frames, S // num_frames)
        return out

    def __enter__(self) -> AttendMeter:
        self._original = attention.attend
        attention.attend = self._wrapped
        return self

    def __exit__(self, *exc) -> None:
        attention.attend = self._original


class PeakMemory:
    """Peak memory of a block in MB: CUDA's allocator peak on a GPU, else the RSS high-water above the start (a 5 ms
    sampling thread)."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.kind = "cuda max_memory_allocated" if self.cuda else "process RSS growth (psutil, 5 ms samples)"
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, process, start: int) -> None:
        peak = start
        while not self._stop.wait(MEMORY_SAMPLE_S):
            peak = max(peak, process.memory_info().rss)
        peak = max(peak, process.memory_info().rss)
        self.peak_mb = (peak - start) / 2**20

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process = psutil.Process()
        self._thread = threading.Thread(target=self._sample, args=(process, process.memory_info().rss), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------------ results
@dataclass
class RunRecord:
    """One variant's clip and figures."""

    variant: Variant
    frames: np.ndarray  # (F, H, W, 3) uint8
    manifest: dict
    stopped: bool
    wall_s: float
    steps_done: int
    model_calls: int
    s_per_step: float
    peak_mem_mb: float
    attention_s: float
    attention_share: float
    attention_pairs_per_call: int  # counted from the attend calls: all layers, batch × heads
    attention_pairs_top_grid: int  # vdemo.cost's count at the backend's top token grid (one layer, one head)
    reference: bool = False  # run only as the quality reference (not chosen)
    quality: dict = field(default_factory=dict)

    def cost_row(self) -> dict:
        return {"run": self.variant.label, "mode": self.variant.mode, "sampler": self.variant.sampler,
                "wall_s": round(self.wall_s, 3), "s_per_step": round(self.s_per_step, 4),
                "steps": self.steps_done, "model_calls": self.model_calls, "peak_mem_mb": round(self.peak_mem_mb, 1),
                "attention_pairs_per_call": self.attention_pairs_per_call,
                "attention_pairs_top_grid": self.attention_pairs_top_grid,
                "attention_s": round(self.attention_s, 3), "attention_share": round(self.attention_share, 3),
                "reference_only": self.reference, "stopped": self.stopped}


@dataclass
class CompareResult:
    """Every run (chosen ones first, then an added reference), the masks and the summary for compare.json."""

    request: GenerationRequest
    backend: str
    runs: list[RunRecord]
    reference: Variant
    reference_added: bool
    memory_kind: str
    masks: dict  # mode -> {"mask": (F·N, F·N) bool, "pairs_probe", "pairs_theory", ...}
    stopped: bool = False

    @property
    def chosen(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.reference]

    def summary(self) -> dict:
        """Plain JSON: settings, cost table, per-frame quality, mask counts (what compare.json holds)."""
        return {
            "backend": self.backend,
            "request": self.request.settings(),
            "variants": [r.variant.label for r in self.chosen],
            "reference": {"run": self.reference.label, "added": self.reference_added,
                          "note": ("full attention was run as the quality reference although it was not chosen"
                                   if self.reference_added else "the chosen full-attention run is the reference")},
            "same_initial_noise": {"seed": self.request.seed, "note": "every run is the request with only mode / "
                                   "sampler changed: the backend seeds its initial noise from the request's seed"},
            "memory": self.memory_kind,
            "stopped": self.stopped,
            "cost": [r.cost_row() for r in self.runs],
            "quality": {r.variant.label: _finite(r.quality) for r in self.runs},
            "masks": {m: {k: v for k, v in d.items() if k != "mask"} for m, d in self.masks.items()},
        }


def _finite(obj):
    """JSON-safe floats: inf -> "inf" (PSNR of identical frames), nan -> None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return ("inf" if obj > 0 else "-inf") if math.isinf(obj) else round(obj, 5)
    return obj


# ---------------------------------------------------------------------------------------------------- quality
def psnr_per_frame(frames: np.ndarray, ref: np.ndarray) -> list[float]:
    """PSNR in dB of each frame against the reference frame (inf for identical frames)."""
    diff = frames.astype(np.float64) - ref.astype(np.float64)  # (F, H, W, 3)
    mse = (diff**2).reshape(len(frames), -1).mean(1)
    return [math.inf if m == 0 else 10 * math.log10(255.0**2 / m) for m in mse]


def ssim_per_frame(frames: np.ndarray, ref: np.ndarray) -> list[float]:
    """SSIM of each frame against the reference frame (skimage, RGB, data range 255)."""
    from skimage.metrics import structural_similarity

    win = min(7, min(frames.shape[1:3]) // 2 * 2 - 1)
    return [float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=win))
            for a, b in zip(frames, ref)]


def flicker_per_frame(frames: np.ndarray) -> list[float]:
    """Mean absolute change from frame t-1 to t (/255), for t = 1..F-1."""
    f = frames.astype(np.float32) / 255.0
    return [float(x) for x in np.abs(np.diff(f, axis=0)).reshape(len(f) - 1, -1).mean(1)]


def _world_target(request: GenerationRequest, ref_frames: np.ndarray) -> dict | None:
    """What the built-in world's detector should find: background, colour and shape (from the prompt, else the
    reference's first frame)."""
    from vdemo import world
    from vdemo.world.detect import detect_objects, estimate_background

    parsed = world.parse_caption(request.prompt or "")
    bg_name = parsed.get("background")
    bg = tuple(world.BACKGROUNDS[bg_name]) if bg_name in world.BACKGROUNDS else estimate_background(ref_frames[0])
    named = next((o for o in parsed["objects"] if o["colour"] and o["shape"] in world.SHAPES), None)
    if named:
        return {"background": bg, "colour": named["colour"], "shape": named["shape"], "from": "prompt"}
    found = detect_objects(ref_frames[0], background_rgb=bg, max_objects=1)
    if not found:
        return None
    return {"background": bg, "colour": found[0].colour, "shape": found[0].shape, "from": "reference frame 0"}


def _stroke_target(record: RunRecord, num_frames: int) -> np.ndarray | None:
    """The first stroke (the request's, else the layout planner's) resampled to one point per frame: (F, 2)."""
    from vdemo.strokes import resample_stroke

    strokes = record.manifest.get("request", {}).get("strokes") or []
    if not strokes and record.manifest.get("motion_plan"):
        strokes = record.manifest["motion_plan"].get("strokes") or []
    if not strokes:
        return None
    return resample_stroke(np.array(strokes[0]["points"], np.float64), num_frames)


def world_quality(record: RunRecord, target: dict | None) -> dict:
    """Identity kept (1/0 per frame) and stroke following error per frame, by the project's own detector."""
    from vdemo.world.detect import detect_objects

    if target is None:
        return {}
    kept, errors = [], []
    points = _stroke_target(record, len(record.frames))
    for i, frame in enumerate(record.frames):
        found = detect_objects(frame, background_rgb=target["background"], max_objects=None)
        same = [d for d in found if d.colour == target["colour"]]
        kept.append(float(bool(same) and same[0].shape == target["shape"]))
        if points is not None:
            d = same[0] if same else (found[0] if found else None)
            # a lost object counts as the farthest corner, as vdemo.eval.track_error does
            far = max(math.dist(points[i], c) for c in ((0, 0), (0, 1), (1, 0), (1, 1)))
            errors.append((math.dist(d.centre, points[i]) if d else far) / math.sqrt(2))
    out = {"identity_target": f"{target['colour']} {target['shape']} ({target['from']})",
           "identity_kept": kept, "identity_kept_mean": float(np.mean(kept))}
    if points is not None:
        out.update({"stroke_error": errors, "stroke_error_mean": float(np.mean(errors))})
    return out


def add_quality(runs: list[RunRecord], ref: RunRecord | None, request: GenerationRequest, world_metrics: bool) -> None:
    """Fill each run's `quality` against the reference run (in place); without one (stopped before it ran): flicker
    only."""
    target = _world_target(request, ref.frames) if ref is not None and world_metrics and len(ref.frames) else None
    for r in runs:
        q: dict = {"flicker": flicker_per_frame(r.frames) if len(r.frames) > 1 else []}
        q["flicker_mean"] = float(np.mean(q["flicker"])) if q["flicker"] else 0.0
        if ref is not None and r.frames.shape == ref.frames.shape and len(r.frames):
            q["psnr_db"] = psnr_per_frame(r.frames, ref.frames)
            q["ssim"] = ssim_per_frame(r.frames, ref.frames)
            finite = [p for p in q["psnr_db"] if math.isfinite(p)]
            q["psnr_db_mean"] = float(np.mean(finite)) if finite else math.inf
            q["ssim_mean"] = float(np.mean(q["ssim"]))
        q.update(world_quality(r, target))
        r.quality = q


# ------------------------------------------------------------------------------------------------------- masks
def probe_mask(mode: str, num_frames: int, tokens: int) -> torch.Tensor:
    """Which keys each query attends to, read from `attend` itself: (F·N, F·N) bool, True where query i saw key j."""
    S = num_frames * tokens
    q = torch.zeros(1, 1, S, S)  # (B, h, F·N, d): all scores equal -> uniform over the allowed keys
    v = torch.eye(S)[None, None]  # (1, 1, F·N, F·N): value j is key j's one-hot id
    with torch.no_grad():
        out = attention.attend(q, q.clone(), v, mode, num_frames)[0, 0]  # (F·N, F·N)
    return out > 0.5 / S


def mode_masks(modes: Sequence[str], num_frames: int = PROBE_FRAMES, grid: int = PROBE_GRID,
               model_frames: int | None = None, model_tokens: int | None = None) -> dict:
    """Per mode: the probed mask, its nonzero count and `pair_count` at the probe size (they match), and the pair
    count at the model's own frames × tokens when given."""
    out = {}
    for mode in dict.fromkeys(parse_mode(m).value for m in modes):
        mask = probe_mask(mode, num_frames, grid * grid)
        out[mode] = {"mask": mask, "probe_frames": num_frames, "probe_tokens": grid * grid,
                     "pairs_probe": int(mask.sum()), "pairs_theory": pair_count(mode, num_frames, grid * grid),
                     "pairs_full_probe": (num_frames * grid * grid) ** 2}
        if model_frames and model_tokens:
            out[mode]["pairs_model"] = pair_count(mode, model_frames, model_tokens)
            out[mode]["model_frames_tokens"] = [model_frames, model_tokens]
    return out


def top_tokens(backend, request: GenerationRequest) -> int:
    """Tokens per frame at the backend's top-level grid (as `vdemo.cost` counts them)."""
    factor = backend.gpu_cost.latent_factor
    return max(1, (request.height // factor) * (request.width // factor))


# ------------------------------------------------------------------------------------------------------ running
@dataclass
class RunProgress:
    """A streamed event: run `index` (of `count`, in `variants` order) made a model call."""

    index: int
    count: int
    variant: Variant
    progress: Progress


@dataclass
class RunFinished:
    index: int
    count: int
    record: RunRecord


CompareEvent = RunProgress | RunFinished | CompareResult


def _run_one(backend, request: GenerationRequest, variant: Variant, control: RunControl, index: int,
             count: int, reference: bool) -> Iterator[RunProgress | RunFinished]:
    from vdemo.cost import _pairs

    req = replace(request, attention_mode=variant.mode, sampler=variant.sampler)
    control.set_attention_mode(variant.mode)
    control.set_sampler(variant.sampler)
    control.history = []
    done = None
    started = time.perf_counter()
    with PeakMemory() as memory, AttendMeter() as meter:
        for event in backend.run(req, control):
            if isinstance(event, Done):
                done = event
                break
            yield RunProgress(index, count, variant, event)
    wall = time.perf_counter() - started
    if done is None:
        raise CompareError(f"run {variant.label} ended without a result")
    timings = done.manifest.get("timings", {})
    steps = int(timings.get("steps_done", len(control.history)))
    calls = int(timings.get("model_calls", len(control.history))) or max(1, meter.calls)
    record = RunRecord(variant, done.frames, done.manifest, done.stopped, wall, steps, calls,
                       wall / max(1, steps), memory.peak_mb, meter.seconds, meter.seconds / max(wall, 1e-9),
                       meter.pairs // max(1, calls), _pairs(backend, variant.mode, req.num_frames,
                                                            top_tokens(backend, req)), reference)
    yield RunFinished(index, count, record)


def check_variants(backend, request: GenerationRequest, variants: Sequence[Variant]) -> None:
    """Every variant's request passes the backend's own checks (one line, before any run starts)."""
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise CompareError(f"a comparison needs {MIN_VARIANTS}–{MAX_VARIANTS} runs, got {len(variants)}")
    for v in variants:
        backend.check(replace(request, attention_mode=v.mode, sampler=v.sampler))


def warm_up(backend, request: GenerationRequest) -> None:
    """One untimed one-step run (first-call allocations and kernel choices would otherwise land on the first run)."""
    for event in backend.run(replace(request, num_steps=1, plan_motion=False), RunControl(request.attention_mode,
                                                                                         request.sampler)):
        if isinstance(event, Done):
            break


def stream_compare(backend, request: GenerationRequest, variants: Sequence[Variant],
                   control: RunControl | None = None, warmup: bool = True) -> Iterator[CompareEvent]:
    """Run every variant (then the `full` reference if it was not chosen) with the same request and seed; yields
    RunProgress / RunFinished per run, then the CompareResult. A stop ends the current run and skips the rest.
    warmup: one untimed one-step run first."""
    variants = list(variants)
    check_variants(backend, request, variants)
    control = control or RunControl(variants[0].mode, variants[0].sampler)
    if warmup and not control.stopped:
        warm_up(backend, replace(request, attention_mode=variants[0].mode, sampler=variants[0].sampler))
    ref_variant, added = reference_for(variants, backend)
    plan = variants + ([ref_variant] if added else [])
    memory_kind = PeakMemory().kind
    runs: list[RunRecord] = []
    for i, v in enumerate(plan):
        if control.stopped:
            break
        for event in _run_one(backend, request, v, control, i, len(plan), reference=added and i == len(variants)):
            if isinstance(event, RunFinished):
                runs.append(event.record)
            yield event
    ref = next((r for r in runs if r.variant == ref_variant), None)
    add_quality(runs, ref, request, world_metrics=backend.name in BUILTIN)  # the built-in world models
    tokens = top_tokens(backend, request)
    masks = mode_masks([v.mode for v in plan], model_frames=request.num_frames, model_tokens=tokens)
    yield CompareResult(request, backend.name, runs, ref_variant, added, memory_kind, masks,
                        stopped=control.stopped or any(r.stopped for r in runs) or len(runs) < len(plan))


def compare_runs(backend, request: GenerationRequest, variants: Sequence[Variant], control: RunControl | None = None,
                 on_event: Callable[[CompareEvent], None] | None = None, warmup: bool = True) -> CompareResult:
    """`stream_compare` to the end; on_event sees every event."""
    result = None
    for event in stream_compare(backend, request, variants, control, warmup):
        if on_event is not None:
            on_event(event)
        result = event
    return result


# ------------------------------------------------------------------------------------------------------ pictures
MODE_COLOURS = {"spatial": "#e4572e", "temporal": "#f3a712", "full": "#29335c", "causal": "#669bbc",
                "sparse_causal": "#2a9d8f"}


def mask_picture(info: dict, query_frames: Sequence[int] | None = None, cell_px: int = 6) -> np.ndarray:
    """A mode's probed mask as a picture: one row per query frame t, one tile per key frame, each tile the frame's
    token grid; white = a key the query (the red token, at the grid's centre) may attend to. (H, W, 3) uint8."""
    mask = info["mask"].numpy()  # (F·N, F·N)
    Fr, N = info["probe_frames"], info["probe_tokens"]
    g = math.isqrt(N)
    q_pos = (g // 2) * g + g // 2
    rows = list(query_frames) if query_frames is not None else list(range(Fr))
    gap = 2
    tile = g * cell_px
    img = np.full((len(rows) * (tile + gap) + gap, Fr * (tile + gap) + gap, 3), 40, np.uint8)
    for r, t in enumerate(rows):
        seen = mask[t * N + q_pos].reshape(Fr, g, g)  # (key frame, y, x)
        for f in range(Fr):
            y0, x0 = gap + r * (tile + gap), gap + f * (tile + gap)
            block = np.where(seen[f][..., None], 235, 70).astype(np.uint8).repeat(3, -1)  # (g, g, 3)
            if f == t:
                block[q_pos // g, q_pos % g] = (220, 40, 40)
            img[y0:y0 + tile, x0:x0 + tile] = block.repeat(cell_px, 0).repeat(cell_px, 1)
    return img


def masks_figure(masks: dict, path: Path) -> Path:
    """Every mode's mask picture side by side, titled with the probe's nonzero count = pair_count, and the pairs
    at the model's own size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(masks), figsize=(2.6 * len(masks), 3.0), squeeze=False)
    for ax, (mode, info) in zip(axes[0], masks.items()):
        ax.imshow(mask_picture(info), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel("key frame →", fontsize=8)
        ax.set_ylabel("query frame t →", fontsize=8)
        extra = f"\nmodel: {info['pairs_model']:,} pairs" if "pairs_model" in info else ""
        ax.set_title(f"{mode}\n{info['pairs_probe']} = pair_count {info['pairs_theory']}{extra}", fontsize=8)
    fig.suptitle(f"What a query (red) in frame t may attend to — probed from attention.attend "
                 f"({next(iter(masks.values()))['probe_frames']} frames × 4×4 tokens)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def cost_figure(result: CompareResult, path: Path) -> Path:
    """Bars per run: wall time split into attention / the rest, seconds per step, attention pairs, peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result.runs
    labels = [r.variant.label + (" (ref)" if r.reference else "") for r in runs]
    colours = [MODE_COLOURS.get(r.variant.mode, "#888") for r in runs]
    x = np.arange(len(runs))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    att = [r.attention_s for r in runs]
    axes[0].bar(x, att, color=colours, label="inside attend")
    axes[0].bar(x, [r.wall_s - a for r, a in zip(runs, att)], bottom=att, color="#cccccc", label="rest of the step")
    axes[0].set_title("wall time (s)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].bar(x, [r.s_per_step for r in runs], color=colours)
    axes[1].set_title("seconds per step", fontsize=9)
    axes[2].bar(x, [r.attention_pairs_per_call / 1e6 for r in runs], color=colours)
    axes[2].set_title("attention pairs per model call (M)", fontsize=9)
    axes[3].bar(x, [r.peak_mem_mb for r in runs], color=colours)
    axes[3].set_title(f"peak memory (MB; {result.memory_kind.split(' (')[0]})", fontsize=9)
    for ax in axes:
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def quality_figure(result: CompareResult, path: Path) -> Path | None:
    """Per frame: PSNR and SSIM against the full-attention clip, flicker, identity kept, stroke error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("psnr_db", "PSNR vs full (dB)"), ("ssim", "SSIM vs full"), ("flicker", "flicker |Δ| to previous"),
              ("identity_kept", "identity kept (detector)"), ("stroke_error", "stroke error (× diagonal)")]
    panels = [p for p in panels if any(r.quality.get(p[0]) for r in result.runs)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for r in result.runs:
            values = r.quality.get(key)
            if not values or (key in ("psnr_db", "ssim") and r.variant == result.reference):
                continue  # the reference against itself: inf dB / 1.0
            start = 1 if key == "flicker" else 0
            ax.plot(range(start, start + len(values)), values, marker=".", lw=1.2,
                    color=MODE_COLOURS.get(r.variant.mode, "#888"), label=r.variant.label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("frame", fontsize=8)
        ax.tick_params(labelsize=7)
    max(axes[0], key=lambda a: len(a.get_lines())).legend(fontsize=6)
    fig.suptitle(f"reference: {result.reference.label}" + (" (added)" if result.reference_added else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def clips_figure(result: CompareResult, path: Path, columns: int = 8) -> Path | None:
    """Every run's clip as one row of `columns` evenly spaced frames, labelled with its mode and sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result.runs if len(r.frames)]
    if not runs:
        return None
    picks = np.linspace(0, len(runs[0].frames) - 1, min(columns, len(runs[0].frames))).round().astype(int)
    fig, axes = plt.subplots(len(runs), 1, figsize=(1.1 * len(picks), 1.25 * len(runs)), squeeze=False)
    for ax, r in zip(axes[:, 0], runs):
        ax.imshow(np.concatenate([r.frames[min(i, len(r.frames) - 1)] for i in picks], axis=1),
                  interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(r.variant.label.replace(" · ", "\n"), fontsize=7, rotation=0, ha="right", va="center")
    axes[0, 0].set_title(f"frames {', '.join(str(i) for i in picks)}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- output
def cost_table(result: CompareResult) -> str:
    """The cost and quality table as markdown."""
    head = ("| run | wall s | s/step | attention pairs / call | attention share | peak MB | PSNR dB | SSIM | "
            "flicker | identity | stroke err |")
    lines = [head, "|" + "---|" * 11]
    for r in result.runs:
        q = r.quality

        def fmt(key: str, spec: str) -> str:
            v = q.get(key)
            if v is None:
                return "—"
            return "∞" if isinstance(v, float) and math.isinf(v) else format(v, spec)

        name = r.variant.label + (" *(reference, added)*" if r.reference else "")
        lines.append(f"| {name} | {r.wall_s:.2f} | {r.s_per_step:.3f} | {r.attention_pairs_per_call:,} | "
                     f"{r.attention_share:.0%} | {r.peak_mem_mb:.0f} | {fmt('psnr_db_mean', '.1f')} | "
                     f"{fmt('ssim_mean', '.3f')} | {fmt('flicker_mean', '.4f')} | {fmt('identity_kept_mean', '.2f')} | "
                     f"{fmt('stroke_error_mean', '.3f')} |")
    return "\n".join(lines)


def write_compare(result: CompareResult, out_dir: str | Path, fps: int | None = None) -> dict[str, Path]:
    """Each run's mp4 / gif / frames / manifest (`vdemo.export.export_result`) under out_dir/<run>/, compare.json,
    cost.png, quality.png, masks.png and masks/<mode>.png. Returns the paths by name."""
    from PIL import Image

    from vdemo.export import export_result, write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fps = fps or result.request.fps
    paths: dict[str, Path] = {}
    summary = result.summary()
    for r, row in zip(result.runs, summary["cost"]):
        if len(r.frames):
            exported = export_result(r.frames, out / r.variant.slug, fps, r.manifest, r.variant.slug)
            paths[f"mp4:{r.variant.label}"] = exported.mp4
            row["mp4"] = str(exported.mp4.relative_to(out))
            row["frames_dir"] = str(exported.frames_dir.relative_to(out))
    (out / "masks").mkdir(exist_ok=True)
    for mode, info in result.masks.items():
        Image.fromarray(mask_picture(info)).save(out / "masks" / f"{mode}.png")
        summary["masks"][mode]["picture"] = f"masks/{mode}.png"
    paths["masks"] = masks_figure(result.masks, out / "masks.png")
    paths["cost"] = cost_figure(result, out / "cost.png")
    clips = clips_figure(result, out / "clips.png")
    if clips is not None:
        paths["clips"] = clips
    quality = quality_figure(result, out / "quality.png")
    if quality is not None:
        paths["quality"] = quality
    summary["figures"] = {k: p.name for k, p in paths.items() if ":" not in k}
    summary["table_markdown"] = cost_table(result)
    paths["json"] = write_manifest(summary, out / "compare.json")
    return paths


# ---------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from vdemo.config import ATTENTION_MODES, DEFAULT_BACKEND, DEFAULTS

    p = argparse.ArgumentParser(prog="python -m vdemo.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", default="a red circle moves right on a black background")
    p.add_argument("--modes", nargs="*", default=[], choices=ATTENTION_MODES, metavar="MODE",
                   help=f"attention modes ({', '.join(ATTENTION_MODES)})")
    p.add_argument("--samplers", nargs="*", default=[], help="samplers, e.g. DDIM Euler 'DPM++ 2M'")
    p.add_argument("--backend", default=DEFAULT_BACKEND)
    p.add_argument("--frames", type=int, default=DEFAULTS.num_frames)
    p.add_argument("--steps", type=int, default=None, help="default: the backend's")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--fps", type=int, default=DEFAULTS.fps)
    p.add_argument("--no-plan", action="store_true", help="built-in model: do not plan the motion from the prompt")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--out", default="runs/compare")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vdemo.backends import load_backend

    try:
        backend = load_backend(args.backend)
        height, width = backend.default_size
        request = GenerationRequest(prompt=args.prompt, num_frames=args.frames, height=height, width=width,
                                    num_steps=backend.default_steps if args.steps is None else args.steps,
                                    seed=args.seed, fps=args.fps,
                                    guidance=backend.default_guidance if args.guidance is None else args.guidance,
                                    plan_motion=not args.no_plan)
        variants = make_variants(args.modes, args.samplers, backend, request.attention_mode, request.sampler)
        request = replace(request, attention_mode=variants[0].mode, sampler=variants[0].sampler)

        def show(event: CompareEvent) -> None:
            if isinstance(event, RunFinished):
                r = event.record
                print(f"[{event.index + 1}/{event.count}] {r.variant.label}: {r.wall_s:.2f} s, "
                      f"{r.s_per_step:.3f} s/step", file=sys.stderr, flush=True)

        result = compare_runs(backend, request, variants, on_event=show)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_compare(result, args.out)
    print(cost_table(result))
    print(f"\nwrote {paths['json']} and the clips, plots and masks under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
