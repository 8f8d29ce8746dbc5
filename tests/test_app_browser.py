"""The app in a real browser: Debian's headless Chromium driven by Playwright (never `playwright install`).

For every tab: fill the inputs, press Generate, watch the streamed preview change at least twice, and get an mp4 the
browser can play. Also: a mid-run attention-mode switch recorded in the manifest, Stop, a stroke drawn with the mouse,
and time from click to first preview (printed; the target is ≤ 1 s on the built-in model).

Screenshots of each tab after its run go to assets/screenshots/<tab>.png when VDEMO_SCREENSHOTS=1 (else to a temp
folder, so a plain test run leaves the repo untouched).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "assets" / "screenshots"
TRAINED = (REPO / "assets" / "tiny" / "config.json").exists()


RUN_TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")

# Records, in the page, every new preview src and status text with its time since the Generate click.
RECORDER_JS = """
(buttonSelector) => {
  const log = window.__vd = {clickAt: null, previews: [], statuses: []};
  const seen = new Set();
  const current = document.querySelector('#vd-preview img');
  if (current && current.src) seen.add(current.src);
  document.querySelector(buttonSelector).addEventListener('click', () => { log.clickAt = performance.now(); },
                                                            {capture: true, once: true});
  const look = () => {
    if (log.clickAt === null) return;
    const t = performance.now() - log.clickAt;
    const img = document.querySelector('#vd-preview img');
    if (img && img.src && !seen.has(img.src)) { seen.add(img.src); log.previews.push({src: img.src, t}); }
    const status = document.querySelector('#vd-status');
    const text = status ? status.innerText.trim() : '';
    if (text && log.statuses[log.statuses.length - 1]?.text !== text) log.statuses.push({text, t});
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     characterData: true});
  setInterval(look, 20);
}
"""

VIDEO_READY_JS = """
(before) => {
  const v = document.querySelector('#vd-video video');
  return !!v && !!v.src && v.src !== before && v.readyState >= 2 && v.duration > 0 && v.videoWidth > 0;
}
"""  # a new video (not the last run's), loaded and playable


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, app_url):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_url)
    page.wait_for_selector("#vd-generate-text")
    yield page
    context.close()


# --------------------------------------------------------------------------------------------------- helpers
def set_number(page, elem_id: str, value) -> None:
    """A slider's (or number's) value through its number box, as a user types it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def small_settings(page, steps: int = 6, frames: int = 8) -> None:
    set_number(page, "vd-steps", steps)
    set_number(page, "vd-frames", frames)


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label).click()


def generate_and_watch(page, tab: str) -> dict:
    """Click the tab's Generate; wait for a playable mp4; return the in-page log (previews, statuses)."""
    button = f"#vd-generate-{tab}"
    before = page.evaluate("() => { const v = document.querySelector('#vd-video video'); return v ? v.src : ''; }")
    page.evaluate(RECORDER_JS, button)
    page.click(button)
    page.wait_for_function(VIDEO_READY_JS, arg=before, timeout=RUN_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#vd-status').innerText.includes('done')")
    return page.evaluate("() => window.__vd")


def video_facts(page) -> dict:
    return page.evaluate("""() => { const v = document.querySelector('#vd-video video');
        return {src: v.src, readyState: v.readyState, duration: v.duration, width: v.videoWidth,
                height: v.videoHeight}; }""")


def download_urls(page) -> dict[str, str]:
    """The result's download links (mp4, gif, zip, json) from the Downloads accordion."""
    links = page.locator("#vd-files a")
    if links.count() == 0:
        page.get_by_text("Downloads (mp4, gif, frames, manifest)").click()
        page.wait_for_selector("#vd-files a")
    hrefs = page.eval_on_selector_all("#vd-files a", "els => els.map(a => a.href)")
    return {Path(h.split("?")[0]).suffix: h for h in hrefs}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def screenshot(page, tab: str, tmp_path: Path) -> Path:
    """The page at 1280×800 after a run (assets/screenshots/<tab>.png when VDEMO_SCREENSHOTS=1)."""
    folder = SCREENSHOTS if os.environ.get("VDEMO_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{tab}.png"
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(path))
    return path


def check_run(log: dict, page, frames: int, fps: int, label: str) -> float:
    """≥ 2 distinct previews and step counters; a playable mp4 of the right length. Returns the first-preview time."""
    steps_seen = {s["text"].split("\n")[0] for s in log["statuses"] if s["text"].startswith("step")}
    assert len(log["previews"]) >= 2, log
    assert len(steps_seen) >= 2, log["statuses"]
    facts = video_facts(page)
    assert facts["readyState"] >= 2 and facts["width"] >= 64, facts
    assert abs(facts["duration"] - frames / fps) < 0.25, facts
    first_s = log["previews"][0]["t"] / 1000
    print(f"\n[{label}] click → first preview in the browser: {first_s:.3f} s; previews seen: {len(log['previews'])}; "
          f"mp4 {facts['width']}×{facts['height']} {facts['duration']:.2f} s")
    return first_s


# ------------------------------------------------------------------------------------------------------ tabs
def test_text_tab(page, tmp_path, record_property):
    """The page opens on the default model, tiny-v2, at its own defaults (128 px, 10 steps, guidance 2)."""
    assert page.locator("#vd-backend input").input_value() == "tiny-v2"
    assert page.locator("#vd-steps input[type=number]").input_value() == "10"
    assert page.locator("#vd-guidance input[type=number]").input_value() == "2"
    small_settings(page, steps=10, frames=16)  # the defaults: the first-preview latency users get
    page.fill("#vd-prompt-text textarea", "a blue square moves right on a black background")
    log = generate_and_watch(page, "text")
    first_s = check_run(log, page, frames=16, fps=8, label="text, 16 frames")
    record_property("first_preview_s", first_s)
    assert first_s < 5.0  # the target is ≤ 1 s; a loaded shared CPU gets slack here, the number is printed
    screenshot(page, "text", tmp_path)
    urls = download_urls(page)
    manifest = json.loads(fetch(urls[".json"]))
    assert manifest["request"]["prompt"] == "a blue square moves right on a black background"
    # The layout planner's path reaches the model: the page says so, and the blue square really goes right.
    assert "motion planned from the prompt: right" in page.inner_text("#vd-status")
    assert manifest["motion_plan"]["directions"] == ["right"]
    from vdemo.eval import main_object, read_direction

    frames = frames_from_zip(fetch(urls[".zip"]))
    assert read_direction([main_object(f, (0, 0, 0), "blue") for f in frames]) == "right"


def test_text_tab_on_the_v1_model(page, tmp_path):
    """Backend tiny (v1) from the dropdown: its own defaults arrive (20 steps, guidance 3), previews stream, the frames
    are 64 px, and the manifest names it."""
    page.locator("#vd-backend input").click()
    page.get_by_role("option", name="tiny", exact=True).click()
    page.wait_for_function("() => document.querySelector('#vd-steps input[type=number]').value === '20'")
    assert page.locator("#vd-guidance input[type=number]").input_value() == "3"
    set_number(page, "vd-steps", 4)
    set_number(page, "vd-frames", 8)
    page.fill("#vd-prompt-text textarea", "a red triangle moves left on a white background")
    log = generate_and_watch(page, "text")
    check_run(log, page, frames=8, fps=8, label="text, tiny (v1)")
    facts = video_facts(page)
    assert facts["width"] == facts["height"] >= 64  # square (the export upscales small frames for the page)
    screenshot(page, "text_tiny_v1", tmp_path)
    manifest = json.loads(fetch(download_urls(page)[".json"]))
    assert manifest["backend"] == "tiny" and manifest["request"]["height"] == manifest["request"]["width"] == 64


def run_tab_and_check(page, tab: str, tmp_path) -> None:
    """Small settings, Generate, watch previews stream, check the mp4, screenshot the tab."""
    small_settings(page)
    log = generate_and_watch(page, tab)
    check_run(log, page, frames=8, fps=8, label=tab)
    screenshot(page, tab, tmp_path)


def test_image_tab(page, tmp_path):
    from vdemo.ui.sources import scene_frame

    path = tmp_path / "wide.png"
    frame = scene_frame(5, 128)[0]
    Image.fromarray(np.concatenate([frame, frame], axis=1)).save(path)  # 256×128: cropped to a square
    open_tab(page, "Image")
    page.set_input_files("#vd-image-file input[type=file]", str(path))
    page.wait_for_selector("#vd-image-preview img")
    # scene 5's object, which the centre crop puts near the right edge: room to move left
    page.fill("#vd-prompt-image textarea", "an orange circle moves left")
    run_tab_and_check(page, "image", tmp_path)
    manifest = json.loads(fetch(download_urls(page)[".json"]))
    # the default tiny-v2: a path planned from the circle found in the image, and the circle dragged along it
    assert manifest["backend"] == "tiny-v2" and manifest["motion_plan"]["directions"] == ["left"]
    assert manifest["reference"] == "cut-and-drag along the strokes"
    page.uncheck("#vd-drag-image input")
    log = generate_and_watch(page, "image")
    check_run(log, page, frames=8, fps=8, label="image, no drag")
    manifest = json.loads(fetch(download_urls(page)[".json"]))
    assert manifest["motion_plan"]["directions"] == ["left"] and manifest["reference"] == "first frame"


def test_pose_tab(page, tmp_path):
    open_tab(page, "Pose")
    page.locator("#vd-pose-preset input").click()
    page.get_by_role("option", name="wave").click()
    page.wait_for_selector("#vd-control-pose img")
    run_tab_and_check(page, "pose", tmp_path)


def test_depth_tab(page, tmp_path):
    open_tab(page, "Depth")
    page.wait_for_selector("#vd-control-depth img")
    run_tab_and_check(page, "depth", tmp_path)


def test_strokes_tab_draw_with_the_mouse(page, tmp_path):
    from vdemo.strokes import OVERLAY_COLOURS, parse_strokes, resample_stroke
    from vdemo.ui.layout import DEFAULT_SCENE
    from vdemo.ui.sources import scene_frame

    open_tab(page, "Motion strokes")
    canvas = page.locator("#vd-pad canvas")
    canvas.wait_for()
    before = page.eval_on_selector("#vd-pad img", "img => img.src")
    _, scene = scene_frame(DEFAULT_SCENE, 64)
    (x0, y0), (x1, y1) = scene["centre"], (scene["centre"][0] + 0.35, scene["centre"][1] - 0.1)
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    page.mouse.down()
    for t in np.linspace(0, 1, 15)[1:]:  # a slight arc, drawn left to right
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0) - 0.08 * np.sin(np.pi * t)
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#vd-strokes-json textarea').value.includes('points')")
    (stroke,) = parse_strokes(page.input_value("#vd-strokes-json textarea"))
    points = np.asarray(stroke.points)
    assert len(points) >= 10 and np.allclose(points[0], (x0, y0), atol=0.02) and np.allclose(points[-1], (x1, y1),
                                                                                            atol=0.02)
    assert np.all(np.diff(points[:, 0]) > 0)  # drawing order kept: left to right
    page.wait_for_function("(before) => document.querySelector('#vd-pad img').src !== before", arg=before)
    overlay_url = page.eval_on_selector("#vd-pad img", "img => img.src")
    overlay = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(overlay_url.split(",", 1)[1]))))
    colour = np.array(OVERLAY_COLOURS[0])
    mid = (resample_stroke(points, 3)[1] * overlay.shape[0]).round().astype(int)  # the stroke's middle, in px
    patch = overlay[mid[1] - 4: mid[1] + 5, mid[0] - 4: mid[0] + 5].reshape(-1, 3).astype(int)
    assert np.abs(patch - colour).sum(axis=1).min() < 60  # the overlay draws the stroke in its colour

    small_settings(page, steps=8, frames=8)
    log = generate_and_watch(page, "strokes")
    check_run(log, page, frames=8, fps=8, label="strokes")
    screenshot(page, "strokes", tmp_path)
    manifest = json.loads(fetch(download_urls(page)[".json"]))
    assert manifest["request"]["modalities"] == ["image", "strokes"]
    assert np.allclose(manifest["request"]["strokes"][0]["points"], points)

    frames = frames_from_zip(fetch(download_urls(page)[".zip"]))
    error = stroke_following_error(frames, scene, resample_stroke(points, len(frames)))
    print(f"\n[strokes] object-to-stroke distance: {error:.3f} of the frame diagonal")
    assert error < 0.1, "the object must follow the stroke drawn with the mouse"


def test_strokes_tab_on_the_v2_model_cuts_and_drags_the_shape_and_the_checkbox_turns_it_off(page, tmp_path):
    """tiny-v2 in the Motion strokes tab: a stroke that starts on the scene's shape gives the model the cut-and-drag
    reference (the manifest says so) and the object follows the stroke; unticking "Cut and drag" runs without it."""
    from vdemo.strokes import resample_stroke
    from vdemo.ui.layout import DEFAULT_SCENE
    from vdemo.ui.sources import scene_frame

    page.locator("#vd-backend input").click()
    page.get_by_role("option", name="tiny-v2").click()
    page.wait_for_function("() => document.querySelector('#vd-steps input[type=number]').value === '10'")
    open_tab(page, "Motion strokes")
    page.locator("#vd-pad canvas").wait_for()
    _, scene = scene_frame(DEFAULT_SCENE, 128)
    (x0, y0) = scene["centre"]
    end = (min(x0 + 0.3, 0.9), y0)
    box = page.locator("#vd-pad canvas").bounding_box()
    page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    page.mouse.down()
    for t in np.linspace(0, 1, 10)[1:]:  # drawn with the mouse, left to right
        page.mouse.move(box["x"] + (x0 + t * (end[0] - x0)) * box["width"], box["y"] + y0 * box["height"])
    page.mouse.up()
    page.wait_for_function("() => document.querySelector('#vd-strokes-json textarea').value.includes('points')")
    small_settings(page, steps=10, frames=8)  # tiny-v2's default steps
    reference = {}
    for drag in (True, False):
        if not drag:
            page.uncheck("#vd-drag input")
        log = generate_and_watch(page, "strokes")
        check_run(log, page, frames=8, fps=8, label=f"strokes, tiny-v2, drag {drag}")
        manifest = json.loads(fetch(download_urls(page)[".json"]))
        assert manifest["backend"] == "tiny-v2" and manifest["request"]["drag_reference"] is drag
        reference[drag] = manifest["reference"]
        if drag:
            screenshot(page, "strokes_tiny_v2", tmp_path)
            frames = frames_from_zip(fetch(download_urls(page)[".zip"]))
            (stroke,) = manifest["request"]["strokes"]
            target = resample_stroke(np.array(stroke["points"]), len(frames))
            error = stroke_following_error(frames, scene, target)
            print(f"\n[strokes, tiny-v2] object-to-stroke distance: {error:.3f} of the frame diagonal")
            assert error < 0.1, "the dragged object must follow the stroke"
    assert reference == {True: "cut-and-drag along the strokes", False: "first frame"}


def test_strokes_examples_undo_clear(page):
    open_tab(page, "Motion strokes")
    page.locator("#vd-pad canvas").wait_for()
    before = page.eval_on_selector("#vd-pad img", "img => img.src")
    page.get_by_role("gridcell").filter(has_text="[[0.3, 0.5], [0.5, 0.35]").first.click()  # the first example
    page.wait_for_function("(before) => document.querySelector('#vd-pad img').src !== before", arg=before)
    assert json.loads(page.input_value("#vd-strokes-json textarea"))[0]["points"][1] == [0.5, 0.35]
    box = page.locator("#vd-pad canvas").bounding_box()
    page.mouse.click(box["x"] + 0.7 * box["width"], box["y"] + 0.8 * box["height"])  # a click: an anchor
    page.wait_for_function("() => JSON.parse(document.querySelector('#vd-strokes-json textarea').value).length === 2")
    anchor = json.loads(page.input_value("#vd-strokes-json textarea"))[1]
    assert len(anchor["points"]) == 1 and np.allclose(anchor["points"][0], (0.7, 0.8), atol=0.01)
    page.click("#vd-undo")
    page.wait_for_function("() => JSON.parse(document.querySelector('#vd-strokes-json textarea').value).length === 1")
    page.click("#vd-clear")
    page.wait_for_function("() => document.querySelector('#vd-strokes-json textarea').value === '[]'")


def frames_from_zip(data: bytes) -> np.ndarray:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in names])


def stroke_following_error(frames: np.ndarray, scene: dict, target: np.ndarray) -> float:
    """Mean distance (fraction of the diagonal) between the detected object of the scene's colour and the stroke's
    point, per frame (a frame where the object is lost counts as the diagonal)."""
    from vdemo.world import BACKGROUNDS
    from vdemo.world.detect import detect_objects

    errors = []
    for frame, point in zip(frames, target):
        found = [d for d in detect_objects(frame, BACKGROUNDS[scene["background"]], max_objects=None)
                 if d.colour == scene["colour"]]
        errors.append(np.hypot(*(np.subtract(found[0].centre, point))) / np.sqrt(2) if found else 1.0)
    return float(np.mean(errors))


def test_stroke_following_measurement_on_ground_truth():
    """The measurement above, checked where the answer is known: a world clip moving along its own path."""
    from vdemo import world
    from vdemo.strokes import resample_stroke, strokes_from_paths

    spec = world.sample_spec(np.random.default_rng(4), "path")
    clip = world.make_clip(spec, 8, 64)
    scene = {"colour": clip.objects[0]["colour"], "background": clip.meta["background"]}
    (stroke,) = strokes_from_paths(clip.paths[:1], 0.1)
    assert stroke_following_error(clip.frames, scene, resample_stroke(stroke.points, 8)) < 0.02
    reverse = resample_stroke(stroke.points[::-1], 8)
    assert stroke_following_error(clip.frames, scene, reverse) > 0.1


# ------------------------------------------------------------------------------------------- live and stop
def test_mode_switch_mid_run_is_in_the_manifest(page):
    small_settings(page, steps=30, frames=8)
    page.evaluate(RECORDER_JS, "#vd-generate-text")
    page.click("#vd-generate-text")
    page.wait_for_function("() => /step [3-9]\\//.test(document.querySelector('#vd-status').innerText)")
    page.locator("#vd-mode").get_by_text("causal", exact=True).click()
    page.wait_for_function("() => /causal · DDIM ×[2-9]/.test(document.querySelector('#vd-status').innerText)",
                           timeout=RUN_TIMEOUT_MS)
    page.click("#vd-stop")  # two causal steps are enough; the stopped run's manifest is just as complete
    page.wait_for_function(VIDEO_READY_JS, arg="", timeout=RUN_TIMEOUT_MS)
    manifest = json.loads(fetch(download_urls(page)[".json"]))
    modes = [s["mode"] for s in manifest["steps"]]
    assert manifest["attention_modes_used"] == ["causal", "full"]
    assert modes[0] == "full" and modes[-1] == "causal" and modes.index("causal") >= 3
    assert modes == sorted(modes, key=lambda m: m == "causal")  # one switch: full … full, causal … causal


def test_stop_keeps_the_last_preview(page):
    small_settings(page, steps=60, frames=8)
    page.evaluate(RECORDER_JS, "#vd-generate-text")
    page.click("#vd-generate-text")
    page.wait_for_function("() => window.__vd.previews.length >= 2")
    seen_at_stop = page.evaluate("() => window.__vd.previews.length")
    page.click("#vd-stop")
    page.wait_for_function("() => document.querySelector('#vd-status').innerText.includes('stopped')")
    page.wait_for_function(VIDEO_READY_JS, arg="", timeout=RUN_TIMEOUT_MS)
    from vdemo.ui.handlers import preview_image

    shown = np.asarray(Image.open(io.BytesIO(fetch(page.eval_on_selector("#vd-preview img", "img => img.src")))))
    urls = download_urls(page)
    manifest = json.loads(fetch(urls[".json"]))
    assert manifest["stopped"] is True
    # A stopped run's result is its last prediction, so the preview on screen must show exactly those frames.
    assert np.array_equal(shown[..., :3], preview_image(frames_from_zip(fetch(urls[".zip"]))))
    assert manifest["timings"]["steps_done"] <= seen_at_stop + 2  # ended within a step (+1 in flight to the page)


def test_video_tab_long_video_streams_its_segments(page):
    """The Video tab: a 24-frame long video in autoregressive windows streams each finished segment and ends with a
    playable mp4 of all 24 frames."""
    small_settings(page, steps=4, frames=8)
    open_tab(page, "Video")
    page.locator("#vd-video-strategy").get_by_text("autoregressive").click()
    set_number(page, "vd-video-length", 24)
    log = generate_and_watch(page, "video")
    segments = {re.match(r"segment (\d+)/", s["text"])[1] for s in log["statuses"] if s["text"].startswith("segment")}
    assert len(segments) >= 2, log["statuses"]
    facts = video_facts(page)
    assert abs(facts["duration"] - 24 / 8) < 0.25, facts


def test_a_second_user_sees_their_place_and_wait(browser, app_url):
    """Two users at once: the second one's status says it waits, second in line, with an estimate in seconds."""
    pages = []
    for _ in range(2):
        context = browser.new_context(viewport=VIEWPORT)
        p = context.new_page()
        p.set_default_timeout(30_000)
        p.goto(app_url)
        p.wait_for_selector("#vd-generate-text")
        small_settings(p, steps=30, frames=8)
        pages.append(p)
    pages[0].click("#vd-generate-text")
    pages[0].wait_for_function("() => document.querySelector('#vd-status').innerText.startsWith('step')")
    pages[1].click("#vd-generate-text")
    pages[1].wait_for_function("() => document.querySelector('#vd-status').innerText.includes('in line')")
    text = pages[1].inner_text("#vd-status")
    assert text.startswith("waiting: 2nd in line, about ") and " s (1 run ahead; " in text, text
    pages[0].click("#vd-stop")  # the first user stops: the second starts at once
    pages[1].wait_for_function("() => document.querySelector('#vd-status').innerText.startsWith('step')",
                               timeout=RUN_TIMEOUT_MS)
    pages[1].click("#vd-stop")
    pages[1].wait_for_function("() => document.querySelector('#vd-status').innerText.includes('stopped')",
                               timeout=RUN_TIMEOUT_MS)  # closing the page first left this run going (old CI hang)
    for p in pages:
        p.context.close()
