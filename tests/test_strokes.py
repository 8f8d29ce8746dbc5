"""Motion strokes: parsing errors, arc-length resampling, heatmaps, region masks, ground truth, overlay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vdemo.config import DEFAULTS, LIMITS
from vdemo.strokes import (
    MAX_STROKE_RADIUS,
    Stroke,
    draw_strokes_overlay,
    parse_strokes,
    resample_stroke,
    stroke_heatmaps,
    stroke_positions,
    stroke_region_masks,
    strokes_from_paths,
    strokes_to_data,
)

L_SHAPE = [(0.1, 0.1), (0.5, 0.1), (0.5, 0.5)]  # length 0.8: with 9 frames, one frame every 0.1


def _l_expected() -> np.ndarray:
    return np.array([(0.1 + 0.1 * k, 0.1) for k in range(5)] + [(0.5, 0.1 + 0.1 * k) for k in range(1, 5)])


def test_l_shaped_stroke_is_resampled_by_arc_length():
    out = resample_stroke(L_SHAPE, 9)
    assert out.shape == (9, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, _l_expected(), atol=1e-6)
    along = np.abs(np.diff(out, axis=0)).sum(axis=1)  # L1 step = path length between frames on an axis-aligned L
    np.testing.assert_allclose(along, 0.1, atol=1e-6)


def test_resampling_ignores_how_densely_the_stroke_was_drawn():
    rng = np.random.default_rng(0)
    first = np.sort(rng.uniform(0.1, 0.5, 40))
    second = np.sort(rng.uniform(0.1, 0.5, 7))
    dense = [(0.1, 0.1), *[(x, 0.1) for x in first], (0.5, 0.1), (0.5, 0.1)]  # a repeated corner point too
    dense += [*[(0.5, y) for y in second], (0.5, 0.5)]
    np.testing.assert_allclose(resample_stroke(dense, 9), _l_expected(), atol=1e-6)


def test_first_and_last_points_are_kept():
    pts = np.random.default_rng(1).uniform(0, 1, (30, 2))
    for num_frames in (2, 5, 16, 32):
        out = resample_stroke(pts, num_frames)
        np.testing.assert_array_equal(out[0], pts[0].astype(np.float32))
        np.testing.assert_array_equal(out[-1], pts[-1].astype(np.float32))


@pytest.mark.parametrize("points", [[(0.3, 0.7)], [(0.3, 0.7), (0.3, 0.7), (0.3, 0.7)]])
def test_anchor_is_constant(points):
    out = resample_stroke(points, 16)
    np.testing.assert_array_equal(out, np.tile(np.float32([0.3, 0.7]), (16, 1)))
    assert Stroke(tuple(points), 0.1).is_anchor


def test_positions_shape():
    strokes = [Stroke(tuple(L_SHAPE), 0.1), Stroke(((0.5, 0.5),), 0.05)]
    assert stroke_positions(strokes, 16).shape == (2, 16, 2)
    assert stroke_positions([], 16).shape == (0, 16, 2)


def test_heatmap_peaks_at_the_resampled_point():
    strokes = [Stroke(tuple(L_SHAPE), 0.1)]
    size = 64
    heat = stroke_heatmaps(strokes, 9, size)
    assert heat.shape == (9, size, size) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    for frame, (x, y) in zip(heat, resample_stroke(L_SHAPE, 9)):
        row, col = np.unravel_index(frame.argmax(), frame.shape)
        assert abs(col + 0.5 - x * size) <= 0.5 + 1e-4 and abs(row + 0.5 - y * size) <= 0.5 + 1e-4  # pixel under it
        assert frame.max() > 0.9
    wide = stroke_heatmaps(strokes, 9, size, sigma_px=8.0)
    assert wide.sum() > heat.sum()  # sigma_px is honoured
    assert stroke_heatmaps([], 4, 32).max() == 0


def test_heatmap_is_max_over_strokes():
    a, b = Stroke(((0.2, 0.2),), 0.1), Stroke(((0.8, 0.8),), 0.1)
    both = stroke_heatmaps([a, b], 2, 32)
    np.testing.assert_array_equal(both, np.maximum(stroke_heatmaps([a], 2, 32), stroke_heatmaps([b], 2, 32)))


def test_region_masks_are_discs_around_the_points():
    strokes = [Stroke(tuple(L_SHAPE), 0.1), Stroke(((0.5, 0.5),), 0.2)]
    size = 64
    masks = stroke_region_masks(strokes, 9, size)
    assert masks.shape == (2, 9, size, size) and masks.dtype == bool
    for s, stroke in enumerate(strokes):
        for f, (x, y) in enumerate(resample_stroke(stroke.points, 9)):
            assert masks[s, f, int(y * size), int(x * size)]
            area = masks[s, f].sum()
            expected = np.pi * (stroke.radius * size) ** 2
            assert abs(area - expected) / expected < 0.1


def test_strokes_from_paths_round_trip():
    t = np.linspace(0, 1, 16)[:, None]
    moving = (np.array([0.2, 0.3]) + t * np.array([0.5, 0.2])).astype(np.float32)
    still = np.tile(np.float32([0.6, 0.6]), (16, 1))
    strokes = strokes_from_paths([moving, still], [0.15, 0.1])
    assert [s.radius for s in strokes] == [0.15, 0.1]
    assert not strokes[0].is_anchor and strokes[1].is_anchor
    np.testing.assert_allclose(stroke_positions(strokes, 16), np.stack([moving, still]), atol=1e-6)
    assert strokes_from_paths([moving], 0.2)[0].radius == 0.2


def test_world_clip_paths_become_strokes():
    from vdemo.world import sample_clip

    clip = sample_clip(np.random.default_rng(0), kind="path")
    strokes = strokes_from_paths(clip.paths, clip.objects[0]["radius"])
    # world paths move at constant speed, so resampling the ground-truth stroke gives the path back
    np.testing.assert_allclose(stroke_positions(strokes, 16)[0], clip.paths[0], atol=2e-3)


# ---------------------------------------------------------------------------------------------------- parsing
def test_parse_valid_inputs():
    data = [{"points": [[0.1, 0.2], [0.3, 0.4]], "radius": 0.1}, {"points": [[0.5, 0.5]]}]
    for form in (data, json.dumps(data), json.dumps(data).encode()):
        strokes = parse_strokes(form)
        assert strokes == [Stroke(((0.1, 0.2), (0.3, 0.4)), 0.1), Stroke(((0.5, 0.5),), DEFAULTS.stroke_radius)]
    assert parse_strokes([]) == []
    assert parse_strokes(strokes_to_data(strokes)) == strokes
    assert parse_strokes([{"points": [[0, 0], [1, 1]], "radius": 0.5}])[0].points == ((0.0, 0.0), (1.0, 1.0))


_OK = {"points": [[0.1, 0.1]], "radius": 0.1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"points": [[0.1, 0.1]]}, "must be a list"),
        ("not json", "not valid JSON"),
        ([[0.1, 0.1]], "stroke 0 must be an object"),
        ([{"radius": 0.1}], "missing 'points'"),
        ([{"points": []}], "empty points"),
        ([{"points": "0.1,0.1"}], "points must be a list"),
        ([_OK, {"points": [[0.1, 0.1], [1.2, 0.5]]}], r"stroke 1 point 1 \(1.2, 0.5\) is outside \[0, 1\]"),
        ([{"points": [[-0.01, 0.5]]}], "outside"),
        ([{"points": [[float("nan"), 0.5]]}], "finite"),
        ('[{"points": [[NaN, 0.5]]}]', "finite"),
        ([{"points": [[0.1]]}], r"must be \[x, y\]"),
        ([{"points": [[0.1, "a"]]}], "must be a number"),
        ([{"points": [[True, 0.5]]}], "must be a number"),
        ([{"points": [[0.1, 0.1]], "radius": 0.0}], "radius must be"),
        ([{"points": [[0.1, 0.1]], "radius": MAX_STROKE_RADIUS + 0.1}], "radius must be"),
        ([{"points": [[0.1, 0.1]], "radius": "big"}], "radius must be a number"),
        ([_OK] * (LIMITS.max_strokes + 1),
         f"too many strokes: {LIMITS.max_strokes + 1}, more than {LIMITS.max_strokes}"),
        ([{"points": [[0.5, 0.5]] * (LIMITS.max_stroke_points + 1)}], "too many points"),
    ],
)
def test_parse_errors(data, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_strokes(data)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- overlay
def test_overlay_draws_each_stroke_in_its_own_colour():
    image = np.full((128, 128, 3), 40, np.uint8)
    strokes = [Stroke(tuple(L_SHAPE), 0.1), Stroke(((0.8, 0.8),), 0.1)]
    out = draw_strokes_overlay(image, strokes, 9)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 40).all()  # the input is untouched
    changed = (out != 40).any(axis=2)
    assert changed[int(0.1 * 128), 30:60].any()  # along the first leg of the L
    assert changed[int(0.8 * 128), int(0.8 * 128)]  # the anchor's centre dot
    assert changed[int(0.8 * 128), int(0.8 * 128) + 13]  # on the anchor's ring (radius 0.1 * 128)
    colours = {tuple(out[int(0.1 * 128), 45]), tuple(out[int(0.8 * 128), int(0.8 * 128)])}
    assert len(colours) == 2
    gray = draw_strokes_overlay(np.zeros((32, 32), np.uint8), strokes, 4)
    assert gray.shape == (32, 32, 3)
