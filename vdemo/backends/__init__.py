"""Backends behind the shared pipeline, by name: the built-in `tiny` model and (on GPU spaces) hub backends.

`load_backend(name)` is the only way the app and the CLI get a backend; loaded weights are cached per process.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from vdemo.pipeline import Backend

BUILTIN = ("tiny",)


def backend_names() -> list[str]:
    """Every backend a user may choose (an allow-list; free-typed repo ids are never accepted)."""
    return list(BUILTIN)


@lru_cache(maxsize=4)
def load_backend(name: str = "tiny", local_dir: str | None = None) -> Backend:
    """Load (once per process) the named backend, optionally from a local folder with the same layout."""
    if name == "tiny":
        from vdemo.backends.tiny import ASSETS, TinyBackend

        folder = local_dir or os.environ.get("VDEMO_TINY_DIR") or ASSETS
        return TinyBackend.from_pretrained(Path(folder))
    raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
