"""AnimateDiff behind the shared pipeline: Stable Diffusion 1.5 + a motion adapter (Guo et al. 2023, "AnimateDiff:
Animate Your Personalized Text-to-Image Diffusion Models without Specific Tuning"), via diffusers'
`AnimateDiffPipeline`; pose and depth through the SD 1.5 ControlNets v1.1 (Zhang et al. 2023) with
`AnimateDiffControlNetPipeline`, both sharing one set of weights (`from_pipe`).

Attention modes map onto the two kinds of attention layer the motion UNet has:

| lab mode      | spatial self-attention (attn1, frames in batch) | motion modules (frames in sequence) |
|---------------|-------------------------------------------------|-------------------------------------|
| spatial       | spatial (each frame alone)                      | spatial (no mixing across frames)   |
| temporal      | spatial                                         | temporal (AnimateDiff as trained)   |
| full          | full (every token of every frame)               | temporal                            |
| causal        | causal (frames ≤ t)                             | causal (frames ≤ t)                 |
| sparse_causal | sparse_causal (frames 0, t−1, t)                | temporal                            |

Schedulers use the settings the diffusers AnimateDiff docs give: linear betas, `clip_sample=False`,
`timestep_spacing="linspace"`, `steps_offset=1`. Strokes use the training-free noise warping + latent pasting of
`warping.py` (FreeTraj, Qiu et al. 2024, works on AnimateDiff), with the strength on the backend (`stroke_strength`).

Memory: the SD 1.5 parts are the process's shared ones (`sd15.load_sd15_parts`, also the zero-shot backend's), and
the motion UNet holds no weights of its own but the motion modules: `motion_unet` ties its 2-D layers to the shared
SD 1.5 UNet and its motion modules to the adapter, where diffusers' `UNetMotionModel.from_unet2d` copies both.

Longer clips and editing (`vdemo.long`): over `free_noise_context` frames (16, the length the motion modules were
trained on) a run uses FreeNoise (Qiu et al. 2024, "FreeNoise: Tuning-Free Longer Video Diffusion via Noise
Rescheduling"; diffusers' `enable_free_noise`): the motion modules attend within sliding windows of 16 frames with
stride 4 and the initial noise is rescheduled so windows agree. Its blocks replace the motion modules' attention
layers, so while it is on the lab mode steers only the spatial layers (the motion layers run as trained); the
lab's processors and the adapter's shared weights come back when it is turned off. `edit_video` runs diffusers'
`AnimateDiffVideoToVideoPipeline` (SDEdit on the latents, Meng et al. 2022) on the same weights (`from_pipe`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from vdemo.backends.hub.base import RESIDENCY, DiffusersBackend, RunState
from vdemo.backends.hub.registry import HubSpec, Source, resolve
from vdemo.backends.hub.sd15 import (
    ControlNetMixin,
    available_controls,
    load_sd15_parts,
    shared_part,
    tie_parameters,
)
from vdemo.backends.hub.warping import warp_noise
from vdemo.config import LIMITS
from vdemo.cost import GpuCost
from vdemo.pipeline import GenerationRequest
from vdemo.samplers import make_scheduler, sampler_names

MODE_LAYERS: dict[str, tuple[str, str]] = {  # lab mode -> (spatial self-attention mode, motion-module mode)
    "spatial": ("spatial", "spatial"),
    "temporal": ("spatial", "temporal"),
    "full": ("full", "temporal"),
    "causal": ("causal", "causal"),
    "sparse_causal": ("sparse_causal", "temporal"),
}
ANIMATEDIFF_SCHEDULER = {"beta_schedule": "linear", "clip_sample": False, "timestep_spacing": "linspace",
                         "steps_offset": 1}
DECODE_CHUNK_FRAMES = 8  # VAE-decode this many frames at a time (memory saver)
V2V_KEY = ("video-to-video",)  # the editing pipeline's key in `pipes` (ControlNet pipelines use their controls)


def motion_unet(unet2d, adapter):
    """AnimateDiff's UNetMotionModel over an SD 1.5 UNet and a motion adapter, sharing their weights.

    `UNetMotionModel.from_unet2d` copies the 2-D UNet's weights block by block (`load_state_dict`) and then the
    adapter's motion modules (`load_motion_modules`); each copy is then replaced by the original Parameter
    (`tie_parameters`), so the SD 1.5 UNet the zero-shot backend uses and this one are one set of weights. Raises if
    any parameter of either found no twin (a layout this code does not know: it would silently double the memory).
    """
    from diffusers import UNetMotionModel

    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    for what, source in (("SD 1.5 UNet", unet2d), ("motion adapter", adapter)):
        untied = tie_parameters(unet, source)
        if untied:
            raise RuntimeError(f"AnimateDiff: {len(untied)} {what} parameters have no twin in the motion UNet "
                               f"(e.g. {', '.join(untied[:3])}); cannot share its weights")
    return unet


class AnimateDiffBackend(ControlNetMixin, DiffusersBackend):
    """AnimateDiff (text; pose / depth via ControlNet; strokes by latent warping) on a diffusers pipeline."""

    modalities = frozenset({"text", "pose", "depth", "strokes"})  # an instance narrows it to the ControlNets it has
    attention_modes = tuple(MODE_LAYERS)
    samplers = tuple(sampler_names())
    default_attention_mode = "temporal"  # AnimateDiff as trained
    default_sampler = "DDIM"
    limits = LIMITS
    default_size = (512, 512)
    mode_layers = MODE_LAYERS  # what each lab mode does to the two kinds of attention layer (for vdemo.cost)
    # ~1 s per step for 16 frames at 512² with CFG in fp16 on an A100-class GPU (public timings, not measured here)
    gpu_cost = GpuCost(startup_s=10.0, s_per_frame_call=0.06, attention_share=0.35,
                       source="estimate from public A100 timings (~25 s for 16 frames, 25 steps)")
    default_guidance = 7.5  # SD 1.5's: the guidance_scale default of diffusers' AnimateDiffPipeline
    default_steps = 25  # diffusers' AnimateDiffPipeline default is 50; 25 DDIM steps halve the GPU time
    default_num_frames = 16  # the clip length the motion modules were trained on; AnimateDiffPipeline's default
    free_noise_context = 16  # longer runs use FreeNoise windows of this many frames (the trained length) ...
    free_noise_stride = 4  # ... moved by this many frames
    free_noise_on = False
    _edit = None  # (PIL frames, strength) while edit_video runs

    def __init__(self, spec: HubSpec, sources: dict[str, Source], device: str, dtype: torch.dtype, parts: dict,
                 adapter, controls: dict[str, Source]):
        from diffusers import AnimateDiffPipeline

        from vdemo.attention import FrameContext, install_frame_attention

        super().__init__(spec, sources, device, dtype)
        RESIDENCY.track(self)
        self.scheduler_config = {**parts.pop("scheduler_config"), **ANIMATEDIFF_SCHEDULER}
        self.base_unet = parts.pop("unet")  # kept: the shared-part cache holds it only while a backend does
        pipe = AnimateDiffPipeline(**parts, unet=motion_unet(self.base_unet, adapter), motion_adapter=adapter,
                                   scheduler=make_scheduler("DDIM", self.scheduler_config))
        self.ctx_self = FrameContext("spatial", 16)
        self.ctx_time = FrameContext("temporal", 16)
        self.layers = {"self": install_frame_attention(pipe.unet, self.ctx_self, layers="self"),
                       "temporal": install_frame_attention(pipe.unet, self.ctx_time, layers="temporal")}
        if not all(self.layers.values()):
            raise RuntimeError(f"AnimateDiff UNet: no attention layers to install frame attention on: {self.layers}")
        self.adopt(pipe, controls)

    @classmethod
    def load(cls, spec: HubSpec, root: Path | None, device: str, dtype: torch.dtype) -> AnimateDiffBackend:
        from diffusers import MotionAdapter

        sources = {role: resolve(spec, role, root) for role in ("base", "motion_adapter")}
        controls = available_controls(spec, root)
        parts = load_sd15_parts(sources["base"], dtype)
        src = sources["motion_adapter"]
        adapter = shared_part(src, dtype, "motion_adapter", lambda: MotionAdapter.from_pretrained(
            src.location, dtype=dtype, **src.pretrained_kwargs(dtype)))
        return cls(spec, sources, device, dtype, parts, adapter, controls)

    @staticmethod
    def controlnet_pipeline_class():
        from diffusers import AnimateDiffControlNetPipeline

        return AnimateDiffControlNetPipeline

    def install_controlnet_attention(self, net) -> None:
        from vdemo.attention import install_frame_attention

        install_frame_attention(net, self.ctx_self, layers="self")  # ControlNet sees frames in its batch too

    def describe(self) -> dict:
        return {**super().describe(), "attention_layers": self.layers, "mode_layers": MODE_LAYERS,
                "free_noise": {"on": self.free_noise_on, "context_length": self.free_noise_context,
                               "context_stride": self.free_noise_stride},
                "edit_strength": self._edit[1] if self._edit else None,
                "scheduler_config": {k: self.scheduler_config.get(k) for k in ANIMATEDIFF_SCHEDULER}}

    def make_scheduler(self, name: str):
        return make_scheduler(name, self.scheduler_config)

    def apply_mode(self, mode: str, num_frames: int) -> None:
        self.ctx_self.mode, self.ctx_time.mode = MODE_LAYERS[mode]
        self.ctx_self.num_frames = self.ctx_time.num_frames = num_frames

    def to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[0].transpose(0, 1)  # (1, C, F, h, w) -> (F, C, h, w)

    def from_frames(self, frames: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return frames.transpose(0, 1)[None].to(like.dtype)

    def call_kwargs(self, request: GenerationRequest, state: RunState) -> dict:
        pipe = self.pipes[self._active]
        self.set_free_noise(pipe, request.num_frames)
        if self._active == V2V_KEY:
            video, strength = self._edit
            return {"video": video, "prompt": request.prompt, "strength": strength, "height": request.height,
                    "width": request.width, "num_inference_steps": request.num_steps,
                    "guidance_scale": request.guidance, "decode_chunk_size": DECODE_CHUNK_FRAMES}
        kwargs = {"prompt": request.prompt, "num_frames": request.num_frames, "height": request.height,
                  "width": request.width, "num_inference_steps": request.num_steps, "guidance_scale": request.guidance,
                  "decode_chunk_size": DECODE_CHUNK_FRAMES}
        if self._active:
            kwargs["conditioning_frames"] = self.conditioning(request, request.height, request.width)
        if request.strokes:
            factor = pipe.vae_scale_factor
            noise = torch.randn(request.num_frames, pipe.unet.config.in_channels, request.height // factor,
                                request.width // factor, generator=state.generator)
            noise = warp_noise(noise, request.strokes, self.stroke_strength)
            kwargs["latents"] = self.from_frames(noise, noise).to(self.device, self.dtype)
        return kwargs

    # ------------------------------------------------------------------------------------- long clips, editing
    def set_free_noise(self, pipe, num_frames: int) -> None:
        """FreeNoise on for clips longer than the motion modules' trained length, off (the lab's processors and the
        adapter's shared weights restored) otherwise."""
        from vdemo.attention import install_frame_attention

        want = num_frames > self.free_noise_context
        if want:
            pipe.enable_free_noise(context_length=self.free_noise_context, context_stride=self.free_noise_stride)
        elif self.free_noise_on:
            pipe.disable_free_noise()
            install_frame_attention(pipe.unet, self.ctx_time, layers="temporal")
        if want != self.free_noise_on:
            tie_parameters(pipe.unet, self.pipes[()].motion_adapter)  # the swapped blocks hold copies: share again
        self.free_noise_on = want

    def pipeline_for(self, request: GenerationRequest):
        if self._edit is None:
            return super().pipeline_for(request)
        from diffusers import AnimateDiffVideoToVideoPipeline

        from vdemo.backends.hub.sd15 import bind_frames

        bind_frames(self.ctx_self)
        if V2V_KEY not in self.pipes:
            self.pipes[V2V_KEY] = AnimateDiffVideoToVideoPipeline.from_pipe(self.pipes[()])
        elif self.offload != "none" and self._active != V2V_KEY:
            self.pipes[V2V_KEY].enable_model_cpu_offload(device=self.device)
        self._active = V2V_KEY
        return self.pipes[V2V_KEY]

    def edit_video(self, request: GenerationRequest, video, strength: float, control) -> Iterator:
        """SDEdit `video` ((F, H, W, 3) uint8) with the request's prompt at `strength` (0–1]: the clip's latents are
        noised to that point of the schedule and denoised (AnimateDiffVideoToVideoPipeline); Progress then Done."""
        from PIL import Image

        from vdemo.media import fit_image
        from vdemo.pipeline import RequestError

        if not 0.0 < float(strength) <= 1.0:
            raise RequestError(f"edit strength must be in (0, 1], got {strength!r}")
        frames = [Image.fromarray(fit_image(f, request.height, request.width)) for f in video]
        request = replace(request, num_frames=len(frames))  # validates the frame count
        self.check(request)
        self._edit = (frames, float(strength))
        try:
            yield from self.run(request, control)
        finally:
            self._edit = None
            if self._active == V2V_KEY:
                self._active = ()
