"""The shared pipeline on the tiny random-weight backend: events, live toggles, stop, samplers, validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vdemo.backends.tiny import TinyBackend
from vdemo.config import ATTENTION_MODES
from vdemo.pipeline import Done, GenerationRequest, Progress, RequestError, VideoPipeline
from vdemo.samplers import SAMPLERS
from vdemo.strokes import Stroke

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    return VideoPipeline(TinyBackend.random(seed=0))


def small(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle moves right on a black background", num_frames=4, height=48, width=48,
                num_steps=3, guidance=2.0, seed=1)
    return GenerationRequest(**{**base, **kw})


def run_all(pipe: VideoPipeline, request: GenerationRequest) -> tuple[list[Progress], Done]:
    events = list(pipe.generate(request))
    assert isinstance(events[-1], Done)
    return events[:-1], events[-1]


def run_acting_at(run, step: int, action) -> tuple[list[Progress], Done]:
    """Drive a run; call `action()` right after the Progress event of `step`."""
    progress, done = [], None
    for event in run:
        if isinstance(event, Progress):
            progress.append(event)
            if event.step == step:
                action()
        else:
            done = event
    return progress, done


def test_events_previews_and_manifest(pipe):
    progress, done = run_all(pipe, small())
    assert [p.step for p in progress] == [1, 2, 3] and all(p.total == 3 for p in progress)
    for p in progress:
        assert p.preview.shape == (4, 48, 48, 3) and p.preview.dtype == np.uint8
    assert done.frames.shape == (4, 48, 48, 3) and done.frames.dtype == np.uint8
    m = done.manifest
    assert m["backend"] == "tiny" and m["request"]["seed"] == 1 and m["request"]["num_steps"] == 3
    assert m["request"]["modalities"] == ["text"] and not m["stopped"]
    assert m["timings"]["total_s"] > 0 and m["timings"]["first_preview_s"] > 0
    assert [s["mode"] for s in m["steps"]] == ["full"] * 3


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_finite_and_deterministic(pipe, sampler):
    if sampler not in pipe.backend.samplers:
        with pytest.raises(RequestError, match="does not support sampler"):
            pipe.start(small(sampler=sampler))
        return
    _, a = run_all(pipe, small(sampler=sampler, num_steps=4))
    _, b = run_all(pipe, small(sampler=sampler, num_steps=4))
    assert np.array_equal(a.frames, b.frames), "same seed must give the same frames"
    _, c = run_all(pipe, small(sampler=sampler, num_steps=4, seed=2))
    assert not np.array_equal(a.frames, c.frames), "another seed must give other frames"


def test_all_modalities_and_modes(pipe):
    rng = np.random.default_rng(0)
    req = small(image=rng.integers(0, 255, (100, 80, 3), dtype=np.uint8),
                pose=rng.integers(0, 255, (7, 64, 64, 3), dtype=np.uint8),
                depth=rng.integers(0, 255, (7, 64, 64), dtype=np.uint8),
                strokes=(Stroke(((0.2, 0.2), (0.8, 0.5)), 0.1), Stroke(((0.5, 0.5),), 0.1)))
    assert req.modalities == {"text", "image", "pose", "depth", "strokes"}
    outs = {}
    for mode in ATTENTION_MODES:
        _, done = run_all(pipe, GenerationRequest(**{**req.__dict__, "attention_mode": mode}))
        assert np.isfinite(done.frames).all()
        outs[mode] = done.frames
    assert not np.array_equal(outs["spatial"], outs["full"]), "the mode must change the result"


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "LCM"])  # LCM: an LCM-distilled backend's only
def test_known_frames_come_out_exactly_as_given(sampler):
    """v1 (pixel space, x0-prediction like the shipped one): a first frame and a keyframe are the known sample, so
    every preview and the result show them pixel for pixel (fitted to the frame), on every sampler (PNDM's and DEIS's
    last step does not land on x0: the result is replaced too); keep_known=False lets the model redraw them, and a
    v-predicting model's output is never touched."""
    from vdemo.media import fit_image

    pipe = VideoPipeline(TinyBackend.random(seed=0, prediction_type="sample"))
    rng = np.random.default_rng(0)
    image, key = rng.integers(0, 255, (100, 80, 3), dtype=np.uint8), rng.integers(0, 255, (48, 48, 3), np.uint8)
    req = small(image=image, keyframes=((3, key),), sampler=sampler)
    progress, done = run_all(pipe, req)
    for frames in [p.preview for p in progress] + [done.frames]:
        assert np.array_equal(frames[0], fit_image(image, 48, 48)) and np.array_equal(frames[3], key)
    assert not np.array_equal(done.frames[1], done.frames[0])  # the frames between are the model's own
    assert pipe.backend.known_sample(pipe.backend.prepare(small())) is None
    _, redrawn = run_all(pipe, GenerationRequest(**{**req.__dict__, "keep_known": False}))
    assert not np.array_equal(redrawn.frames[0], done.frames[0]) and redrawn.manifest["request"]["keep_known"] is False
    v_model = VideoPipeline(TinyBackend.random(seed=0))
    _, a = run_all(v_model, small(image=image, sampler=sampler))
    v_model.backend.known_sample = lambda cond: pytest.fail("a v-predicting model's output must not be replaced")
    _, b = run_all(v_model, small(image=image, sampler=sampler))
    assert np.array_equal(a.frames, b.frames)


def test_keep_known_must_be_a_bool():
    with pytest.raises(RequestError, match="keep_known must be true or false, got 'no'"):
        small(keep_known="no")


def test_live_mode_switch_takes_effect_next_step(pipe):
    _, plain = run_all(pipe, small(num_steps=4, attention_mode="spatial"))
    run = pipe.start(small(num_steps=4, attention_mode="spatial"))
    progress, done = run_acting_at(run, 2, lambda: run.set_attention_mode("causal"))
    assert [p.mode for p in progress] == ["spatial", "spatial", "causal", "causal"]
    assert done.manifest["attention_modes_used"] == ["causal", "spatial"]
    assert not np.array_equal(plain.frames, done.frames)


def test_live_sampler_switch(pipe):
    run = pipe.start(small(num_steps=6, sampler="DDIM"))
    progress, done = run_acting_at(run, 3, lambda: run.set_sampler("Euler"))  # the run's own setter, from the loop
    samplers = [p.sampler for p in progress]
    assert samplers[:3] == ["DDIM"] * 3 and set(samplers[3:]) == {"Euler"}
    assert done.manifest["samplers_used"] == ["DDIM", "Euler"]
    assert np.isfinite(done.frames.astype(float)).all()


def test_stop_within_one_step(pipe):
    run = pipe.start(small(num_steps=10))
    progress, done = run_acting_at(run, 2, lambda: threading.Thread(target=run.stop).start())
    assert progress[-1].step <= 3 and done.stopped and done.manifest["stopped"]
    assert done.frames.shape == (4, 48, 48, 3), "a stopped run keeps its last prediction"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_frames": 0}, "num_frames must be 4–32, got 0"),
        ({"num_frames": 10_000}, "num_frames must be 4–32, got 10000"),
        ({"num_steps": 0}, "num_steps must be 1–100, got 0"),
        ({"guidance": float("nan")}, "guidance must be a finite number"),
        ({"guidance": float("inf")}, "guidance must be a finite number"),
        ({"guidance": -1.0}, "guidance must be 0–20, got -1"),
        ({"seed": -5}, "seed must be 0–4294967295"),
        ({"height": 50}, "height must be a multiple of 8"),
        ({"width": 4096}, "width must be 32–1024"),
        ({"attention_mode": "diagonal"}, "unknown attention mode 'diagonal'"),
        ({"sampler": "Magic"}, "unknown sampler 'Magic'; choose one of: DDIM"),
        ({"image": np.zeros((4, 4), np.uint8)}, "image must be an RGB uint8 array"),
        ({"pose": np.zeros((3, 8, 8, 3), np.uint8), "depth": np.zeros((4, 8, 8), np.uint8)},
         "pose and depth clips must have the same length"),
        ({"pose": np.zeros((0, 8, 8, 3), np.uint8)}, "pose clip has no frames"),
    ],
)
def test_bad_requests_one_line_errors(changes, message):
    with pytest.raises(RequestError) as err:
        small(**changes)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_backend_limits_refuse(pipe):
    with pytest.raises(RequestError, match="height must be 48–128, got 256"):
        pipe.start(small(height=256, width=256))
    with pytest.raises(RequestError, match="num_frames must be 4–32"):
        pipe.start(small(num_frames=33))


def test_unsupported_modality_refused():
    backend = TinyBackend.random(seed=0)
    backend.modalities = frozenset({"text"})
    with pytest.raises(RequestError, match="does not support strokes conditioning"):
        VideoPipeline(backend).start(small(strokes=(Stroke(((0.5, 0.5),), 0.1),)))


def test_cpu_bf16_setting(monkeypatch):
    from vdemo.backends.tiny import CPU_BF16_FLAGS, cpu_bf16

    assert cpu_bf16("1") is True and cpu_bf16("0") is False
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        flags = []
    assert cpu_bf16("auto") == any(f in flags for f in CPU_BF16_FLAGS)
    monkeypatch.setenv("VDEMO_CPU_BF16", "0")
    assert TinyBackend.random().bf16 is False and TinyBackend.random().describe()["compute"] == "float32"
    monkeypatch.setenv("VDEMO_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="VDEMO_CPU_BF16 must be 1, 0 or auto"):
        TinyBackend.random()


def test_bf16_autocast_changes_little_and_really_runs():
    import torch

    backend = TinyBackend.random()
    request = small(prompt="a red circle moves right")
    cond = backend.prepare(request)
    x = torch.randn(1, request.num_frames, 3, request.height, request.width, generator=torch.Generator().manual_seed(0))
    outs = {}
    for bf16 in (False, True):
        backend.bf16 = bf16
        outs[bf16] = backend.predict(x, torch.tensor(500.0), cond, 3.0, "full")
        assert outs[bf16].dtype == torch.float32
    gap = (outs[True] - outs[False]).abs()
    assert 0 < float(gap.max()) < 0.05 * float(outs[False].abs().max())
