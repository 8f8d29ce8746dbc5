"""The shared building blocks of the v2 bake-off candidates: a conditional video U-Net on a token grid.

Every candidate (latent, cascaded, patch control) turns its input into a grid of tokens per frame, (B, F, C, h, w),
and hands it to `VideoUNet`: ResNet blocks with scale-shift conditioning (frames folded into the batch, as in v1) and,
at the levels that ask for it, a transformer block whose self-attention is the project's `FrameAttnProcessor` bound to
one `FrameContext`, so the five attention modes (spatial, temporal, full, causal, sparse-causal) decide how frames
mix. Text comes in through cross-attention and a pooled vector, as in v1 (`vdemo.models.tiny_unet.TextEncoder`).
Each token gets a learned projection of its 2D position and every self-attention a learned distance bias (v1's
`DistanceBias`), both zero-initialised.

The diffusion helpers here are shared too: x0-prediction trained with min(SNR + 1, 5)-weighted, foreground-weighted
MSE (v1's loss), sampled with DDIM and classifier-free guidance that contrasts all conditions with none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from einops import rearrange

from vdemo.attention import DistanceBias, FrameContext, install_frame_attention, parse_mode
from vdemo.models.tiny_unet import (
    POS_FEATURES,
    PRESENCE_FLAGS,
    TextEncoder,
    frame_position_embedding,
    position_features,
)
from vdemo.samplers import default_scheduler_config

MAX_TOKENS = 24  # as vdemo.train.max_tokens()
VELOCITY_GAIN = 10.0  # reference units (a 16-token frame) per unit of the linear map: Adam moves it ~lr per step
NUM_CONTROLS = 9  # known RGB (3), known mask (1), pose (3), depth (1), strokes (1): vdemo.models.controls


@dataclass(frozen=True)
class UNetConfig:
    """A video U-Net on a token grid: one level per entry of `channels`, each halving the grid."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...] = (64, 96, 128)
    attention: tuple[bool, ...] = (True, True, True)  # a transformer block at this level (down and up)
    head_dim: int = 32
    temb_dim: int = 128
    text_dim: int = 64
    vocab_size: int = 128
    groups: int = 8
    # Text-conditioned motion in the distance bias: per self-attention block, a zero-initialised linear map from the
    # pooled text to a per-head displacement over the clip (`DistanceBias.velocity`), so frames can look where the
    # caption's object was instead of at the same place. False = the fixed bias (the shipped 844-minute model).
    text_velocity: bool = False


class TextConditioning(torch.nn.Module):
    """v1's text encoder (word tokens -> 1-layer transformer): cross-attention tokens + a pooled vector."""

    def __init__(self, vocab_size: int, dim: int, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.encoder = TextEncoder(vocab_size, dim, MAX_TOKENS, layers=1, heads=max(dim // 32, 1))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(ids, self.pad_id)  # (B, L, D), (B, D)


class VideoUNet(torch.nn.Module):
    """(B, F, in, h, w) tokens + timestep + text + presence flags -> (B, F, out, h, w)."""

    def __init__(self, cfg: UNetConfig, ctx: FrameContext):
        super().__init__()
        self.cfg, self.ctx = cfg, ctx
        T, chs = cfg.temb_dim, cfg.channels
        self.text = TextConditioning(cfg.vocab_size, cfg.text_dim)
        self.time_proj = Timesteps(T // 2, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(T // 2, T)
        self.cond_embed = torch.nn.Linear(cfg.text_dim + len(PRESENCE_FLAGS), T)
        # v1's per-frame conditioning: an MLP of (clip conditioning, frame time), last layer zero-initialised.
        self.frame_cond = torch.nn.Sequential(torch.nn.Linear(T + T // 2, T), torch.nn.SiLU(), torch.nn.Linear(T, T))
        torch.nn.init.zeros_(self.frame_cond[-1].weight)
        torch.nn.init.zeros_(self.frame_cond[-1].bias)

        def res(cin: int, cout: int) -> ResnetBlock2D:
            return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=T, groups=cfg.groups,
                                 time_embedding_norm="scale_shift")

        def attn(ch: int) -> Transformer2DModel:
            return Transformer2DModel(num_attention_heads=max(ch // cfg.head_dim, 1), attention_head_dim=cfg.head_dim,
                                      in_channels=ch, norm_num_groups=cfg.groups, cross_attention_dim=cfg.text_dim,
                                      use_linear_projection=True)

        n = len(chs)
        self.conv_in = torch.nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down = torch.nn.ModuleList([res(chs[i], chs[i]) for i in range(n)])
        self.down_attn = torch.nn.ModuleList([attn(chs[i]) if cfg.attention[i] else torch.nn.Identity()
                                              for i in range(n)])
        self.downsample = torch.nn.ModuleList([torch.nn.Conv2d(chs[i], chs[i + 1], 3, 2, 1) for i in range(n - 1)])
        self.mid1, self.mid_attn, self.mid2 = res(chs[-1], chs[-1]), attn(chs[-1]), res(chs[-1], chs[-1])
        self.up = torch.nn.ModuleList([res(2 * chs[i], chs[i]) for i in range(n)])
        self.up_attn = torch.nn.ModuleList([attn(chs[i]) if cfg.attention[i] else torch.nn.Identity()
                                            for i in range(n)])
        self.upsample = torch.nn.ModuleList([torch.nn.Conv2d(chs[i + 1], chs[i], 3, padding=1) for i in range(n - 1)])
        self.norm_out = torch.nn.GroupNorm(cfg.groups, chs[0])
        self.conv_out = torch.nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)
        torch.nn.init.zeros_(self.conv_out.weight)
        torch.nn.init.zeros_(self.conv_out.bias)
        # Token positions per attention block (zero-init) and a distance bias per self-attention (v1's fixes).
        blocks = [m for m in self.modules() if isinstance(m, Transformer2DModel)]
        self.pos_proj = torch.nn.ModuleList([torch.nn.Conv2d(POS_FEATURES, b.in_channels, 1) for b in blocks])
        for proj in self.pos_proj:
            torch.nn.init.zeros_(proj.weight)
            torch.nn.init.zeros_(proj.bias)
        self._pos_index = {id(b): i for i, b in enumerate(blocks)}
        install_frame_attention(self, ctx, layers="self")
        self.dist_bias = torch.nn.ModuleList([DistanceBias(b.transformer_blocks[0].attn1.heads) for b in blocks])
        for block, bias in zip(blocks, self.dist_bias):
            block.transformer_blocks[0].attn1.processor.bias = bias
        self.velocity = None
        if cfg.text_velocity:
            self.velocity = torch.nn.ModuleList([torch.nn.Linear(cfg.text_dim, 2 * b.strength.shape[0])
                                                 for b in self.dist_bias])
            for lin in self.velocity:
                torch.nn.init.zeros_(lin.weight)
                torch.nn.init.zeros_(lin.bias)

    def _attn(self, block: torch.nn.Module, h: torch.Tensor, ctx_tokens: torch.Tensor) -> torch.Tensor:
        if isinstance(block, torch.nn.Identity):
            return h
        pos = self.pos_proj[self._pos_index[id(block)]]
        h = h + pos(position_features(h.shape[-2], h.shape[-1], h.device, h.dtype))
        return block(h, ctx_tokens, return_dict=False)[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        B, Fr = x.shape[:2]
        self.ctx.num_frames = Fr
        tokens, pooled = self.text(ids)  # (B, L, D), (B, D)
        if self.velocity is not None:
            for bias, lin in zip(self.dist_bias, self.velocity):
                bias.velocity = VELOCITY_GAIN * lin(pooled).float().reshape(B, -1, 2)  # (B, heads, 2) x, y
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t
        temb = self.time_embed(self.time_proj(t).to(x.dtype))  # (B, T)
        temb = temb + self.cond_embed(torch.cat([pooled, flags.to(x.dtype)], -1))  # (B, T)
        fpos = frame_position_embedding(Fr, self.cfg.temb_dim // 2, x.device).to(x.dtype)  # (F, T/2)
        both = torch.cat([temb[:, None].expand(-1, Fr, -1), fpos[None].expand(B, -1, -1)], -1)  # (B, F, 3T/2)
        femb = rearrange(temb[:, None] + self.frame_cond(both), "b f c -> (b f) c")  # (BF, T)
        ctx_tokens = tokens.repeat_interleave(Fr, dim=0)  # (BF, L, D)

        h = self.conv_in(rearrange(x, "b f c h w -> (b f) c h w"))  # (BF, c0, h, w)
        skips = []
        for i, (res, att) in enumerate(zip(self.down, self.down_attn)):
            h = self._attn(att, res(h, femb), ctx_tokens)  # (BF, ci, h/2^i, w/2^i)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self._attn(self.mid_attn, self.mid1(h, femb), ctx_tokens), femb)
        for i in reversed(range(len(self.up))):
            h = self._attn(self.up_attn[i], self.up[i](torch.cat([h, skips[i]], 1), femb), ctx_tokens)
            if i > 0:
                h = self.upsample[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))  # (BF, out, h, w)
        return rearrange(out, "(b f) c h w -> b f c h w", b=B)


# --------------------------------------------------------------------------------------------- diffusion helpers
def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler.from_config(dict(default_scheduler_config()), prediction_type="sample")


def x0_loss(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, fg: torch.Tensor,
            generator: torch.Generator, scheduler: DDPMScheduler, fg_weight: float = 4.0, snr_cap: float = 5.0,
            high_noise_frac: float = 0.3, high_noise_from: int = 850) -> torch.Tensor:
    """v1's loss: x0 MSE weighted by min(SNR + 1, snr_cap) per clip and (1 + fg_weight) on object pixels.

    denoise(x_t, t) -> predicted x0, both shaped like x0 (B, F, C, h, w); fg (B, F, 1, h, w) in [0, 1].
    """
    from vdemo.train import sample_timesteps

    noise = torch.randn(x0.shape, generator=generator)
    t = sample_timesteps(x0.shape[0], scheduler.config.num_train_timesteps, generator, high_noise_frac,
                         high_noise_from)
    xt = scheduler.add_noise(x0, noise, t)
    alpha_bar = scheduler.alphas_cumprod[t].float()
    clip_weight = (1.0 / (1.0 - alpha_bar)).clamp(max=snr_cap).reshape(-1, 1, 1, 1, 1)
    weight = 1.0 + fg_weight * fg
    pred = denoise(xt, t).float()
    return (clip_weight * weight * (pred - x0) ** 2).mean() / weight.mean()


@torch.no_grad()
def ddim_sample(denoise: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], shape: tuple[int, ...],
                steps: int, guidance: float, generator: torch.Generator, eta: float = 0.0) -> torch.Tensor:
    """DDIM with x0-prediction; denoise(x_t, t, conditioned) -> x0. Guidance contrasts all conditions with none.
    eta: DDIM's stochasticity (0 deterministic, 1 as ancestral DDPM sampling)."""
    scheduler = DDIMScheduler.from_config(dict(default_scheduler_config(timestep_spacing="trailing")),
                                          prediction_type="sample")
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps:
        x0 = denoise(x, t.reshape(1), True).float()
        if guidance != 1.0:
            x0 = x0 + (guidance - 1.0) * (x0 - denoise(x, t.reshape(1), False).float())
        x = scheduler.step(x0, t, x, eta=eta, generator=generator).prev_sample
    return x


def set_mode(ctx: FrameContext, mode: str) -> None:
    ctx.mode = parse_mode(mode)


def fg_mask(frames: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, H, W) in [-1, 1] and (B, 3) background in [-1, 1] -> (B, F, 1, H, W) object mask (v1's > 24/255)."""
    return ((frames - background[:, None, :, None, None]).abs().amax(2, keepdim=True) > 24 / 127.5).float()


class Candidate(torch.nn.Module):
    """What the bake-off needs from a design: one training loss, one sampler, the live attention mode.

    A batch is a dict of tensors at the output size S: x0 (B, F, 3, S, S) in [-1, 1], ids (B, L) caption tokens,
    controls (B, F, 9, S, S) (`vdemo.models.controls` layout), flags (B, 5) presence, fg (B, F, 1, S, S) object mask.
    """

    name = "?"
    ctx: FrameContext

    def set_attention_mode(self, mode: str) -> None:
        """Switch how frames mix in every self-attention of the candidate; no weights touched."""
        set_mode(self.ctx, mode)

    def training_loss(self, batch: dict, generator: torch.Generator, progress: float) -> torch.Tensor:
        """The loss of one step; progress in [0, 1] is the share of the CPU budget spent (for staged training)."""
        raise NotImplementedError

    def generate(self, ids: torch.Tensor, controls: torch.Tensor, flags: torch.Tensor, steps: int,
                 guidance: float, generator: torch.Generator) -> torch.Tensor:
        """A clip (B, F, 3, S, S) in [-1, 1] for the given conditioning (controls at the output size S)."""
        raise NotImplementedError


def unconditional(ids: torch.Tensor, controls: torch.Tensor, flags: torch.Tensor):
    """The all-dropped conditioning of classifier-free guidance: empty caption ([CLS] only), no controls, no flags."""
    empty = torch.zeros_like(ids)
    empty[:, 0] = 2  # [CLS]
    return empty, torch.zeros_like(controls), torch.zeros_like(flags)


def unshuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, F, C, H, W) -> (B, F, C·r², H/r, W/r): lossless space-to-depth per frame."""
    return F.pixel_unshuffle(x.flatten(0, 1), r).unflatten(0, x.shape[:2]) if r > 1 else x


def shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """Inverse of `unshuffle`."""
    return F.pixel_shuffle(x.flatten(0, 1), r).unflatten(0, x.shape[:2]) if r > 1 else x


def resize(x: torch.Tensor, size: int, mode: str = "area") -> torch.Tensor:
    """(B, F, C, H, W) -> (B, F, C, size, size)."""
    kwargs = {} if mode in ("area", "nearest") else {"align_corners": False}
    return F.interpolate(x.flatten(0, 1), size=(size, size), mode=mode, **kwargs).unflatten(0, x.shape[:2])
