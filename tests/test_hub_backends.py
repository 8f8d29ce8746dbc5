"""Hub backends on tiny random components saved in the real repos' layouts, loaded through the registry's local-folder
path and run through the shared VideoPipeline: every modality, every mode (switched mid-run), two samplers, previews,
stop; plus the one-line errors (refused id, missing folder, pickle-only weights, unsupported modality)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from hub_fixtures import save_svd

from vdemo.backends.hub import HUB_BACKENDS, HubError, load_hub_backend
from vdemo.backends.hub.bench import run_backends_bench
from vdemo.backends.hub.registry import get_spec, local_root
from vdemo.pipeline import Done, GenerationRequest, Progress, RequestError, VideoPipeline
from vdemo.strokes import Stroke

pytestmark = [pytest.mark.hub,  # diffusers' schedulers call np.array(tensor) the NumPy-2-deprecated way
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]

STROKE = Stroke(((0.25, 0.5), (0.75, 0.5)), 0.2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core box OpenMP's spinning made them ~20× slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def animatediff(hub_root):
    return VideoPipeline(load_hub_backend("animatediff", local_dir=hub_root))


@pytest.fixture(scope="module")
def zeroshot(hub_root):
    return VideoPipeline(load_hub_backend("zeroshot", local_dir=hub_root))


@pytest.fixture(scope="module")
def svd(hub_root):
    return VideoPipeline(load_hub_backend("svd", local_dir=hub_root))


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle moves right", "num_frames": 4, "height": 32, "width": 32, "num_steps": 3,
            "guidance": 2.0, "seed": 3}
    return GenerationRequest(**{**base, **kw})


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)


def run_steered(pipe: VideoPipeline, req: GenerationRequest, modes=(), sampler_after: dict | None = None,
                stop_after: int | None = None) -> tuple[list[Progress], Done]:
    """Generate; after step k set modes[k-1] (if any), switch sampler per sampler_after[k], stop after stop_after."""
    run = pipe.start(req)
    progress, done = [], None
    for event in run:
        if isinstance(event, Done):
            done = event
            break
        progress.append(event)
        k = event.step
        if k <= len(modes):
            run.set_attention_mode(modes[k - 1])
        if sampler_after and k in sampler_after:
            run.set_sampler(sampler_after[k])
        if stop_after == k:
            run.stop()
    assert done is not None
    return progress, done


def check_output(progress: list[Progress], done: Done, req: GenerationRequest, backend) -> None:
    assert progress, "previews must stream"
    for p in progress:
        assert p.preview.dtype == np.uint8 and p.preview.ndim == 4 and p.preview.shape[0] == req.num_frames
        assert p.preview.shape[-1] == 3 and p.total == req.num_steps
    assert progress[-1].preview.std() > 0, "previews come from the model's clean estimate, not a blank"
    assert done.frames.shape == (req.num_frames, req.height, req.width, 3) and done.frames.dtype == np.uint8
    m = done.manifest
    assert m["backend"] == backend.name and m["request"] == req.settings()
    assert all(src.get("local") for src in m["models"].values()), "loaded through the local-folder path"
    assert m["timings"]["total_s"] > 0 and m["timings"]["first_preview_s"] > 0
    assert len(m["steps"]) == len(progress) and m["timings"]["steps_done"] == len(progress)
    json.dumps(m)  # the manifest is plain JSON


# ------------------------------------------------------------------------------------------------ AnimateDiff
def test_animatediff_text_every_mode_live_and_sampler_switch(animatediff):
    backend = animatediff.backend
    assert set(backend.modalities) == {"text", "pose", "depth", "strokes"}
    modes = ("temporal", "full", "causal", "sparse_causal")  # starts in spatial
    req = request(num_steps=5, attention_mode="spatial", sampler="DDIM")
    progress, done = run_steered(animatediff, req, modes=modes, sampler_after={2: "Euler"})
    check_output(progress, done, req, backend)
    steps = done.manifest["steps"]
    assert [s["mode"] for s in steps] == ["spatial", *modes], "a mode set after step k applies from step k+1"
    assert [s["sampler"] for s in steps] == ["DDIM", "DDIM", "Euler", "Euler", "Euler"]
    assert done.manifest["sampler_switches"] == [{"after_step": 2, "to": "Euler", "applied": "live"}]
    assert backend.ctx_self.mode == "sparse_causal" and backend.ctx_time.mode == "temporal"
    assert set(done.manifest["models"]) == {"base", "motion_adapter"}, "a text run uses no ControlNet"
    assert not done.stopped and np.isfinite(done.frames).all()


def test_animatediff_mode_changes_output_and_seed_reproduces(animatediff):
    _, spatial = run_steered(animatediff, request(attention_mode="spatial", num_steps=2))
    _, again = run_steered(animatediff, request(attention_mode="spatial", num_steps=2))
    _, causal = run_steered(animatediff, request(attention_mode="causal", num_steps=2))
    assert np.array_equal(spatial.frames, again.frames), "same seed, same frames"
    assert not np.array_equal(spatial.frames, causal.frames), "the attention mode must reach the model"


@pytest.mark.parametrize("controls", ["pose", "depth+strokes", "pose+depth"])
def test_animatediff_controlnets(animatediff, controls):
    rng = np.random.default_rng(1)
    extra = {}
    if "pose" in controls:
        extra["pose"] = rng.integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
    if "depth" in controls:
        extra["depth"] = rng.integers(0, 255, (6, 40, 40), dtype=np.uint8)
    if "strokes" in controls:
        extra["strokes"] = (STROKE,)
    req = request(num_steps=3, sampler="Euler a", attention_mode="temporal", **extra)
    progress, done = run_steered(animatediff, req)
    check_output(progress, done, req, animatediff.backend)
    roles = {"pose": "controlnet_pose", "depth": "controlnet_depth"}
    used = {"base", "motion_adapter", *(roles[m] for m in roles if m in controls)}
    assert set(done.manifest["models"]) == used, "the manifest names exactly the models this run used"
    if "strokes" in controls:
        assert done.manifest["stroke_pastes_after_steps"] == [1], "x0 is pasted along the stroke after a few steps"


def test_animatediff_stop_and_deferred_sampler(animatediff):
    req = request(num_steps=6, sampler="DDIM")
    progress, done = run_steered(animatediff, req, sampler_after={1: "Heun"}, stop_after=2)
    assert done.stopped and done.manifest["stopped"] and len(progress) == 2, "stop ends the loop after the step"
    assert done.frames.shape == (4, 32, 32, 3)
    assert "Heun from the next run" in progress[-1].sampler
    assert done.manifest["sampler_switches"][0]["applied"] == "next run"


def test_abandoned_run_releases_the_backend(animatediff):
    run = iter(animatediff.start(request(num_steps=4)))
    assert isinstance(next(run), Progress)
    run.close()  # the caller walks away mid-run: the worker must stop and free the lock
    assert animatediff.backend.lock.acquire(timeout=30)
    animatediff.backend.lock.release()


# -------------------------------------------------------------------------------------------------- zero-shot
def test_zeroshot_every_mode_live_two_samplers(zeroshot):
    backend = zeroshot.backend
    assert backend.attention_modes == ("spatial", "full", "causal", "sparse_causal")
    assert set(backend.modalities) == {"text", "pose", "depth", "strokes"}
    req = request(num_steps=4, attention_mode="spatial", sampler="DPM++ 2M")
    progress, done = run_steered(zeroshot, req, modes=("full", "causal", "sparse_causal"),
                                 sampler_after={1: "UniPC"})
    check_output(progress, done, req, backend)
    assert [s["mode"] for s in done.manifest["steps"]] == ["spatial", "full", "causal", "sparse_causal"]
    assert done.manifest["samplers_used"] == ["DPM++ 2M", "UniPC"]
    with pytest.raises(RequestError, match="does not support attention mode"):
        zeroshot.start(request(attention_mode="temporal"))


def test_zeroshot_spatial_frames_are_independent_images(zeroshot):
    """Spatial mode and one shared initial noise: every frame is the same image (what the 2D model gives alone)."""
    _, done = run_steered(zeroshot, request(attention_mode="spatial", num_steps=2, guidance=1.0))
    assert all(np.abs(done.frames[0].astype(int) - f).max() <= 1 for f in done.frames[1:])
    _, moved = run_steered(zeroshot, request(attention_mode="spatial", num_steps=2, guidance=1.0, strokes=(STROKE,)))
    assert not np.array_equal(moved.frames[0], moved.frames[-1]), "strokes move the region's noise and latents"


def test_stroke_strength_zero_changes_nothing(zeroshot):
    """With DDIM (x_prev = add_noise(x0̂, ε̂, t_prev)) and strength 0, the paste-and-re-noise is an identity."""
    backend = zeroshot.backend
    plain = request(attention_mode="spatial", num_steps=4, guidance=1.0, sampler="DDIM")
    with_strokes = GenerationRequest(**{**plain.__dict__, "strokes": (STROKE,)})
    try:
        backend.set_stroke_strength(0.0)
        _, off = run_steered(zeroshot, with_strokes)
    finally:
        backend.set_stroke_strength(0.8)
    _, none = run_steered(zeroshot, plain)
    assert off.manifest["stroke_pastes_after_steps"] and off.manifest["stroke_strength"] == 0.0
    assert np.abs(off.frames.astype(int) - none.frames).max() <= 1
    with pytest.raises(RequestError, match="stroke strength must be 0–1"):
        backend.set_stroke_strength(2)


@pytest.mark.parametrize("control", ["pose", "depth"])
def test_zeroshot_controlnets_and_stop(zeroshot, control):
    rng = np.random.default_rng(2)
    clip = rng.integers(0, 255, (4, 32, 32, 3) if control == "pose" else (4, 32, 32), dtype=np.uint8)
    req = request(num_steps=4, attention_mode="sparse_causal", **{control: clip})
    progress, done = run_steered(zeroshot, req, stop_after=1 if control == "depth" else None)
    assert done.frames.shape == (4, 32, 32, 3)
    assert f"controlnet_{control}" in done.manifest["models"]
    if control == "depth":
        assert done.stopped and len(progress) == 1
    else:
        check_output(progress, done, req, zeroshot.backend)


# ------------------------------------------------------------------------------------------------------- SVD
def test_svd_image_every_mode_live_and_sampler_switch(svd):
    backend = svd.backend
    assert backend.samplers == ("Euler", "DPM++ 2M") and set(backend.modalities) == {"image", "strokes"}
    modes = ("temporal", "full", "causal", "sparse_causal")
    req = request(prompt="", image=image(), num_steps=5, attention_mode="spatial", sampler="Euler", guidance=2.5)
    progress, done = run_steered(svd, req, modes=modes, sampler_after={2: "DPM++ 2M"})
    check_output(progress, done, req, backend)
    assert [s["mode"] for s in done.manifest["steps"]] == ["spatial", *modes]
    assert done.manifest["sampler_switches"] == [{"after_step": 2, "to": "DPM++ 2M", "applied": "live"}]


def test_svd_strokes_and_stop(svd):
    req = request(prompt="", image=image(), num_steps=5, strokes=(STROKE,), attention_mode="temporal", sampler="Euler")
    progress, done = run_steered(svd, req, stop_after=2)
    assert done.stopped and len(progress) == 2 and done.manifest["stroke_pastes_after_steps"] == [1]
    assert done.frames.shape == (4, 32, 32, 3) and done.frames.std() > 0, "a stopped SVD run decodes its last x0"


def test_svd_refuses_what_it_cannot_do(svd):
    with pytest.raises(RequestError, match="needs an image"):
        svd.start(request(prompt=""))
    with pytest.raises(RequestError, match="does not support text"):
        svd.start(request(image=image(), sampler="Euler"))
    with pytest.raises(RequestError, match="does not support sampler 'DDIM'"):
        svd.start(request(prompt="", image=image(), sampler="DDIM"))


# ---------------------------------------------------------------------------------------------------- errors
def test_unsupported_modality_one_line(zeroshot, animatediff):
    for pipe in (zeroshot, animatediff):
        with pytest.raises(RequestError, match=r"does not support image conditioning") as err:
            pipe.start(request(image=image()))
        assert "\n" not in str(err.value)


def test_refused_ids_and_missing_folders(tmp_path, hub_root):
    for bad in ("runwayml/stable-diffusion-v1-5", "guoyww/animatediff-motion-adapter-v1-5-3", "sdxl"):
        with pytest.raises(HubError, match="unknown hub backend") as err:
            load_hub_backend(bad, local_dir=hub_root)
        assert "\n" not in str(err.value)
    with pytest.raises(HubError, match=r"local folder for hub backend 'svd' not found: .*VDEMO_SVD_DIR"):
        load_hub_backend("svd", local_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="has no base/ folder") as err:
        load_hub_backend("animatediff", local_dir=tmp_path / "empty")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="checks the offline message")
def test_hub_unreachable_one_line(monkeypatch):
    monkeypatch.delenv("VDEMO_SVD_DIR", raising=False)
    with pytest.raises(HubError, match=r"could not load hub backend 'svd' from the hub") as err:
        load_hub_backend("svd", device="cpu")
    assert "\n" not in str(err.value)


def test_folder_without_controlnets_narrows_modalities(tmp_path, hub_root):
    (tmp_path / "base").symlink_to(hub_root / "base", target_is_directory=True)
    pipe = VideoPipeline(load_hub_backend("zeroshot", local_dir=tmp_path))
    assert pipe.backend.modalities == {"text", "strokes"}
    with pytest.raises(RequestError, match="does not support pose conditioning"):
        pipe.start(request(pose=np.zeros((4, 32, 32, 3), np.uint8)))


def test_pickle_only_weights_refused(tmp_path):
    torch.manual_seed(0)
    save_svd(tmp_path / "svd")
    unet = tmp_path / "svd" / "unet"
    from safetensors.torch import load_file

    torch.save(load_file(unet / "diffusion_pytorch_model.safetensors"), unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(HubError, match=r"only pickle weights \(diffusion_pytorch_model\.bin\)") as err:
        load_hub_backend("svd", local_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_registry_is_pinned_and_env_var_points_at_a_folder(tmp_path, monkeypatch):
    for spec in HUB_BACKENDS.values():
        for repo in spec.repos.values():
            assert re.fullmatch(r"[0-9a-f]{40}", repo.revision), f"{repo.repo_id} must be pinned to a commit SHA"
            assert repo.provenance
    assert get_spec("svd-xt").env_var == "VDEMO_SVD_XT_DIR"
    monkeypatch.setenv("VDEMO_SVD_XT_DIR", str(tmp_path))
    assert local_root(get_spec("svd-xt")) == tmp_path
    monkeypatch.delenv("VDEMO_SVD_XT_DIR")
    assert local_root(get_spec("svd-xt")) is None  # the pinned hub repo


def test_zero_gpu_entry_point_takes_picklable_arguments(svd, monkeypatch):
    """On ZeroGPU `spaces.GPU` pickles the arguments into a forked process: the backend's name, the request and a
    RunControl over a Manager dict must do (see tests/test_zerogpu.py for the whole forked-worker round trip)."""
    import multiprocessing
    import pickle

    import vdemo.backends as backends
    from vdemo.pipeline import RunControl
    from vdemo.ui.gpu import generate_on_gpu

    monkeypatch.setattr(backends, "loaded_backend", lambda name: svd.backend if name == "svd" else None)
    req = request(prompt="", image=image(), strokes=(STROKE,), num_steps=2, sampler="DPM++ 2M",
                  attention_mode="causal")
    with multiprocessing.get_context("fork").Manager() as manager:
        control = RunControl(req.attention_mode, req.sampler, shared=manager.dict())
        args = pickle.loads(pickle.dumps(("svd", req, control)))
        events = list(generate_on_gpu(*args))
    assert isinstance(events[-1], Done) and len(events) == 3
    assert {s["mode"] for s in events[-1].manifest["steps"]} == {"causal"}


def test_bench_writes_markdown_and_json(tmp_path, zeroshot):
    out = run_backends_bench(["zeroshot"], tmp_path / "bench", loader=lambda name: zeroshot.backend,
                             settings={"num_frames": 4, "height": 32, "width": 32, "num_steps": 2})
    rows = json.loads(out["json"].read_text())
    assert rows[0]["backend"] == "zeroshot" and rows[0]["seconds"] > 0 and rows[0]["error"] is None
    assert "| zeroshot |" in out["markdown"].read_text()
