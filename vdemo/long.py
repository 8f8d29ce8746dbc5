"""Long videos and video-to-video on the shared pipeline: many denoising windows, each an ordinary GenerationRequest.

One denoising pass makes at most `LIMITS.max_frames` frames. Two ways past that, both run here on any backend that
takes known frames (the `image` modality: known frames with a mask, as the built-in model was trained). A backend may
take only some layouts of them (AnyFlow-FAR, a causal model: a prefix only, so autoregressive windows and no
in-betweening); `check_windows` asks it about every window before the first one runs:

- **autoregressive** (VDM, Ho et al. 2022, §3.1 "reconstruction-guided" extension; LVDM, He et al. 2022; Video LDM,
  Blattmann et al. 2023): the first window from the prompt, then each window conditioned on the previous window's
  last `context` frames. Each window sees only its context, so errors compound along the clip.
- **hierarchical** (NUWA-XL, Yin et al. 2023, "diffusion over diffusion"; Imagen Video, Ho et al. 2022; Make-A-Video,
  Singer et al. 2022, frame interpolation): sparse keyframes over the whole length in one pass, then every gap filled
  with both its ends known (in-betweening), recursively (sparser sub-keyframes first) as deep as the length needs.

`plan_windows` is the pure schedule (tested: every frame made once, context overlaps, levels); `generate_long` runs it
and yields one `LongProgress` per model call (a `Progress` with its segment), a `SegmentDone` per window and a final
`Done` whose manifest records the strategy, windows and seams (consecutive frames made by different windows). Stop
(`RunControl.stop`) ends it between or within windows; the live mode / sampler reach every window through the same
RunControl. With the built-in model's layout planner the prompt's plan is made once over the whole length and each
window gets its slice as motion strokes, so the object's track can be checked against one plan.

Video-to-video on the same schedule: `extend` (autoregressive, the uploaded frames as context, kept exactly),
`inbetween` (first and last frame given, hierarchical) and `edit`, SDEdit (Meng et al. 2022): each window's frames
are noised to `strength`·T and denoised from there with the new prompt, so the layout and motion of the clip survive
and what the prompt says changes (`sdedit_run`, for backends whose denoising loop we own).
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vdemo import __version__
from vdemo.config import LIMITS
from vdemo.errors import UserError
from vdemo.media import MediaError, fit_image, load_frames
from vdemo.pipeline import (
    Backend,
    DenoisingBackend,
    Done,
    GenerationRequest,
    Progress,
    RequestError,
    RunControl,
    keep_known,
)
from vdemo.samplers import from_clean, make_scheduler, scheduler_step, set_timesteps, split_prediction
from vdemo.strokes import Stroke, resample_stroke

STRATEGIES = ("autoregressive", "hierarchical")
MAX_LENGTH = 256  # frames of one long video (8 windows of 32, or 16+ of 16 with context)
MIN_WINDOW = LIMITS.min_frames
MAX_CLIP_FRAMES = 4 * LIMITS.max_frames  # an uploaded clip (media.load_video subsamples longer ones to this)


# ------------------------------------------------------------------------------------------------ the schedule
@dataclass(frozen=True)
class Window:
    """One denoising pass: absolute frame indices (increasing) and which of them are known (conditioned on)."""

    index: int
    level: int  # autoregressive: 0; hierarchical: 0 = keyframes over the whole length, k = in-betweening depth k
    frames: tuple[int, ...]
    known: tuple[int, ...]

    @property
    def new(self) -> tuple[int, ...]:
        return tuple(f for f in self.frames if f not in set(self.known))

    def to_manifest(self) -> dict:
        return {"index": self.index, "level": self.level, "frames": list(self.frames), "known": list(self.known),
                "new": len(self.new)}


def _check_schedule(length: int, window: int, context: int, strategy: str, given: Sequence[int]) -> None:
    if strategy not in STRATEGIES:
        raise RequestError(f"strategy must be one of: {', '.join(STRATEGIES)}, got {strategy!r}")
    for name, value, lo, hi in (("length", length, MIN_WINDOW, MAX_LENGTH),
                                ("window", window, MIN_WINDOW, LIMITS.max_frames),
                                ("context", context, 1, max(1, window - 1))):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise RequestError(f"{name} must be a whole number {lo}–{hi}, got {value!r}")
    if any(not 0 <= g < length for g in given):
        raise RequestError(f"given frames must lie in 0–{length - 1}, got {sorted(given)}")
    if strategy == "autoregressive" and sorted(given) != list(range(len(given))):
        raise RequestError("autoregressive extension needs the given frames to be the clip's first frames")
    if strategy == "hierarchical" and not set(given) <= {0, length - 1}:
        raise RequestError("hierarchical generation takes at most the first and the last frame as given")


def plan_windows(length: int, window: int, context: int, strategy: str, given: Sequence[int] = ()) -> list[Window]:
    """The windows that make `length` frames, in run order. `given`: frames known before the first window (an
    uploaded clip's prefix for autoregressive extension; the first / last frame for hierarchical in-betweening)."""
    _check_schedule(length, window, context, strategy, given)
    if strategy == "autoregressive":
        return _autoregressive(length, window, context, len(given))
    return _hierarchical(length, window, set(given))


def _autoregressive(length: int, window: int, context: int, done: int) -> list[Window]:
    windows: list[Window] = []
    if done == 0:
        windows.append(Window(0, 0, tuple(range(min(window, length))), ()))
        done = len(windows[0].frames)
    while done < length:
        start = max(0, done - context)
        stop = min(length, start + window)
        start = min(start, max(0, stop - MIN_WINDOW))  # a short last window takes more context instead
        windows.append(Window(len(windows), 0, tuple(range(start, stop)), tuple(range(start, done))))
        done = stop
    return windows


def _spread(a: int, b: int, count: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unique(np.round(np.linspace(a, b, count)).astype(int)))


def _capacity(window: int, depth: int) -> int:
    """Frames a span can have so that `depth` levels of in-betweening windows (≤ window frames each) fill it."""
    cap = window
    for _ in range(depth):
        cap = (window - 1) * (cap - 1) + 1
    return cap


def _split(a: int, b: int, window: int) -> tuple[int, ...]:
    """The frames of the window over span a..b: all of them if they fit, else as few evenly spread keyframes as
    leave every sub-span fillable one level shallower (NUWA-XL's coarse-to-fine, as deep as the length needs)."""
    n = b - a + 1
    if n <= window:
        return tuple(range(a, b + 1))
    depth = 1
    while _capacity(window, depth) < n:
        depth += 1
    sub = _capacity(window, depth - 1)
    return _spread(a, b, min(window, max(MIN_WINDOW, -(-(n - 1) // (sub - 1)) + 1)))


def _hierarchical(length: int, window: int, given: set[int]) -> list[Window]:
    made, windows = set(given), []
    spans = [(0, length - 1, 0)]
    while spans:  # breadth first: a level's spans all filled before the next level's
        a, b, level = spans.pop(0)
        frames = _split(a, b, window)
        if len(frames) < b - a + 1:  # keyframes: their gaps come one level deeper
            spans.extend((c, d, level + 1) for c, d in zip(frames, frames[1:]) if d - c > 1)
        else:
            lo, hi = a, b
            while hi - lo + 1 < MIN_WINDOW:  # a one- or two-frame gap: widen the window with neighbours
                hi, lo = (hi + 1, lo) if hi < length - 1 else (hi, lo - 1)
            frames = tuple(range(lo, hi + 1))
        windows.append(Window(len(windows), level, frames, tuple(f for f in frames if f in made)))
        made |= set(frames)
    return windows


def owners(windows: Sequence[Window], length: int) -> np.ndarray:
    """(length,) int: the window that made each frame (-1: given)."""
    owner = np.full(length, -1, int)
    for w in windows:
        owner[list(w.new)] = w.index
    return owner


def seams(windows: Sequence[Window], length: int) -> list[int]:
    """Frames f where f and f + 1 came from different windows (a given frame counts as its own source)."""
    owner = owners(windows, length)
    return [int(f) for f in range(length - 1) if owner[f] != owner[f + 1]]


# ------------------------------------------------------------------------------------------------------- events
@dataclass
class LongProgress(Progress):
    """A model call inside window `segment` (0-based) of `segments`; `preview` is that window's predicted frames."""

    segment: int = 0
    segments: int = 1
    level: int = 0
    frames: tuple[int, ...] = ()


@dataclass
class SegmentDone:
    """Window `segment` finished: `clip` holds every frame made so far (others black), `made` which ones."""

    segment: int
    segments: int
    window: Window
    clip: np.ndarray
    made: np.ndarray
    seconds: float


@dataclass
class LongJob:
    """Everything one long / video-to-video run needs; plain, picklable data (it crosses into a ZeroGPU worker).

    `request` is one window's request (its num_frames is the window size); `given` are known frames (index, frame)
    before the first window; `init_video` (length, H, W, 3) with `strength` in (0, 1] turns every window into SDEdit.
    """

    request: GenerationRequest
    length: int
    strategy: str = "autoregressive"
    context: int = 4
    prompts: tuple[str, ...] = ()
    given: tuple[tuple[int, np.ndarray], ...] = ()
    init_video: np.ndarray | None = None
    strength: float = 0.6
    kind: str = "long"  # long | extend | edit | inbetween (for the manifest)
    windows: list[Window] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.request, GenerationRequest):
            raise RequestError("request must be a GenerationRequest")
        if self.request.image is not None:  # image-to-video: the first frame is given
            if any(i == 0 for i, _ in self.given):
                raise RequestError("give the first frame once: as the image or as a given frame")
            self.given = ((0, self.request.image), *self.given)
            self.request = replace(self.request, image=None)
        self.prompts = tuple(p.strip() for p in self.prompts if p and p.strip())
        self.windows = plan_windows(self.length, self.request.num_frames, self.context, self.strategy,
                                    [i for i, _ in self.given])
        if self.init_video is not None:
            if not 0.0 < float(self.strength) <= 1.0:
                raise RequestError(f"edit strength must be in (0, 1], got {self.strength!r}")
            if len(self.init_video) != self.length:
                raise RequestError(f"the video to edit has {len(self.init_video)} frames, the length is {self.length}")
        if len(self.prompts) > len(self.windows):
            raise RequestError(f"{len(self.prompts)} prompts for {len(self.windows)} segments: give at most one "
                               f"prompt per segment")

    def prompt_for(self, w: Window) -> str:
        """Prompts split the length into equal parts; a window takes the part of its new frames' middle (the
        hierarchical keyframe pass, which spans everything, takes the first prompt)."""
        if not self.prompts:
            return self.request.prompt
        if self.strategy == "hierarchical" and w.level == 0:
            return self.prompts[0]
        middle = float(np.mean(w.new)) if w.new else float(np.mean(w.frames))
        return self.prompts[min(len(self.prompts) - 1, int(middle / self.length * len(self.prompts)))]


# -------------------------------------------------------------------------------------------------- running
def _backend(pipe_or_backend, job: LongJob) -> Backend:
    backend = getattr(pipe_or_backend, "backend", pipe_or_backend)
    if "image" not in backend.modalities and needs_known_frames(job):
        raise RequestError(f"backend {backend.name!r} cannot take known frames, so it cannot make long videos window "
                           f"by window; use the built-in model (or AnimateDiff's FreeNoise for long text-to-video)")
    check_windows(backend, job)
    return backend


def check_windows(backend: Backend, job: LongJob) -> None:
    """Refuse (one line) a job with a window the backend would refuse, before any window runs: each window's request
    goes through `backend.check` with blank frames where its known frames will be."""
    blank = np.zeros((job.request.height, job.request.width, 3), np.uint8)
    for w in job.windows:
        try:
            backend.check(_window_request(job, w, {f: blank for f in w.known}, None))
        except RequestError as err:
            hint = "; autoregressive windows know only their first frames" if job.strategy == "hierarchical" and \
                job.kind == "long" and w.known else ""
            raise RequestError(f"{job.strategy} window {w.index + 1}/{len(job.windows)} (frames {w.frames[0]}–"
                               f"{w.frames[-1]}, known {list(w.known)}): {err}{hint}") from None


@dataclass(frozen=True)
class Paths:
    """Where each object goes over the whole length: (length, 2) points per object, their radii, and their source."""

    points: tuple[np.ndarray, ...]
    radii: tuple[float, ...]
    manifest: dict

    def strokes(self, frames: Sequence[int]) -> tuple[Stroke, ...]:
        """Each path's slice at `frames`, as one window's motion strokes."""
        return tuple(Stroke(tuple((float(x), float(y)) for x, y in p[list(frames)]), r)
                     for p, r in zip(self.points, self.radii))


def needs_known_frames(job: LongJob) -> bool:
    """Whether some window conditions on known frames (a one-window edit or clip does not)."""
    return any(w.known for w in job.windows)


def motion_paths(backend: Backend, job: LongJob) -> Paths | None:
    """The request's own strokes stretched over the whole length, else the layout planner's plan for the (single)
    prompt made once over the whole length (from the first frame's objects when one is given); None: no paths."""
    req = job.request
    if req.strokes:
        return Paths(tuple(resample_stroke(s.points, job.length, np.float64) for s in req.strokes),
                     tuple(s.radius for s in req.strokes), {"by": "strokes"})
    if job.init_video is not None or len(set(job.prompts)) > 1 or not req.plan_motion or \
            any(i > 0 for i, _ in job.given):
        return None
    first = dict(job.given).get(0)
    plan = backend.plan_layout(replace(req, image=first, keyframes=(), strokes=()))
    if not plan:
        return None
    return Paths(tuple(resample_stroke(s.points, job.length, np.float64) for s in plan.strokes),
                 tuple(s.radius for s in plan.strokes), plan.to_manifest())


def _window_request(job: LongJob, w: Window, clip: np.ndarray, paths: Paths | None) -> GenerationRequest:
    known = set(w.known)
    return replace(job.request, prompt=job.prompt_for(w), num_frames=len(w.frames), image=None,
                   keyframes=tuple((i, clip[f]) for i, f in enumerate(w.frames) if f in known),
                   strokes=paths.strokes(w.frames) if paths else (),
                   seed=(int(job.request.seed) + 7919 * w.index) % (LIMITS.max_seed + 1),
                   plan_motion=job.request.plan_motion and paths is None and job.init_video is None)


def generate_long(pipe_or_backend, job: LongJob, control: RunControl | None = None) -> Iterator:
    """Run `job` window by window: LongProgress per model call, SegmentDone per window, then Done."""
    backend = _backend(pipe_or_backend, job)
    req = job.request
    control = control or RunControl(req.attention_mode, req.sampler)
    started = time.perf_counter()
    clip = np.zeros((job.length, req.height, req.width, 3), np.uint8)
    made = np.zeros(job.length, bool)
    for index, frame in job.given:
        clip[index], made[index] = fit_image(frame, req.height, req.width), True
    planned = motion_paths(backend, job)
    records, stopped, first_preview = [], False, None
    for w in job.windows:
        if control.stopped:
            stopped = True
            break
        t0, calls0 = time.perf_counter(), len(control.history)
        window_req = _window_request(job, w, clip, planned)
        backend.check(window_req)
        events = backend.run(window_req, control) if job.init_video is None else \
            sdedit_run(backend, window_req, control, job.init_video[list(w.frames)], job.strength)
        done = None
        for event in events:
            if isinstance(event, Done):
                done = event
                break
            first_preview = first_preview if first_preview is not None else time.perf_counter() - started
            yield LongProgress(event.step, event.total, event.preview, event.mode, event.sampler,
                               time.perf_counter() - started, event.step_done, event.calls, event.total_calls,
                               segment=w.index, segments=len(job.windows), level=w.level, frames=w.frames)
        if done is None or done.stopped:
            stopped = True
            break
        for position, f in enumerate(w.frames):
            if f in set(w.new):
                clip[f], made[f] = done.frames[position], True
        seconds = time.perf_counter() - t0
        records.append({**w.to_manifest(), "prompt": window_req.prompt, "seed": window_req.seed,
                        "seconds": round(seconds, 3), "model_calls": len(control.history) - calls0,
                        **{k: done.manifest[k] for k in ("video_context",) if k in done.manifest}})
        yield SegmentDone(w.index, len(job.windows), w, clip.copy(), made.copy(), seconds)
    total_s = time.perf_counter() - started
    manifest = long_manifest(backend, job, control, records, planned, stopped, total_s, first_preview, made)
    yield Done(clip[made], manifest, stopped)


def long_manifest(backend: Backend, job: LongJob, control: RunControl, records: list[dict], planned, stopped: bool,
                  total_s: float, first_preview: float | None, made: np.ndarray) -> dict:
    """What the run did: strategy, every window (frames, known, prompt, seed, seconds), seams, timings."""
    new_frames = int(made.sum()) - len(job.given)
    return {
        **backend.describe(),
        "request": job.request.settings(),
        "long": {"kind": job.kind, "strategy": job.strategy, "length": job.length, "window": job.request.num_frames,
                 "context": job.context if job.strategy == "autoregressive" else 2,
                 "levels": 1 + max(w.level for w in job.windows), "prompts": list(job.prompts) or [job.request.prompt],
                 "given_frames": [int(i) for i, _ in job.given],
                 "edit_strength": float(job.strength) if job.init_video is not None else None,
                 "windows": records, "windows_planned": len(job.windows),
                 "seams": seams(job.windows, job.length), "frames_made": [int(i) for i in np.flatnonzero(made)]},
        "steps": control.history,
        "attention_modes_used": sorted({h["mode"] for h in control.history}),
        "samplers_used": list(dict.fromkeys(h["sampler"] for h in control.history)),
        "motion_plan": planned.manifest if planned else None,
        "stopped": stopped,
        "timings": {"total_s": round(total_s, 4), "first_preview_s": round(first_preview or 0.0, 4),
                    "steps_done": len(control.history), "model_calls": len(control.history),
                    "s_per_output_frame": round(total_s / max(new_frames, 1), 4)},
        "versions": {"vdemo": __version__, "torch": torch.__version__},
    }


# ------------------------------------------------------------------------------------------------------ SDEdit
def encode_pixels(backend: DenoisingBackend, request: GenerationRequest, frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> the backend's sample: pixels in [-1, 1] at the request's size, through the backend's
    own encoder (`encode_frames`, a latent model such as tiny-v2) when it has one."""
    shape = backend.latent_shape(request)
    fitted = np.stack([fit_image(f, request.height, request.width) for f in frames])
    x0 = torch.from_numpy(fitted).float().div(127.5).sub(1.0).permute(0, 3, 1, 2)[None]
    encode = getattr(backend, "encode_frames", None)
    if encode is not None:
        with torch.no_grad():
            x0 = encode(x0)
    if tuple(x0.shape) != tuple(shape):
        raise RequestError(f"backend {backend.name!r} denoises latents {shape}; it has no encoder for editing")
    return x0


def sdedit_run(backend: Backend, request: GenerationRequest, control: RunControl, init: np.ndarray,
               strength: float) -> Iterator:
    """SDEdit (Meng et al. 2022): noise `init` to the scheduler step at `strength` of the schedule and denoise the
    rest with the request's conditioning. Mode is live per step; the sampler is read once per window."""
    if hasattr(backend, "edit_video"):  # a hub backend with its own video-to-video pipeline
        yield from backend.edit_video(request, init, strength, control)
        return
    if not isinstance(backend, DenoisingBackend):
        raise RequestError(f"backend {backend.name!r} cannot edit a video (it has no video-to-video pipeline)")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(int(request.seed))
    with backend.lock:
        cond = backend.prepare(request)
    known = backend.known_for(request, cond)  # a later window's context frames, kept as given
    sampler = control.sampler
    scheduler = make_scheduler(sampler, backend.scheduler_config)
    timesteps = set_timesteps(scheduler, request.num_steps)
    start = min(len(timesteps) - 1, int(round(len(timesteps) * (1.0 - float(strength)))))
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    x0 = encode_pixels(backend, request, init)
    noise = torch.randn(x0.shape, generator=generator)
    x = scheduler.add_noise(x0, noise, timesteps[start:start + 1])
    x0_hat, stopped, total = x0, False, len(timesteps) - start
    for i in range(start, len(timesteps)):
        if control.stopped:
            stopped = True
            break
        mode, t = control.mode, timesteps[i]
        x_in = scheduler.scale_model_input(x, t)
        with backend.lock:
            out = backend.predict(x_in, t, cond, request.guidance, mode)
        if backend.output_type == "sample":
            out = from_clean(scheduler, keep_known(out, known), x_in, t)
        x0_hat = keep_known(split_prediction(scheduler, out, x_in, t)[0], known)
        x = scheduler_step(scheduler, out, t, x, generator)
        step = i - start + 1
        control.history.append({"step": step, "call": step, "mode": mode, "sampler": sampler})
        yield Progress(step, total, backend.decode(x0_hat), mode, sampler, time.perf_counter() - started,
                       calls=step, total_calls=total)
    final = x0_hat if stopped else keep_known(x, known)
    yield Done(backend.decode(final), {"sdedit": {"strength": float(strength), "start_step": start}}, stopped)


# ------------------------------------------------------------------------------------------- video-to-video jobs
def extend(request: GenerationRequest, clip: np.ndarray, n_frames: int, context: int = 4,
           prompts: Sequence[str] = ()) -> LongJob:
    """Extend `clip` forward by n_frames: autoregressive windows, the clip's frames given (kept exactly)."""
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise RequestError(f"extend by a whole number of frames ≥ 1, got {n_frames!r}")
    given = tuple((i, frame) for i, frame in enumerate(clip))
    return LongJob(request, len(clip) + int(n_frames), "autoregressive", context, tuple(prompts), given, kind="extend")


def inbetween(request: GenerationRequest, first: np.ndarray, last: np.ndarray, n_frames: int) -> LongJob:
    """n_frames from `first` to `last` (both kept): hierarchical in-betweening."""
    return LongJob(request, int(n_frames), "hierarchical", 2, (), ((0, first), (int(n_frames) - 1, last)),
                   kind="inbetween")


def edit(request: GenerationRequest, clip: np.ndarray, strength: float, context: int = 4,
         prompts: Sequence[str] = ()) -> LongJob:
    """SDEdit `clip` with the request's prompt at `strength`; longer than one window: autoregressive windows, each
    conditioned on the previous window's last `context` edited frames."""
    fitted = np.stack([fit_image(f, request.height, request.width) for f in clip])
    window = min(request.num_frames, len(fitted))
    if len(fitted) < MIN_WINDOW:
        raise RequestError(f"the video to edit needs at least {MIN_WINDOW} frames, got {len(fitted)}")
    return LongJob(replace(request, num_frames=window, plan_motion=False), len(fitted), "autoregressive",
                   min(context, window - 1), tuple(prompts), (), fitted, float(strength), kind="edit")


def job_from_args(args, request: GenerationRequest) -> LongJob:
    """The CLI's flags (`python -m vdemo generate --length … | --video … | --image … --last …`) -> a LongJob."""
    prompts = tuple(args.prompts or ())
    if args.video:
        clip = load_clip(args.video)
        if args.edit_strength is not None:
            return edit(request, clip, args.edit_strength, args.context, prompts)
        if args.extend:
            return extend(request, clip, args.extend, args.context, prompts)
        raise RequestError("with --video, say what to do: --extend N or --edit-strength S")
    if args.last:
        from vdemo.media import load_image

        if request.image is None:
            raise RequestError("--last needs --image as the first frame")
        return inbetween(replace(request, image=None), request.image, load_image(args.last), args.length or 16)
    return LongJob(request, args.length, args.strategy, args.context, prompts)


# ------------------------------------------------------------------------------------------------- uploads
def load_clip(path: str | Path) -> np.ndarray:
    """An uploaded clip as RGB uint8 (F, H, W, 3): a video (mp4, gif, webm, …), a zip of frames (sorted by name), or
    a folder. One-line MediaError for anything unreadable, empty, too large or too long."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return _load_zip(path)
    try:
        clip = load_frames(path)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        raise MediaError(f"{path.name} is not a readable clip ({type(err).__name__})") from None
    if len(clip) == 0:
        raise MediaError(f"{path.name} has no frames")
    return clip


def _load_zip(path: Path) -> np.ndarray:
    import tempfile

    from vdemo.media import IMAGE_SUFFIXES, check_size

    check_size(path)
    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
            names = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES
                           and not n.startswith("__MACOSX"))
            if not names:
                raise MediaError(f"{path.name} has no image files")
            if len(names) > MAX_CLIP_FRAMES:
                raise MediaError(f"{path.name} has {len(names)} frames; the limit is {MAX_CLIP_FRAMES}")
            if sum(archive.getinfo(n).file_size for n in names) > 8 * LIMITS.max_upload_mb * 2**20:
                raise MediaError(f"{path.name} unpacks to more than {8 * LIMITS.max_upload_mb} MB")
            for i, name in enumerate(names):
                (Path(tmp) / f"{i:05d}{Path(name).suffix.lower()}").write_bytes(archive.read(name))
            return load_frames(Path(tmp))
    except zipfile.BadZipFile:
        raise MediaError(f"{path.name} is not a readable zip file") from None


# ------------------------------------------------------------------------------------------------------ drift
def flicker(frames: np.ndarray) -> np.ndarray:
    """(F − 1,) mean absolute pixel change (0–255) between consecutive frames."""
    f = frames.astype(np.float32)
    return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))


def seam_jump(frames: np.ndarray, seam_frames: Sequence[int]) -> dict:
    """The change across window boundaries vs within windows: mean flicker at seams, elsewhere, and their ratio."""
    change = flicker(frames)
    at = np.zeros(len(change), bool)
    at[[s for s in seam_frames if s < len(change)]] = True
    seam = float(change[at].mean()) if at.any() else float("nan")
    inside = float(change[~at].mean()) if (~at).any() else float("nan")
    return {"seam_change": seam, "within_change": inside, "seam_ratio": seam / inside if inside > 0 else float("nan")}

