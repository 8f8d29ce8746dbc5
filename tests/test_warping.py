"""Stroke warping for the hub backends, on its own: regions follow strokes, the background stays untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vdemo.backends.hub.warping import disc_mask, move_region, paste_along_strokes, shift, stroke_cells, warp_noise
from vdemo.strokes import Stroke

F, C, H, W = 8, 4, 24, 32


def centroid(mask: torch.Tensor) -> np.ndarray:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return np.array([rows.float().mean() + 0.5, cols.float().mean() + 0.5])


def marked_video(stroke: Stroke) -> torch.Tensor:
    """Random background; frame 0 carries a constant +10 blob in the stroke's start region."""
    video = torch.randn(F, C, H, W, generator=torch.Generator().manual_seed(0))
    start = stroke_cells(stroke, F, H, W)[0]
    video[0][:, disc_mask(start, 3.0, H, W)] = 10.0
    return video


STROKES = [
    Stroke(((0.2, 0.3), (0.5, 0.4), (0.8, 0.7)), 0.1),  # bends
    Stroke(((0.9, 0.1), (0.1, 0.9)), 0.15),  # diagonal, right to left
    Stroke(((0.5, 0.5),), 0.1),  # an anchor
]


@pytest.mark.parametrize("stroke", STROKES)
def test_region_ends_where_the_stroke_ends(stroke):
    video = marked_video(stroke)
    x0, _, mask = paste_along_strokes(video, torch.zeros_like(video), [stroke], strength=1.0)
    end = stroke_cells(stroke, F, H, W)[-1]
    blob = (x0[-1, 0] == 10.0) & mask[-1]
    assert blob.any()
    assert np.abs(centroid(blob) - end).max() <= 1.0, "moved region must end within one latent cell of the stroke end"
    for f in range(1, F):  # and follow it on the way
        here = (x0[f, 0] == 10.0) & mask[f]
        assert np.abs(centroid(here) - stroke_cells(stroke, F, H, W)[f]).max() <= 1.0


@pytest.mark.parametrize("stroke", STROKES)
def test_background_outside_mask_untouched(stroke):
    video = marked_video(stroke)
    eps = torch.randn_like(video)
    x0, eps_out, mask = paste_along_strokes(video, eps, [stroke], strength=0.7)
    outside = ~mask[:, None].expand_as(video)
    assert torch.equal(x0[outside], video[outside]) and torch.equal(eps_out[outside], eps[outside])
    assert torch.equal(x0[0], video[0]), "the source frame is never edited"
    if not stroke.is_anchor:
        assert mask[1:].any()


def test_strength_blends_inside_mask():
    stroke = STROKES[0]
    video = marked_video(stroke)
    full, _, mask = paste_along_strokes(video, video, [stroke], strength=1.0)
    none, _, _ = paste_along_strokes(video, video, [stroke], strength=0.0)
    half, _, _ = paste_along_strokes(video, video, [stroke], strength=0.5)
    assert torch.equal(none, video)
    inside = mask[:, None].expand_as(video)
    assert torch.allclose(half[inside], 0.5 * (full[inside] + video[inside]))
    with pytest.raises(ValueError, match="strength must be 0–1"):
        paste_along_strokes(video, video, [stroke], strength=1.5)


def test_warp_noise_moves_frame0_noise_and_keeps_variance():
    stroke = Stroke(((0.25, 0.5), (0.75, 0.5)), 0.2)
    noise = torch.randn(F, C, H, W, generator=torch.Generator().manual_seed(1))
    warped = warp_noise(noise, [stroke], strength=1.0)
    moved, masks = move_region(noise, stroke)
    last = masks[-1]
    assert torch.equal(warped[-1][:, last], moved[-1][:, last]), "last frame's region is frame 0's noise, moved"
    assert torch.equal(warped[:, :, ~masks.any(0)], noise[:, :, ~masks.any(0)]), "background noise untouched"
    assert torch.equal(warped[0], noise[0])
    partial = warp_noise(torch.randn(F, C, 64, 64), [stroke], strength=0.5)
    assert 0.9 < float(partial.std()) < 1.1, "the blend must keep unit variance"


def test_shift_does_not_wrap():
    x = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(shift(x, 1, 0)[0], torch.zeros(4)) and torch.equal(shift(x, 1, 0)[1], x[0])
    assert torch.equal(shift(x, 0, -1)[:, -1], torch.zeros(3))
    assert not shift(x, 3, 0).any()
