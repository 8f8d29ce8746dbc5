"""Text2Video-Zero motion dynamics in the zero-shot hub backend (`vdemo/backends/hub/zeroshot.py`), on the tiny random
SD 1.5 of `hub_fixtures`: the frame-0 pre-pass, diffusers' warp and forward noising, the joint pass from t1 under every
kind of sampler, live toggles and Stop, and what the manifest records."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
    TextToVideoZeroPipeline,
    create_motion_field,
    warp_single_latent,
)
from test_hub_backends import STROKE, one_thread, request, run_steered, zeroshot  # noqa: F401 - fixtures

import vdemo.backends.hub.zeroshot as zs
from vdemo.pipeline import Done, Progress, RequestError
from vdemo.samplers import make_scheduler

pytestmark = [pytest.mark.hub,
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:torch.meshgrid"),  # diffusers' warp helpers
              pytest.mark.filterwarnings("ignore:Default grid_sample and affine_grid behavior")]


def diffusers_warp(latent: torch.Tensor, k: int, sx: float, sy: float) -> torch.Tensor:
    """Frame k as diffusers builds it: `warp_single_latent` with the motion field of frame id k (k·δ)."""
    field = create_motion_field(sx, sy, [k], latent.device, latent.dtype)
    return warp_single_latent(latent, field)


class Spy:
    """Wraps a function: records each call's arguments and result (and the generator's state before the call)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args):
        generators = [a.get_state() for a in args if isinstance(a, torch.Generator)]
        out = self.fn(*args)
        self.calls.append({"args": args, "out": out, "generator_state": generators[0] if generators else None})
        return out


# ---------------------------------------------------------------------------------------------- pure functions
def test_motion_steps_map_diffusers_defaults_to_any_step_count():
    assert zs.motion_steps(50, 0.04, 0.10) == (2, 5)  # diffusers' t1 = 50 - 1 - 2 = 47, t0 = 50 - 1 - 5 = 44
    assert zs.motion_steps(25, 0.04, 0.10) == (1, 3)
    assert zs.motion_steps(12, 0.04, 0.10) == (0, 1)  # t1 = the first timestep: frame 0 starts the joint pass at x_T
    assert zs.motion_steps(2, 0.04, 0.10) == (0, 1)
    assert zs.motion_steps(1, 0.04, 0.10) is None  # no room for t0 < t1
    assert zs.motion_steps(8, 0.9, 0.95) == (6, 7), "kept to s1 < s0 <= n - 1"
    with pytest.raises(ValueError, match="steps_to_t1 < steps_to_t0"):
        zs.motion_steps(50, 0.2, 0.1)


def test_warp_is_diffusers_per_frame_and_grows_linearly_with_k():
    """Frame k = diffusers' `warp_single_latent` of frame 0 with the field k·δ; a bright cell moves by −k·δ·(w/512)."""
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    frames = zs.warp_first_frame(latent, 5, 12.0, 12.0)  # diffusers' defaults
    assert frames.shape == (5, 4, 16, 16) and torch.equal(frames[0], latent[0])
    for k in range(1, 5):
        assert torch.equal(frames[k], diffusers_warp(latent, k, 12.0, 12.0)[0]), f"frame {k}"
    bright = torch.zeros(1, 4, 16, 16)
    bright[0, :, 8, 12] = 1.0
    sx, sy = 32.0, 64.0  # 1 and 2 latent cells per frame at w = h = 16 (δ is in pixels of a 512² frame)
    frames = zs.warp_first_frame(bright, 4, sx, sy)
    cells = [tuple((f[0] == 1).nonzero()[0].tolist()) for f in frames]
    assert all(int((f[0] == 1).sum()) == 1 for f in frames), "nearest sampling moves the cell, never smears it"
    assert cells == [(8 - 2 * k, 12 - k) for k in range(4)], "content moves by −k·δ: linear in k, up / left"


def test_start_at_level_runs_the_rest_of_the_schedule():
    config = dict(make_scheduler("DDIM", {}).config)
    ddim = make_scheduler("DDIM", config)
    ddim.set_timesteps(10)
    level = float(ddim.timesteps[3])
    same = make_scheduler("DDIM", config)
    same.set_timesteps(10)
    zs.start_at_level(same, level)
    assert same.timesteps.tolist() == ddim.timesteps[3:].tolist()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(zs.to_sampler_latents(same, x), x, atol=1e-5), "DDIM: the latents as they are"
    heun = make_scheduler("Heun", config)
    heun.set_timesteps(10)
    zs.start_at_level(heun, level)  # first match of the level is a second-order entry: realigned to a full step
    assert len(heun.timesteps) == 2 * (10 - 3) - 1 and float(heun.timesteps[0]) == level
    assert float(heun.sigmas[0]) != float(heun.sigmas[1]), "a full Heun step starts at index 0"
    euler = make_scheduler("Euler", config)
    euler.set_timesteps(10)
    zs.start_at_level(euler, level)
    sigma = float(euler.sigmas[0])
    expected = x * (1 + sigma**2) ** 0.5 / euler.init_noise_sigma  # VP -> x0 + σ·ε, the pipeline re-multiplies
    assert torch.allclose(zs.to_sampler_latents(euler, x), expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- real runs
def test_run_warps_frame0_at_t0_and_renoises_to_t1(zeroshot, monkeypatch):  # noqa: F811 - the imported fixture
    """The joint pass starts from [frame 0's own x_t1, diffusers' forward_loop(warp_k(x_t0), t0 → t1)]."""
    backend = zeroshot.backend
    warp, noise = Spy(zs.warp_first_frame), Spy(zs.forward_noise)
    pre, kwargs = Spy(backend.first_frame_pass), Spy(backend.call_kwargs)
    monkeypatch.setattr(zs, "warp_first_frame", warp)
    monkeypatch.setattr(zs, "forward_noise", noise)
    monkeypatch.setattr(backend, "first_frame_pass", pre)
    monkeypatch.setattr(backend, "call_kwargs", kwargs)
    req = request(num_steps=25, attention_mode="sparse_causal", sampler="DDIM")  # s1 = 1, s0 = 3
    progress, done = run_steered(zeroshot, req)
    x_t1, x_t0, ddim = pre.calls[0]["out"]
    assert x_t1.shape == x_t0.shape == (1, 4, 16, 16) and not torch.equal(x_t1, x_t0)
    assert torch.equal(warp.calls[0]["args"][0], x_t0)
    warped = warp.calls[0]["out"]
    for k in range(1, req.num_frames):
        assert torch.equal(warped[k], diffusers_warp(x_t0, k, 12.0, 12.0)[0]), f"frame {k}: k·δ warp of x_t0"
    t1, t0 = int(ddim.timesteps[1]), int(ddim.timesteps[3])
    generator = torch.Generator().manual_seed(0)
    generator.set_state(noise.calls[0]["generator_state"])
    renoised = TextToVideoZeroPipeline.forward_loop(SimpleNamespace(scheduler=ddim), warped[1:], t0, t1, generator)
    start = kwargs.calls[0]["out"]["latents"]
    assert torch.allclose(start[0], x_t1[0], atol=1e-5), "frame 0 continues from its own x_t1"
    assert torch.allclose(start[1:], renoised, atol=1e-5), "frames 1.. are diffusers' forward_loop of the warps"
    run = done.manifest["motion_dynamics_run"]
    assert run == {"applied": True, "pre_pass_steps": 3, "frame0_steps_before_t1": 1, "t1": t1, "t0": t0,
                   "diffusers_t1": 23, "diffusers_t0": 21, "field_strength": [12.0, 12.0],
                   "joint_pass_entries": 24}
    assert [p.step for p in progress] == list(range(1, 25)) and {p.total for p in progress} == {24}, \
        "Progress counts the joint pass: n − s1 steps"
    assert done.manifest["motion_dynamics"]["field_strength_x"] == 12.0 and np.isfinite(done.frames).all()


def test_joint_start_equals_diffusers_text_to_video_zero(zeroshot, hub_root, monkeypatch):  # noqa: F811
    """The latents our joint pass starts from are the ones diffusers' own `TextToVideoZeroPipeline` hands its last
    backward loop (x_1k_t1), on the same weights, seed, steps and t0 / t1 (a one-frame pre-pass attends to itself in
    both; the seed's generator draws x_T, then the forward noise, in the same order)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    backend = zeroshot.backend
    monkeypatch.setattr(backend, "motion_steps_to_t1", 0.25)  # 8 steps: s1 = 2, s0 = 4 -> diffusers' t1 = 5, t0 = 3
    monkeypatch.setattr(backend, "motion_steps_to_t0", 0.5)
    kwargs = Spy(backend.call_kwargs)
    monkeypatch.setattr(backend, "call_kwargs", kwargs)
    req = request(num_steps=8, attention_mode="sparse_causal", sampler="DDIM", guidance=2.0)
    run_steered(zeroshot, req)
    sd = StableDiffusionPipeline.from_pretrained(hub_root / "base", safety_checker=None, requires_safety_checker=False)
    t2vz = TextToVideoZeroPipeline(sd.vae, sd.text_encoder, sd.tokenizer, sd.unet,
                                   DDIMScheduler.from_config(sd.scheduler.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    starts, backward_loop = [], t2vz.backward_loop

    def record(**kw):
        starts.append(kw["latents"].clone())
        return backward_loop(**kw)

    t2vz.backward_loop = record
    t2vz(prompt=req.prompt, video_length=req.num_frames, height=req.height, width=req.width, num_inference_steps=8,
         guidance_scale=req.guidance, t0=3, t1=5, generator=torch.Generator().manual_seed(req.seed),
         output_type="latent")
    assert len(starts) == 3, "diffusers: T -> t1, t1 -> t0 (frame 0), then all frames from t1"
    assert torch.allclose(kwargs.calls[0]["out"]["latents"], starts[2], atol=1e-4)


def test_frame0_keeps_its_ddim_trajectory(zeroshot, monkeypatch):  # noqa: F811
    """Frame 0 attends only to itself in sparse-causal mode, so s1 pre-pass steps + n − s1 joint steps must give the
    very frame an n-step run without motion gives: the joint pass starts exactly where the pre-pass left off."""
    backend = zeroshot.backend
    monkeypatch.setattr(backend, "motion_steps_to_t1", 0.25)  # 8 steps: s1 = 2, s0 = 4
    monkeypatch.setattr(backend, "motion_steps_to_t0", 0.5)
    req = request(num_steps=8, attention_mode="sparse_causal", sampler="DDIM")
    _, moving = run_steered(zeroshot, req)
    monkeypatch.setattr(backend, "motion_modes", ())
    _, still = run_steered(zeroshot, req)
    assert moving.manifest["motion_dynamics_run"]["frame0_steps_before_t1"] == 2
    assert np.abs(moving.frames[0].astype(int) - still.frames[0]).max() <= 1
    assert not np.array_equal(moving.frames[1:], still.frames[1:])


def test_text_frames_differ_and_zero_strength_still_renoises(zeroshot, monkeypatch):  # noqa: F811
    """Without motion dynamics one shared noise + sparse-causal attention gives F copies of one image; with them the
    frames differ. Strength 0: the warp is the identity (every frame gets frame 0's x_t0), but forward_loop draws
    fresh noise per frame from t0 to t1, so the frames still differ: the same content at t0, other details."""
    backend = zeroshot.backend
    req = request(num_steps=4, attention_mode="sparse_causal", guidance=1.0)
    _, moving = run_steered(zeroshot, req)
    assert any(not np.array_equal(moving.frames[0], f) for f in moving.frames[1:])
    with monkeypatch.context() as patch:
        patch.setattr(backend, "motion_modes", ())
        _, still = run_steered(zeroshot, req)
    assert all(np.abs(still.frames[0].astype(int) - f).max() <= 1 for f in still.frames[1:]), "the old still clip"
    assert still.manifest["motion_dynamics_run"] == {
        "applied": False, "why_not": "starts in sparse_causal mode, not one of motion_modes: one shared noise"}
    warp = Spy(zs.warp_first_frame)
    monkeypatch.setattr(zs, "warp_first_frame", warp)
    monkeypatch.setattr(backend, "motion_field_strength_x", 0.0)
    monkeypatch.setattr(backend, "motion_field_strength_y", 0.0)
    _, zero = run_steered(zeroshot, req)
    warped = warp.calls[0]["out"]
    assert all(torch.equal(w, warped[0]) for w in warped[1:]), "strength 0: no warp"
    assert any(not np.array_equal(zero.frames[0], f) for f in zero.frames[1:]), "fresh DDPM noise per frame"
    assert not np.array_equal(zero.frames, moving.frames)


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun", "PNDM", "UniPC"])
def test_joint_pass_under_other_samplers(zeroshot, monkeypatch, sampler):  # noqa: F811
    """Pre-pass in DDIM; the run's sampler takes over at its level nearest t1 and finishes its own schedule."""
    backend = zeroshot.backend
    monkeypatch.setattr(backend, "motion_steps_to_t1", 0.25)  # 8 steps: s1 = 2, s0 = 4
    monkeypatch.setattr(backend, "motion_steps_to_t0", 0.5)
    progress, done = run_steered(zeroshot, request(num_steps=8, sampler=sampler, attention_mode="causal"))
    run = done.manifest["motion_dynamics_run"]
    assert run["applied"] and run["frame0_steps_before_t1"] == 2 and run["pre_pass_steps"] == 4
    assert len(progress) == run["joint_pass_entries"] == progress[-1].total_calls  # one preview per model call
    assert progress[-1].step == progress[-1].total < 8 and progress[-1].step_done  # counted in scheduler steps
    assert np.isfinite(done.frames).all() and done.frames.std() > 0 and not done.stopped
    assert backend._joint_start is None, "schedulers made after the run start at T again"


def test_live_mode_sampler_and_stop_reach_the_joint_pass(zeroshot, monkeypatch):  # noqa: F811
    backend = zeroshot.backend
    monkeypatch.setattr(backend, "motion_steps_to_t1", 0.25)
    monkeypatch.setattr(backend, "motion_steps_to_t0", 0.5)
    req = request(num_steps=8, attention_mode="sparse_causal", sampler="DDIM")
    progress, done = run_steered(zeroshot, req, modes=("full", "causal"), sampler_after={2: "DDPM"}, stop_after=4)
    assert done.manifest["motion_dynamics_run"]["applied"] and done.stopped and len(progress) == 4
    assert [s["mode"] for s in done.manifest["steps"]] == ["sparse_causal", "full", "causal", "causal"]
    assert done.manifest["sampler_switches"] == [{"after_step": 2, "to": "DDPM", "applied": "live"}], \
        "a switch made mid-run lands on the same (t1-cut) grid"
    assert [s["sampler"] for s in done.manifest["steps"]] == ["DDIM", "DDIM", "DDPM", "DDPM"]
    run = zeroshot.start(req)
    run.stop()  # before the pre-pass: the run ends after its first joint step
    events = list(run)
    assert [type(e) for e in events] == [Progress, Done] and events[-1].stopped


def test_requests_that_keep_one_shared_noise(zeroshot):  # noqa: F811
    rng = np.random.default_rng(0)
    cases = {"strokes: stroke warping of one shared noise": request(num_steps=2, strokes=(STROKE,)),
             "ControlNet: one noise for every frame, as Text2Video-Zero with ControlNet":
                 request(num_steps=2, pose=rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)),
             "starts in spatial mode, not one of motion_modes: one shared noise":
                 request(num_steps=2, attention_mode="spatial"),
             "one step: no room for t0 < t1": request(num_steps=1)}
    for why, req in cases.items():
        _, done = run_steered(zeroshot, req)
        assert done.manifest["motion_dynamics_run"] == {"applied": False, "why_not": why}


def test_motion_field_setter(zeroshot, monkeypatch):  # noqa: F811
    backend = zeroshot.backend
    monkeypatch.setattr(backend, "motion_field_strength_x", backend.motion_field_strength_x)
    monkeypatch.setattr(backend, "motion_field_strength_y", backend.motion_field_strength_y)
    backend.set_motion_field(-8, 0)
    assert backend.describe()["motion_dynamics"] == {
        "field_strength_x": -8.0, "field_strength_y": 0.0, "steps_to_t1": 0.04, "steps_to_t0": 0.10,
        "modes": ["full", "causal", "sparse_causal"], "pre_pass_sampler": "DDIM"}
    with pytest.raises(RequestError, match="must be finite"):
        backend.set_motion_field(float("nan"), 1)
