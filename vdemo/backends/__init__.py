"""Backends behind the shared pipeline, by name: the built-in `tiny` model and (on GPU spaces) hub backends.

`load_backend(name)` is the only way the app and the CLI get a backend; loaded weights are cached per process.
The names are an allow-list (`backend_names()`): a free-typed hub repo id is never accepted.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from vdemo.pipeline import Backend

BUILTIN = ("tiny",)


def backend_names() -> list[str]:
    """Every backend a user may choose: the built-in model first, then the pinned hub entries."""
    from vdemo.backends.hub import hub_backend_names

    return [*BUILTIN, *hub_backend_names()]


@lru_cache(maxsize=4)
def load_backend(name: str = "tiny", local_dir: str | None = None) -> Backend:
    """Load (once per process) the named backend, optionally from a local folder with the same layout."""
    if name == "tiny":
        from vdemo.backends.tiny import ASSETS, TinyBackend

        folder = local_dir or os.environ.get("VDEMO_TINY_DIR") or ASSETS
        return TinyBackend.from_pretrained(Path(folder))
    from vdemo.backends.hub import HUB_BACKENDS, load_hub_backend

    if name in HUB_BACKENDS:
        return load_hub_backend(name, local_dir=local_dir)
    raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
