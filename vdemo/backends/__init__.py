"""Backends behind the shared pipeline, by name: the built-in models (`tiny-v2`, the default, and `tiny`, v1) and
(on GPU spaces) hub backends.

The contract the UI and the tools read (and nothing else): `backend_info(name)` -> `BackendInfo`, everything a
registry entry declares — modalities, attention modes, samplers, defaults (mode, sampler, steps, guidance, frame
size, frames), limits and its GPU-cost model — without loading weights. `load_backend(name)` is the only way to get a
backend; `get_pipeline(name)` its process-wide `VideoPipeline`. One cache holds both (`loaded_backend(name)` returns
what is already in it and never loads). The names are an allow-list (`backend_names()`): a free-typed hub repo id is
never accepted.

A hosted Space serves the backends named by `$VDEMO_SPACE_BACKENDS` (comma-separated, or "all"); by default every
backend whose weights are present here (`weights_present`: a local folder, or the pinned revision already in the hub
cache). `preload(names)` loads them, ControlNets included, in the calling (main) thread before `launch`: on ZeroGPU
CUDA exists only in the forked worker, which inherits what the main process loaded, so nothing may load (or
download) inside GPU time.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdemo.config import DEFAULT_BACKEND, LIMITS, Limits
from vdemo.cost import GpuCost
from vdemo.errors import UserError
from vdemo.pipeline import Backend, VideoPipeline

# the project's own CPU models (vdemo.backends.tiny_v2, vdemo.backends.tiny), the default first (the dropdown's order)
BUILTIN = ("tiny-v2", "tiny")
BUILTIN_NOTES = {
    "tiny": "built-in v1 (the default until v2 beat it): pixel-space video U-Net, 64 px",
    "tiny-v2": "built-in v2, the default: latent video diffusion (Video LDM), 128 px, about 3× faster than v1. "
               "Give it a first frame and a motion (strokes that start on a shape, or a prompt that says where it "
               "moves) and it keeps the shape (cut and drag). Without the layout planner it draws squares as round "
               "blobs and moves the object the prompt's way about 4 times in 10; with a depth map and two or three "
               "objects it sometimes paints the caption's colours on the wrong ones (README, issue 13)",
}
SPACE_BACKENDS_ENV = "VDEMO_SPACE_BACKENDS"

_CACHE: dict[tuple[str, str | None], Backend] = {}
_PIPELINES: dict[str, VideoPipeline] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class BackendInfo:
    """What one registry entry declares (attribute names as on `pipeline.Backend`, so `vdemo.cost` takes either)."""

    name: str
    label: str
    modalities: frozenset[str]
    attention_modes: tuple[str, ...]
    samplers: tuple[str, ...]
    default_attention_mode: str
    default_sampler: str
    default_steps: int
    default_guidance: float
    default_size: tuple[int, int]  # (height, width)
    default_num_frames: int
    limits: Limits
    gpu_cost: GpuCost
    mode_layers: Any = None  # lab mode -> (spatial layers' mode, temporal layers' mode), for UNets that have both
    notes: str = ""


def backend_class(name: str) -> type[Backend]:
    """The class that runs a registry entry (its capabilities are class attributes); imports code, loads no weights."""
    if name == "tiny":
        from vdemo.backends.tiny import TinyBackend

        return TinyBackend
    if name == "tiny-v2":
        from vdemo.backends.tiny_v2 import TinyV2Backend

        return TinyV2Backend
    import importlib

    from vdemo.backends.hub.registry import get_spec

    module, cls = get_spec(name).backend.split(":")
    return getattr(importlib.import_module(f"vdemo.backends.hub.{module}"), cls)


def size_setting(name: str) -> tuple[int, int] | None:
    """$VDEMO_<NAME>_SIZE ("WIDTHxHEIGHT", e.g. VDEMO_SVD_SIZE=768x432): a Space owner's frame size for one backend
    (smaller frames fit a ZeroGPU limit); None when unset. Returns (height, width)."""
    import re

    var = "VDEMO_" + "".join(c if c.isalnum() else "_" for c in name.upper()) + "_SIZE"
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", value)
    width, height = (int(match[1]), int(match[2])) if match else (0, 0)
    if not match or width % LIMITS.side_multiple or height % LIMITS.side_multiple or not (
            LIMITS.min_side_px <= min(width, height) and max(width, height) <= LIMITS.max_side_px):
        raise UserError(f"{var} must be WIDTHxHEIGHT, multiples of {LIMITS.side_multiple} in "
                        f"{LIMITS.min_side_px}–{LIMITS.max_side_px} px, got {value!r}")
    return height, width


def backend_info(name: str) -> BackendInfo:
    """The contract of a registry entry: the loaded instance's when it is loaded (a hub backend narrows its
    modalities to the ControlNets it has), else its class's, with the Space's size setting and the entry's frames."""
    if name not in backend_names():
        raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
    source: Any = loaded_backend(name) or backend_class(name)
    label, notes, frames = name, BUILTIN_NOTES.get(name, ""), None
    if name not in BUILTIN:
        from vdemo.backends.hub.registry import get_spec

        spec = get_spec(name)
        label, notes, frames = spec.label, spec.notes, spec.default_num_frames
    modes, samplers = tuple(source.attention_modes), tuple(source.samplers)
    mode = source.default_attention_mode if source.default_attention_mode in modes else modes[0]
    sampler = source.default_sampler if source.default_sampler in samplers else samplers[0]
    return BackendInfo(
        name=name, label=label, modalities=frozenset(source.modalities), attention_modes=modes, samplers=samplers,
        default_attention_mode=mode, default_sampler=sampler, default_steps=int(source.default_steps),
        default_guidance=float(source.default_guidance),
        default_size=size_setting(name) or tuple(source.default_size),
        default_num_frames=int(frames or source.default_num_frames), limits=source.limits,
        gpu_cost=source.gpu_cost, mode_layers=getattr(source, "mode_layers", None), notes=notes)


def backend_names() -> list[str]:
    """Every backend a user may choose: the built-in models first (the default, v2, leading), then the pinned hub
    entries."""
    from vdemo.backends.hub import hub_backend_names

    return [*BUILTIN, *hub_backend_names()]


def tiny_dir(local_dir: str | os.PathLike | None = None, name: str = "tiny") -> Path:
    """A built-in model's folder: the argument, else $VDEMO_TINY_DIR ($VDEMO_TINY_V2_DIR for tiny-v2), else the
    shipped assets/tiny (assets/tiny_v2)."""
    if name == "tiny-v2":
        from vdemo.backends.tiny_v2 import ASSETS as V2_ASSETS

        return Path(local_dir or os.environ.get("VDEMO_TINY_V2_DIR") or V2_ASSETS)
    from vdemo.backends.tiny import ASSETS

    return Path(local_dir or os.environ.get("VDEMO_TINY_DIR") or ASSETS)


def get_pipeline(name: str) -> VideoPipeline:
    """The process-wide VideoPipeline of a backend (weights load once; shared by every tab and user)."""
    backend = load_backend(name)
    with _CACHE_LOCK:
        if name not in _PIPELINES or _PIPELINES[name].backend is not backend:
            _PIPELINES[name] = VideoPipeline(backend)
        return _PIPELINES[name]


def _load(name: str, local_dir: str | None) -> Backend:
    if name in BUILTIN:
        return backend_class(name).from_pretrained(tiny_dir(local_dir, name))
    from vdemo.backends.hub import HUB_BACKENDS, load_hub_backend

    if name in HUB_BACKENDS:
        return load_hub_backend(name, local_dir=local_dir)
    raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")


def load_backend(name: str = DEFAULT_BACKEND, local_dir: str | None = None) -> Backend:
    """Load (once per process) the named backend, optionally from a local folder with the same layout."""
    key = (name, None if local_dir is None else str(local_dir))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(name, local_dir)
        return _CACHE[key]


def loaded_backend(name: str) -> Backend | None:
    """The named backend if this process has already loaded it (default folder), else None; never loads."""
    with _CACHE_LOCK:
        return _CACHE.get((name, None))


def _cache_clear() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
        _PIPELINES.clear()


load_backend.cache_clear = _cache_clear  # the lru_cache-style name tests and scripts use


def weights_present(name: str) -> bool:
    """Whether the backend's weights are on this machine: the built-in model's folder, a hub entry's local folder
    ($VDEMO_<NAME>_DIR), or every role's pinned revision in the hub cache. Never touches the network."""
    if name in BUILTIN:
        return (tiny_dir(name=name) / "config.json").is_file()
    from vdemo.backends.hub.registry import HUB_BACKENDS

    spec = HUB_BACKENDS.get(name)
    if spec is None:
        return False
    folder = os.environ.get(spec.env_var)
    if folder:
        return all((Path(folder) / role).is_dir() for role in spec.repos if role not in spec.lazy_roles)
    from huggingface_hub import try_to_load_from_cache

    def cached(repo) -> bool:
        for filename in ("model_index.json", "config.json"):
            hit = try_to_load_from_cache(repo.repo_id, filename, revision=repo.revision)
            if isinstance(hit, str):
                return True
        return False

    return all(cached(repo) for role, repo in spec.repos.items() if role not in spec.lazy_roles)


def served_backends() -> list[str]:
    """What this app serves: $VDEMO_SPACE_BACKENDS ("all", or names), else every backend whose weights are present.
    The built-in models are always first when they are served. Unknown names raise a one-line UserError."""
    setting = os.environ.get(SPACE_BACKENDS_ENV, "").strip()
    names = backend_names()
    if not setting:
        return [n for n in names if weights_present(n)] or [DEFAULT_BACKEND]
    if setting.lower() == "all":
        return names
    wanted = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise UserError(f"{SPACE_BACKENDS_ENV} names unknown backends {unknown}; choose from: {', '.join(names)}")
    return [n for n in names if n in wanted]


def preload(names: list[str], log=print) -> dict[str, str]:
    """Load each named backend and everything it may use (ControlNets), in this thread; returns name -> "ok" or the
    one-line reason it could not load (the app then offers it greyed out with that reason)."""
    from vdemo.errors import one_line

    status = {}
    for name in names:
        try:
            backend = load_backend(name)
            backend.preload()
            status[name] = "ok"
        except Exception as err:  # noqa: BLE001 - one backend failing must not stop the Space from starting
            status[name] = one_line(err)
            log(f"WARNING: backend {name!r} not loaded: {status[name]}")
    return status
