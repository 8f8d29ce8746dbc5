"""Zero-shot video from an image model: Stable Diffusion 1.5 (+ ControlNet) inflated with cross-frame attention.

The Text2Video-Zero idea (Khachatryan et al. 2023): run an image diffusion model on all frames at once (frames in the
batch), let every frame's self-attention also see other frames so appearance stays consistent, and give a text-only
clip its motion through the initial latents ("motion dynamics in latent codes", §3.3.1). Built on current diffusers
with our own processors (`vdemo.attention`) installed on the UNet's and the ControlNet's self-attention: diffusers'
`TextToVideoZeroPipeline` is deprecated and overwrites processors, so only its motion helpers are reused.

- text: `StableDiffusionPipeline`; pose / depth: `StableDiffusionControlNetPipeline` (ControlNets v1.1, Zhang et al.
  2023; both together through a MultiControlNet), one ControlNet image per frame; all share one set of weights.
- modes (self-attention only; this UNet has no temporal layers): spatial, full, causal, sparse_causal (Tune-A-Video's
  frame 0 + previous frame, Wu et al. 2023; Text2Video-Zero attends to frame 0 only).
- samplers: every general-purpose one of the registry, on the repo's own scheduler config.

Motion dynamics (text-only requests), step for step as diffusers' `TextToVideoZeroPipeline.__call__`:

1. pre-pass: x_T for frame 0; DDIM on frame 0 alone (the same pipeline and UNet, one frame, output_type="latent")
   for s0 steps; `callback_on_step_end` keeps its latents after s1 steps (x_t1) and after s0 (x_t0, t0 < t1), then
   interrupts the pipeline.
2. warp: frame k (k = 1..F−1) is x_t0 warped by the global translation k·δ, δ = (motion_field_strength_x, _y):
   diffusers' `create_motion_field_and_warp_latents` (`create_motion_field` + `warp_single_latent`), imported. δ is
   in pixels of diffusers' fixed 512² reference field, i.e. a fraction δ/512 of the frame per frame at any size;
   `warp_single_latent` samples frame 0 at x + k·δ, so positive strengths move the content left / up.
3. forward: the warped latents are DDPM-noised from t0 back to t1 (fresh noise per frame, ∏ alphas[t0:t1]):
   diffusers' `TextToVideoZeroPipeline.forward_loop`, called with a stand-in `self` holding the DDIM scheduler.
4. joint pass: [x_t1 of frame 0, the re-noised warps] are denoised together from t1 with cross-frame attention by
   the ordinary run loop (`base.py`), so previews, Stop and live mode / sampler switches work as before. The run's
   sampler starts at the entry of its own n-step schedule nearest t1 (`start_at_level` drops the earlier entries,
   as img2img's strength does; `make_scheduler` installs it, so a live switch starts there too).

Steps: s1 = round(motion_steps_to_t1 · n), s0 = round(motion_steps_to_t0 · n), kept to 0 ≤ s1 < s0 ≤ n − 1; the
defaults 0.04 / 0.10 give s1 = 2, s0 = 5 at n = 50, i.e. diffusers' t1 = n − 1 − s1 = 47 and t0 = n − 1 − s0 = 44
(its `timesteps[-t1 - 1]`, `timesteps[-t0 - 1]`); up to 12 steps s1 = 0 (t1 is the first timestep) and s0 = 1. The
clip's first s1 steps are frame 0's pre-pass steps, so Progress, previews and the manifest's `steps` count the
joint pass: n − s1 steps (n at up to 12 steps). The pre-pass (s0 one-frame steps) sends no events; a Stop made
during it ends the run after the first joint step. A 1-step request has no room for t0 < t1 and keeps one noise.

Samplers: the pre-pass is always DDIM, as in Text2Video-Zero. The joint latents sit at DDIM's level t1 in the
variance-preserving convention; they are handed to the run's sampler in its own convention at its first remaining
level (`to_sampler_latents`): exactly t1 where its grid has DDIM's timesteps (DDIM, DDPM, PNDM, Heun), otherwise the
nearest of its own levels (within half a step; its joint pass may then be a step shorter or longer than n − s1).

Not every request gets motion dynamics:
- strokes: the stroke region's share of the one common noise is carried along each stroke, and after a few steps
  frame 0's clean-latent estimate is pasted along it inside the region and re-noised (`warping.py`; FreeTraj's local
  noise re-use); `stroke_strength` on the backend.
- pose / depth ControlNet: one noise for every frame, the ControlNet images carry the motion (Text2Video-Zero with
  ControlNet uses the same latents for all frames).
- a run that starts in spatial mode: frames stay independent images from one shared noise, the 2D model alone (the
  lab's reference); `motion_modes` lists the modes that get motion dynamics.
The manifest records the settings (`describe`) and what this run did (`motion_dynamics_run`).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import torch

from vdemo.backends.hub.base import DiffusersBackend, RunState
from vdemo.backends.hub.registry import HubSpec, Source, resolve
from vdemo.backends.hub.sd15 import ControlNetMixin, available_controls, load_sd15_parts
from vdemo.backends.hub.warping import warp_noise
from vdemo.config import LIMITS
from vdemo.cost import GpuCost
from vdemo.pipeline import GenerationRequest, RequestError
from vdemo.samplers import _align_schedule, input_alpha_bar, make_scheduler, sampler_names

ZERO_SHOT_MODES = ("spatial", "full", "causal", "sparse_causal")


class ZeroShotBackend(ControlNetMixin, DiffusersBackend):
    """SD 1.5 (+ ControlNet) with cross-frame self-attention: text, pose, depth, strokes."""

    modalities = frozenset({"text", "pose", "depth", "strokes"})  # an instance narrows it to the ControlNets it has
    attention_modes = ZERO_SHOT_MODES
    samplers = tuple(sampler_names())
    default_attention_mode = "sparse_causal"
    default_sampler = "DDIM"
    limits = LIMITS
    default_size = (512, 512)
    # SD 1.5 at 512² with CFG, frames batched: ~0.05 s per frame per step in fp16 on an A100-class GPU (estimate)
    gpu_cost = GpuCost(startup_s=8.0, s_per_frame_call=0.05, attention_share=0.35,
                       source="estimate from public SD 1.5 timings on an A100 (~17 it/s with CFG)")
    # Text2Video-Zero motion dynamics (module docstring); defaults are diffusers' TextToVideoZeroPipeline's
    motion_field_strength_x = 12.0  # δ per frame, pixels of a 512² frame; positive moves the content left
    motion_field_strength_y = 12.0  # positive moves the content up
    motion_steps_to_t1 = 0.04  # fraction of num_steps frame 0 runs alone to reach t1 (2 of 50: diffusers' t1 = 47)
    motion_steps_to_t0 = 0.10  # ... to reach t0 (5 of 50: diffusers' t0 = 44)
    motion_modes = ("full", "causal", "sparse_causal")  # start modes that get it; spatial keeps one shared noise
    _joint_start: float | None = None  # this run's t1 (DDIM timestep) while a motion run is in flight
    default_guidance = 7.5  # SD 1.5's: diffusers' StableDiffusionPipeline (and TextToVideoZero) guidance_scale default
    default_steps = 25  # diffusers' StableDiffusionPipeline default is 50; 25 DDIM steps halve the GPU time
    default_num_frames = 8  # diffusers' TextToVideoZeroPipeline default video_length

    def __init__(self, spec: HubSpec, sources: dict[str, Source], device: str, dtype: torch.dtype, parts: dict,
                 controls: dict[str, Source]):
        from diffusers import StableDiffusionPipeline

        from vdemo.attention import FrameContext, install_frame_attention
        from vdemo.backends.hub.base import RESIDENCY
        from vdemo.backends.hub.sd15 import share_frame_attention

        super().__init__(spec, sources, device, dtype)
        RESIDENCY.track(self)
        self.scheduler_config = parts.pop("scheduler_config")
        pipe = StableDiffusionPipeline(**parts, scheduler=make_scheduler("DDIM", self.scheduler_config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.ctx_self = FrameContext("sparse_causal", 8)
        self.layers = {"self": install_frame_attention(pipe.unet, self.ctx_self, layers="self")}
        if not self.layers["self"]:
            raise RuntimeError("SD 1.5 UNet: no self-attention layers to inflate")
        share_frame_attention(pipe.unet, self.ctx_self)  # the UNet is the process's shared SD 1.5 one
        self.adopt(pipe, controls)

    @classmethod
    def load(cls, spec: HubSpec, root: Path | None, device: str, dtype: torch.dtype) -> ZeroShotBackend:
        sources = {"base": resolve(spec, "base", root)}
        controls = available_controls(spec, root)
        return cls(spec, sources, device, dtype, load_sd15_parts(sources["base"], dtype), controls)

    @staticmethod
    def controlnet_pipeline_class():
        from diffusers import StableDiffusionControlNetPipeline

        return StableDiffusionControlNetPipeline

    def install_controlnet_attention(self, net) -> None:
        from vdemo.attention import install_frame_attention

        install_frame_attention(net, self.ctx_self, layers="self")

    def describe(self) -> dict:
        motion = {"field_strength_x": self.motion_field_strength_x, "field_strength_y": self.motion_field_strength_y,
                  "steps_to_t1": self.motion_steps_to_t1, "steps_to_t0": self.motion_steps_to_t0,
                  "modes": list(self.motion_modes), "pre_pass_sampler": "DDIM"}
        return {**super().describe(), "attention_layers": self.layers, "safety_checker": None,
                "motion_dynamics": motion}

    def set_motion_field(self, strength_x: float, strength_y: float) -> None:
        """Text2Video-Zero's global translation δ per frame (pixels of a 512² frame; 0, 0: no warp); next run."""
        if not all(math.isfinite(float(v)) for v in (strength_x, strength_y)):
            raise RequestError(f"motion field strengths must be finite, got {strength_x}, {strength_y}")
        self.motion_field_strength_x, self.motion_field_strength_y = float(strength_x), float(strength_y)

    def make_scheduler(self, name: str):
        """The sampler on the repo's config; during a motion run its schedule starts at t1 (`start_at_level`)."""
        scheduler = make_scheduler(name, self.scheduler_config)
        set_timesteps = scheduler.set_timesteps

        def set_timesteps_from_t1(*args, **kwargs):
            set_timesteps(*args, **kwargs)
            if self._joint_start is not None:
                start_at_level(scheduler, self._joint_start)

        scheduler.set_timesteps = set_timesteps_from_t1
        return scheduler

    def apply_mode(self, mode: str, num_frames: int) -> None:
        self.ctx_self.mode, self.ctx_self.num_frames = mode, num_frames

    def to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return latents  # frames are the batch: (F, C, h, w)

    def from_frames(self, frames: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return frames.to(like.dtype)

    def call_kwargs(self, request: GenerationRequest, state: RunState) -> dict:
        pipe = self.pipes[self._active]
        factor = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, request.height // factor, request.width // factor)
        noise = torch.randn(shape, generator=state.generator)  # x_T of frame 0
        self._joint_start = None
        steps, why_not = self.motion_plan(request, state.mode)
        state.motion = {"applied": steps is not None, **({"why_not": why_not} if why_not else {})}
        if steps is not None:
            latents = self.motion_latents(pipe, request, state, noise.to(self.device, self.dtype), steps)
        else:
            latents = noise.repeat(request.num_frames, 1, 1, 1)  # one noise, F frames
            if request.strokes:
                latents = warp_noise(latents, request.strokes, self.stroke_strength)
        kwargs = {"prompt": [request.prompt] * request.num_frames, "height": request.height, "width": request.width,
                  "num_inference_steps": request.num_steps, "guidance_scale": request.guidance,
                  "latents": latents.to(self.device, self.dtype)}
        if self._active:
            kwargs["image"] = self.conditioning(request, request.height, request.width)
        return kwargs

    # ------------------------------------------------------------------------------- Text2Video-Zero motion
    def motion_plan(self, request: GenerationRequest, mode: str) -> tuple[tuple[int, int] | None, str | None]:
        """((s1, s0), None) when this run gets motion dynamics, else (None, why not)."""
        if self._active:
            return None, "ControlNet: one noise for every frame, as Text2Video-Zero with ControlNet"
        if request.strokes:
            return None, "strokes: stroke warping of one shared noise"
        if mode not in self.motion_modes:
            return None, f"starts in {mode} mode, not one of motion_modes: one shared noise"
        steps = motion_steps(request.num_steps, self.motion_steps_to_t1, self.motion_steps_to_t0)
        return (steps, None) if steps else (None, "one step: no room for t0 < t1")

    def motion_latents(self, pipe, request: GenerationRequest, state: RunState, noise: torch.Tensor,
                       steps: tuple[int, int]) -> torch.Tensor:
        """The joint pass's initial latents (F, C, h, w) at t1, in the run's sampler's convention (steps 1–4)."""
        x_t1, x_t0, ddim = self.first_frame_pass(pipe, request, state, noise, steps)
        t1, t0 = (int(ddim.timesteps[s]) for s in steps)
        sx, sy = self.motion_field_strength_x, self.motion_field_strength_y
        warped = warp_first_frame(x_t0, request.num_frames, sx, sy)
        joint = torch.cat([x_t1, forward_noise(ddim, warped[1:], t0, t1, state.generator)])
        self._joint_start = float(t1)
        state.scheduler.set_timesteps(request.num_steps, device=joint.device)  # cut at t1: `make_scheduler`
        start = to_sampler_latents(state.scheduler, joint)
        n = request.num_steps
        state.motion.update({"pre_pass_steps": steps[1], "frame0_steps_before_t1": steps[0], "t1": t1, "t0": t0,
                             "diffusers_t1": n - 1 - steps[0], "diffusers_t0": n - 1 - steps[1],
                             "field_strength": [sx, sy], "joint_pass_entries": len(state.scheduler.timesteps)})
        return start

    def first_frame_pass(self, pipe, request: GenerationRequest, state: RunState, noise: torch.Tensor,
                         steps: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, object]:
        """DDIM on frame 0 alone from x_T: (x_t1, x_t0, the DDIM scheduler), its latents after s1 and s0 steps."""
        s1, s0 = steps
        kept = {0: noise}

        def keep(pipe_, i, t, callback_kwargs):
            if i + 1 in steps:
                kept[i + 1] = callback_kwargs["latents"].clone()
            pipe_._interrupt = i + 1 >= s0  # the remaining steps are skipped: frame 0 stops at t0
            return {}

        running, ddim = pipe.scheduler, make_scheduler("DDIM", self.scheduler_config)
        pipe.scheduler = ddim
        self.apply_mode(state.mode, 1)
        try:
            pipe(prompt=[request.prompt], height=request.height, width=request.width, latents=noise,
                 num_inference_steps=request.num_steps, guidance_scale=request.guidance, generator=state.generator,
                 output_type="latent", callback_on_step_end=keep)
        finally:
            pipe.scheduler = running
            self.apply_mode(state.mode, request.num_frames)
        return kept[s1], kept[s0], ddim

    def _call(self, pipe, request: GenerationRequest, state: RunState):
        try:
            return super()._call(pipe, request, state)
        finally:
            self._joint_start = None  # schedulers made after this run start at T again

    def _manifest(self, state: RunState, total_s: float) -> dict:
        return {**super()._manifest(state, total_s), "motion_dynamics_run": getattr(state, "motion", None)}


def motion_steps(num_steps: int, to_t1: float, to_t0: float) -> tuple[int, int] | None:
    """(s1, s0): the DDIM steps frame 0 takes alone to reach t1 and t0 (0 ≤ s1 < s0 ≤ n − 1); None for one step.

    Fractions of num_steps rounded half up; diffusers' t1 / t0 (indices from the end) are n − 1 − s1 / n − 1 − s0.
    """
    if not 0.0 <= to_t1 < to_t0 < 1.0:
        raise ValueError(f"need 0 <= steps_to_t1 < steps_to_t0 < 1, got {to_t1}, {to_t0}")
    if num_steps < 2:
        return None
    s0 = min(max(math.floor(to_t0 * num_steps + 0.5), 1), num_steps - 1)
    return min(math.floor(to_t1 * num_steps + 0.5), s0 - 1), s0


def warp_first_frame(latent: torch.Tensor, num_frames: int, strength_x: float, strength_y: float) -> torch.Tensor:
    """(1, C, h, w) -> (F, C, h, w): frame k is `latent` warped by the translation k·δ (frame 0 is `latent`).

    diffusers' `create_motion_field_and_warp_latents` with frame_ids 1..F−1, as `TextToVideoZeroPipeline` calls it.
    """
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        create_motion_field_and_warp_latents,
    )

    if num_frames == 1:
        return latent
    others = create_motion_field_and_warp_latents(strength_x, strength_y, list(range(1, num_frames)),
                                                  latent.repeat(num_frames - 1, 1, 1, 1))
    return torch.cat([latent, others])


def forward_noise(scheduler, latents: torch.Tensor, t0: int, t1: int, generator: torch.Generator) -> torch.Tensor:
    """DDPM forward from timestep t0 to t1 > t0: diffusers' `TextToVideoZeroPipeline.forward_loop` (fresh noise,
    √∏alphas[t0:t1] kept), called with a stand-in `self` that holds `scheduler`."""
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        TextToVideoZeroPipeline,
    )

    return TextToVideoZeroPipeline.forward_loop(SimpleNamespace(scheduler=scheduler), latents, t0, t1, generator)


def start_at_level(scheduler, level: float) -> None:
    """Drop the schedule's entries before the one nearest timestep `level` (img2img-style), after `set_timesteps`.

    Two-call (Heun, DPM++ SDE) and PLMS lists are re-aligned first as for a live switch (`vdemo.samplers`); σs are
    cut alike and the step index restarts at 0, so the sampler runs the rest of its n-step schedule from there.
    """
    k = int(torch.argmin((scheduler.timesteps.float().cpu() - float(level)).abs()))
    _align_schedule(scheduler, k)
    scheduler.timesteps = scheduler.timesteps[k:]
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor):
        scheduler.sigmas = sigmas[k:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)


def to_sampler_latents(scheduler, latents: torch.Tensor) -> torch.Tensor:
    """Variance-preserving latents -> the sampler's sample at the first level of its (set) schedule, pre-divided by
    `init_noise_sigma` (the pipeline multiplies its `latents` argument by it)."""
    t = scheduler.timesteps[:1]
    a = input_alpha_bar(scheduler, t[0])
    sample = scheduler.add_noise(latents / math.sqrt(a), torch.zeros_like(latents), t)
    return sample / scheduler.init_noise_sigma
