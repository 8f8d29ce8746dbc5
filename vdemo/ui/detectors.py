"""Pose and depth extraction from user images/videos with controlnet_aux's OpenPose and MiDaS detectors.

Weights come from a local folder named by an environment variable, or else from the pinned hub repo
(`lllyasviel/Annotators`, the repo controlnet_aux's own docs use). With neither available the loaders raise
`DetectorUnavailable`, a one-line message saying how to provide them; the tabs keep working with presets and
uploaded control images. Where the weights are looked for, in order: the local folder, the hub cache (files of one
snapshot), a hub download. When only a download could provide them and the hub is offline (`HF_HUB_OFFLINE`) or does
not answer an HTTP request within HUB_PROBE_TIMEOUT_S, the loaders fail at once instead of after huggingface_hub's
~24 s of retries.

- OpenPose (`OpenposeDetector`): needs body_pose_model.pth, hand_pose_model.pth and facenet.pth.
- MiDaS DPT-hybrid (`MidasDetector`, the default): needs dpt_hybrid-midas-501f0c75.pt.
- MiDaS small (`model_type="midas_v21_small"`): needs midas_v21_small_256.pt; its EfficientNet-Lite3 backbone is
  built from `geffnet` instead of controlnet_aux's torch.hub fetch, so it also loads offline.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
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
HUB_PROBE_TIMEOUT_S = 1.5  # an HTTP answer from the hub endpoint within this, or it is unreachable

_LOCK = threading.Lock()  # detectors are not thread-safe, and the torch.hub patch below is process-wide
_LOAD_LOCK = threading.Lock()  # one load per detector (lru_cache alone lets two threads load it twice), and the
# process-wide warnings filter and geffnet patch of a load never overlap another's


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Import controlnet_aux / timm / geffnet without their import-time noise on the server console (timm's
    deprecated-module and registry-overwrite warnings, controlnet_aux's optional mediapipe, torch.jit.script):
    warnings about *their* code, not about anything a user or the Space owner can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


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


def _how_to(env: str, files: tuple[str, ...], what: str, reason: str) -> DetectorUnavailable:
    return DetectorUnavailable(f"{what} weights not found ({reason}): set {env} to a folder with {', '.join(files)} "
                               f"(from the hub repo {ANNOTATORS_REPO}), or allow the hub download; presets and "
                               f"uploaded control images work without them")


def _cached_folder(files: tuple[str, ...]) -> Path | None:
    """The hub cache's snapshot folder of ANNOTATORS_REPO holding all the files, or None."""
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache(ANNOTATORS_REPO, name) for name in files]
    if not all(isinstance(path, str) for path in paths):
        return None
    folders = {Path(path).parent for path in paths}
    return folders.pop() if len(folders) == 1 else None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint answers an HTTP HEAD (any status) within timeout_s, DNS and TLS included (run in a
    thread, so the bound holds whatever stalls). HTTP, not a bare TCP connect: a proxy may accept any connection."""
    import httpx
    from huggingface_hub import constants

    answer: list[bool] = []

    def probe() -> None:
        try:
            httpx.head(constants.ENDPOINT, timeout=timeout_s)
            answer.append(True)
        except Exception:  # noqa: BLE001 - any failure to get an answer means "unreachable"
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(answer and answer[0])


def _weights_source(env: str, files: tuple[str, ...], what: str) -> str:
    """Where to load from: the local folder ($env), the hub cache's snapshot folder, or the hub repo id (download);
    DetectorUnavailable at once when only a download could work and the hub is offline or unreachable."""
    folder = _local_folder(env, files, what) or _cached_folder(files)
    if folder is not None:
        return str(folder)
    if _hub_offline():
        raise _how_to(env, files, what, "not in the hub cache, and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        from huggingface_hub import constants

        raise _how_to(env, files, what, f"not in the hub cache, and {constants.ENDPOINT} is unreachable")
    return ANNOTATORS_REPO


@lru_cache(maxsize=None)
def unavailable_reason(kind: str) -> str:
    """Why the "pose" (OpenPose) or "depth" (MiDaS DPT-hybrid) detector cannot run here, in one line; "" when its
    weights are in a local folder or the hub cache, or the hub is reachable. Checked once per process, at start-up
    (the page greys the upload-to-extract input out with this reason); never downloads."""
    if kind == "pose":
        env, files, what = OPENPOSE_ENV, OPENPOSE_FILES, "OpenPose"
    else:
        env, files, what = MIDAS_ENV, (MIDAS_FILES["dpt_hybrid"],), "MiDaS (dpt_hybrid)"
    try:
        _weights_source(env, files, what)
        return ""
    except DetectorUnavailable as err:
        return str(err)


@lru_cache(maxsize=1)
def openpose_detector():
    """controlnet_aux's OpenposeDetector from $VDEMO_OPENPOSE_DIR, the hub cache or the pinned hub repo (cached per
    process)."""
    with quiet_imports():
        from controlnet_aux import OpenposeDetector

    what = "OpenPose"
    source = _weights_source(OPENPOSE_ENV, OPENPOSE_FILES, what)
    try:
        return OpenposeDetector.from_pretrained(source)
    except Exception as err:  # a failed download, missing or corrupt files: all mean "provide the weights"
        raise _how_to(OPENPOSE_ENV, OPENPOSE_FILES, what, type(err).__name__) from None


@contextlib.contextmanager
def _geffnet_backbone() -> Iterator[None]:
    """Build MiDaS small's EfficientNet-Lite3 with geffnet (offline) instead of controlnet_aux's torch.hub.load."""
    with quiet_imports():
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
    """controlnet_aux's MidasDetector (DPT-hybrid or MiDaS small) from $VDEMO_MIDAS_DIR, the hub cache or the pinned
    hub repo."""
    with quiet_imports():
        from controlnet_aux import MidasDetector

    if model_type not in MIDAS_FILES:
        raise UserError(f"depth model must be one of {tuple(MIDAS_FILES)}, got {model_type!r}")
    filename = MIDAS_FILES[model_type]
    what = f"MiDaS ({model_type})"
    source = _weights_source(MIDAS_ENV, (filename,), what)
    try:
        with _geffnet_backbone() if model_type == "midas_v21_small" else contextlib.nullcontext():
            return MidasDetector.from_pretrained(source, model_type=model_type, filename=filename)
    except Exception as err:
        raise _how_to(MIDAS_ENV, (filename,), what, type(err).__name__) from None


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
    with _LOAD_LOCK:
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
    with _LOAD_LOCK:
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
