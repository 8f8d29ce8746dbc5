"""The eval's model-independent object detector for world clips: colour, shape, centre and size of flat shapes.

Each pixel is explained as a blend of the background and one palette colour (the renderer's anti-aliased edges are
exactly such blends): for palette colour c the best blend weight is alpha = <p - bg, c - bg> / |c - bg|^2 (clipped to
[0, 1]) and the residual is the distance from p to that blend. A pixel belongs to the colour with the smallest
residual when its alpha >= 0.5 and the residual is small; connected components per colour (cv2, 8-connected) above
a minimum area become detections, so specks of noise are ignored. Shape comes from how much of its bounding box a
component fills: square ~1.0, circle ~pi/4, triangle (apex up) ~0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .palette import COLOURS, MIN_OBJECT_BACKGROUND_DIST

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)  # (K, 3)

MAX_RESIDUAL = 70.0  # RGB distance from the nearest background-to-colour blend; further = not an object pixel
MIN_AREA_FRAC = 0.003  # components smaller than this fraction of the frame are specks
SQUARE_MIN_FILL = 0.88  # bbox fill ratios: square ~1.0, circle ~0.785, triangle ~0.5
CIRCLE_MIN_FILL = 0.64


@dataclass
class Detection:
    """One detected object. Coordinates: centre normalised (x, y), origin top-left; bbox in pixels."""

    colour: str  # nearest COLOURS name
    centre: tuple[float, float]
    area_frac: float  # fraction of the frame
    bbox: tuple[int, int, int, int]  # (x, y, width, height) px
    shape: str  # "circle" | "square" | "triangle"
    fill: float  # area / bbox area, the shape cue
    mask: np.ndarray  # (H, W) bool


def estimate_background(frame_u8: np.ndarray) -> tuple[int, int, int]:
    """The background colour: the mode of the 2-px border (coarse 32-level bins), refined by a local median."""
    strips = (frame_u8[:2], frame_u8[-2:], frame_u8[:, :2], frame_u8[:, -2:])
    border = np.concatenate([s.reshape(-1, 3) for s in strips]).astype(np.float32)
    bins = (border // 32).astype(np.int32)
    codes = bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2]
    mode = np.bincount(codes).argmax()
    rough = np.array([mode // 64, (mode // 8) % 8, mode % 8], dtype=np.float32) * 32 + 16
    near = border[np.linalg.norm(border - rough, axis=1) < 48]
    return tuple(int(round(v)) for v in np.median(near, axis=0))


def classify_shape(fill: float) -> str:
    """Shape from the bounding-box fill ratio."""
    if fill >= SQUARE_MIN_FILL:
        return "square"
    return "circle" if fill >= CIRCLE_MIN_FILL else "triangle"


def colour_layers(frame_u8: np.ndarray, background_rgb) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the palette index that best explains it (-1: background/unknown) and its blend weight alpha."""
    height, width, _ = frame_u8.shape
    bg = np.asarray(background_rgb, dtype=np.float32)
    pixels = frame_u8.reshape(-1, 3).astype(np.float32) - bg  # (N, 3)
    towards = _PALETTE - bg  # (K, 3)
    span2 = (towards**2).sum(axis=1)  # (K,)
    usable = np.sqrt(span2) >= MIN_OBJECT_BACKGROUND_DIST / 2  # a colour too close to the background is invisible
    dot = pixels @ towards.T  # (N, K)
    alpha = np.clip(dot / np.maximum(span2, 1e-6), 0.0, 1.0)
    residual2 = (pixels**2).sum(axis=1, keepdims=True) - 2 * alpha * dot + alpha**2 * span2  # (N, K)
    residual2[:, ~usable] = np.inf
    best = residual2.argmin(axis=1)
    rows = np.arange(len(best))
    best_alpha = alpha[rows, best]
    keep = (best_alpha >= 0.5) & (residual2[rows, best] <= MAX_RESIDUAL**2)
    labels = np.where(keep, best, -1).reshape(height, width)
    return labels, best_alpha.reshape(height, width)


def detect_objects(
    frame_u8: np.ndarray,
    background_rgb: tuple[int, int, int] | None = None,
    max_objects: int | None = 2,
    min_area_frac: float = MIN_AREA_FRAC,
) -> list[Detection]:
    """Objects in one (H, W, 3) uint8 frame, largest first (at most max_objects; None = all)."""
    height, width, _ = frame_u8.shape
    if background_rgb is None:
        background_rgb = estimate_background(frame_u8)
    labels, alpha = colour_layers(frame_u8, background_rgb)
    min_area = max(4, int(round(min_area_frac * height * width)))
    detections = []
    for k in np.unique(labels[labels >= 0]):
        count, components, stats, _ = cv2.connectedComponentsWithStats((labels == k).astype(np.uint8), connectivity=8)
        for c in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[c])
            if area < min_area:
                continue
            mask = components == c
            # Centre: alpha-weighted over the component and its 1-px fringe (soft edges make it sub-pixel).
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            weight = np.where(ring, alpha, 0.0)
            ys, xs = np.nonzero(ring)
            w_sum = weight[ys, xs].sum()
            cx = float((weight[ys, xs] * (xs + 0.5)).sum() / w_sum) / width
            cy = float((weight[ys, xs] * (ys + 0.5)).sum() / w_sum) / height
            fill = area / float(w * h)
            detections.append(
                Detection(_NAMES[k], (cx, cy), area / (height * width), (x, y, w, h), classify_shape(fill), fill, mask)
            )
    detections.sort(key=lambda d: -d.area_frac)
    return detections if max_objects is None else detections[:max_objects]
