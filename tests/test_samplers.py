"""Samplers against analytic oracles: the data distribution is known, so the ideal model output is closed-form.

Two oracles (both see only (x_in, t), as a real model does):
- point mass at X_DATA. The ideal denoiser then says x0_hat == X_DATA whatever the sample, so "the run ends at
  X_DATA" alone would pass with broken bookkeeping. The sharp check is the noise: a deterministic sampler keeps
  eps_hat constant along the run (the probability-flow ODE of a point mass is x_t = sqrt(ᾱ)·X_DATA + sqrt(1−ᾱ)·ε with
  ε fixed), so a sample placed at another noise level than its timestep claims, in the wrong convention, or a
  scheduler out of phase after a switch shows up as a jump in eps_hat. Stochastic samplers keep eps_hat ~ N(0, 1).
- Gaussian data N(X_DATA, s²) per element. The probability-flow ODE keeps the standardised sample
  z = (x_t − sqrt(ᾱ)μ) / sqrt(ᾱs² + 1 − ᾱ), so a deterministic run must end at μ + s·z of its first input: a real
  convergence test (first-order samplers land within a few 1e-2 at 20 steps, higher-order ones within 1e-2),
  and a switched run must land on the same trajectory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler, HeunDiscreteScheduler, PNDMScheduler

from vdemo.samplers import (
    PREDICTION_TYPES,
    SAMPLERS,
    SamplerSpec,
    alpha_bar_at,
    continue_index,
    default_scheduler_config,
    denoise,
    from_clean,
    input_alpha_bar,
    make_scheduler,
    noise_level,
    reproject,
    sample_steps,
    sampler_names,
    schedule_steps,
    scheduler_step,
    set_timesteps,
    split_prediction,
    steps_from,
    switch_scheduler,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # numpy 2 vs torch,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning"),  # inside diffusers
    pytest.mark.filterwarnings("ignore:Should have tb<=t1:UserWarning"),  # torchsde: float32 σ_max round-off
]

STOCHASTIC = {"DDPM", "Euler a", "DPM++ SDE", "LCM"}
DETERMINISTIC = [name for name in SAMPLERS if name not in STOCHASTIC]
FINAL_AT_T0 = {"PNDM", "DEIS"}  # stop at the t=0 noise level (σ≈0.0064 here), not at σ=0
# Karras σs get timesteps rounded to integers: the first several are 998 for σ up to 2e4 (t=999's σ; t=998's is 642),
# so the model is told the wrong noise level there and its outputs disagree with the sample. Checked loosely.
ROUNDED_T = {"DPM++ 2M Karras"}
SHAPE = (1, 2, 3, 8, 8)  # (B, F, C, H, W)
X_DATA = torch.linspace(-1, 1, math.prod(SHAPE)).reshape(SHAPE)
DATA_STD = 0.5
ALPHAS_CUMPROD = make_scheduler("DDPM", default_scheduler_config()).alphas_cumprod


def oracle(prediction_type: str, data_std: float = 0.0, calls: list | None = None):
    """The ideal model for data ~ N(X_DATA, data_std²) per element (data_std 0: the point mass X_DATA).

    E[x0 | x_t] = μ + sqrt(ᾱ)s² / (ᾱs² + 1 − ᾱ) · (x_t − sqrt(ᾱ)μ); ε = (x_t − sqrt(ᾱ)x0) / sqrt(1−ᾱ);
    v = sqrt(ᾱ)ε − sqrt(1−ᾱ)x0 (Salimans & Ho 2022).
    """

    def model_fn(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bar_at(ALPHAS_CUMPROD, t)
        x0 = X_DATA + math.sqrt(a) * data_std**2 / (a * data_std**2 + 1 - a) * (x_in - math.sqrt(a) * X_DATA)
        eps = (x_in - math.sqrt(a) * x0) / math.sqrt(1 - a)
        if calls is not None:
            calls.append((x_in, a))
        return eps if prediction_type == "epsilon" else math.sqrt(a) * eps - math.sqrt(1 - a) * x0

    return model_fn


def run(name: str, prediction_type: str = "v_prediction", num_steps: int = 10, seed: int = 0,
        switch_at: dict[int, str] | None = None, model_fn=None) -> tuple[torch.Tensor, list[dict]]:
    steps: list[dict] = []
    scheduler = make_scheduler(name, default_scheduler_config(prediction_type))
    out = denoise(model_fn or oracle(prediction_type), scheduler, SHAPE, num_steps,
                  torch.Generator().manual_seed(seed), callback=steps.append, switch_at=switch_at)
    return out, steps


def noise_drift(steps: list[dict], start: int = 0) -> float:
    """Largest change of eps_hat after model call `start`, in units of the noisy sample (× sqrt(1−ᾱ))."""
    ref = steps[start]["eps"]
    return max((math.sqrt(1 - alpha_bar_at(ALPHAS_CUMPROD, s["t"])) * (s["eps"] - ref).abs().max().item()
                for s in steps[start + 1:]), default=0.0)


def flow_target(calls: list) -> torch.Tensor:
    """Where the probability-flow ODE of N(X_DATA, DATA_STD²) takes the first model input: μ + s·z."""
    x_in, a = calls[0]
    z = (x_in - math.sqrt(a) * X_DATA) / math.sqrt(a * DATA_STD**2 + 1 - a)
    return X_DATA + DATA_STD * z


def expected_final(name: str, eps: torch.Tensor) -> torch.Tensor:
    if name in FINAL_AT_T0:
        a0 = float(ALPHAS_CUMPROD[0])
        return math.sqrt(a0) * X_DATA + math.sqrt(1 - a0) * eps
    return X_DATA


# --- registry ---------------------------------------------------------------------------------------------------


def test_registry_has_the_well_known_names_and_builds_each():
    required = {"DDIM", "DDPM", "Euler", "Euler a", "Heun", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "UniPC",
                "PNDM", "LMS", "DEIS", "LCM"}
    assert required <= set(SAMPLERS)
    for name, spec in SAMPLERS.items():
        scheduler = make_scheduler(name, default_scheduler_config())
        assert type(scheduler) is spec.cls
        for key, value in spec.kwargs.items():
            assert scheduler.config[key] == value, (name, key)
    assert SAMPLERS["PNDM"].kwargs["skip_prk_steps"] is True
    assert make_scheduler("DPM++ 2M Karras", default_scheduler_config()).config.use_karras_sigmas


def test_specs_are_immutable():
    spec = SAMPLERS["DPM++ 2M"]
    with pytest.raises(TypeError):
        spec.kwargs["solver_order"] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.note = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        SAMPLERS["mine"] = spec  # type: ignore[index]
    source = {"a": 1}
    copied = SamplerSpec(DPMSolverMultistepScheduler, source)
    source["a"] = 2
    assert copied.kwargs["a"] == 1


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown sampler 'xyz'; choose one of: DDIM, DDPM, Euler"):
        make_scheduler("xyz", default_scheduler_config())


def test_sampler_names_leaves_distilled_only_samplers_to_backends_that_ask():
    assert "LCM" not in sampler_names()
    assert sampler_names(include_distilled=True) == list(SAMPLERS)
    assert SAMPLERS["LCM"].distilled_only and "LCM" in SAMPLERS["LCM"].note
    assert sampler_names(["LCM", "Euler", "DDIM"]) == ["DDIM", "Euler", "LCM"]  # registry order
    with pytest.raises(ValueError, match="unknown sampler 'Eulr'"):
        sampler_names(["Eulr"])


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_switch_keeps_the_training_schedule_and_prediction_type(prediction_type):
    config = default_scheduler_config(prediction_type)
    current = make_scheduler("DDIM", config)
    for name in SAMPLERS:
        new = switch_scheduler(current, name)
        assert new.config.prediction_type == prediction_type
        assert new.config.beta_schedule == "squaredcos_cap_v2"
        assert torch.equal(new.alphas_cumprod, current.alphas_cumprod), name


def test_default_config_checks_its_arguments():
    assert default_scheduler_config().prediction_type == "v_prediction"
    assert default_scheduler_config(timestep_spacing="trailing").timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="prediction_type"):
        default_scheduler_config("sample")
    with pytest.raises(ValueError, match="timestep_spacing"):
        default_scheduler_config(timestep_spacing="even")


def test_lcm_refuses_more_steps_than_it_was_distilled_for():
    with pytest.raises(ValueError, match="at most 50 steps, got 51"):
        set_timesteps(make_scheduler("LCM", default_scheduler_config()), 51)


# --- pure helpers -------------------------------------------------------------------------------------------------


def _step_starts(scheduler) -> list[int]:
    """Indices where a run can switch away (the pipeline switches between steps): two-call samplers' even entries."""
    n = len(scheduler.timesteps)
    if isinstance(scheduler, (HeunDiscreteScheduler, DPMSolverSDEScheduler)):
        return list(range(0, n, 2))
    return list(range(n))


SAME_RANGE = [n for n in SAMPLERS if n not in ("DPM++ 2M Karras", "LCM")]  # grids over the same noise range


@pytest.mark.parametrize("first", list(SAMPLERS))
@pytest.mark.parametrize("n", [10, 20])
def test_a_switch_never_runs_more_steps_than_were_asked_for_plus_one(first, n):
    """Whatever the two grids (Karras σs reach 2e4 on the cosine schedule, far above a uniform grid's top), the steps
    run before the switch plus the new sampler's steps stay within n + 1: a ZeroGPU slot was costed for n."""
    config = default_scheduler_config()
    old = make_scheduler(first, config)
    set_timesteps(old, n)
    for second in SAMPLERS:
        new = make_scheduler(second, config)
        set_timesteps(new, n)
        for i in _step_starts(old):
            j = continue_index(old, i, new)
            done = schedule_steps(old) - steps_from(old, i)
            assert done + steps_from(new, j) <= n + 1, (first, second, i, j)


@pytest.mark.parametrize("first", SAME_RANGE)
def test_continue_index_never_skips_a_noise_level(first):
    config = default_scheduler_config()
    old = make_scheduler(first, config)
    set_timesteps(old, 10)
    for second in SAME_RANGE:
        new = make_scheduler(second, config)
        set_timesteps(new, 10)
        levels = [noise_level(new, k) for k in range(len(new.timesteps))]
        mapped = []
        for i in _step_starts(old):
            j = continue_index(old, i, new)
            here = noise_level(old, i)
            # never less noisy than where the run is (a list that starts below that level starts at its start)
            assert levels[j] >= here * (1 - 1e-5) or (j == 0 and levels[0] < here), (first, second, i, j)
            lower = [s for s in levels[j:] if s < levels[j] * (1 - 1e-6)]
            assert not lower or lower[0] < here * (1 + 1e-5), (first, second, i, j)  # the least noisy such level
            assert j == 0 or levels[j - 1] > levels[j] * (1 + 1e-6)  # that level's first entry
            mapped.append(j)
        assert mapped == sorted(mapped)
        assert continue_index(old, len(old.timesteps), new) == len(new.timesteps)
    with pytest.raises(ValueError, match="old_index"):
        continue_index(old, len(old.timesteps) + 1, old)


def test_steps_from_counts_what_a_run_started_there_takes():
    config = default_scheduler_config()
    for name in SAMPLERS:
        for n in (1, 2, 10):
            scheduler = make_scheduler(name, config)
            set_timesteps(scheduler, n)
            assert steps_from(scheduler, 0) == schedule_steps(scheduler) == n, (name, n)
            assert steps_from(scheduler, len(scheduler.timesteps)) == 0
    heun = make_scheduler("Heun", config)
    set_timesteps(heun, 10)  # [t0, t1, t1, t2, t2, …]: odd entries are second calls, dropped when a run starts there
    assert [steps_from(heun, k) for k in range(5)] == [10, 9, 9, 8, 8]


def test_pndm_to_heun_keeps_every_level():
    """PLMS's n+1 entries are not evenly spread, so mapping by the fraction of entries passed a Heun level."""
    config = default_scheduler_config()
    pndm, heun = make_scheduler("PNDM", config), make_scheduler("Heun", config)
    set_timesteps(pndm, 10)
    set_timesteps(heun, 10)
    for i in _step_starts(pndm):
        j = continue_index(pndm, i, heun)
        assert float(heun.timesteps[j]) >= float(pndm.timesteps[i]) - 1e-3
        assert float(heun.timesteps[j]) <= float(pndm.timesteps[i]) + 100  # at most one level (100 steps) repeated


def test_alpha_bar_at_inverts_diffusers_sigma_to_t():
    scheduler = make_scheduler("Euler", default_scheduler_config())
    assert alpha_bar_at(ALPHAS_CUMPROD, 417) == pytest.approx(float(ALPHAS_CUMPROD[417]), rel=1e-6)
    log_sigmas = (0.5 * ((1 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD).log()).numpy()
    for sigma in [0.01, 0.3, 1.0, 7.7, 300.0]:
        t = float(scheduler._sigma_to_t(np.array(sigma), log_sigmas))
        assert 0 < t < 999
        assert alpha_bar_at(ALPHAS_CUMPROD, t) == pytest.approx(1 / (1 + sigma**2), rel=1e-4)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_split_prediction_recovers_clean_and_noise(prediction_type):
    scheduler = make_scheduler("DDIM", default_scheduler_config(prediction_type))
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(600)
    a = float(ALPHAS_CUMPROD[600])
    x_in = math.sqrt(a) * X_DATA + math.sqrt(1 - a) * eps
    x0_hat, eps_hat = split_prediction(scheduler, oracle(prediction_type)(x_in, t), x_in, t)
    torch.testing.assert_close(x0_hat, X_DATA, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", ["DDIM", "Euler", "DPM++ 2M Karras"])
def test_from_clean_is_the_inverse_of_split_prediction(name, prediction_type):
    scheduler = make_scheduler(name, default_scheduler_config(prediction_type))
    set_timesteps(scheduler, 10)
    t = scheduler.timesteps[3]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # ε at σ≈700: 1/√ᾱ
    x_in = scheduler.scale_model_input(x, t)
    out = from_clean(scheduler, X_DATA.double(), x_in, t)
    x0_hat, eps_hat = split_prediction(scheduler, out, x_in, t)
    a = input_alpha_bar(scheduler, t)
    torch.testing.assert_close(x0_hat, X_DATA.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(eps_hat, (x_in - math.sqrt(a) * X_DATA) / math.sqrt(1 - a), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sampler_names())
def test_a_noise_blind_clean_sample_model_samples_like_the_exact_v_model(name):
    """A model that returns x0 without looking at the noise (the point-mass oracle, as x0) must sample exactly like
    the same oracle giving v, which every sampler takes to X_DATA (up to its last step's own noise level)."""

    def finish(model_fn, output_type):
        scheduler = make_scheduler(name, default_scheduler_config())
        steps = sample_steps(model_fn, scheduler, SHAPE, 12, torch.Generator().manual_seed(0), output_type=output_type)
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value

    from_x0 = finish(lambda x_in, t: X_DATA.clone(), "sample")
    from_v = finish(oracle("v_prediction"), None)
    torch.testing.assert_close(from_x0, from_v, atol=2e-4, rtol=0)
    assert (from_x0 - X_DATA).abs().max().item() < 0.03


def test_output_type_must_match_the_scheduler_or_be_sample():
    scheduler = make_scheduler("DDIM", default_scheduler_config("epsilon"))
    steps = sample_steps(lambda x_in, t: x_in, scheduler, SHAPE, 4, torch.Generator(), output_type="v_prediction")
    with pytest.raises(ValueError, match="output_type"):
        next(steps)


# --- reproject: state at the right level, in the right convention, and a scheduler ready to continue ----------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_reproject_places_the_sample_where_its_timestep_says(name):
    """At every start index: the model input is sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε at the ᾱ its timestep stands for."""
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    num_steps = 6
    length = len(set_timesteps(make_scheduler(name, default_scheduler_config()), num_steps))
    for index in range(length + 1):
        new = make_scheduler(name, default_scheduler_config())
        set_timesteps(new, num_steps)
        x, remaining = reproject(new, X_DATA, eps, index)
        assert torch.equal(remaining, new.timesteps[index:])
        if index >= len(new.timesteps):
            torch.testing.assert_close(x, X_DATA)
            continue
        t = new.timesteps[index]
        x_in = new.scale_model_input(x, t)
        a = input_alpha_bar(new, t)
        torch.testing.assert_close(x_in, math.sqrt(a) * X_DATA + math.sqrt(1 - a) * eps, atol=1e-4, rtol=1e-4)
        if name not in ROUNDED_T:
            a_t = alpha_bar_at(ALPHAS_CUMPROD, t)
            assert math.log(a / (1 - a)) == pytest.approx(math.log(a_t / (1 - a_t)), abs=1e-3), index


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_run_resumed_at_any_index_follows_the_oracle(name, prediction_type):
    """Start from reproject at each index (odd Heun / DPM SDE entries, PNDM mid-warm-up, LMS mid-history ...)."""
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    model_fn = oracle(prediction_type)
    config = default_scheduler_config(prediction_type)
    num_steps = 5
    for index in range(len(set_timesteps(make_scheduler(name, config), num_steps))):
        scheduler = make_scheduler(name, config)
        set_timesteps(scheduler, num_steps)
        generator = torch.Generator().manual_seed(index)
        x, _ = reproject(scheduler, X_DATA, eps, index)
        i, seen = index, []
        while i < len(scheduler.timesteps):
            t = scheduler.timesteps[i]
            x_in = scheduler.scale_model_input(x, t)
            out = model_fn(x_in, t)
            seen.append((split_prediction(scheduler, out, x_in, t)[1], t))
            x = scheduler_step(scheduler, out, t, x, generator)
            i += 1
        assert torch.isfinite(x).all()
        for eps_hat, t in seen:
            if name in STOCHASTIC:
                assert 0.8 < eps_hat.std().item() < 1.2, (index, float(t))
            elif name not in ROUNDED_T and not (name == "PNDM" and prediction_type == "v_prediction"):
                scale = math.sqrt(1 - alpha_bar_at(ALPHAS_CUMPROD, t))  # error in units of the noisy sample
                assert scale * (eps_hat - eps).abs().max().item() < 1e-2, (index, float(t))
        expected = X_DATA if name in STOCHASTIC else expected_final(name, eps)
        loose = name in ROUNDED_T or (name == "PNDM" and prediction_type == "v_prediction")
        assert (x - expected).abs().max().item() < (0.2 if loose else 2e-3), index


# --- whole runs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_denoises_to_the_data(name, prediction_type):
    for num_steps in (2, 4):
        out, _ = run(name, prediction_type, num_steps)
        assert torch.isfinite(out).all(), num_steps
    out, steps = run(name, prediction_type, 20)
    assert torch.isfinite(out).all()
    assert len(steps) == len(steps[-1]["scheduler"].timesteps)
    expected = X_DATA if name in STOCHASTIC else expected_final(name, steps[0]["eps"])
    assert (out - expected).abs().max().item() < (3e-2 if name == "PNDM" else 2e-3)
    if name in STOCHASTIC:
        assert all(0.8 < s["eps"].std().item() < 1.2 for s in steps[1:])
    elif name not in ROUNDED_T and not (name == "PNDM" and prediction_type == "v_prediction"):
        assert noise_drift(steps) < 1e-2


# 20-step mean |error| against the exact probability-flow solution; first-order samplers converge slowest.
FLOW_TOLERANCE = {"DDIM": 0.04, "Euler": 0.04, "PNDM": 0.04, "DPM++ 2M Karras": 0.06}


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_solve_the_probability_flow_of_gaussian_data(name, prediction_type):
    calls: list = []
    out, _ = run(name, prediction_type, 20, model_fn=oracle(prediction_type, DATA_STD, calls))
    assert (out - flow_target(calls)).abs().mean().item() < FLOW_TOLERANCE.get(name, 0.01)


@pytest.mark.parametrize("name", ["DDPM", "Euler a", "DPM++ SDE"])
def test_stochastic_samplers_draw_from_the_gaussian_data(name):
    """Output ≈ N(μ, s²): standardised mean ≈ 0, std ≈ 1 (ancestral samplers under-disperse a little at 20 steps)."""
    out, _ = run(name, "v_prediction", 20, model_fn=oracle("v_prediction", DATA_STD))
    z = (out - X_DATA) / DATA_STD
    assert abs(z.mean().item()) < 0.15
    assert 0.8 < z.std().item() < 1.15


SWITCHES = [("DDIM", "Euler"), ("Euler", "DPM++ 2M"), ("DPM++ 2M", "Heun"), ("Heun", "UniPC"), ("PNDM", "LMS"),
            ("Euler a", "DDIM"), ("LMS", "DPM++ SDE"), ("DPM++ SDE", "PNDM"), ("UniPC", "DEIS"),
            ("DEIS", "DPM++ 2M Karras"), ("DDPM", "Heun"), ("Heun", "DDIM"), ("DDIM", "LCM"), ("LCM", "Euler")]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(("first", "second"), SWITCHES)
def test_switching_mid_run_continues_on_the_same_trajectory(first, second, prediction_type):
    deterministic = first not in STOCHASTIC and second not in STOCHASTIC
    sharp = not ({first, second} & (ROUNDED_T | {"PNDM"}))  # PNDM: t=0 residual, and v outputs mixed across t
    for after in (3, 6):
        out, steps = run(first, prediction_type, 10, switch_at={after: second})
        assert type(steps[after - 1]["scheduler"]) is SAMPLERS[first].cls
        assert type(steps[after]["scheduler"]) is SAMPLERS[second].cls
        assert torch.isfinite(out).all()
        expected = X_DATA if second in STOCHASTIC else expected_final(second, steps[after]["eps"])
        assert (out - expected).abs().max().item() < (2e-3 if sharp else 0.05)
        if sharp and second not in STOCHASTIC:  # the switch itself keeps eps_hat
            assert noise_drift(steps, start=0 if deterministic else after - 1) < 1e-2, after
        if deterministic:  # Gaussian data: the switched run lands where the probability flow goes
            calls: list = []
            out, _ = run(first, prediction_type, 20, switch_at={after: second},
                         model_fn=oracle(prediction_type, DATA_STD, calls))
            tolerance = max(FLOW_TOLERANCE.get(first, 0.01), FLOW_TOLERANCE.get(second, 0.01))
            assert (out - flow_target(calls)).abs().mean().item() < tolerance, after


def test_heun_started_at_its_second_order_entries_stays_in_phase():
    """DDIM → Heun lands on odd Heun indices (its corrector calls); the run must still take whole steps."""
    for after in range(1, 10):
        out, steps = run("DDIM", "epsilon", 10, switch_at={after: "Heun"})
        assert isinstance(steps[-1]["scheduler"], HeunDiscreteScheduler)
        assert noise_drift(steps) < 1e-2, after
        torch.testing.assert_close(out, X_DATA, atol=1e-4, rtol=0)


def test_pndm_rebuilds_its_warm_up_when_joined_mid_run():
    scheduler = make_scheduler("PNDM", default_scheduler_config("epsilon"))
    set_timesteps(scheduler, 10)
    assert scheduler.timesteps.tolist()[:4] == [900, 800, 800, 700]
    reproject(scheduler, X_DATA, torch.zeros(SHAPE), 4)
    assert isinstance(scheduler, PNDMScheduler)
    assert scheduler.timesteps.tolist()[4:8] == [600, 500, 500, 400]


def test_a_chain_of_switches_through_every_sampler():
    names = sampler_names(include_distilled=True)
    switch_at = {2 * (k + 1): name for k, name in enumerate(names)}
    out, steps = run("DDIM", "v_prediction", 40, switch_at=switch_at)
    assert [type(s["scheduler"]) for s in steps[2::2]][: len(names)] == [SAMPLERS[n].cls for n in names]
    assert torch.isfinite(out).all()
    assert (out - X_DATA).abs().max().item() < 2e-3  # ends on LCM, which ends clean


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_same_seed_same_result_for_stochastic_samplers(name):
    torch.manual_seed(123)  # the global RNG must not matter (DPM++ SDE's Brownian tree would draw from it)
    a, _ = run(name, num_steps=6, seed=7, model_fn=oracle("v_prediction", DATA_STD))
    torch.manual_seed(456)
    b, _ = run(name, num_steps=6, seed=7, model_fn=oracle("v_prediction", DATA_STD))
    c, _ = run(name, num_steps=6, seed=8, model_fn=oracle("v_prediction", DATA_STD))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_callback_and_switch_arguments():
    out, steps = run("Euler", num_steps=4)
    assert [s["i"] for s in steps] == [0, 1, 2, 3]
    assert set(steps[0]) == {"i", "index", "t", "x", "denoised", "eps", "scheduler"}
    torch.testing.assert_close(steps[-1]["denoised"], X_DATA, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        run("Euler", num_steps=4, switch_at={0: "DDIM"})
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        run("Euler", num_steps=4, switch_at={2: "nope"})


def test_reproject_checks_its_inputs():
    scheduler = make_scheduler("Euler", default_scheduler_config())
    with pytest.raises(ValueError, match="set_timesteps"):
        reproject(scheduler, X_DATA, X_DATA, 0)
    set_timesteps(scheduler, 4)
    with pytest.raises(ValueError, match="step_index must be 0–4, got 5"):
        reproject(scheduler, X_DATA, X_DATA, 5)
