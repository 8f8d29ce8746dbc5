"""The run loop shared by the hub backends: a diffusers pipeline in a worker thread, steered between steps.

diffusers owns the denoising loop; `callback_on_step_end` (called after every step) is where we steer it:

    worker thread                                              Backend.run (the caller's generator)
    pipe(..., callback_on_step_end=cb) ──cb(step i)──► Handoff ──► yield Progress(i+1, preview of x0̂, mode, sampler)
                    ◄── {"latents": …} (edited / re-projected)     run.stop() / set_attention_mode / set_sampler

The hand-over is in lockstep (the worker waits while the caller handles an event), so a toggle made while handling
step k applies to step k+1, exactly as in the built-in backend's own loop.

- Previews: the scheduler's `step` is wrapped (per instance) to record the model's clean-latent estimate x0̂ and noise
  estimate ε̂ (`vdemo.samplers.split_prediction`); the callback turns x0̂ into RGB with the SD 1.5 latent→RGB factors
  (`preview.py`): no VAE decode per step.
- Attention mode: the callback writes the new mode into the FrameContext(s) the installed processors read, so it
  takes effect on the next step.
- Stop: AnimateDiff / Stable Diffusion pipelines have `interrupt` (`pipe._interrupt = True` skips the remaining
  steps); the callback also hands back x0̂ as the latents, so the pipeline decodes the last prediction. SVD has no
  interrupt flag: the callback raises, and the worker decodes x0̂ itself.
- Sampler: switched live when the new scheduler runs on the same timestep grid (same length, timesteps within half a
  step, both first order): the latents are re-projected (`vdemo.samplers.reproject`: x0̂, ε̂ re-noised to the new
  scheduler's own level) and returned to the pipeline, and `pipe.scheduler` is swapped. The pipeline's loop keeps
  iterating its original timestep list, so a scheduler with another grid (Heun and DPM++ SDE: 2n−1 entries; PNDM:
  n+1; rounding differences) cannot take over mid-run: it applies from the next run, and the Progress sampler text
  and the manifest say so.
- `spaces.GPU` wraps the generation (`run_on_gpu`) with a duration that scales with frames × steps × pixels; it is a
  no-op off ZeroGPU. On ZeroGPU the generation runs in a forked process and its arguments are pickled: it receives the
  backend's key (the fork inherits the loaded weights) and the mode / sampler as plain strings, so live toggles made
  after the start cannot reach it there (a Stop reaches it only if spaces closes the worker's generator). Elsewhere
  the caller's RunControl itself goes through and every live toggle works.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import spaces
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from spaces.config import Config as SpacesConfig

from vdemo import __version__
from vdemo.backends.hub.preview import latents_to_rgb
from vdemo.backends.hub.registry import HubSpec, Source
from vdemo.backends.hub.warping import paste_along_strokes
from vdemo.pipeline import Backend, Done, Event, GenerationRequest, Progress, RequestError, RunControl
from vdemo.samplers import reproject, scheduler_step, split_prediction


class StopRun(Exception):
    """Raised from the step callback to end a pipeline that has no interrupt flag (SVD)."""


class Handoff:
    """One-slot hand-over from the worker thread to the caller's generator, in lockstep: after each Progress the worker
    waits until the caller comes back for the next event, so a toggle made while handling step k applies to step k+1
    (as in the built-in backend's own loop), and a stop ends the run after the step in flight."""

    def __init__(self):
        self._items: queue.Queue = queue.Queue(maxsize=1)
        self._resume = threading.Semaphore(0)
        self.abandoned = False  # the caller walked away: never block again

    def put(self, item: Any, wait: bool = False) -> None:
        while not self.abandoned:
            try:
                self._items.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        while wait and not self.abandoned and not self._resume.acquire(timeout=0.1):
            pass

    def get(self) -> Any:
        return self._items.get()

    def resume(self) -> None:
        self._resume.release()


@dataclass
class RunState:
    """Everything one run shares between the worker thread and the step callback."""

    request: GenerationRequest
    control: RunControl
    generator: torch.Generator
    scheduler: SchedulerMixin
    sampler: str
    mode: str
    started: float
    handoff: Handoff
    index: int = 0  # steps done
    x0_hat: torch.Tensor | None = None  # pipeline layout
    eps_hat: torch.Tensor | None = None
    first_preview_s: float | None = None
    deferred_sampler: str | None = None
    switches: list[dict] = field(default_factory=list)
    pastes: list[int] = field(default_factory=list)
    stopped: bool = False
    in_step: bool = False


ZERO_GPU = bool(SpacesConfig.zero_gpu)  # running on a ZeroGPU Space (spaces.GPU forks a process per call)
LOADED: weakref.WeakValueDictionary[str, DiffusersBackend] = weakref.WeakValueDictionary()  # key -> backend: a
# forked ZeroGPU worker finds the loaded weights here


def gpu_seconds(request: GenerationRequest, seconds_per_unit: float) -> int:
    """A ZeroGPU duration estimate: a fixed start-up plus frames × steps × (pixels / 512²), in whole seconds."""
    units = request.num_frames * request.num_steps * request.height * request.width / 512**2
    return int(min(300, 30 + math.ceil(seconds_per_unit * units)))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def place(pipe, device: str, min_vram_gib: float) -> str:
    """Memory savers that cost nothing, then the device: CPU offload when CUDA memory is short. Returns what it did."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "use_slicing"):  # AutoencoderKL; SVD's temporal decoder chunks instead
        vae.enable_slicing()
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        total_gib = torch.cuda.get_device_properties(index).total_memory / 2**30
        if total_gib < min_vram_gib:
            print(f"WARNING: {total_gib:.0f} GiB of GPU memory < {min_vram_gib:.0f} GiB: using model CPU offload")
            pipe.enable_model_cpu_offload(device=device)
            return "model_cpu_offload"
    pipe.to(device)
    return "none"


def control_frames(clip: np.ndarray, num_frames: int, height: int, width: int) -> list:
    """A pose (F', H, W, 3) or depth (F', H, W) uint8 clip -> num_frames RGB PIL images of height × width."""
    from PIL import Image

    from vdemo.backends.tiny import fit_clip

    frames = fit_clip(clip, num_frames, height, width)
    if frames.ndim == 3:  # depth: grey -> RGB, as the depth ControlNet expects
        frames = np.repeat(frames[..., None], 3, axis=-1)
    return [Image.fromarray(f) for f in frames]


def to_uint8_frames(video: Any) -> np.ndarray:
    """A pipeline's np output ((1,) F, H, W, 3 float in [0, 1]) -> (F, H, W, 3) uint8."""
    video = np.asarray(video)
    if video.ndim == 5:
        video = video[0]
    return (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)


class DiffusersBackend(Backend):
    """A Backend whose denoising loop is a diffusers pipeline's `__call__`; subclasses say how to call it."""

    interruptible = True  # the pipeline honours `pipe._interrupt`
    seconds_per_unit = 0.1  # GPU seconds per frame × step at 512², for spaces.GPU
    min_vram_gib = 12.0  # below this, model CPU offload
    preview_scale = 2  # previews are latents × this (1/4 of the output side for an SD VAE)
    stroke_strength = 0.8  # 0–1: how strongly regions are carried along strokes (noise and pasted latents)
    stroke_paste_fractions = (0.2, 0.4)  # paste x0̂ along strokes after these fractions of the steps

    def __init__(self, spec: HubSpec, sources: dict[str, Source], device: str, dtype: torch.dtype):
        self.spec = spec
        self.name = spec.name
        self.sources = sources
        self.device = device
        self.dtype = dtype
        self.lock = threading.Lock()
        self.offload = "none"
        self.key = f"{spec.name}@{id(self):x}"
        LOADED[self.key] = self

    def adopt(self, pipe, controls: dict[str, Source]) -> None:
        """Take `pipe` as the base pipeline (placed on the device) with ControlNets `controls` loadable on demand."""
        self.controls = controls
        self.modalities = frozenset({"text", "strokes", *controls})
        self._controlnets: dict = {}
        self.offload = place(pipe, self.device, self.min_vram_gib)
        self.pipes = {(): pipe}
        self._active: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------------ subclass hooks
    def pipeline_for(self, request: GenerationRequest):
        """The diffusers pipeline that runs this request (loaded and placed)."""
        raise NotImplementedError

    def call_kwargs(self, request: GenerationRequest, state: RunState) -> dict:
        """Arguments for `pipe(...)`, except the callback and output type."""
        raise NotImplementedError

    def make_scheduler(self, name: str) -> SchedulerMixin:
        raise NotImplementedError

    def apply_mode(self, mode: str, num_frames: int) -> None:
        """Point the installed attention processors' FrameContext(s) at this lab mode."""
        raise NotImplementedError

    def to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """Pipeline latents -> (F, C, h, w) of the one video."""
        raise NotImplementedError

    def from_frames(self, frames: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, pipe, latents: torch.Tensor, request: GenerationRequest) -> np.ndarray:
        """Decode latents ourselves (only for pipelines stopped by StopRun)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------------- the run
    def set_stroke_strength(self, strength: float) -> None:
        """0–1: how strongly stroke regions are carried along (noise warp and latent paste); from the next run."""
        if not 0.0 <= float(strength) <= 1.0:
            raise RequestError(f"stroke strength must be 0–1, got {strength}")
        self.stroke_strength = float(strength)

    def models_for(self, request: GenerationRequest) -> dict:
        """Model ids + revisions (or local folders) a run of this request uses, for its manifest."""
        return {role: src.describe() for role, src in self.sources.items()}

    def describe(self) -> dict:
        return {"backend": self.name, "label": self.spec.label,
                "models": {role: src.describe() for role, src in self.sources.items()},
                "device": self.device, "dtype": str(self.dtype).removeprefix("torch."), "offload": self.offload,
                "stroke_strength": self.stroke_strength}

    def run(self, request: GenerationRequest, control: RunControl) -> Iterator[Event]:
        live = None if ZERO_GPU else control  # ZeroGPU pickles the arguments: a RunControl (locks) cannot go
        yield from run_on_gpu(self.key, request, live, control.mode, control.sampler)

    def stream(self, request: GenerationRequest, control: RunControl) -> Iterator[Event]:
        """Run the pipeline in a worker thread and yield its events, in lockstep with the caller."""
        handoff = Handoff()
        worker = threading.Thread(target=self._work, args=(request, control, handoff), daemon=True,
                                  name=f"vdemo-{self.name}")
        worker.start()
        finished = False
        try:
            while not finished:
                item = handoff.get()
                if isinstance(item, BaseException):
                    raise item
                finished = isinstance(item, Done)
                yield item
                handoff.resume()
        finally:
            if not finished:  # the caller walked away (or an error came): end the loop within a step
                control.stop()
                handoff.abandoned = True
            worker.join()

    def _work(self, request: GenerationRequest, control: RunControl, handoff: Handoff) -> None:
        started = time.perf_counter()
        try:
            with self.lock:
                pipe = self.pipeline_for(request)
                scheduler = self.make_scheduler(control.sampler)
                state = RunState(request, control, torch.Generator("cpu").manual_seed(int(request.seed)), scheduler,
                                 control.sampler, control.mode, started, handoff)
                self._instrument(scheduler, state)
                pipe.scheduler = scheduler
                self.apply_mode(state.mode, request.num_frames)
                frames = self._call(pipe, request, state)
            handoff.put(Done(frames, self._manifest(state, time.perf_counter() - started), state.stopped))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread and raised there
            handoff.put(err)

    def _call(self, pipe, request: GenerationRequest, state: RunState) -> np.ndarray:
        kwargs = self.call_kwargs(request, state)

        def callback(pipe_, i, t, callback_kwargs):
            return self._on_step_end(pipe_, state, i, callback_kwargs["latents"])

        try:
            out = pipe(**kwargs, generator=state.generator, output_type="np",
                       callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
        except StopRun:  # decode the last clean estimate ourselves (outside the pipeline's no_grad)
            with torch.no_grad():
                frames = self.decode(pipe, state.x0_hat, request)
            pipe.maybe_free_model_hooks()
            return frames
        return to_uint8_frames(out.frames if hasattr(out, "frames") else out.images)

    # --------------------------------------------------------------------------------------- per-step steering
    def _instrument(self, scheduler: SchedulerMixin, state: RunState) -> None:
        """Wrap this scheduler's `step` to record x0̂ / ε̂ and to step on its own timestep list."""
        original = scheduler.step

        def step(model_output, timestep, sample, *args, **kwargs):
            if state.in_step:  # `scheduler_step` below calls back into scheduler.step
                return original(model_output, timestep, sample, *args, **kwargs)
            t = scheduler.timesteps[state.index] if state.index < len(scheduler.timesteps) else timestep
            x_in = scheduler.scale_model_input(sample, t)
            state.x0_hat, state.eps_hat = split_prediction(scheduler, model_output, x_in, t)
            state.in_step = True
            try:
                prev = scheduler_step(scheduler, model_output, t, sample, state.generator)
            finally:
                state.in_step = False
            return SchedulerOutput(prev_sample=prev)

        scheduler.step = step

    def _on_step_end(self, pipe, state: RunState, i: int, latents: torch.Tensor) -> dict:
        state.index = i + 1
        total = len(state.scheduler.timesteps)
        control = state.control
        control.history.append({"step": state.index, "mode": state.mode, "sampler": state.sampler})
        self._emit_progress(state, total)
        if control.stopped and state.index < total:
            state.stopped = True
            if not self.interruptible:
                raise StopRun
            pipe._interrupt = True
            return {"latents": state.x0_hat}  # the pipeline decodes the last clean estimate
        out = {}
        if state.index < total and state.index in self._paste_steps(state):
            out["latents"] = latents = self._paste_strokes(state, latents)
        if control.mode != state.mode:
            state.mode = control.mode
            self.apply_mode(state.mode, state.request.num_frames)
        if control.sampler == state.sampler:  # switched back before a deferred switch happened
            state.deferred_sampler = None
        elif control.sampler != state.deferred_sampler and state.index < total:
            switched = self._switch_sampler(pipe, state)
            if switched is not None:
                out["latents"] = switched
        return out

    def _emit_progress(self, state: RunState, total: int) -> None:
        preview = latents_to_rgb(self.to_frames(state.x0_hat), scale=self.preview_scale)
        elapsed = time.perf_counter() - state.started
        if state.first_preview_s is None:
            state.first_preview_s = elapsed
        label = state.sampler + (f" ({state.deferred_sampler} from the next run)" if state.deferred_sampler else "")
        state.handoff.put(Progress(state.index, total, preview, state.mode, label, elapsed), wait=True)

    def _switch_sampler(self, pipe, state: RunState) -> torch.Tensor | None:
        wanted, old = state.control.sampler, state.scheduler
        new = self.make_scheduler(wanted)
        new.set_timesteps(state.request.num_steps, device=old.timesteps.device)
        same_grid = (len(new.timesteps) == len(old.timesteps) and old.order == 1 and new.order == 1
                     and float((new.timesteps.float().cpu() - old.timesteps.float().cpu()).abs().max()) <= 0.5)
        if not same_grid:
            state.deferred_sampler = wanted
            state.switches.append({"after_step": state.index, "to": wanted, "applied": "next run",
                                   "why": "its timestep grid differs from the running scheduler's"})
            return None
        latents, _ = reproject(new, state.x0_hat, state.eps_hat, state.index)
        self._instrument(new, state)
        pipe.scheduler = state.scheduler = new
        state.sampler, state.deferred_sampler = wanted, None
        state.switches.append({"after_step": state.index, "to": wanted, "applied": "live"})
        return latents.to(state.x0_hat.dtype)

    def _paste_steps(self, state: RunState) -> set[int]:
        if not state.request.strokes or "strokes" not in self.modalities:
            return set()
        n = len(state.scheduler.timesteps)
        return {max(1, round(f * n)) for f in self.stroke_paste_fractions}

    def _paste_strokes(self, state: RunState, latents: torch.Tensor) -> torch.Tensor:
        """Paste frame 0's x0̂ region along each stroke, re-noise it to the next step's level inside the mask only."""
        x0, eps = self.to_frames(state.x0_hat), self.to_frames(state.eps_hat)
        x0_new, eps_new, mask = paste_along_strokes(x0, eps, state.request.strokes, self.stroke_strength)
        t_next = state.scheduler.timesteps[state.index]
        renoised = state.scheduler.add_noise(x0_new, eps_new, t_next.reshape(1))  # (F, C, h, w)
        frames = torch.where(mask[:, None], renoised.to(latents.dtype), self.to_frames(latents))
        like = latents
        state.x0_hat = self.from_frames(x0_new, like)
        state.eps_hat = self.from_frames(eps_new, like)
        state.pastes.append(state.index)
        return self.from_frames(frames, like)

    def _manifest(self, state: RunState, total_s: float) -> dict:
        import diffusers
        import transformers

        history = state.control.history
        return {
            **self.describe(),
            "models": self.models_for(state.request),
            "request": state.request.settings(),
            "steps": history,
            "attention_modes_used": sorted({h["mode"] for h in history}),
            "samplers_used": list(dict.fromkeys(h["sampler"] for h in history)),
            "sampler_switches": state.switches,
            "stroke_pastes_after_steps": state.pastes,
            "stopped": state.stopped,
            "timings": {"total_s": round(total_s, 4), "first_preview_s": round(state.first_preview_s or 0.0, 4),
                        "steps_done": state.index},
            "versions": {"vdemo": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__},
        }


def _gpu_duration(key: str, request: GenerationRequest, control: RunControl | None, mode: str, sampler: str) -> int:
    return gpu_seconds(request, LOADED[key].seconds_per_unit)


@spaces.GPU(duration=_gpu_duration)
def run_on_gpu(key: str, request: GenerationRequest, control: RunControl | None, mode: str,
               sampler: str) -> Iterator[Event]:
    """The GPU work of one run (what `spaces.GPU` schedules). `control` None: a fresh one from mode and sampler."""
    yield from LOADED[key].stream(request, control or RunControl(mode, sampler))
