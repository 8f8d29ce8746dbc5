"""v2 built-in model candidates for the bake-off (`python -m vdemo.bakeoff`): same data, same CPU budget, same eval.

    A  latent video diffusion (Video LDM): a small f=4 conv autoencoder + a latent video U-Net   (latent.py)
    B  cascaded (Imagen Video): v1-style 64 px base + a 128 px super-resolution stage            (cascade.py)
    D  the control: v1's pixel-patch U-Net at 128 px (patch 4)                                   (patch.py)

All share `core.VideoUNet`, whose self-attention is the project's `FrameAttnProcessor` on one `FrameContext`.
"""

from __future__ import annotations

from dataclasses import replace

from vdemo.models.v2.cascade import CascadeConfig, CascadedVideoDiffusion
from vdemo.models.v2.core import Candidate
from vdemo.models.v2.latent import LatentConfig, LatentVideoDiffusion
from vdemo.models.v2.patch import PatchConfig, PatchVideoDiffusion

CANDIDATES = {"A": (LatentVideoDiffusion, LatentConfig), "B": (CascadedVideoDiffusion, CascadeConfig),
              "D": (PatchVideoDiffusion, PatchConfig)}

# Minute-scale sizes for tests: same structure, few channels.
TINY = {
    "A": {"ae_channels": 8, "channels": (16, 16, 16)},
    "B": {"base_channels": (16, 16, 16), "sr_channels": (16, 16, 16)},
    "D": {"channels": (16, 16, 16)},
}


def build(name: str, *, tiny: bool = False, size: int | None = None, vocab_size: int = 128, **overrides) -> Candidate:
    """A fresh candidate by letter; `tiny` for tests; `size` overrides the output size (cascade: base = size / 2);
    other keywords override fields of the candidate's config (e.g. A's `reference`)."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}; choose from {', '.join(CANDIDATES)}")
    cls, cfg_cls = CANDIDATES[name]
    cfg = cfg_cls(vocab_size=vocab_size, **(TINY[name] if tiny else {}))
    if size is not None:
        cfg = replace(cfg, size=size, **({"base_size": size // 2} if name == "B" else {}))
    return cls(replace(cfg, **overrides) if overrides else cfg)


__all__ = ["CANDIDATES", "Candidate", "build"]
