"""vdemo.compare and the Compare tab's handlers: same initial noise, reference metrics, probed masks, Stop, errors,
compare.json, the CLI. Small: 4 frames, 2 steps, a random tiny model (or the shipped one for the CLI)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch

from vdemo import attention
from vdemo.attention import mode_mask, pair_count
from vdemo.compare import (
    AttendMeter,
    CompareError,
    RunProgress,
    Variant,
    compare_runs,
    make_variants,
    mode_masks,
    psnr_per_frame,
    ssim_per_frame,
    write_compare,
)
from vdemo.config import ATTENTION_MODES
from vdemo.pipeline import GenerationRequest, RunControl
from vdemo.strokes import Stroke

PROMPT = "a red circle moves right on a black background"


@pytest.fixture(scope="module")
def backend(one_torch_thread):
    from vdemo.backends.tiny import TinyBackend

    return TinyBackend.random()


def small_request(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "num_frames": 4, "height": 48, "width": 48, "num_steps": 2, **kw})


@pytest.mark.parametrize("frames, grid", [(1, 2), (2, 3), (5, 3), (6, 4)])
def test_probed_masks_match_pair_count_and_mode_mask(frames, grid):
    masks = mode_masks(ATTENTION_MODES, num_frames=frames, grid=grid)
    assert set(masks) == set(ATTENTION_MODES)
    for mode, info in masks.items():
        assert info["pairs_probe"] == info["pairs_theory"] == pair_count(mode, frames, grid * grid), mode
        expected = mode_mask(mode, frames, grid * grid)
        if frames == 1 and mode != "temporal":  # one frame: attend runs every causal mode as full
            expected = torch.ones_like(expected)
        assert torch.equal(info["mask"], expected), mode


def test_every_variant_starts_from_the_same_noise(backend, monkeypatch):
    inputs: list[torch.Tensor] = []
    predict = backend.predict

    def recording(x_in, t, cond, guidance, mode):
        inputs.append(x_in.clone())
        return predict(x_in, t, cond, guidance, mode)

    monkeypatch.setattr(backend, "predict", recording)
    variants = [Variant("spatial", "DDIM"), Variant("full", "DDIM"), Variant("causal", "Euler")]
    result = compare_runs(backend, small_request(), variants, warmup=False)  # 2 steps, one model call each
    assert len(result.runs) == 3 and len(inputs) == 6
    first = inputs[0::2]  # each run's first model input: its initial noise, scaled by its scheduler
    assert torch.equal(first[0], first[1])  # same sampler: bit-identical
    a, b = first[0].flatten(), first[2].flatten()  # Euler scales the same noise by σ/√(σ²+1)
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9999
    assert not np.array_equal(result.runs[0].frames, result.runs[1].frames)  # the modes do differ


def test_full_against_itself_is_infinite_psnr_and_ssim_one(backend):
    frames = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    assert all(math.isinf(p) for p in psnr_per_frame(frames, frames))
    assert ssim_per_frame(frames, frames) == pytest.approx([1.0] * 4)
    result = compare_runs(backend, small_request(), [Variant("full", "DDIM"), Variant("spatial", "DDIM")],
                          warmup=False)
    ref = result.runs[0]
    assert result.reference == ref.variant and not result.reference_added
    assert all(math.isinf(p) for p in ref.quality["psnr_db"]) and ref.quality["ssim"] == pytest.approx([1.0] * 4)
    other = result.runs[1].quality
    assert all(math.isfinite(p) for p in other["psnr_db"]) and all(s < 1 for s in other["ssim"])
    assert json.loads(json.dumps(result.summary()))["quality"]["full · DDIM"]["psnr_db"] == ["inf"] * 4


def test_full_is_added_as_the_reference_and_the_meter_counts_pairs(backend):
    result = compare_runs(backend, small_request(), [Variant("spatial", "DDIM"), Variant("sparse_causal", "DDIM")],
                          warmup=False)
    assert result.reference_added and [r.reference for r in result.runs] == [False, False, True]
    assert "not chosen" in result.summary()["reference"]["note"]
    pairs = {r.variant.mode: r.attention_pairs_per_call for r in result.runs}
    assert 0 < pairs["spatial"] < pairs["sparse_causal"] < pairs["full"]
    tops = {r.variant.mode: r.attention_pairs_top_grid for r in result.runs}
    assert tops["full"] == pair_count("full", 4, (48 // 4) ** 2)
    assert all(0 < r.attention_share < 1 and r.wall_s > 0 and r.s_per_step > 0 for r in result.runs)
    assert attention.attend.__name__ == "attend"  # the timing wrapper is gone


def test_attend_meter_restores_on_error():
    original = attention.attend
    with pytest.raises(RuntimeError), AttendMeter():
        assert attention.attend is not original
        raise RuntimeError("boom")
    assert attention.attend is original


def test_stop_ends_the_current_and_every_remaining_run(backend):
    control = RunControl("spatial", "DDIM")
    seen: list[int] = []

    def stop_at_first(event):
        if isinstance(event, RunProgress):
            seen.append(event.index)
            control.stop()

    variants = [Variant("spatial", "DDIM"), Variant("temporal", "DDIM"), Variant("full", "DDIM")]
    result = compare_runs(backend, small_request(num_steps=3), variants, control, stop_at_first, warmup=False)
    assert seen == [0] and result.stopped and len(result.runs) == 1 and result.runs[0].stopped


@pytest.mark.parametrize("modes, samplers, fragment", [
    (["full"], [], "2–5 runs"),
    (ATTENTION_MODES, ["DDIM", "Euler"], "2–5 runs"),
    (["full", "diagonal"], [], "unknown attention mode"),
    (["full", "spatial"], ["Warp"], "does not support sampler"),
])
def test_bad_variant_lists_are_one_line_errors(backend, modes, samplers, fragment):
    with pytest.raises(CompareError) as err:
        make_variants(modes, samplers, backend, "full", "DDIM")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_mode_the_backend_lacks_is_refused():
    class Narrow:
        name, attention_modes, samplers = "narrow", ("full", "spatial"), ("DDIM",)

    with pytest.raises(CompareError, match="does not support attention mode 'causal'"):
        make_variants(["full", "causal"], [], Narrow(), "full", "DDIM")
    assert make_variants(["spatial", "full"], [], Narrow(), "full", "DDIM") == [Variant("spatial", "DDIM"),
                                                                                  Variant("full", "DDIM")]


def test_compare_json_has_every_figure(backend, tmp_path):
    stroke = Stroke(points=((0.2, 0.5), (0.8, 0.5)), radius=0.1)
    request = small_request(strokes=(stroke,))
    result = compare_runs(backend, request, [Variant("spatial", "DDIM"), Variant("causal", "DDIM")], warmup=False)
    paths = write_compare(result, tmp_path)
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["variants"] == ["spatial · DDIM", "causal · DDIM"] and data["reference"]["added"]
    for row in data["cost"]:
        for key in ("wall_s", "s_per_step", "peak_mem_mb", "attention_pairs_per_call", "attention_pairs_top_grid",
                    "attention_share", "attention_s", "mp4", "frames_dir"):
            assert key in row, key
        assert (tmp_path / row["mp4"]).stat().st_size > 0
    for label, q in data["quality"].items():
        for key in ("psnr_db", "ssim", "flicker", "identity_kept", "stroke_error"):
            assert key in q, (label, key)
        assert len(q["psnr_db"]) == 4 and len(q["flicker"]) == 3
    for mode in ("spatial", "causal", "full"):
        m = data["masks"][mode]
        assert m["pairs_probe"] == m["pairs_theory"] and (tmp_path / m["picture"]).exists()
    assert {"cost", "quality", "masks"} <= set(data["figures"]) and "| run |" in data["table_markdown"]
    assert all(paths[k].stat().st_size > 0 for k in ("cost", "quality", "masks", "clips", "json"))


def test_the_gpu_job_is_one_picklable_call_sized_by_every_run(backend, monkeypatch):
    from vdemo.backends import _CACHE
    from vdemo.cost import request_seconds
    from vdemo.ui.tabs import compare as tab

    request = small_request()
    variants = [Variant("spatial", "DDIM"), Variant("causal", "Euler")]
    pickle.loads(pickle.dumps((request, variants)))  # what crosses into a ZeroGPU worker
    monkeypatch.setitem(_CACHE, ("tiny", None), backend)
    expected = sum(request_seconds(backend, request, m, s) for m, s in
                   (("spatial", "DDIM"), ("causal", "Euler"), ("full", "DDIM")))
    assert tab.total_seconds(backend, request, variants) == expected


@pytest.fixture()
def built_tiny(tiny_model_dir, one_torch_thread):
    return tiny_model_dir


def test_api_endpoint_streams_and_stop_reaches_every_run(built_tiny):
    import gradio as gr

    from vdemo.ui.session import stop_run
    from vdemo.ui.tabs.compare import compare

    args = ([], "tiny", "full", "DDIM", 3, 3.0, 4, 8, 0, False)
    with pytest.raises(gr.Error, match="2–5 runs"):
        list(compare(PROMPT, ["full"], *args))
    outputs = []
    for out in compare(PROMPT, ["spatial", "temporal", "full"], *args):
        outputs.append(out)
        if len(outputs) == 2:
            stop_run()
    status, _, _, files, summary, _ = outputs[-1]
    assert "stopped" in status and summary["stopped"] and len(summary["cost"]) == 1


def test_api_endpoint_returns_the_summary(built_tiny):
    from vdemo.ui.tabs.compare import compare

    out = list(compare(PROMPT, ["spatial", "full"], [], "tiny", "full", "DDIM", 2, 3.0, 4, 8, 0, False))
    status, side, _, files, summary, _ = out[-1]
    assert "done" in status and side.shape[1] > side.shape[0] and len(files) == 2 + 5
    assert [r["run"] for r in summary["cost"]] == ["spatial · DDIM", "full · DDIM"]


def test_cli_runs(built_tiny, tmp_path, capsys):
    from vdemo.compare import main

    assert main(["--modes", "spatial", "sparse_causal", "--frames", "4", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert "| sparse_causal · DDIM |" in capsys.readouterr().out
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["reference"]["added"] and len(data["cost"]) == 3
    assert main(["--modes", "full", "--out", str(tmp_path / "bad")]) == 2
    assert "2–5 runs" in capsys.readouterr().err


def test_the_compare_buttons_inputs_keep_their_places_with_trailing_switches_last(monkeypatch):
    """The Compare endpoint takes every modality tab's inputs, then the settings, then the tabs' trailing switches
    (the Image tab's Plan the motion and Cut and drag), so values a positional caller sent before the switches existed
    keep their places; the handler gives each tab's request builder its inputs followed by its switches."""
    from vdemo.ui import space
    from vdemo.ui.layout import build_demo
    from vdemo.ui.settings import SETTING_NAMES

    monkeypatch.setattr(space, "SERVED", {"tiny-v2": "no built-in model found", "tiny": "no built-in model found"})
    demo = build_demo(warm_up_model=False)
    fn = next(f for f in demo.fns.values() if f.api_name == "compare_tab")
    ids = [b.elem_id for b in fn.inputs]
    assert ids[:3] == ["vd-compare-source", "vd-compare-modes", "vd-compare-samplers"]
    assert ids[-2:] == ["vd-plan-image", "vd-drag-image"]  # the Image tab's trailing switches, last
    settings = ["vd-backend", "vd-mode", "vd-sampler", "vd-steps", "vd-guidance", "vd-frames", "vd-fps", "vd-seed",
                "vd-random-seed"]
    assert len(settings) == len(SETTING_NAMES) and ids[-2 - len(settings):-2] == settings
    assert ids.index("vd-image-file") == ids.index("vd-prompt-image") + 1 < ids.index("vd-prompt-pose")


def test_the_compare_handler_gives_the_image_builder_its_inputs_then_its_switches(monkeypatch):
    import gradio as gr

    from vdemo.ui import space
    from vdemo.ui.layout import build_demo
    from vdemo.ui.tabs import compare as compare_tab

    monkeypatch.setattr(space, "SERVED", {"tiny-v2": "no built-in model found", "tiny": "no built-in model found"})
    demo = build_demo(warm_up_model=False)
    fn = next(f for f in demo.fns.values() if f.api_name == "compare_tab")
    seen = {}

    def builder(source, values):
        seen[source] = values
        raise compare_tab.user_error("stop here")

    monkeypatch.setattr(compare_tab, "_builder", builder)
    values = [f"<{b.elem_id}>" for b in fn.inputs]
    values[:3] = ["image", ["spatial", "full"], []]
    values[-2:] = [False, True]  # Plan the motion off, Cut and drag on
    settings = ["tiny", "full", "DDIM", 2, 3.0, 4, 8, 0, False]
    values[-2 - len(settings):-2] = settings
    with pytest.raises(gr.Error, match="stop here"):
        list(fn.fn(*values))
    assert seen == {"image": ("<vd-prompt-image>", "<vd-image-file>", False, True)}
