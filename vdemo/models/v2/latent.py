"""Candidate A: latent video diffusion, as Video LDM (Blattmann et al. 2023, "Align your Latents").

A small convolutional autoencoder (f = 4, 4 latent channels: a 128×128 frame is a 32×32×4 latent) is trained first,
on 64×64 crops of world frames (it is fully convolutional, so it runs at 128 px afterwards), with L1 + MSE; its CPU
time is part of this candidate's budget (`ae_share`). Then it is frozen, latents are scaled to unit variance and a
video U-Net denoises them: latents are pixel-unshuffled by 2 to a 16×16 token grid (v1's grid), next to the control
channels at pixel resolution unshuffled by 8 (lossless) and the known frames' own latents (the encoder run on them),
so image-to-video can copy frame 0 in the space it denoises. Attention (the live frame mode) at every level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vdemo.attention import DistanceBias, FrameContext
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
class LatentConfig:
    size: int = 128
    factor: int = 4  # autoencoder downsampling (two stride-2 stages)
    latent_channels: int = 4
    ae_channels: int = 32
    patch: int = 2  # latent tokens: 32×32 latents -> 16×16 tokens
    channels: tuple[int, ...] = (48, 96, 128)
    attention: tuple[bool, ...] = (True, True, True)
    ae_share: float = 0.2  # share of the CPU budget spent training the autoencoder first
    crop: int = 64
    vocab_size: int = 128
    # SVD-style image conditioning: the first known frame's latents are also given to every later frame (concatenated
    # as channels), so a frame can copy the first frame's background and object locally instead of only through
    # attention. Added at the long run's resume (zero-initialised input channels: the model's function was unchanged
    # at the switch).
    reference: bool = False
    # Text-conditioned motion in every self-attention's distance bias (`UNetConfig.text_velocity`).
    velocity: bool = False


class Autoencoder(torch.nn.Module):
    """f = 4 conv autoencoder: (N, 3, H, W) in [-1, 1] <-> (N, C, H/4, W/4)."""

    def __init__(self, ch: int, latent: int):
        super().__init__()
        act = torch.nn.SiLU
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv2d(3, ch, 3, padding=1), act(),
            torch.nn.Conv2d(ch, ch, 4, stride=2, padding=1), act(),  # H/2
            torch.nn.Conv2d(ch, ch, 4, stride=2, padding=1), act(),  # H/4
            torch.nn.Conv2d(ch, ch, 3, padding=1), act(),
            torch.nn.Conv2d(ch, latent, 1),
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.Conv2d(latent, ch, 3, padding=1), act(),
            torch.nn.Conv2d(ch, ch, 3, padding=1), act(),
            torch.nn.Upsample(scale_factor=2.0, mode="nearest"), torch.nn.Conv2d(ch, ch, 3, padding=1), act(),  # H/2
            torch.nn.Upsample(scale_factor=2.0, mode="nearest"), torch.nn.Conv2d(ch, ch, 3, padding=1), act(),  # H
            torch.nn.Conv2d(ch, 3, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def reference_latents(known_z: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """The first known frame's latents repeated over that frame and every later one; zeros before it and for a clip
    without known frames (so no frame is told about a later frame: the causal modes stay causal).

    known_z (B, F, C, h, w) from `known_latents`; controls (B, F, 9, S, S) whose channel 3 is the known-frame mask."""
    known = controls[:, :, 3].flatten(2).amax(-1) > 0  # (B, F)
    B, Fr = known.shape
    first = torch.where(known.any(1), known.float().argmax(1), torch.full((B,), Fr))  # (B,); F = none known
    ref = known_z[torch.arange(B), first.clamp(max=Fr - 1)]  # (B, C, h, w)
    after = (torch.arange(Fr)[None] >= first[:, None]).to(ref.dtype)  # (B, F)
    return ref[:, None] * after[:, :, None, None, None]


def widen_input(state: dict, model: torch.nn.Module, prefix: str = "unet.conv_in.weight") -> bool:
    """Load-time surgery: pad a saved conv_in weight with zero input channels to the model's width (a model saved
    before `reference` was switched on). Returns whether it padded; the padded model computes what the old one did."""
    want = model.state_dict()[prefix].shape
    have = state[prefix].shape
    if have == want:
        return False
    if have[0] != want[0] or have[1] > want[1] or have[2:] != want[2:]:
        raise ValueError(f"{prefix}: cannot widen {tuple(have)} to {tuple(want)}")
    pad = torch.zeros(have[0], want[1] - have[1], *have[2:], dtype=state[prefix].dtype)
    state[prefix] = torch.cat([state[prefix], pad], 1)
    return True


def velocity_loss(biases, motion: torch.Tensor) -> torch.Tensor:
    """Mean squared error, in frame widths, of every head's text velocity (the last forward's, `DistanceBias.velocity`)
    against the clip's true displacement `motion` (B, 2) x, y in fractions of the side; NaN rows have no target."""
    target = motion.float() * DistanceBias.REFERENCE_GRID  # (B, 2) reference units
    ok = ~torch.isnan(target).any(-1)
    if not ok.any():
        return torch.zeros(())
    errors = [((b.velocity.float()[ok] - target[ok, None]) / DistanceBias.REFERENCE_GRID).square().mean()
              for b in biases]
    return torch.stack(errors).mean()


class LatentVideoDiffusion(Candidate):
    name = "A"
    paper = "Video LDM (Blattmann et al. 2023)"
    velocity_weight = 0.0  # training only: the weight of `velocity_loss` (set by the trainer, `--velocity-loss`)

    def __init__(self, cfg: LatentConfig = LatentConfig()):
        super().__init__()
        self.cfg, self.ctx = cfg, FrameContext()
        self.ae = Autoencoder(cfg.ae_channels, cfg.latent_channels)
        r = cfg.patch
        ctrl_r = cfg.patch * cfg.factor
        in_ch = cfg.latent_channels * r * r * (3 if cfg.reference else 2) + NUM_CONTROLS * ctrl_r * ctrl_r
        self.unet = VideoUNet(UNetConfig(in_ch, cfg.latent_channels * r * r, cfg.channels, cfg.attention,
                                         vocab_size=cfg.vocab_size, text_velocity=cfg.velocity), self.ctx)
        self.register_buffer("latent_scale", torch.ones(()))  # 1 / std of the latents, set when the AE is frozen
        self.register_buffer("ae_frozen", torch.zeros((), dtype=torch.bool))
        self.scheduler = train_scheduler()

    # -------------------------------------------------------------------------------------- autoencoder
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, S, S) -> scaled latents (B, F, C, S/f, S/f)."""
        return self.ae.encode(frames.flatten(0, 1)).unflatten(0, frames.shape[:2]) * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # Channels-last: the decoder's full-resolution convolutions run ~1.7x faster on a CPU (float32, 2 threads).
        flat = (z / self.latent_scale).flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return self.ae.decode(flat).unflatten(0, z.shape[:2]).clamp(-1, 1)

    def ae_loss(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """L1 + MSE reconstruction of one random crop per frame."""
        x = frames.flatten(0, 1)  # (N, 3, S, S)
        c, S = self.cfg.crop, x.shape[-1]
        if c < S:
            i, j = (int(v) for v in torch.randint(0, S - c + 1, (2,), generator=generator))
            x = x[..., i:i + c, j:j + c]
        rec = self.ae.decode(self.ae.encode(x))
        return (rec - x).abs().mean() + ((rec - x) ** 2).mean()

    def freeze_autoencoder(self, frames: torch.Tensor) -> None:
        """Stop training the AE and scale latents to unit standard deviation (measured on `frames`)."""
        self.ae.requires_grad_(False)
        with torch.no_grad():
            self.latent_scale.fill_(1.0 / self.ae.encode(frames.flatten(0, 1)).float().std().clamp(min=1e-3))
        self.ae_frozen.fill_(True)

    # -------------------------------------------------------------------------------------- denoiser
    @torch.no_grad()
    def known_latents(self, controls: torch.Tensor) -> torch.Tensor:
        """The known frames' own latents where the known mask is set, else 0: (B, F, C, S/f, S/f)."""
        mask = controls[:, :, 3:4]  # (B, F, 1, S, S)
        small = F.max_pool2d(mask.flatten(0, 1), self.cfg.factor)  # (BF, 1, s, s)
        B, Fr, _, S, _ = controls.shape
        s, C = S // self.cfg.factor, self.cfg.latent_channels
        z = torch.zeros(B * Fr, C, s, s, dtype=controls.dtype, device=controls.device)
        known = small.flatten(1).amax(1) > 0  # (BF,): only known frames go through the encoder (a text-to-video
        if known.any():                       # run and guidance's "nothing" half encode none)
            z[known] = self.ae.encode(controls[:, :, :3].flatten(0, 1)[known]).to(z.dtype) * self.latent_scale
        return (z * small).unflatten(0, (B, Fr))

    def denoise(self, zt: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, controls: torch.Tensor,
                flags: torch.Tensor, known_z: torch.Tensor | None = None,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        """z_t (B, F, C, S/f, S/f) -> predicted clean latents, same shape; controls at pixel size S (`known_z`:
        `known_latents(controls)`, computed here when not given; `reference`: latents shaped like z_t to give as the
        reference latents instead of `reference_latents`, for the diagnosis's motion-compensated reference)."""
        cfg = self.cfg
        if reference is not None and not cfg.reference:
            raise ValueError("a reference was given to a model built without reference latents (reference=False)")
        if known_z is None:
            known_z = self.known_latents(controls)
        parts = [unshuffle(zt, cfg.patch), unshuffle(controls, cfg.patch * cfg.factor),
                 unshuffle(known_z.to(zt.dtype), cfg.patch)]
        if cfg.reference:
            ref = reference_latents(known_z, controls) if reference is None else reference
            parts.append(unshuffle(ref.to(zt.dtype), cfg.patch))
        x = torch.cat(parts, 2)  # (B, F, in, S/(f·p), S/(f·p))
        return shuffle(self.unet(x, t, ids, flags), cfg.patch)

    def training_loss(self, batch: dict, generator: torch.Generator, progress: float) -> torch.Tensor:
        if not bool(self.ae_frozen):
            if progress < self.cfg.ae_share:
                return self.ae_loss(batch["x0"], generator)
            self.freeze_autoencoder(batch["x0"])
        with torch.no_grad():
            z0 = self.encode(batch["x0"]).float()  # (B, F, C, s, s)
            fg = F.adaptive_max_pool2d(batch["fg"].flatten(0, 1), z0.shape[-1]).unflatten(0, z0.shape[:2])
            reference = None
            if "reference_frames" in batch:  # the motion-compensated reference experiment
                known_z = self.known_latents(batch["controls"])
                dragged = batch["dragged"].reshape(-1, 1, 1, 1, 1)
                reference = torch.where(dragged, self.encode(batch["reference_frames"]).to(known_z.dtype),
                                        reference_latents(known_z, batch["controls"]))

        def fn(zt, t):
            return self.denoise(zt, t, batch["ids"], batch["controls"], batch["flags"], reference=reference)
        loss = x0_loss(fn, z0, fg, generator, self.scheduler)
        if self.velocity_weight and self.unet.velocity is not None and "motion" in batch:
            loss = loss + self.velocity_weight * velocity_loss(self.unet.dist_bias, batch["motion"])
        for bias in self.unet.dist_bias:  # the graph keeps what backward needs; the module keeps no graph tensor
            bias.velocity = None
        return loss

    def generate(self, ids, controls, flags, steps, guidance, generator, eta: float = 0.0,
                 reference: torch.Tensor | None = None):
        """`reference` (conditioned half only): as in `denoise`."""
        B, Fr, _, S, _ = controls.shape
        s = S // self.cfg.factor
        off = unconditional(ids, controls, flags)

        def fn(zt, t, cond):
            if cond:
                return self.denoise(zt, t, ids, controls, flags, reference=reference)
            return self.denoise(zt, t, *off)
        z = ddim_sample(fn, (B, Fr, self.cfg.latent_channels, s, s), steps, guidance, generator, eta)
        return self.decode(z.to(controls.dtype))
