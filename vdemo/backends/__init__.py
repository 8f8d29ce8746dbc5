"""Backends behind the shared pipeline, by name: the built-in `tiny` model and (on GPU spaces) hub backends.

`load_backend(name)` is the only way the app and the CLI get a backend; loaded weights are cached per process (one
cache: `loaded_backend(name)` returns what is already in it and never loads). The names are an allow-list
(`backend_names()`): a free-typed hub repo id is never accepted.

A hosted Space serves the backends named by `$VDEMO_SPACE_BACKENDS` (comma-separated, or "all"); by default every
backend whose weights are present here (`weights_present`: a local folder, or the pinned revision already in the hub
cache). `preload(names)` loads them, ControlNets included, in the calling (main) thread before `launch`: on ZeroGPU
CUDA exists only in the forked worker, which inherits what the main process loaded, so nothing may load (or
download) inside GPU time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from vdemo.pipeline import Backend

BUILTIN = ("tiny",)
SPACE_BACKENDS_ENV = "VDEMO_SPACE_BACKENDS"

_CACHE: dict[tuple[str, str | None], Backend] = {}
_CACHE_LOCK = threading.Lock()


def backend_names() -> list[str]:
    """Every backend a user may choose: the built-in model first, then the pinned hub entries."""
    from vdemo.backends.hub import hub_backend_names

    return [*BUILTIN, *hub_backend_names()]


def tiny_dir(local_dir: str | os.PathLike | None = None) -> Path:
    """The built-in model's folder: the argument, else $VDEMO_TINY_DIR, else the shipped assets/tiny."""
    from vdemo.backends.tiny import ASSETS

    return Path(local_dir or os.environ.get("VDEMO_TINY_DIR") or ASSETS)


def _load(name: str, local_dir: str | None) -> Backend:
    if name == "tiny":
        from vdemo.backends.tiny import TinyBackend

        return TinyBackend.from_pretrained(tiny_dir(local_dir))
    from vdemo.backends.hub import HUB_BACKENDS, load_hub_backend

    if name in HUB_BACKENDS:
        return load_hub_backend(name, local_dir=local_dir)
    from vdemo.errors import UserError

    raise UserError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")


def load_backend(name: str = "tiny", local_dir: str | None = None) -> Backend:
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


load_backend.cache_clear = _cache_clear  # the lru_cache-style name tests and scripts use


def weights_present(name: str) -> bool:
    """Whether the backend's weights are on this machine: the built-in model's folder, a hub entry's local folder
    ($VDEMO_<NAME>_DIR), or every role's pinned revision in the hub cache. Never touches the network."""
    if name == "tiny":
        return (tiny_dir() / "config.json").is_file()
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
    The built-in model is always first when it is served. Unknown names raise a one-line UserError."""
    from vdemo.errors import UserError

    setting = os.environ.get(SPACE_BACKENDS_ENV, "").strip()
    names = backend_names()
    if not setting:
        return [n for n in names if weights_present(n)] or ["tiny"]
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
