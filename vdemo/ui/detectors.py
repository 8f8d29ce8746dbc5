"""Pose and depth extraction from user images/videos with controlnet_aux's OpenPose and MiDaS detectors.

Weights come from a local folder named by an environment variable, or else from the pinned hub repo
(`lllyasviel/Annotators`, the repo controlnet_aux's own docs use). With neither available the loaders raise
`DetectorUnavailable`, a one-line message saying how to provide them; the tabs keep working with presets and
uploaded control images.

- OpenPose (`OpenposeDetector`): needs body_pose_model.pth, hand_pose_model.pth and facenet.pth.
- MiDaS DPT-hybrid (`MidasDetector`, the default): needs dpt_hybrid-midas-501f0c75.pt.
- MiDaS small (`model_type="midas_v21_small"`): needs midas_v21_small_256.pt; its EfficientNet-Lite3 backbone is
  built from `geffnet` instead of controlnet_aux's torch.hub fetch, so it also loads offline.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vdemo.errors import UserError
from vdemo.media import fit_image

ANNOTATORS_REPO = "lllyasviel/Annotators"  # pinned hub id (an allow-list entry; never user-typed)
OPENPOSE_ENV = "VDEMO_OPENPOSE_DIR"
MIDAS_ENV = "VDEMO_MIDAS_DIR"
OPENPOSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
MIDAS_FILES = {"dpt_hybrid": "dpt_hybrid-midas-501f0c75.pt", "midas_v21_small": "midas_v21_small_256.pt"}
DEPTH_MODELS = {"DPT-hybrid": "dpt_hybrid", "MiDaS small": "midas_v21_small"}
DETECT_RESOLUTION_PX = 256  # detectors run at this short side: enough for a 64-128 px video, quick on a CPU

_LOCK = threading.Lock()  # detectors are not thread-safe, and the torch.hub patch below is process-wide


class DetectorUnavailable(UserError):
    """The detector's weights cannot be found; the message (one line) says how to provide them."""


def _local_folder(env: str, files: tuple[str, ...], what: str) -> Path | None:
    folder = os.environ.get(env)
    if not folder:
        return None
    missing = [name for name in files if not (Path(folder) / name).is_file()]
    if missing:
        raise DetectorUnavailable(f"{what}: {env}={folder} lacks {', '.join(missing)}; put the files from the "
                                  f"hub repo {ANNOTATORS_REPO} there")
    return Path(folder)


def _how_to(env: str, files: tuple[str, ...], what: str, err: Exception) -> DetectorUnavailable:
    reason = type(err).__name__
    return DetectorUnavailable(f"{what} weights not found ({reason}): set {env} to a folder with {', '.join(files)} "
                               f"(from the hub repo {ANNOTATORS_REPO}), or allow the hub download; presets and "
                               f"uploaded control images work without them")


@lru_cache(maxsize=1)
def openpose_detector():
    """controlnet_aux's OpenposeDetector from $VDEMO_OPENPOSE_DIR or the pinned hub repo (cached per process)."""
    from controlnet_aux import OpenposeDetector

    what = "OpenPose"
    folder = _local_folder(OPENPOSE_ENV, OPENPOSE_FILES, what)
    try:
        return OpenposeDetector.from_pretrained(str(folder) if folder else ANNOTATORS_REPO)
    except Exception as err:  # offline hub, missing or corrupt files: all mean "provide the weights"
        raise _how_to(OPENPOSE_ENV, OPENPOSE_FILES, what, err) from None


@contextlib.contextmanager
def _geffnet_backbone() -> Iterator[None]:
    """Build MiDaS small's EfficientNet-Lite3 with geffnet (offline) instead of controlnet_aux's torch.hub.load."""
    import geffnet
    from controlnet_aux.midas.midas import blocks

    def make(use_pretrained: bool, exportable: bool = False):
        net = geffnet.create_model("tf_efficientnet_lite3", pretrained=False, exportable=exportable)
        return blocks._make_efficientnet_backbone(net)  # weights come from the MiDaS checkpoint itself

    original = blocks._make_pretrained_efficientnet_lite3
    blocks._make_pretrained_efficientnet_lite3 = make
    try:
        yield
    finally:
        blocks._make_pretrained_efficientnet_lite3 = original


@lru_cache(maxsize=2)
def midas_detector(model_type: str = "dpt_hybrid"):
    """controlnet_aux's MidasDetector (DPT-hybrid or MiDaS small) from $VDEMO_MIDAS_DIR or the pinned hub repo."""
    from controlnet_aux import MidasDetector

    if model_type not in MIDAS_FILES:
        raise UserError(f"depth model must be one of {tuple(MIDAS_FILES)}, got {model_type!r}")
    filename = MIDAS_FILES[model_type]
    what = f"MiDaS ({model_type})"
    folder = _local_folder(MIDAS_ENV, (filename,), what)
    try:
        with _geffnet_backbone() if model_type == "midas_v21_small" else contextlib.nullcontext():
            return MidasDetector.from_pretrained(str(folder) if folder else ANNOTATORS_REPO, model_type=model_type,
                                                 filename=filename)
    except Exception as err:
        raise _how_to(MIDAS_ENV, (filename,), what, err) from None


def _pick_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """At most num_frames frames, evenly spread (the detectors are the slow part, so run them only where needed)."""
    if len(frames) <= num_frames:
        return frames
    return frames[np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(int)]


def _square(image: np.ndarray, side: int) -> np.ndarray:
    """Resize a detector output (H, W[, 3]) to side × side (the video's shape is square)."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))


def extract_pose(frames: np.ndarray, num_frames: int, size: int) -> np.ndarray:
    """OpenPose skeletons (F, size, size, 3) uint8 for (F', H, W, 3) uint8 frames (body only, COCO-18 drawing)."""
    detector = openpose_detector()
    out = []
    with _LOCK:
        for frame in _pick_frames(frames, num_frames):
            side = min(frame.shape[:2])
            square = fit_image(frame, side, side)  # centre crop, as the model will see it
            skeleton = detector(square, detect_resolution=DETECT_RESOLUTION_PX, image_resolution=DETECT_RESOLUTION_PX,
                                include_body=True, include_hand=False, include_face=False, output_type="np")
            out.append(_square(skeleton, size))
    return np.stack(out)


def extract_depth(frames: np.ndarray, num_frames: int, size: int, model: str = "DPT-hybrid") -> np.ndarray:
    """MiDaS relative inverse depth (F, size, size) uint8, near = bright, for (F', H, W, 3) uint8 frames."""
    if model not in DEPTH_MODELS:
        raise UserError(f"depth model must be one of {tuple(DEPTH_MODELS)}, got {model!r}")
    detector = midas_detector(DEPTH_MODELS[model])
    out = []
    with _LOCK:
        for frame in _pick_frames(frames, num_frames):
            side = min(frame.shape[:2])
            square = fit_image(frame, side, side)
            depth = detector(square, detect_resolution=DETECT_RESOLUTION_PX, image_resolution=DETECT_RESOLUTION_PX,
                             output_type="np")
            out.append(_square(depth[..., 0] if depth.ndim == 3 else depth, size))
    return np.stack(out)
