"""Articulated stick figures: OpenPose COCO-18 keypoints animated by an action, rendered two ways.

- as the video: a thick-limbed stick person in one solid colour with a filled head, on a plain background;
- as the pose control: the skeleton drawn exactly as controlnet_aux's `draw_bodypose` draws it (a verbatim port,
  parity-tested against controlnet_aux; importing controlnet_aux itself costs seconds and pulls in timm).

The pose canvas is POSE_DRAW_SIDE = 512 px and is then resized to the clip size with INTER_AREA. That is what the
OpenposeDetector's output looks like after the app scales it to the clip: the detector draws at detect_resolution
(512 by default, stickwidth 4 and joint radius 4 px on that canvas), so at 64 px limbs are ~1 px wide.
Drawing directly at 64 px would make 9-px-wide limbs that merge into a blob and that no real detector produces.

Body geometry is in units of the figure height h (head top to feet): angles are measured from straight down,
positive = outward (front view) or forward (side view).
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np

from .palette import BACKGROUNDS, COLOURS
from .render import planes_to_frames

# OpenPose body order (COCO-18), as controlnet_aux uses it.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip
NOSE, NECK, RSHO, RELB, RWRI, LSHO, LELB, LWRI, RHIP, RKNE, RANK, LHIP, LKNE, LANK, REYE, LEYE, REAR, LEAR = range(18)

POSE_DRAW_SIDE = 512

# Proportions, in units of h.
TORSO, NECK_TO_NOSE, SHOULDER_HW, HIP_HW = 0.30, 0.10, 0.10, 0.06
UPPER_ARM, FOREARM, THIGH, SHIN = 0.15, 0.14, 0.24, 0.24
HEAD_RADIUS = 0.075
LEG = THIGH + SHIN
PELVIS_TO_TOP = TORSO + NECK_TO_NOSE + HEAD_RADIUS + 0.01  # pelvis to the top of the head

# draw_bodypose's limb table (1-based keypoint pairs) and colours, copied from controlnet_aux 0.0.10.
_LIMB_SEQ = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11),
    (2, 12), (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
)  # fmt: skip
_POSE_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

# The video's stick person: (from, to, thickness in h). -1 stands for the pelvis (mid-hips).
_BODY_LIMBS = (
    (NECK, -1, 0.10), (RSHO, LSHO, 0.07), (RHIP, LHIP, 0.07), (NECK, NOSE, 0.06),
    (RSHO, RELB, 0.055), (RELB, RWRI, 0.05), (LSHO, LELB, 0.055), (LELB, LWRI, 0.05),
    (RHIP, RKNE, 0.065), (RKNE, RANK, 0.06), (LHIP, LKNE, 0.065), (LKNE, LANK, 0.06),
)  # fmt: skip
_SUPERSAMPLE = 4
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel line ends


def draw_bodypose(canvas: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """controlnet_aux.open_pose.util.draw_bodypose, ported line by line (same float64 arithmetic, same int casts)
    with Python floats instead of tiny numpy arrays (10x faster). keypoints: (18, 2) normalised (x, y), NaN = missing.
    """
    height, width, _ = canvas.shape
    stickwidth = 4
    points = [None if math.isnan(x) or math.isnan(y) else (x, y) for x, y in np.asarray(keypoints, np.float64).tolist()]
    for (k1, k2), colour in zip(_LIMB_SEQ, _POSE_COLOURS):
        p1, p2 = points[k1 - 1], points[k2 - 1]
        if p1 is None or p2 is None:
            continue
        y0, y1 = p1[0] * float(width), p2[0] * float(width)  # controlnet_aux calls x "Y" and y "X"; kept as is
        x0, x1 = p1[1] * float(height), p2[1] * float(height)
        m_x, m_y = (x0 + x1) / 2, (y0 + y1) / 2
        length = ((x0 - x1) ** 2 + (y0 - y1) ** 2) ** 0.5
        angle = math.degrees(math.atan2(x0 - x1, y0 - y1))
        polygon = cv2.ellipse2Poly((int(m_y), int(m_x)), (int(length / 2), stickwidth), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in colour])
    for point, colour in zip(points, _POSE_COLOURS):
        if point is not None:
            cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), 4, colour, thickness=-1)
    return canvas


def _block_crops(keypoints: np.ndarray, side: int, block: int, margin_px: int) -> list[tuple[int, int, int, int]]:
    """Per frame, a block-aligned (x0, x1, y0, y1) on a side x side canvas holding all that is drawn around the
    keypoints (F, 18, 2); empty (0, 0, 0, 0) for a frame without keypoints."""
    lo = np.nan_to_num(np.nanmin(keypoints, axis=1), nan=2.0)  # (F, 2); NaN rows -> empty crops
    hi = np.nan_to_num(np.nanmax(keypoints, axis=1), nan=-1.0)
    lo = np.clip(np.floor((lo * side - margin_px) / block).astype(int) * block, 0, side)
    hi = np.clip(np.ceil((hi * side + margin_px) / block).astype(int) * block, 0, side)
    crops = [(x0, x1, y0, y1) for (x0, y0), (x1, y1) in zip(lo.tolist(), hi.tolist())]
    return [c if c[1] > c[0] and c[3] > c[2] else (0, 0, 0, 0) for c in crops]


def pose_frames(keypoints: np.ndarray, size: int) -> np.ndarray:
    """(F, 18, 2) keypoints -> (F, size, size, 3) uint8 OpenPose skeleton frames (black background).

    Each frame equals cv2.resize(draw_bodypose(zeros(512, 512, 3), kp), (size, size), INTER_AREA). When 512 is a
    multiple of size, only the block-aligned region around the skeleton is resized (INTER_AREA then averages
    independent blocks, so the result is identical) and the canvas is reused: 5x faster.
    """
    out = np.zeros((len(keypoints), size, size, 3), dtype=np.uint8)
    side = max(POSE_DRAW_SIDE, size)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    factor = side // size
    if side % size:  # no block structure to exploit
        for i, frame_keypoints in enumerate(keypoints):
            canvas[:] = 0
            out[i] = cv2.resize(draw_bodypose(canvas, frame_keypoints), (size, size), interpolation=interpolation)
        return out
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames
        crops = _block_crops(keypoints, side, factor, margin_px=16)
    for i, (frame_keypoints, (x0, x1, y0, y1)) in enumerate(zip(keypoints, crops)):
        draw_bodypose(canvas, frame_keypoints)
        if x1 > x0:
            crop = canvas[y0:y1, x0:x1]
            small_size = ((x1 - x0) // factor, (y1 - y0) // factor)
            small = crop if factor == 1 else cv2.resize(crop, small_size, interpolation=interpolation)
            out[i, y0 // factor : y1 // factor, x0 // factor : x1 // factor] = small
            crop[:] = 0
    return out


# ----------------------------------------------------------------------------------------------- kinematics
def _unit(angle_deg: np.ndarray, sign: float | np.ndarray) -> np.ndarray:
    """Direction at `angle_deg` from straight down, turned toward x-sign `sign`: (..., 2)."""
    a = np.radians(angle_deg)
    return np.stack([sign * np.sin(a), np.cos(a)], axis=-1)


def _knee(hip: np.ndarray, ankle: np.ndarray, outward: float) -> np.ndarray:
    """Two-link IK (thigh = shin): the knee for hip/ankle (F, 2), bending toward x-sign `outward`."""
    span = ankle - hip
    dist = np.minimum(np.linalg.norm(span, axis=-1, keepdims=True), 2 * THIGH * 0.9999)
    perp = np.stack([-span[:, 1], span[:, 0]], axis=-1) / np.maximum(dist, 1e-9)
    perp *= np.where(perp[:, :1] * outward >= 0, 1.0, -1.0)
    return (hip + ankle) / 2 + perp * np.sqrt(THIGH**2 - (dist / 2) ** 2)


def _front_face(neck: np.ndarray) -> dict[int, np.ndarray]:
    nose = neck + [0.0, -NECK_TO_NOSE]
    return {
        NOSE: nose,
        REYE: nose + [-0.025, -0.025],
        LEYE: nose + [0.025, -0.025],
        REAR: nose + [-0.055, -0.005],
        LEAR: nose + [0.055, -0.005],
    }


def _arms_front(neck: np.ndarray, upper: dict[str, np.ndarray], lower: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Front-view arms from outward angles per side ('r' is image-left)."""
    pts = {}
    for side, sign, (sho, elb, wri) in (("r", -1.0, (RSHO, RELB, RWRI)), ("l", 1.0, (LSHO, LELB, LWRI))):
        pts[sho] = neck + [sign * SHOULDER_HW, 0.0]
        pts[elb] = pts[sho] + UPPER_ARM * _unit(upper[side], sign)
        pts[wri] = pts[elb] + FOREARM * _unit(lower[side], sign)
    return pts


def _walk(t: np.ndarray, params: dict) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Side view, facing `direction`; legs and arms swing in counter-phase."""
    d = 1.0 if params["direction"] == "right" else -1.0
    phi = 2 * np.pi * params["cycles"] * t + params["phase"]
    swing = params["swing_deg"]
    thigh = {"r": swing * np.sin(phi), "l": -swing * np.sin(phi)}
    flex = {"r": 40.0 * np.maximum(0.0, np.cos(phi)), "l": 40.0 * np.maximum(0.0, -np.cos(phi))}
    shin = {k: thigh[k] - flex[k] for k in thigh}
    drop = {k: THIGH * np.cos(np.radians(thigh[k])) + SHIN * np.cos(np.radians(shin[k])) for k in thigh}
    pelvis = np.stack([params["x0"] + d * params["distance"] * t, -np.maximum(drop["r"], drop["l"])], axis=-1)
    neck = pelvis + [0.0, -TORSO]
    # A figure facing image-right shows the camera its right side (right = forward x up points at the viewer).
    near, far = ("r", "l") if d > 0 else ("l", "r")
    pts: dict[int, np.ndarray] = {}
    idx = {"r": (RSHO, RELB, RWRI, RHIP, RKNE, RANK), "l": (LSHO, LELB, LWRI, LHIP, LKNE, LANK)}
    for side, offset in ((near, -0.015), (far, 0.015)):
        sho, elb, wri, hip, kne, ank = idx[side]
        arm = -thigh[side] * 0.8
        pts[sho] = neck + [d * offset, 0.0]
        pts[elb] = pts[sho] + UPPER_ARM * _unit(arm, d)
        pts[wri] = pts[elb] + FOREARM * _unit(arm + 25.0, d)
        pts[hip] = pelvis + [d * offset, 0.0]
        pts[kne] = pts[hip] + THIGH * _unit(thigh[side], d)
        pts[ank] = pts[kne] + SHIN * _unit(shin[side], d)
    nose = neck + [d * 0.04, -NECK_TO_NOSE]
    pts[NOSE] = nose
    pts[REYE if d > 0 else LEYE] = nose + [-d * 0.012, -0.025]
    pts[LEYE if d > 0 else REYE] = nose + [-d * 0.002, -0.027]
    pts[REAR if d > 0 else LEAR] = nose + [-d * 0.07, -0.005]
    pts[LEAR if d > 0 else REAR] = np.full_like(nose, np.nan)  # the far ear is hidden, as OpenPose would miss it
    return pelvis, pts


def _standing_legs(pelvis: np.ndarray, ankle_spread: float, lifted: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Front-view legs: ankles on the ground at y = 0 (or hanging straight when `lifted` > 0), knees by IK."""
    pts = {}
    for sign, (hip, kne, ank) in ((-1.0, (RHIP, RKNE, RANK)), (1.0, (LHIP, LKNE, LANK))):
        pts[hip] = pelvis + [sign * HIP_HW, 0.0]
        ground = np.stack([pelvis[:, 0] + sign * ankle_spread, np.zeros(len(pelvis))], axis=-1)
        if lifted is not None:  # in the air: the feet hang below the hips, slightly tucked
            hang = pts[hip] + LEG * 0.97 * _unit(np.full(len(pelvis), 4.0), sign)
            ground = np.where(lifted[:, None] > 0, hang, ground)
        pts[ank] = ground
        pts[kne] = _knee(pts[hip], pts[ank], sign)
    return pts


def _wave(t: np.ndarray, params: dict) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Front view; one arm raised, its forearm swinging side to side."""
    n = len(t)
    pelvis = np.stack([np.full(n, params["x0"]), np.full(n, -LEG * 0.995)], axis=-1)
    neck = pelvis + [0.0, -TORSO]
    wave = np.sin(2 * np.pi * params["cycles"] * t + params["phase"])
    up, down = params["arm"], "l" if params["arm"] == "r" else "r"
    upper = {up: np.full(n, 125.0), down: np.full(n, 12.0)}
    lower = {up: 175.0 + 35.0 * wave, down: np.full(n, 6.0)}
    pts = {**_arms_front(neck, upper, lower), **_front_face(neck), **_standing_legs(pelvis, 0.085)}
    return pelvis, pts


def _jump(t: np.ndarray, params: dict) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Front view; crouch, take off, fly (arms up), land, crouch."""
    u = (params["jumps"] * t + params["phase"]) % 1.0
    flight = np.where((u > 0.25) & (u < 0.75), np.sin(np.pi * (u - 0.25) / 0.5), 0.0)
    crouch = np.where(u <= 0.25, np.sin(np.pi * (u + 0.25) / 0.5), 0.0) + np.where(
        u >= 0.75, np.sin(np.pi * (u - 0.75) / 0.5), 0.0
    )
    height = params["height"]
    pelvis_y = -LEG * 0.995 + 0.07 * crouch - height * flight / params["scale"]
    pelvis = np.stack([np.full(len(t), params["x0"]), pelvis_y], axis=-1)
    neck = pelvis + [0.0, -TORSO]
    arm = 15.0 + 140.0 * flight + 25.0 * crouch
    pts = {**_arms_front(neck, {"r": arm, "l": arm}, {"r": arm + 10.0, "l": arm + 10.0}), **_front_face(neck)}
    pts.update(_standing_legs(pelvis, 0.08, lifted=flight))
    return pelvis, pts


def _squat(t: np.ndarray, params: dict) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Front view; hips drop, knees bend outward, arms rise."""
    s = (1.0 - np.cos(2 * np.pi * params["squats"] * t)) / 2.0
    pelvis = np.stack([np.full(len(t), params["x0"]), -LEG * 0.995 + params["depth"] * s], axis=-1)
    neck = pelvis + [0.0, -TORSO]
    arm = 12.0 + 70.0 * s
    pts = {**_arms_front(neck, {"r": arm, "l": arm}, {"r": arm + 5.0, "l": arm + 5.0}), **_front_face(neck)}
    pts.update(_standing_legs(pelvis, 0.10))
    return pelvis, pts


_ACTION_FNS = {"walk": _walk, "wave": _wave, "jump": _jump, "squat": _squat}


def person_keypoints(spec: dict, num_frames: int) -> np.ndarray:
    """(F, 18, 2) float32 normalised keypoints (x, y) for a person spec; NaN where a keypoint is hidden.

    The action functions work in body units with the feet on y = 0 and x in frame units; this scales by the
    figure height and puts the feet on spec["ground"].
    """
    t = np.linspace(0.0, 1.0, num_frames)
    params = {**spec["params"], "scale": spec["height"]}
    pelvis, pts = _ACTION_FNS[spec["action"]](t, params)
    pts[NECK] = pelvis + [0.0, -TORSO]  # the torso stays upright in every action
    keypoints = np.stack([pts[i] for i in range(18)], axis=1)  # (F, 18, 2) body units
    x_anchor = pelvis[:, None, 0]
    keypoints[..., 0] = x_anchor + (keypoints[..., 0] - x_anchor) * spec["height"]
    keypoints[..., 1] = spec["ground"] + keypoints[..., 1] * spec["height"]
    return keypoints.astype(np.float32)


def torso_centre(keypoints: np.ndarray) -> np.ndarray:
    """(F, 2) midpoint of the neck and the mid-hips: the point a motion stroke on a person follows."""
    pelvis = (keypoints[:, RHIP] + keypoints[:, LHIP]) / 2
    return ((keypoints[:, NECK] + pelvis) / 2).astype(np.float32)


def render_person(keypoints: np.ndarray, height: float, colour: str, background: str, size: int) -> np.ndarray:
    """The video: a solid-colour stick person with thick round-capped limbs and a filled head, anti-aliased."""
    big = size * _SUPERSAMPLE
    scale = big * (1 << _SHIFT)
    alpha = np.zeros((len(keypoints), size, size), dtype=np.float32)
    mask = np.zeros((big, big), dtype=np.uint8)  # reused; only the region around the figure is drawn and cleared
    margin_px = int(np.ceil(0.15 * height * big)) + 2  # > half the thickest limb and the head radius
    pelvis = (keypoints[:, RHIP] + keypoints[:, LHIP]) / 2  # (F, 2)
    ends = np.stack([keypoints[:, a] for a, _, _ in _BODY_LIMBS], axis=1)  # (F, L, 2)
    starts = np.stack([pelvis if b == -1 else keypoints[:, b] for _, b, _ in _BODY_LIMBS], axis=1)
    heads = keypoints[:, NOSE] + [0.0, -0.01 * height]  # (F, 2)
    ends, starts, heads = (np.rint(v * scale).astype(int).tolist() for v in (ends, starts, heads))
    widths = [max(1, int(round(thickness * height * big))) for _, _, thickness in _BODY_LIMBS]
    head_radius = int(round(HEAD_RADIUS * height * scale))
    for i, (x0, x1, y0, y1) in enumerate(_block_crops(keypoints, big, _SUPERSAMPLE, margin_px)):
        for p, q, width in zip(ends[i], starts[i], widths):
            cv2.line(mask, p, q, 255, width, cv2.LINE_8, _SHIFT)
        cv2.circle(mask, heads[i], head_radius, 255, -1, cv2.LINE_8, _SHIFT)
        if x1 > x0:
            crop = mask[y0:y1, x0:x1]
            small_size = ((x1 - x0) // _SUPERSAMPLE, (y1 - y0) // _SUPERSAMPLE)
            small = cv2.resize(crop, small_size, interpolation=cv2.INTER_AREA)
            alpha[i, y0 // _SUPERSAMPLE : y1 // _SUPERSAMPLE, x0 // _SUPERSAMPLE : x1 // _SUPERSAMPLE] = small
            crop[:] = 0
    alpha *= 1.0 / 255.0
    bg, fg = BACKGROUNDS[background], COLOURS[colour]
    planes = np.stack([bg[ch] + alpha * (fg[ch] - bg[ch]) for ch in range(3)])  # (3, F, S, S)
    return planes_to_frames(planes)
