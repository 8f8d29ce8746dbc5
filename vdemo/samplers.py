"""Samplers: diffusers schedulers by the names people know (A1111 / diffusers docs), and live switching mid-run.

    scheduler = make_scheduler("DPM++ 2M", default_scheduler_config())
    video = denoise(model_fn, scheduler, (1, 16, 3, 64, 64), num_steps=20, generator=torch.Generator().manual_seed(0),
                    switch_at={8: "Euler a"})       # after 8 model calls, continue with Euler ancestral

Every sampler is `cls.from_config(config, **kwargs)` of a diffusers scheduler; nothing diffusers has is re-implemented.
What we add is the glue for switching between two denoising steps of one run (`reproject`). Schedulers keep their
sample in different conventions (DDIM/DDPM/PNDM/LCM and the DPM-Solver family: variance preserving
x = sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε; Euler/Heun/LMS/DPM SDE: x = x0 + σ·ε) and have different timestep lists (Heun and
DPM SDE: 2n−1 entries, PNDM: n+1). A switch therefore re-noises the model's latest clean estimate x0_hat with its latest
noise estimate eps_hat to the new scheduler's own noise level via `new.add_noise`, which knows its convention
(the "re-noise the prediction" trick of SDEdit / img2img, with ε taken from the model instead of fresh noise).

Advance a run with `scheduler_step` rather than `scheduler.step`: diffusers' step signatures differ (only some take
`generator`), LMS must restart its multistep order after a switch, and DPM++ SDE seeds its Brownian tree from the
run's generator only through it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class SamplerSpec:
    """A diffusers scheduler class and the kwargs that turn it into one named sampler (read-only)."""

    cls: type[SchedulerMixin]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    distilled_only: bool = False  # meaningful only for models distilled for it (LCM); generic backends leave it out
    max_steps: int | None = None  # the scheduler refuses more steps than this

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType({
    "DDIM": SamplerSpec(DDIMScheduler, {}, "deterministic; Song et al. 2020"),
    "DDPM": SamplerSpec(DDPMScheduler, {}, "ancestral (stochastic); Ho et al. 2020"),
    "Euler": SamplerSpec(EulerDiscreteScheduler, {}, "k-diffusion Euler; Karras et al. 2022"),
    "Euler a": SamplerSpec(EulerAncestralDiscreteScheduler, {}, "Euler ancestral (stochastic)"),
    # "leading" spacing starts Heun below t=999: on the cosine schedule σ jumps from 642 (t=998) to 2e4 (t=999), and
    # Heun's trapezoid over that first step multiplies the change in x0_hat by σ0/2σ1 (~800 at 20 steps): it blows up.
    "Heun": SamplerSpec(HeunDiscreteScheduler, {"timestep_spacing": "leading"},
                        "2nd order, two model calls per step (2n−1 timesteps); 'leading' spacing"),
    "LMS": SamplerSpec(LMSDiscreteScheduler, {}, "linear multistep, order 4"),
    "PNDM": SamplerSpec(PNDMScheduler, {"skip_prk_steps": True},
                        "PLMS; PRK warm-up skipped so that few steps work (n+1 timesteps)"),
    "DEIS": SamplerSpec(DEISMultistepScheduler, {}, "DEIS multistep, order 2; Zhang & Chen 2022"),
    "UniPC": SamplerSpec(UniPCMultistepScheduler, {}, "UniPC predictor-corrector, bh2; Zhao et al. 2023"),
    "DPM++ 2M": SamplerSpec(DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2},
                            "DPM-Solver++ multistep, order 2; Lu et al. 2022"),
    "DPM++ 2M Karras": SamplerSpec(
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M on Karras σs; with a cosine schedule (σ_max≈2e4) several steps land near t=999"),
    "DPM++ SDE": SamplerSpec(DPMSolverSDEScheduler, {},
                             "DPM-Solver++ SDE (stochastic, Brownian tree; needs torchsde); 2n−1 timesteps"),
    "LCM": SamplerSpec(LCMScheduler, {}, "only for LCM-distilled models (Luo et al. 2023); stochastic",
                       distilled_only=True, max_steps=50),
})


def sampler_names(allowed: Iterable[str] | None = None, *, include_distilled: bool = False) -> list[str]:
    """Registered names in registry order: those in `allowed`, or else every general-purpose sampler.

    A generic backend calls `sampler_names()` (no LCM); an LCM-distilled backend `sampler_names(include_distilled=True)`
    or names its own list. Unknown names in `allowed` raise.
    """
    if allowed is None:
        return [name for name, spec in SAMPLERS.items() if include_distilled or not spec.distilled_only]
    allowed = set(allowed)
    unknown = sorted(allowed - set(SAMPLERS))
    if unknown:
        raise ValueError(f"unknown sampler {unknown[0]!r}; choose one of: {', '.join(SAMPLERS)}")
    return [name for name in SAMPLERS if name in allowed]


def default_scheduler_config(prediction_type: str = "v_prediction", *,
                             timestep_spacing: str | None = None) -> Mapping[str, Any]:
    """The project's training schedule: 1000 steps, Glide cosine betas (squaredcos_cap_v2), no sample clipping.

    timestep_spacing None leaves each scheduler its own default ("leading" for DDIM/DDPM/PNDM, "linspace" for the
    σ-based and DPM-Solver family); "trailing" starts every sampler at t=999 even at 1–2 steps (Lin et al. 2023,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
    extra = {}
    if timestep_spacing is not None:
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, "
                             f"got {timestep_spacing!r}")
        extra["timestep_spacing"] = timestep_spacing
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type=prediction_type, clip_sample=False, **extra).config


def make_scheduler(name: str, config: Mapping[str, Any]) -> SchedulerMixin:
    """`cls.from_config(config, **kwargs)` for a registered name; keeps betas, prediction_type etc. from `config`."""
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return spec.cls.from_config(config, **spec.kwargs)


def switch_scheduler(current: SchedulerMixin, name: str) -> SchedulerMixin:
    """A fresh scheduler `name` with the same training schedule and prediction type as `current`."""
    return make_scheduler(name, current.config)


def set_timesteps(scheduler: SchedulerMixin, num_steps: int) -> torch.Tensor:
    """`set_timesteps(num_steps)`, then `set_begin_index(0)` where supported; returns the timesteps.

    Starting at an explicit index keeps diffusers' timestep lookup out of it: with Karras σs on a cosine schedule the
    first few timesteps are all 998, and the lookup ("second match on the first step") would skip one.
    Euler a keeps its σs in float64: it computes σ_down = sqrt(σ_to² − σ_up²), which float32 rounds below zero (NaN)
    when σ_max ≈ 2e4, as on the cosine schedule (e.g. at 4 steps).
    """
    spec = next((s for s in SAMPLERS.values() if type(scheduler) is s.cls), None)
    if spec is not None and spec.max_steps is not None and num_steps > spec.max_steps:
        raise ValueError(f"{type(scheduler).__name__} supports at most {spec.max_steps} steps, got {num_steps}")
    scheduler.set_timesteps(num_steps)
    if isinstance(scheduler, EulerAncestralDiscreteScheduler):
        scheduler.sigmas = scheduler.sigmas.double()
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    return scheduler.timesteps


def noise_level(scheduler: SchedulerMixin, index: int) -> float:
    """σ = √((1 − ᾱ) / ᾱ) of the sample a run started fresh at `scheduler.timesteps[index]` would hold.

    σ-based schedulers keep it exactly (`sigmas[index]`; at a two-call sampler's second entry that is the next level,
    where `_align_schedule` starts a full step); the others read ᾱ at the integer timestep. Karras σs are compared
    this way because their timesteps round several distinct σs to the same value (998, 998, 998, …).
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > index:
        return float(sigmas[index])
    a = alpha_bar_at(scheduler.alphas_cumprod, scheduler.timesteps[index])
    return math.sqrt((1 - a) / a)


def steps_from(scheduler: SchedulerMixin, index: int) -> int:
    """Scheduler steps a run started (or continued) at `scheduler.timesteps[index]` still takes, after
    `_align_schedule`: two-call samplers drop an odd (second-call) entry and count pairs; PLMS rebuilds its warm-up, one
    step per distinct level left; the others one step per entry."""
    entries = len(scheduler.timesteps) - index
    if entries <= 0:
        return 0
    if isinstance(scheduler, TWO_CALL_SAMPLERS):
        return (entries - index % 2 + 1) // 2
    if isinstance(scheduler, PNDMScheduler):
        return len(torch.unique_consecutive(scheduler.timesteps[index:]))
    return entries


def continue_index(old: SchedulerMixin, old_index: int, new: SchedulerMixin) -> int:
    """Where a switch to `new` continues a run that was about to call `old` at `old_index`.

    By noise level: the first entry of the least noisy level of `new` that is still at least as noisy as the old one,
    so a switch does not skip a level whatever the lists' lengths (PNDM's warm-up, Heun's 2n−1 entries); it may run
    part of one again. Bounded by the steps asked for: the new sampler takes at most one step more than the old one
    had left (`steps_from`), so a switch never lengthens a run past what was costed (a ZeroGPU slot). Where the grids
    cover different noise ranges (Karras σs reach 2e4 on the cosine schedule, a uniform grid's top is far lower) the
    bound wins: leaving Karras early, the new sampler starts where its remaining steps fit and the levels above are
    passed in one re-projection; joining Karras it continues at its matching (dense, low-noise) levels and can finish
    in fewer steps than were left. `old_index == len(old.timesteps)` (finished) maps to `len(new.timesteps)`. Both
    schedulers must have had `set_timesteps`.
    """
    old_len, new_len = len(old.timesteps), len(new.timesteps)
    if not (old_len > 0 and new_len > 0 and 0 <= old_index <= old_len):
        raise ValueError(f"need 0 <= old_index <= {old_len} and a non-empty new schedule, got {old_index}, {new_len}")
    if old_index == old_len:
        return new_len
    level = noise_level(old, old_index) * (1 - 1e-6)
    levels = [noise_level(new, k) for k in range(new_len)]
    noisier = [k for k, s in enumerate(levels) if s >= level]
    by_level = 0
    if noisier:
        last = max(noisier)
        by_level = min(k for k in noisier if math.isclose(levels[k], levels[last], rel_tol=1e-6))
    budget = steps_from(old, old_index) + 1
    by_budget = next(k for k in range(new_len + 1) if steps_from(new, k) <= budget)
    return max(by_level, by_budget)


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: float | torch.Tensor) -> float:
    """ᾱ at a possibly fractional timestep, log σ interpolated linearly (the inverse of diffusers' `_sigma_to_t`)."""
    t = float(t)
    last = len(alphas_cumprod) - 1
    if not 0 <= t <= last:
        raise ValueError(f"timestep must be in [0, {last}], got {t}")
    lo = min(int(math.floor(t)), last - 1)
    w = t - lo
    a_lo, a_hi = float(alphas_cumprod[lo]), float(alphas_cumprod[lo + 1])
    log_sigma = (1 - w) * 0.5 * math.log((1 - a_lo) / a_lo) + w * 0.5 * math.log((1 - a_hi) / a_hi)
    return 1.0 / (1.0 + math.exp(2 * log_sigma))


def input_alpha_bar(scheduler: SchedulerMixin, t: float | torch.Tensor) -> float:
    """ᾱ of the VP-normalised sample that `scheduler.scale_model_input(x, t)` just returned.

    σ-based schedulers (and the DPM-Solver family) hold an exact σ per step, which is what their `step` uses to read the
    model output; their model-facing timestep can be a rounded (Karras) or interpolated stand-in for it, so prefer
    σ: ᾱ = 1 / (1 + σ²). Schedulers without σs (DDIM, DDPM, PNDM, LCM) use integer timesteps: ᾱ = alphas_cumprod[t].
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or not hasattr(scheduler, "step_index"):
        return alpha_bar_at(scheduler.alphas_cumprod, t)
    index = scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index
    if index is None:
        return alpha_bar_at(scheduler.alphas_cumprod, t)
    sigma = float(sigmas[index])
    if getattr(scheduler, "mid_point_sigma", None) is not None and not scheduler.state_in_first_order:
        sigma = float(scheduler.mid_point_sigma)  # DPM++ SDE's second (midpoint) model call
    return 1.0 / (1.0 + sigma**2)


def split_prediction(scheduler: SchedulerMixin, model_output: torch.Tensor, x_in: torch.Tensor,
                     t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from an ε or v output for the VP-normalised input x_in (v-prediction: Salimans & Ho 2022).

    Call it between `scale_model_input` and `scheduler_step`: it reads the scheduler's current step index.
    """
    a = input_alpha_bar(scheduler, t)
    sa, sb = math.sqrt(a), math.sqrt(1 - a)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "v_prediction":
        return sa * x_in - sb * model_output, sb * x_in + sa * model_output
    if prediction_type == "epsilon":
        return (x_in - sb * model_output) / sa, model_output
    raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


def from_clean(scheduler: SchedulerMixin, x0_hat: torch.Tensor, x_in: torch.Tensor,
               t: float | torch.Tensor) -> torch.Tensor:
    """The scheduler's model output (ε or v) equivalent to a clean-sample prediction x0_hat for the input x_in.

    For models trained to predict x0 ("sample"): ε = (x_in − √ᾱ·x0) / √(1−ᾱ), v = (√ᾱ·x_in − x0) / √(1−ᾱ). The per-pixel
    noise of x_in goes into ε exactly, so a model that cannot reproduce per-pixel noise still leaves clean samples.
    Call it where `split_prediction` would be called (it reads the scheduler's current step index).
    """
    a = input_alpha_bar(scheduler, t)
    sa, sb = math.sqrt(a), math.sqrt(1 - a)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "v_prediction":
        return (sa * x_in - x0_hat) / sb
    if prediction_type == "epsilon":
        return (x_in - sa * x0_hat) / sb
    raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")


def _align_schedule(new: SchedulerMixin, step_index: int) -> None:
    """Make the timestep list valid to start at `step_index` (see `reproject`); a no-op for most schedulers."""
    if isinstance(new, (HeunDiscreteScheduler, DPMSolverSDEScheduler)) and step_index % 2 == 1:
        # Odd entries are the second model call of a two-call step; a fresh scheduler would read
        # sigmas[i] == sigmas[i+1] there and fall out of phase. Dropping that entry starts a full step at the same σ.
        keep = [k for k in range(len(new.sigmas)) if k != step_index]
        new.sigmas = new.sigmas[keep]
        new.timesteps = new.timesteps[keep[:-1]]
    elif isinstance(new, PNDMScheduler):
        # PLMS warms up with a pseudo-Heun step that evaluates the second timestep twice ([t0, t1, t1, t2, ...]) and
        # counts calls in `counter`; rebuild that pattern for the remaining timesteps.
        rest = torch.unique_consecutive(new.timesteps[step_index:])
        tail = torch.cat([rest[:2], rest[1:]]) if len(rest) > 1 else rest
        new.timesteps = torch.cat([new.timesteps[:step_index], tail])


def reproject(new: SchedulerMixin, x0_hat: torch.Tensor, eps_hat: torch.Tensor,
              step_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents for `new` at its own noise level at `step_index`, and the timesteps left to run from there.

    `new` must have had `set_timesteps(n)`; afterwards the loop continues at `new.timesteps[step_index]` with
    `scheduler_step`, reading `len(new.timesteps)` afresh: Heun / DPM++ SDE lose one entry when started at an odd
    index and PNDM gains one (its warm-up), so the list may change length. `step_index == len(new.timesteps)` means
    finished: the latents are x0_hat.
    """
    if getattr(new, "num_inference_steps", None) is None:
        raise ValueError("call set_timesteps on the new scheduler before reproject")
    if not 0 <= step_index <= len(new.timesteps):
        raise ValueError(f"step_index must be 0–{len(new.timesteps)}, got {step_index}")
    if step_index == len(new.timesteps):
        return x0_hat.clone(), new.timesteps[step_index:]
    _align_schedule(new, step_index)
    if hasattr(new, "set_begin_index"):
        new.set_begin_index(step_index)
    t = new.timesteps[step_index]
    latents = new.add_noise(x0_hat, eps_hat, t.reshape(1))
    return latents, new.timesteps[step_index:]


@cache
def _step_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.step).parameters)


def scheduler_step(scheduler: SchedulerMixin, model_output: torch.Tensor, t: float | torch.Tensor,
                   sample: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`scheduler.step(...).prev_sample`, passing `generator` only where the step takes one.

    LMS: the order grows 1, 2, 3, 4 with the derivatives it holds (as from index 0), so a switch restarts its history
    like DPM-Solver's warm-up. DPM++ SDE: the Brownian tree is seeded from `generator` (diffusers would draw the seed
    from the global RNG).
    """
    kwargs: dict[str, Any] = {}
    if "generator" in _step_parameters(type(scheduler)):
        kwargs["generator"] = generator
    if isinstance(scheduler, LMSDiscreteScheduler):
        kwargs["order"] = min(len(scheduler.derivatives) + 1, 4)
    if isinstance(scheduler, DPMSolverSDEScheduler) and scheduler.noise_sampler is None and generator is not None:
        seed = torch.randint(0, 2**31 - 1, (), generator=generator, device=generator.device)
        scheduler.noise_sampler_seed = int(seed)
    return scheduler.step(model_output, t, sample, **kwargs).prev_sample


TWO_CALL_SAMPLERS = (HeunDiscreteScheduler, DPMSolverSDEScheduler)  # two model calls per step but the last


def schedule_steps(scheduler: SchedulerMixin) -> int:
    """Scheduler steps in `scheduler.timesteps` (after `set_timesteps(n)`: n), as opposed to model calls.

    Heun and DPM++ SDE evaluate every level but the last twice (2n−1 entries: [t0, t1, t1, …, tn−1, tn−1]; their last
    step is a single Euler call to σ = 0); PLMS evaluates t1 twice in its pseudo-Heun warm-up (n+1 entries); every
    other sampler makes one call per step. Also right for a list cut or re-aligned at a step's start
    (`reproject`, `_align_schedule`, the zero-shot backend's `start_at_level`).
    """
    entries = len(scheduler.timesteps)
    if isinstance(scheduler, TWO_CALL_SAMPLERS):
        return (entries + 1) // 2
    if isinstance(scheduler, PNDMScheduler):
        return max(entries - 1, 1)
    return entries


def mid_step(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler holds the first half of a two-call step, i.e. its last `step` did not complete one.

    Read from diffusers' own state after `step`: Heun and DPM++ SDE are between their two calls when
    `state_in_first_order` is False (Heun keeps `dt`, DPM++ SDE `sample`); PLMS keeps `cur_sample` between the two
    calls of its warm-up (`PNDMScheduler.step_plms`).
    """
    if isinstance(scheduler, TWO_CALL_SAMPLERS):
        return not scheduler.state_in_first_order
    if isinstance(scheduler, PNDMScheduler):
        return scheduler.cur_sample is not None
    return False


def step_progress(scheduler: SchedulerMixin, index: int, total: int) -> tuple[int, bool]:
    """(the scheduler step 1..total that the model call at timestep `index` belongs to, whether it completed it).

    Call it after `scheduler_step` for that call. `total` is `schedule_steps` of the run's schedule at its start; the
    step is counted back from the end (`total` minus the steps still left), so it stays right after a live switch
    (the new scheduler's list is re-aligned at a step's start) and a cut schedule. The last entry always completes
    the run (Heun's last step is one call). A switch continues at the new list's matching noise level, within the
    steps left (`continue_index`): where that runs part of a level again the step is reported again, and where the
    new grid has fewer levels left (joining Karras late) the count moves on.
    """
    done = not mid_step(scheduler) or index == len(scheduler.timesteps) - 1
    rest = len(scheduler.timesteps) - 1 - index - (0 if done else 1)  # entries after the call that completes it
    left = (rest + 1) // 2 if isinstance(scheduler, TWO_CALL_SAMPLERS) else rest
    return total - left, done


ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_steps(model_fn: ModelFn, scheduler: SchedulerMixin, latents_shape: tuple[int, ...], num_steps: int,
                 generator: torch.Generator,
                 switch_to: Callable[[int], str | None] | None = None,
                 output_type: str | None = None) -> Generator[dict, None, torch.Tensor]:
    """The sampling loop as a generator: one dict per model call, k-diffusion style.

    Yields {"i": model calls so far − 1, "index", "t", "x" (after the step), "denoised", "eps", "scheduler"}; calls
    are not steps for Heun, DPM++ SDE and PNDM: `step_progress(d["scheduler"], d["index"], total)` says which step a
    call belongs to. Before each call, `switch_to(calls)` may name another sampler; the run then continues on that
    scheduler from the same progress, re-projected onto its noise level (`reproject`). Stop early by closing / leaving
    the generator.
    model_fn(x_in, t) returns the model output in the scheduler's prediction_type for the VP-normalised x_in, or the
    clean sample x0 when `output_type == "sample"` (converted with `from_clean`).
    """
    if output_type not in (None, "sample", scheduler.config.prediction_type):
        raise ValueError(f"output_type must be 'sample' or the scheduler's prediction_type, got {output_type!r}")
    set_timesteps(scheduler, num_steps)
    x = torch.randn(latents_shape, generator=generator, device=generator.device) * scheduler.init_noise_sigma
    x0_hat = eps_hat = None
    i = calls = 0
    while i < len(scheduler.timesteps):
        name = switch_to(calls) if switch_to is not None and x0_hat is not None else None
        if name is not None:
            new = switch_scheduler(scheduler, name)
            set_timesteps(new, num_steps)
            i = continue_index(scheduler, i, new)
            x, _ = reproject(new, x0_hat, eps_hat, i)
            scheduler = new
            if i >= len(scheduler.timesteps):
                break
        t = scheduler.timesteps[i]
        x_in = scheduler.scale_model_input(x, t)
        out = model_fn(x_in, t)
        if output_type == "sample":
            out = from_clean(scheduler, out, x_in, t)
        x0_hat, eps_hat = split_prediction(scheduler, out, x_in, t)
        x = scheduler_step(scheduler, out, t, x, generator)
        yield {"i": calls, "index": i, "t": t, "x": x, "denoised": x0_hat, "eps": eps_hat, "scheduler": scheduler}
        i += 1
        calls += 1
    return x


def denoise(model_fn: ModelFn, scheduler: SchedulerMixin, latents_shape: tuple[int, ...], num_steps: int,
            generator: torch.Generator, callback: Callable[[dict], None] | None = None,
            switch_at: Mapping[int, str] | None = None) -> torch.Tensor:
    """Sample from pure noise to the end; `switch_at[k] = name` switches sampler after k model calls.

    callback gets each step's dict from `sample_steps`.
    """
    switch_at = dict(switch_at or {})
    bad = [k for k in switch_at if k < 1]
    if bad:
        raise ValueError(f"switch_at keys count model calls and must be >= 1, got {bad}")
    for name in switch_at.values():
        make_scheduler(name, scheduler.config)  # fail early on an unknown name
    steps = sample_steps(model_fn, scheduler, latents_shape, num_steps, generator, switch_at.get)
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            return done.value
        if callback is not None:
            callback(step)
