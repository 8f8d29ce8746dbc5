"""What each tab turns its inputs into: the image, pose clip, depth clip or strokes a GenerationRequest carries.

Pure functions of plain values (file paths, preset names, JSON), no Gradio: every bad input raises `InputError`, a
one-line message the handlers show as a `gr.Error`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vdemo import world
from vdemo.config import LIMITS
from vdemo.errors import UserError
from vdemo.media import MAX_PIXELS, MediaError, fit_image, load_frames, load_image, to_gray
from vdemo.strokes import Stroke, parse_strokes, strokes_to_data

POSE_SOURCES = ("Preset", "Extract from image/video", "Skeleton images")
DEPTH_SOURCES = ("Preset", "Extract from image/video", "Depth maps")
ANCHOR_MAX_LENGTH = 0.01  # a drag shorter than this (normalised) is a click: an anchor
GRID_COLUMNS = 8
GRID_CELL_PX = 96


class InputError(UserError):
    """A tab's input is missing or unusable; one line, fit to show a user."""


def _path(file) -> Path | None:
    """A gr.File value (str path, NamedString, or a dict from the API) as a Path; None when nothing was uploaded."""
    if file is None or file == "":
        return None
    if isinstance(file, dict):
        file = file.get("path")
    return Path(str(file))


def _paths(files) -> list[Path]:
    if files is None:
        return []
    if isinstance(files, (str, dict, Path)):
        files = [files]
    return [p for p in (_path(f) for f in files) if p is not None]


def fit_square(image: np.ndarray, side: int) -> np.ndarray:
    """Centre-crop and resize to side × side, exactly as the built-in model's input (vdemo.media.fit_image)."""
    return fit(image, side, side)


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the aspect of height × width, then resize (vdemo.media.fit_image)."""
    return fit_image(image, height, width)


def upscale_nearest(image: np.ndarray, long_side: int) -> np.ndarray:
    """Blow a small frame up (nearest neighbour) so the user sees exactly the model's pixels."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.NEAREST))


# ------------------------------------------------------------------------------------------------------- image
def _read(loader, path: Path) -> np.ndarray:
    """loader(path) with every unreadable or oversized file as one InputError line: MediaError, and PIL's
    decompression-bomb check (an image header claiming over ~179 M pixels fails in Image.open, before media's own
    4096×4096 limit is reached)."""
    try:
        return loader(path)
    except MediaError as err:
        raise InputError(str(err)) from None
    except Image.DecompressionBombError:
        side = int(MAX_PIXELS**0.5)
        raise InputError(f"{path.name} claims far too many pixels (a decompression bomb?); the limit is "
                         f"{side}×{side}") from None


def load_user_image(file, what: str = "an image") -> np.ndarray:
    """An uploaded image file as RGB uint8 (H, W, 3)."""
    path = _path(file)
    if path is None:
        raise InputError(f"upload {what} first")
    return _read(load_image, path)


# -------------------------------------------------------------------------------------------------------- grid
def frame_grid(frames: np.ndarray, columns: int = GRID_COLUMNS, cell_px: int = GRID_CELL_PX) -> np.ndarray:
    """(F, h, w[, 3]) uint8 -> one image: frames in reading order, `columns` per row, each scaled to cell_px."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    count = len(frames)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    gap = 2
    cells = [np.asarray(Image.fromarray(f).resize((cell_px, cell_px), Image.Resampling.NEAREST)) for f in frames]
    grid = np.full((rows * cell_px + (rows - 1) * gap, columns * cell_px + (columns - 1) * gap, 3), 24, np.uint8)
    step = cell_px + gap
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        grid[r * step: r * step + cell_px, c * step: c * step + cell_px] = cell
    return grid


# -------------------------------------------------------------------------------------------------- pose/depth
def _upload_frames(file, what: str) -> np.ndarray:
    path = _path(file)
    if path is None:
        raise InputError(f"upload {what} to extract from first")
    return _read(load_frames, path)


def _control_images(files, what: str, size: int) -> np.ndarray:
    paths = sorted(_paths(files), key=lambda p: p.name)
    if not paths:
        raise InputError(f"upload {what} first (one image per frame, in name order)")
    if len(paths) > 4 * LIMITS.max_frames:
        raise InputError(f"upload at most {4 * LIMITS.max_frames} {what}, got {len(paths)}")
    return np.stack([fit_square(_read(load_image, path), size) for path in paths])


def pose_frames(source: str, preset: str, upload, skeleton_files, num_frames: int, size: int) -> np.ndarray:
    """OpenPose skeleton frames (F, size, size, 3) uint8 from a preset, an extraction, or uploaded skeletons."""
    if source == "Preset":
        if preset not in world.POSE_PRESETS:
            raise InputError(f"pose preset must be one of {', '.join(world.POSE_PRESETS)}, got {preset!r}")
        return world.pose_clip(preset, num_frames, size)
    if source == "Extract from image/video":
        from vdemo.ui.detectors import DetectorUnavailable, extract_pose

        frames = _upload_frames(upload, "an image or a short video")
        try:
            return extract_pose(frames, num_frames, size)
        except DetectorUnavailable as err:
            raise InputError(str(err)) from None
    if source == "Skeleton images":
        return _control_images(skeleton_files, "skeleton images", size)
    raise InputError(f"pose source must be one of {', '.join(POSE_SOURCES)}, got {source!r}")


def depth_frames(source: str, preset: str, model: str, upload, depth_files, num_frames: int, size: int) -> np.ndarray:
    """Inverse-depth frames (F, size, size) uint8 (near = bright) from a preset, an extraction, or uploaded maps."""
    if source == "Preset":
        if preset not in world.DEPTH_PRESETS:
            raise InputError(f"depth preset must be one of {', '.join(world.DEPTH_PRESETS)}, got {preset!r}")
        return world.depth_clip(preset, num_frames, size)
    if source == "Extract from image/video":
        from vdemo.ui.detectors import DEPTH_MODELS, DetectorUnavailable, extract_depth

        if model not in DEPTH_MODELS:
            raise InputError(f"depth model must be one of {', '.join(DEPTH_MODELS)}, got {model!r}")
        frames = _upload_frames(upload, "an image or a short video")
        try:
            return extract_depth(frames, num_frames, size, model)
        except DetectorUnavailable as err:
            raise InputError(str(err)) from None
    if source == "Depth maps":
        return to_gray(_control_images(depth_files, "depth maps", size))
    raise InputError(f"depth source must be one of {', '.join(DEPTH_SOURCES)}, got {source!r}")


# ----------------------------------------------------------------------------------------------------- strokes
def scene_frame(scene: int, size: int) -> tuple[np.ndarray, dict]:
    """A generated first frame for the strokes tab: one still object, left of centre, on a plain background.

    Returns the frame (size, size, 3) uint8 and its object (colour, shape, centre (x, y), background).
    """
    rng = np.random.default_rng(int(scene))
    spec = world.sample_spec(rng, "objects")
    obj = dict(spec["objects"][0])
    centre = [float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.35, 0.65))]
    obj.update(motion="still", start=centre, end=centre)
    spec = {**spec, "objects": [obj], "shared_motion": False}
    clip = world.make_clip(spec, 2, size)
    info = {"colour": obj["colour"], "shape": obj["shape"], "centre": tuple(centre), "background": spec["background"]}
    return clip.frames[0], info


def strokes_image(image_file, scene: int, height: int, width: int) -> np.ndarray:
    """The strokes tab's first frame at height × width: the uploaded image if any, else the generated scene; either
    centre-cropped to the video's aspect, so stroke coordinates on the pad and in the video agree."""
    if _path(image_file) is not None:
        return fit(load_user_image(image_file), height, width)
    if scene is None or isinstance(scene, bool) or not float(scene).is_integer() or not 0 <= scene <= LIMITS.max_seed:
        raise InputError(f"scene must be a whole number 0–{LIMITS.max_seed}, got {scene!r}")
    return fit(scene_frame(int(scene), max(height, width))[0], height, width)


def parse_strokes_text(text: str | Sequence | None) -> list[Stroke]:
    """Strokes from the tab's JSON text (or an already parsed list); empty text means no strokes."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    try:
        return parse_strokes(text)
    except ValueError as err:
        raise InputError(str(err)) from None
    except RecursionError:  # json.loads on e.g. 5000 nested brackets
        raise InputError("strokes JSON is nested too deeply: expected [{\"points\": [[x, y], ...], "
                         "\"radius\": r}, ...]") from None


def strokes_text(strokes: Sequence[Stroke]) -> str:
    """The JSON text shown in the tab (one stroke per line; coordinates rounded to 4 decimals)."""
    rows = [json.dumps({"points": [[round(x, 4), round(y, 4)] for x, y in s["points"]],
                        "radius": round(s["radius"], 4)}) for s in strokes_to_data(strokes)]
    return "[\n" + ",\n".join(rows) + "\n]" if rows else "[]"


def new_stroke(points, radius: float) -> Stroke:
    """A stroke drawn on the pad: points in drawing order; a drag shorter than ANCHOR_MAX_LENGTH is an anchor."""
    if not isinstance(points, (list, tuple)) or not points:
        raise InputError("the stroke has no points")
    try:
        (stroke,) = parse_strokes([{"points": [list(p) for p in points][: LIMITS.max_stroke_points], "radius": radius}])
    except ValueError as err:
        raise InputError(str(err)) from None
    pts = np.asarray(stroke.points)
    if len(pts) > 1 and np.linalg.norm(np.diff(pts, axis=0), axis=1).sum() < ANCHOR_MAX_LENGTH:
        return Stroke(stroke.points[:1], stroke.radius)
    return stroke
