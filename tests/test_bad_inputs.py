"""The bad-input suite: every wrong input through the app's public API (gradio_client) gets one clear line, and the app
keeps working after it.

Each case names the endpoint, its arguments and the exact message expected. Messages from Gradio's own component
validation (a value outside a dropdown's choices or a slider's range) are already one line and are accepted as they
are. The app's health is checked once per module and after the nastiest cases (a decompression bomb, a 5000-deep JSON).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vdemo.strokes import Stroke

SETTING_NAMES = ("backend", "mode", "sampler", "steps", "guidance", "frames", "fps", "seed", "random_seed")
SMALL = dict(zip(SETTING_NAMES, ["tiny", "full", "DDIM", 2, 3.0, 4, 8, 1, False]))
PROMPT = "a red circle moves right on a black background"
EMPTY_PROMPT = "write a prompt first, e.g. “a red circle moves right on a black background”"
GENERIC = "upstream Gradio app has raised an exception"
NASTY = {"bomb", "deep json"}  # after these, check that the app still generates


def settings(**changes) -> list:
    return list({**SMALL, **changes}.values())


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A 200-byte PNG whose header claims side × side RGB pixels (never decoded: PIL refuses it on open)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


def corrupt_png(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    return path


def text_case(prompt=PROMPT, plan="PLAN", **changes) -> tuple[str, list]:
    return "/text_to_video", [prompt, True if plan == "PLAN" else plan, *settings(**changes)]


def strokes_case(strokes: str, drag=True) -> tuple[str, list]:
    return "/strokes_to_video", ["", strokes, None, 7, drag, *settings()]


SAMPLER_CHOICES = ("['DDIM', 'DDPM', 'Euler', 'Euler a', 'Heun', 'LMS', 'PNDM', 'DEIS', 'UniPC', 'DPM++ 2M', "
                   "'DPM++ 2M Karras', 'DPM++ SDE']")
CAT = ("the built-in model did not understand 'cat', 'playing', 'piano': it knows flat shapes (circle, square, "
       "triangle) in colours, stick figures ('a red person waves') and motions ('moves left', 'moves closer'); for "
       "open prompts use a GPU backend")

# (case id, (api_name, args), the exact message); "IMAGE:<kind>" args become an uploaded file of that kind.
CASES = [
    ("random_seed maybe", text_case(random_seed="maybe"), "random_seed must be true or false, got 'maybe'"),
    ("unknown backend", text_case(backend="nope"), "Value: nope is not in the list of choices: {served}"),
    ("unknown mode", text_case(mode="diagonal"), "Value: 'diagonal' (type: <class 'str'>) is not in the list of "
     "choices: ['spatial', 'temporal', 'full', 'causal', 'sparse_causal']"),
    ("unknown sampler", text_case(sampler="Magic"), f"Value: Magic is not in the list of choices: {SAMPLER_CHOICES}"),
    ("steps over the range", text_case(steps=500), "Value 500 is greater than maximum value 100."),
    ("empty prompt", text_case(prompt=""), EMPTY_PROMPT),
    ("blank prompt", text_case(prompt="   "), EMPTY_PROMPT),
    ("prompt outside the world", text_case(prompt="a cat playing piano"), CAT),
    ("600-char prompt", text_case(prompt="a red circle moves right " * 24),
     "prompt must be at most 500 characters, got 600"),
    ("corrupt png", ("/image_to_video", ["", "IMAGE:corrupt", *settings()]),
     "corrupt.png is not a readable image (UnidentifiedImageError)"),
    ("bomb", ("/image_to_video", ["", "IMAGE:bomb", *settings()]),
     "bomb.png claims far too many pixels (a decompression bomb?); the limit is 4096×4096"),
    ("deep json", strokes_case("[" * 5000 + "]" * 5000),
     'strokes JSON is nested too deeply: expected [{"points": [[x, y], ...], "radius": r}, ...]'),
    ("html in strokes", strokes_case('[{"points": [[0.3, 0.5]], "radius": "<b>big</b>"}]'),
     "stroke 0 radius must be a number, got '&lt;b&gt;big&lt;/b&gt;'"),
    ("not json", strokes_case("<script>alert(1)</script>"),
     "strokes are not valid JSON: Expecting value at position 0"),
    ("no strokes", strokes_case("[]"), "draw at least one stroke on the image first (drag = path, click = anchor)"),
    ("steps abc", text_case(steps="abc"), "steps must be a number, got 'abc'"),
    ("steps None", text_case(steps=None), "steps must be a number, got None"),
    ("guidance high", text_case(guidance="high"), "guidance must be a number, got 'high'"),
    ("frames abc", text_case(frames="abc"), "frames must be a number, got 'abc'"),
    ("frames None", text_case(frames=None), "frames must be a number, got None"),
    ("seed 1.5", text_case(seed=1.5), "seed must be a whole number, got 1.5"),
    ("seed x", text_case(seed="x"), "seed must be a number, got 'x'"),
    ("plan_motion yes", text_case(plan="yes"), "plan_motion must be true or false, got 'yes'"),
    ("random_seed 1", text_case(random_seed=1), "random_seed must be true or false, got 1"),
    ("drag yes", strokes_case('[{"points": [[0.3, 0.5], [0.6, 0.5]], "radius": 0.1}]', drag="yes"),
     "drag must be true or false, got 'yes'"),
    ("image drag yes", ("/image_to_video", ["", "IMAGE:good", *settings(), True, "yes"]),
     "drag must be true or false, got 'yes'"),
    ("image plan_motion 1", ("/image_to_video", ["", "IMAGE:good", *settings(), 1, True]),
     "plan_motion must be true or false, got 1"),
    ("scene 2.5", ("/strokes_to_video", ["", '[{"points": [[0.3, 0.5]], "radius": 0.1}]', None, 2.5, True,
                                        *settings()]),
     "scene must be a whole number, got 2.5"),
]


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-inputs")
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "good.png")
    return {"corrupt": corrupt_png(folder / "corrupt.png"), "bomb": bomb_png(folder / "bomb.png"),
            "good": folder / "good.png"}


def error_of(client, api_name: str, args: list) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=api_name)
    return str(err.value)


def healthy(client) -> None:
    """A small normal run succeeds."""
    status = client.predict(PROMPT, True, *settings(), api_name="/text_to_video")[0]
    assert status.startswith("**done**"), status


def test_app_is_healthy_first(client):
    healthy(client)


@pytest.mark.parametrize("case, call, expected", [pytest.param(*c, id=c[0]) for c in CASES])
def test_bad_input_gets_one_clear_line(client, files, case, call, expected):
    from gradio_client import handle_file

    api_name, args = call
    args = [handle_file(str(files[a.split(":")[1]])) if isinstance(a, str) and a.startswith("IMAGE:") else a
            for a in args]
    message = error_of(client, api_name, args)
    assert GENERIC not in message and "internal error" not in message, message
    assert "\n" not in message
    from vdemo.backends import served_backends

    assert message == expected.replace("{served}", str(served_backends()))  # what this machine serves
    if case in NASTY:
        healthy(client)


def test_too_few_arguments_take_the_page_defaults(client):
    """The client fills the missing trailing settings (fps, seed, random seed) with the page's defaults."""
    args = [PROMPT, True, *settings()[:6]]
    status, *_, manifest, _seed = client.predict(*args, api_name="/text_to_video")
    assert status.startswith("**done**") and manifest["request"]["seed"] == 0
    assert manifest["request"]["num_frames"] == SMALL["frames"] and manifest["request"]["fps"] == 8


def test_a_single_point_stroke_is_an_anchor_and_works(client):
    strokes = '[{"points": [[0.4, 0.5]], "radius": 0.1}]'
    status, *_, manifest, _seed = client.predict("", strokes, None, 7, True, *settings(), api_name="/strokes_to_video")
    assert status.startswith("**done**")
    assert manifest["request"]["strokes"][0]["points"] == [[0.4, 0.5]]


def test_upload_over_the_size_limit_is_one_line(client, app_url, tmp_path):
    """The page's size limit (launch max_file_size) holds for the client, which refuses before uploading, and for the
    server, which refuses a raw upload with HTTP 413."""
    import httpx
    from gradio_client import handle_file

    from vdemo.config import LIMITS

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate((LIMITS.max_upload_mb + 1) * 2**20)
    with pytest.raises(ValueError) as err:
        client.predict("", handle_file(str(huge)), *settings(), api_name="/image_to_video")
    assert "\n" not in str(err.value) and "exceeds the maximum file size" in str(err.value)
    with open(huge, "rb") as f:
        reply = httpx.post(f"{app_url}/gradio_api/upload", files={"files": ("huge.png", f, "image/png")}, timeout=60)
    assert reply.status_code == 413, (reply.status_code, reply.text[:200])
    assert reply.text == f"File size exceeded maximum allowed size of {LIMITS.max_upload_mb * 2**20} bytes."
    healthy(client)


# --------------------------------------------------------------------------------------- warnings, not silence
def photo_like(seed: int, size: int = 256) -> np.ndarray:
    """A photo-like random image: smooth colour fields (an 8×8 grid upsampled bicubically) plus sensor noise."""
    import cv2

    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    image = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def random_pipe():
    import torch

    from vdemo.backends.tiny import TinyBackend
    from vdemo.pipeline import VideoPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield VideoPipeline(TinyBackend.random(seed=0))
    torch.set_num_threads(threads)


def manifest_of(pipe, **fields) -> dict:
    from vdemo.pipeline import Done, GenerationRequest

    request = GenerationRequest(num_frames=4, height=48, width=48, num_steps=1, **fields)
    return next(e for e in pipe.generate(request) if isinstance(e, Done)).manifest


def test_openpose_check_on_real_renderings_and_photos():
    from vdemo import world
    from vdemo.backends.tiny import looks_like_openpose

    for preset in world.POSE_PRESETS:
        for size in (48, 64, 256):
            assert looks_like_openpose(world.pose_clip(preset, 8, size)), (preset, size)
    for seed in range(4):
        assert not looks_like_openpose(np.stack([photo_like(seed + i, 64) for i in range(3)]))
        assert not looks_like_openpose((photo_like(seed, 64) // 6)[None])  # a dark photo: not OpenPose colours
    assert not looks_like_openpose(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))


def test_world_check_on_world_frames_and_photos():
    from vdemo import world
    from vdemo.backends.tiny import shows_its_world

    rng = np.random.default_rng(1)
    for i in range(8):
        clip = world.sample_clip(rng, num_frames=2, size=64, kind=world.KINDS[i % len(world.KINDS)])
        assert shows_its_world(clip.frames[0])
    for seed in range(4):
        assert not shows_its_world(np.asarray(Image.fromarray(photo_like(seed)).resize((64, 64))))
    assert not shows_its_world(np.zeros((64, 64, 3), np.uint8))  # a plain background: no shape at all


def test_a_first_frame_without_world_shapes_warns(random_pipe):
    from vdemo.backends.tiny import NO_SHAPE_WARNING
    from vdemo.ui.sources import scene_frame

    assert manifest_of(random_pipe, image=photo_like(0))["warnings"] == [NO_SHAPE_WARNING]
    assert manifest_of(random_pipe, image=scene_frame(3, 96)[0])["warnings"] == []
    strokes = (Stroke(((0.3, 0.5), (0.7, 0.5)), 0.1),)
    assert manifest_of(random_pipe, image=photo_like(1), strokes=strokes)["warnings"] == [NO_SHAPE_WARNING]
    assert "\n" not in NO_SHAPE_WARNING


def test_pose_frames_that_are_not_openpose_warn(random_pipe):
    from vdemo import world
    from vdemo.backends.tiny import NOT_OPENPOSE_WARNING

    photos = np.stack([photo_like(s, 48) for s in range(4)])
    assert manifest_of(random_pipe, pose=photos)["warnings"] == [NOT_OPENPOSE_WARNING]
    assert manifest_of(random_pipe, pose=world.pose_clip("walk", 4, 48))["warnings"] == []
    assert manifest_of(random_pipe, prompt="a red circle moves right")["warnings"] == []


def test_the_warning_is_in_the_status_line_and_the_manifest(client, tmp_path):
    from gradio_client import handle_file

    from vdemo.backends.tiny import NO_SHAPE_WARNING

    path = tmp_path / "photo.png"
    Image.fromarray(photo_like(2)).save(path)
    status, *_, manifest, _seed = client.predict("", handle_file(str(path)), *settings(), api_name="/image_to_video")
    assert status.startswith("**done**") and f"  \nwarning: {NO_SHAPE_WARNING}" in status
    assert manifest["warnings"] == [NO_SHAPE_WARNING]


# ------------------------------------------------------------------------------------- detectors fail fast offline
@pytest.fixture()
def no_weights(monkeypatch, tmp_path):
    """No local folder, an empty hub cache, and a download that must never be reached."""
    import huggingface_hub
    from controlnet_aux import midas, open_pose

    from vdemo.ui import detectors

    def never(*args, **kwargs):
        pytest.fail("the hub download was reached (its retries take ~24 s offline)")

    for env in (detectors.OPENPOSE_ENV, detectors.MIDAS_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for module in (open_pose, midas, huggingface_hub):
        monkeypatch.setattr(module, "hf_hub_download", never)
    detectors.openpose_detector.cache_clear()
    detectors.midas_detector.cache_clear()
    yield detectors
    detectors.openpose_detector.cache_clear()
    detectors.midas_detector.cache_clear()


def assert_fails_fast(detectors, load, env: str, files: tuple[str, ...], reason: str) -> None:
    import time

    started = time.perf_counter()
    with pytest.raises(detectors.DetectorUnavailable) as err:
        load()
    elapsed = time.perf_counter() - started
    message = str(err.value)
    assert elapsed < 2.0, elapsed
    assert "\n" not in message and f"set {env} to a folder with {', '.join(files)}" in message, message
    assert reason in message, message


@pytest.mark.parametrize("detector", ["openpose", "midas"])
def test_detectors_fail_fast_with_the_hub_offline(no_weights, monkeypatch, detector):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = no_weights
    load, env, files = ((d.openpose_detector, d.OPENPOSE_ENV, d.OPENPOSE_FILES) if detector == "openpose" else
                        (lambda: d.midas_detector("dpt_hybrid"), d.MIDAS_ENV, (d.MIDAS_FILES["dpt_hybrid"],)))
    assert_fails_fast(d, load, env, files, "HF_HUB_OFFLINE is set")


@pytest.fixture()
def silent_endpoint():
    """A local server that accepts connections and never answers (the slow kind of unreachable)."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_detectors_fail_fast_with_the_hub_unreachable(no_weights, monkeypatch, request, kind):
    import huggingface_hub

    endpoint = "http://127.0.0.1:9" if kind == "refused" else request.getfixturevalue("silent_endpoint")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    d = no_weights
    assert_fails_fast(d, d.openpose_detector, d.OPENPOSE_ENV, d.OPENPOSE_FILES, f"{endpoint} is unreachable")
    assert_fails_fast(d, lambda: d.midas_detector("midas_v21_small"), d.MIDAS_ENV,
                      (d.MIDAS_FILES["midas_v21_small"],), f"{endpoint} is unreachable")


def test_detector_weights_in_the_hub_cache_need_no_network(no_weights, monkeypatch, tmp_path):
    import huggingface_hub

    d = no_weights
    cache = tmp_path / "cache"
    snapshot = cache / "models--lllyasviel--Annotators" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--lllyasviel--Annotators" / "refs").mkdir()
    (cache / "models--lllyasviel--Annotators" / "refs" / "main").write_text("0" * 40)
    for name in d.OPENPOSE_FILES:
        (snapshot / name).write_bytes(b"weights")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert d._weights_source(d.OPENPOSE_ENV, d.OPENPOSE_FILES, "OpenPose") == str(snapshot)
    with pytest.raises(d.DetectorUnavailable):  # MiDaS's file is not cached: still one line, at once
        d._weights_source(d.MIDAS_ENV, (d.MIDAS_FILES["dpt_hybrid"],), "MiDaS")


STRICT_AFTER_UPDATE = ["steps abc", "steps None", "guidance high", "steps over the range"]


@pytest.mark.parametrize("case", STRICT_AFTER_UPDATE)
def test_the_checks_hold_after_an_event_updated_the_settings(app_url, case):
    """A backend change updates the steps, guidance and frames sliders, and Gradio then serves that session fresh
    copies of them, built from their class: the strict checks must live on the class, so they hold on the copies."""
    from gradio_client import Client

    session = Client(app_url, verbose=False)  # a session of its own
    session.predict("tiny", "full", "DDIM", api_name="/on_backend_change")
    call = dict((c[0], c[1]) for c in CASES)[case]
    expected = dict((c[0], c[2]) for c in CASES)[case]
    assert expected in error_of(session, *call)
    healthy(session)
