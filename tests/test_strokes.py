"""Motion strokes: parsing errors, arc-length resampling, heatmaps, region masks, ground truth, overlay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vdemo.config import DEFAULTS, LIMITS
from vdemo.strokes import (
    MAX_STROKE_RADIUS,
    Stroke,
    background_colour,
    drag_frames,
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


# ------------------------------------------------------------------------------------------------ cut and drag
def _scene(size: int = 64, bg=(10, 20, 30)) -> np.ndarray:
    """A plain background with a red 8×8 square at x, y in [16, 24) and a green 6×6 one at [40, 46)."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = bg
    image[16:24, 16:24] = (220, 30, 30)
    image[40:46, 40:46] = (30, 220, 30)
    return image


def test_background_colour_is_the_borders_most_common_colour():
    image = _scene()
    image[0, :5] = (255, 255, 255)  # a few odd border pixels do not win
    assert background_colour(image).tolist() == [10, 20, 30]


def test_drag_moves_the_object_under_the_stroke_along_it_and_leaves_the_rest():
    image = _scene()
    stroke = Stroke(((20 / 64, 20 / 64), (36 / 64, 20 / 64)), 0.05)  # the red square, 16 px right
    frames = drag_frames(image, [stroke], 5)
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0], image)  # frame 0 is the image
    for k, dx in enumerate((0, 4, 8, 12, 16)):  # constant speed along the stroke
        red = np.argwhere((frames[k] == (220, 30, 30)).all(-1))
        assert red.min(0).tolist() == [16, 16 + dx] and len(red) == 64  # moved whole, not cropped or smeared
        assert (frames[k][40:46, 40:46] == (30, 220, 30)).all()  # the green square stays
    assert (frames[-1][16:24, 16:24] == (10, 20, 30)).all()  # where it was is background now


def test_drag_finds_the_nearest_object_within_the_strokes_radius_and_nothing_further():
    image = _scene()
    near = Stroke(((27 / 64, 20 / 64), (27 / 64, 40 / 64)), 0.08)  # starts 3 px right of the red square
    moved = drag_frames(image, [near], 3)
    assert moved is not None and (moved[-1][36:44, 16:24] == (220, 30, 30)).all()  # 20 px down
    far = Stroke(((0.05, 0.9), (0.3, 0.9)), 0.02)  # empty background, nothing within 3 px
    assert drag_frames(image, [far], 3) is None


def test_drag_is_none_for_anchors_and_for_regions_too_big_to_be_an_object():
    image = _scene()
    assert drag_frames(image, [Stroke(((20 / 64, 20 / 64),), 0.1)], 4) is None  # an anchor: nothing moves
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # a "photo": no plain background
    assert drag_frames(noisy, [Stroke(((0.5, 0.5), (0.8, 0.5)), 0.1)], 4) is None


def test_drag_off_the_edge_drops_what_leaves_the_frame_without_wrapping():
    image = _scene()
    stroke = Stroke(((20 / 64, 20 / 64), (66 / 64, 20 / 64)), 0.05)  # 46 px right: past the right edge by 6 px
    last = drag_frames(image, [stroke], 2)[-1]
    red = (last == (220, 30, 30)).all(-1)
    assert red[:, 62:].all(axis=1).sum() == 8 and not red[:, :60].any()  # the 2 px left in the frame, nothing wrapped


def test_drag_takes_the_objects_soft_rim_along_and_leaves_no_outline():
    image = _scene()
    image[15:25, 15:25] = (25, 35, 45)  # a 1-px anti-aliased rim, under the threshold (15 from the background)
    image[16:24, 16:24] = (220, 30, 30)
    last = drag_frames(image, [Stroke(((20 / 64, 20 / 64), (20 / 64, 50 / 64)), 0.05)], 2)[-1]  # 30 px down
    assert (last[15:25, 15:25] == (10, 20, 30)).all()  # nothing left where it was
    assert (last[45:55, 15:25] == image[15:25, 15:25]).all()  # the rim came along
    assert (last[40:46, 40:46] == (30, 220, 30)).all()  # the neighbour untouched
