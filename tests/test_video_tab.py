"""The Video tab's endpoints called directly: long video streams per step and per segment and exports; extend, edit
and in-between through `video_to_video`; Stop and the live mode reach the running segment; bad clips are one line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from vdemo.ui import session as live
from vdemo.ui.tabs import video

FAST = dict(backend="tiny", attention_mode="full", sampler="DDIM", steps=1, guidance=3.0, frames=8, fps=8, seed=0,
            random_seed=False)


def who(name: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=name)


@pytest.fixture(scope="module")
def app_ready(tiny_model_dir, one_torch_thread):
    return tiny_model_dir


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    from vdemo import world

    folder = tmp_path_factory.mktemp("video-tab")
    clip = world.sample_clip(np.random.default_rng(5), num_frames=6, size=64, kind="objects")
    images = [Image.fromarray(f) for f in clip.frames]
    files = {"gif": folder / "clip.gif", "first": folder / "first.png", "last": folder / "last.png",
             "junk": folder / "junk.zip"}
    images[0].save(files["gif"], save_all=True, append_images=images[1:], duration=125, loop=0)
    images[0].save(files["first"])
    images[-1].save(files["last"])
    files["junk"].write_bytes(b"not a zip")
    return files


def v2v(mode: str, clip=None, first=None, last=None, length=12, strength=0.8, extend_by=6, name="v2v", **kw):
    settings = {**FAST, **kw}
    return video.video_to_video(mode, clip, "a blue circle moves right on a black background", "", "autoregressive",
                                length, 2, strength, extend_by, first, last, **settings, request=who(name))


def test_the_tab_registers_both_endpoints(app_ready):
    from vdemo.ui.layout import build_demo

    demo = build_demo(warm_up_model=False)
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"long_video", "video_to_video"} <= names


def test_long_video_streams_steps_and_segments_then_exports(app_ready):
    outputs = list(video.long_video("a red circle moves right on a black background", "", "autoregressive", 12, 2,
                                    **FAST, request=who("long")))
    statuses = [o[0] for o in outputs]
    assert any("segment 1/2" in s and "step 1/1" in s for s in statuses)
    assert any("segment 1/2 done" in s for s in statuses) and any("segment 2/2 done" in s for s in statuses)
    status, preview, mp4, files, manifest, _ = outputs[-1]
    assert "done" in status and Path(mp4).stat().st_size > 0 and len(files) == 4
    assert isinstance(preview, np.ndarray)
    long = manifest["long"]
    assert long["strategy"] == "autoregressive" and long["length"] == 12 and long["seams"] == [7]
    assert manifest["ui"]["tab"] == "video" and live.ACTIVE_RUNS.get("long") is None


def test_extend_edit_and_inbetween(app_ready, uploads):
    from vdemo.long import load_clip

    manifest = list(v2v("extend the upload", clip=str(uploads["gif"])))[-1][4]
    assert manifest["long"]["kind"] == "extend" and manifest["long"]["given_frames"] == list(range(6))
    assert len(manifest["long"]["frames_made"]) == 6 + 6
    manifest = list(v2v("edit the upload (SDEdit)", clip=str(uploads["gif"]), steps=2, strength=0.5))[-1][4]
    assert manifest["long"]["kind"] == "edit" and manifest["long"]["edit_strength"] == 0.5
    assert len(manifest["steps"]) == 1 and len(load_clip(uploads["gif"])) == 6  # half of 2 steps, 6 frames edited
    manifest = list(v2v("in-between two keyframes", first=str(uploads["first"]), last=str(uploads["last"]),
                        length=10))[-1][4]
    assert manifest["long"]["strategy"] == "hierarchical" and manifest["long"]["given_frames"] == [0, 9]


def test_stop_between_segments_and_live_mode(app_ready):
    gen = video.long_video("a red circle moves right on a black background", "", "autoregressive", 20, 2,
                           **{**FAST, "steps": 2}, request=who("stopper"))
    for out in gen:
        if "segment 1/3" in out[0] and "step 1/2" in out[0]:
            live.live_attention_mode("causal", request=who("stopper"))
        if "segment 1/3 done" in out[0]:
            live.stop_run(request=who("stopper"))
            break
    status, *_, manifest, _ = list(gen)[-1]
    assert "stopped" in status and manifest["stopped"] and len(manifest["long"]["windows"]) == 1
    assert [s["mode"] for s in manifest["steps"]] == ["full", "causal"]
    assert live.ACTIVE_RUNS.get("stopper") is None


@pytest.mark.parametrize("mode,upload,words", [("extend the upload", None, "upload a clip"),
                                               ("edit the upload (SDEdit)", "junk", "not a readable zip"),
                                               ("in-between two keyframes", None, "first frame"),
                                               ("sideways", None, "mode must be")])
def test_bad_inputs_are_one_line(app_ready, uploads, mode, upload, words):
    with pytest.raises(gr.Error) as err:
        list(v2v(mode, clip=str(uploads[upload]) if upload else None))
    assert "\n" not in err.value.message and words in err.value.message, err.value.message


def test_cli_long_video_and_extension(app_ready, tmp_path):
    import json

    from vdemo.__main__ import main

    out = tmp_path / "long.mp4"
    assert main(["generate", "--prompt", "a red circle moves right", "--length", "12", "--strategy", "hierarchical",
                 "--frames", "8", "--steps", "1", "--out", str(out), "--frames-dir", str(tmp_path / "f")]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["long"]["strategy"] == "hierarchical" and manifest["long"]["seams"]
    assert len(list((tmp_path / "f").glob("*.png"))) == 12
    assert main(["generate", "--video", str(out), "--extend", "4", "--frames", "8", "--steps", "1",
                 "--out", str(tmp_path / "x.mp4")]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["long"]["given_frames"] == list(range(12))
    assert main(["generate", "--video", str(out), "--out", str(tmp_path / "y.mp4")]) == 2  # neither extend nor edit


def test_choosing_a_backend_sets_the_video_tabs_strategy_and_context():
    """A causal model that only continues clips starts on autoregressive windows with a context it encodes whole."""
    from vdemo.ui.tabs.video import long_video_defaults

    strategy, context, strength = long_video_defaults("anyflow-far")
    assert (strategy["value"], context["value"]) == ("autoregressive", 5)
    strategy, context, strength = long_video_defaults("tiny")
    assert (strategy["value"], context["value"], strength["value"]) == ("hierarchical", 4, 0.8)
    # v2 edits in its latent space, where the colour survives more noise: it starts re-noised further
    assert long_video_defaults("tiny-v2")[2]["value"] == 0.9


def test_the_page_opens_with_the_default_models_edit_strength(tiny_model_dir):
    from vdemo.ui.layout import build_demo

    demo = build_demo(warm_up_model=False)
    slider = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "vd-video-strength")
    assert slider.value == 0.9  # tiny-v2's, the page's first backend
