"""The layout planner: its targets, its geometry, a small one trained here, the shipped one, and its place in the
pipeline (text-only requests get planned motion strokes; anything that already gives the layout does not)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vdemo import world
from vdemo.backends.tiny import ASSETS, TinyBackend
from vdemo.eval import eval_planner
from vdemo.models.planner import (
    ANCHOR_BELOW,
    FRAME_BOX,
    MIN_GAP,
    PLANNER_DIR,
    SLOTS,
    Planner,
    _bezier_path,
    canonical_prompt,
    fit_from,
    fit_inside,
)
from vdemo.pipeline import Done, GenerationRequest, RequestError, VideoPipeline
from vdemo.strokes import Stroke, resample_stroke, stroke_positions
from vdemo.train_planner import caption_targets, negative_caption, path_targets
from vdemo.world.palette import MOTIONS, nearest_direction

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ geometry
def test_path_targets_of_a_straight_and_a_bent_path():
    t = np.linspace(0, 1, 33)[:, None]
    straight = np.array([0.2, 0.5]) + t * np.array([0.4, 0.0])
    assert np.allclose(path_targets(straight), [0.2, 0.5, 0.4, 0.0, 0.0], atol=1e-6)
    bent = _bezier_path(np.array([0.2, 0.5]), np.array([0.4, 0.0]), bend=0.15)
    x, y, dx, dy, bend = path_targets(bent)
    assert (x, y, dx, dy) == pytest.approx((0.2, 0.5, 0.4, 0.0), abs=1e-6)
    assert bend == pytest.approx(0.15, abs=0.01)  # normal of a rightward chord points down (+y): the curve sags
    assert bent[16, 1] == pytest.approx(0.65, abs=1e-6)  # the Bezier's parameter midpoint is the bent midpoint


def test_fit_inside_moves_without_turning_and_shrinks_only_what_is_too_big():
    lo, hi = FRAME_BOX
    path = np.array([[0.7, 0.5], [1.0, 0.5]])  # runs off the right edge
    moved = fit_inside(path)
    assert moved.min() >= lo - 1e-9 and moved.max() <= hi + 1e-9
    assert np.allclose(np.diff(moved, axis=0), np.diff(path, axis=0))  # same displacement: moved, not turned
    inside = np.array([[0.3, 0.3], [0.6, 0.4]])
    assert np.allclose(fit_inside(inside), inside)  # already inside: untouched
    long = np.array([[0.0, 0.5], [1.0, 0.5]])
    shrunk = fit_inside(long)
    assert shrunk[0, 0] == pytest.approx(lo) and shrunk[1, 0] == pytest.approx(hi)
    assert nearest_direction(*(shrunk[1] - shrunk[0])) == "right"


def test_fit_from_keeps_the_start_and_the_direction_and_shortens_to_fit():
    lo, hi = FRAME_BOX
    path = np.array([[0.5, 0.5], [0.7, 0.3], [1.1, 0.1]])
    fitted = fit_from(path)
    assert np.allclose(fitted[0], path[0]) and fitted.max() <= hi + 1e-9 and fitted.min() >= lo - 1e-9
    assert np.allclose(np.cross(fitted[-1] - fitted[0], path[-1] - path[0]), 0.0, atol=1e-12)  # same line
    edge = np.array([[0.95, 0.5], [0.6, 0.5]])  # starts outside the box (an object at the edge): kept, moves left
    assert np.allclose(fit_from(edge), edge)
    assert np.allclose(fit_from(np.array([[0.3, 0.3]])), [[0.3, 0.3]])


def test_caption_targets_per_kind():
    rng = np.random.default_rng(0)
    seen = set()
    while len(seen) < 5:
        spec = world.sample_spec(rng)
        present, targets = caption_targets(spec)
        kind = spec["kind"]
        if kind == "person":
            assert present.sum() == 0
        elif kind == "depth":
            actor_moves_in_depth = spec["objects"][0]["motion"] in ("closer", "away")
            assert present.tolist() == ([0.0] * SLOTS if actor_moves_in_depth else [1.0] + [0.0] * (SLOTS - 1))
            kind += "-z" if actor_moves_in_depth else "-planar"
        else:
            assert present.sum() == len(spec["objects"])
            for obj, (x, y, dx, dy, bend) in zip(spec["objects"], targets):
                if obj["motion"] == "still":
                    assert math.hypot(dx, dy) < 1e-6
                else:
                    assert nearest_direction(dx, dy) == obj["motion"]
                assert (bend == 0.0) == (kind == "objects")
        seen.add(kind)


@pytest.mark.parametrize(("prompt", "canonical"), [
    ("a red ball moving to the right", "a red circle moves right"),
    ("Red square, going UP LEFT!", "red square moves up-left"),
    ("a grey circle that slides down on a grey background", "a gray circle moves down on a gray background"),
    ("a red circle bounces", "a red circle"),
    ("", ""),
])
def test_canonical_prompt_keeps_only_the_grammar_words(prompt, canonical):
    assert canonical_prompt(prompt) == canonical


def test_negative_captions_name_nothing_to_plan():
    rng = np.random.default_rng(1)
    caption = "a red circle moves right and a blue square stays still on a black background"
    outs = {negative_caption(caption, rng) for _ in range(60)}
    assert {"", "a red circle", "on a black background"} <= outs  # nothing, an object without a verb, no object
    assert any("moves" in out for out in outs)  # a verb without a direction it knows
    for out in outs:  # no motion word survives in any of them
        assert not set(out.split()) & (set(MOTIONS) | {"closer", "away"})


# ------------------------------------------------------------------------------------------- a small planner
@pytest.fixture(scope="module")
def planner(small_planner_dir) -> Planner:
    return Planner.from_pretrained(small_planner_dir, TinyBackend.random().tokenizer)


class _Pipe:
    def __init__(self, planner):
        self.backend = type("B", (), {"planner": planner})()


def test_a_small_planner_learns_the_layouts_of_held_out_captions(planner):
    scores = eval_planner(_Pipe(planner), None, "full")
    assert scores["presence_acc"] >= 0.8 and scores["direction_acc"] >= 0.8, scores


def test_plans_are_seeded_inside_the_frame_and_follow_the_caption(planner):
    a = planner.plan("a red circle moves right on a black background", seed=3)
    assert a == planner.plan("a red circle moves right on a black background", seed=3)
    b = planner.plan("a red circle moves right on a black background", seed=4)
    assert a.directions == b.directions == ("right",) and a.strokes != b.strokes
    for plan in (a, b):
        points = np.array(plan.strokes[0].points)
        assert points.min() >= FRAME_BOX[0] - 1e-9 and points.max() <= FRAME_BOX[1] + 1e-9
        assert points[-1, 0] - points[0, 0] > 0.15  # a real move, not a twitch
    up = planner.plan("a blue square moves up", seed=0)
    assert up.directions == ("up",) and up.strokes[0].points[-1][1] < up.strokes[0].points[0][1]


def test_nothing_is_planned_for_empty_junk_or_person_prompts(planner):
    for prompt in ("", "   ", "hello nice video", "a red person waves"):
        assert not planner.plan(prompt, seed=0), prompt


def test_a_still_object_is_planned_as_an_anchor(planner):
    plan = planner.plan("a green triangle stays still on a gray background", seed=0)
    assert plan.directions == ("still",)
    stroke = plan.strokes[0]
    assert stroke.is_anchor and len(stroke.points) == 1
    assert math.hypot(*np.subtract(stroke.points[0], (0.5, 0.5))) < 0.5
    assert ANCHOR_BELOW < 0.05


def test_with_a_first_frame_paths_start_at_the_objects_it_shows(planner):
    from vdemo.eval import held_out_specs

    right = total = 0
    for spec in held_out_specs("objects", 12, lambda sp: True):
        clip = world.make_clip(spec, 16, 64)
        plan = planner.plan(clip.caption, seed=0, first_frame=clip.frames[0])
        assert 1 <= len(plan.strokes) <= len(clip.objects), clip.caption  # a 600-step planner may miss a slot
        for obj, path, stroke, word in zip(clip.objects, clip.paths, plan.strokes, plan.directions):
            assert math.dist(stroke.points[0], path[0]) < 0.02  # found by its colour, not by its slot
            total += 1
            right += word == obj["motion"]
    assert right >= 0.8 * total
    blank = np.full((64, 64, 3), 128, np.uint8)
    assert not planner.plan("a red circle moves right", seed=0, first_frame=blank)  # nothing there to move
    only_blue = world.make_clip({"kind": "objects", "background": "black", "shared_motion": False, "objects": [
        {"colour": "blue", "shape": "square", "radius": 0.15, "motion": "still", "start": [0.3, 0.3],
         "end": [0.3, 0.3]}]}, 2, 64).frames[0]
    assert not planner.plan("a red circle moves right", seed=0, first_frame=only_blue)  # no red object in it


def test_two_objects_get_two_paths_kept_apart(planner):
    hits = 0
    for seed in range(6):
        plan = planner.plan("a red circle moves left and a blue square moves right on a black background", seed)
        assert len(plan.strokes) == 2
        hits += plan.directions == ("left", "right")
        paths = [np.array(s.points) for s in plan.strokes]
        gap = np.linalg.norm(resample_stroke(paths[0], 16) - resample_stroke(paths[1], 16), axis=1).min()
        assert gap >= MIN_GAP * 0.5
    assert hits >= 4


# ----------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def planned_pipe(planner) -> VideoPipeline:
    backend = TinyBackend.random(seed=0)
    backend.planner = planner
    return VideoPipeline(backend)


def _done(pipe, **kw) -> Done:
    base = dict(prompt="a red circle moves down on a black background", num_frames=6, height=48, width=48,
                num_steps=2, seed=5)
    return [e for e in pipe.generate(GenerationRequest(**{**base, **kw})) if isinstance(e, Done)][0]


def test_text_only_requests_are_planned_and_the_plan_reaches_the_model(planned_pipe, monkeypatch):
    backend = planned_pipe.backend
    seen = []
    real = backend.prepare
    monkeypatch.setattr(backend, "prepare", lambda request: seen.append(request) or real(request))
    done = _done(planned_pipe)
    plan = done.manifest["motion_plan"]
    assert plan["by"] == "layout planner" and plan["directions"] == ["down"]
    assert done.manifest["request"]["strokes"] == [] and done.manifest["request"]["plan_motion"] is True
    strokes = seen[-1].strokes  # what the model was given: the planned stroke
    assert len(strokes) == 1 and isinstance(strokes[0], Stroke)
    path = stroke_positions(strokes, 6)[0]  # (F, 2)
    assert path[-1, 1] - path[0, 1] > 0.15 and abs(path[-1, 0] - path[0, 0]) < 0.05
    assert np.allclose(np.array(plan["strokes"][0]["points"]), np.array(strokes[0].points), atol=1e-4)
    assert done.manifest["layout_planner"] is True


def test_no_plan_when_switched_off_or_the_layout_is_given(planned_pipe):
    image = np.zeros((48, 48, 3), np.uint8)
    pose = np.zeros((6, 48, 48, 3), np.uint8)
    stroke = (Stroke(((0.5, 0.5),), 0.1),)
    for kw in ({"plan_motion": False}, {"image": image}, {"pose": pose}, {"strokes": stroke}, {"prompt": ""},
               {"prompt": "a red person jumps"}, {"keyframes": ((5, image),)}):
        assert _done(planned_pipe, **kw).manifest["motion_plan"] is None, kw


def test_image_to_video_with_a_caption_plans_from_the_object_in_the_image(planned_pipe):
    spec = {"kind": "objects", "background": "black", "shared_motion": False, "objects": [
        {"colour": "red", "shape": "circle", "radius": 0.15, "motion": "still", "start": [0.3, 0.6],
         "end": [0.3, 0.6]}]}
    frame = world.make_clip(spec, 2, 48).frames[0]
    plan = _done(planned_pipe, image=frame, prompt="a red circle moves right").manifest["motion_plan"]
    assert plan["directions"] == ["right"]
    points = np.array(plan["strokes"][0]["points"])
    assert np.allclose(points[0], [0.3, 0.6], atol=0.03) and points[-1, 0] > 0.45


def test_plan_motion_must_be_a_bool():
    with pytest.raises(RequestError, match="plan_motion must be true or false"):
        GenerationRequest(prompt="x", plan_motion="yes")


def test_backend_without_a_planner_plans_nothing():
    done = _done(VideoPipeline(TinyBackend.random(seed=0)))
    assert done.manifest["motion_plan"] is None and done.manifest["layout_planner"] is False


# ------------------------------------------------------------------------------------------- the shipped one
def test_the_shipped_planner_is_loaded_and_exact_on_held_out_captions():
    assert (ASSETS / PLANNER_DIR / "config.json").exists()
    backend = TinyBackend.from_pretrained(ASSETS)
    assert backend.planner is not None
    scores = eval_planner(VideoPipeline(backend), None, "full")
    assert scores["presence_acc"] >= 0.98 and scores["direction_acc"] >= 0.98, scores
    said = {"a red ball moving to the right": ("right",), "red square, going down": ("down",),
            "a blue square that slides up left": ("up-left",), "a yellow circle and a blue square move left":
            ("left", "left"), "a red circle bounces": (), "a cat moves right": (), "an orange person waves": ()}
    for prompt, directions in said.items():
        assert backend.planner.plan(prompt, seed=0).directions == directions, prompt
