"""The eval's measurements on ground truth (a perfect model must score perfectly) and its CLI on a tiny model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vdemo import world
from vdemo.eval import (
    COUPLING_T,
    METRICS,
    EvalSettings,
    append_learning_curve,
    colour_drift,
    eval_coupling,
    held_out_specs,
    main,
    main_object,
    psnr,
    read_direction,
    readme_table,
    size_drift,
    track_error,
)
from vdemo.strokes import resample_stroke, strokes_from_paths


def test_held_out_specs_are_deterministic_and_filtered():
    a = held_out_specs("objects", 4, lambda sp: len(sp["objects"]) == 1)
    assert a == held_out_specs("objects", 4, lambda sp: len(sp["objects"]) == 1)
    assert all(len(sp["objects"]) == 1 for sp in a)


@pytest.mark.parametrize("index", range(6))
def test_ground_truth_scores_perfectly(index):
    spec = held_out_specs("objects", index + 1, lambda sp: len(sp["objects"]) == 1)[-1]
    clip = world.make_clip(spec, 16, 64)
    bg = world.BACKGROUNDS[clip.meta["background"]]
    dets = [main_object(f, bg) for f in clip.frames]
    truth = clip.objects[0]
    assert all(d.colour == truth["colour"] and d.shape == truth["shape"] for d in dets)
    assert read_direction(dets) == truth["motion"]
    assert colour_drift(clip.frames, dets) < 0.01 and size_drift(dets) < 0.05
    assert psnr(clip.frames[0], clip.frames[0]) == 99.0


def test_stroke_error_on_ground_truth_and_reversed():
    spec = held_out_specs("path", 1, lambda sp: True)[0]
    clip = world.make_clip(spec, 16, 64)
    bg = world.BACKGROUNDS[clip.meta["background"]]
    stroke = strokes_from_paths(clip.paths[:1], 0.1)[0]
    target = resample_stroke(np.array(stroke.points), 16)
    assert track_error(clip.frames, bg, clip.objects[0]["colour"], target) < 0.01
    assert track_error(clip.frames, bg, clip.objects[0]["colour"], target[::-1]) > 0.1


def test_eval_cli_reports_every_metric(tmp_path, capsys, small_planner_dir):
    import shutil

    from vdemo.backends.tiny import TinyBackend
    from vdemo.models.planner import PLANNER_DIR

    folder = tmp_path / "model"
    backend = TinyBackend.random()
    backend.model.save_pretrained(folder)
    backend.tokenizer.save_pretrained(folder / "tokenizer")
    shutil.copytree(small_planner_dir, folder / PLANNER_DIR)
    out, curve = tmp_path / "eval.json", tmp_path / "curve.csv"
    assert main(["--json", "--backend", "tiny", "--cases", "1", "--steps", "1", "--modes", "full", "causal",
                 "--model-dir", str(folder), "--out", str(out), "--curve", str(curve)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["metric"], r["mode"]) for r in rows] == [(m, mode) for mode in ("full", "causal") for m in METRICS]
    keys = set().union(*(r.keys() for r in rows))
    for key in ("colour_acc", "shape_acc", "direction_acc", "first_frame_psnr_db", "identity_kept",
                "stroke_error_diag", "no_stroke_error_diag", "pose_iou", "near_larger_in_front", "colour_change",
                "size_change", "x0_mse_t950", "x0_mse_t850", "presence_acc"):
        assert key in keys
    assert all(r["planner"] is True for r in rows if r["metric"] == "text")
    header = curve.read_text().splitlines()[0].split(",")
    assert header[:2] == ["step", "hours"] and "text.colour_acc" in header
    append_learning_curve(curve, rows, folder)
    assert len(curve.read_text().splitlines()) == 3
    table = readme_table(rows).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| full", "| causal"]
    assert len(table[0].split(" | ")) == len(table[2].split(" | ")) and "dB" in table[2]
    assert "–" in readme_table([r for r in rows if r["metric"] != "pose"])
    png = tmp_path / "curve.png"
    assert main(["--plot", str(curve), str(png)]) == 0
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (520, 1120, 3) and len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # drawn, not blank


def test_rows_without_the_planner_get_their_own_table_line_and_curve_column(tmp_path):
    from vdemo.eval import evaluate

    rows = [{"metric": "text", "mode": "full", "planner": True, "colour_acc": 1.0, "direction_acc": 0.875},
            {"metric": "text", "mode": "full", "planner": False, "colour_acc": 0.5, "direction_acc": 0.125},
            {"metric": "planner", "mode": "full", "presence_acc": 1.0, "direction_acc": 1.0}]
    table = readme_table(rows).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| full", "| full, model alone"]
    header = [h.strip() for h in table[0].strip("| ").split(" | ")]
    cells = [[c.strip() for c in line.strip("| ").split(" | ")] for line in table[2:]]
    column = header.index("direction")
    assert cells[0][column] == "0.88" and cells[1][column] == "0.12"
    planned = header.index("planner: direction")
    assert cells[0][planned] == "1.00" and cells[1][planned] == "–"
    curve = tmp_path / "curve.csv"
    append_learning_curve(curve, rows, tmp_path)
    header = curve.read_text().splitlines()[0].split(",")
    assert {"text.direction_acc", "text_no_plan.direction_acc", "planner.direction_acc"} <= set(header)
    assert "text.planner" not in header
    from vdemo.backends.tiny import TinyBackend
    from vdemo.pipeline import VideoPipeline

    assert evaluate(VideoPipeline(TinyBackend.random()), EvalSettings(cases=1), ["full"], ["planner"]) == []


def test_table_and_plot_give_one_line_errors_on_bad_files(tmp_path, capsys):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    empty = tmp_path / "empty.csv"
    empty.write_text("step,hours\n")
    for argv in (["--table", str(garbage)], ["--table", str(tmp_path / "missing.json")],
                 ["--plot", str(empty), str(tmp_path / "x.png")], ["--table", str(empty)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("python -m vdemo.eval: error:") and "\n" not in err and "Traceback" not in err


class _ZeroBackend:
    """Predicts x0 = 0 everywhere: its coupling error is the clips' own foreground-weighted mean square."""

    output_type = "sample"
    scheduler_config = {"prediction_type": "v_prediction"}

    def __init__(self):
        self.calls = []

    def prepare(self, request):
        return {"prompt": request.prompt}

    def predict(self, x_in, t, cond, guidance, mode):
        self.calls.append((float(t), guidance, mode, tuple(x_in.shape)))
        return torch.zeros_like(x_in)


def test_coupling_error_is_the_foreground_weighted_x0_mse():
    backend = _ZeroBackend()
    settings = EvalSettings(cases=2, num_frames=8)
    row = eval_coupling(type("Pipe", (), {"backend": backend})(), settings, "causal")
    assert set(row) == {f"x0_mse_t{t}" for t in COUPLING_T}
    assert [c[:3] for c in backend.calls] == [(float(t), 1.0, "causal") for _ in range(2) for t in COUPLING_T]
    assert backend.calls[0][3] == (1, 8, 3, 64, 64)
    expected = []
    for spec in held_out_specs("objects", 2, lambda sp: len(sp["objects"]) == 1):
        clip = world.make_clip(spec, 8, 64)
        x0 = clip.frames.astype(np.float64) / 127.5 - 1.0
        bg = np.array(world.BACKGROUNDS[clip.meta["background"]])
        w = 1.0 + 4.0 * (np.abs(clip.frames.astype(int) - bg).max(-1) > 24)[..., None]
        expected.append((w * x0**2).sum() / (3 * w.sum()))
    assert row["x0_mse_t950"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert row["x0_mse_t850"] == pytest.approx(row["x0_mse_t950"])


def test_learning_curve_widens_for_new_metrics(tmp_path):
    curve = tmp_path / "curve.csv"
    curve.write_text("step,hours,text.colour_acc\n100,0.5,0.25\n")
    rows = [{"metric": "text", "mode": "full", "colour_acc": 0.5, "seconds": 1.0},
            {"metric": "coupling", "mode": "full", "x0_mse_t950": 0.12, "x0_mse_t850": 0.04},
            {"metric": "coupling", "mode": "spatial", "x0_mse_t950": 0.2, "x0_mse_t850": 0.05}]
    append_learning_curve(curve, rows, tmp_path)
    lines = curve.read_text().splitlines()
    assert lines == ["step,hours,text.colour_acc,coupling.x0_mse_t850,coupling.x0_mse_t950", "100,0.5,0.25,,",
                     ",0.0,0.5,0.04,0.12"]
    assert main(["--plot", str(curve), str(tmp_path / "curve.png")]) == 0


class _LayoutBackend(_ZeroBackend):
    """Draws a white square on black in every frame: drifting the way the prompt's word says, or fixed at the centre."""

    def __init__(self, knows_words: bool):
        super().__init__()
        self.knows_words = knows_words

    def predict(self, x_in, t, cond, guidance, mode):
        from vdemo.world.palette import MOTIONS

        self.calls.append((float(t), guidance, mode, tuple(x_in.shape)))
        _, frames, _, size, _ = x_in.shape
        word = cond["prompt"].split(" moves ")[1].split(" on ")[0]
        dx, dy = MOTIONS[word] if self.knows_words else (0.0, 0.0)
        out = -torch.ones_like(x_in)
        for f in range(frames):
            u = f / max(frames - 1, 1) - 0.5
            cx, cy = int((0.5 + 0.3 * u * dx) * size), int((0.5 + 0.3 * u * dy) * size)
            out[0, f, :, cy - 4:cy + 4, cx - 4:cx + 4] = 1.0
        return out


def test_layout_reads_the_drift_of_the_mean_layout_per_direction_word():
    from vdemo.eval import eval_layout

    settings = EvalSettings(cases=2, num_frames=8)
    knows = _LayoutBackend(knows_words=True)
    row = eval_layout(type("Pipe", (), {"backend": knows})(), settings, "full")
    assert row["layout_direction_acc"] == 1.0 and row["layout_drift"] > 0.2
    assert {c[:3] for c in knows.calls} == {(999.0, 1.0, "full")} and len(knows.calls) == 8 * 2
    centred = eval_layout(type("Pipe", (), {"backend": _LayoutBackend(knows_words=False)})(), settings, "full")
    assert centred == {"layout_direction_acc": 0.0, "layout_drift": 0.0}


def test_strokes_and_image_rows_say_whether_the_cut_and_drag_reference_ran(tmp_path):
    from vdemo.backends.tiny import TinyBackend
    from vdemo.backends.tiny_v2 import TinyV2Backend
    from vdemo.eval import eval_image, eval_strokes, row_group
    from vdemo.pipeline import VideoPipeline

    v2 = VideoPipeline(TinyV2Backend.random(reference=True))
    s = EvalSettings(cases=2, num_frames=4, num_steps=1)
    on, off = eval_strokes(v2, s, "full"), eval_strokes(v2, replace(s, drag_reference=False), "full")
    assert on["dragged_share"] == 1.0 and off["dragged_share"] == 0.0 and off["drag"] is False
    assert eval_strokes(VideoPipeline(TinyBackend.random()), s, "full")["dragged_share"] == 0.0  # v1 takes none
    image = eval_image(v2, replace(s, cases=1), "full")  # no planner in a random backend: nothing to drag along
    assert image["dragged_share"] == 0.0 and "with_text_identity_kept" in image
    rows = [{"metric": "strokes", "mode": "full", **on}, {"metric": "strokes", "mode": "full", **off}]
    assert [row_group(r) for r in rows] == ["strokes", "strokes_no_drag"]
    table = readme_table(rows).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| full", "| full, no cut-and-drag"]
    append_learning_curve(tmp_path / "curve.csv", rows, tmp_path)
    header = (tmp_path / "curve.csv").read_text().splitlines()[0].split(",")
    assert {"strokes.dragged_share", "strokes_no_drag.stroke_error_diag"} <= set(header)
    assert "strokes.drag" not in header


def test_the_depth_row_reports_its_ceiling_and_whether_misses_are_colours_bound_to_the_wrong_objects(monkeypatch):
    import vdemo.eval as ev

    s = ev.EvalSettings(cases=4, num_frames=8, size=64)
    specs = ev.held_out_specs("depth", 4, lambda sp: len(sp["objects"]) >= 2)
    clips = {c.caption: c for c in (world.make_clip(sp, 8, 64) for sp in specs)}
    swapped = []

    def fake_generate(pipe, settings, mode, seed, prompt, depth):  # the truth, or the truth with two colours swapped
        clip = clips[prompt]
        frames = clip.frames.copy()
        if swapped:
            for f, frame in enumerate(frames):
                order = sorted(range(len(clip.objects)), key=lambda k: clip.objects[k]["z"][f])
                a, b = (np.array(world.COLOURS[clip.objects[k]["colour"]], np.uint8) for k in order[:2])
                is_a, is_b = (np.all(clip.frames[f] == c, axis=-1) for c in (a, b))
                frame[is_a], frame[is_b] = b, a  # the nearer object now wears the farther one's colour
        return frames

    monkeypatch.setattr(ev, "generate", fake_generate)
    truth = ev.eval_depth(None, s, "full")
    assert truth["near_larger_in_front"] == truth["truth_near_larger"] > 0.5  # the truth scores its own ceiling
    swapped.append(True)
    bound_wrong = ev.eval_depth(None, s, "full")
    assert bound_wrong["truth_near_larger"] == truth["truth_near_larger"]
    assert bound_wrong["near_larger_in_front"] < 0.5 < 0.9 <= bound_wrong["misses_colour_wrong"]
