"""Zero-shot video from an image model: Stable Diffusion 1.5 (+ ControlNet) inflated with cross-frame attention.

The Text2Video-Zero idea (Khachatryan et al. 2023): run an image diffusion model on all frames at once (frames in the
batch), let every frame's self-attention also see other frames so appearance stays consistent, and start every frame
from the same noise. Built on current diffusers with our own processors (`vdemo.attention`) installed on the UNet's
and the ControlNet's self-attention: diffusers' `TextToVideoZeroPipeline` is deprecated and overwrites processors.

- text: `StableDiffusionPipeline`; pose / depth: `StableDiffusionControlNetPipeline` (ControlNets v1.1, Zhang et al.
  2023; both together through a MultiControlNet), one ControlNet image per frame; all share one set of weights.
- modes (self-attention only; this UNet has no temporal layers): spatial, full, causal, sparse_causal (Tune-A-Video's
  frame 0 + previous frame, Wu et al. 2023; Text2Video-Zero attends to frame 0 only).
- strokes: training-free warping (`warping.py`): the stroke region's share of the common noise is carried along each
  stroke, and after a few steps frame 0's clean-latent estimate is pasted along it inside the region and re-noised
  (Text2Video-Zero §3.3 motion dynamics, FreeTraj's local noise re-use); `stroke_strength` on the backend.
- samplers: every general-purpose one of the registry, on the repo's own scheduler config.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vdemo.backends.hub.base import DiffusersBackend, RunState
from vdemo.backends.hub.registry import HubSpec, Source, resolve
from vdemo.backends.hub.sd15 import ControlNetMixin, available_controls, load_sd15_parts
from vdemo.backends.hub.warping import warp_noise
from vdemo.config import LIMITS
from vdemo.pipeline import GenerationRequest
from vdemo.samplers import make_scheduler, sampler_names

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
    seconds_per_unit = 0.08

    def __init__(self, spec: HubSpec, sources: dict[str, Source], device: str, dtype: torch.dtype, parts: dict,
                 controls: dict[str, Source]):
        from diffusers import StableDiffusionPipeline

        from vdemo.attention import FrameContext, install_frame_attention

        super().__init__(spec, sources, device, dtype)
        self.scheduler_config = parts.pop("scheduler_config")
        pipe = StableDiffusionPipeline(**parts, scheduler=make_scheduler("DDIM", self.scheduler_config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.ctx_self = FrameContext("sparse_causal", 8)
        self.layers = {"self": install_frame_attention(pipe.unet, self.ctx_self, layers="self")}
        if not self.layers["self"]:
            raise RuntimeError("SD 1.5 UNet: no self-attention layers to inflate")
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
        return {**super().describe(), "attention_layers": self.layers, "safety_checker": None}

    def make_scheduler(self, name: str):
        return make_scheduler(name, self.scheduler_config)

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
        noise = torch.randn(shape, generator=state.generator).repeat(request.num_frames, 1, 1, 1)  # one noise, F frames
        if request.strokes:
            noise = warp_noise(noise, request.strokes, self.stroke_strength)
        kwargs = {"prompt": [request.prompt] * request.num_frames, "height": request.height, "width": request.width,
                  "num_inference_steps": request.num_steps, "guidance_scale": request.guidance,
                  "latents": noise.to(self.device, self.dtype)}
        if self._active:
            kwargs["image"] = self.conditioning(request, request.height, request.width)
        return kwargs
