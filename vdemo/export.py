"""Export: the finished video as mp4 and gif (moviepy over imageio-ffmpeg's bundled ffmpeg), PNG frames, and a JSON
manifest of every setting, so that each result can be reproduced; plus a contact-sheet strip for streaming previews.

Frames are uint8 (F, H, W, 3) everywhere; `vdemo.media.frames_to_uint8` is the one door in for model outputs (float
in [-1, 1], channels first or last, torch or numpy). Browsers play H.264 only as yuv420p with even sizes, and show a
64×64 video as a thumbnail, so mp4 and gif are upscaled by a whole factor with nearest neighbour (crisp pixels) to at
least `min_side_px` on the short side; the PNG frames stay at native size.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from moviepy import ImageSequenceClip
from PIL import Image

from vdemo.media import frames_to_uint8

DEFAULT_MIN_SIDE_PX = 256


@dataclass(frozen=True)
class ExportPaths:
    """Where `export_result` wrote each artefact."""

    mp4: Path
    gif: Path
    frames_dir: Path
    manifest: Path
    frames: tuple[Path, ...] = ()  # the PNGs in frames_dir, in order
    manifest_data: dict = field(default_factory=dict)  # the manifest as written (plain JSON values)


def upscale_for_players(frames_u8: np.ndarray, min_side_px: int = DEFAULT_MIN_SIDE_PX) -> np.ndarray:
    """Nearest-neighbour upscale by a whole factor to >= min_side_px on the short side, then pad to even sizes."""
    frames = frames_to_uint8(frames_u8)
    _, h, w, _ = frames.shape
    scale = max(1, math.ceil(min_side_px / min(h, w))) if min_side_px > 0 else 1
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)  # (F, H·s, W·s, 3)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # yuv420p halves chroma: sizes must be even
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def _clip(frames_u8: np.ndarray, fps: float) -> ImageSequenceClip:
    """A moviepy clip that yields exactly len(frames) frames.

    moviepy 2.2 sums 1/fps per frame for the duration and writes int(duration·fps) frames, which floating point puts
    one short for many (F, fps) pairs (6 frames at 6 fps give 5); half a frame more is enough to round right.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not 0 < fps <= 240:
        raise ValueError(f"fps must be a number in (0, 240], got {fps!r}")
    return ImageSequenceClip(list(frames_u8), fps=float(fps)).with_duration((len(frames_u8) + 0.5) / float(fps))


def write_mp4(frames_u8: np.ndarray, path: str | Path, fps: float,
              min_side_px: int = DEFAULT_MIN_SIDE_PX) -> Path:
    """H.264 mp4, yuv420p, faststart: plays in every browser."""
    frames = upscale_for_players(frames_u8, min_side_px)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # moviepy appends "-pix_fmt yuva420p" for libx264 at even sizes; libx264 has no alpha, so ffmpeg falls back to
    # yuv420p (tests read the pixel format back).
    _clip(frames, fps).write_videofile(str(path), fps=float(fps), codec="libx264", audio=False, logger=None,
                                       ffmpeg_params=["-pix_fmt", "yuv420p", "-movflags", "+faststart"])
    return path


def write_gif(frames_u8: np.ndarray, path: str | Path, fps: float,
              min_side_px: int = DEFAULT_MIN_SIDE_PX) -> Path:
    """Looping gif via moviepy (imageio's Pillow writer).

    Pillow merges identical consecutive frames into one longer frame (same playback, fewer frames), and GIF stores
    delays in 1/100 s, so 6 fps plays at 1/0.16 s.
    """
    frames = upscale_for_players(frames_u8, min_side_px)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clip(frames, fps).write_gif(str(path), fps=float(fps), loop=0, logger=None)
    return path


_FRAME_NAME = re.compile(r"^(\d+)\.png$")


def write_frames(frames_u8: np.ndarray, folder: str | Path) -> list[Path]:
    """Lossless PNGs 0000.png, 0001.png, ...; numbered PNGs left over from a longer earlier export are removed."""
    frames = frames_to_uint8(frames_u8)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(frames) - 1)))
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"{i:0{digits}d}.png"
        Image.fromarray(frame).save(path)
        paths.append(path)
    keep = set(paths)
    for stale in folder.iterdir():
        if _FRAME_NAME.match(stale.name) and stale not in keep:
            stale.unlink()
    return paths


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy/torch scalars and arrays, Paths, sets, enums, dataclasses; NaN/inf become null."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (set, frozenset)):
        return [_jsonable(v) for v in sorted(obj, key=str)]
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, (np.ndarray, np.generic)):
        return _jsonable(obj.tolist())
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"manifest value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def write_manifest(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """manifest as JSON (indent 2, sorted keys); numpy/torch values become plain numbers and lists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(manifest), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def export_result(frames_u8: np.ndarray | torch.Tensor, out_dir: str | Path, fps: float, manifest: Mapping[str, Any],
                  stem: str = "video", min_side_px: int = DEFAULT_MIN_SIDE_PX) -> ExportPaths:
    """{stem}.mp4, {stem}.gif, {stem}_frames/0000.png ... and, written last, {stem}_manifest.json.

    The manifest is the caller's plus an "export" entry (frame count and size, fps, file names).
    """
    if "export" in manifest:
        raise ValueError("manifest key 'export' is reserved for export_result")
    if not re.fullmatch(r"[\w.-]+", stem):
        raise ValueError(f"stem must be a plain file name (letters, digits, _ . -), got {stem!r}")
    frames = frames_to_uint8(frames_u8)
    out_dir = Path(out_dir)
    frames_dir = out_dir / f"{stem}_frames"
    frame_paths = write_frames(frames, frames_dir)
    gif = write_gif(frames, out_dir / f"{stem}.gif", fps, min_side_px)
    mp4 = write_mp4(frames, out_dir / f"{stem}.mp4", fps, min_side_px)
    num_frames, height, width, _ = frames.shape
    export = {"num_frames": num_frames, "height": height, "width": width, "fps": fps,
              "files": {"mp4": mp4.name, "gif": gif.name, "frames_dir": frames_dir.name}}
    data = _jsonable({**manifest, "export": export})
    manifest_path = write_manifest(data, out_dir / f"{stem}_manifest.json")
    return ExportPaths(mp4=mp4, gif=gif, frames_dir=frames_dir, manifest=manifest_path, frames=tuple(frame_paths),
                       manifest_data=data)


def preview_strip(frames_u8: np.ndarray, max_width_px: int = 1024) -> np.ndarray:
    """All frames side by side, wrapping into rows of at most max_width_px (at least one frame per row); black fill."""
    frames = frames_to_uint8(frames_u8)
    num_frames, h, w, _ = frames.shape
    cols = min(num_frames, max(1, max_width_px // w))
    rows = math.ceil(num_frames / cols)
    pad = rows * cols - num_frames
    if pad:
        frames = np.concatenate([frames, np.zeros((pad, h, w, 3), np.uint8)])
    grid = frames.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4)  # (rows, H, cols, W, 3)
    return np.ascontiguousarray(grid.reshape(rows * h, cols * w, 3))
