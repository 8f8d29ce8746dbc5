"""Long videos and video-to-video (`vdemo.long`): the window schedule, runs on a random tiny model (fast), Stop
between and within segments, known frames kept exactly, SDEdit on the trained model, drift metrics, bad clips."""

from __future__ import annotations

import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vdemo.long import (
    MAX_LENGTH,
    LongJob,
    LongProgress,
    SegmentDone,
    edit,
    extend,
    flicker,
    generate_long,
    inbetween,
    load_clip,
    plan_windows,
    seam_jump,
    seams,
)
from vdemo.media import MediaError
from vdemo.pipeline import Done, GenerationRequest, RequestError, RunControl

REPO = Path(__file__).resolve().parent.parent
TRAINED = (REPO / "assets" / "tiny" / "config.json").exists()
SIZE = 48  # the tiny backend's smallest frame


@pytest.fixture(scope="module")
def backend(one_torch_thread):
    from vdemo.backends.tiny import TinyBackend

    return TinyBackend.random()


def request(**kw) -> GenerationRequest:
    fields = dict(prompt="a red circle moves right", num_frames=8, height=SIZE, width=SIZE, num_steps=2,
                  plan_motion=False)
    return GenerationRequest(**{**fields, **kw})


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)


def run(backend, job: LongJob, control: RunControl | None = None) -> list:
    return list(generate_long(backend, job, control))


# ------------------------------------------------------------------------------------------------ the schedule
@pytest.mark.parametrize("strategy", ["autoregressive", "hierarchical"])
@pytest.mark.parametrize("length,window,context", [(4, 4, 1), (16, 16, 4), (17, 16, 4), (64, 16, 4), (128, 16, 8),
                                                   (128, 8, 2), (200, 32, 3), (MAX_LENGTH, 16, 4), (33, 5, 4)])
def test_every_frame_is_made_exactly_once_within_window_limits(strategy, length, window, context):
    windows = plan_windows(length, window, context, strategy)
    made = [f for w in windows for f in w.new]
    assert sorted(made) == list(range(length))  # covered, no frame made twice
    assert all(4 <= len(w.frames) <= window and list(w.frames) == sorted(set(w.frames)) for w in windows)
    done: set[int] = set()
    for w in windows:  # a window only conditions on frames made before it
        assert set(w.known) <= done and set(w.known) == set(w.frames) & done
        done |= set(w.frames)


def test_autoregressive_windows_overlap_by_the_context():
    windows = plan_windows(64, 16, 4, "autoregressive")
    assert [w.frames[0] for w in windows] == [0, 12, 24, 36, 48]
    for before, w in zip(windows, windows[1:]):
        assert w.known == before.frames[-4:]  # the previous window's last k frames
    assert seams(windows, 64) == [15, 27, 39, 51]


def test_hierarchical_keyframes_span_the_length_then_gaps_have_both_ends_known():
    windows = plan_windows(128, 16, 4, "hierarchical")
    keys = windows[0]
    assert keys.level == 0 and keys.frames[0] == 0 and keys.frames[-1] == 127 and not keys.known
    for w in windows[1:]:
        assert w.level == 1 and w.known == (w.frames[0], w.frames[-1])  # in-betweening: both ends given
    deep = plan_windows(128, 8, 2, "hierarchical")
    assert max(w.level for w in deep) == 2  # as deep as the length needs: 3 levels at window 8
    assert [w.level for w in deep] == sorted(w.level for w in deep)  # coarse to fine


@pytest.mark.parametrize("args,words", [((300, 16, 4, "autoregressive"), "length"),
                                        ((64, 40, 4, "autoregressive"), "window"),
                                        ((64, 16, 16, "autoregressive"), "context"),
                                        ((64, 16, 4, "sideways"), "strategy")])
def test_bad_schedules_are_one_line_errors(args, words):
    with pytest.raises(RequestError, match=words) as err:
        plan_windows(*args)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------- running
def test_autoregressive_run_streams_segments_and_records_seams(backend):
    events = run(backend, LongJob(request(), 20, "autoregressive", 2))
    progress = [e for e in events if isinstance(e, LongProgress)]
    segments = [e for e in events if isinstance(e, SegmentDone)]
    done = events[-1]
    assert isinstance(done, Done) and not done.stopped and done.frames.shape == (20, SIZE, SIZE, 3)
    assert [s.segment for s in segments] == [0, 1, 2] and segments[-1].made.all()
    assert sorted({p.segment for p in progress}) == [0, 1, 2] and all(p.total == 2 for p in progress)
    long = done.manifest["long"]
    assert long["strategy"] == "autoregressive" and long["seams"] == [7, 13]
    assert [w["frames"][0] for w in long["windows"]] == [0, 6, 12] and len({w["seed"] for w in long["windows"]}) == 3
    assert done.manifest["timings"]["s_per_output_frame"] > 0 and len(done.manifest["steps"]) == 6


def test_extension_keeps_the_uploaded_frames_exactly(backend):
    clip = frames(10)
    job = extend(request(), clip, 12, context=3)
    done = run(backend, job)[-1]
    assert done.frames.shape[0] == 22 and np.array_equal(done.frames[:10], clip)
    assert done.manifest["long"]["windows"][0]["known"] == [7, 8, 9]  # the upload's last 3 frames as context
    assert done.manifest["long"]["kind"] == "extend" and done.manifest["long"]["given_frames"] == list(range(10))


def test_inbetween_keeps_first_and_last(backend):
    first, last = frames(2, seed=1)
    done = run(backend, inbetween(request(), first, last, 20))[-1]
    assert np.array_equal(done.frames[0], first) and np.array_equal(done.frames[-1], last)
    assert done.manifest["long"]["strategy"] == "hierarchical" and done.manifest["long"]["windows"][0]["known"] == [0,
                                                                                                                   19]


def test_stop_between_segments_keeps_what_was_made(backend):
    control = RunControl("full", "DDIM")
    events = []
    for event in generate_long(backend, LongJob(request(), 20, "autoregressive", 2), control):
        events.append(event)
        if isinstance(event, SegmentDone):
            control.stop()
    done = events[-1]
    assert done.stopped and done.frames.shape[0] == 8 and len(done.manifest["long"]["windows"]) == 1
    assert not any(isinstance(e, LongProgress) and e.segment > 0 for e in events)


def test_stop_within_a_segment_ends_at_the_next_step(backend):
    control = RunControl("full", "DDIM")
    events = []
    for event in generate_long(backend, LongJob(request(num_steps=6), 20, "autoregressive", 2), control):
        events.append(event)
        if isinstance(event, LongProgress) and event.segment == 1:
            control.stop()
    later = [e for e in events if isinstance(e, LongProgress) and e.segment == 1]
    assert len(later) == 1 and events[-1].stopped and events[-1].frames.shape[0] == 8


def test_live_mode_reaches_later_segments(backend):
    control = RunControl("full", "DDIM")
    for event in generate_long(backend, LongJob(request(), 14, "autoregressive", 2), control):
        if isinstance(event, SegmentDone) and event.segment == 0:
            control.set_attention_mode("causal")
            control.set_sampler("Euler")
    manifest = event.manifest
    assert manifest["attention_modes_used"] == ["causal", "full"] and manifest["samplers_used"] == ["DDIM", "Euler"]


def test_prompts_per_segment_and_image_as_first_frame(backend):
    image = frames(1, seed=3)[0]
    job = LongJob(request(image=image), 20, "autoregressive", 2, prompts=("a red circle", "a blue square"))
    done = run(backend, job)[-1]
    assert np.array_equal(done.frames[0], image)
    assert [w["prompt"] for w in done.manifest["long"]["windows"]] == ["a red circle", "a blue square",
                                                                       "a blue square"]
    with pytest.raises(RequestError, match="prompts"):
        LongJob(request(), 8, "autoregressive", 2, prompts=("a", "b"))


def test_job_pickles_for_the_gpu_worker():
    job = extend(request(), frames(6), 6)
    again = pickle.loads(pickle.dumps(job))
    assert again.windows == job.windows and np.array_equal(again.given[0][1], job.given[0][1])


def test_a_backend_without_known_frames_is_refused():
    class TextOnly:
        name, modalities = "text-only", frozenset({"text"})

    with pytest.raises(RequestError, match="known frames"):
        next(generate_long(TextOnly(), LongJob(request(), 16, "autoregressive", 2)))


@pytest.mark.skipif(not TRAINED, reason="needs the trained built-in model")
@pytest.mark.parametrize("name", ["tiny", "tiny-v2"])
def test_sdedit_recolours_and_keeps_the_path(one_torch_thread, name):
    """'make the red circle blue': SDEdit at 0.8 on a world clip changes the colour and keeps the path, on both
    built-in models (v2 edits in its latent space: the clip goes through its encoder)."""
    from vdemo import world
    from vdemo.backends import backend_class, tiny_dir
    from vdemo.eval import main_object, track_error

    red = {"colour": "red", "shape": "circle", "motion": "right", "radius": 0.14, "start": [0.2, 0.5],
           "end": [0.8, 0.5]}
    spec = {"kind": "objects", "background": "black", "relation": None, "objects": [red]}
    backend = backend_class(name).from_pretrained(tiny_dir(name=name))
    side = backend.default_size[0]
    clip = world.make_clip(spec, 16, side)
    req = GenerationRequest(prompt="a blue circle moves right on a black background", num_frames=16, num_steps=5,
                            height=side, width=side, guidance=backend.default_guidance)
    done = run(backend, edit(req, clip.frames, 0.8))[-1]
    assert done.frames.shape == (16, side, side, 3)
    assert len(done.manifest["steps"]) == 4  # 0.8 of 5 steps
    bg = world.BACKGROUNDS["black"]
    colours = [d.colour if (d := main_object(f, bg)) else None for f in done.frames]
    assert colours.count("blue") >= 12, colours
    assert track_error(done.frames, bg, "blue", clip.paths[0]) < 0.05
    with pytest.raises(RequestError, match="strength"):
        edit(req, clip.frames, 1.5)


def test_sdedit_keeps_a_windows_known_frames_as_given():
    """An edit window with known frames (a later window's context) on an x0-predicting model: they come out as
    given, as in an ordinary run; keep_known=False lets the model redraw them."""
    from vdemo.backends.tiny import TinyBackend
    from vdemo.long import sdedit_run

    backend = TinyBackend.random(prediction_type="sample")
    clip, context = frames(8, seed=1), frames(2, seed=2)
    req = request(keyframes=((0, context[0]), (1, context[1])))
    done = list(sdedit_run(backend, req, RunControl("full", "DDIM"), clip, 0.8))[-1]
    assert np.array_equal(done.frames[:2], context) and not np.array_equal(done.frames[2], clip[2])
    redrawn = list(sdedit_run(backend, GenerationRequest(**{**req.__dict__, "keep_known": False}),
                              RunControl("full", "DDIM"), clip, 0.8))[-1]
    assert not np.array_equal(redrawn.frames[:2], context)


# ------------------------------------------------------------------------------------------------------ metrics
def test_flicker_and_seam_jump():
    still = np.zeros((8, 4, 4, 3), np.uint8)
    assert flicker(still).tolist() == [0.0] * 7
    ramp = np.stack([np.full((4, 4, 3), 2 * i, np.uint8) for i in range(8)])
    ramp[4:] += 20  # a jump between frames 3 and 4
    jump = seam_jump(ramp, [3])
    assert jump["seam_change"] == 22 and jump["within_change"] == 2 and jump["seam_ratio"] == 11


# -------------------------------------------------------------------------------------------------- bad clips
def _zip(path: Path, images: dict[str, np.ndarray]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, image in images.items():
            buf = path.parent / f"tmp-{Path(name).name}"
            Image.fromarray(image).save(buf)
            archive.write(buf, name)
    return path


def test_zip_of_frames_loads_in_name_order(tmp_path):
    clip = frames(3)
    loaded = load_clip(_zip(tmp_path / "f.zip", {"b/002.png": clip[2], "b/000.png": clip[0], "b/001.png": clip[1]}))
    assert np.array_equal(loaded, clip)


def test_bad_clips_are_one_line_errors(tmp_path):
    import imageio_ffmpeg

    (tmp_path / "notes.txt").write_text("x")
    cases = {"empty.zip": "no image files", "junk.zip": "not a readable zip", "junk.mp4": "not a readable video",
             "empty.webm": "empty", "long.mp4": "the limit is"}
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.write(tmp_path / "notes.txt", "notes.txt")
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (tmp_path / "empty.webm").write_bytes(b"")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "color=c=gray:s=16x16:r=2:d=12", "-pix_fmt", "yuv420p", "-y", str(tmp_path / "long.mp4")],
                   check=True)
    for name, words in cases.items():
        with pytest.raises(MediaError, match=words) as err:
            load_clip(tmp_path / name)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------- AnimateDiff (hub)
@pytest.fixture(scope="module")
def animatediff(tmp_path_factory, one_torch_thread):
    import os

    from hub_fixtures import build_hub_folder

    from vdemo.backends.hub import load_hub_backend

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backend = load_hub_backend("animatediff", local_dir=build_hub_folder(tmp_path_factory.mktemp("hub-long")))
    backend.free_noise_context, backend.free_noise_stride = 4, 2  # the tiny adapter's "trained length"
    return backend


def _motion_processors(backend) -> set[str]:
    unet = backend.pipes[()].unet
    return {type(m.processor).__name__ for name, m in unet.named_modules() if "motion_modules" in name and
            hasattr(m, "processor")}


@pytest.mark.hub
def test_animatediff_free_noise_for_longer_clips_then_back(animatediff):
    from vdemo.pipeline import VideoPipeline

    pipe = VideoPipeline(animatediff)
    lab = _motion_processors(animatediff)
    ad = GenerationRequest(prompt="a red circle moves right", num_frames=8, height=32, width=32, num_steps=2,
                           attention_mode="temporal")
    done = list(pipe.generate(ad))[-1]
    assert done.frames.shape == (8, 32, 32, 3) and done.manifest["free_noise"]["on"] is True
    short = GenerationRequest(prompt=ad.prompt, num_frames=4, height=32, width=32, num_steps=2, attention_mode="causal")
    done = list(pipe.generate(short))[-1]
    assert done.frames.shape == (4, 32, 32, 3) and done.manifest["free_noise"]["on"] is False
    assert lab and _motion_processors(animatediff) == lab  # the lab's processors are back on the motion modules
    adapter = animatediff.pipes[()].motion_adapter
    name, param = next(iter(adapter.named_parameters()))
    assert animatediff.pipes[()].unet.get_parameter(name) is param  # and the adapter's weights shared again


@pytest.mark.hub
def test_animatediff_edits_a_clip_with_video_to_video(animatediff):
    clip = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), np.uint8)
    req = GenerationRequest(prompt="a blue circle", num_frames=4, height=32, width=32, num_steps=4)
    control = RunControl("temporal", "DDIM")
    events = list(generate_long(animatediff, edit(req, clip, 0.5), control))
    done = events[-1]
    assert done.frames.shape == (4, 32, 32, 3) and done.manifest["long"]["kind"] == "edit"
    assert 1 <= len(control.history) <= 3 and any(isinstance(e, LongProgress) for e in events)  # part of the schedule
    assert animatediff._edit is None and animatediff._active == ()
    with pytest.raises(RequestError, match="known frames"):  # two windows would need the second to see the first
        next(generate_long(animatediff, edit(replace_frames(req, 4), np.concatenate([clip, clip]), 0.5)))


def replace_frames(req: GenerationRequest, n: int) -> GenerationRequest:
    from dataclasses import replace

    return replace(req, num_frames=n)
