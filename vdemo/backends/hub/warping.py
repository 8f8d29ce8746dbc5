"""Training-free motion along strokes for latent video diffusion: move a region's noise / latent along a stroke.

Two edits, both on frames-first latents (F, C, h, w), both leaving everything outside the moved region untouched:

1. `warp_noise` (before sampling): the initial noise inside the stroke's region in frame 0 is copied into every later
   frame, shifted to where the stroke is at that frame. Text2Video-Zero (Khachatryan et al. 2023, §3.3.1) warps the
   whole first-frame noise by a global translation; FreeTraj (Qiu et al. 2024) re-uses one local noise patch along a
   trajectory so the object it seeds follows it. Blended variance-preservingly: √s·moved + √(1−s)·own.
2. `paste_along_strokes` (after a few steps): the model's clean-latent estimate x0̂ inside the region of frame 0 is
   pasted, shifted along the stroke, into every later frame inside the moved mask (blend s), with its noise estimate
   ε̂ moved alongside (blend √s, √(1−s)); the caller re-noises (x0̂', ε̂') to the current noise level inside the mask
   (SDEdit-style, as the samplers' `reproject` does) and keeps its latents outside it.

Positions are in latent cells: a stroke point (x, y) in [0, 1] sits at column x·w, row y·h; shifts are whole cells, so
a moved region ends within half a cell of where the stroke ends. The region is a disc of radius `stroke.radius` ×
min(h, w) cells (at least half a cell), matching `vdemo.strokes.stroke_region_masks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vdemo.strokes import Stroke, resample_stroke


def stroke_cells(stroke: Stroke, num_frames: int, height: int, width: int) -> np.ndarray:
    """(F, 2) float (row, col) of the stroke's point at each frame, in latent cells."""
    xy = resample_stroke(stroke.points, num_frames)  # (F, 2) normalised (x, y)
    return np.stack([xy[:, 1] * height, xy[:, 0] * width], axis=1)


def radius_cells(stroke: Stroke, height: int, width: int) -> float:
    """The stroke's region radius in latent cells (never under half a cell)."""
    return max(stroke.radius * min(height, width), 0.5)


def disc_mask(center_rc: Sequence[float], radius: float, height: int, width: int) -> torch.Tensor:
    """(h, w) bool: cells whose centre lies within `radius` cells of `center_rc` (row, col)."""
    rows = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    cols = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    return (rows - float(center_rc[0])) ** 2 + (cols - float(center_rc[1])) ** 2 <= radius**2


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two axes by (dy, dx) whole cells; vacated cells are zero (False), nothing wraps around."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_r, dst_r = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_c, dst_c = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_r, dst_c] = x[..., src_r, src_c]
    return out


def stroke_offsets(stroke: Stroke, num_frames: int, height: int, width: int, source_frame: int = 0) -> np.ndarray:
    """(F, 2) int (dy, dx): whole-cell shift from the source frame's stroke point to each frame's."""
    cells = stroke_cells(stroke, num_frames, height, width)
    return np.round(cells - cells[source_frame]).astype(int)


def move_region(video: torch.Tensor, stroke: Stroke, source_frame: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The source frame's region content moved along the stroke, per frame: (moved (F, C, h, w), masks (F, h, w)).

    `moved[f]` holds the region (shifted) where `masks[f]` is True and zeros elsewhere.
    """
    num_frames, _, height, width = video.shape
    cells = stroke_cells(stroke, num_frames, height, width)
    source_mask = disc_mask(cells[source_frame], radius_cells(stroke, height, width), height, width).to(video.device)
    region = video[source_frame] * source_mask  # (C, h, w)
    offsets = stroke_offsets(stroke, num_frames, height, width, source_frame)
    moved = torch.stack([shift(region, int(dy), int(dx)) for dy, dx in offsets])  # (F, C, h, w)
    masks = torch.stack([shift(source_mask, int(dy), int(dx)) for dy, dx in offsets])  # (F, h, w)
    return moved, masks


def warp_noise(noise: torch.Tensor, strokes: Sequence[Stroke], strength: float = 1.0) -> torch.Tensor:
    """Initial noise (F, C, h, w) with each stroke's frame-0 region noise carried along the stroke (variance kept)."""
    _check_strength(strength)
    out = noise.clone()
    a, b = strength**0.5, (1.0 - strength) ** 0.5
    for stroke in strokes:
        moved, masks = move_region(out, stroke)
        masks[0] = False  # frame 0 keeps its own noise: it is the source
        out = torch.where(masks[:, None], a * moved + b * out, out)
    return out


def paste_along_strokes(x0: torch.Tensor, eps: torch.Tensor, strokes: Sequence[Stroke],
                        strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0', eps', mask): frame 0's region of x0 (linear blend) and of eps (variance-preserving blend) pasted along
    each stroke; strength 0 changes nothing, 1 replaces the region.

    mask (F, h, w) bool marks every cell that changed; the caller re-noises (x0', eps') there and nowhere else.
    """
    _check_strength(strength)
    x0_out, eps_out = x0.clone(), eps.clone()
    union = torch.zeros(x0.shape[0], *x0.shape[-2:], dtype=torch.bool, device=x0.device)
    for stroke in strokes:
        moved_x0, masks = move_region(x0_out, stroke)
        moved_eps, _ = move_region(eps_out, stroke)
        masks[0] = False
        m = masks[:, None]
        x0_out = torch.where(m, strength * moved_x0 + (1.0 - strength) * x0_out, x0_out)
        eps_out = torch.where(m, strength**0.5 * moved_eps + (1.0 - strength) ** 0.5 * eps_out, eps_out)
        union |= masks
    return x0_out, eps_out, union


def _check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"stroke strength must be 0–1, got {strength}")
