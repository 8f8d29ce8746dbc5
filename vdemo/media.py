"""Reading user media (images, frame folders, videos) with size limits and one-line errors.

Shared by the CLI and the app, so a corrupt upload fails the same clear way everywhere. Videos are decoded with
imageio-ffmpeg's bundled ffmpeg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vdemo.config import LIMITS
from vdemo.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".avi", ".mkv", ".gif"}
MAX_PIXELS = 4096 * 4096


class MediaError(UserError):
    """An input file is missing, too large, corrupt or of the wrong kind; one line, fit to show a user."""


def check_size(path: Path, max_mb: float = LIMITS.max_upload_mb) -> None:
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_mb:
        raise MediaError(f"{path.name} is {size_mb:.1f} MB; the limit is {max_mb:g} MB")
    if size_mb == 0:
        raise MediaError(f"{path.name} is empty")


def load_image(path: str | Path, max_mb: float = LIMITS.max_upload_mb) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); transparency is composited on black."""
    path = Path(path)
    check_size(path, max_mb)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise MediaError(f"{path.name} is {im.width}×{im.height} pixels; the limit is 4096×4096")
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MediaError(f"{path.name} is not a readable image ({type(err).__name__})") from None


def load_video(path: str | Path, max_frames: int = 4 * LIMITS.max_frames, max_s: float = LIMITS.max_video_s,
               max_mb: float = LIMITS.max_upload_mb) -> tuple[np.ndarray, float]:
    """A video file as RGB uint8 (F, H, W, 3) and its fps; refuses videos longer than max_s seconds."""
    import imageio_ffmpeg

    path = Path(path)
    check_size(path, max_mb)
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as err:
        raise MediaError(f"{path.name} is not a readable video ({type(err).__name__})") from None
    fps = float(meta.get("fps") or 0) or 8.0
    duration = float(meta.get("duration") or 0)
    if duration > max_s:
        reader.close()
        raise MediaError(f"{path.name} is {duration:.1f} s long; the limit is {max_s:g} s")
    w, h = meta["size"]
    frames = []
    try:
        for buf in reader:
            frames.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
            if len(frames) > max_s * fps + 1:
                raise MediaError(f"{path.name} is longer than {max_s:g} s")
    except RuntimeError:
        raise MediaError(f"{path.name} is a corrupt video") from None
    finally:
        reader.close()
    if not frames:
        raise MediaError(f"{path.name} has no video frames")
    clip = np.stack(frames)
    if len(clip) > max_frames:  # keep the whole motion: subsample evenly
        clip = clip[np.round(np.linspace(0, len(clip) - 1, max_frames)).astype(int)]
    return clip, fps


def load_frames(path: str | Path) -> np.ndarray:
    """A folder of images (sorted by name) or a video file or a single image, as RGB uint8 (F, H, W, 3)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MediaError(f"{path} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if len(files) > 4 * LIMITS.max_frames:
            raise MediaError(f"{path} has {len(files)} images; the limit is {4 * LIMITS.max_frames}")
        frames = [load_image(p) for p in files]
        if len({f.shape for f in frames}) > 1:
            raise MediaError(f"the images in {path} have different sizes")
        return np.stack(frames)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return load_video(path)[0]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(path)[None]
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    raise MediaError(f"{path.name}: expected a folder of images, an image or a video "
                     f"({', '.join(sorted(VIDEO_SUFFIXES))})")


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) uint8 luminance (for depth maps given as RGB images)."""
    return (frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
