"""Candidate D, the control: v1's pixel-space patch design scaled to 128×128 output.

As `vdemo.models.tiny_unet` (v1): the noisy frames and the 9 control channels are pixel-unshuffled (patch 4) to a
32×32 grid of tokens per frame, a U-Net 32→16→8 predicts the clean clip (x0), pixel-shuffled back. At 32×32 tokens
per frame full attention over 8 frames would be 8,192 tokens, so the finest level is convolution only and attention
(with the live frame mode) starts at 16×16 — the only change from v1 besides the size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vdemo.attention import FrameContext
from vdemo.models.v2.core import (
    NUM_CONTROLS,
    Candidate,
    UNetConfig,
    VideoUNet,
    ddim_sample,
    shuffle,
    train_scheduler,
    unconditional,
    unshuffle,
    x0_loss,
)


@dataclass(frozen=True)
class PatchConfig:
    size: int = 128
    patch: int = 4
    channels: tuple[int, ...] = (32, 64, 96)
    attention: tuple[bool, ...] = (False, True, True)
    vocab_size: int = 128


class PatchVideoDiffusion(Candidate):
    name = "D"
    paper = "v1 (pixel patches, as DiT / U-ViT tokenise pixels) at 128 px"

    def __init__(self, cfg: PatchConfig = PatchConfig()):
        super().__init__()
        self.cfg, self.ctx = cfg, FrameContext()
        r2 = cfg.patch ** 2
        self.unet = VideoUNet(UNetConfig((3 + NUM_CONTROLS) * r2, 3 * r2, cfg.channels, cfg.attention,
                                         vocab_size=cfg.vocab_size), self.ctx)
        self.scheduler = train_scheduler()

    def denoise(self, xt: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, controls: torch.Tensor,
                flags: torch.Tensor) -> torch.Tensor:
        """x_t (B, F, 3, S, S) -> predicted x0, same shape."""
        x = unshuffle(torch.cat([xt, controls], 2), self.cfg.patch)  # (B, F, 12·p², S/p, S/p)
        return shuffle(self.unet(x, t, ids, flags), self.cfg.patch)  # (B, F, 3, S, S)

    def training_loss(self, batch: dict, generator: torch.Generator, progress: float) -> torch.Tensor:
        def fn(xt, t):
            return self.denoise(xt, t, batch["ids"], batch["controls"], batch["flags"])
        return x0_loss(fn, batch["x0"], batch["fg"], generator, self.scheduler)

    def generate(self, ids, controls, flags, steps, guidance, generator):
        B, Fr, _, S, _ = controls.shape
        off = unconditional(ids, controls, flags)

        def fn(xt, t, cond):
            return self.denoise(xt, t, *((ids, controls, flags) if cond else off))
        return ddim_sample(fn, (B, Fr, 3, S, S), steps, guidance, generator).clamp(-1, 1)
