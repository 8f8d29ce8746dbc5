"""User media and the one home of image / clip helpers.

- Reading (images, frame folders, videos) with size limits and one-line errors, shared by the CLI and the app, so a
  corrupt upload fails the same clear way everywhere. Videos are decoded with imageio-ffmpeg's bundled ffmpeg.
- Fitting: `fit_image` (centre crop + Lanczos resize) and `fit_clip` (resample in time, fit each frame), exactly what
  the built-in model sees; the UI and the hub backends use the same functions.
- Converting to uint8 frames: `to_uint8` (float in a value range, torch or numpy, channels first or last; round half
  to even) and `frames_to_uint8` (the validated door in for exports). Every uint8 conversion in the project goes
  through `to_uint8`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
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


# ------------------------------------------------------------------------------------------------ fitting
def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the target aspect ratio, then resize (Lanczos): (H, W, C) uint8 -> (height, width, C)."""
    h, w = image.shape[:2]
    scale = min(h / height, w / width)
    ch, cw = int(round(height * scale)), int(round(width * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top: top + ch, left: left + cw]
    pil = Image.fromarray(crop.squeeze(-1) if crop.ndim == 3 and crop.shape[2] == 1 else crop)
    return np.asarray(pil.resize((width, height), Image.Resampling.LANCZOS))


def fit_clip(clip: np.ndarray, num_frames: int, height: int, width: int) -> np.ndarray:
    """Resample a control clip to num_frames (nearest frame in time) and fit each frame to height × width."""
    index = np.round(np.linspace(0, len(clip) - 1, num_frames)).astype(int)
    return np.stack([fit_image(clip[i], height, width) for i in index])


# ------------------------------------------------------------------------------------------------ uint8 frames
def to_uint8(frames: np.ndarray | torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0),
             channels_first: bool = False) -> np.ndarray:
    """Float frames in value_range -> uint8 numpy: clamped, scaled to 0–255, rounded half to even.

    value_range: (-1, 1) (model outputs) or (0, 1) (diffusers' np outputs). channels_first: the input is (..., C, H, W)
    and comes out (..., H, W, C). A torch tensor is converted in float32 on its own device, then copied to the CPU;
    a numpy array in its own float dtype. No checks: see `frames_to_uint8` for validated input.
    """
    lo, hi = (float(v) for v in value_range)
    scale = 255.0 / (hi - lo)  # 127.5 for [-1, 1], 255 for [0, 1]
    if isinstance(frames, torch.Tensor):
        out = ((frames.detach().float().clamp(lo, hi) - lo) * scale).round().to(torch.uint8)
        if channels_first:
            out = out.movedim(-3, -1)
        return out.cpu().numpy()
    out = ((np.asarray(frames).clip(lo, hi) - lo) * scale).round().astype(np.uint8)
    return np.moveaxis(out, -3, -1) if channels_first else out


def frames_to_uint8(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (F, H, W, 3) from uint8 (F, H, W, 3), or float in [-1, 1] as (F, C, H, W) or (F, H, W, C), C = 3.

    A float array whose last axis is 3 is read as channels last, else one whose second axis is 3 as channels first.
    Raises a one-line ValueError for anything else (wrong shape, dtype, or values outside [-1, 1]).
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = (frames.float() if frames.is_floating_point() else frames).numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be 4-D (F, H, W, 3) or (F, 3, H, W), got shape {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames: need at least 1 frame, got 0")
    if frames.dtype == np.uint8:
        if frames.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be (F, H, W, 3), got shape {frames.shape}")
        return np.ascontiguousarray(frames)
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 (0–255) or floating point ([-1, 1]), got {frames.dtype}")
    if frames.shape[-1] != 3:
        if frames.shape[1] != 3:
            raise ValueError(f"frames need 3 colour channels, first or last, got shape {frames.shape}")
        frames = frames.transpose(0, 2, 3, 1)  # (F, C, H, W) -> (F, H, W, C)
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames must have a non-empty height and width, got shape {frames.shape}")
    lo, hi = float(frames.min()), float(frames.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"float frames must be finite and in [-1, 1], got min {lo:g}, max {hi:g} (clamp them first)")
    return np.ascontiguousarray(to_uint8(frames))
