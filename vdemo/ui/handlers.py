"""Gradio event handlers: the five generation endpoints, live toggles, Stop, and the tabs' helper events.

Importable and testable without a browser: every handler is a plain function (generators for the generation
endpoints) taking plain values; a `gr.Request` is optional (it only supplies the session key).

Generation endpoints (stable `api_name`s; each also takes the shared settings, see SETTINGS_DOC):

    text_to_video(prompt, *settings)
    image_to_video(prompt, image, *settings)
    pose_to_video(prompt, pose_source, pose_preset, pose_video, skeleton_images, *settings)
    depth_to_video(prompt, depth_source, depth_preset, depth_model, depth_video, depth_maps, *settings)
    strokes_to_video(prompt, strokes, image, scene, *settings)

Each yields (status markdown, preview grid, mp4, [mp4, gif, frames.zip, manifest.json], manifest dict, seed) while it
runs: the preview grid (every frame's predicted clean image) and the status (step, elapsed time, mode and sampler
of each step) at every denoising step, then the exported result.

Live control: the running `Run` of each browser session sits in `ACTIVE_RUNS` under the session hash (never in a
module-level "current run" shared by all users). The attention-mode and sampler dropdowns' change events and the
Stop button look up the caller's own run and call `run.set_attention_mode` / `run.set_sampler` / `run.stop()`,
which the denoising loop reads before its next step. A cancelled or abandoned event stops its run too (`finally`).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from vdemo.config import DEFAULTS, LIMITS, MODALITIES, Limits
from vdemo.errors import UserError, internal_error_line, one_line
from vdemo.ui import sources
from vdemo.ui.sources import InputError

SESSION_FALLBACK = "local"  # the session key when a handler is called without a gr.Request (tests, scripts)
RUNS_DIR = Path(tempfile.gettempdir()) / "vdemo-runs"
RUNS_KEEP_S = 3600.0  # exported results older than this are deleted when a new run starts
MAX_MESSAGE_CHARS = 300
LOG = logging.getLogger("vdemo")

SETTINGS_DOC = """Shared settings, in this order after each endpoint's own inputs:
backend (str, a registered backend name), attention_mode (spatial | temporal | full | causal | sparse_causal),
sampler (e.g. "DDIM", "Euler", "DPM++ 2M"), steps (int), guidance (float), frames (int), fps (int), seed (int),
random_seed (bool: draw a fresh seed and report it in the manifest)."""


# ----------------------------------------------------------------------------------------------- user errors
def user_error(message: str) -> gr.Error:
    """A gr.Error whose message is one line (the first line, capped) — what the user sees in the toast."""
    return gr.Error(one_line(message, MAX_MESSAGE_CHARS), print_exception=False)


class _UserErrors:
    """`with USER_ERRORS:` turns a UserError (bad input or setup) into a one-line gr.Error; anything else propagates
    (and reaches `guarded`, which logs it as a bug)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, gr.Error):
            return False
        if isinstance(exc, UserError):
            raise user_error(str(exc)) from None
        return False


USER_ERRORS = _UserErrors()


def guarded(fn):
    """An endpoint whose every failure reaches the user as one line: gr.Error as it is, a UserError as its message,
    anything else (a bug) as "internal error …" with the full traceback in the server log — never Gradio's generic
    "upstream app has raised an exception"."""

    def convert(err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, UserError):
            return user_error(str(err))
        LOG.error("internal error in %s", fn.__name__, exc_info=err)
        return gr.Error(internal_error_line(err), print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - converted, logged when it is a bug
                raise convert(err) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - converted, logged when it is a bug
            raise convert(err) from None
    return call


# ---------------------------------------------------------------------------------------- backends & pipeline
@dataclass(frozen=True)
class Capabilities:
    """What the settings panel and the tabs offer for one backend."""

    modalities: frozenset[str]
    attention_modes: tuple[str, ...]
    samplers: tuple[str, ...]
    limits: Limits
    default_size: tuple[int, int]
    default_attention_mode: str = DEFAULTS.attention_mode
    default_sampler: str = DEFAULTS.sampler
    default_guidance: float = DEFAULTS.guidance
    default_steps: int = DEFAULTS.num_steps
    default_num_frames: int = DEFAULTS.num_frames


def _backend_class(name: str):
    """The backend's class (its capabilities are class attributes), without loading any weights; None if unknown."""
    if name == "tiny":
        from vdemo.backends.tiny import TinyBackend

        return TinyBackend
    try:
        import importlib

        from vdemo.backends.hub.registry import HUB_BACKENDS

        module, cls = HUB_BACKENDS[name].backend.split(":")
        return getattr(importlib.import_module(f"vdemo.backends.hub.{module}"), cls)
    except Exception:  # noqa: BLE001 - an unknown layout only means "load it to find out"
        return None


def _spec_frames(name: str) -> int | None:
    """A registry entry's own clip length (svd-xt: 25), where one backend class serves several entries."""
    from vdemo.backends.hub.registry import HUB_BACKENDS

    spec = HUB_BACKENDS.get(name)
    return getattr(spec, "default_num_frames", None) if spec else None


def size_setting(name: str) -> tuple[int, int] | None:
    """$VDEMO_<NAME>_SIZE ("WIDTHxHEIGHT", e.g. VDEMO_SVD_SIZE=768x432): a Space owner's frame size for one backend
    (smaller frames fit a ZeroGPU limit); None when unset."""
    import os
    import re

    var = "VDEMO_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_SIZE"
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", value)
    width, height = (int(match[1]), int(match[2])) if match else (0, 0)
    if not match or width % LIMITS.side_multiple or height % LIMITS.side_multiple or not (
            LIMITS.min_side_px <= min(width, height) and max(width, height) <= LIMITS.max_side_px):
        raise user_error(f"{var} must be WIDTHxHEIGHT, multiples of {LIMITS.side_multiple} in "
                         f"{LIMITS.min_side_px}–{LIMITS.max_side_px} px, got {value!r}")
    return height, width


def capabilities(name: str) -> Capabilities:
    """The named backend's modalities, attention modes, samplers and limits."""
    from vdemo.backends import backend_names, load_backend

    if name not in backend_names():
        raise user_error(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
    source = _backend_class(name)
    if source is None:
        with USER_ERRORS:
            source = load_backend(name)
    modes, samplers = tuple(source.attention_modes), tuple(source.samplers)
    size = size_setting(name) or tuple(getattr(source, "default_size", (DEFAULTS.height, DEFAULTS.width)))
    mode = getattr(source, "default_attention_mode", DEFAULTS.attention_mode)
    sampler = getattr(source, "default_sampler", DEFAULTS.sampler)
    return Capabilities(frozenset(source.modalities), modes, samplers, source.limits, size,
                        mode if mode in modes else modes[0], sampler if sampler in samplers else samplers[0],
                        float(getattr(source, "default_guidance", DEFAULTS.guidance)),
                        int(getattr(source, "default_steps", DEFAULTS.num_steps)),
                        int(_spec_frames(name) or getattr(source, "default_num_frames", DEFAULTS.num_frames)))


_PIPELINES: dict[str, Any] = {}
_PIPELINES_LOCK = threading.Lock()


def pipeline_for(name: str):
    """The process-wide VideoPipeline of a backend (weights load once; shared by every tab and user)."""
    from vdemo.backends import backend_names, load_backend
    from vdemo.pipeline import VideoPipeline

    if name not in backend_names():
        raise user_error(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
    with _PIPELINES_LOCK:
        if name not in _PIPELINES:
            with USER_ERRORS:
                _PIPELINES[name] = VideoPipeline(load_backend(name))
        return _PIPELINES[name]


SERVED: dict[str, str] = {}  # name -> "ok" or why it is unavailable; filled by serve_backends() at start-up


def serve_backends() -> dict[str, str]:
    """At start-up, in the main thread, before launch: load the backends this app serves (vdemo.backends.
    served_backends, ControlNets included) so that nothing loads — or downloads — inside GPU time, and a forked
    ZeroGPU worker inherits them. Returns (and keeps) name -> "ok" or the one-line reason it failed."""
    from vdemo.backends import preload, served_backends
    from vdemo.ui.gpu import start_live_settings

    start_live_settings()  # fork the live-settings process while this one is still small
    with USER_ERRORS:
        names = served_backends()
    SERVED.clear()
    SERVED.update(preload(names))
    return dict(SERVED)


def offered_backends() -> list[str]:
    """The backend dropdown's choices: what serve_backends() loaded, or (when it was not called) every backend."""
    from vdemo.backends import backend_names

    return [n for n in backend_names() if n in SERVED] if SERVED else backend_names()


def check_served(name: str) -> None:
    """A backend this app did not load at start-up is refused with the reason (never loaded inside GPU time)."""
    if SERVED and SERVED.get(name) != "ok":
        reason = SERVED.get(name) or "it is not in VDEMO_SPACE_BACKENDS"
        raise user_error(f"backend {name!r} is not available on this app: {reason}")


def model_status() -> str:
    """A banner (markdown) when the built-in model's weights are missing; empty when all is well."""
    import os

    from vdemo.backends.tiny import ASSETS

    folder = Path(os.environ.get("VDEMO_TINY_DIR") or ASSETS)
    if (folder / "config.json").exists():
        return ""
    return (f"**No built-in model found** in `{folder}`. Train one with `python -m vdemo.train`, or set "
            f"`VDEMO_TINY_DIR` to a folder with `config.json`. Generation will fail until then; presets and "
            f"stroke drawing still work.")


def warm_up(backend: str = "tiny") -> None:
    """Load a backend and run one minimal step (weights, tokenizer, kernels), so the first Generate streams at once.

    Meant for a background thread at startup; a failure (e.g. no model yet) is announced once and otherwise ignored.
    """
    from vdemo.pipeline import GenerationRequest

    try:
        caps = capabilities(backend)
        height, width = caps.default_size
        request = GenerationRequest(prompt="", num_frames=caps.limits.min_frames, height=height, width=width,
                                    num_steps=1, sampler=caps.samplers[0], attention_mode=caps.attention_modes[0])
        for _ in pipeline_for(backend).generate(request):
            pass
    except Exception as err:  # noqa: BLE001 - warm-up is an optimisation; the error shows again at Generate
        message = getattr(err, "message", None) or str(err)
        print(f"WARNING: could not warm up backend {backend!r}: {message.splitlines()[0] if message else err!r}")


# --------------------------------------------------------------------------------------------- active runs
class ActiveRuns:
    """Each browser session's running Run (session hash -> Run), so live toggles and Stop reach only its own run.

    Runs hold locks and threads' shared state: they are kept here by reference, never copied into gr.State.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, Any] = {}

    def add(self, session: str, run) -> None:
        with self._lock:
            previous = self._runs.get(session)
            self._runs[session] = run
        if previous is not None and previous is not run:  # one run per session: a new Generate stops the old one
            previous.stop()

    def remove(self, session: str, run) -> None:
        with self._lock:
            if self._runs.get(session) is run:
                del self._runs[session]

    def get(self, session: str):
        with self._lock:
            return self._runs.get(session)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)


ACTIVE_RUNS = ActiveRuns()


def session_key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or SESSION_FALLBACK


@guarded
def live_attention_mode(attention_mode: str, request: gr.Request = None) -> None:
    """Attention-mode dropdown changed: the caller's running run uses it from its next step."""
    run = ACTIVE_RUNS.get(session_key(request))
    if run is not None and attention_mode:
        with USER_ERRORS:
            run.set_attention_mode(attention_mode)


@guarded
def live_sampler(sampler: str, request: gr.Request = None) -> None:
    """Sampler dropdown changed: the caller's running run switches scheduler from its next step."""
    run = ACTIVE_RUNS.get(session_key(request))
    if run is not None and sampler:
        with USER_ERRORS:
            run.set_sampler(sampler)


@guarded
def stop_run(request: gr.Request = None) -> str | Any:
    """Stop button: the caller's run ends before its next step and keeps its last preview."""
    run = ACTIVE_RUNS.get(session_key(request))
    if run is None:
        return gr.skip()
    run.stop()
    return "stopping after this step…"


# --------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """The shared settings panel's values for one run."""

    backend: str
    attention_mode: str
    sampler: str
    num_steps: int
    guidance: float
    num_frames: int
    fps: int
    seed: int
    random_seed: bool

    @classmethod
    def from_inputs(cls, backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed) -> Settings:
        def number(name: str, value) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise user_error(f"{name} must be a number, got {value!r}")
            try:
                return float(value)
            except ValueError:
                raise user_error(f"{name} must be a number, got {value!r}") from None

        def whole(name: str, value) -> int:
            x = number(name, value)
            if not x.is_integer():
                raise user_error(f"{name} must be a whole number, got {value!r}")
            return int(x)

        if not isinstance(random_seed, bool):
            raise user_error(f"random_seed must be true or false, got {random_seed!r}")
        if random_seed:
            seed = secrets.randbelow(min(LIMITS.max_seed, 2**31 - 1) + 1)
        return cls(str(backend), str(attention_mode), str(sampler), whole("steps", steps), number("guidance", guidance),
                   whole("frames", frames), whole("fps", fps), whole("seed", seed), random_seed)


# ------------------------------------------------------------------------------------------------- formatting
def _runs_of(history: list[dict]) -> str:
    """'full ×5 → causal ×3' (mode · sampler per run of equal steps) from the loop's per-step history."""
    runs: list[list] = []
    for h in history:
        key = (h["mode"], h["sampler"])
        if runs and runs[-1][0] == key:
            runs[-1][1] += 1
        else:
            runs.append([key, 1])
    return " → ".join(f"{mode} · {sampler} ×{n}" for (mode, sampler), n in runs)


def progress_text(step: int, total: int, elapsed_s: float, history: list[dict], first_s: float | None) -> str:
    mode, sampler = history[-1]["mode"], history[-1]["sampler"]
    lines = [f"**step {step}/{total}** · {elapsed_s:.2f} s · mode `{mode}` · sampler `{sampler}`",
             f"steps: {_runs_of(history)}"]
    if first_s is not None:
        lines.append(f"first preview after {first_s:.2f} s")
    return "  \n".join(lines)


def preview_image(frames: np.ndarray) -> np.ndarray:
    """All frames of a prediction as one grid (4 per row up to 16 frames, else 8)."""
    return sources.frame_grid(frames, columns=4 if len(frames) <= 16 else 8)


# ------------------------------------------------------------------------------------------------------ export
def _clean_old_runs() -> None:
    if not RUNS_DIR.exists():
        return
    now = time.time()
    for folder in RUNS_DIR.iterdir():
        try:
            if now - folder.stat().st_mtime > RUNS_KEEP_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def export_run(frames: np.ndarray, manifest: dict, fps: int, stem: str) -> tuple[str, list[str], dict]:
    """Write mp4 + gif + frames (zipped) + manifest.json; returns (mp4, every download, the manifest as written)."""
    from vdemo.export import export_result

    _clean_old_runs()
    out_dir = RUNS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    paths = export_result(frames, out_dir, fps, manifest, stem)
    frames_zip = shutil.make_archive(str(out_dir / f"{stem}-frames"), "zip", root_dir=paths.frames_dir)
    written = json.loads(Path(paths.manifest).read_text())
    return str(paths.mp4), [str(paths.mp4), str(paths.gif), frames_zip, str(paths.manifest)], written


# -------------------------------------------------------------------------------------------------- generation
Built = tuple[dict, dict]  # (GenerationRequest fields, what the UI records in the manifest)
Builder = Callable[[int, int, int], Built]  # (num_frames, height, width) -> Built


def _history_text(history: list[dict]) -> str:
    return _runs_of(history) if history else "—"


def _generate(tab: str, build: Builder, settings: Settings, request: gr.Request | None):
    """Shared body of the five endpoints: build the request, run it live (on the GPU worker on ZeroGPU), stream
    previews, export the result."""
    from vdemo.backends import load_backend
    from vdemo.cost import check_fits
    from vdemo.pipeline import Done, GenerationRequest
    from vdemo.ui.gpu import generate_on_gpu, live_settings

    caps = capabilities(settings.backend)
    if tab not in caps.modalities:
        raise user_error(f"backend {settings.backend!r} does not support {tab} conditioning")
    check_served(settings.backend)
    pipe = pipeline_for(settings.backend)
    height, width = caps.default_size
    with USER_ERRORS:
        fields, ui_info = build(settings.num_frames, height, width)
        request_obj = GenerationRequest(
            **fields, num_frames=settings.num_frames, height=height, width=width, num_steps=settings.num_steps,
            guidance=settings.guidance, seed=settings.seed, fps=settings.fps, attention_mode=settings.attention_mode,
            sampler=settings.sampler)
        run = pipe.start(request_obj, live_settings(request_obj.attention_mode, request_obj.sampler))
        check_fits(load_backend(settings.backend), request_obj)  # before any GPU time is asked for
    session = session_key(request)
    seed_out = settings.seed if settings.random_seed else gr.skip()
    started = time.perf_counter()
    first_s, last_preview, history, event = None, None, [], None
    ACTIVE_RUNS.add(session, run)
    try:
        yield (f"starting ({settings.backend}, {settings.num_frames} frames, {settings.num_steps} steps)…", gr.skip(),
               None, None, None, seed_out)
        for event in generate_on_gpu(settings.backend, run.request, run.control):
            if isinstance(event, Done):
                break
            first_s = first_s if first_s is not None else time.perf_counter() - started
            history.append({"step": event.step, "mode": event.mode, "sampler": event.sampler})
            text = progress_text(event.step, event.total, event.elapsed_s, history, first_s)
            last_preview = preview_image(event.preview)
            yield text, last_preview, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if not isinstance(event, Done):
            raise user_error("the run ended without a result")
        history = event.manifest.get("steps") or history  # the loop's own record (it ran in the GPU worker)
        manifest = {**event.manifest, "ui": {"tab": tab, "random_seed": settings.random_seed, **ui_info,
                                             "first_preview_in_handler_s": round(first_s or 0.0, 4)}}
        mp4, files, manifest = export_run(event.frames, manifest, settings.fps, tab)
        steps_done = manifest.get("timings", {}).get("steps_done", len(history))
        head = (f"**stopped** at step {steps_done}/{settings.num_steps} — kept the last preview" if event.stopped
                else f"**done**: {steps_done} steps in {time.perf_counter() - started:.2f} s")
        text = f"{head}  \nsteps: {_history_text(history)}  \nseed {settings.seed}"
        if manifest.get("motion_plan"):
            text += f"  \nmotion planned from the prompt: {', '.join(manifest['motion_plan']['directions'])}"
        # The last preview again (same pixels: a stopped run keeps it on screen), so API callers get every output.
        yield text, last_preview, mp4, files, manifest, settings.seed
    finally:
        run.stop()  # a cancelled / abandoned event must not leave its run denoising (reaches a ZeroGPU worker too)
        ACTIVE_RUNS.remove(session, run)


@guarded
def text_to_video(prompt: str, plan_motion: bool, backend: str, attention_mode: str, sampler: str, steps: int,
                  guidance: float, frames: int, fps: int, seed: int, random_seed: bool, request: gr.Request = None):
    """Text → video. prompt: what to show, e.g. "a red circle moves right on a black background"; plan_motion: let
    the built-in model's layout planner turn the prompt into a path per object first."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    if not (prompt or "").strip():
        raise user_error("write a prompt first, e.g. “a red circle moves right on a black background”")
    fields = {"prompt": prompt, "plan_motion": bool(plan_motion)}
    yield from _generate("text", lambda num_frames, height, width: (fields, {}), settings, request)


@guarded
def image_to_video(prompt: str, image, backend: str, attention_mode: str, sampler: str, steps: int, guidance: float,
                   frames: int, fps: int, seed: int, random_seed: bool, request: gr.Request = None):
    """Image → video. image: an image file of any size (centre-cropped and resized to the model's frame), used as
    frame 0; prompt: optional text."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)

    def build(num_frames: int, height: int, width: int) -> Built:
        picture = sources.load_user_image(image)
        return {"prompt": prompt or "", "image": picture}, {"image_size": list(picture.shape[:2])}

    yield from _generate("image", build, settings, request)


@guarded
def pose_to_video(prompt: str, pose_source: str, pose_preset: str, pose_video, skeleton_images, backend: str,
                  attention_mode: str, sampler: str, steps: int, guidance: float, frames: int, fps: int, seed: int,
                  random_seed: bool, request: gr.Request = None):
    """Pose → video. pose_source: "Preset" (pose_preset: walk | wave | jump | squat), "Extract from image/video"
    (pose_video: an image or short video; OpenPose weights needed) or "Skeleton images" (skeleton_images: OpenPose
    renderings, one per frame, in name order)."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)

    def build(num_frames: int, height: int, width: int) -> Built:
        clip = sources.pose_frames(pose_source, pose_preset, pose_video, skeleton_images, num_frames, height)
        info = {"pose_source": pose_source, **({"pose_preset": pose_preset} if pose_source == "Preset" else {})}
        return {"prompt": prompt or "", "pose": clip}, info

    yield from _generate("pose", build, settings, request)


@guarded
def depth_to_video(prompt: str, depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps,
                   backend: str, attention_mode: str, sampler: str, steps: int, guidance: float, frames: int, fps: int,
                   seed: int, random_seed: bool, request: gr.Request = None):
    """Depth → video. depth_source: "Preset" (depth_preset: one of vdemo.world.DEPTH_PRESETS), "Extract from
    image/video" (depth_video with depth_model "DPT-hybrid" or "MiDaS small"; MiDaS weights needed) or "Depth maps"
    (depth_maps: grayscale images, near = bright, one per frame)."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)

    def build(num_frames: int, height: int, width: int) -> Built:
        clip = sources.depth_frames(depth_source, depth_preset, depth_model, depth_video, depth_maps, num_frames,
                                    height)
        info = {"depth_source": depth_source, **({"depth_preset": depth_preset} if depth_source == "Preset" else {}),
                **({"depth_model": depth_model} if depth_source.startswith("Extract") else {})}
        return {"prompt": prompt or "", "depth": clip}, info

    yield from _generate("depth", build, settings, request)


@guarded
def strokes_to_video(prompt: str, strokes: str, image, scene: int, backend: str, attention_mode: str, sampler: str,
                     steps: int, guidance: float, frames: int, fps: int, seed: int, random_seed: bool,
                     request: gr.Request = None):
    """Motion strokes → video. strokes: JSON [{"points": [[x, y], ...], "radius": r}, ...] with x, y in [0, 1]
    (origin top-left, drawing order; one point = an anchor); image: the first frame (optional file; without one, the
    generated scene number `scene` is used); prompt: optional text."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)

    def build(num_frames: int, height: int, width: int) -> Built:
        parsed = sources.parse_strokes_text(strokes)
        if not parsed:
            raise InputError("draw at least one stroke on the image first (drag = path, click = anchor)")
        first = sources.strokes_image(image, scene, height, width)
        info = {"first_frame": "upload" if sources._path(image) else f"scene {int(scene)}"}
        return {"prompt": prompt or "", "image": first, "strokes": tuple(parsed)}, info

    yield from _generate("strokes", build, settings, request)


ENDPOINTS = {"text": text_to_video, "image": image_to_video, "pose": pose_to_video, "depth": depth_to_video,
             "strokes": strokes_to_video}
API_NAMES = {tab: fn.__name__ for tab, fn in ENDPOINTS.items()}


# ------------------------------------------------------------------------------------------ tab helper events
def image_preview(image, backend: str = "tiny") -> np.ndarray | None:
    """Image tab: what the model will see (centre-cropped, resized to the backend's frame), shown pixel-exact."""
    if sources._path(image) is None:
        return None
    with USER_ERRORS:
        picture = sources.load_user_image(image)
    height, width = capabilities(backend).default_size
    return sources.upscale_nearest(sources.fit(picture, height, width), 256)


def pose_preview(pose_source: str, pose_preset: str, pose_video, skeleton_images, frames: int, backend: str):
    """Pose tab: the skeleton frames the run will use."""
    size = capabilities(backend).default_size[0]
    with USER_ERRORS:
        clip = sources.pose_frames(pose_source, pose_preset, pose_video, skeleton_images, int(frames), size)
    return preview_image(clip)


def depth_preview(depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps, frames: int,
                  backend: str):
    """Depth tab: the depth frames the run will use."""
    size = capabilities(backend).default_size[0]
    with USER_ERRORS:
        clip = sources.depth_frames(depth_source, depth_preset, depth_model, depth_video, depth_maps, int(frames),
                                    size)
    return preview_image(clip)


def pose_preview_quiet(pose_source: str, pose_preset: str, pose_video, skeleton_images, frames: int, backend: str):
    """Source, preset or frame count changed: redraw without running the detector and without error toasts (an
    input not uploaded yet just clears the preview)."""
    if pose_source.startswith("Extract"):
        return gr.skip() if sources._path(pose_video) else None
    try:
        return pose_preview(pose_source, pose_preset, pose_video, skeleton_images, frames, backend)
    except gr.Error:
        return None


def depth_preview_quiet(depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps, frames: int,
                        backend: str):
    """As pose_preview_quiet, for the depth tab."""
    if depth_source.startswith("Extract"):
        return gr.skip() if sources._path(depth_video) else None
    try:
        return depth_preview(depth_source, depth_preset, depth_model, depth_video, depth_maps, frames, backend)
    except gr.Error:
        return None


def depth_model_changed(depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps, frames: int,
                        backend: str):
    """Another MiDaS model picked: re-extract if there is an upload to extract from."""
    if not sources._path(depth_video):
        return gr.skip()
    return depth_preview(depth_source, depth_preset, depth_model, depth_video, depth_maps, frames, backend)


def source_visibility(source: str):
    """Pose/depth tabs: show only the inputs of the chosen source (preset, upload to extract, or control images)."""
    return (gr.update(visible=source == "Preset"), gr.update(visible=source.startswith("Extract")),
            gr.update(visible=not (source == "Preset" or source.startswith("Extract"))))


# ---------------------------------------------------------------------------------------------- strokes pad
def strokes_base(image, scene, backend: str = "tiny") -> np.ndarray:
    """The pad's background: the uploaded image or the generated scene, cropped to the backend's frame aspect."""
    from vdemo.ui.canvas import pad_shape

    height, width = pad_shape(*capabilities(backend).default_size)
    with USER_ERRORS:
        return sources.strokes_image(image, scene, height, width)


def _pad_outputs(strokes: list, base: np.ndarray, frames: int):
    from vdemo.ui.canvas import render_pad

    return strokes, sources.strokes_text(strokes), render_pad(base, strokes, int(frames))


def strokes_redraw(strokes: list, base: np.ndarray, frames: int) -> str:
    """The frame count changed: redraw the pad (one dot per frame)."""
    from vdemo.ui.canvas import render_pad

    return render_pad(base, strokes, int(frames))


def strokes_add(strokes: list, base: np.ndarray, radius: float, frames: int, evt: gr.EventData):
    """The pad fired `stroke` with {"points": [[x, y], ...]} in drawing order: append it (max LIMITS.max_strokes)."""
    points = getattr(evt, "_data", None) or {}
    with USER_ERRORS:
        stroke = sources.new_stroke(points.get("points") if isinstance(points, dict) else None, float(radius))
    if len(strokes) >= LIMITS.max_strokes:
        raise user_error(f"at most {LIMITS.max_strokes} strokes; undo one first")
    return _pad_outputs([*strokes, stroke], base, frames)


def strokes_undo(strokes: list, base: np.ndarray, frames: int):
    return _pad_outputs(list(strokes[:-1]), base, frames)


def strokes_clear(base: np.ndarray, frames: int):
    return _pad_outputs([], base, frames)


def strokes_edit(text: str, base: np.ndarray, frames: int):
    """The JSON box was edited by hand (or filled by an example): parse it into the state and redraw."""
    with USER_ERRORS:
        strokes = sources.parse_strokes_text(text)
    from vdemo.ui.canvas import render_pad

    return strokes, render_pad(base, strokes, int(frames))


def strokes_example(text: str, image, scene, frames: int, backend: str = "tiny"):
    """An example row filled the JSON box and the scene number: load both into the state and the pad."""
    base = strokes_base(image, scene, backend)
    strokes, pad = strokes_edit(text, base, frames)
    return strokes, base, pad


def strokes_new_base(image, scene, strokes: list, frames: int, backend: str = "tiny"):
    """A new first frame (upload, scene number or backend): redraw the pad with the current strokes."""
    from vdemo.ui.canvas import render_pad

    base = strokes_base(image, scene, backend)
    return base, render_pad(base, strokes, int(frames))


def new_scene(strokes: list, frames: int, backend: str = "tiny"):
    """'New scene' button: a random generated first frame (and no upload)."""
    scene = secrets.randbelow(10_000)
    base, pad = strokes_new_base(None, scene, strokes, frames, backend)
    return scene, None, base, pad


# ------------------------------------------------------------------------------------------------- settings
def on_backend_change(backend: str, attention_mode: str, sampler: str):
    """Backend changed: offer only its modes, samplers and tabs (the chosen mode and sampler stay when it has them,
    else its defaults); its own default steps, guidance and frames; slider ranges from its limits."""
    caps = capabilities(backend)
    mode = attention_mode if attention_mode in caps.attention_modes else caps.default_attention_mode
    samp = sampler if sampler in caps.samplers else caps.default_sampler
    lim = caps.limits
    tabs = [gr.update(visible=m in caps.modalities) for m in MODALITIES]
    return (gr.update(choices=list(caps.attention_modes), value=mode),
            gr.update(choices=list(caps.samplers), value=samp),
            gr.update(minimum=lim.min_steps, maximum=lim.max_steps, value=caps.default_steps),
            gr.update(minimum=lim.min_guidance, maximum=lim.max_guidance, value=caps.default_guidance),
            gr.update(minimum=lim.min_frames, maximum=lim.max_frames, value=caps.default_num_frames), *tabs)


def gpu_estimate(backend: str, attention_mode: str, sampler: str, steps, frames) -> str:
    """The GPU time a Generate with these settings would ask for, next to the button on a ZeroGPU Space ("" when the
    app has no GPU limit); names settings that fit when it is over the limit."""
    from dataclasses import replace as _replace

    from vdemo.backends import load_backend
    from vdemo.cost import fitting_settings, gpu_limit_s, request_seconds
    from vdemo.pipeline import GenerationRequest

    limit = gpu_limit_s()
    if not limit:
        return ""
    try:
        caps = capabilities(backend)
        height, width = caps.default_size
        req = GenerationRequest(num_frames=int(frames), height=height, width=width, num_steps=int(steps),
                                sampler=sampler, attention_mode=attention_mode)
        source = load_backend(backend) if SERVED.get(backend) == "ok" else _backend_class(backend)
        seconds = request_seconds(source, req)
    except (gr.Error, UserError, TypeError, ValueError):
        return ""
    if seconds <= limit:
        return f"GPU time for this run ≈ **{seconds} s** (this Space allows {limit} s per run)"
    options = fitting_settings(source, _replace(req), limit)
    return (f"GPU time for this run ≈ **{seconds} s**, over this Space's {limit} s: "
            f"{'try ' + ', or '.join(options) if options else 'choose fewer frames, steps or a smaller size'}")
