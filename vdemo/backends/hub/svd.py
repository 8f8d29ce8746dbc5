"""Stable Video Diffusion behind the shared pipeline: image → video (Blattmann et al. 2023, "Stable Video Diffusion:
Scaling Latent Video Diffusion Models to Large Datasets"), via diffusers' `StableVideoDiffusionPipeline`.

- modalities: the image (frame 0); strokes by the training-free warping of `warping.py` (frame 0's region of the
  initial noise and, after a few steps, of the clean-latent estimate carried along each stroke). Whether that steers
  the real model well is unverified here (no GPU, no weights): treat it as experimental.
- modes: the UNet has spatial transformer blocks (frames in batch) and temporal ones (frames in sequence); they map
  like AnimateDiff's (`animatediff.MODE_LAYERS`), `temporal` being SVD as trained.
- samplers: only its EDM family, which feeds the UNet the continuous noise level c_noise = ¼·ln σ it was trained on:
  `Euler` (the repo's EulerDiscreteScheduler: Karras σ, v-prediction, continuous timesteps) and `DPM++ 2M`
  (diffusers' EDMDPMSolverMultistepScheduler on the same σ range). They share their timestep grid, so switching
  between them mid-run is live.
- stop: the pipeline has no interrupt flag; the step callback raises and the last clean estimate is decoded.
- memory: frames decoded `decode_chunk_size` at a time; model CPU offload when its weights plus a working margin
  (20 GiB in all: `min_vram_gib`) do not fit in free GPU memory, even after least recently used backends leave it.
- defaults: guidance 3.0 (the pipeline's max_guidance_scale default; frames ramp from min_guidance_scale 1.0), 25
  steps (its num_inference_steps default), frames 14 for img2vid and 25 for img2vid-xt (each UNet's config
  num_frames, the pipeline's default; in the registry as `HubSpec.default_num_frames`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vdemo.backends.hub.animatediff import MODE_LAYERS
from vdemo.backends.hub.base import RESIDENCY, DiffusersBackend, RunState, place, to_uint8_frames
from vdemo.backends.hub.registry import HubSpec, Source, resolve
from vdemo.backends.hub.warping import warp_noise
from vdemo.config import LIMITS, Limits
from vdemo.cost import GpuCost
from vdemo.media import fit_image
from vdemo.pipeline import GenerationRequest, RequestError

SVD_SAMPLERS = ("Euler", "DPM++ 2M")
DECODE_CHUNK_FRAMES = 4
MOTION_BUCKET_ID = 127  # SVD's micro-conditioning defaults (diffusers' and the paper's)
NOISE_AUG_STRENGTH = 0.02


class SVDBackend(DiffusersBackend):
    """Stable Video Diffusion (img2vid / img2vid-xt): image, strokes."""

    modalities = frozenset({"image", "strokes"})
    attention_modes = tuple(MODE_LAYERS)
    samplers = SVD_SAMPLERS
    default_attention_mode = "temporal"  # SVD as trained
    default_sampler = "Euler"
    limits = Limits(**{**LIMITS.__dict__, "max_frames": 25})
    default_size = (576, 1024)
    interruptible = False
    min_vram_gib = 20.0
    default_guidance = 3.0  # StableVideoDiffusionPipeline's max_guidance_scale default
    default_steps = 25  # its num_inference_steps default
    default_num_frames = 14  # img2vid's; an instance takes its registry entry's (svd-xt: 25)
    mode_layers = MODE_LAYERS
    # ~1.8 s per step for 14 frames at 576×1024 with CFG in fp16 on an A100-class GPU; the temporal VAE decode of
    # the frames is most of the start-up (public timings, not measured here)
    gpu_cost = GpuCost(startup_s=15.0, s_per_frame_call=0.057, attention_share=0.3,
                       source="estimate from public A100 timings (~60 s for 14 frames, 25 steps)")

    def __init__(self, spec: HubSpec, sources: dict[str, Source], device: str, dtype: torch.dtype, pipe):
        from vdemo.attention import FrameContext, install_frame_attention

        super().__init__(spec, sources, device, dtype)
        RESIDENCY.track(self)
        self.default_num_frames = spec.default_num_frames or type(self).default_num_frames
        self.scheduler_config = dict(pipe.scheduler.config)
        self.ctx_self = FrameContext("spatial", 14)
        self.ctx_time = FrameContext("temporal", 14)
        self.layers = {"self": install_frame_attention(pipe.unet, self.ctx_self, layers="self"),
                       "temporal": install_frame_attention(pipe.unet, self.ctx_time, layers="temporal")}
        if not all(self.layers.values()):
            raise RuntimeError(f"SVD UNet: no attention layers to install frame attention on: {self.layers}")
        self.offload = place(pipe, device, self.min_vram_gib)
        self.pipe = pipe

    @classmethod
    def load(cls, spec: HubSpec, root: Path | None, device: str, dtype: torch.dtype) -> SVDBackend:
        from diffusers import StableVideoDiffusionPipeline

        source = resolve(spec, "svd", root)
        pipe = StableVideoDiffusionPipeline.from_pretrained(source.location, dtype=dtype,
                                                            **source.pretrained_kwargs(dtype))
        return cls(spec, {"svd": source}, device, dtype, pipe)

    def check(self, request: GenerationRequest) -> None:
        if request.image is None:
            raise RequestError(f"backend {self.name!r} needs an image: it animates one picture (image → video)")
        if request.keyframes:
            raise RequestError(f"backend {self.name!r} takes only the first frame; keyframes are not supported")
        super().check(request)

    def describe(self) -> dict:
        return {**super().describe(), "attention_layers": self.layers, "mode_layers": MODE_LAYERS,
                "strokes": "experimental (training-free warping, unverified on the real model)"}

    def pipeline_for(self, request: GenerationRequest):
        return self.pipe

    def make_scheduler(self, name: str):
        from diffusers import EDMDPMSolverMultistepScheduler, EulerDiscreteScheduler

        config = self.scheduler_config
        if name == "Euler":
            return EulerDiscreteScheduler.from_config(config)
        if name == "DPM++ 2M":
            return EDMDPMSolverMultistepScheduler(sigma_min=config["sigma_min"], sigma_max=config["sigma_max"],
                                                  sigma_data=1.0, prediction_type=config["prediction_type"],
                                                  algorithm_type="dpmsolver++", solver_order=2)
        raise ValueError(f"backend {self.name!r} does not support sampler {name!r}; choose one of: "
                         f"{', '.join(SVD_SAMPLERS)}")

    def apply_mode(self, mode: str, num_frames: int) -> None:
        self.ctx_self.mode, self.ctx_time.mode = MODE_LAYERS[mode]
        self.ctx_self.num_frames = self.ctx_time.num_frames = num_frames

    def to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[0]  # (1, F, C, h, w) -> (F, C, h, w)

    def from_frames(self, frames: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return frames[None].to(like.dtype)

    def call_kwargs(self, request: GenerationRequest, state: RunState) -> dict:
        from PIL import Image

        image = Image.fromarray(fit_image(request.image, request.height, request.width))
        guidance = float(request.guidance)
        kwargs = {"image": image, "height": request.height, "width": request.width, "num_frames": request.num_frames,
                  "num_inference_steps": request.num_steps, "min_guidance_scale": min(1.0, guidance),
                  "max_guidance_scale": guidance, "fps": request.fps, "motion_bucket_id": MOTION_BUCKET_ID,
                  "noise_aug_strength": NOISE_AUG_STRENGTH, "decode_chunk_size": DECODE_CHUNK_FRAMES}
        if request.strokes:
            factor = self.pipe.vae_scale_factor
            noise = torch.randn(request.num_frames, self.pipe.unet.config.out_channels, request.height // factor,
                                request.width // factor, generator=state.generator)
            noise = warp_noise(noise, request.strokes, self.stroke_strength)
            kwargs["latents"] = noise[None].to(self.device, self.dtype)
        return kwargs

    def decode(self, pipe, latents: torch.Tensor, request: GenerationRequest) -> np.ndarray:
        frames = pipe.decode_latents(latents, request.num_frames, DECODE_CHUNK_FRAMES)  # (1, 3, F, H, W) in [-1, 1]
        return to_uint8_frames(pipe.video_processor.postprocess_video(video=frames, output_type="np"))
