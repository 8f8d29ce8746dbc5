"""The app's handlers called directly (no browser, no server): bad inputs, live toggles, Stop, presets, the pad."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from vdemo.backends import backend_info
from vdemo.config import LIMITS
from vdemo.ui import handlers as h
from vdemo.ui import sources

FAST = dict(backend="tiny", attention_mode="full", sampler="DDIM", steps=3, guidance=3.0, frames=4, fps=8, seed=0,
            random_seed=False)


def session(name: str) -> SimpleNamespace:
    """What the handlers read from a gr.Request: the session hash."""
    return SimpleNamespace(session_hash=name)


def run_all(gen) -> list[tuple]:
    return list(gen)


def assert_one_line_error(excinfo, *words: str) -> str:
    message = excinfo.value.message
    assert "\n" not in message and message.strip(), message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


@pytest.fixture(scope="module")
def app_ready(tiny_model_dir, one_torch_thread):
    return tiny_model_dir


def assert_app_still_works() -> None:
    """After a refused input, a normal run completes (nothing was left half-open)."""
    outputs = run_all(h.text_to_video("a red circle moves right", True, **{**FAST, "steps": 1}))
    mp4, files, manifest = outputs[-1][2], outputs[-1][3], outputs[-1][4]
    assert Path(mp4).stat().st_size > 0 and len(files) == 4 and manifest["stopped"] is False
    assert len(h.ACTIVE_RUNS) == 0


# ----------------------------------------------------------------------------------------------- media files
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    import imageio_ffmpeg

    folder = tmp_path_factory.mktemp("bad")
    files = {}
    files["huge"] = folder / "huge.png"
    with open(files["huge"], "wb") as f:  # sparse: 50 MB on paper, instant to make
        f.truncate(50 * 2**20)
    files["text_png"] = folder / "notes.png"
    files["text_png"].write_text("this is not an image\n")
    files["empty_mp4"] = folder / "empty.mp4"
    files["empty_mp4"].write_bytes(b"")
    files["corrupt_mp4"] = folder / "corrupt.mp4"
    files["corrupt_mp4"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    files["long_mp4"] = folder / "long.mp4"
    seconds = LIMITS.max_video_s + 2
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    f"color=c=gray:s=32x32:r=2:d={seconds}", "-pix_fmt", "yuv420p", "-y", str(files["long_mp4"])],
                   check=True)
    files["good_png"] = folder / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 160, 3), np.uint8)).save(files["good_png"])
    return files


def test_no_upload_is_refused(app_ready):
    with pytest.raises(gr.Error) as err:
        run_all(h.image_to_video("", None, **FAST))
    assert_one_line_error(err, "upload an image")
    assert_app_still_works()


def test_50mb_upload_is_refused(app_ready, bad_files):
    with pytest.raises(gr.Error) as err:
        run_all(h.image_to_video("", str(bad_files["huge"]), **FAST))
    assert_one_line_error(err, "50.0 MB", f"{LIMITS.max_upload_mb} MB")
    assert_app_still_works()


def test_text_file_renamed_png_is_refused(app_ready, bad_files):
    with pytest.raises(gr.Error) as err:
        run_all(h.image_to_video("", str(bad_files["text_png"]), **FAST))
    assert_one_line_error(err, "notes.png", "not a readable image")
    with pytest.raises(gr.Error):  # the preview next to the upload says the same
        h.image_preview(str(bad_files["text_png"]))
    assert_app_still_works()


@pytest.mark.parametrize("name, words", [("empty_mp4", ["empty"]), ("corrupt_mp4", ["corrupt.mp4"]),
                                         ("long_mp4", ["long", f"{LIMITS.max_video_s:g} s"])])
def test_bad_videos_are_refused(app_ready, bad_files, name, words):
    for fn, extra in ((h.pose_to_video, ("Extract from image/video", "walk", str(bad_files[name]), None)),
                      (h.depth_to_video, ("Extract from image/video", "approach", "DPT-hybrid",
                                          str(bad_files[name]), None))):
        with pytest.raises(gr.Error) as err:
            run_all(fn("", *extra, **FAST))
        assert_one_line_error(err, *words)
    assert_app_still_works()


def test_strokes_without_strokes_is_refused(app_ready):
    for text in ("", "[]"):
        with pytest.raises(gr.Error) as err:
            run_all(h.strokes_to_video("", text, None, 7, True, **FAST))
        assert_one_line_error(err, "draw at least one stroke")
    with pytest.raises(gr.Error) as err:
        run_all(h.strokes_to_video("", "[{oops", None, 7, True, **FAST))
    assert_one_line_error(err, "not valid JSON")
    assert_app_still_works()


def test_pose_extraction_without_weights_says_how(app_ready, bad_files, monkeypatch):
    from vdemo.ui import detectors

    monkeypatch.delenv(detectors.OPENPOSE_ENV, raising=False)
    monkeypatch.delenv(detectors.MIDAS_ENV, raising=False)
    detectors.openpose_detector.cache_clear()
    detectors.midas_detector.cache_clear()
    try:
        with pytest.raises(gr.Error) as err:
            run_all(h.pose_to_video("", "Extract from image/video", "walk", str(bad_files["good_png"]), None, **FAST))
        assert_one_line_error(err, "OpenPose", detectors.OPENPOSE_ENV, "body_pose_model.pth", "lllyasviel/Annotators")
        with pytest.raises(gr.Error) as err:
            h.depth_preview("Extract from image/video", "approach", "DPT-hybrid", str(bad_files["good_png"]), None, 4,
                            "tiny")
        assert_one_line_error(err, "MiDaS", detectors.MIDAS_ENV, "dpt_hybrid-midas-501f0c75.pt")
        monkeypatch.setenv(detectors.OPENPOSE_ENV, str(bad_files["good_png"].parent))  # a folder without the files
        with pytest.raises(gr.Error) as err:
            h.pose_preview("Extract from image/video", "walk", str(bad_files["good_png"]), None, 4, "tiny")
        assert_one_line_error(err, "lacks", "facenet.pth")
    finally:
        detectors.openpose_detector.cache_clear()
        detectors.midas_detector.cache_clear()
    assert_app_still_works()


def test_missing_model_is_a_clear_error(tmp_path, monkeypatch):
    from vdemo.backends import load_backend

    monkeypatch.setenv("VDEMO_TINY_DIR", str(tmp_path))
    monkeypatch.setenv("VDEMO_TINY_V2_DIR", str(tmp_path))
    load_backend.cache_clear()  # the one cache of backends and their pipelines
    try:
        banner = h.model_status()  # about the default model, v2: how to train it, where to point
        assert "No built-in model found" in banner and "--arch v2" in banner and "VDEMO_TINY_V2_DIR" in banner
        v1 = h.model_status("tiny")  # a page that opens on v1 (a Space serving only it) names v1's folder and trainer
        assert "`python -m vdemo.train`" in v1 and "VDEMO_TINY_DIR" in v1 and "V2" not in v1
        assert h.model_status("svd") == ""  # hub backends say why under the dropdown, not in the banner
        with pytest.raises(gr.Error) as err:
            run_all(h.text_to_video("a red circle", True, **FAST))
        assert_one_line_error(err, "no tiny model", "VDEMO_TINY_DIR")
    finally:
        load_backend.cache_clear()


def test_out_of_range_settings_are_refused(app_ready):
    with pytest.raises(gr.Error) as err:
        run_all(h.text_to_video("a red circle", True, **{**FAST, "frames": 500}))
    assert_one_line_error(err, "num_frames", "500")
    with pytest.raises(gr.Error) as err:
        run_all(h.text_to_video("a red circle", True, **{**FAST, "backend": "nope"}))
    assert_one_line_error(err, "unknown backend")
    with pytest.raises(gr.Error) as err:
        run_all(h.text_to_video("  ", True, **FAST))
    assert_one_line_error(err, "prompt")


# ------------------------------------------------------------------------------------------ generation & live
def test_text_run_streams_every_step_then_exports(app_ready):
    outputs = run_all(h.text_to_video("a red circle moves right", True, **{**FAST, "steps": 3}, request=session("a")))
    previews = [o[1] for o in outputs if isinstance(o[1], np.ndarray) and o[0].startswith("**step")]
    assert len(previews) == 3  # one preview per step, all frames in one grid
    assert np.array_equal(outputs[-1][1], previews[-1])  # the result keeps the last preview
    assert all("step" in o[0] and "mode `full`" in o[0] for o in outputs[1:4])
    status, _, mp4, files, manifest, _ = outputs[-1]
    assert "done" in status and mp4.endswith(".mp4")
    assert [Path(f).suffix for f in files] == [".mp4", ".gif", ".zip", ".json"]
    assert manifest["request"]["prompt"] == "a red circle moves right" and manifest["ui"]["tab"] == "text"
    assert json.loads(Path(files[3]).read_text())["request"]["seed"] == 0
    assert manifest["motion_plan"]["directions"] == ["right"]  # the app's model folder has a layout planner
    assert "motion planned from the prompt: right" in status


def test_the_plan_checkbox_turns_the_planner_off(app_ready):
    status, *_, manifest, _ = run_all(h.text_to_video("a red circle moves right", False, **{**FAST, "steps": 1}))[-1]
    assert manifest["motion_plan"] is None and manifest["request"]["plan_motion"] is False
    assert "motion planned" not in status


def test_live_mode_and_sampler_switch_reach_the_running_run(app_ready):
    gen = h.text_to_video("a blue square moves up", True, **{**FAST, "steps": 6}, request=session("live"))
    next(gen)  # "starting…"
    first = next(gen)
    assert "step 1/6" in first[0]
    h.live_attention_mode("causal", request=session("live"))
    h.live_attention_mode("spatial", request=session("someone-else"))  # another session: no effect here
    second = next(gen)
    assert "mode `causal`" in second[0] and "full · DDIM ×1 → causal · DDIM ×1" in second[0]
    h.live_sampler("Euler", request=session("live"))
    rest = list(gen)
    manifest = rest[-1][4]
    assert manifest["attention_modes_used"] == ["causal", "full"]
    assert [s["mode"] for s in manifest["steps"]][:2] == ["full", "causal"]
    assert "Euler" in manifest["samplers_used"] and manifest["samplers_used"][0] == "DDIM"


def test_stop_ends_within_a_step_and_keeps_the_preview(app_ready):
    gen = h.text_to_video("a green circle moves left", True, **{**FAST, "steps": 20}, request=session("stopper"))
    next(gen)
    step1 = next(gen)
    assert isinstance(step1[1], np.ndarray)
    assert "stopping" in h.stop_run(request=session("stopper"))
    rest = list(gen)
    assert len(rest) == 1  # no further denoising step after Stop
    status, preview, mp4, files, manifest, _ = rest[0]
    assert "stopped" in status and np.array_equal(preview, step1[1])  # the last preview stays on screen
    assert manifest["stopped"] is True and manifest["timings"]["steps_done"] == 1
    assert Path(mp4).exists()
    assert h.ACTIVE_RUNS.get("stopper") is None
    assert h.stop_run(request=session("stopper")) is not None  # nothing to stop: harmless


def test_abandoned_run_is_stopped(app_ready):
    gen = h.text_to_video("a red circle", True, **{**FAST, "steps": 10}, request=session("gone"))
    next(gen)
    next(gen)
    run = h.ACTIVE_RUNS.get("gone")
    gen.close()  # what Gradio's cancel / a closed tab does to the generator
    assert run.control.stopped and h.ACTIVE_RUNS.get("gone") is None


def test_random_seed_is_reported(app_ready):
    outputs = run_all(h.text_to_video("a red circle", True, **{**FAST, "steps": 1, "random_seed": True}))
    seed = outputs[0][5]
    assert isinstance(seed, int) and outputs[-1][4]["request"]["seed"] == seed


# --------------------------------------------------------------------------------------- tabs' own inputs
def test_image_tab_crops_any_size(app_ready, bad_files):
    preview = h.image_preview(str(bad_files["good_png"]))
    assert preview.shape == (256, 256, 3)
    outputs = run_all(h.image_to_video("", str(bad_files["good_png"]), **{**FAST, "steps": 2}))
    assert outputs[-1][4]["ui"]["image_size"] == [90, 160]


def test_image_examples_name_an_object_of_their_frame_so_the_motion_is_planned_from_it(app_ready):
    from vdemo.ui.tabs import example_images
    from vdemo.ui.tabs.image import EXAMPLE_PROMPTS

    assert len(EXAMPLE_PROMPTS) == len(example_images())
    for path, prompt in zip(example_images(), EXAMPLE_PROMPTS):
        plan = run_all(h.image_to_video(prompt, path, **{**FAST, "steps": 1}))[-1][4]["motion_plan"]
        assert (plan["directions"] == [prompt.split()[-1]]) if prompt else plan is None, (path, prompt, plan)


def test_image_tab_switches_turn_the_plan_and_the_cut_and_drag_reference_off(app_ready, tmp_path):
    """A red circle and a caption that moves it, on tiny-v2: planned and dragged by default; the drag switch keeps the
    plan (as strokes) but drops the reference; the plan switch drops both (nothing left to drag along)."""
    from PIL import Image

    from vdemo import world
    from vdemo.backends import load_backend

    spec = {"kind": "objects", "background": "black", "shared_motion": False, "objects": [
        {"colour": "red", "shape": "circle", "radius": 0.15, "motion": "still", "start": [0.3, 0.5],
         "end": [0.3, 0.5]}]}
    path = tmp_path / "circle.png"
    Image.fromarray(world.make_clip(spec, 2, 128).frames[0]).save(path)
    fast = {**FAST, "backend": "tiny-v2", "steps": 1, "guidance": 1.0}
    takes_reference = load_backend("tiny-v2").model.cfg.reference

    def manifest(**switches) -> dict:
        return run_all(h.image_to_video("a red circle moves right", str(path), **fast, **switches))[-1][4]

    for switches, planned, reference in (({}, True, "cut-and-drag along the strokes"),
                                         ({"drag": False}, True, "first frame"),
                                         ({"plan_motion": False}, False, "first frame")):
        m = manifest(**switches)
        assert (m["motion_plan"] is not None) is planned, switches
        assert m["request"]["plan_motion"] is switches.get("plan_motion", True)
        assert m["request"]["drag_reference"] is switches.get("drag", True)
        if takes_reference:  # the shipped tiny-v2 does; a random stand-in (VDEMO_TEST_RANDOM_MODEL=1) may not
            assert m["reference"] == reference, switches


@pytest.mark.parametrize("preset", ["walk", "wave", "jump", "squat"])
def test_pose_presets_render(app_ready, preset):
    grid = h.pose_preview("Preset", preset, None, None, 8, "tiny")
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.max() > 0


def test_depth_presets_render(app_ready):
    from vdemo import world

    for preset in world.DEPTH_PRESETS:
        grid = h.depth_preview("Preset", preset, "DPT-hybrid", None, None, 8, "tiny")
        assert grid.max() > 0


def test_uploaded_control_images(app_ready, tmp_path):
    from vdemo import world

    pose = world.pose_clip("wave", 5, 64)
    names = []
    for i, frame in enumerate(pose[::-1]):  # written in reverse, named in order: name order wins
        path = tmp_path / f"skel_{4 - i:02d}.png"
        Image.fromarray(frame).save(path)
        names.append(str(path))
    clip = sources.pose_frames("Skeleton images", "walk", None, names, 5, 64)
    assert np.array_equal(clip, pose)
    depth_path = tmp_path / "depth.png"
    Image.fromarray(world.depth_clip("approach", 1, 64)[0]).save(depth_path)
    outputs = run_all(h.depth_to_video("", "Depth maps", "approach", "DPT-hybrid", None, [str(depth_path)],
                                       **{**FAST, "steps": 1}))
    assert outputs[-1][4]["ui"]["depth_source"] == "Depth maps"


def test_pose_and_depth_extraction_with_random_weights(app_ready, bad_files, openpose_weights_dir,
                                                       midas_small_weights_dir, monkeypatch):
    from vdemo.ui import detectors

    monkeypatch.setenv(detectors.OPENPOSE_ENV, str(openpose_weights_dir))
    monkeypatch.setenv(detectors.MIDAS_ENV, str(midas_small_weights_dir))
    detectors.openpose_detector.cache_clear()
    detectors.midas_detector.cache_clear()
    try:
        pose = sources.pose_frames("Extract from image/video", "walk", str(bad_files["good_png"]), None, 4, 64)
        assert pose.shape == (1, 64, 64, 3)  # one image in, one skeleton frame out (resampled to F at run time)
        depth = sources.depth_frames("Extract from image/video", "approach", "MiDaS small",
                                     str(bad_files["good_png"]), None, 4, 64)
        assert depth.shape == (1, 64, 64) and depth.dtype == np.uint8
    finally:
        detectors.openpose_detector.cache_clear()
        detectors.midas_detector.cache_clear()


# ------------------------------------------------------------------------------------------------ strokes pad
def test_strokes_pad_add_undo_clear_edit(app_ready):
    base = h.strokes_base(None, 7)
    assert base.shape == (384, 384, 3)
    drag = SimpleNamespace(_data={"points": [[0.3, 0.5], [0.4, 0.45], [0.6, 0.4], [0.8, 0.42]]})
    state, text, pad = h.strokes_add([], base, 0.1, 8, drag)
    assert len(state) == 1 and state[0].points[0] == (0.3, 0.5) and state[0].points[-1] == (0.8, 0.42)
    assert pad.startswith("data:image/png;base64,")
    click = SimpleNamespace(_data={"points": [[0.5, 0.8], [0.5005, 0.8]]})  # a jittery click is an anchor
    state, text, _ = h.strokes_add(state, base, 0.05, 8, click)
    assert state[1].is_anchor and len(state[1].points) == 1 and state[1].radius == 0.05
    assert [len(s["points"]) for s in json.loads(text)] == [4, 1]
    state, text, _ = h.strokes_undo(state, base, 8)
    assert len(state) == 1 and len(json.loads(text)) == 1
    state, text, _ = h.strokes_clear(base, 8)
    assert state == [] and text == "[]"
    state, _ = h.strokes_edit('[{"points": [[0.1, 0.1], [0.9, 0.9]], "radius": 0.2}]', base, 8)
    assert state[0].radius == 0.2
    with pytest.raises(gr.Error) as err:
        h.strokes_edit('[{"points": [[1.5, 0.1]]}]', base, 8)
    assert_one_line_error(err, "outside")
    full = [state[0]] * LIMITS.max_strokes
    with pytest.raises(gr.Error) as err:
        h.strokes_add(full, base, 0.1, 8, drag)
    assert_one_line_error(err, "undo")


def test_strokes_run_uses_first_frame_and_strokes(app_ready):
    text = '[{"points": [[0.3, 0.5], [0.7, 0.5]], "radius": 0.1}]'
    outputs = run_all(h.strokes_to_video("", text, None, 7, True, **{**FAST, "steps": 2}))
    manifest = outputs[-1][4]
    assert manifest["request"]["modalities"] == ["image", "strokes"]
    assert manifest["request"]["strokes"][0]["points"] == [[0.3, 0.5], [0.7, 0.5]]
    assert manifest["ui"]["first_frame"] == "scene 7"


def test_backend_change_offers_only_supported_options(app_ready):
    updates = h.on_backend_change("tiny", "causal", "DDIM")
    assert updates[0]["value"] == "causal" and "sparse_causal" in updates[0]["choices"]
    assert updates[4]["maximum"] == LIMITS.max_frames
    assert all(u["visible"] for u in updates[5:-1])
    assert "pixel-space" in updates[-1]["value"]  # the backend's note under the dropdown
    assert "blob" in h.on_backend_change("tiny-v2", "causal", "DDIM")[-1]["value"]


def test_backend_change_hides_what_a_hub_backend_cannot_do():
    from vdemo.backends import backend_names
    from vdemo.config import MODALITIES

    if "svd" not in backend_names():
        pytest.skip("no svd hub backend registered")
    caps = backend_info("svd")
    updates = h.on_backend_change("svd", "full", "DDIM")
    visible = {m: u["visible"] for m, u in zip(MODALITIES, updates[5:])}
    assert visible == {m: m in caps.modalities for m in MODALITIES} and not visible["text"]
    assert updates[1]["value"] == caps.samplers[0] and updates[1]["choices"] == list(caps.samplers)  # no DDIM there


def test_hub_backend_without_weights_is_a_one_line_error(app_ready):
    from vdemo.backends import BUILTIN, backend_names

    hub = [n for n in backend_names() if n not in BUILTIN and "text" in backend_info(n).modalities]
    if not hub:
        pytest.skip("no text-capable hub backend registered")
    caps = backend_info(hub[0])
    with pytest.raises(gr.Error) as err:
        run_all(h.text_to_video("a cat", True, **{**FAST, "backend": hub[0], "attention_mode": caps.attention_modes[0],
                                            "sampler": caps.samplers[0]}))
    assert_one_line_error(err, hub[0])
    assert_app_still_works()
