"""Vectorised rendering of flat shapes: anti-aliased coverage from signed distances, composited far to near.

Coordinates are normalised to [0, 1] with the origin at the top-left corner; pixel i covers [i, i+1) / size and is
sampled at its centre. Coverage is `clip(0.5 - signed_distance_px, 0, 1)`: a soft edge one pixel wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from .palette import BACKGROUNDS, COLOURS

# A shape's "radius" r is its size parameter. The square's half-side and the triangle's circumradius are scaled so
# that the three shapes look about equally big (equal-area would be 0.886 and 1.555; these compromise on extent).
SQUARE_HALF_SIDE = 0.9
TRIANGLE_CIRCUMRADIUS = 1.3
_SIN60 = math.sqrt(3.0) / 2.0

# Depth (for all object kinds): radius = FOCAL_RADIUS / z, and the depth map shows 255 * Z_NEAR / z.
FOCAL_RADIUS = 0.22
Z_NEAR = 1.0


def shape_extent(shape: str, radius: float) -> tuple[float, float, float, float]:
    """(left, right, up, down) reach of a shape from its centre, in the same units as `radius`."""
    if shape == "circle":
        return (radius, radius, radius, radius)
    if shape == "square":
        h = SQUARE_HALF_SIDE * radius
        return (h, h, h, h)
    if shape == "triangle":  # equilateral, apex up, centred on its centroid
        big = TRIANGLE_CIRCUMRADIUS * radius
        return (_SIN60 * big, _SIN60 * big, big, big / 2.0)
    raise ValueError(f"unknown shape {shape!r}")


def shape_coverage(shape: str, centres: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage (F, size, size) float32 in [0, 1] of a shape at per-frame centres (F, 2), radii (F,)."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    cx = centres[:, 0].astype(np.float32)[:, None, None]
    cy = centres[:, 1].astype(np.float32)[:, None, None]
    r = np.asarray(radii, dtype=np.float32)[:, None, None]
    dx = grid[None, None, :] - cx  # (F, 1, S)
    dy = grid[None, :, None] - cy  # (F, S, 1)
    if shape == "circle":
        dist = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        dist = np.maximum(np.abs(dx), np.abs(dy)) - SQUARE_HALF_SIDE * r
    elif shape == "triangle":
        # Max of the three edge half-planes (outward normals: down, up-left, up-right); inradius = R / 2.
        slant = -0.5 * dy
        dist = np.maximum(dy, np.maximum(slant - _SIN60 * dx, slant + _SIN60 * dx)) - 0.5 * TRIANGLE_CIRCUMRADIUS * r
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - dist * size, 0.0, 1.0)  # (F, S, S)


def depth_value(z: np.ndarray) -> np.ndarray:
    """MiDaS-style relative inverse depth in [0, 255] for distance z (>= Z_NEAR): near = bright, infinity = 0."""
    return 255.0 * Z_NEAR / np.maximum(np.asarray(z, dtype=np.float32), Z_NEAR)


def render_objects(
    objects: Sequence[dict],
    background: str,
    size: int,
    with_depth: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Composite shapes over a plain background, first object drawn first (so list them far to near).

    Each object dict needs "colour", "shape", "centres" (F, 2) and "radii" (F,); "z" (F,) for the depth map
    (default: the z that the radius implies, FOCAL_RADIUS / radius). Returns frames (F, S, S, 3) uint8 and
    depth (F, S, S) uint8 (or None), both with the same soft edges.
    """
    num_frames = len(objects[0]["centres"])
    bg = BACKGROUNDS[background]
    planes = np.empty((3, num_frames, size, size), dtype=np.float32)  # channel-first: 15x faster to blend
    for ch in range(3):
        planes[ch] = bg[ch]
    depth = np.zeros((num_frames, size, size), dtype=np.float32) if with_depth else None
    scratch = np.empty((num_frames, size, size), dtype=np.float32)
    for obj in objects:
        alpha = shape_coverage(obj["shape"], np.asarray(obj["centres"]), np.asarray(obj["radii"]), size)
        colour = COLOURS[obj["colour"]]
        for ch in range(3):  # planes[ch] += alpha * (colour - planes[ch])
            np.subtract(colour[ch], planes[ch], out=scratch)
            scratch *= alpha
            planes[ch] += scratch
        if depth is not None:
            z = obj.get("z")
            z = FOCAL_RADIUS / np.asarray(obj["radii"], dtype=np.float32) if z is None else np.asarray(z)
            depth += alpha * (depth_value(z)[:, None, None] - depth)
    return planes_to_frames(planes), None if depth is None else (depth + 0.5).astype(np.uint8)


def planes_to_frames(planes: np.ndarray) -> np.ndarray:
    """(3, F, H, W) float in [0, 255] -> (F, H, W, 3) uint8, rounded."""
    _, num_frames, height, width = planes.shape
    u8 = (planes + 0.5).astype(np.uint8).reshape(3, num_frames * height, width)
    return cv2.merge([u8[0], u8[1], u8[2]]).reshape(num_frames, height, width, 3)
