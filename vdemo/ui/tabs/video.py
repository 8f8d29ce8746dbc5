"""The Video tab: long videos past one denoising pass, and video-to-video (`vdemo.long`).

Modes: a long video from the prompt (autoregressive: each window conditioned on the last frames of the one before,
as VDM / LVDM / Video LDM extend; hierarchical: keyframes over the whole length, then every gap in-betweened, as
NUWA-XL / Imagen Video / Make-A-Video), extending an uploaded clip (its frames are the first context, kept exactly),
editing it with SDEdit (Meng et al. 2022: re-noised to a strength, denoised with a new prompt: the motion stays), or
filling between a first and a last frame. The shared settings' "frames" is the window size. Every model call streams
its window's predicted frames; every finished segment streams the clip so far. Stop and the live mode / sampler reach
the running window. Endpoints: `video_to_video` (the tab's Generate, every mode) and `long_video` (prompt only).
"""

from __future__ import annotations

import time

import gradio as gr
import numpy as np
import spaces

from vdemo.backends import DEFAULT_BACKEND, backend_class, get_pipeline
from vdemo.cost import request_seconds
from vdemo.long import (
    MAX_LENGTH,
    STRATEGIES,
    LongJob,
    LongProgress,
    SegmentDone,
    check_windows,
    edit,
    extend,
    generate_long,
    inbetween,
    load_clip,
    needs_known_frames,
)
from vdemo.pipeline import Done, GenerationRequest, RequestError, RunControl
from vdemo.ui import sources
from vdemo.ui.gpu import ZERO_GPU, live_settings
from vdemo.ui.messages import USER_ERRORS, guarded, user_error
from vdemo.ui.queue import Place, Work
from vdemo.ui.run import export_run
from vdemo.ui.session import ACTIVE_RUNS, session_key
from vdemo.ui.settings import Settings, info_or_error
from vdemo.ui.space import check_served
from vdemo.ui.tabs import IMAGE_TYPES, TabUI

NAME, LABEL = "video", "Video"
MODES = {"long video from the prompt": "long", "extend the upload": "extend", "edit the upload (SDEdit)": "edit",
         "in-between two keyframes": "inbetween"}
CLIP_TYPES = [".mp4", ".gif", ".webm", ".mov", ".zip"]
OUTPUT_IDS = ("vd-status", "vd-preview", "vd-video", "vd-files", "vd-manifest", "vd-seed")


def build() -> TabUI:
    """The tab's components (inside its gr.Tab)."""
    mode = gr.Radio(list(MODES), value="long video from the prompt", label="What to make", elem_id="vd-video-mode")
    prompt = gr.Textbox(label="Prompt (an edit: the new prompt)", lines=1, elem_id="vd-video-prompt",
                        value="a red circle moves right on a black background")
    prompts = gr.Textbox(label="Prompts per segment (optional, one per line, in order along the clip)", lines=2,
                         elem_id="vd-video-prompts")
    with gr.Row():
        strategy = gr.Radio(list(STRATEGIES), value="hierarchical", label="Strategy", elem_id="vd-video-strategy")
        length = gr.Slider(8, MAX_LENGTH, value=64, step=1, label="Length (frames)", elem_id="vd-video-length")
        context = gr.Slider(1, 16, value=4, step=1, label="Context frames", elem_id="vd-video-context")
    clip = gr.File(label="Clip (mp4, gif, webm or a zip of frames)", file_types=CLIP_TYPES, type="filepath",
                   height=110, elem_id="vd-video-clip")
    with gr.Row():
        strength = gr.Slider(0.1, 1.0, value=backend_class(DEFAULT_BACKEND).edit_strength, step=0.05,
                             label="Edit strength (re-noise to)",
                             elem_id="vd-video-strength")
        extend_by = gr.Slider(4, MAX_LENGTH, value=32, step=1, label="Extend by (frames)", elem_id="vd-video-extend")
    with gr.Row():
        first = gr.File(label="First frame", file_types=IMAGE_TYPES, type="filepath", height=100,
                        elem_id="vd-video-first")
        last = gr.File(label="Last frame", file_types=IMAGE_TYPES, type="filepath", height=100, elem_id="vd-video-last")
    button = gr.Button("Generate", variant="primary", elem_id="vd-generate-video")
    long_button = gr.Button("long_video", visible=False, elem_id="vd-video-long-api")
    inputs = [mode, clip, prompt, prompts, strategy, length, context, strength, extend_by, first, last]
    return TabUI(NAME, inputs, button, {"long_button": long_button, "prompt": prompt, "prompts": prompts,
                                        "strategy": strategy, "length": length, "context": context,
                                        "strength": strength})


def _outputs() -> list:
    """The shared output panel's components (status, preview, video, files, manifest) and the seed, by elem_id."""
    from gradio.context import Context

    by_id = {getattr(b, "elem_id", None): b for b in Context.root_block.blocks.values()}
    return [by_id[i] for i in OUTPUT_IDS]


def wire(ui: TabUI, settings: dict, tabs: dict) -> None:
    """The prompt-only endpoint `long_video` (no button on the page; the tab's Generate covers it too)."""
    from vdemo.ui.layout import GPU_CONCURRENCY, GPU_QUEUE
    from vdemo.ui.settings import SETTING_NAMES

    parts = ui.parts
    inputs = [parts[k] for k in ("prompt", "prompts", "strategy", "length", "context")] + \
        [settings[k] for k in SETTING_NAMES]
    parts["long_button"].click(long_video, inputs=inputs, outputs=_outputs(), api_name="long_video",
                               api_description="Text → long video (autoregressive or hierarchical windows).",
                               concurrency_id=GPU_QUEUE, concurrency_limit=GPU_CONCURRENCY, show_progress="minimal")
    settings["backend"].change(long_video_defaults, inputs=settings["backend"],
                               outputs=[parts["strategy"], parts["context"], parts["strength"]],
                               api_visibility="undocumented")


def long_video_defaults(backend: str):
    """The chosen backend's starting strategy, context (e.g. a causal model that only continues clips:
    autoregressive, 5 frames) and SDEdit strength; an unknown name leaves them."""
    from vdemo.backends import backend_names

    if backend not in backend_names():
        return gr.skip(), gr.skip(), gr.skip()
    cls = backend_class(backend)
    strategy, context = cls.long_video_defaults
    return gr.update(value=strategy), gr.update(value=context), gr.update(value=cls.edit_strength)


# ------------------------------------------------------------------------------------------------ endpoints
@guarded
def video_to_video(mode: str, clip, prompt: str, prompts: str, strategy: str, length: int, context: int,
                   strength: float, extend_by: int, first, last, backend: str, attention_mode: str, sampler: str,
                   steps: int, guidance: float, frames: int, fps: int, seed: int, random_seed: bool,
                   request: gr.Request = None):
    """Long video / video-to-video. mode: "long video from the prompt", "extend the upload", "edit the upload
    (SDEdit)" or "in-between two keyframes"; clip: mp4/gif/webm or a zip of frames; strength: SDEdit's re-noise
    level."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    if mode not in MODES:
        raise user_error(f"mode must be one of: {', '.join(MODES)}, got {mode!r}")
    build = job_builder(MODES[mode], clip, prompt, prompts, strategy, length, context, strength, extend_by, first,
                        last)
    yield from stream_long(build, settings, request)


@guarded
def long_video(prompt: str, prompts: str, strategy: str, length: int, context: int, backend: str,
               attention_mode: str, sampler: str, steps: int, guidance: float, frames: int, fps: int, seed: int,
               random_seed: bool, request: gr.Request = None):
    """Text → long video. strategy: autoregressive | hierarchical; length: frames (≤ 256); context: frames each
    autoregressive window is conditioned on; prompts: optional, one per line, per segment along the clip."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    build = job_builder("long", None, prompt, prompts, strategy, length, context, 0.8, 0, None, None)
    yield from stream_long(build, settings, request)


def _whole(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _clip(clip) -> np.ndarray:
    path = sources._path(clip)
    if path is None:
        raise RequestError("upload a clip first (mp4, gif, webm or a zip of frames)")
    return load_clip(path)


def job_builder(kind: str, clip, prompt: str, prompts: str, strategy: str, length, context, strength, extend_by,
                first, last):
    """The tab's inputs -> a function (base request) -> LongJob; uploads are read when it is called."""
    lines = tuple(line.strip() for line in (prompts or "").splitlines() if line.strip())

    def build(request: GenerationRequest) -> LongJob:
        request = replace_prompt(request, prompt, lines)
        if kind == "long":
            return LongJob(request, _whole("length", length), strategy, _whole("context", context), lines)
        if kind == "extend":
            frames = _clip(clip)
            return extend(request, frames, _whole("extend by", extend_by), _whole("context", context), lines)
        if kind == "edit":
            return edit(request, _clip(clip), float(strength), _whole("context", context), lines)
        start = sources.load_user_image(first, "a first frame")
        end = sources.load_user_image(last, "a last frame")
        return inbetween(request, start, end, _whole("length", length))

    return build


def replace_prompt(request: GenerationRequest, prompt: str, lines: tuple[str, ...]) -> GenerationRequest:
    from dataclasses import replace

    text = (prompt or "").strip() or (lines[0] if lines else "")
    return replace(request, prompt=text)


# ------------------------------------------------------------------------------------------------ the GPU job
def long_duration(backend_name: str, job: LongJob, control: RunControl) -> int:
    """spaces.GPU's duration: one window's estimate × the windows, capped at the Space's limit."""
    from vdemo.backends import loaded_backend
    from vdemo.cost import gpu_limit_s

    backend = loaded_backend(backend_name)
    if backend is None:
        return 60
    seconds = request_seconds(backend, job.request, control.mode, control.sampler) * len(job.windows)
    limit = gpu_limit_s()
    return int(min(seconds, limit) if limit else seconds)


@spaces.GPU(duration=long_duration)
def long_on_gpu(backend_name: str, job: LongJob, control: RunControl):
    """Run one long / video-to-video job on the named, already loaded backend (the ZeroGPU worker on a Space)."""
    from vdemo.ui.gpu import one_line_errors, worker_backend

    backend = worker_backend(backend_name)
    yield from one_line_errors(generate_long(backend, job, control), f"a long-video job on backend {backend_name!r}")


def check_job_fits(backend, job: LongJob) -> None:
    """Refuse (one line) a job whose windows together need more GPU time than the Space allows per run."""
    from vdemo.cost import gpu_limit_s

    limit = gpu_limit_s()
    seconds = request_seconds(backend, job.request) * len(job.windows)
    if limit and seconds > limit:
        raise user_error(f"this {job.length}-frame job needs about {seconds} s of GPU time in {len(job.windows)} "
                         f"windows, over this Space's {int(limit)} s per run: choose a shorter length, fewer steps "
                         f"or a smaller window")


class LongRun:
    """What the session registry steers: the job's RunControl, checked against the backend."""

    def __init__(self, backend, control: RunControl):
        self.backend, self.control = backend, control

    def set_attention_mode(self, mode: str) -> None:
        if mode not in self.backend.attention_modes:
            raise RequestError(f"backend {self.backend.name!r} does not support attention mode {mode!r}")
        self.control.set_attention_mode(mode)

    def set_sampler(self, name: str) -> None:
        if name not in self.backend.samplers:
            raise RequestError(f"backend {self.backend.name!r} does not support sampler {name!r}")
        self.control.set_sampler(name)

    def stop(self) -> None:
        self.control.stop()


# ------------------------------------------------------------------------------------------------ streaming
def segment_text(event: LongProgress) -> str:
    span = f"frames {event.frames[0]}–{event.frames[-1]}" if event.frames else ""
    return (f"**segment {event.segment + 1}/{event.segments}** (level {event.level}, {span}) · step "
            f"{event.step}/{event.total} · {event.elapsed_s:.2f} s · mode `{event.mode}` · sampler `{event.sampler}`")


def clip_preview(clip: np.ndarray, made: np.ndarray) -> np.ndarray:
    """The clip so far as a grid, 8 per row (frames not made yet stay dark)."""
    shown = clip.copy()
    shown[~made] //= 4
    return sources.frame_grid(shown, columns=8 if len(shown) <= 64 else 16,
                              cell_px=64 if len(shown) <= 64 else 48)


def stream_long(build, settings: Settings, request: gr.Request | None):
    """Build the job, run it (on the GPU worker on ZeroGPU), stream each step and segment, export the result."""
    info = info_or_error(settings.backend)
    check_served(settings.backend)
    with USER_ERRORS:
        pipe = get_pipeline(settings.backend)
        height, width = info.default_size
        base = GenerationRequest(num_frames=settings.num_frames, height=height, width=width,
                                 num_steps=settings.num_steps, guidance=settings.guidance, seed=settings.seed,
                                 fps=settings.fps, attention_mode=settings.attention_mode, sampler=settings.sampler)
        job = build(base)
        pipe.backend.check(job.request)
    if "image" not in info.modalities and needs_known_frames(job):
        raise user_error(f"backend {settings.backend!r} cannot take known frames, so it makes no windows after the "
                         f"first; use the built-in model (AnimateDiff: up to {info.limits.max_frames} frames with "
                         f"FreeNoise, or edit a clip of at most that many frames)")
    with USER_ERRORS:
        check_windows(pipe.backend, job)  # e.g. in-betweening windows on a backend that only continues a clip
    check_job_fits(pipe.backend, job)  # before any GPU time is asked for
    control = live_settings(job.request.attention_mode, job.request.sampler)
    run = LongRun(pipe.backend, control)
    session, started, preview = session_key(request), time.perf_counter(), None
    seed_out = settings.seed  # written back as a plain value (the API returns the seed used)
    ACTIVE_RUNS.add(session, run)
    place = Place(Work.of(settings.backend, pipe.backend, job.request, runs=len(job.windows)),
                  request_seconds(pipe.backend, job.request) * len(job.windows), stopped=lambda: control.stopped)
    try:
        with place:
            for waiting in place.waiting():
                yield waiting, gr.skip(), None, None, None, seed_out
            if not place.admitted:
                place.done()  # out of line before the message goes
                yield "**stopped** before it started (it was waiting in line)", gr.skip(), None, None, None, seed_out
                return
            yield from place.hand((f"starting: {job.kind}, {job.strategy}, {job.length} frames in "
                                   f"{len(job.windows)} segments…", gr.skip(), None, None, None, seed_out))
            done = None
            for event in long_on_gpu(settings.backend, job, control):
                if isinstance(event, Done):
                    done = event
                    break
                if getattr(event, "step_done", False) and not isinstance(event, SegmentDone):
                    place.step()
                if isinstance(event, SegmentDone):
                    preview = clip_preview(event.clip, event.made)
                    text = (f"**segment {event.segment + 1}/{event.segments} done** in {event.seconds:.2f} s · "
                            f"{int(event.made.sum())}/{job.length} frames made")
                else:
                    preview = sources.frame_grid(event.preview, columns=8)
                    text = segment_text(event)
                yield from place.hand((text, preview, gr.skip(), gr.skip(), gr.skip(), seed_out))
            if done is None:
                raise user_error("the run ended without a result")
            mp4, files, manifest = _export(done, settings, job)
            place.done(measure=not done.stopped)  # the slot is free before the result goes out
        yield _final_text(done, manifest, job, time.perf_counter() - started), preview, mp4, files, manifest, \
            settings.seed
    finally:
        control.stop()
        ACTIVE_RUNS.remove(session, run)
        place.done()


def _export(done: Done, settings: Settings, job: LongJob):
    if not len(done.frames):
        raise user_error("stopped before the first segment finished: nothing to export")
    manifest = {**done.manifest, "ui": {"tab": NAME, "random_seed": settings.random_seed, "zero_gpu": ZERO_GPU}}
    return export_run(done.frames, manifest, settings.fps, f"{NAME}-{job.kind}")


def _final_text(done: Done, manifest: dict, job: LongJob, seconds: float) -> str:
    info = manifest["long"]
    head = (f"**stopped** after {len(info['windows'])}/{len(job.windows)} segments — kept {len(done.frames)} frames"
            if done.stopped else f"**done**: {len(done.frames)} frames, {len(info['windows'])} segments in "
            f"{seconds:.2f} s ({manifest['timings']['s_per_output_frame']:.3f} s per new frame)")
    return f"{head}  \n{job.kind} · {job.strategy} · seams after frames {info['seams'][:12]}" + \
        ("…" if len(info["seams"]) > 12 else "")


ENDPOINT = video_to_video
