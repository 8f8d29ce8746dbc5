"""Hub backends for GPU spaces: AnimateDiff, zero-shot SD 1.5 + ControlNet, Stable Video Diffusion.

    backend = load_hub_backend("animatediff")                       # pinned hub repos (downloads when online)
    backend = load_hub_backend("animatediff", local_dir="/models")  # or a local copy: /models/base, …
    VideoPipeline(backend).generate(GenerationRequest(prompt="a cat walks", num_frames=16, height=512, width=512))

`HUB_BACKENDS` (registry name → pinned spec) is the allow-list; `$VDEMO_<NAME>_DIR` (e.g. VDEMO_SVD_XT_DIR) points an
entry at a local folder. See registry.py for the layout and where each revision came from.
"""

from __future__ import annotations

import importlib
import os

import torch

from vdemo.backends.hub.registry import HUB_BACKENDS, HubError, HubSpec, get_spec, local_root
from vdemo.pipeline import Backend

__all__ = ["HUB_BACKENDS", "HubError", "HubSpec", "hub_backend_names", "load_hub_backend"]


def hub_backend_names() -> list[str]:
    return list(HUB_BACKENDS)


def load_hub_backend(name: str, local_dir: str | os.PathLike | None = None, device: str | None = None,
                     dtype: torch.dtype | None = None) -> Backend:
    """Load a registry entry (never a free-typed repo id) from its pinned hub repos or a local folder.

    device defaults to CUDA when present, else CPU; dtype to float16 on CUDA, float32 on CPU.
    """
    from vdemo.backends.hub.base import default_device

    spec = get_spec(name)
    root = local_root(spec, local_dir)
    device = device or default_device()
    dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
    module_name, class_name = spec.backend.split(":")
    backend_cls = getattr(importlib.import_module(f"vdemo.backends.hub.{module_name}"), class_name)
    try:
        return backend_cls.load(spec, root, device, dtype)
    except HubError:
        raise
    except (OSError, ValueError) as err:  # hub unreachable, gated repo, missing files: one line for the UI
        where = root if root is not None else "the hub (pinned revisions)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"could not load hub backend {name!r} from {where}: {first}") from err
