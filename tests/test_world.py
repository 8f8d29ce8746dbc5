"""The procedural world: determinism, shapes, captions, geometry, depth, pose parity, detector accuracy, speed."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from vdemo.world import (
    ACTIONS,
    BACKGROUNDS,
    COLOURS,
    DEPTH_PRESETS,
    KINDS,
    MOTIONS,
    SHAPES,
    VOCAB,
    depth_clip,
    make_clip,
    parse_caption,
    pose_clip,
    sample_clip,
    sample_spec,
)
from vdemo.world.detect import detect_objects, estimate_background
from vdemo.world.palette import MIN_OBJECT_BACKGROUND_DIST
from vdemo.world.person import NECK, POSE_DRAW_SIDE, person_keypoints, pose_frames
from vdemo.world.render import shape_extent

F, S = 16, 64


def _clips(seed: int, kind: str | None, n: int):
    rng = np.random.default_rng(seed)
    return [sample_clip(rng, F, S, kind) for _ in range(n)]


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_clip(kind):
    a, b = _clips(3, kind, 3), _clips(3, kind, 3)
    for x, y in zip(a, b):
        assert x.caption == y.caption
        np.testing.assert_array_equal(x.frames, y.frames)
        for p, q in zip(x.paths, y.paths):
            np.testing.assert_array_equal(p, q)
    assert [c.caption for c in _clips(4, kind, 3)] != [c.caption for c in a]


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_dtypes(kind):
    for clip in _clips(0, kind, 5):
        assert clip.kind == kind
        assert clip.frames.shape == (F, S, S, 3) and clip.frames.dtype == np.uint8
        assert len(clip.paths) == len(clip.objects) >= 1
        for path in clip.paths:
            assert path.shape == (F, 2) and path.dtype == np.float32
            assert (path >= 0).all() and (path <= 1).all()
        if kind == "person":
            assert clip.pose.shape == (F, S, S, 3) and clip.pose.dtype == np.uint8
            assert clip.depth is None
            assert clip.meta["keypoints"].shape == (F, 18, 2)
        else:
            assert clip.pose is None
            assert clip.depth.shape == (F, S, S) and clip.depth.dtype == np.uint8
        json.dumps(clip.meta["spec"])  # specs are plain data: the eval stores them


def test_other_sizes_and_lengths():
    rng = np.random.default_rng(1)
    for kind in KINDS:
        clip = sample_clip(rng, num_frames=8, size=96, kind=kind)
        assert clip.frames.shape == (8, 96, 96, 3)
        assert clip.paths[0].shape == (8, 2)


def test_make_clip_is_deterministic_from_spec():
    spec = sample_spec(np.random.default_rng(5), "depth")
    a, b = make_clip(spec, F, S), make_clip(json.loads(json.dumps(spec)), F, S)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.depth, b.depth)


def test_random_kinds_cover_all():
    rng = np.random.default_rng(0)
    assert {sample_spec(rng)["kind"] for _ in range(200)} == set(KINDS)


def test_palette_contract():
    assert {"red", "green", "blue", "yellow", "purple", "orange", "white"} <= set(COLOURS)
    assert set(BACKGROUNDS) == {"black", "white", "gray"}
    assert SHAPES == ("circle", "square", "triangle") and ACTIONS == ("walk", "wave", "jump", "squat")
    names = list(COLOURS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.linalg.norm(np.subtract(COLOURS[a], COLOURS[b])) >= 100, (a, b)
    for direction, (dx, dy) in MOTIONS.items():
        assert np.hypot(dx, dy) == pytest.approx(0.0 if direction == "still" else 1.0)


# ------------------------------------------------------------------------------------------------ captions
def _expected(spec: dict) -> dict:
    """What parse_caption must recover from the caption of `spec`."""
    if spec["kind"] == "person":
        direction = spec["params"].get("direction")
        objects = [{"colour": spec["colour"], "shape": "person", "motion": direction}]
        return {"objects": objects, "action": spec["action"], "direction": direction}
    objects = [{"colour": o["colour"], "shape": o["shape"], "motion": o["motion"]} for o in spec["objects"]]
    if spec["kind"] == "depth":
        for o in objects[1:]:
            o["motion"] = None  # the static objects of a depth scene have no verb
    return {"objects": objects, "action": None, "relation": spec.get("relation"), "curved": spec["kind"] == "path"}


def test_every_caption_parses_back_to_its_spec():
    rng = np.random.default_rng(0)
    for _ in range(400):
        clip = make_clip(sample_spec(rng), 4, 32)
        spec = clip.meta["spec"]
        parsed = parse_caption(clip.caption)
        for key, value in _expected(spec).items():
            assert parsed[key] == value, (clip.caption, key, parsed[key], value)
        assert parsed["background"] == (spec["background"] if spec["say_background"] else None), clip.caption
        single_lateral_depth = spec["kind"] == "depth" and parsed["relation"] is None
        if not single_lateral_depth or spec["objects"][0]["motion"] in ("closer", "away"):
            assert parsed["kind"] == spec["kind"], clip.caption


def test_vocab_covers_every_caption_word():
    rng = np.random.default_rng(1)
    vocab = set(VOCAB)
    assert VOCAB == sorted(vocab) and all(w == w.lower() for w in VOCAB)
    for _ in range(400):
        caption = make_clip(sample_spec(rng), 2, 16).caption
        assert set(caption.split(" ")) <= vocab, caption


def test_parse_accepts_any_vocab_prompt_and_unknown_words():
    rng = np.random.default_rng(2)
    for _ in range(300):
        words = [VOCAB[i] for i in rng.integers(len(VOCAB), size=int(rng.integers(0, 15)))]
        parsed = parse_caption(" ".join(words))
        assert set(parsed) >= {"objects", "background", "action", "kind"}
    parsed = parse_caption("Please: a shiny RED ball, moving up left on a grey background!!")
    assert parsed["objects"] == [{"colour": "red", "shape": "circle", "motion": "up-left"}]
    assert parsed["background"] == "gray"
    assert parse_caption("")["kind"] is None
    assert parse_caption("a person waves")["action"] == "wave"


def test_caption_examples():
    assert parse_caption("a blue square and a yellow triangle move down on a gray background")["objects"] == [
        {"colour": "blue", "shape": "square", "motion": "down"},
        {"colour": "yellow", "shape": "triangle", "motion": "down"},
    ]
    parsed = parse_caption("a green triangle stays still on a white background")
    assert parsed["objects"][0]["motion"] == "still" and parsed["background"] == "white"
    parsed = parse_caption("a white circle moves closer in front of a red square")
    assert parsed["kind"] == "depth" and parsed["relation"] == "front"


# ------------------------------------------------------------------------------------------------ geometry
def _spec_objects(motion: str, shape: str = "circle") -> dict:
    obj = {"colour": "red", "shape": shape, "radius": 0.18, "motion": motion}
    end = {"right": [0.7, 0.5], "still": [0.3, 0.5]}[motion]
    obj |= {"start": [0.3, 0.5], "end": end}
    return {"kind": "objects", "background": "black", "objects": [obj], "shared_motion": True, "say_background": True}


def test_right_moves_right_and_still_stays():
    path = make_clip(_spec_objects("right"), F, S).paths[0]
    assert (np.diff(path[:, 0]) > 0).all() and np.ptp(path[:, 1]) == 0
    path = make_clip(_spec_objects("still"), F, S).paths[0]
    assert np.ptp(path, axis=0).max() == 0


def test_sampled_motions_follow_their_words():
    for clip in _clips(6, "objects", 60):
        for obj, path in zip(clip.objects, clip.paths):
            shift = path[-1] - path[0]
            ux, uy = MOTIONS[obj["motion"]]
            if obj["motion"] == "still":
                assert np.abs(shift).max() == 0
            else:
                assert np.linalg.norm(shift) >= 0.25  # a clearly visible distance
                assert (shift[0] * ux + shift[1] * uy) / np.linalg.norm(shift) > 0.99
                steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
                assert np.ptp(steps) < 1e-5  # constant speed


def test_path_kind_is_curved_constant_speed():
    for clip in _clips(7, "path", 20):
        path = clip.paths[0].astype(np.float64)
        steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
        assert np.ptp(steps) / steps.mean() < 0.05
        chord = path[-1] - path[0]
        normal = np.array([-chord[1], chord[0]]) / np.linalg.norm(chord)
        assert np.abs((path - path[0]) @ normal).max() > 0.05  # not a straight line


@pytest.mark.parametrize("kind", ["objects", "path", "depth"])
def test_objects_stay_inside_the_frame(kind):
    for clip in _clips(8, kind, 40):
        for obj, path in zip(clip.objects, clip.paths):
            for (x, y), r in zip(path, obj["radii"]):
                left, right, up, down = shape_extent(obj["shape"], float(r))
                assert x - left >= 0 and x + right <= 1 and y - up >= 0 and y + down <= 1
        bg = np.array(BACKGROUNDS[clip.meta["background"]])
        edges = np.concatenate([clip.frames[:, 0], clip.frames[:, -1], clip.frames[:, :, 0], clip.frames[:, :, -1]], 1)
        assert (edges == bg).all()


def test_two_objects_never_overlap_and_differ_in_colour():
    clips = [c for c in _clips(9, "objects", 80) if len(c.objects) == 2]
    assert len(clips) > 20
    for clip in clips:
        a, b = clip.objects
        assert a["colour"] != b["colour"]
        gap = np.linalg.norm(clip.paths[0] - clip.paths[1], axis=1)
        assert (gap >= max(shape_extent(a["shape"], a["radius"])) + max(shape_extent(b["shape"], b["radius"]))).all()


def test_object_colour_contrasts_with_background():
    for clip in _clips(10, None, 100):
        bg = np.array(BACKGROUNDS[clip.meta["background"]])
        for obj in clip.objects:
            assert np.linalg.norm(np.subtract(COLOURS[obj["colour"]], bg)) >= MIN_OBJECT_BACKGROUND_DIST


# --------------------------------------------------------------------------------------------------- depth
def test_depth_nearer_is_larger_brighter_and_occludes():
    near = {"colour": "red", "shape": "square", "motion": "still", "z0": 1.2, "z1": 1.2}
    far = {"colour": "blue", "shape": "circle", "motion": "still", "z0": 2.4, "z1": 2.4}
    near |= {"start": [0.45, 0.5], "end": [0.45, 0.5]}
    far |= {"start": [0.6, 0.5], "end": [0.6, 0.5]}
    spec = {"kind": "depth", "background": "black", "relation": "behind", "say_background": True}
    clip = make_clip(spec | {"objects": [far, near]}, 4, S)  # listed far first; drawing order must follow depth
    far_obj, near_obj = clip.objects
    assert near_obj["radius"] > far_obj["radius"]
    assert near_obj["depth_value"][0] > far_obj["depth_value"][0]
    overlap = (int(0.52 * S), int(0.5 * S))  # inside both shapes
    assert tuple(clip.frames[0][overlap[1], overlap[0]]) == COLOURS["red"]
    assert clip.depth[0][overlap[1], overlap[0]] == round(float(near_obj["depth_value"][0]))
    far_only = (int(0.65 * S), int(0.5 * S))
    assert tuple(clip.frames[0][far_only[1], far_only[0]]) == COLOURS["blue"]
    assert clip.depth[0][far_only[1], far_only[0]] < clip.depth[0][overlap[1], overlap[0]]
    assert clip.depth[0][0, 0] == 0  # background is far


def test_sampled_depth_scenes_are_consistent():
    for clip in _clips(11, "depth", 40):
        actor, *others = clip.objects
        z = np.array([o["z"] for o in clip.objects])  # (N, F)
        assert np.allclose(np.array([o["radii"] for o in clip.objects]) * z, 0.22, atol=1e-5)  # radius ∝ 1/z
        if clip.meta["relation"] == "front":
            assert (z[0] < z[1:].min(axis=0)).all()
        elif clip.meta["relation"] == "behind":
            assert (z[0] > z[1:].max(axis=0)).all()
        if actor["motion"] == "closer":
            assert actor["radii"][-1] > 1.25 * actor["radii"][0]
            assert actor["depth_value"][-1] > actor["depth_value"][0]
        if actor["motion"] == "away":
            assert actor["radii"][-1] < actor["radii"][0] / 1.25


def test_depth_presets():
    for name in DEPTH_PRESETS:
        depth = depth_clip(name, F, S)
        assert depth.shape == (F, S, S) and depth.dtype == np.uint8 and depth.max() > 0
    approach = depth_clip("approach", F, S)
    assert (approach[-1] > 0).sum() > 2 * (approach[0] > 0).sum()
    assert depth_clip(np.random.default_rng(0), 8, 32).shape == (8, 32, 32)
    with pytest.raises(ValueError, match="depth preset"):
        depth_clip("nope")


# ---------------------------------------------------------------------------------------------------- pose
def test_pose_frames_equal_controlnet_aux_draw_bodypose():
    util = pytest.importorskip("controlnet_aux.open_pose.util")
    body = pytest.importorskip("controlnet_aux.open_pose.body")
    import cv2

    rng = np.random.default_rng(12)
    for action in ACTIONS:
        spec = sample_spec(rng, "person", action=action)
        keypoints = person_keypoints(spec, 6)
        for size in (64, 128):
            mine = pose_frames(keypoints, size)
            for frame_kp, frame in zip(keypoints, mine):
                kps = [None if np.isnan(p).any() else body.Keypoint(float(p[0]), float(p[1])) for p in frame_kp]
                canvas = util.draw_bodypose(np.zeros((POSE_DRAW_SIDE, POSE_DRAW_SIDE, 3), np.uint8), kps)
                expected = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
                np.testing.assert_array_equal(frame, expected)


@pytest.mark.parametrize("action", ACTIONS)
def test_person_actions(action):
    rng = np.random.default_rng(13)
    for _ in range(5):
        clip = make_clip(sample_spec(rng, "person", action=action), F, S)
        spec = clip.meta["spec"]
        assert spec["action"] == action
        kp = clip.meta["keypoints"]
        valid = kp[~np.isnan(kp).any(axis=2)]
        assert (valid >= 0).all() and (valid <= 1).all()
        assert clip.caption.split(" ")[2] == "person"
        torso = clip.paths[0]
        if action == "walk":
            sign = 1 if spec["params"]["direction"] == "right" else -1
            assert sign * (torso[-1, 0] - torso[0, 0]) >= 0.25
        elif action == "jump":
            assert np.ptp(kp[:, NECK, 1]) > 0.08  # goes up and down
        elif action == "squat":
            assert np.ptp(kp[:, NECK, 1]) > 0.08
        elif action == "wave":
            assert np.ptp(torso, axis=0).max() == 0  # stays in place


def test_figure_height_and_pose_presets():
    for clip in _clips(14, "person", 20):
        kp = clip.meta["keypoints"][0]
        height = (np.nanmax(kp[:, 1]) - np.nanmin(kp[:, 1])) / clip.meta["spec"]["height"]
        assert 0.75 < height < 1.1  # keypoints span nose-to-ankle of a 0.6-0.8 figure
        assert 0.6 <= clip.meta["spec"]["height"] <= 0.8
        assert (clip.frames != clip.frames[:, :1, :1]).any()  # the figure is visible
    for action in ACTIONS:
        pose = pose_clip(action, F, S)
        assert pose.shape == (F, S, S, 3) and pose.dtype == np.uint8 and pose.max() > 100
        np.testing.assert_array_equal(pose, pose_clip(action, F, S))
        assert pose_clip(action, 4, 32, rng=np.random.default_rng(0)).shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="action"):
        pose_clip("dance")


# ------------------------------------------------------------------------------------------------ detector
def _detector_scores(sigma: float, n: int = 80) -> tuple[float, float, float]:
    noise = np.random.default_rng(99)
    hits_colour = hits_shape = total = 0
    worst_px = 0.0
    for clip in _clips(15, "objects", n):
        for f in (0, F // 2, F - 1):
            frame = clip.frames[f]
            if sigma:
                frame = np.clip(frame + noise.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)
            dets = detect_objects(frame, max_objects=2)
            for obj, path in zip(clip.objects, clip.paths):
                total += 1
                if not dets:
                    continue
                det = min(dets, key=lambda d: np.hypot(d.centre[0] - path[f, 0], d.centre[1] - path[f, 1]))
                hits_colour += det.colour == obj["colour"]
                hits_shape += det.shape == obj["shape"]
                worst_px = max(worst_px, float(np.hypot(*(np.subtract(det.centre, path[f]) * S))))
    return hits_colour / total, hits_shape / total, worst_px


def test_detector_on_clean_renders():
    colour, shape, worst_px = _detector_scores(0.0)
    print(f"\nclean: colour {colour:.3f} shape {shape:.3f} worst centre error {worst_px:.2f}px")
    assert colour == 1.0 and shape >= 0.95 and worst_px < 1.5


def test_detector_on_noisy_renders():
    colour, shape, worst_px = _detector_scores(15.0)
    print(f"\nsigma 15: colour {colour:.3f} shape {shape:.3f} worst centre error {worst_px:.2f}px")
    assert colour >= 0.95


def test_detector_ignores_specks_and_finds_background():
    noise = np.random.default_rng(0)
    for name, rgb in BACKGROUNDS.items():
        frame = np.clip(np.full((S, S, 3), rgb, np.float32) + noise.normal(0, 15, (S, S, 3)), 0, 255).astype(np.uint8)
        assert np.abs(np.subtract(estimate_background(frame), rgb)).max() <= 8, name
        frame[10, 10] = COLOURS["red"] if name != "white" else COLOURS["blue"]  # a one-pixel speck
        assert detect_objects(frame) == []


# --------------------------------------------------------------------------------------------------- speed
def test_sample_clip_is_fast():
    rng = np.random.default_rng(16)
    lines = []
    for kind in (*KINDS, None):
        sample_clip(rng, F, S, kind)
        start = time.perf_counter()
        for _ in range(20):
            sample_clip(rng, F, S, kind)
        ms = (time.perf_counter() - start) / 20 * 1e3
        lines.append(f"{kind or 'mixed'} {ms:.2f} ms")
        assert ms < 50, lines[-1]
    print("\nsample_clip (16 x 64 x 64): " + ", ".join(lines))


def test_curved_paths_resample_by_arc_length_as_the_strokes_do():
    """Path clips resample their Bezier with vdemo.strokes.resample_stroke (kept in float64): the same numbers, to the
    bit, as the world's own copy of arc-length resampling that it replaced."""
    from vdemo.world import object_tracks

    def old_resample_by_length(points: np.ndarray, num: int) -> np.ndarray:
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        if cum[-1] <= 0.0:
            return np.repeat(points[:1], num, axis=0)
        target = np.linspace(0.0, cum[-1], num)
        return np.stack([np.interp(target, cum, points[:, k]) for k in range(2)], axis=1)

    rng = np.random.default_rng(7)
    for _ in range(20):
        spec = sample_spec(rng, "path")
        control = np.asarray(spec["objects"][0]["control"])
        t = np.linspace(0.0, 1.0, 256)[:, None]
        p0, p1, p2, p3 = control
        curve = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
        for num_frames in (2, 16, 33):
            centres = object_tracks(spec, num_frames)[0]["centres"]
            assert centres.dtype == np.float64
            assert np.array_equal(centres, old_resample_by_length(curve, num_frames))
    still = np.array([[0.3, 0.4]] * 5)
    from vdemo.strokes import resample_stroke

    assert np.array_equal(resample_stroke(still, 4, dtype=np.float64), old_resample_by_length(still, 4))
