"""Round trips through the app's public API with gradio_client: all five api_names return a playable mp4 + manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SETTINGS = ["tiny", "full", "DDIM", 3, 3.0, 6, 8, 1, False]  # backend, mode, sampler, steps, guidance, frames, fps,
#                                                              seed, random seed


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    from vdemo.ui.sources import scene_frame

    path = tmp_path_factory.mktemp("client") / "first.png"
    Image.fromarray(scene_frame(3, 200)[0]).save(path)
    return str(path)


def _video_path(value) -> Path:
    """gr.Video's API value: a path, or {"video": path, "subtitles": ...}."""
    if isinstance(value, dict):
        value = value.get("video") or value.get("path")
    return Path(value)


def assert_playable_mp4(path: Path, num_frames: int) -> None:
    import imageio_ffmpeg

    assert path.suffix == ".mp4" and path.stat().st_size > 0
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    assert meta["codec"].startswith("h264") and "yuv420p" in meta["pix_fmt"], meta
    assert frames == num_frames and min(meta["size"]) >= 64


def test_api_lists_the_five_endpoints(client):
    info = client.view_api(print_info=False, return_format="dict")
    names = set(info["named_endpoints"])
    assert {"/text_to_video", "/image_to_video", "/pose_to_video", "/depth_to_video", "/strokes_to_video"} <= names
    params = [p["parameter_name"] for p in info["named_endpoints"]["/strokes_to_video"]["parameters"]]
    assert params[:5] == ["prompt", "strokes", "image", "scene", "drag"] and params[-1] == "random_seed"
    image = info["named_endpoints"]["/image_to_video"]["parameters"]
    # the Image tab's switches trail the settings, optional (default on): a call written before them still works
    assert [p["parameter_name"] for p in image][-3:] == ["random_seed", "plan_motion", "drag"]
    assert [(p["parameter_has_default"], p["parameter_default"]) for p in image[-2:]] == [(True, True), (True, True)]


def test_the_image_tabs_switches_by_keyword(client, image_file):
    """Scene 3 has a white triangle: a prompt that moves it is planned from the image unless plan_motion is off."""
    from gradio_client import handle_file

    def manifest(**switches):
        return client.predict("a white triangle moves right", handle_file(image_file), *SETTINGS, **switches,
                              api_name="/image_to_video")[4]

    planned, unplanned = manifest(), manifest(plan_motion=False, drag=False)
    assert planned["motion_plan"]["directions"] == ["right"] and planned["request"]["drag_reference"] is True
    assert unplanned["motion_plan"] is None and unplanned["request"]["drag_reference"] is False


@pytest.mark.parametrize("api_name, args", [
    ("/text_to_video", ["a red circle moves right on a black background", True]),
    ("/image_to_video", ["", "IMAGE"]),
    ("/pose_to_video", ["a red person walks right", "Preset", "walk", None, None]),
    ("/depth_to_video", ["", "Preset", "approach", "DPT-hybrid", None, None]),
    ("/strokes_to_video", ["", '[{"points": [[0.3, 0.5], [0.7, 0.5]], "radius": 0.1}]', None, 7, True]),
])
def test_round_trip(client, image_file, api_name, args):
    from gradio_client import handle_file

    args = [handle_file(image_file) if a == "IMAGE" else a for a in args]
    status, preview, video, files, manifest, seed = client.predict(*args, *SETTINGS, api_name=api_name)
    assert "done" in status
    assert_playable_mp4(_video_path(video), num_frames=6)
    suffixes = sorted(Path(f if isinstance(f, str) else f["path"]).suffix for f in files)
    assert suffixes == [".gif", ".json", ".mp4", ".zip"]
    assert manifest["request"]["num_frames"] == 6 and manifest["request"]["num_steps"] == 3
    assert manifest["ui"]["tab"] == api_name.strip("/").split("_")[0]
    assert manifest["attention_modes_used"] == ["full"] and manifest["stopped"] is False
    saved = next(Path(f if isinstance(f, str) else f["path"]) for f in files
                 if str(f if isinstance(f, str) else f["path"]).endswith(".json"))
    assert json.loads(saved.read_text())["request"]["seed"] == 1
    assert seed == 1
    grid = np.asarray(Image.open(preview if isinstance(preview, str) else preview["path"]))
    assert grid.shape[0] >= 64 and grid.shape[2] == 3  # the last streamed preview: all frames in one grid


def test_bad_input_through_the_api_is_a_one_line_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict("", "[]", None, 7, True, *SETTINGS, api_name="/strokes_to_video")
    assert "draw at least one stroke" in str(err.value) and "\n" not in str(err.value).strip()
    status = client.predict("a red circle", True, *SETTINGS, api_name="/text_to_video")[0]
    assert "done" in status  # the app keeps working


def test_upload_over_the_limit_is_refused(client, tmp_path):
    from gradio_client import handle_file

    from vdemo.config import LIMITS

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate((LIMITS.max_upload_mb + 5) * 2**20)
    with pytest.raises(Exception) as err:
        client.predict("", handle_file(str(huge)), *SETTINGS, api_name="/image_to_video")
    assert "size" in str(err.value).lower() or "large" in str(err.value).lower(), err.value
