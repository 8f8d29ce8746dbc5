"""Cheap previews of Stable Diffusion latents: a fixed linear map from the 4 latent channels to RGB, no VAE decode.

The factors are ComfyUI's `latent_rgb_factors` for SD 1.5 (comfy/latent_formats.py, class SD15), fitted to map the
scaled latents a sampler holds (VAE latent × 0.18215) to RGB in about [-1, 1]. Stable Video Diffusion encodes frames
with the same SD VAE encoder, so its latents use them too.
"""

from __future__ import annotations

import numpy as np
import torch

from vdemo.media import to_uint8

SD15_LATENT_RGB = (  # rows: latent channels 0-3; columns: R, G, B
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def latents_to_rgb(latents: torch.Tensor, factors=SD15_LATENT_RGB, scale: int = 1) -> np.ndarray:
    """(F, 4, h, w) scaled latents -> (F, h·scale, w·scale, 3) uint8 via the linear latent→RGB projection."""
    if latents.ndim != 4 or latents.shape[1] != len(factors):
        raise ValueError(f"latents must be (frames, {len(factors)}, h, w), got {tuple(latents.shape)}")
    matrix = torch.tensor(factors, dtype=torch.float32)  # (4, 3)
    rgb = torch.einsum("fchw,cr->frhw", latents.detach().float().cpu(), matrix)  # (F, 3, h, w) in about [-1, 1]
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return to_uint8(rgb, channels_first=True)
