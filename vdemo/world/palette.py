"""The synthetic world's fixed vocabulary of things: colours, backgrounds, shapes, motions, actions, clip kinds.

Everything here is a plain constant so that the caption grammar, the renderer, the detector and the eval agree.
"""

from __future__ import annotations

import math

import numpy as np

# Saturated, mutually distinct object colours (RGB). Pairwise distance >= 100 so that a detector can tell them
# apart by nearest palette colour even on noisy model output.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "green": (30, 190, 50),
    "blue": (40, 80, 235),
    "yellow": (240, 230, 30),
    "purple": (150, 40, 210),
    "orange": (250, 125, 0),
    "white": (245, 245, 245),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}

# An object colour must be at least this far (RGB Euclidean) from its background: no white on white, etc.
MIN_OBJECT_BACKGROUND_DIST = 100.0

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

_D = 1.0 / math.sqrt(2.0)
# Unit direction (dx, dy) in image coordinates (x right, y down). "still" is the zero vector.
MOTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-_D, -_D),
    "up-right": (_D, -_D),
    "down-left": (-_D, _D),
    "down-right": (_D, _D),
    "still": (0.0, 0.0),
}
DIRECTIONS: tuple[str, ...] = tuple(m for m in MOTIONS if m != "still")
# Depth scenes add motion along the viewing axis.
DEPTH_MOTIONS: tuple[str, ...] = ("closer", "away")

ACTIONS: tuple[str, ...] = ("walk", "wave", "jump", "squat")
KINDS: tuple[str, ...] = ("objects", "path", "person", "depth")
# sample_clip's default mix of kinds (same order as KINDS).
KIND_WEIGHTS: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)


def colours_for_background(background: str) -> list[str]:
    """Object colours that stand out on `background` (distance >= MIN_OBJECT_BACKGROUND_DIST)."""
    bg = np.array(BACKGROUNDS[background], dtype=np.float32)
    return [
        name
        for name, rgb in COLOURS.items()
        if float(np.linalg.norm(np.array(rgb, dtype=np.float32) - bg)) >= MIN_OBJECT_BACKGROUND_DIST
    ]


def nearest_direction(dx: float, dy: float) -> str:
    """The compass word of MOTIONS closest in angle to the displacement (dx, dy) (image coords, y down)."""
    best, best_dot = "right", -2.0
    norm = math.hypot(dx, dy)
    if norm == 0.0:
        return "still"
    for name in DIRECTIONS:
        ux, uy = MOTIONS[name]
        dot = (dx * ux + dy * uy) / norm
        if dot > best_dot:
            best, best_dot = name, dot
    return best
