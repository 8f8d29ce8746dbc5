"""The v2 bake-off: every candidate builds, runs in every attention mode, trains a step; the metrics are right."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vdemo.bakeoff import choose_winner, edge_sharpness, eval_cases, shape_from_text, shape_kept
from vdemo.config import ATTENTION_MODES
from vdemo.models.v2 import CANDIDATES, build

B, FR = 1, 3


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(size: int, frames: int = FR, channels: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, frames, channels, size, size, generator=g)
    controls = torch.zeros(B, frames, 9, 32, 32)
    controls[:, 0, :3] = torch.rand(B, 3, 32, 32, generator=g) * 2 - 1
    controls[:, 0, 3] = 1.0
    ids = torch.tensor([[2, 5, 7, 9] + [0] * 20])
    flags = torch.tensor([[1.0, 1.0, 0, 0, 0]])
    return x, torch.tensor([500]), ids, controls, flags


def _denoise(model, name: str, x: torch.Tensor, t, ids, controls, flags) -> torch.Tensor:
    """One denoiser call in the candidate's working space (B: its base stage; controls are resized to it)."""
    return model.denoise(x, t, ids, controls, flags)


# The working space of each candidate's denoiser at a 32 px output: pixels (D), f=4 latents (A), the 16 px base (B).
SPACE = {"D": (32, 3), "A": (8, 4), "B": (16, 3)}


def _randomise_output(model) -> None:
    """Output layers start at zero (the output would not depend on the input at all); give them weights."""
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if hasattr(module, "conv_out"):
            with torch.no_grad():
                module.conv_out.weight.copy_(torch.randn(module.conv_out.weight.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_candidate_builds_and_runs_in_every_mode(name):
    model = build(name, tiny=True, size=32)
    size, channels = SPACE[name]
    x, t, ids, controls, flags = _inputs(size, channels=channels)
    with torch.no_grad():
        for mode in ATTENTION_MODES:
            model.set_attention_mode(mode)
            assert model.ctx.mode == mode
            assert _denoise(model, name, x, t, ids, controls, flags).shape == x.shape
        clip = model.generate(ids, controls, flags, steps=1, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert clip.shape == (B, FR, 3, 32, 32) and torch.isfinite(clip).all()


def test_cascade_super_resolution_stage_shapes():
    model = build("B", tiny=True, size=32)
    x, t, ids, controls, flags = _inputs(32)
    low = model.augment(torch.zeros(B, FR, 3, 16, 16), torch.tensor([100]), torch.Generator().manual_seed(0))
    assert low.shape == (B, FR, 3, 32, 32)
    with torch.no_grad():
        assert model.denoise_sr(x, t, low, torch.tensor([100]), ids, controls, flags).shape == x.shape


@pytest.mark.parametrize("name", ["D", "A"])
def test_causal_mode_is_causal_and_full_mode_mixes_frames(name):
    model = build(name, tiny=True, size=32)
    _randomise_output(model)
    size, channels = SPACE[name]
    x, t, ids, controls, flags = _inputs(size, frames=4, channels=channels)
    controls = torch.zeros(B, 4, 9, 32, 32)
    changed = x.clone()
    changed[:, 2] += 1.0  # frame t + 1 = 2
    with torch.no_grad():
        model.set_attention_mode("causal")
        a, b = (_denoise(model, name, v, t, ids, controls, flags) for v in (x, changed))
        assert torch.allclose(a[:, :2], b[:, :2], atol=1e-5)  # frames 0..1 do not see frame 2
        assert not torch.allclose(a[:, 2:], b[:, 2:], atol=1e-4)
        model.set_attention_mode("full")
        a, b = (_denoise(model, name, v, t, ids, controls, flags) for v in (x, changed))
        assert not torch.allclose(a[:, :2], b[:, :2], atol=1e-6)  # full attention: frame 0 sees frame 2


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_training_steps_stay_finite(name):
    model = build(name, tiny=True, size=32)
    g = torch.Generator().manual_seed(0)
    batch = {"x0": torch.rand(2, FR, 3, 32, 32, generator=g) * 2 - 1, "ids": torch.tensor([[2, 5, 7] + [0] * 21] * 2),
             "controls": torch.zeros(2, FR, 9, 32, 32), "flags": torch.ones(2, 5), "fg": torch.ones(2, FR, 1, 32, 32)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for progress in (0.0, 0.5):  # A: an autoencoder step, then (frozen AE) a denoiser step
        model.set_attention_mode("sparse_causal")
        loss = model.training_loss(batch, g, progress)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture(scope="module")
def cases():
    return eval_cases(3, frames=4, size=64)


def test_eval_cases_are_fixed_single_objects_of_every_shape(cases):
    assert [c.objects[0]["shape"] for c in cases] == ["circle", "square", "triangle"]
    assert all(len(c.objects) == 1 for c in cases)
    again = eval_cases(3, frames=4, size=64)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(cases, again))


def test_shape_metrics_on_ground_truth_and_on_a_wrong_last_frame(cases):
    truth = [c.frames for c in cases]
    assert shape_kept(truth, cases) == 1.0
    assert shape_from_text(truth, cases) == 1.0
    swapped = [np.concatenate([c.frames[:-1], cases[(i + 1) % 3].frames[-1:]]) for i, c in enumerate(cases)]
    assert shape_kept(swapped, cases) == 0.0  # every last frame now shows another shape
    assert shape_from_text(swapped, cases) == 0.0
    blank = [np.zeros_like(c.frames) for c in cases]
    assert shape_kept(blank, cases) == 0.0


def test_edge_sharpness_is_one_on_ground_truth_and_lower_when_blurred(cases):
    assert edge_sharpness([c.frames for c in cases], cases) == pytest.approx(1.0)
    blurred = [np.stack([cv2.GaussianBlur(f, (7, 7), 2.0) for f in c.frames]) for c in cases]
    assert edge_sharpness(blurred, cases) < 0.8
    assert edge_sharpness([np.zeros_like(c.frames) for c in cases], cases) == 0.0


def test_winner_rule():
    row = {"shape_from_text": 0.5, "shape_kept": 0.5, "edge_sharpness": 0.5}
    assert choose_winner({"A": row, "D": {**row, "shape_kept": 1.0}}, cases=9) == "D"
    close = {**row, "shape_kept": 0.5 + 1 / 9 * 0.5, "edge_sharpness": 0.1}  # within one case: sharpness decides
    assert choose_winner({"A": row, "D": close}, cases=9) == "A"
    rounded = {"shape_from_text": 0.4444, "shape_kept": 0.2222, "edge_sharpness": 0.1}  # one case ahead, rounded
    assert choose_winner({"A": rounded, "D": {**rounded, "shape_from_text": 0.2222, "edge_sharpness": 0.9}}, 9) == "A"
    assert choose_winner({}, cases=9) is None


def test_a_compact_resume_state_holds_the_weights_in_bf16_and_no_optimizer(tmp_path):
    """What is committed between sessions: the weights (bf16, cast back to float32 on load), the generators and the
    run record; the AdamW moments are left out (run_candidate restarts them with a learning-rate re-warm-up)."""
    from vdemo.bakeoff import save_resume

    model = build("B", tiny=True, size=32, vocab_size=128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": np.random.default_rng(0).bit_generator.state,
             "generator": torch.Generator().manual_seed(0).get_state(), "st": {"step": 7, "cpu_s": 60.0}}
    torch.save(state, tmp_path / "state.pt")
    size = save_resume(tmp_path / "state.pt", tmp_path / "resume" / "B.pt")
    compact = torch.load(tmp_path / "resume" / "B.pt", map_location="cpu", weights_only=False)
    assert set(compact) == {"model", "rng", "generator", "st"} and compact["st"]["step"] == 7
    assert all(v.dtype == torch.bfloat16 for v in compact["model"].values() if v.is_floating_point())
    assert size < (tmp_path / "state.pt").stat().st_size
    fresh = build("B", tiny=True, size=32, vocab_size=128)
    fresh.load_state_dict(compact["model"])
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert b.dtype == a.dtype and torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2), name
