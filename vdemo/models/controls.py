"""Turn conditioning inputs (known frames, pose, depth, strokes) into the built-in model's control channels.

One function used by both training and inference, so that what the model sees at generation time is exactly what it
was trained on. Layout per frame (9 channels, values in [-1, 1], absent = 0 with the presence flag cleared):
known RGB (3), known mask (1), OpenPose RGB (3), inverse depth (1), stroke heatmap (1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vdemo.models.tiny_unet import CONTROL_CHANNELS, PRESENCE_FLAGS

NUM_CONTROL_CHANNELS = sum(CONTROL_CHANNELS.values())


def u8_to_signed(x: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.astype(np.float32) / 127.5 - 1.0


def control_tensors(
    num_frames: int,
    size: int,
    *,
    known: Mapping[int, np.ndarray] | None = None,  # frame index -> (S, S, 3) uint8
    pose: np.ndarray | None = None,  # (F, S, S, 3) uint8
    depth: np.ndarray | None = None,  # (F, S, S) uint8
    stroke_maps: np.ndarray | None = None,  # (F, S, S) float in [0, 1]
    has_text: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Controls (F, 9, S, S) float32 and presence flags (5,) float32 in PRESENCE_FLAGS order."""
    controls = np.zeros((num_frames, NUM_CONTROL_CHANNELS, size, size), np.float32)
    flags = np.zeros(len(PRESENCE_FLAGS), np.float32)
    flags[0] = float(has_text)
    if known:
        for index, frame in known.items():
            controls[index, 0:3] = u8_to_signed(frame).transpose(2, 0, 1)
            controls[index, 3] = 1.0
        flags[1] = 1.0
    if pose is not None:
        controls[:, 4:7] = u8_to_signed(pose).transpose(0, 3, 1, 2)
        flags[2] = 1.0
    if depth is not None:
        controls[:, 7] = u8_to_signed(depth)
        flags[3] = 1.0
    if stroke_maps is not None:
        controls[:, 8] = 2.0 * stroke_maps.astype(np.float32) - 1.0
        flags[4] = 1.0
    return controls, flags
