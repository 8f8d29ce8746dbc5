"""Motion strokes: parsing, resampling to frames, and the controls derived from them. Pure functions, no state.

A stroke is the path an object's centre should follow: ordered points in normalised [0, 1] coordinates (origin
top-left, x right, y down) plus a region radius (fraction of the frame side). A single point, or a stroke of zero
length, is an anchor: that region should stay put. Frames follow the stroke at constant speed: frame 0 sits on the
first point, the last frame on the last point, the others equally spaced by arc length between them.

Derived controls: per-frame Gaussian heatmaps (as in MCDiff, Chen et al. 2023, and DragAnything, Wu et al. 2024,
which condition on a Gaussian blob per frame at the trajectory point) and per-frame region discs (for training-free
latent warping backends), and a cut-and-drag animation (`drag_frames`: each stroke's object cut out of the first
frame and moved along the stroke over the background, Go-with-the-Flow's and DragAnything's coarse motion input),
which the `tiny-v2` backend gives its model as a motion-compensated reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from vdemo.config import DEFAULTS, LIMITS

# Stroke radius bounds (fraction of the frame side). Read from config when it defines them.
MIN_STROKE_RADIUS: float = getattr(LIMITS, "min_stroke_radius", 0.01)
MAX_STROKE_RADIUS: float = getattr(LIMITS, "max_stroke_radius", 0.5)
HEATMAP_SIGMA_FRAC = 0.06  # default Gaussian sigma as a fraction of the heatmap side

# One colour per stroke in the overlay (RGB), as many as LIMITS.max_strokes.
OVERLAY_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0),
    (220, 80, 255), (0, 220, 220), (255, 128, 0), (255, 255, 255),
)  # fmt: skip


@dataclass(frozen=True)
class Stroke:
    """Ordered points (x, y) in [0, 1], origin top-left; radius = region radius as a fraction of the frame side."""

    points: tuple[tuple[float, float], ...]
    radius: float

    @property
    def is_anchor(self) -> bool:
        return _length(np.asarray(self.points, dtype=np.float64)) == 0.0


# ---------------------------------------------------------------------------------------------------- parsing
def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def _parse_point(point, where: str) -> tuple[float, float]:
    if not isinstance(point, (list, tuple)) or len(point) != 2:
        raise ValueError(f"{where} must be [x, y], got {point!r}")
    x, y = _number(point[0], f"{where} x"), _number(point[1], f"{where} y")
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"{where} ({x:g}, {y:g}) is outside [0, 1]")
    return (x, y)


def parse_strokes(data) -> list[Stroke]:
    """Strokes from [{"points": [[x, y], ...], "radius": r}, ...] (or that as a JSON string / bytes).

    radius is optional (DEFAULTS.stroke_radius). Raises a one-line ValueError naming the first problem.
    """
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"strokes are not valid JSON: {err.msg} at position {err.pos}") from None
    if not isinstance(data, list):
        raise ValueError(f"strokes must be a list of {{'points', 'radius'}} objects, got {type(data).__name__}")
    if len(data) > LIMITS.max_strokes:
        raise ValueError(f"too many strokes: {len(data)}, more than {LIMITS.max_strokes}")
    strokes = []
    for i, item in enumerate(data):
        where = f"stroke {i}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object with 'points', got {type(item).__name__}")
        if "points" not in item:
            raise ValueError(f"{where} is missing 'points'")
        points = item["points"]
        if not isinstance(points, (list, tuple)):
            raise ValueError(f"{where} points must be a list of [x, y], got {type(points).__name__}")
        if len(points) == 0:
            raise ValueError(f"{where} has empty points")
        if len(points) > LIMITS.max_stroke_points:
            raise ValueError(f"{where} has too many points: {len(points)}, more than {LIMITS.max_stroke_points}")
        parsed = tuple(_parse_point(p, f"{where} point {j}") for j, p in enumerate(points))
        radius = _number(item.get("radius", DEFAULTS.stroke_radius), f"{where} radius")
        if not MIN_STROKE_RADIUS <= radius <= MAX_STROKE_RADIUS:
            raise ValueError(f"{where} radius must be {MIN_STROKE_RADIUS:g}-{MAX_STROKE_RADIUS:g}, got {radius:g}")
        strokes.append(Stroke(parsed, radius))
    return strokes


def strokes_to_data(strokes: Sequence[Stroke]) -> list[dict]:
    """The JSON structure parse_strokes reads (for gr.State, manifests and the browser)."""
    return [{"points": [list(p) for p in s.points], "radius": s.radius} for s in strokes]


# ------------------------------------------------------------------------------------------------- resampling
def _length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()) if len(points) > 1 else 0.0


def resample_stroke(points: np.ndarray | Sequence, num_frames: int, dtype: type = np.float32) -> np.ndarray:
    """(P, 2) points -> (F, 2) positions equally spaced by arc length, first and last points kept; computed in
    float64 and returned as `dtype` (float32 for strokes; the world's curved paths keep float64).

    A single point or a zero-length stroke is an anchor: all F positions equal the first point.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("a stroke needs at least one point")
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 0])  # drop repeated points: np.interp needs increasing distances
    pts, cum = pts[keep], np.concatenate([[0.0], np.cumsum(seg[seg > 0])])
    if cum[-1] == 0.0:
        return np.repeat(pts[:1], num_frames, axis=0).astype(dtype)
    target = np.linspace(0.0, cum[-1], num_frames)  # (F,)
    out = np.stack([np.interp(target, cum, pts[:, k]) for k in range(2)], axis=1)
    out[0], out[-1] = pts[0], pts[-1]
    return out.astype(dtype)


def stroke_positions(strokes: Sequence[Stroke], num_frames: int) -> np.ndarray:
    """(S, F, 2) float32: every stroke resampled to the frames."""
    if not strokes:
        return np.zeros((0, num_frames, 2), dtype=np.float32)
    return np.stack([resample_stroke(s.points, num_frames) for s in strokes])


def strokes_from_paths(paths: Sequence[np.ndarray], radius: float | Sequence[float]) -> list[Stroke]:
    """Ground-truth strokes from a clip's per-object centre paths (F, 2); a still object becomes an anchor."""
    radii = [float(radius)] * len(paths) if np.ndim(radius) == 0 else [float(r) for r in radius]
    if len(radii) != len(paths):
        raise ValueError(f"got {len(radii)} radii for {len(paths)} paths")
    strokes = []
    for path, r in zip(paths, radii):
        pts = np.clip(np.asarray(path, dtype=np.float64), 0.0, 1.0)
        points = tuple((float(x), float(y)) for x, y in pts)
        strokes.append(Stroke(points, min(max(r, MIN_STROKE_RADIUS), MAX_STROKE_RADIUS)))
    return strokes


# -------------------------------------------------------------------------------------------- derived controls
def _pixel_grid(size: int) -> np.ndarray:
    """Pixel-centre coordinates in pixels: (size,) float32."""
    return np.arange(size, dtype=np.float32) + 0.5


def stroke_heatmaps(strokes: Sequence[Stroke], num_frames: int, size: int, sigma_px: float | None = None) -> np.ndarray:
    """(F, size, size) float32 in [0, 1]: a Gaussian blob per frame at each stroke's point (max over strokes)."""
    sigma = HEATMAP_SIGMA_FRAC * size if sigma_px is None else float(sigma_px)
    heat = np.zeros((num_frames, size, size), dtype=np.float32)
    grid = _pixel_grid(size)
    for pos in stroke_positions(strokes, num_frames) * size:  # (F, 2) px
        gx = np.exp(-((grid[None, :] - pos[:, :1]) ** 2) / (2 * sigma**2))  # (F, S) separable Gaussian
        gy = np.exp(-((grid[None, :] - pos[:, 1:]) ** 2) / (2 * sigma**2))
        np.maximum(heat, gy[:, :, None] * gx[:, None, :], out=heat)
    return heat


def stroke_region_masks(strokes: Sequence[Stroke], num_frames: int, size: int) -> np.ndarray:
    """(S, F, size, size) bool: the disc of each stroke's radius around its point in each frame."""
    masks = np.zeros((len(strokes), num_frames, size, size), dtype=bool)
    grid = _pixel_grid(size)
    for i, (stroke, pos) in enumerate(zip(strokes, stroke_positions(strokes, num_frames) * size)):
        r_px = max(stroke.radius * size, 0.5)  # never smaller than the pixel under the point
        dx2 = (grid[None, :] - pos[:, :1]) ** 2  # (F, S)
        dy2 = (grid[None, :] - pos[:, 1:]) ** 2
        masks[i] = dy2[:, :, None] + dx2[:, None, :] <= r_px**2
    return masks


# ------------------------------------------------------------------------------------------------ cut and drag
DRAG_THRESHOLD = 24  # a pixel further than this (max over RGB, of 255) from the background belongs to an object
DRAG_MAX_AREA = 0.4  # a "component" covering more of the frame than this is not an object (a photo, a busy scene)


def background_colour(image: np.ndarray) -> np.ndarray:
    """(3,) uint8: the most common colour on the image's one-pixel border (the world's plain backgrounds)."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]]).reshape(-1, 3)
    colours, counts = np.unique(border, axis=0, return_counts=True)
    return colours[int(np.argmax(counts))].astype(np.uint8)


def _component_at(labels: np.ndarray, x: float, y: float, reach: float) -> int:
    """The label under (x, y) px, else that of the nearest labelled pixel within `reach` px, else 0."""
    h, w = labels.shape
    row, col = min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)
    if labels[row, col]:
        return int(labels[row, col])
    ys, xs = np.nonzero(labels)
    if len(ys) == 0:
        return 0
    d2 = (xs + 0.5 - x) ** 2 + (ys + 0.5 - y) ** 2
    nearest = int(np.argmin(d2))
    return int(labels[ys[nearest], xs[nearest]]) if d2[nearest] <= reach**2 else 0


def _shifted(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`array` moved by (dy, dx) px on the first two axes; what leaves the frame is dropped, nothing wraps."""
    out = np.zeros_like(array)
    h, w = array.shape[:2]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = array[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def drag_frames(image: np.ndarray, strokes: Sequence[Stroke], num_frames: int, background=None,
                threshold: int = DRAG_THRESHOLD, max_area: float = DRAG_MAX_AREA) -> np.ndarray | None:
    """Cut and drag: (F, H, W, 3) uint8 frames in which the object under each moving stroke's first point (the
    connected region of pixels differing from the background by more than `threshold`, or the nearest one within the
    stroke's radius) is cut out of `image` and moved along the stroke, frame by frame, over the background colour;
    everything else stays as in `image`. `background`: RGB, else `background_colour(image)`. None when no moving
    stroke finds an object (anchors, strokes on empty background, or a region over `max_area` of the frame): there is
    nothing to drag. Overlapping objects move as one region."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    bg = background_colour(image) if background is None else np.asarray(background, np.uint8)
    labels, _ = ndimage.label(np.abs(image.astype(np.int16) - bg.astype(np.int16)).max(-1) > threshold)
    scale = np.array([w, h], dtype=np.float64)
    pieces, taken = [], set()
    for stroke, pos in zip(strokes, stroke_positions(strokes, num_frames).astype(np.float64) * scale):
        if stroke.is_anchor:
            continue
        label = _component_at(labels, *pos[0], reach=max(stroke.radius * min(h, w), 3.0))
        if not label or label in taken:
            continue
        mask = labels == label
        if mask.mean() > max_area:
            continue
        mask = ndimage.binary_dilation(mask, np.ones((3, 3), bool)) & ((labels == 0) | (labels == label))  # + its
        # anti-aliased rim (under the threshold), so no faint outline stays behind; never a neighbour's pixels
        taken.add(label)
        pieces.append((mask, np.round(pos - pos[0]).astype(int)))  # (F, 2) px offsets (x, y)
    if not pieces:
        return None
    base = image.copy()
    for mask, _ in pieces:
        base[mask] = bg
    frames = np.repeat(base[None], num_frames, axis=0)
    for mask, offsets in pieces:
        for k, (dx, dy) in enumerate(offsets):
            moved = _shifted(mask, dy, dx)
            frames[k][moved] = _shifted(image, dy, dx)[moved]
    return frames


# ----------------------------------------------------------------------------------------------------- overlay
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel positions for smooth antialiased lines


def _fixed(p: np.ndarray) -> tuple[int, int]:
    return (int(round(p[0] * (1 << _SHIFT))), int(round(p[1] * (1 << _SHIFT))))


def _point_back_along(points_px: np.ndarray, distance: float) -> np.ndarray:
    """The point `distance` px before the end of a polyline, measured along it (or its start if shorter)."""
    seg = np.linalg.norm(np.diff(points_px, axis=0), axis=1)
    back = np.concatenate([[0.0], np.cumsum(seg[::-1])])  # distance from the end at each reversed vertex
    reversed_pts = points_px[::-1]
    if back[-1] <= distance:
        return points_px[0]
    return np.array([np.interp(distance, back, reversed_pts[:, k]) for k in range(2)])


def draw_strokes_overlay(image_u8: np.ndarray, strokes: Sequence[Stroke], num_frames: int) -> np.ndarray:
    """A copy of the image with each stroke in its own colour: polyline + arrow head at the end, a dot per frame
    at the resampled positions; anchors as a ring of the stroke radius. cv2 antialiased lines."""
    image = np.ascontiguousarray(image_u8 if image_u8.ndim == 3 else np.repeat(image_u8[..., None], 3, axis=2)).copy()
    height, width = image.shape[:2]
    scale = np.array([width, height], dtype=np.float64)
    side = min(height, width)
    thickness = max(1, round(side / 160))
    dot = max(1.0, side / 120)
    for i, (stroke, pos) in enumerate(zip(strokes, stroke_positions(strokes, num_frames))):
        colour = OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)]
        pts = np.asarray(stroke.points, dtype=np.float64) * scale
        if stroke.is_anchor:
            ring = max(stroke.radius * side, 3.0)
            cv2.circle(image, _fixed(pts[0]), int(round(ring * (1 << _SHIFT))), colour, thickness, cv2.LINE_AA, _SHIFT)
            cv2.circle(image, _fixed(pts[0]), int(round(dot * (1 << _SHIFT))), colour, -1, cv2.LINE_AA, _SHIFT)
            continue
        fixed = np.array([_fixed(p) for p in pts], dtype=np.int32)
        cv2.polylines(image, [fixed], False, colour, thickness, cv2.LINE_AA, _SHIFT)
        head = max(6.0, side / 20)
        tail = _point_back_along(pts, head)
        cv2.arrowedLine(image, _fixed(tail), _fixed(pts[-1]), colour, thickness, cv2.LINE_AA, _SHIFT, tipLength=1.0)
        for p in pos * scale:
            cv2.circle(image, _fixed(p), int(round(dot * (1 << _SHIFT))), colour, -1, cv2.LINE_AA, _SHIFT)
    return image
