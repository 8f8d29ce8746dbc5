"""Scene specs (plain JSON-able dicts, resolution- and length-free) and clips rendered from them.

`sample_spec(rng, kind)` draws a spec; `make_clip(spec, num_frames, size)` renders it deterministically, so the eval
can keep held-out specs and render them at any size. `sample_clip` does both; `object_tracks(spec, num_frames)` gives
the objects' exact centres, radii and depths (the layout planner's training targets). Kinds:

- objects: one or two shapes on a plain background, linear motion at constant speed (travel 0.3-0.5 of the frame)
  or still, fully inside the frame; two objects never overlap (checked over the whole clip).
- path: one shape along a cubic Bezier at constant speed (resampled by arc length with
  `vdemo.strokes.resample_stroke`, as strokes are), inside the frame.
- person: a stick figure doing an action (person.py), with its OpenPose skeleton as `pose`.
- depth: 1-3 shapes at distances z in [1, 2.8]; radius = 0.22 / z, depth map = 255 / z (background 0). One
  "actor" moves (closer, away, left/right/up/down) or stays still; it stays in front of (or behind) all the others,
  which are static. Objects are drawn far to near, so near ones occlude. At the first and last frames every object
  is at least about half visible; in between, a lateral actor may pass in front of / behind another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vdemo.strokes import resample_stroke

from .grammar import build_caption
from .palette import (
    ACTIONS,
    BACKGROUNDS,
    KIND_WEIGHTS,
    KINDS,
    MOTIONS,
    SHAPES,
    colours_for_background,
    nearest_direction,
)
from .person import LEG, PELVIS_TO_TOP, person_keypoints, pose_frames, render_person, torso_centre
from .render import FOCAL_RADIUS, depth_value, render_objects, shape_extent

MARGIN = 0.03  # objects keep this far from the frame edge (normalised; 2 px at 64 px, so edge pixels stay background)
RADIUS_RANGE = (0.14, 0.22)
TWO_OBJECT_RADIUS_RANGE = (0.13, 0.18)
PATH_RADIUS_RANGE = (0.13, 0.18)
TRAVEL_RANGE = (0.3, 0.5)
Z_RANGE = (1.0, 2.8)
DEPTH_ACTOR_MOTIONS = ("closer", "away", "left", "right", "up", "down", "still")


@dataclass
class Clip:
    """One rendered clip with all its ground truth. Positions are normalised [0, 1], origin top-left, (x, y)."""

    frames: np.ndarray  # (F, S, S, 3) uint8
    caption: str
    kind: str
    pose: np.ndarray | None  # (F, S, S, 3) uint8 OpenPose skeleton on black (person clips)
    depth: np.ndarray | None  # (F, S, S) uint8 relative inverse depth, near = bright (all but person clips)
    paths: list[np.ndarray]  # per object / figure: (F, 2) float32 centre positions
    objects: list[dict]  # per object: colour, shape, motion, radius (frame 0); not person: radii (F,), z (F,),
    #                      depth_value (F,) (its brightness in `depth`), curved
    meta: dict = field(default_factory=dict)  # background, action, spec, keypoints (person: (F, 18, 2), NaN = hidden)


# ------------------------------------------------------------------------------------------------ sampling
def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _box(shape: str, radius: float) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi): where the centre may go so that the shape stays inside the frame."""
    left, right, up, down = shape_extent(shape, radius)
    return (left + MARGIN, 1 - right - MARGIN, up + MARGIN, 1 - down - MARGIN)


def _linear_motion(rng: np.random.Generator, shape: str, radius: float, motion: str) -> tuple[list, list]:
    """Start and end centres for a straight constant-speed move inside the frame (shortened if it cannot fit)."""
    x_lo, x_hi, y_lo, y_hi = _box(shape, radius)
    ux, uy = MOTIONS[motion]
    travel = float(rng.uniform(*TRAVEL_RANGE))
    for u, lo, hi in ((ux, x_lo, x_hi), (uy, y_lo, y_hi)):
        if u != 0.0:
            travel = min(travel, (hi - lo) / abs(u))
    dx, dy = ux * travel, uy * travel
    x0 = rng.uniform(x_lo - min(0.0, dx), x_hi - max(0.0, dx))
    y0 = rng.uniform(y_lo - min(0.0, dy), y_hi - max(0.0, dy))
    return [float(x0), float(y0)], [float(x0 + dx), float(y0 + dy)]


def _reach(shape: str, radius: float) -> float:
    return max(shape_extent(shape, radius))


def _min_gap(a: dict, b: dict, samples: int = 33) -> float:
    """Smallest distance between two linearly moving centres minus their reaches, over the clip."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    pa = np.asarray(a["start"]) + t * (np.asarray(a["end"]) - a["start"])
    pb = np.asarray(b["start"]) + t * (np.asarray(b["end"]) - b["start"])
    dist = np.linalg.norm(pa - pb, axis=1)
    return float(dist.min()) - _reach(a["shape"], a["radius"]) - _reach(b["shape"], b["radius"])


def _objects_spec(rng: np.random.Generator) -> dict:
    background = _pick(rng, list(BACKGROUNDS))
    palette = colours_for_background(background)
    count = 1 + int(rng.random() < 0.5)
    shared = bool(rng.random() < 0.5)
    for _ in range(100):
        colours = rng.choice(len(palette), size=count, replace=False)
        radius_range = RADIUS_RANGE if count == 1 else TWO_OBJECT_RADIUS_RANGE
        motion = _pick(rng, list(MOTIONS))
        objects = []
        for i in range(count):
            obj = {
                "colour": palette[int(colours[i])],
                "shape": _pick(rng, SHAPES),
                "radius": float(rng.uniform(*radius_range)),
                "motion": motion if shared else _pick(rng, list(MOTIONS)),
            }
            obj["start"], obj["end"] = _linear_motion(rng, obj["shape"], obj["radius"], obj["motion"])
            objects.append(obj)
        if count == 1 or _min_gap(objects[0], objects[1]) >= MARGIN:
            break
    else:  # two objects that never fit apart: keep one (rare)
        objects = objects[:1]
    return {"kind": "objects", "background": background, "objects": objects, "shared_motion": shared}


def _bezier(control: np.ndarray, samples: int) -> np.ndarray:
    """Points (samples, 2) of the cubic Bezier with control points (4, 2), uniform in the parameter."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    p0, p1, p2, p3 = control
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _bezier_checks(control: np.ndarray, samples: int = 48) -> np.ndarray:
    """Which candidate cubic Beziers (B, 4, 2) make a good "moves along a curve" clip: (B,) bool.

    Net displacement >= 0.28 (so the caption's compass word means something), bulging >= 0.08 off the chord
    (visibly curved), length 0.35-0.9, and no turn tighter than radius 0.08 (no cusps or hairpins).
    """
    t = np.linspace(0.0, 1.0, samples)[None, :, None]  # (1, T, 1)
    p0, p1, p2, p3 = (control[:, i : i + 1] for i in range(4))  # (B, 1, 2) each
    curve = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3  # (B, T, 2)
    d1 = 3 * ((1 - t) ** 2 * (p1 - p0) + 2 * (1 - t) * t * (p2 - p1) + t**2 * (p3 - p2))
    d2 = 6 * ((1 - t) * (p2 - 2 * p1 + p0) + t * (p3 - 2 * p2 + p1))
    cross = np.abs(d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0])  # (B, T)
    turn_radius = (np.linalg.norm(d1, axis=-1) ** 3 / np.maximum(cross, 1e-12)).min(axis=1)
    chord = control[:, 3] - control[:, 0]  # (B, 2)
    chord_len = np.linalg.norm(chord, axis=1)
    normal = np.stack([-chord[:, 1], chord[:, 0]], axis=1) / np.maximum(chord_len, 1e-9)[:, None]
    bulge = np.abs(((curve - p0) * normal[:, None]).sum(-1)).max(axis=1)
    length = np.linalg.norm(np.diff(curve, axis=1), axis=-1).sum(axis=1)
    return (chord_len >= 0.28) & (bulge >= 0.08) & (length >= 0.35) & (length <= 0.9) & (turn_radius >= 0.08)


def _path_spec(rng: np.random.Generator) -> dict:
    background = _pick(rng, list(BACKGROUNDS))
    obj = {
        "colour": _pick(rng, colours_for_background(background)),
        "shape": _pick(rng, SHAPES),
        "radius": float(rng.uniform(*PATH_RADIUS_RANGE)),
    }
    x_lo, x_hi, y_lo, y_hi = _box(obj["shape"], obj["radius"])
    lo, hi = np.array([x_lo, y_lo]), np.array([x_hi, y_hi])
    for _ in range(50):  # control points inside the box keep the whole curve inside (convex hull)
        candidates = lo + rng.random((32, 4, 2)) * (hi - lo)  # (B, 4, 2)
        good = np.flatnonzero(_bezier_checks(candidates))
        if len(good):
            break
    control = candidates[good[0] if len(good) else 0]
    chord = control[3] - control[0]
    obj["control"] = control.round(4).tolist()
    obj["motion"] = nearest_direction(float(chord[0]), float(chord[1]))
    return {"kind": "path", "background": background, "objects": [obj]}


def _person_spec(rng: np.random.Generator, action: str | None = None) -> dict:
    background = _pick(rng, list(BACKGROUNDS))
    action = action or _pick(rng, ACTIONS)
    height = float(rng.uniform(0.6, 0.7) if action == "jump" else rng.uniform(0.6, 0.8))
    params: dict = {"phase": float(rng.uniform(0.0, 2 * np.pi))}
    head_room = 0.03
    if action == "walk":
        distance = float(rng.uniform(0.3, 0.45))
        direction = _pick(rng, ("left", "right"))
        x0 = rng.uniform(0.2, 0.8 - distance) if direction == "right" else rng.uniform(0.2 + distance, 0.8)
        params |= {"direction": direction, "distance": distance, "x0": float(x0)}
        params |= {"cycles": float(rng.uniform(1.2, 2.0)), "swing_deg": float(rng.uniform(20.0, 30.0))}
    elif action == "wave":
        params |= {"x0": float(rng.uniform(0.35, 0.65)), "arm": _pick(rng, ("r", "l"))}
        params |= {"cycles": float(rng.uniform(1.5, 3.0))}
        head_room = 0.07  # the raised hand reaches above the head
    elif action == "jump":
        params |= {"x0": float(rng.uniform(0.3, 0.7)), "jumps": int(rng.integers(1, 3))}
        params |= {"height": float(rng.uniform(0.1, 0.16)), "phase": float(rng.uniform(0.0, 1.0))}
        head_room += params["height"]
    elif action == "squat":
        params |= {"x0": float(rng.uniform(0.3, 0.7)), "squats": int(rng.integers(1, 3))}
        params |= {"depth": float(rng.uniform(0.15, 0.22))}
    top = height * (LEG + PELVIS_TO_TOP) + head_room
    ground = float(rng.uniform(min(top, 0.97), 0.97))
    return {
        "kind": "person",
        "background": background,
        "colour": _pick(rng, colours_for_background(background)),
        "action": action,
        "height": height,
        "ground": ground,
        "params": params,
    }


def _depth_spec(rng: np.random.Generator) -> dict:
    background = _pick(rng, list(BACKGROUNDS))
    palette = colours_for_background(background)
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    for _ in range(200):
        colours = rng.choice(len(palette), size=count, replace=False)
        objects = [{"colour": palette[int(c)], "shape": _pick(rng, SHAPES)} for c in colours]
        relation = _pick(rng, ("front", "behind")) if count > 1 else None
        if relation == "front":
            other_z = rng.uniform(1.7, 2.6, count - 1)
            z_lo, z_hi = Z_RANGE[0], float(other_z.min()) - 0.2
        elif relation == "behind":
            other_z = rng.uniform(1.0, 1.6, count - 1)
            z_lo, z_hi = float(other_z.max()) + 0.2, Z_RANGE[1]
        else:
            other_z, (z_lo, z_hi) = np.zeros(0), (Z_RANGE[0], 2.6)
        actor = objects[0]
        actor["motion"] = _pick(rng, DEPTH_ACTOR_MOTIONS)
        if actor["motion"] in ("closer", "away"):
            ratio = min(1.8, z_hi / z_lo)
            near = float(rng.uniform(z_lo, max(z_lo, z_hi / ratio)))
            z0, z1 = (near * ratio, near) if actor["motion"] == "closer" else (near, near * ratio)
            actor |= {"z0": z0, "z1": z1}
            x_lo, x_hi, y_lo, y_hi = _box(actor["shape"], FOCAL_RADIUS / min(z0, z1))
            actor["start"] = actor["end"] = [float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))]
        else:
            z = float(rng.uniform(z_lo, z_hi))
            actor |= {"z0": z, "z1": z}
            actor["start"], actor["end"] = _linear_motion(rng, actor["shape"], FOCAL_RADIUS / z, actor["motion"])
        for obj, z in zip(objects[1:], other_z):
            x_lo, x_hi, y_lo, y_hi = _box(obj["shape"], FOCAL_RADIUS / z)
            pos = [float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))]
            obj |= {"motion": "still", "z0": float(z), "z1": float(z), "start": pos, "end": pos}
        if _depth_visible(objects):
            break
    return {"kind": "depth", "background": background, "objects": objects, "relation": relation}


def _depth_visible(objects: list[dict]) -> bool:
    """At the first and last frames, no object's centre region is hidden behind a nearer one."""
    for key_pos, key_z in (("start", "z0"), ("end", "z1")):
        for a in objects:
            for b in objects:
                if a[key_z] < b[key_z]:  # a is nearer than b
                    dist = float(np.linalg.norm(np.subtract(a[key_pos], b[key_pos])))
                    reach_a = _reach(a["shape"], FOCAL_RADIUS / a[key_z])
                    reach_b = _reach(b["shape"], FOCAL_RADIUS / b[key_z])
                    if dist < reach_a + 0.4 * reach_b:
                        return False
    return True


_SPEC_FNS = {"objects": _objects_spec, "path": _path_spec, "person": _person_spec, "depth": _depth_spec}


def sample_spec(rng: np.random.Generator, kind: str | None = None, action: str | None = None) -> dict:
    """A random scene spec of `kind` (None: drawn with KIND_WEIGHTS); `action` fixes a person's action.

    Plain dicts, lists, floats and strings only: JSON-serialisable, so the eval can store held-out cases.
    """
    if kind is None:
        kind = KINDS[int(rng.choice(len(KINDS), p=np.asarray(KIND_WEIGHTS) / sum(KIND_WEIGHTS)))]
    if kind not in _SPEC_FNS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if action is not None and (kind != "person" or action not in ACTIONS):
        raise ValueError(f"action must be one of {ACTIONS} (person clips only), got {action!r} for kind {kind!r}")
    spec = _person_spec(rng, action) if kind == "person" else _SPEC_FNS[kind](rng)
    spec["say_background"] = bool(rng.random() < 0.8)
    return spec


# ----------------------------------------------------------------------------------------------- rendering
def object_tracks(spec: dict, num_frames: int) -> list[dict]:
    """Per object: centres (F, 2), radii (F,), z (F,), in spec order."""
    t = np.linspace(0.0, 1.0, num_frames)[:, None]
    tracks = []
    for obj in spec["objects"]:
        if spec["kind"] == "path":
            centres = resample_stroke(_bezier(np.asarray(obj["control"]), 256), num_frames, dtype=np.float64)
        else:
            centres = np.asarray(obj["start"]) + t * (np.subtract(obj["end"], obj["start"]))
        if spec["kind"] == "depth":
            z = obj["z0"] + t[:, 0] * (obj["z1"] - obj["z0"])
            radii = FOCAL_RADIUS / z
        else:
            radii = np.full(num_frames, obj["radius"])
            z = FOCAL_RADIUS / radii
        tracks.append({"colour": obj["colour"], "shape": obj["shape"], "centres": centres, "radii": radii, "z": z})
    return tracks


def make_clip(spec: dict, num_frames: int = 16, size: int = 64) -> Clip:
    """Render a spec (from sample_spec, or written by hand in the same layout) into a Clip. Deterministic."""
    caption = build_caption(spec)
    meta = {"background": spec["background"], "action": spec.get("action"), "spec": spec}
    if spec["kind"] == "person":
        keypoints = person_keypoints(spec, num_frames)
        frames = render_person(keypoints, spec["height"], spec["colour"], spec["background"], size)
        obj = {"colour": spec["colour"], "shape": "person", "motion": spec["params"].get("direction", "still")}
        obj["radius"] = 0.2 * spec["height"]  # a region around the torso, for strokes_from_paths
        meta["keypoints"] = keypoints
        pose = pose_frames(keypoints, size)
        return Clip(frames, caption, "person", pose, None, [torso_centre(keypoints)], [obj], meta)
    tracks = object_tracks(spec, num_frames)
    far_to_near = sorted(tracks, key=lambda tr: -float(np.mean(tr["z"])))
    frames, depth = render_objects(far_to_near, spec["background"], size)
    objects = [
        {
            "colour": o["colour"],
            "shape": o["shape"],
            "motion": o["motion"],
            "radius": float(tr["radii"][0]),
            "radii": tr["radii"].astype(np.float32),
            "z": tr["z"].astype(np.float32),
            "depth_value": depth_value(tr["z"]).astype(np.float32),
            "curved": spec["kind"] == "path",
        }
        for o, tr in zip(spec["objects"], tracks)
    ]
    paths = [tr["centres"].astype(np.float32) for tr in tracks]
    meta["relation"] = spec.get("relation")
    return Clip(frames, caption, spec["kind"], None, depth, paths, objects, meta)


def sample_clip(rng: np.random.Generator, num_frames: int = 16, size: int = 64, kind: str | None = None) -> Clip:
    """A fresh random clip: make_clip(sample_spec(rng, kind), num_frames, size)."""
    return make_clip(sample_spec(rng, kind), num_frames, size)


# ------------------------------------------------------------------------------------------------- presets
POSE_PRESETS: dict[str, dict] = {
    "walk": {"direction": "right", "distance": 0.4, "x0": 0.3, "cycles": 1.5, "swing_deg": 25.0, "phase": 0.0},
    "wave": {"x0": 0.5, "arm": "r", "cycles": 2.0, "phase": 0.0},
    "jump": {"x0": 0.5, "jumps": 1, "height": 0.14, "phase": 0.0},
    "squat": {"x0": 0.5, "squats": 1, "depth": 0.2, "phase": 0.0},
}


def pose_clip(action: str, num_frames: int = 16, size: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """A preset OpenPose skeleton clip (F, S, S, 3) uint8 for `action` (random variation when rng is given)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    if rng is not None:
        spec = _person_spec(rng, action)
    else:
        height = 0.65 if action == "jump" else 0.72
        spec = {"kind": "person", "action": action, "height": height, "ground": 0.95, "params": POSE_PRESETS[action]}
    return pose_frames(person_keypoints(spec, num_frames), size)


def _still(colour: str, shape: str, pos: list[float], z: float) -> dict:
    return {"colour": colour, "shape": shape, "motion": "still", "z0": z, "z1": z, "start": pos, "end": pos}


DEPTH_PRESETS: dict[str, dict] = {
    "approach": {"kind": "depth", "background": "black", "relation": None, "objects": [
        {**_still("white", "circle", [0.5, 0.5], 2.4), "motion": "closer", "z1": 1.1}]},
    "recede": {"kind": "depth", "background": "black", "relation": None, "objects": [
        {**_still("white", "circle", [0.5, 0.5], 1.1), "motion": "away", "z1": 2.4}]},
    "pass": {"kind": "depth", "background": "black", "relation": "front", "objects": [
        {**_still("red", "square", [0.22, 0.55], 1.3), "motion": "right", "end": [0.78, 0.55]},
        _still("blue", "circle", [0.5, 0.45], 2.2)]},
    "two-objects": {"kind": "depth", "background": "black", "relation": "front", "objects": [
        _still("red", "circle", [0.33, 0.6], 1.2), _still("blue", "square", [0.7, 0.35], 2.2)]},
    "three-objects": {"kind": "depth", "background": "black", "relation": "front", "objects": [
        _still("red", "circle", [0.28, 0.68], 1.1), _still("green", "triangle", [0.72, 0.68], 1.8),
        _still("blue", "square", [0.5, 0.28], 2.6)]},
}  # fmt: skip


def depth_clip(name_or_rng: str | np.random.Generator, num_frames: int = 16, size: int = 64) -> np.ndarray:
    """A depth control clip (F, S, S) uint8: a named preset (DEPTH_PRESETS) or a random depth scene."""
    if isinstance(name_or_rng, np.random.Generator):
        spec = sample_spec(name_or_rng, "depth")
    elif name_or_rng in DEPTH_PRESETS:
        spec = DEPTH_PRESETS[name_or_rng]
    else:
        raise ValueError(f"depth preset must be one of {tuple(DEPTH_PRESETS)}, got {name_or_rng!r}")
    return make_clip(spec, num_frames, size).depth

