"""vdemo.media's helpers that other layers share: fitting images and clips, and the one uint8 converter, bit for bit
the same as the four converters it replaced (model outputs, exports, diffusers' outputs, latent previews)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vdemo.media import fit_clip, fit_image, frames_to_uint8, to_uint8


# ------------------------------------------------------------------------- the replaced converters, verbatim
def old_pipeline_to_uint8(video: torch.Tensor) -> np.ndarray:
    video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 1).cpu().numpy()


def old_export_float(frames: np.ndarray) -> np.ndarray:  # frames_to_uint8 after its checks, channels last
    return np.ascontiguousarray(((frames.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8))


def old_hub_to_uint8_frames(video) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim == 5:
        video = video[0]
    return (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)


def old_preview(rgb: torch.Tensor) -> np.ndarray:
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rgb.permute(0, 2, 3, 1).numpy()


def tricky(shape, lo: float, hi: float, seed: int = 0) -> np.ndarray:
    """Random values over and beyond [lo, hi], plus every value that lands on a half step (the rounding ties)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo - 0.3, hi + 0.3, size=shape)
    ties = lo + (np.arange(256) + 0.5) / 255.0 * (hi - lo)  # k + 0.5 after scaling
    flat = x.reshape(-1)
    flat[: min(len(flat), len(ties))] = ties[: len(flat)]
    flat[:4] = [lo, hi, lo - 1, hi + 1]
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_model_outputs_and_previews_convert_as_before(dtype):
    x = torch.from_numpy(tricky((5, 3, 7, 9), -1.0, 1.0)).to(dtype)
    new = to_uint8(x, channels_first=True)
    assert new.shape == (5, 7, 9, 3) and new.dtype == np.uint8
    assert np.array_equal(new, old_pipeline_to_uint8(x))
    if dtype == torch.float32:
        assert np.array_equal(new, old_preview(x))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_export_floats_convert_as_before(dtype):
    x = tricky((4, 6, 5, 3), -1.0, 1.0, seed=1).astype(dtype).clip(-1, 1)
    assert np.array_equal(frames_to_uint8(x), old_export_float(x))
    first = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    assert np.array_equal(frames_to_uint8(first), old_export_float(x))
    assert frames_to_uint8(first).flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_diffusers_outputs_convert_as_before(dtype):
    from vdemo.backends.hub.base import to_uint8_frames

    x = tricky((1, 4, 6, 5, 3), 0.0, 1.0, seed=2).astype(dtype)
    assert np.array_equal(to_uint8_frames(x), old_hub_to_uint8_frames(x))
    assert np.array_equal(to_uint8(x[0], value_range=(0, 1)), old_hub_to_uint8_frames(x))


def test_latent_previews_go_through_to_uint8():
    from vdemo.backends.hub.preview import SD15_LATENT_RGB, latents_to_rgb

    latents = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0)) * 2
    rgb = torch.einsum("fchw,cr->frhw", latents, torch.tensor(SD15_LATENT_RGB, dtype=torch.float32))
    assert np.array_equal(latents_to_rgb(latents), old_preview(rgb))
    assert latents_to_rgb(latents, scale=2).shape == (3, 10, 12, 3)


def test_fit_image_and_fit_clip():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # the centre square of a wide image
    square = fit_image(image, 16, 16)
    assert square.shape == (16, 16, 3) and square.min() >= 250
    grey = fit_image(np.full((30, 30, 1), 7, np.uint8), 8, 12)
    assert grey.shape == (8, 12) and (grey == 7).all()
    clip = np.stack([np.full((10, 10), i, np.uint8) for i in range(5)])  # nearest frame, ties to even
    fitted = fit_clip(clip, 9, 4, 4)
    assert fitted.shape == (9, 4, 4) and fitted[:, 0, 0].tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4]
