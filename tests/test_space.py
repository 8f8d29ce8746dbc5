"""The hosted Space's pieces without a server: GPU-time estimates and limits, the GPU entry point's errors, live
settings that cross processes, which backends a Space serves, and one-line errors from every endpoint."""

from __future__ import annotations

import logging
import multiprocessing
import pickle

import gradio as gr
import pytest

from vdemo import cost
from vdemo.backends import served_backends, size_setting
from vdemo.errors import UserError
from vdemo.pipeline import Done, GenerationRequest, RequestError, RunControl
from vdemo.ui import gpu
from vdemo.ui import handlers as h


# ------------------------------------------------------------------------------------------------ GPU time
@pytest.mark.parametrize(("sampler", "steps", "calls"), [("DDIM", 20, 20), ("Heun", 20, 39), ("DPM++ SDE", 4, 7),
                                                         ("PNDM", 20, 21), ("Euler", 25, 25)])
def test_model_calls_come_from_the_scheduler(sampler, steps, calls):
    assert cost.model_calls(sampler, steps) == calls


def test_estimate_grows_with_frames_steps_size_calls_and_mode():
    from vdemo.backends.tiny import TinyBackend

    def secs(**kw):
        base = {"num_frames": 16, "height": 64, "width": 64, "num_steps": 20, "sampler": "DDIM", "mode": "full"}
        return cost.estimate_seconds(TinyBackend, **{**base, **kw})

    base = secs()
    assert secs(num_frames=32) > base and secs(num_steps=40) > base and secs(height=128, width=128) > base
    assert secs(sampler="Heun") == pytest.approx(secs(num_steps=39)), "Heun: 2n − 1 model calls"
    assert secs(mode="spatial") < base, "spatial attention costs less than full (the tiny model's default)"
    assert cost.mode_factor(TinyBackend, "full", 16, 64, 64) == pytest.approx(1.0)


def test_a_request_over_the_limit_names_settings_that_fit():
    from vdemo.backends.hub.svd import SVDBackend

    xt = GenerationRequest(num_frames=25, height=576, width=1024, num_steps=25, sampler="Euler",
                           attention_mode="temporal")
    seconds = cost.request_seconds(SVDBackend, xt)
    assert seconds > 60
    with pytest.raises(UserError) as err:
        cost.check_fits(SVDBackend, xt, limit_s=60)
    message = str(err.value)
    assert f"needs about {seconds} s of GPU time, over this Space's 60 s limit" in message and "\n" not in message
    assert "these would fit:" in message and " steps" in message and " frames" in message
    options = cost.fitting_settings(SVDBackend, xt, 60)
    steps = int(options[0].split()[0])
    assert cost.request_seconds(SVDBackend, GenerationRequest(**{**xt.__dict__, "num_steps": steps})) <= 60
    assert cost.request_seconds(SVDBackend, GenerationRequest(**{**xt.__dict__, "num_steps": steps + 1})) > 60
    assert cost.check_fits(SVDBackend, GenerationRequest(**{**xt.__dict__, "num_steps": steps}), limit_s=60) <= 60
    full = GenerationRequest(**{**xt.__dict__, "attention_mode": "full"})
    assert "the temporal attention mode" in cost.fitting_settings(SVDBackend, full, 120)


def test_gpu_limit_setting(monkeypatch):
    monkeypatch.setenv(cost.GPU_LIMIT_ENV, "90")
    assert cost.gpu_limit_s() == 90
    monkeypatch.setenv(cost.GPU_LIMIT_ENV, "soon")
    with pytest.raises(UserError, match="VDEMO_GPU_LIMIT_S must be a number of seconds"):
        cost.gpu_limit_s()
    monkeypatch.delenv(cost.GPU_LIMIT_ENV)
    assert cost.gpu_limit_s() is None, "no limit on a dedicated GPU or a CPU"


def test_the_estimate_shown_next_to_generate(monkeypatch, tiny_model_dir):
    assert h.gpu_estimate("tiny", "full", "DDIM", 20, 16) == "", "nothing to show without a GPU limit"
    monkeypatch.setenv(cost.GPU_LIMIT_ENV, "120")
    assert h.gpu_estimate("tiny", "full", "DDIM", 20, 16).startswith("GPU time for this run ≈ **")
    monkeypatch.setenv(cost.GPU_LIMIT_ENV, "6")
    over = h.gpu_estimate("tiny", "full", "Heun", 100, 32)
    assert "over this Space's 6 s" in over and "try " in over


# ------------------------------------------------------------------------------------------ live settings
def test_a_process_local_run_control_refuses_to_be_pickled():
    with pytest.raises(TypeError, match="settings live in one process"):
        pickle.dumps(RunControl("full", "DDIM"))


def _worker_reads(control: RunControl, ready, go, out) -> None:
    ready.set()
    go.wait(10)
    out.put((control.mode, control.sampler, control.stopped))


def test_shared_settings_reach_a_forked_process():
    """What a ZeroGPU worker sees: the app sets mode, sampler and stop after the worker started."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        control = RunControl("full", "DDIM", shared=manager.dict())
        copy = pickle.loads(pickle.dumps(control))  # what spaces does to the arguments
        assert (copy.mode, copy.sampler, copy.stopped) == ("full", "DDIM", False)
        ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_worker_reads, args=(copy, ready, go, out))
        proc.start()
        ready.wait(10)
        control.set_attention_mode("sparse-causal")
        control.set_sampler("Euler")
        control.stop()
        go.set()
        assert out.get(timeout=10) == ("sparse_causal", "Euler", True)
        proc.join(10)
    with pytest.raises(RequestError, match="unknown sampler"):
        RunControl("full", "DDIM").set_sampler("Fast")


# ---------------------------------------------------------------------------------------- GPU entry point
class _Failing:
    def __init__(self, err: Exception):
        self.err = err

    def run(self, request, control):
        raise self.err
        yield  # a generator, like every backend's run


@pytest.mark.parametrize(("err", "expected"), [
    (RequestError("num_frames must be 4–32, got 500"), "num_frames must be 4–32, got 500"),
    (RuntimeError("CUDA error: invalid configuration argument\nmore lines"),
     "internal error (a bug; the traceback is in the server log): RuntimeError: CUDA error: invalid configuration "
     "argument"),
])
def test_errors_leave_the_gpu_function_as_one_line(monkeypatch, caplog, err, expected):
    from vdemo import backends

    monkeypatch.setattr(backends, "loaded_backend", lambda name: _Failing(err))
    with caplog.at_level(logging.ERROR, logger="vdemo"), pytest.raises(gr.Error) as raised:
        list(gpu.generate_on_gpu("tiny", GenerationRequest(), RunControl("full", "DDIM")))
    assert raised.value.message == expected
    assert ("Traceback" in caplog.text) == isinstance(err, RuntimeError), "bugs are logged with their traceback"


def test_a_backend_not_loaded_before_the_worker_started_is_refused(monkeypatch):
    from vdemo import backends

    monkeypatch.setattr(backends, "loaded_backend", lambda name: None)
    with pytest.raises(gr.Error, match="not loaded in this GPU worker.*VDEMO_SPACE_BACKENDS"):
        list(gpu.generate_on_gpu("animatediff", GenerationRequest(), RunControl("full", "DDIM")))


def test_the_done_event_says_where_it_ran(tiny_model_dir):
    from vdemo.backends import load_backend

    load_backend("tiny")
    events = list(gpu.generate_on_gpu("tiny", GenerationRequest(num_frames=4, num_steps=1),
                                      RunControl("full", "DDIM")))
    assert isinstance(events[-1], Done)
    assert events[-1].manifest["gpu"]["zero_gpu"] is False and events[-1].manifest["gpu"]["requested_s"] > 0


def test_an_internal_error_in_an_endpoint_is_one_line_and_logged(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("boom")

    from vdemo.ui import run

    monkeypatch.setattr(run, "info_or_error", broken)
    with caplog.at_level(logging.ERROR, logger="vdemo"), pytest.raises(gr.Error) as raised:
        list(h.text_to_video("a red circle", True, "tiny", "full", "DDIM", 2, 3.0, 4, 8, 0, False))
    assert raised.value.message == "internal error (a bug; the traceback is in the server log): KeyError: 'boom'"
    assert "Traceback" in caplog.text and "text_to_video" in caplog.text


@pytest.mark.parametrize(("args", "message"), [
    ((2, 3.0, 4, 8, 0, "maybe"), "random_seed must be true or false, got 'maybe'"),
    (("abc", 3.0, 4, 8, 0, False), "steps must be a number, got 'abc'"),
    ((2, "high", 4, 8, 0, False), "guidance must be a number, got 'high'"),
    ((2, 3.0, 4, 8, 1.5, False), "seed must be a whole number, got 1.5"),
    ((None, 3.0, 4, 8, 0, False), "steps must be a number, got None"),
])
def test_wrong_types_are_one_line_user_errors(args, message):
    with pytest.raises(gr.Error) as raised:
        list(h.text_to_video("a red circle", True, "tiny", "full", "DDIM", *args))
    assert raised.value.message == message


# ---------------------------------------------------------------------------------------- what a Space serves
def test_served_backends_setting(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.delenv("VDEMO_SPACE_BACKENDS", raising=False)
    for name in ("ANIMATEDIFF", "ZEROSHOT", "SVD", "SVD_XT"):
        monkeypatch.delenv(f"VDEMO_{name}_DIR", raising=False)
    monkeypatch.setenv("VDEMO_TINY_V2_DIR", str(tmp_path / "no-v2-here"))
    assert served_backends() == ["tiny"], "by default: what has weights here (no hub cache, no local folders)"
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "config.json").write_text("{}")
    monkeypatch.setenv("VDEMO_TINY_V2_DIR", str(tmp_path / "v2"))
    assert served_backends() == ["tiny-v2", "tiny"], "the default built-in model first"
    monkeypatch.setenv("VDEMO_SPACE_BACKENDS", "svd, tiny")
    assert served_backends() == ["tiny", "svd"]
    monkeypatch.setenv("VDEMO_SPACE_BACKENDS", "all")
    assert served_backends()[:2] == ["tiny-v2", "tiny"] and "animatediff" in served_backends()
    monkeypatch.setenv("VDEMO_SPACE_BACKENDS", "tiny,org/some-model")
    with pytest.raises(UserError, match="names unknown backends"):
        served_backends()


def test_a_backend_the_space_did_not_load_is_refused_with_the_reason(monkeypatch):
    from vdemo.ui import space

    monkeypatch.setattr(space, "SERVED", {"tiny": "ok", "svd": "could not load hub backend 'svd': no network"})
    monkeypatch.setenv("VDEMO_SPACE_BACKENDS", "tiny,svd")
    assert h.offered_backends() == ["tiny"]
    with pytest.raises(gr.Error, match="backend 'svd' is not available on this app: could not load"):
        h.check_served("svd")
    with pytest.raises(gr.Error, match="it is not in VDEMO_SPACE_BACKENDS"):
        h.check_served("animatediff")
    monkeypatch.delenv("VDEMO_SPACE_BACKENDS")
    with pytest.raises(gr.Error, match="weights not on this machine: set VDEMO_ANIMATEDIFF_DIR to a folder with "
                                       "base/, motion_adapter/ in the hub layout"):
        h.check_served("animatediff")
    h.check_served("tiny")


def test_unavailable_backends_are_listed_greyed_with_their_reason(monkeypatch, tiny_model_dir):
    """Under the dropdown: a backend that failed, with its (escaped) reason; those without weights, in one line."""
    from vdemo.backends import backend_names
    from vdemo.ui import space
    from vdemo.ui.layout import build_demo
    from vdemo.ui.settings import unavailable_text

    monkeypatch.delenv("VDEMO_SPACE_BACKENDS", raising=False)
    monkeypatch.setattr(space, "SERVED", {"tiny": "ok", "tiny-v2": "ok", "svd": "HubError: <b>broken</b> download"})
    text = unavailable_text()
    first, second = text.split("  \n")
    assert first == "Unavailable here: **svd**: HubError: &lt;b&gt;broken&lt;/b&gt; download"
    missing = [n for n in backend_names() if n not in ("tiny", "tiny-v2", "svd")]
    assert second.startswith("Unavailable here, no weights on this machine: **" + "**, **".join(missing) + "**")
    demo = build_demo(warm_up_model=False)
    note = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "vd-backends-unavailable")
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "vd-backend")
    assert note.value == text and [c[1] for c in dropdown.choices] == ["tiny-v2", "tiny"]
    assert dropdown.value == "tiny-v2", "the page opens on the default built-in model"
    monkeypatch.setattr(space, "SERVED", {})  # serve_backends() not called: everything offered, nothing listed
    assert unavailable_text() == ""


@pytest.mark.parametrize("kind, env, files", [("pose", "VDEMO_OPENPOSE_DIR", ("body_pose_model.pth",
                                                                               "hand_pose_model.pth", "facenet.pth")),
                                               ("depth", "VDEMO_MIDAS_DIR", ("dpt_hybrid-midas-501f0c75.pt",))])
def test_a_detector_without_weights_is_greyed_out_at_start_up(monkeypatch, tmp_path, tiny_model_dir, kind, env, files):
    """Offline with no weights: the upload-to-extract input is not interactive and says why; with a local folder
    holding the files it is usable and the note is hidden. Decided at start-up, without loading anything."""
    from vdemo.ui import detectors
    from vdemo.ui.layout import build_demo

    def page():
        detectors.unavailable_reason.cache_clear()
        demo = build_demo(warm_up_model=False)
        blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
        return blocks[f"vd-{kind}-video"], blocks[f"vd-{kind}-unavailable"]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(env, raising=False)
    upload, note = page()
    assert upload.interactive is False and note.visible
    assert note.value.startswith("Unavailable here: ") and f"set {env} to a folder with {files[0]}" in note.value
    for name in files:
        (tmp_path / name).write_bytes(b"weights")
    monkeypatch.setenv(env, str(tmp_path))
    upload, note = page()
    assert upload.interactive is not False and not note.visible and note.value == ""
    detectors.unavailable_reason.cache_clear()


@pytest.mark.parametrize(("value", "size"), [("768x432", (432, 768)), ("256 × 256", (256, 256)), ("", None)])
def test_frame_size_setting(monkeypatch, value, size):
    monkeypatch.setenv("VDEMO_SVD_XT_SIZE", value)
    assert size_setting("svd-xt") == size


def test_a_bad_frame_size_setting_is_one_line(monkeypatch):
    monkeypatch.setenv("VDEMO_SVD_SIZE", "1000x7")
    with pytest.raises(UserError, match="VDEMO_SVD_SIZE must be WIDTHxHEIGHT"):
        size_setting("svd")


def test_mode_cost_on_a_unet_with_temporal_layers():
    """AnimateDiff's lab modes touch two kinds of layer; its temporal layers see one token per frame and position."""
    from vdemo.backends.hub.animatediff import AnimateDiffBackend as A

    factor = {m: cost.mode_factor(A, m, 16, 512, 512) for m in A.attention_modes}
    assert factor["temporal"] == pytest.approx(1.0) and factor["spatial"] == pytest.approx(1.0, abs=0.01)
    assert factor["sparse_causal"] < factor["causal"] < factor["full"], factor
    assert factor["full"] == pytest.approx(0.65 + 0.35 * 16, rel=0.01), "full: 16× the spatial layers' pairs"


def test_markup_in_user_text_shows_as_text_in_the_error():
    """Gradio renders a toast's message as HTML: what the user typed must come back escaped, never as markup."""
    strokes = '[{"points": [["<img src=x onerror=alert(1)>", 0.5]]}]'
    with pytest.raises(gr.Error) as raised:
        list(h.strokes_to_video("", strokes, None, 7, True, "tiny", "full", "DDIM", 2, 3.0, 4, 8, 0, False))
    assert "&lt;img src=x onerror=alert(1)&gt;" in raised.value.message and "<img" not in raised.value.message


def test_detector_libraries_import_without_console_noise():
    """controlnet_aux / timm / geffnet print deprecation and registry warnings when first imported; the first
    extraction must not spill them on the server console."""
    import subprocess
    import sys

    code = ("from vdemo.ui.detectors import quiet_imports\n"
            "with quiet_imports():\n"
            "    import geffnet\n"
            "    from controlnet_aux import MidasDetector, OpenposeDetector\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
