"""Defaults and hard limits, kept in one place: validation and the UI's slider ranges both read them."""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_MODES: tuple[str, ...] = ("spatial", "temporal", "full", "causal", "sparse_causal")
MODALITIES: tuple[str, ...] = ("text", "image", "pose", "depth", "strokes")


@dataclass(frozen=True)
class Limits:
    """Ranges a GenerationRequest must fall in (inclusive). A backend may narrow them, never widen them."""

    min_frames: int = 4
    max_frames: int = 32
    min_side_px: int = 32
    max_side_px: int = 1024
    side_multiple: int = 8
    min_steps: int = 1
    max_steps: int = 100
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    max_seed: int = 2**32 - 1
    min_fps: int = 1
    max_fps: int = 30
    max_prompt_chars: int = 500
    max_strokes: int = 8
    max_stroke_points: int = 2000
    max_upload_mb: int = 20
    max_video_s: float = 10.0


@dataclass(frozen=True)
class Defaults:
    """What a request gets when a field is left out (v1's numbers; the page, the CLI and the tools fill size, steps
    and guidance from the chosen backend's own defaults, `vdemo.backends.backend_info`)."""

    num_frames: int = 16
    height: int = 64
    width: int = 64
    num_steps: int = 20
    guidance: float = 3.0
    fps: int = 8
    seed: int = 0
    attention_mode: str = "full"
    sampler: str = "DDIM"
    stroke_radius: float = 0.08


LIMITS = Limits()
DEFAULTS = Defaults()
# The backend the page, the CLI and the tools use unless told otherwise: the built-in v2 (`tiny-v2`), better than or
# tied with v1 on every row of issue 13's table (README, "The built-in model v2"); v1 stays loadable as `tiny`.
DEFAULT_BACKEND = "tiny-v2"
