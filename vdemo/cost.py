"""GPU time of one run, estimated from the request before any GPU is asked for (ZeroGPU charges the requested time).

    seconds = startup_s + model_calls × frames × (pixels / reference pixels) × s_per_frame_call × mode_factor

- model calls: the scheduler's own timestep count for the request's steps (Heun and DPM++ SDE: 2n − 1 calls for n
  steps; PNDM: n + 1), taken from diffusers by building the scheduler, not from a table;
- mode_factor = (1 − a) + a · P(mode) / P(default mode): the attention pairs P of the frame-mixing self-attention
  (`vdemo.attention.pair_count` at the backend's top-level token grid; a backend with two kinds of attention layer
  sums its `mode_layers`), weighted by the share `a` of a model call that attention takes at the default mode;
- the per-backend factors (`GpuCost`) are estimates from public timings of the same models, not measured on a GPU here.

`gpu_limit_s()` is the Space's limit per run (`$VDEMO_GPU_LIMIT_S`; 120 s by default on ZeroGPU, none elsewhere);
`check_fits` refuses a request over it with one line naming settings that would fit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache

from vdemo.attention import pair_count
from vdemo.errors import UserError

GPU_LIMIT_ENV = "VDEMO_GPU_LIMIT_S"
ZERO_GPU_LIMIT_S = 120  # ZeroGPU's per-call duration cap for most accounts (its default request is 60 s)


@dataclass(frozen=True)
class GpuCost:
    """How one backend's run time scales. Seconds per frame per model call at `reference_px` pixels per frame."""

    startup_s: float  # fresh worker hand-over, VAE decode, export: paid once per run
    s_per_frame_call: float  # one model call (classifier-free guidance included) per frame at reference_px
    attention_share: float  # share of a model call spent in frame-mixing attention, at the default mode
    reference_px: int = 512 * 512
    latent_factor: int = 8  # pixels per latent cell on each side: tokens per frame = (H / f) · (W / f)
    source: str = "estimate"
    temporal_factor: int = 1  # video frames per latent frame (Wan's causal 3D VAE: 4, the first frame alone)


@lru_cache(maxsize=64)
def model_calls(sampler: str, num_steps: int) -> int:
    """Model evaluations a sampler makes for `num_steps` steps: its scheduler's timestep count."""
    from vdemo.samplers import SAMPLERS, default_scheduler_config, make_scheduler, set_timesteps

    if sampler not in SAMPLERS:
        return num_steps
    return len(set_timesteps(make_scheduler(sampler, default_scheduler_config()), num_steps))


def _pairs(backend, mode: str, num_frames: int, tokens: int) -> int:
    """Attention pairs of one model call's frame-mixing layers. With `mode_layers` (AnimateDiff, SVD: lab mode ->
    (spatial self-attention's mode, temporal layers' mode)), the temporal layers see one token per frame at each of
    the `tokens` positions."""
    layers = getattr(backend, "mode_layers", None)
    if not layers or mode not in layers:
        return pair_count(mode, num_frames, tokens)
    spatial_mode, temporal_mode = layers[mode]
    return pair_count(spatial_mode, num_frames, tokens) + tokens * pair_count(temporal_mode, num_frames, 1)


def mode_factor(backend, mode: str, num_frames: int, height: int, width: int) -> float:
    """How much slower (> 1) or faster (< 1) a model call is in `mode` than in the backend's default mode."""
    cost: GpuCost = backend.gpu_cost
    tokens = max(1, (height // cost.latent_factor) * (width // cost.latent_factor))
    frames = (num_frames - 1) // cost.temporal_factor + 1  # the frames attention sees (latent frames)
    default = getattr(backend, "default_attention_mode", None) or backend.attention_modes[0]
    ratio = _pairs(backend, mode, frames, tokens) / max(1, _pairs(backend, default, frames, tokens))
    return (1.0 - cost.attention_share) + cost.attention_share * ratio


def estimate_seconds(backend, num_frames: int, height: int, width: int, num_steps: int, sampler: str,
                     mode: str) -> float:
    """Estimated GPU seconds of one run of `backend` (an instance or a class with a `gpu_cost`)."""
    cost: GpuCost = backend.gpu_cost
    per_call = num_frames * (height * width / cost.reference_px) * cost.s_per_frame_call
    return cost.startup_s + model_calls(sampler, num_steps) * per_call * mode_factor(backend, mode, num_frames,
                                                                                     height, width)


def request_seconds(backend, request, mode: str | None = None, sampler: str | None = None) -> int:
    """Whole GPU seconds for a GenerationRequest (its own mode and sampler unless given)."""
    return math.ceil(estimate_seconds(backend, request.num_frames, request.height, request.width, request.num_steps,
                                      sampler or request.sampler, mode or request.attention_mode))


def gpu_limit_s() -> int | None:
    """Seconds one run may ask for: $VDEMO_GPU_LIMIT_S, else ZeroGPU's cap on a ZeroGPU Space, else no limit."""
    value = os.environ.get(GPU_LIMIT_ENV, "").strip()
    if value:
        try:
            return int(float(value))
        except ValueError:
            raise UserError(f"{GPU_LIMIT_ENV} must be a number of seconds, got {value!r}") from None
    from spaces.config import Config

    return ZERO_GPU_LIMIT_S if Config.zero_gpu else None


def fitting_settings(backend, request, limit_s: float) -> list[str]:
    """Single changes a user can make in the settings panel (fewer steps, fewer frames, another attention mode, a
    one-call-per-step sampler) that bring the request under limit_s; at most one of each kind."""
    lim = backend.limits
    out = []

    def fits(**changes) -> bool:
        return request_seconds(backend, replace(request, **changes)) <= limit_s

    steps = next((n for n in range(request.num_steps - 1, lim.min_steps - 1, -1) if fits(num_steps=n)), None)
    if steps is not None:
        out.append(f"{steps} steps")
    frames = next((n for n in range(request.num_frames - 1, lim.min_frames - 1, -1) if fits(num_frames=n)), None)
    if frames is not None:
        out.append(f"{frames} frames")
    default = getattr(backend, "default_attention_mode", None)
    others = sorted((m for m in backend.attention_modes if m not in (default, request.attention_mode)),
                    key=lambda m: request_seconds(backend, request, mode=m))
    modes = ([default] if default in backend.attention_modes and default != request.attention_mode else []) + others
    mode = next((m for m in modes if fits(attention_mode=m)), None)  # the one the model was trained with first
    if mode is not None:
        out.append(f"the {mode} attention mode")
    if model_calls(request.sampler, request.num_steps) > request.num_steps:
        one_call = next((s for s in backend.samplers if model_calls(s, request.num_steps) <= request.num_steps), None)
        if one_call and fits(sampler=one_call):
            out.append(f"the {one_call} sampler (one model call per step)")
    return out


def check_fits(backend, request, limit_s: float | None = None) -> int:
    """The request's GPU seconds; a UserError naming settings that fit when it is over the limit."""
    limit_s = gpu_limit_s() if limit_s is None else limit_s
    seconds = request_seconds(backend, request)
    if limit_s is not None and seconds > limit_s:
        options = fitting_settings(backend, request, limit_s)
        hint = f"; these would fit: {', or '.join(options)}" if options else ""
        what = (f"{request.num_frames} frames, {request.width}×{request.height}, {request.num_steps} steps, "
                f"{request.sampler}, {request.attention_mode}")
        raise UserError(f"this run needs about {seconds} s of GPU time, over this Space's {int(limit_s)} s limit per "
                        f"run ({what}){hint}")
    return seconds
