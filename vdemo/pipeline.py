"""The shared video pipeline: one per process, used by every tab, every user and the CLI.

    pipe = VideoPipeline(backend)
    run = pipe.start(GenerationRequest(prompt="a red circle moves right", num_frames=16))
    for event in run:                    # Progress(step, total, preview, mode, sampler, ...), then Done(frames, …)
        run.set_attention_mode("causal")  # live: takes effect on the next denoising step, no weight reload
        run.stop()                        # ends the loop within one step; Done carries the last prediction

The request is a plain frozen dataclass validated against `vdemo.config.LIMITS` (and the backend's own limits) with
one-line messages that name the field and the allowed range. Backends implement `Backend.run`; those that own their
denoising loop (the built-in model) inherit `DenoisingBackend`, whose loop switches samplers mid-run by re-projecting
the model's latest clean/noise estimates onto the new scheduler's noise level (`vdemo.samplers.reproject`).
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, MutableMapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vdemo import __version__
from vdemo.attention import parse_mode
from vdemo.config import ATTENTION_MODES, DEFAULTS, LIMITS, MODALITIES, Limits
from vdemo.cost import GpuCost
from vdemo.errors import UserError
from vdemo.samplers import SAMPLERS, make_scheduler, sample_steps, schedule_steps, step_progress
from vdemo.strokes import Stroke

if TYPE_CHECKING:
    from vdemo.models.planner import Plan


class RequestError(UserError):
    """A request field is out of range or malformed; the message is one line, fit to show a user."""


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RequestError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise RequestError(f"{name} must be a finite number, got {value}")
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be {_fmt(lo)}–{_fmt(hi)}, got {_fmt(value)}")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RequestError(f"{name} must be a whole number {lo}–{hi}, got {value!r}")
    _check_range(name, value, lo, hi)


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one generation needs; validated on construction. Arrays are uint8, frames-first."""

    prompt: str = ""
    image: np.ndarray | None = None  # (H, W, 3) uint8, becomes frame 0 (image-to-video)
    keyframes: tuple[tuple[int, np.ndarray], ...] = ()  # extra known frames (index, (H, W, 3) uint8)
    pose: np.ndarray | None = None  # (F', H, W, 3) uint8 OpenPose renderings, resampled to num_frames
    depth: np.ndarray | None = None  # (F', H, W) uint8 inverse depth (near = bright), resampled to num_frames
    strokes: tuple[Stroke, ...] = ()
    num_frames: int = DEFAULTS.num_frames
    height: int = DEFAULTS.height
    width: int = DEFAULTS.width
    num_steps: int = DEFAULTS.num_steps
    guidance: float = DEFAULTS.guidance
    seed: int = DEFAULTS.seed
    fps: int = DEFAULTS.fps
    attention_mode: str = DEFAULTS.attention_mode
    sampler: str = DEFAULTS.sampler
    # With a prompt and nothing but (at most) a first frame to give the motion: let the backend's layout planner (if
    # it has one) turn the prompt into motion strokes first.
    plan_motion: bool = True
    # With a first frame and motion strokes (drawn or planned): let a backend that takes a motion-compensated reference
    # (tiny-v2) cut the strokes' objects out of the first frame and drag them along the strokes as that reference.
    drag_reference: bool = True
    # With known frames (a first frame, keyframes, a long video's context) on an x0-predicting backend: replace its
    # prediction there by their clean sample at every call, so they come out as given (`DenoisingBackend.known_sample`).
    keep_known: bool = True

    def __post_init__(self) -> None:
        self.validate(LIMITS)

    def validate(self, limits: Limits) -> None:
        """Raise RequestError (one line, names the field and the allowed range) for the first bad field."""
        if not isinstance(self.prompt, str):
            raise RequestError(f"prompt must be text, got {type(self.prompt).__name__}")
        if len(self.prompt) > limits.max_prompt_chars:
            raise RequestError(f"prompt must be at most {limits.max_prompt_chars} characters, got {len(self.prompt)}")
        _check_int("num_frames", self.num_frames, limits.min_frames, limits.max_frames)
        for name in ("height", "width"):
            value = getattr(self, name)
            _check_int(name, value, limits.min_side_px, limits.max_side_px)
            if value % limits.side_multiple:
                raise RequestError(f"{name} must be a multiple of {limits.side_multiple}, got {value}")
        _check_int("num_steps", self.num_steps, limits.min_steps, limits.max_steps)
        _check_range("guidance", self.guidance, limits.min_guidance, limits.max_guidance)
        _check_int("seed", self.seed, 0, limits.max_seed)
        _check_int("fps", self.fps, limits.min_fps, limits.max_fps)
        try:
            parse_mode(self.attention_mode)
        except ValueError as err:
            raise RequestError(f"attention_mode: {err}") from None
        for name in ("plan_motion", "drag_reference", "keep_known"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise RequestError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.sampler not in SAMPLERS:
            raise RequestError(f"sampler: unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if self.image is not None:
            _check_image("image", self.image)
        for index, frame in self.keyframes:
            _check_int("keyframe index", index, 0, self.num_frames - 1)
            _check_image(f"keyframe {index}", frame)
        if self.pose is not None:
            _check_clip("pose", self.pose, channels=3)
        if self.depth is not None:
            _check_clip("depth", self.depth, channels=None)
        if self.pose is not None and self.depth is not None and len(self.pose) != len(self.depth):
            raise RequestError(f"pose and depth clips must have the same length, got {len(self.pose)} and "
                               f"{len(self.depth)} frames")
        if len(self.strokes) > limits.max_strokes:
            raise RequestError(f"strokes must be at most {limits.max_strokes}, got {len(self.strokes)}")
        for stroke in self.strokes:
            if not isinstance(stroke, Stroke):
                raise RequestError(f"strokes must be Stroke objects, got {type(stroke).__name__}")

    @property
    def modalities(self) -> frozenset[str]:
        """Which conditioning inputs this request carries."""
        present = {
            "text": bool(self.prompt.strip()),
            "image": self.image is not None or bool(self.keyframes),
            "pose": self.pose is not None,
            "depth": self.depth is not None,
            "strokes": bool(self.strokes),
        }
        return frozenset(name for name in MODALITIES if present[name])

    def settings(self) -> dict:
        """The request's scalar settings, for the manifest."""
        skip = {"image", "keyframes", "pose", "depth", "strokes"}
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["strokes"] = [{"points": [list(p) for p in s.points], "radius": s.radius} for s in self.strokes]
        out["keyframe_indices"] = [int(i) for i, _ in self.keyframes]
        out["modalities"] = sorted(self.modalities)
        return out


def _check_image(name: str, image: Any) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = getattr(image, "shape", type(image).__name__)
        raise RequestError(f"{name} must be an RGB uint8 array (H, W, 3), got {got}")
    if min(image.shape[:2]) < 8:
        raise RequestError(f"{name} must be at least 8×8 pixels, got {image.shape[1]}×{image.shape[0]}")


def _check_clip(name: str, clip: Any, channels: int | None) -> None:
    ok = isinstance(clip, np.ndarray) and clip.dtype == np.uint8
    ok = ok and (clip.ndim == 4 and clip.shape[3] == channels if channels else clip.ndim == 3)
    if not ok:
        want = "(frames, H, W, 3)" if channels else "(frames, H, W)"
        raise RequestError(f"{name} must be a uint8 clip {want}, got {getattr(clip, 'shape', type(clip).__name__)}")
    if len(clip) == 0:
        raise RequestError(f"{name} clip has no frames")
    if len(clip) > 4 * LIMITS.max_frames:
        raise RequestError(f"{name} clip must have at most {4 * LIMITS.max_frames} frames, got {len(clip)}")


@dataclass
class Progress:
    """One model call done: `preview` is the predicted clean video (F, h, w, 3) uint8.

    Counted in scheduler steps, not model calls: `step` is the step (1..total) this call belongs to, `total` the run's
    steps (the request's num_steps; a hub zero-shot motion run: its joint pass), `step_done` whether this call
    completed `step`. Heun and DPM++ SDE make two calls for every step but the last (2n−1 in all) and PLMS two for
    its first (n+1), so their previews stream per call, each labelled with its step (`vdemo.samplers.step_progress`);
    every other sampler makes one call per step. `calls` / `total_calls`: model calls so far / in all as planned now
    (a live sampler switch can change the latter).
    """

    step: int
    total: int
    preview: np.ndarray
    mode: str
    sampler: str
    elapsed_s: float
    step_done: bool = True
    calls: int = 0
    total_calls: int = 0

    @property
    def steps_done(self) -> int:
        """Scheduler steps completed after this call."""
        return self.step if self.step_done else self.step - 1


@dataclass
class ChunkDone(Progress):
    """A causal streaming backend finished chunk `chunk` (0-based) of `chunks`: `frames` (F', H, W, 3) uint8 are every
    video frame decoded so far, final (later chunks never change them); `new_frames` = [start, end) of this chunk's.

    A Progress that repeats the step it came after (a context chunk: step 0) with the frames as its preview, so code
    that knows only Progress (long videos, compare) shows it as a preview; the UI shows it as "the clip so far".
    """

    chunk: int = 0
    chunks: int = 1
    frames: np.ndarray | None = None
    new_frames: tuple[int, int] = (0, 0)


@dataclass
class Done:
    """The run ended (finished or stopped): final frames (F, H, W, 3) uint8 and a reproducibility manifest."""

    frames: np.ndarray
    manifest: dict
    stopped: bool = False


Event = Progress | Done


class RunControl:
    """Live settings of one run, changed from other threads (UI events) and read by the loop at every step.

    The settings live in a mapping: a plain dict for a run in this process, or a mapping that crosses processes (a
    `multiprocessing.Manager().dict()` proxy, see `vdemo.ui.gpu`) when the loop runs in a ZeroGPU worker. Only a
    RunControl over such a shared mapping can be pickled: its copy in the worker reads and writes the same settings,
    so a mode, a sampler or a stop set in the app reaches the running loop at its next step. `history` (one entry per
    step: {"step", "mode", "sampler"}) belongs to the process that runs the loop and travels back in the manifest.
    """

    def __init__(self, mode: str, sampler: str, shared: MutableMapping | None = None):
        self._live: MutableMapping = shared if shared is not None else {}
        self._live.update({"mode": parse_mode(mode).value, "sampler": sampler, "stop": False})
        self.history: list[dict] = []

    @classmethod
    def _attach(cls, shared: MutableMapping) -> RunControl:
        control = cls.__new__(cls)
        control._live, control.history = shared, []
        return control

    def __reduce__(self):
        if isinstance(self._live, dict):
            raise TypeError("this RunControl's settings live in one process; create it with a shared mapping "
                            "(vdemo.ui.gpu.live_settings) to send it to another process")
        return RunControl._attach, (self._live,)

    @property
    def mode(self) -> str:
        return self._live["mode"]

    @property
    def sampler(self) -> str:
        return self._live["sampler"]

    def set_attention_mode(self, mode: str) -> None:
        self._live["mode"] = parse_mode(mode).value

    def set_sampler(self, name: str) -> None:
        if name not in SAMPLERS:
            raise RequestError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
        self._live["sampler"] = name

    def stop(self) -> None:
        self._live["stop"] = True

    @property
    def stopped(self) -> bool:
        return bool(self._live["stop"])


class Backend(ABC):
    """What actually denoises. Declares what it accepts; `run` yields Progress events then one Done."""

    name: str = "backend"
    # what the Video tab starts from on this backend: (strategy, context frames); a causal model that only continues
    # clips wants autoregressive windows with a context it can encode whole
    long_video_defaults: tuple[str, int] = ("hierarchical", 4)
    # the Video tab's starting SDEdit strength: enough re-noising for a new prompt to show (a latent model keeps the
    # object's colour through more noise than a pixel model: `python -m vdemo.eval --metrics long`)
    edit_strength: float = 0.8
    modalities: frozenset[str] = frozenset(MODALITIES)
    attention_modes: tuple[str, ...] = ATTENTION_MODES
    samplers: tuple[str, ...] = tuple(SAMPLERS)
    limits: Limits = LIMITS
    default_size: tuple[int, int] = (DEFAULTS.height, DEFAULTS.width)
    default_attention_mode: str = DEFAULTS.attention_mode
    default_sampler: str = DEFAULTS.sampler
    default_guidance: float = DEFAULTS.guidance
    default_steps: int = DEFAULTS.num_steps
    default_num_frames: int = DEFAULTS.num_frames
    # GPU seconds per run (vdemo.cost): the built-in model's own figures (2-core CPU, float32, 64 px) as an upper bound
    gpu_cost: GpuCost = GpuCost(startup_s=5.0, s_per_frame_call=0.02, attention_share=0.3, reference_px=64 * 64,
                                latent_factor=4, source="measured on a 2-core CPU; a GPU is faster")

    def preload(self) -> None:
        """Load everything a run may need (a Space calls this in the main thread before launch). Default: nothing."""

    def check(self, request: GenerationRequest) -> None:
        """Refuse what this backend cannot do, with a one-line reason."""
        request.validate(self.limits)
        unsupported = request.modalities - self.modalities
        if unsupported:
            raise RequestError(f"backend {self.name!r} does not support {', '.join(sorted(unsupported))} "
                               f"conditioning; it supports {', '.join(sorted(self.modalities))}")
        if parse_mode(request.attention_mode).value not in self.attention_modes:
            raise RequestError(f"backend {self.name!r} does not support attention mode {request.attention_mode!r}; "
                               f"choose one of: {', '.join(self.attention_modes)}")
        if request.sampler not in self.samplers:
            raise RequestError(f"backend {self.name!r} does not support sampler {request.sampler!r}; "
                               f"choose one of: {', '.join(self.samplers)}")

    def describe(self) -> dict:
        return {"backend": self.name}

    def prompt_report(self, request: GenerationRequest) -> dict | None:
        """What the backend understood of the prompt ({"used", "ignored"} words), for a backend with a closed
        vocabulary; None: it reads any prompt (or there is none)."""
        return None

    def plan_layout(self, request: GenerationRequest) -> Plan | None:
        """Motion strokes planned from the prompt (a two-stage backend's first stage), or None: nothing planned."""
        return None

    def input_warnings(self, request: GenerationRequest) -> list[str]:
        """One-line warnings about inputs this backend accepts but will likely render wrong (shown in the status
        line, recorded in the manifest as `warnings`). Default: none."""
        return []

    @abstractmethod
    def run(self, request: GenerationRequest, control: RunControl) -> Iterator[Event]:
        """Denoise, reading control.mode / control.sampler / control.stopped at every step."""


def keep_known(sample: torch.Tensor | None, known: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor | None:
    """`sample` with the known frames replaced by their clean sample (`DenoisingBackend.known_sample`); as is when
    nothing is known."""
    if sample is None or known is None:
        return sample
    return torch.where(known[0], known[1].to(sample.dtype), sample)


class DenoisingBackend(Backend):
    """A backend whose denoising loop we own: subclasses provide `prepare`, `predict` and `decode`."""

    scheduler_config: dict
    lock: threading.Lock
    output_type: str | None = None  # "sample": predict() returns x0, converted to the scheduler's prediction_type

    @abstractmethod
    def prepare(self, request: GenerationRequest) -> Any:
        """Encode the request's conditioning once per run."""

    @abstractmethod
    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        """Shape of the sample the scheduler denoises, e.g. (1, F, 3, H, W)."""

    @abstractmethod
    def predict(self, x_in: torch.Tensor, t: torch.Tensor, cond: Any, guidance: float, mode: str) -> torch.Tensor:
        """Model output for the VP-normalised x_in: the scheduler's prediction_type, or x0 if output_type = "sample"."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """Clean sample -> (F, H, W, 3) uint8 frames (also used for previews)."""

    def conditioning_report(self, cond: Any) -> dict:
        """Manifest entries about how `prepare` conditioned this run, beyond the request. Default: none."""
        return {}

    def known_sample(self, cond: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The request's known frames (a first frame, keyframes, a previous window's context) in the denoised
        sample's space: (which frames, (1, F, 1, 1, 1) bool; their clean sample, shaped like the sample), or None.
        An x0-predicting backend (`output_type` "sample") that gives them has its prediction replaced there at every
        call, so the known frames come out as given (through its decoder) and every later step sees them clean; the
        model, which also takes them as controls, still draws the rest. Default: None (the model's own prediction)."""
        return None

    def known_for(self, request: GenerationRequest, cond: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What `keep_known` replaces in this run: `known_sample` when the request keeps known frames and the backend
        predicts x0, else None."""
        return self.known_sample(cond) if request.keep_known and self.output_type == "sample" else None

    def run(self, request: GenerationRequest, control: RunControl) -> Iterator[Event]:
        """Denoise with `vdemo.samplers.sample_steps`: one Progress per model call, labelled with its scheduler step.

        Mode and sampler are read between scheduler steps only (never between the two calls of a Heun / DPM++ SDE
        step or PLMS's warm-up), so a change made while handling step k's last Progress applies from step k+1; a stop
        is honoured before any call. `history` gets one entry per call: {"step", "call", "mode", "sampler"}.
        """
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(int(request.seed))
        plan = self.plan_layout(request)
        with self.lock:
            cond = self.prepare(replace(request, strokes=plan.strokes) if plan else request)
        current = {"sampler": control.sampler, "mode": control.mode, "between_steps": True}
        known = self.known_for(request, cond)

        def model_fn(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.lock:
                return keep_known(self.predict(x_in, t, cond, request.guidance, current["mode"]), known)

        def switch_to(_calls: int) -> str | None:  # read the live sampler once per scheduler step
            wanted = control.sampler
            if not current["between_steps"] or wanted == current["sampler"]:
                return None
            current["sampler"] = wanted
            return wanted

        scheduler = make_scheduler(current["sampler"], self.scheduler_config)
        steps = sample_steps(model_fn, scheduler, self.latent_shape(request), request.num_steps, generator, switch_to,
                             self.output_type)
        x0_hat = final = None
        first_preview_s, total, steps_done, stopped = None, 0, 0, False
        while True:
            if control.stopped:
                stopped = True
                break
            if current["between_steps"]:
                current["mode"] = control.mode
            try:
                call = next(steps)
            except StopIteration as end:
                final = end.value
                break
            x0_hat, used = keep_known(call["denoised"], known), call["scheduler"]  # a multistep x0 too (PNDM)
            total = total or schedule_steps(used)  # the first call's scheduler: its whole, fresh schedule
            step, done = step_progress(used, call["index"], total)
            current["between_steps"], steps_done = done, step if done else steps_done
            calls = call["i"] + 1
            mode, sampler = current["mode"], current["sampler"]
            control.history.append({"step": step, "call": calls, "mode": mode, "sampler": sampler})
            elapsed = time.perf_counter() - started
            first_preview_s = first_preview_s if first_preview_s is not None else elapsed
            yield Progress(step, total, self.decode(x0_hat), mode, sampler, elapsed,
                           step_done=done, calls=calls, total_calls=calls + len(used.timesteps) - 1 - call["index"])
        steps.close()
        final = x0_hat if stopped else keep_known(final, known)  # a last step that does not land on x0 (PNDM, DEIS)
        frames = self.decode(final) if final is not None else np.zeros((0, 1, 1, 3), np.uint8)
        total_s = time.perf_counter() - started
        manifest = build_manifest(self, request, control.history, stopped=stopped, total_s=total_s,
                                  first_preview_s=first_preview_s, steps_done=steps_done,
                                  model_calls=len(control.history),
                                  motion_plan=plan.to_manifest() if plan else None,
                                  prompt_understood=self.prompt_report(request),
                                  warnings=self.input_warnings(request), **self.conditioning_report(cond))
        yield Done(frames, manifest, stopped)


def build_manifest(backend: Backend, request: GenerationRequest, history: list[dict], *, stopped: bool,
                   total_s: float, first_preview_s: float | None, steps_done: int, model_calls: int,
                   versions: dict | None = None, **extra) -> dict:
    """The one place a run's manifest is made (every backend calls it): what ran (`backend.describe()`), the request,
    each step's mode and sampler, timings and versions, plus a backend's own `extra` entries. The UI adds its "ui"
    section (the tab and its inputs) and export its "export" section (file names) on top."""
    return {
        **backend.describe(),
        "request": request.settings(),
        "steps": history,
        "attention_modes_used": sorted({h["mode"] for h in history}),
        "samplers_used": list(dict.fromkeys(h["sampler"] for h in history)),
        **extra,
        "stopped": stopped,
        "timings": {"total_s": round(total_s, 4), "first_preview_s": round(first_preview_s or 0.0, 4),
                    "steps_done": steps_done, "model_calls": model_calls},
        "versions": {"vdemo": __version__, "torch": torch.__version__, **(versions or {})},
    }


class Run:
    """One generation in flight: iterate it for events; steer it live from other threads."""

    def __init__(self, pipeline: VideoPipeline, request: GenerationRequest, control: RunControl | None = None):
        self.request = request
        self.control = control or RunControl(request.attention_mode, request.sampler)
        self._pipeline = pipeline

    def set_attention_mode(self, mode: str) -> None:
        if parse_mode(mode).value not in self._pipeline.backend.attention_modes:
            raise RequestError(f"backend {self._pipeline.backend.name!r} does not support attention mode {mode!r}")
        self.control.set_attention_mode(mode)

    def set_sampler(self, name: str) -> None:
        if name not in self._pipeline.backend.samplers:
            raise RequestError(f"backend {self._pipeline.backend.name!r} does not support sampler {name!r}")
        self.control.set_sampler(name)

    def stop(self) -> None:
        self.control.stop()

    def __iter__(self) -> Iterator[Event]:
        yield from self._pipeline.backend.run(self.request, self.control)


@dataclass
class VideoPipeline:
    """Holds one loaded backend (weights stay cached); shared by every tab and user. Each run is steered through its
    own `Run` (its RunControl); the app keeps each session's run in `vdemo.ui.session.ACTIVE_RUNS`."""

    backend: Backend

    def start(self, request: GenerationRequest, control: RunControl | None = None) -> Run:
        """Check the request against the backend and return a Run (iterate it to generate). `control`: the live
        settings to steer it with (default: a fresh process-local RunControl from the request's mode and sampler)."""
        self.backend.check(request)
        return Run(self, request, control)

    def generate(self, request: GenerationRequest) -> Iterator[Event]:
        """Progress events per step, then Done."""
        return iter(self.start(request))
