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
- ZeroGPU: the whole run (this worker thread included) happens inside `vdemo.ui.gpu.generate_on_gpu`, which
  `spaces.GPU` runs in a forked worker; its RunControl's settings cross into that process, so live toggles and Stop
  work there as here. `preload()` loads every ControlNet and pipeline before launch, so nothing loads in GPU time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from vdemo.backends.hub.preview import latents_to_rgb
from vdemo.backends.hub.registry import HubSpec, Source
from vdemo.backends.hub.warping import paste_along_strokes
from vdemo.cost import GpuCost
from vdemo.media import fit_clip, to_uint8
from vdemo.pipeline import (
    Backend,
    Done,
    Event,
    GenerationRequest,
    Progress,
    RequestError,
    RunControl,
    build_manifest,
)
from vdemo.samplers import reproject, schedule_steps, scheduler_step, split_prediction, step_progress


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
    index: int = 0  # timestep entries (model calls) done
    steps_done: int = 0  # scheduler steps done (`vdemo.samplers.step_progress`)
    x0_hat: torch.Tensor | None = None  # pipeline layout
    eps_hat: torch.Tensor | None = None
    first_preview_s: float | None = None
    deferred_sampler: str | None = None
    switches: list[dict] = field(default_factory=list)
    pastes: list[int] = field(default_factory=list)
    stopped: bool = False
    in_step: bool = False


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------- GPU memory and residency
GIB = 2**30
MIN_WORKING_BYTES = 2 * GIB  # floor of a run's working margin (activations, VAE decode chunks, CUDA workspaces)


def on_zero_gpu() -> bool:
    """Whether this is a ZeroGPU Space (`spaces.config.Config.zero_gpu`): spaces then moves the weights onto a GPU
    per call in a forked worker, and the main process has no CUDA to query."""
    try:
        from spaces.config import Config
    except ImportError:
        return False
    return bool(Config.zero_gpu)


def gpu_free_bytes(device: torch.device) -> int:
    """Bytes a new allocation on `device` can get: the driver's free memory (`torch.cuda.mem_get_info`, i.e.
    cudaMemGetInfo, which counts every process's allocations) plus what PyTorch's caching allocator holds reserved
    but unused (`memory_reserved` − `memory_allocated`: reused without asking CUDA). Not a CUDA device: unbounded."""
    if device.type != "cuda":
        return 1 << 62
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def pipeline_modules(pipe) -> list[torch.nn.Module]:
    """The models among a diffusers pipeline's `components` (UNet, VAE, text encoder, ControlNet, adapter …)."""
    return [m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module)]


def backend_modules(backend) -> list[torch.nn.Module]:
    """The models of every pipeline a backend holds (`pipes` of the SD 1.5 backends, `pipe` of SVD), once each."""
    pipes = list((getattr(backend, "pipes", None) or {}).values())
    if getattr(backend, "pipe", None) is not None:
        pipes.append(backend.pipe)
    return list({id(m): m for pipe in pipes for m in pipeline_modules(pipe)}.values())


def module_tensors(modules) -> dict[int, torch.Tensor]:
    """id -> tensor for every parameter and buffer of `modules`, once each: a Parameter shared (tied) by two modules,
    or by two backends, counts once."""
    out: dict[int, torch.Tensor] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            out.setdefault(id(tensor), tensor)
    return out


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and device.index in (None, tensor.device.index)


def tensor_bytes(tensors, device: torch.device | None = None, on: bool = True) -> int:
    """Bytes of `tensors` (all, or those on / off `device`)."""
    return sum(t.nbytes for t in tensors if device is None or _on(t, device) == on)


def move_tensors(tensors, device: torch.device) -> int:
    """Move tensors to `device` in place, as `nn.Module._apply` does: `t.data = t.data.to(device)` (CPU ↔ CUDA), else
    `torch.utils.swap_tensors` (e.g. to "meta"). Each Parameter keeps its identity, so parameters tied across modules
    stay tied. Returns the bytes moved."""
    moved = 0
    for tensor in tensors:
        if _on(tensor, device):
            continue
        new = tensor.data.to(device)
        if torch._has_compatible_shallow_copy_type(tensor, new):
            tensor.data = new
        else:
            if isinstance(tensor, torch.nn.Parameter):
                new = type(tensor)(new, requires_grad=tensor.requires_grad)
            torch.utils.swap_tensors(tensor, new)
        moved += tensor.nbytes
    return moved


def working_bytes(min_vram_gib: float, weight_bytes: int, floor: int = MIN_WORKING_BYTES) -> int:
    """Memory a run needs beyond its weights. `min_vram_gib` stays what it was, the GPU memory a backend needs in all
    (weights + activations at its default size); its weights are counted exactly, the rest is the margin."""
    return max(int(min_vram_gib * GIB) - weight_bytes, floor)


def _running(backend) -> bool:
    lock = getattr(backend, "lock", None)  # DiffusersBackend holds its lock for the whole of a run
    return lock is not None and lock.locked()


class Residency:
    """Which loaded backends keep their weights on a dedicated GPU, least recently used leaving first.

    `acquire(backend)` before a run: when free memory (`free_bytes`) is short of the backend's weights not on its
    device plus its working margin, the least recently used other backends' weights go to the host (tensor by
    tensor, sparing every tensor the runner or a running backend shares: the SD 1.5 parts), then the runner's
    weights go onto its device. `make_room` does the evicting for `place()`. A no-op on ZeroGPU (spaces moves the
    weights per call), on CPU, and for backends under model CPU offload (accelerate's hooks move them per model).
    """

    def __init__(self, free_bytes=gpu_free_bytes, enabled: bool | None = None, host: str = "cpu",
                 min_working: int = MIN_WORKING_BYTES, move=move_tensors):
        import weakref

        self.free_bytes = free_bytes  # device -> bytes free: injectable (tests fake it on CPU)
        self.move = move  # (tensors, device) -> bytes moved
        self.enabled = (not on_zero_gpu()) if enabled is None else enabled
        self.host = torch.device(host)
        self.min_working = min_working
        self._last_use: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backend -> use stamp
        self._stamp = 0
        self._lock = threading.RLock()

    def applies(self, backend) -> bool:
        return (self.enabled and torch.device(backend.device).type != "cpu"
                and getattr(backend, "offload", "none") == "none")

    def track(self, backend) -> None:
        """Register a loaded backend (as just used), so it can be evicted before it ever runs."""
        with self._lock:
            self._stamp += 1
            self._last_use[backend] = self._stamp

    def lru(self) -> list:
        """Tracked backends, least recently used first."""
        with self._lock:
            return sorted(self._last_use.keys(), key=self._last_use.__getitem__)

    def need_bytes(self, tensors: dict[int, torch.Tensor], device: torch.device, min_vram_gib: float) -> int:
        """Bytes to free for a run: its weights not yet on `device` plus its working margin."""
        values = tensors.values()
        return tensor_bytes(values, device, on=False) + working_bytes(min_vram_gib, tensor_bytes(values),
                                                                      self.min_working)

    def acquire(self, backend) -> list[str]:
        """Call right before `backend` runs (once its pipeline is chosen, so a new ControlNet counts): marks it most
        recently used, evicts least recently used others while memory is short, moves its weights onto its device.
        Returns the names evicted, least recently used first ([] when nothing had to go, or it does not apply)."""
        self.track(backend)
        if not self.applies(backend):
            return []
        device = torch.device(backend.device)
        with self._lock:
            tensors = module_tensors(backend_modules(backend))
            need = self.need_bytes(tensors, device, backend.min_vram_gib)
            evicted = self.make_room(device, need, keep=tensors, exclude=backend)
            if self.free_bytes(device) < need:
                print(f"WARNING: {backend.name!r} may run out of GPU memory: {need / GIB:.1f} GiB wanted, "
                      f"{self.free_bytes(device) / GIB:.1f} GiB free after evicting what could go")
            self.move(tensors.values(), device)
        return evicted

    def make_room(self, device: torch.device, need: int, keep: dict[int, torch.Tensor], exclude=None,
                  all_or_nothing: bool = False) -> list[str]:
        """Evict least recently used backends until `free_bytes(device)` ≥ need, never moving a tensor in `keep` or
        used by a running backend. all_or_nothing: evict nobody unless evicting could make it fit."""
        if not self.enabled or self.free_bytes(device) >= need:
            return []
        with self._lock:
            victims = self._victims(device, keep, exclude)
            if all_or_nothing and self.free_bytes(device) + sum(tensor_bytes(v) for _, v in victims) < need:
                return []
            evicted = []
            for backend, tensors in victims:
                if self.free_bytes(device) >= need:
                    break
                freed = self.move(tensors, self.host)
                evicted.append(backend.name)
                print(f"GPU residency: {backend.name!r} (least recently used) off {device}: {freed / GIB:.1f} GiB")
            return evicted

    def _victims(self, device: torch.device, keep: dict[int, torch.Tensor], exclude) -> list[tuple[object, list]]:
        """(backend, its evictable tensors on `device`) in LRU order; a tensor shared by two victims goes with the
        first."""
        candidates = [b for b in self.lru() if b is not exclude and self.applies(b)]
        spared = dict(keep)
        for backend in candidates:
            if _running(backend):
                spared.update(module_tensors(backend_modules(backend)))
        out = []
        for backend in candidates:
            if _running(backend):
                continue
            tensors = [t for i, t in module_tensors(backend_modules(backend)).items()
                       if i not in spared and _on(t, device)]
            spared.update((id(t), t) for t in tensors)
            if tensors:
                out.append((backend, tensors))
        return out


RESIDENCY = Residency()  # the process's one GPU residency: the run loop calls RESIDENCY.acquire(backend)


def place(pipe, device: str, min_vram_gib: float, residency: Residency | None = None) -> str:
    """Memory savers that cost nothing, then the device. Returns what it did: "none" (the whole pipeline on the
    device) or "model_cpu_offload" (diffusers' `enable_model_cpu_offload`: one model at a time on the device).

    On CUDA the choice is made from free memory, not the card's total: the pipeline's weights not yet on the device
    plus a working margin (`working_bytes`) must fit in `residency.free_bytes` (its memory query: injectable), after
    evicting least recently used backends when that makes them fit; else offload. ZeroGPU: always the device (spaces
    moves the weights per call; the main process has no CUDA to query).
    """
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "use_slicing"):  # AutoencoderKL; SVD's temporal decoder chunks instead
        vae.enable_slicing()
    if offload_needed(pipe, device, min_vram_gib, residency or RESIDENCY):
        print(f"WARNING: too little free GPU memory on {device} for {type(pipe).__name__}: using model CPU offload")
        pipe.enable_model_cpu_offload(device=device)
        return "model_cpu_offload"
    pipe.to(device)
    return "none"


def offload_needed(pipe, device: str, min_vram_gib: float, residency: Residency) -> bool:
    """Whether `pipe` cannot sit whole on `device` (CUDA, or any non-CPU device in tests), even after `residency`
    evicts least recently used backends for it."""
    target = torch.device(device)
    if target.type == "cpu" or on_zero_gpu():
        return False
    tensors = module_tensors(pipeline_modules(pipe))
    need = residency.need_bytes(tensors, target, min_vram_gib)
    residency.make_room(target, need, keep=tensors, all_or_nothing=True)
    return residency.free_bytes(target) < need


def control_frames(clip: np.ndarray, num_frames: int, height: int, width: int) -> list:
    """A pose (F', H, W, 3) or depth (F', H, W) uint8 clip -> num_frames RGB PIL images of height × width."""
    from PIL import Image

    frames = fit_clip(clip, num_frames, height, width)
    if frames.ndim == 3:  # depth: grey -> RGB, as the depth ControlNet expects
        frames = np.repeat(frames[..., None], 3, axis=-1)
    return [Image.fromarray(f) for f in frames]


def to_uint8_frames(video: Any) -> np.ndarray:
    """A pipeline's np output ((1,) F, H, W, 3 float in [0, 1]) -> (F, H, W, 3) uint8."""
    video = np.asarray(video)
    if video.ndim == 5:
        video = video[0]
    return to_uint8(video, value_range=(0.0, 1.0))


class DiffusersBackend(Backend):
    """A Backend whose denoising loop is a diffusers pipeline's `__call__`; subclasses say how to call it."""

    interruptible = True  # the pipeline honours `pipe._interrupt`
    # GPU seconds per run (vdemo.cost); subclasses give their own estimates
    gpu_cost = GpuCost(startup_s=15.0, s_per_frame_call=0.06, attention_share=0.3)
    min_vram_gib = 12.0  # GPU memory a run needs in all (weights + working memory); short of it: offload
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
        yield from self.stream(request, control)

    def preload(self) -> None:
        """Every ControlNet this backend can use, and its pipeline for each combination of controls, loaded and
        placed now (a Space calls this in the main thread before launch: nothing loads inside GPU time)."""
        from itertools import combinations
        from types import SimpleNamespace

        controls = tuple(getattr(self, "controls", {}))
        for size in range(1, len(controls) + 1):
            for combo in combinations(controls, size):
                self.pipeline_for(SimpleNamespace(**{m: (m in combo) or None for m in ("pose", "depth")}))

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
            if finished:
                worker.join()
            else:  # the caller walked away (or an error came): the loop ends within a step, on its own
                control.stop()
                handoff.abandoned = True
                # no join here: Gradio closes an abandoned generator on its event loop, which a join would block for
                # the step in flight and the stopped pipeline's decode; the worker holds `self.lock` until it is done,
                # so the next run on this backend waits for it there


    def _work(self, request: GenerationRequest, control: RunControl, handoff: Handoff) -> None:
        started = time.perf_counter()
        try:
            with self.lock:
                pipe = self.pipeline_for(request)
                RESIDENCY.acquire(self)  # a dedicated GPU: least recently used backends make room for this one
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
            state.x0_hat, state.eps_hat = self.split(scheduler, model_output, sample, t, state)
            state.in_step = True
            try:
                prev = scheduler_step(scheduler, model_output, t, sample, state.generator)
            finally:
                state.in_step = False
            return SchedulerOutput(prev_sample=prev)

        scheduler.step = step

    def split(self, scheduler: SchedulerMixin, model_output: torch.Tensor, sample: torch.Tensor, t,
              state: RunState) -> tuple[torch.Tensor, torch.Tensor]:
        """x0̂ and ε̂ from one model output at timestep t (`vdemo.samplers.split_prediction`: the VP models' ε / v /
        x0 parametrisations); flow-matching backends override it."""
        return split_prediction(scheduler, model_output, scheduler.scale_model_input(sample, t), t)

    def _on_step_end(self, pipe, state: RunState, i: int, latents: torch.Tensor) -> dict:
        """After the pipeline's timestep entry i: record, emit Progress, then stop, paste or steer.

        The pipeline calls this per timestep entry, i.e. per model call: Heun / DPM++ SDE lists have 2n−1 entries and
        PLMS n+1, so the Progress is labelled with the scheduler step the call belongs to
        (`vdemo.samplers.step_progress`), and mode and sampler are changed only once a step is complete.
        """
        state.index = i + 1
        entries = len(state.scheduler.timesteps)
        total = schedule_steps(state.scheduler)  # n; a zero-shot motion run: its joint pass
        step, done = step_progress(state.scheduler, i, total)
        state.steps_done = step if done else state.steps_done
        control = state.control
        control.history.append({"step": step, "call": state.index, "mode": state.mode, "sampler": state.sampler})
        self._emit_progress(state, step, total, done)
        if control.stopped and state.index < entries:
            state.stopped = True
            if not self.interruptible:
                raise StopRun
            pipe._interrupt = True
            return {"latents": state.x0_hat}  # the pipeline decodes the last clean estimate
        out = {}
        if state.index < entries and state.index in self._paste_steps(state):
            out["latents"] = latents = self._paste_strokes(state, latents)
        if not done:
            return out
        if control.mode != state.mode:
            state.mode = control.mode
            self.apply_mode(state.mode, state.request.num_frames)
        if control.sampler == state.sampler:  # switched back before a deferred switch happened
            state.deferred_sampler = None
        elif control.sampler != state.deferred_sampler and state.index < entries:
            switched = self._switch_sampler(pipe, state)
            if switched is not None:
                out["latents"] = switched
        return out

    def preview(self, x0_hat: torch.Tensor, num_frames: int) -> np.ndarray:
        """x0̂ in the pipeline's layout -> (frames, h, w, 3) uint8 by the SD latent→RGB projection (no VAE decode)."""
        return latents_to_rgb(self.to_frames(x0_hat), scale=self.preview_scale)

    def _emit_progress(self, state: RunState, step: int, total: int, done: bool) -> None:
        """Hand the caller this call's Progress (in scheduler steps) and wait until it comes back (lockstep)."""
        preview = self.preview(state.x0_hat, state.request.num_frames)
        elapsed = time.perf_counter() - state.started
        if state.first_preview_s is None:
            state.first_preview_s = elapsed
        label = state.sampler + (f" ({state.deferred_sampler} from the next run)" if state.deferred_sampler else "")
        progress = Progress(step, total, preview, state.mode, label, elapsed, step_done=done, calls=state.index,
                            total_calls=len(state.scheduler.timesteps))
        state.handoff.put(progress, wait=True)

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

        return build_manifest(self, state.request, state.control.history, stopped=state.stopped, total_s=total_s,
                              first_preview_s=state.first_preview_s, steps_done=state.steps_done,
                              model_calls=state.index,
                              versions={"diffusers": diffusers.__version__, "transformers": transformers.__version__},
                              models=self.models_for(state.request), sampler_switches=state.switches,
                              stroke_pastes_after_steps=state.pastes)

