"""Wan 2.1 T2V and VACE backends on tiny random pipelines saved in the real repos' layouts (tests/wan_fixtures.py),
loaded through the registry's local-folder path ($VDEMO_WAN_DIR, $VDEMO_WAN_VACE_DIR) and `load_backend`, run
through `get_pipeline(name)`: every modality, every attention mode (and `full` against stock diffusers), live mode and
sampler switches, previews, stop, the manifest, the flow-matching samplers, the GPU-time estimate and the UI's tabs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from wan_fixtures import build_wan_folder

from vdemo import cost
from vdemo.backends import backend_info, get_pipeline, load_backend
from vdemo.backends.hub.base import to_uint8_frames
from vdemo.backends.hub.registry import HUB_BACKENDS, HubError, Source, get_spec
from vdemo.backends.hub.wan import (
    NEGATIVE_PROMPT,
    WAN_SAMPLERS,
    WanBackend,
    WanVACEBackend,
    flow_scheduler,
    flow_split,
    generated_frames,
    latent_index,
    render_layout,
)
from vdemo.config import ATTENTION_MODES, MODALITIES
from vdemo.errors import UserError
from vdemo.media import fit_image
from vdemo.pipeline import Done, GenerationRequest, Progress, RequestError, VideoPipeline
from vdemo.strokes import Stroke, stroke_positions

pytestmark = [pytest.mark.hub, pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
              pytest.mark.usefixtures("one_torch_thread")]

ENV = {"wan": "VDEMO_WAN_DIR", "wan-vace": "VDEMO_WAN_VACE_DIR"}
T2V_SHA = "0fad780a534b6463e45facd96134c9f345acfa5b"
VACE_SHA = "ec4d2cb062b548996b179d493fdd05340de702a1"
STROKE = Stroke(((0.25, 0.5), (0.75, 0.5)), 0.2)


@pytest.fixture(scope="module")
def wan_root(tmp_path_factory):
    return build_wan_folder(tmp_path_factory.mktemp("wan"))


@pytest.fixture(scope="module")
def registry_env(wan_root):
    """Both entries point at the tiny folder through their env vars, as a Space owner would set them."""
    saved = {var: os.environ.get(var) for var in ENV.values()}
    os.environ.update({var: str(wan_root) for var in ENV.values()})
    load_backend.cache_clear()
    yield wan_root
    for var, value in saved.items():
        os.environ.pop(var, None) if value is None else os.environ.__setitem__(var, value)
    load_backend.cache_clear()


@pytest.fixture(scope="module")
def wan(registry_env) -> VideoPipeline:
    return get_pipeline("wan")


@pytest.fixture(scope="module")
def vace(registry_env) -> VideoPipeline:
    return get_pipeline("wan-vace")


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a red circle moves right", "num_frames": 8, "height": 32, "width": 32, "num_steps": 3,
            "guidance": 2.0, "seed": 3, "attention_mode": "full", "sampler": "UniPC"}
    return GenerationRequest(**{**base, **kw})


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)


def run(pipe: VideoPipeline, req: GenerationRequest, modes: dict | None = None, samplers: dict | None = None,
        stop_after: int | None = None) -> tuple[list[Progress], Done]:
    """Generate; after step k set modes[k] / samplers[k], stop after stop_after."""
    events = pipe.start(req)
    progress = []
    for event in events:
        if isinstance(event, Done):
            return progress, event
        progress.append(event)
        if modes and event.step in modes:
            events.set_attention_mode(modes[event.step])
        if samplers and event.step in samplers:
            events.set_sampler(samplers[event.step])
        if stop_after == event.step:
            events.stop()
    raise AssertionError("no Done event")


def check_output(progress: list[Progress], done: Done, req: GenerationRequest) -> None:
    assert [p.step for p in progress] == list(range(1, req.num_steps + 1)), "one preview per step"
    for p in progress:
        assert p.preview.dtype == np.uint8 and p.preview.shape == (req.num_frames, req.height // 4, req.width // 4, 3)
    assert progress[-1].preview.std() > 0, "previews come from x0̂, not a blank"
    assert done.frames.shape == (req.num_frames, req.height, req.width, 3) and done.frames.dtype == np.uint8
    m = done.manifest
    assert m["request"] == req.settings() and all(src.get("local") for src in m["models"].values())
    assert m["frames"] == {"requested": req.num_frames, "generated": generated_frames(req.num_frames),
                           "latent": (generated_frames(req.num_frames) - 1) // 4 + 1}
    json.dumps(m)


# ---------------------------------------------------------------------------------------------------- registry
def test_registry_pins_both_repos_and_refuses_free_typed_ids():
    assert HUB_BACKENDS["wan"].repos["wan"].repo_id == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert HUB_BACKENDS["wan"].repos["wan"].revision == T2V_SHA
    assert HUB_BACKENDS["wan-vace"].repos["vace"].repo_id == "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
    assert HUB_BACKENDS["wan-vace"].repos["vace"].revision == VACE_SHA
    assert all(repo.provenance and repo.variant is None for n in ENV for repo in HUB_BACKENDS[n].repos.values())
    assert {n: get_spec(n).env_var for n in ENV} == ENV
    for bad in ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-VACE-14B-diffusers"):
        with pytest.raises(HubError, match="free-typed repo ids are not accepted") as err:
            get_spec(bad)
        assert "\n" not in str(err.value)
        with pytest.raises(UserError, match="unknown"):
            load_backend(bad)


def test_the_contract_without_weights():
    t2v, v = backend_info("wan"), backend_info("wan-vace")
    assert t2v.modalities == {"text"} and v.modalities == set(MODALITIES)
    for info in (t2v, v):
        assert info.attention_modes == ATTENTION_MODES and info.samplers == WAN_SAMPLERS
        assert (info.default_attention_mode, info.default_sampler) == ("full", "UniPC")
        assert info.default_size == (480, 832) and info.default_num_frames == 29 == generated_frames(29)
        assert info.limits.side_multiple == 16


# ---------------------------------------------------------------------------------------------------- T2V
def test_text_run_through_the_registry(wan):
    assert isinstance(wan.backend, WanBackend) and wan.backend.sources["wan"].local
    req = request()
    progress, done = run(wan, req)
    check_output(progress, done, req)
    assert done.manifest["backend"] == "wan" and done.manifest["negative_prompt"] == NEGATIVE_PROMPT


def test_full_is_stock_diffusers(wan, registry_env):
    """`full` through the lab (grid processors installed, instrumented scheduler, worker thread) gives the frames of
    a plain diffusers WanPipeline loaded from the same folder, with no processors of ours."""
    from diffusers import WanPipeline

    req = request(num_frames=9)
    processors = wan.backend.pipe.transformer.attn_processors
    ours = {n for n, p in processors.items() if type(p).__name__ == "GridAttnProcessor"}
    assert ours == {f"blocks.{i}.attn1.processor" for i in range(2)}, "every self-attention has ours, nothing else"
    _, done = run(wan, req)
    stock = WanPipeline.from_pretrained(registry_env / "wan", dtype=torch.float32)
    assert not any(type(p).__name__ == "GridAttnProcessor" for p in stock.transformer.attn_processors.values())
    out = stock(prompt=req.prompt, negative_prompt=NEGATIVE_PROMPT, height=32, width=32, num_frames=9,
                num_inference_steps=req.num_steps, guidance_scale=req.guidance, output_type="np",
                generator=torch.Generator("cpu").manual_seed(req.seed))
    np.testing.assert_array_equal(done.frames, to_uint8_frames(out.frames))


def test_every_mode_runs_and_differs_from_full(wan):
    outputs = {}
    for mode in ATTENTION_MODES:
        progress, done = run(wan, request(num_frames=9, num_steps=2, attention_mode=mode))
        assert {p.mode for p in progress} == {mode} and done.manifest["attention_modes_used"] == [mode]
        outputs[mode] = done.frames
    _, again = run(wan, request(num_frames=9, num_steps=2))
    np.testing.assert_array_equal(again.frames, outputs["full"])  # seeded: same request, same frames
    for mode in ATTENTION_MODES:
        if mode != "full":
            assert np.abs(outputs[mode].astype(int) - outputs["full"]).max() > 0, f"{mode} changed nothing"


def test_a_mode_switched_mid_run_reaches_the_next_model_call(wan):
    backend = wan.backend
    seen = []
    hook = backend.pipe.transformer.register_forward_pre_hook(lambda *_: seen.append(backend.ctx.mode.value))
    try:
        progress, done = run(wan, request(num_steps=4), modes={1: "causal", 3: "sparse_causal"})
    finally:
        hook.remove()
    assert [p.mode for p in progress] == ["full", "causal", "causal", "sparse_causal"]
    assert seen == ["full"] * 2 + ["causal"] * 4 + ["sparse_causal"] * 2, "two forwards per step (guidance)"
    assert [s["mode"] for s in done.manifest["steps"]] == [p.mode for p in progress]


def test_a_sampler_switched_mid_run_is_live(wan):
    progress, done = run(wan, request(num_steps=4), samplers={1: "DPM++ 2M", 2: "Euler"})
    assert [p.sampler for p in progress] == ["UniPC", "DPM++ 2M", "Euler", "Euler"]
    assert [s["applied"] for s in done.manifest["sampler_switches"]] == ["live", "live"]
    assert done.manifest["samplers_used"] == ["UniPC", "DPM++ 2M", "Euler"]
    assert np.isfinite(done.frames.astype(float)).all() and done.frames.shape == (8, 32, 32, 3)


def test_stop_ends_the_run_within_a_step(wan):
    progress, done = run(wan, request(num_steps=6), stop_after=2)
    assert done.stopped and len(progress) == 2 and done.manifest["timings"]["steps_done"] == 2
    assert done.frames.shape == (8, 32, 32, 3)
    _, after = run(wan, request(num_steps=2))
    assert not after.stopped


def test_the_manifest_records_repo_ids_and_revisions(wan, monkeypatch):
    """As on a Space that loads the pinned repos: each role's id and commit SHA (the folder stands in for the hub)."""
    backend = wan.backend
    hub = Source("wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", T2V_SHA, local=False)
    monkeypatch.setattr(backend, "sources", {"wan": hub})
    _, done = run(wan, request(num_steps=1))
    assert done.manifest["models"] == {"wan": {"id": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "revision": T2V_SHA}}


def test_sizes_must_be_multiples_of_16(wan):
    with pytest.raises(RequestError, match="height must be a multiple of 16, got 40"):
        wan.start(request(height=40))
    with pytest.raises(RequestError, match="does not support image conditioning"):
        wan.start(request(image=image()))
    with pytest.raises(RequestError, match="does not support sampler 'DDIM'"):
        wan.start(request(sampler="DDIM"))


# ---------------------------------------------------------------------------------------------------- VACE
def test_vace_first_frame_is_kept_and_conditions_the_rest(vace):
    processors = vace.backend.pipe.transformer.attn_processors
    assert {n for n, p in processors.items() if type(p).__name__ == "GridAttnProcessor"} == {
        "blocks.0.attn1.processor", "blocks.1.attn1.processor", "blocks.2.attn1.processor",
        "vace_blocks.0.attn1.processor", "vace_blocks.1.attn1.processor"}
    upload = image()
    req = request(image=upload, attention_mode="causal")
    progress, done = run(vace, req)
    check_output(progress, done, req)
    np.testing.assert_array_equal(done.frames[0], fit_image(upload, 32, 32))
    video, mask = vace.backend.vace_inputs(req)
    assert video.shape == (9, 32, 32, 3) and (mask[0] == 0).all() and (mask[1:] == 255).all()
    np.testing.assert_array_equal(video[0], fit_image(upload, 32, 32))
    _, text_only = run(vace, request(attention_mode="causal"))
    assert np.abs(done.frames[1:].astype(int) - text_only.frames[1:]).max() > 0, "the first frame reached the model"
    assert done.manifest["vace"] == {"control": None, "known_frames": [0], "known_frames_returned": "as given"}


@pytest.mark.parametrize("kind", ["pose", "depth", "strokes"])
def test_vace_controls(vace, kind):
    rng = np.random.default_rng(1)
    controls = {"pose": {"pose": rng.integers(0, 255, (6, 48, 40, 3), dtype=np.uint8)},
                "depth": {"depth": rng.integers(0, 255, (6, 48, 40), dtype=np.uint8)},
                "strokes": {"strokes": (STROKE,)}}
    req = request(**controls[kind], sampler="Euler")
    progress, done = run(vace, req)
    check_output(progress, done, req)
    assert done.manifest["vace"]["control"] == {"strokes": "layout"}.get(kind, kind)
    video, mask = vace.backend.vace_inputs(req)
    assert video.shape == (9, 32, 32, 3) and (mask == 255).all()
    np.testing.assert_array_equal(video[8], video[7])  # the control holds its last frame past the 8 requested
    _, text_only = run(vace, request(sampler="Euler"))
    assert np.abs(done.frames.astype(int) - text_only.frames).max() > 0, f"the {kind} control reached the model"


def test_vace_image_with_a_control_and_one_control_at_a_time(vace):
    req = request(image=image(), strokes=(STROKE,), num_steps=2)
    _, done = run(vace, req)
    assert done.manifest["vace"]["control"] == "layout" and done.manifest["vace"]["known_frames"] == [0]
    video, mask = vace.backend.vace_inputs(req)
    assert (mask[0] == 0).all() and (mask[1:] == 255).all() and (video[1] < 128).any()  # frame 1: a layout box
    both = request(pose=np.zeros((4, 32, 32, 3), np.uint8), depth=np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(RequestError, match="one control video at a time .*got pose and depth") as err:
        vace.start(both)
    assert "\n" not in str(err.value)


def test_layout_boxes_follow_the_stroke():
    """VACE's layout condition: a black box outline per frame, centred where the stroke puts its region."""
    frames = render_layout((STROKE, Stroke(((0.5, 0.1),), 0.1)), 5, 64, 96)
    assert frames.shape == (5, 64, 96, 3) and set(np.unique(frames)) <= {0, 255}
    moving = frames.copy()
    moving[:, :16] = 255  # keep only the moving stroke's box (the anchor's spans rows 6–13)
    for frame, (x, y) in zip(moving, stroke_positions((STROKE,), 5)[0] * (96, 64)):
        ys, xs = np.nonzero(frame[..., 0] == 0)
        assert abs((xs.min() + xs.max()) / 2 - x) <= 1.0
        assert xs.max() - xs.min() == pytest.approx(2 * 0.2 * 64, abs=3)  # side 2 × radius, plus the 2 px line
        assert ys.max() == pytest.approx(y + 0.2 * 64, abs=3)
    anchor = frames[:, :16]
    np.testing.assert_array_equal(anchor[0], anchor[-1])  # an anchor's box stays put


# ------------------------------------------------------------------------------------ frames, samplers, cost
def test_frame_counts():
    assert [generated_frames(n) for n in (4, 5, 8, 9, 29, 32)] == [5, 5, 9, 9, 29, 33]
    assert latent_index(9).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_flow_samplers_share_the_grid_and_step_as_flow_matching():
    from diffusers import UniPCMultistepScheduler
    from wan_fixtures import FLOW_SCHEDULER

    config = dict(UniPCMultistepScheduler(**FLOW_SCHEDULER).config)
    schedulers = {name: flow_scheduler(name, config) for name in WAN_SAMPLERS}
    for s in schedulers.values():
        s.set_timesteps(10)
        assert s.config.prediction_type == "flow_prediction" and s.config.use_flow_sigmas and s.order == 1
    grids = [(s.timesteps.tolist(), s.sigmas.tolist()) for s in schedulers.values()]
    assert grids[0] == grids[1] == grids[2], "one timestep grid: switches between them are live"
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    euler = schedulers["Euler"]
    sigma, sigma_next = float(euler.sigmas[3]), float(euler.sigmas[4])
    x = (1 - sigma) * x0 + sigma * eps
    v = eps - x0
    got_x0, got_eps = flow_split(v, x, sigma)
    torch.testing.assert_close(got_x0, x0) and torch.testing.assert_close(got_eps, eps)
    euler.set_begin_index(3)
    prev = euler.step(v, euler.timesteps[3], x).prev_sample
    torch.testing.assert_close(prev, x + (sigma_next - sigma) * v, rtol=1e-4, atol=1e-5)  # Euler on the flow ODE
    with pytest.raises(ValueError, match="does not support sampler 'DDIM'"):
        flow_scheduler("DDIM", config)


@pytest.mark.parametrize("backend", [WanBackend, WanVACEBackend])
def test_default_clip_fits_a_zerogpu_run(backend):
    default = GenerationRequest(num_frames=backend.default_num_frames, height=480, width=832,
                                num_steps=backend.default_steps, sampler="UniPC", attention_mode="full")
    seconds = cost.request_seconds(backend, default)
    assert 20 < seconds < cost.ZERO_GPU_LIMIT_S, seconds
    assert all(cost.model_calls(s, 25) == 25 for s in WAN_SAMPLERS), "one model call per step"
    assert cost.request_seconds(backend, default, mode="spatial") < seconds


# ---------------------------------------------------------------------------------------------------- UI
@pytest.mark.parametrize("name", ["wan", "wan-vace"])
def test_the_settings_panel_offers_the_backends_tabs(name):
    from vdemo.ui import handlers as h

    updates = h.on_backend_change(name, "full", "DDIM")
    visible = {m: u["visible"] for m, u in zip(MODALITIES, updates[5:])}
    assert visible == {m: m in backend_info(name).modalities for m in MODALITIES}
    assert updates[0]["choices"] == list(ATTENTION_MODES) and updates[0]["value"] == "full"
    assert updates[1]["choices"] == list(WAN_SAMPLERS) and updates[1]["value"] == "UniPC"  # no DDIM for a flow model
    assert updates[4]["value"] == 29
