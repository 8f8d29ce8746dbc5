"""Candidate B: cascaded video diffusion, as Imagen Video (Ho et al. 2022): a base model + spatial super-resolution.

The base is v1's design at 64×64 (patch 4: 16×16 tokens, attention with the live frame mode at every level). The
super-resolution stage makes 128×128 frames from the noisy 128 px frames, the base clip upsampled (bilinear) and
noise-augmented (a forward-diffusion step to t_aug ∈ [0, `aug_max`) in training, `aug_sample` at generation, given
to the model as a constant channel: Imagen Video's / CDM's conditioning augmentation, so that it learns to fix the
base model's errors rather than copy them) and the controls at 128 px; patch 4 (32×32 tokens), convolution at the
finest level and attention from 16×16 down. Both stages train on every step, on the same clips.
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
    resize,
    shuffle,
    train_scheduler,
    unconditional,
    unshuffle,
    x0_loss,
)


@dataclass(frozen=True)
class CascadeConfig:
    size: int = 128
    base_size: int = 64
    patch: int = 4
    base_channels: tuple[int, ...] = (48, 80, 112)
    base_attention: tuple[bool, ...] = (True, True, True)
    sr_channels: tuple[int, ...] = (24, 48, 64)
    sr_attention: tuple[bool, ...] = (False, True, True)
    aug_max: int = 300  # training noise augmentation of the low-res clip: t_aug ~ U[0, aug_max)
    aug_sample: int = 100
    sr_steps_ratio: float = 0.5  # the SR stage samples with this share of the base's steps
    vocab_size: int = 128


class CascadedVideoDiffusion(Candidate):
    name = "B"
    paper = "Imagen Video (Ho et al. 2022)"

    def __init__(self, cfg: CascadeConfig = CascadeConfig()):
        super().__init__()
        self.cfg, self.ctx = cfg, FrameContext()
        r2 = cfg.patch ** 2
        self.base = VideoUNet(UNetConfig((3 + NUM_CONTROLS) * r2, 3 * r2, cfg.base_channels, cfg.base_attention,
                                         vocab_size=cfg.vocab_size), self.ctx)
        self.sr = VideoUNet(UNetConfig((3 + 3 + 1 + NUM_CONTROLS) * r2, 3 * r2, cfg.sr_channels, cfg.sr_attention,
                                       vocab_size=cfg.vocab_size), self.ctx)
        self.scheduler = train_scheduler()

    def denoise(self, xt: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, controls: torch.Tensor,
                flags: torch.Tensor) -> torch.Tensor:
        """Base stage: x_t (B, F, 3, s, s) at the base size -> x0; controls at any size (resized to s)."""
        s = xt.shape[-1]
        controls = resize(controls, s) if controls.shape[-1] != s else controls
        x = unshuffle(torch.cat([xt, controls], 2), self.cfg.patch)
        return shuffle(self.base(x, t, ids, flags), self.cfg.patch)

    def denoise_sr(self, xt: torch.Tensor, t: torch.Tensor, low: torch.Tensor, t_aug: torch.Tensor,
                   ids: torch.Tensor, controls: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """SR stage: x_t (B, F, 3, S, S) + augmented low-res clip upsampled to S + its t_aug (B,) -> x0."""
        aug = (t_aug.float() / 1000.0).reshape(-1, 1, 1, 1, 1).expand(-1, xt.shape[1], 1, *xt.shape[-2:])
        x = unshuffle(torch.cat([xt, low, aug.to(xt.dtype), controls], 2), self.cfg.patch)
        return shuffle(self.sr(x, t, ids, flags), self.cfg.patch)

    def augment(self, low: torch.Tensor, t_aug: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Upsample the low-res clip (bilinear) to the output size and diffuse it to t_aug."""
        up = resize(low, self.cfg.size, mode="bilinear")
        return self.scheduler.add_noise(up, torch.randn(up.shape, generator=generator), t_aug)

    def training_loss(self, batch: dict, generator: torch.Generator, progress: float) -> torch.Tensor:
        s = self.cfg.base_size
        x64, c64 = resize(batch["x0"], s), resize(batch["controls"], s)
        fg64 = (resize(batch["fg"], s) > 0).float()

        def base_fn(xt, t):
            return self.denoise(xt, t, batch["ids"], c64, batch["flags"])
        base = x0_loss(base_fn, x64, fg64, generator, self.scheduler)
        t_aug = torch.randint(0, self.cfg.aug_max, (x64.shape[0],), generator=generator)
        low = self.augment(x64, t_aug, generator)

        def sr_fn(xt, t):
            return self.denoise_sr(xt, t, low, t_aug, batch["ids"], batch["controls"], batch["flags"])
        return base + x0_loss(sr_fn, batch["x0"], batch["fg"], generator, self.scheduler)

    def generate(self, ids, controls, flags, steps, guidance, generator):
        B, Fr, _, S, _ = controls.shape
        s = self.cfg.base_size
        c64 = resize(controls, s)
        off = unconditional(ids, c64, flags)

        def base_fn(xt, t, cond):
            return self.denoise(xt, t, *((ids, c64, flags) if cond else off))
        low = ddim_sample(base_fn, (B, Fr, 3, s, s), steps, guidance, generator).clamp(-1, 1)
        t_aug = torch.full((B,), self.cfg.aug_sample)
        up = self.augment(low.to(controls.dtype), t_aug, generator)

        def sr_fn(xt, t, cond):
            return self.denoise_sr(xt, t, up, t_aug, ids, controls, flags)
        sr_steps = max(2, round(steps * self.cfg.sr_steps_ratio))
        return ddim_sample(sr_fn, (B, Fr, 3, S, S), sr_steps, 1.0, generator).clamp(-1, 1)
