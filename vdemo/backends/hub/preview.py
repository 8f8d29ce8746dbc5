"""Cheap previews of Stable Diffusion latents: a fixed linear map from the 4 latent channels to RGB, no VAE decode.

The factors are ComfyUI's `latent_rgb_factors` for SD 1.5 (comfy/latent_formats.py, class SD15), fitted to map the
scaled latents a sampler holds (VAE latent × 0.18215) to RGB in about [-1, 1]. Stable Video Diffusion encodes frames
with the same SD VAE encoder, so its latents use them too.

Wan 2.1's causal 3D VAE has 16 latent channels; its factors and bias are ComfyUI's `Wan21.latent_rgb_factors` /
`latent_rgb_factors_bias`, fitted on the normalised latents ((z − latents_mean) / latents_std) that diffusers' Wan
pipelines (and so AnyFlow-FAR and VACE, same VAE) hold while sampling. One latent frame stands for 4 video frames
(the first for one).
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


WAN21_LATENT_RGB = (  # rows: latent channels 0-15; columns: R, G, B
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
WAN21_LATENT_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


def latents_to_rgb(latents: torch.Tensor, factors=SD15_LATENT_RGB, scale: int = 1, bias=None) -> np.ndarray:
    """(F, C, h, w) scaled latents -> (F, h·scale, w·scale, 3) uint8 via the linear latent→RGB projection
    (C = len(factors); `bias`, three numbers, is added after it)."""
    if latents.ndim != 4 or latents.shape[1] != len(factors):
        raise ValueError(f"latents must be (frames, {len(factors)}, h, w), got {tuple(latents.shape)}")
    matrix = torch.tensor(factors, dtype=torch.float32)  # (C, 3)
    rgb = torch.einsum("fchw,cr->frhw", latents.detach().float().cpu(), matrix)  # (F, 3, h, w) in about [-1, 1]
    if bias is not None:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32).view(1, 3, 1, 1)
    if scale > 1:
        rgb = rgb.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return to_uint8(rgb, channels_first=True)
