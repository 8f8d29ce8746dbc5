"""The built-in video denoiser (`tiny`): a small conditional video U-Net that runs on a 2-core CPU.

Frames are folded into the batch for every convolution (as in Make-A-Video / AnimateDiff's image layers); frames mix
only in the self-attention of the transformer blocks, whose processor is `vdemo.attention.FrameAttnProcessor`, so the
attention mode (spatial, temporal, full, causal, sparse-causal) decides how the video is tied together.

Pixel space at 64×64: the input (3 noisy + 9 control channels) is pixel-unshuffled (space-to-depth, factor 4) to
16×16×192 — lossless, no VAE — then a U-Net 16→8→4 with attention at every level; the output is pixel-shuffled
back. Built from diffusers blocks (ResnetBlock2D with scale-shift timestep conditioning, Transformer2DModel with text
cross-attention), saved and loaded with diffusers' ModelMixin (`save_pretrained` / `from_pretrained`, safetensors,
local folders only).

Conditioning (any subset; absent = zeros and a cleared presence flag):
  - text: word tokens -> a 2-layer transformer encoder -> cross-attention tokens + a pooled vector added to the time
    embedding,
  - known frames + mask (image-to-video, extension, in-betweening): 3 + 1 channels,
  - pose (OpenPose RGB rendering): 3 channels; depth (inverse depth): 1 channel; motion strokes (Gaussian blob per
    frame): 1 channel,
  - each frame's normalised position in the clip (sinusoidal), added to the time embedding.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from einops import rearrange

from vdemo.attention import DistanceBias, FrameContext, install_frame_attention, parse_mode

# Control channels, in the order they are concatenated to the noisy frames.
CONTROL_CHANNELS = {"known": 3, "known_mask": 1, "pose": 3, "depth": 1, "strokes": 1}
PRESENCE_FLAGS = ("text", "image", "pose", "depth", "strokes")
PREDICTION_TYPES = ("sample", "v_prediction", "epsilon")


class TextEncoder(torch.nn.Module):
    """Word embeddings + learned positions + a small pre-norm transformer encoder."""

    def __init__(self, vocab_size: int, dim: int, max_tokens: int, layers: int, heads: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, dim)
        self.pos = torch.nn.Parameter(torch.zeros(1, max_tokens, dim))
        layer = torch.nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        pad = ids == pad_id  # (B, L)
        h = self.embed(ids) + self.pos[:, : ids.shape[1]]  # (B, L, D)
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).float()  # (B, L, 1)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, D)
        return h, pooled


def frame_position_embedding(num_frames: int, dim: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal embedding of each frame's normalised time u = t / (F - 1) in [0, 1]: (F, dim)."""
    u = torch.linspace(0.0, 1.0, num_frames, device=device) if num_frames > 1 else torch.zeros(1, device=device)
    freqs = torch.exp(torch.arange(dim // 2, device=device) * (-math.log(100.0) / max(dim // 2 - 1, 1)))
    angles = u[:, None] * freqs[None] * 2 * math.pi * 4  # (F, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


POS_FEATURES = 32  # 8 frequencies × sin/cos × 2 axes
LEVELS = ("down0", "down1", "down2", "mid", "up2", "up1", "up0")  # the transformer blocks, `<level>_attn`


@functools.lru_cache(maxsize=32)
def position_features(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """2D sin-cos features of each token's centre in normalised [0, 1] coordinates (DiT / MAE style): (1, 32, h, w).

    Normalised coordinates keep a position's meaning when the video is made at another size than in training.
    Cached: every attention block of every denoising step asks for the same few grids (do not modify the result).
    """
    freqs = 2.0 ** torch.arange(POS_FEATURES // 4, device=device) * math.pi  # (8,)
    ys = (torch.arange(height, device=device) + 0.5) / height
    xs = (torch.arange(width, device=device) + 0.5) / width
    ay, ax = ys[:, None] * freqs, xs[:, None] * freqs  # (h, 8), (w, 8)
    fy = torch.cat([ay.sin(), ay.cos()], -1)[:, None, :].expand(height, width, -1)  # (h, w, 16)
    fx = torch.cat([ax.sin(), ax.cos()], -1)[None, :, :].expand(height, width, -1)  # (h, w, 16)
    return torch.cat([fy, fx], -1).permute(2, 0, 1)[None].to(dtype)


class TinyVideoUNet(ModelMixin, ConfigMixin, AttentionMixin):
    """Conditional video U-Net for clips shaped (batch, frames, 3, H, W) in [-1, 1].

    It predicts `config.prediction_type`: the shipped model predicts the clean clip x0 ("sample"). The patch-4 stem sees
    each 4×4 pixel patch as one token, so reproducing per-pixel noise (which ε and v targets need) is hard for it and
    its leftovers show up as grain in every sample; predicting x0 only needs the flat shapes, and the sampler derives
    ε from the input exactly (`vdemo.samplers.from_clean`).

    The defaults are the shipped model's `assets/tiny/config.json` (`TinyVideoUNet()` builds that architecture, as a
    diffusers model class's defaults build its reference checkpoint); minute test models pass their sizes explicitly.
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 128,
        pad_token_id: int = 0,
        max_tokens: int = 24,
        text_dim: int = 128,
        text_layers: int = 2,
        channels: tuple[int, int, int] = (64, 128, 192),
        attention_head_dim: int = 32,
        temb_dim: int = 256,
        norm_groups: int = 16,
        unshuffle: int = 4,
        sample_size: int = 64,
        prediction_type: str = "sample",  # what forward() returns: "sample" (x0), "v_prediction" or "epsilon"
        position_embedding: bool = True,  # 2D sin-cos token positions before every attention block
        distance_bias: bool = True,  # a learned per-head bias by query-key distance in every self-attention
        frame_conditioning: bool = True,  # an MLP of (clip conditioning, frame time) added to each frame's embedding
    ):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        c0, c1, c2 = channels
        r = unshuffle
        in_ch = (3 + sum(CONTROL_CHANNELS.values())) * r * r
        self.text = TextEncoder(vocab_size, text_dim, max_tokens, text_layers, heads=max(text_dim // 32, 1))
        self.time_proj = Timesteps(temb_dim // 2, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(temb_dim // 2, temb_dim)
        self.frame_embed = torch.nn.Linear(temb_dim // 2, temb_dim)
        self.text_embed = torch.nn.Linear(text_dim, temb_dim)
        self.flag_embed = torch.nn.Linear(len(PRESENCE_FLAGS), temb_dim)
        # Where the object should be in frame k depends on the caption's direction *times* the frame's time; summed
        # embeddings only meet in one SiLU per ResNet, so that product is hard to form. A small MLP of both (the last
        # layer zero-initialised: it starts as no change) gives each frame its own conditioning.
        self.frame_cond = torch.nn.Sequential(
            torch.nn.Linear(temb_dim + temb_dim // 2, temb_dim), torch.nn.SiLU(), torch.nn.Linear(temb_dim, temb_dim),
        ) if frame_conditioning else None
        if self.frame_cond is not None:
            torch.nn.init.zeros_(self.frame_cond[-1].weight)
            torch.nn.init.zeros_(self.frame_cond[-1].bias)

        def res(cin: int, cout: int) -> ResnetBlock2D:
            return ResnetBlock2D(
                in_channels=cin, out_channels=cout, temb_channels=temb_dim, groups=norm_groups,
                time_embedding_norm="scale_shift",
            )

        def attn(ch: int) -> Transformer2DModel:
            return Transformer2DModel(
                num_attention_heads=ch // attention_head_dim, attention_head_dim=attention_head_dim, in_channels=ch,
                norm_num_groups=norm_groups, cross_attention_dim=text_dim, use_linear_projection=True,
            )

        self.conv_in = torch.nn.Conv2d(in_ch, c0, 3, padding=1)
        self.down0, self.down0_attn = res(c0, c0), attn(c0)
        self.ds0 = torch.nn.Conv2d(c0, c1, 3, stride=2, padding=1)  # S -> S/2
        self.down1, self.down1_attn = res(c1, c1), attn(c1)
        self.ds1 = torch.nn.Conv2d(c1, c2, 3, stride=2, padding=1)  # S/2 -> S/4
        self.down2, self.down2_attn = res(c2, c2), attn(c2)
        self.mid1, self.mid_attn, self.mid2 = res(c2, c2), attn(c2), res(c2, c2)
        self.up2, self.up2_attn = res(2 * c2, c2), attn(c2)
        self.us1 = torch.nn.Conv2d(c2, c1, 3, padding=1)  # after nearest S/4 -> S/2
        self.up1, self.up1_attn = res(2 * c1, c1), attn(c1)
        self.us0 = torch.nn.Conv2d(c1, c0, 3, padding=1)  # after nearest S/2 -> S
        self.up0, self.up0_attn = res(2 * c0, c0), attn(c0)
        self.norm_out = torch.nn.GroupNorm(norm_groups, c0)
        self.conv_out = torch.nn.Conv2d(c0, 3 * r * r, 3, padding=1)
        torch.nn.init.zeros_(self.conv_out.weight)
        torch.nn.init.zeros_(self.conv_out.bias)

        # Where each token sits: without it, attention across frames matches content only and cannot tell where the
        # object was in another frame (conv padding leaks a little absolute position, not enough for motion). Zero-init
        # projections, so a checkpoint trained without them starts unchanged.
        self.pos_proj = torch.nn.ModuleDict({
            name: torch.nn.Conv2d(POS_FEATURES, ch, 1) for name, ch in zip(LEVELS, (c0, c1, c2, c2, c2, c1, c0))
        }) if position_embedding else None
        for proj in (self.pos_proj or {}).values():
            torch.nn.init.zeros_(proj.weight)
            torch.nn.init.zeros_(proj.bias)

        self.frame_ctx = FrameContext()
        install_frame_attention(self, self.frame_ctx, layers="self")
        # Scores prefer keys near the query's own place in every frame (zero-initialised: off until learned).
        self.pos_bias = torch.nn.ModuleDict({
            name: DistanceBias(getattr(self, f"{name}_attn").transformer_blocks[0].attn1.heads) for name in LEVELS
        }) if distance_bias else None
        for name, bias in (self.pos_bias or {}).items():
            getattr(self, f"{name}_attn").transformer_blocks[0].attn1.processor.bias = bias

    def _pos(self, name: str, h: torch.Tensor) -> torch.Tensor:
        """h plus its level's learned projection of the token positions (identity without position embeddings)."""
        if self.pos_proj is None:
            return h
        return h + self.pos_proj[name](position_features(h.shape[-2], h.shape[-1], h.device, h.dtype))

    def set_attention_mode(self, mode: str) -> None:
        """Switch how frames mix; takes effect on the next forward, no weights touched."""
        self.frame_ctx.mode = parse_mode(mode)

    def encode_text(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text(token_ids, self.config.pad_token_id)

    def forward(
        self,
        sample: torch.Tensor,  # (B, F, 3, H, W) noisy frames, VP-normalised
        timestep: torch.Tensor,  # (B,) or scalar
        text_tokens: torch.Tensor,  # (B, L, text_dim) from encode_text
        text_pooled: torch.Tensor,  # (B, text_dim)
        controls: torch.Tensor,  # (B, F, 9, H, W): known(3) known_mask(1) pose(3) depth(1) strokes(1)
        flags: torch.Tensor,  # (B, 5) presence of text, image, pose, depth, strokes
    ) -> torch.Tensor:
        B, Fr, _, H, W = sample.shape
        r = self.config.unshuffle
        self.frame_ctx.num_frames = Fr

        t = timestep.reshape(-1).expand(B) if timestep.numel() == 1 else timestep
        temb = self.time_embed(self.time_proj(t.to(sample.device)).to(sample.dtype))  # (B, T)
        temb = temb + self.text_embed(text_pooled) + self.flag_embed(flags.to(sample.dtype))  # (B, T)
        fpos = frame_position_embedding(Fr, self.config.temb_dim // 2, sample.device).to(sample.dtype)  # (F, T/2)
        femb = temb[:, None] + self.frame_embed(fpos)[None]  # (B, F, T)
        if self.frame_cond is not None:
            both = torch.cat([temb[:, None].expand(-1, Fr, -1), fpos[None].expand(B, -1, -1)], dim=-1)  # (B, F, 3T/2)
            femb = femb + self.frame_cond(both)
        temb = rearrange(femb, "b f c -> (b f) c")  # (B*F, T)
        ctx = text_tokens.repeat_interleave(Fr, dim=0)  # (B*F, L, D)

        x = torch.cat([sample, controls], dim=2)  # (B, F, 12, H, W)
        x = F.pixel_unshuffle(rearrange(x, "b f c h w -> (b f) c h w"), r)  # (B*F, 12*r*r, H/r, W/r)
        h0 = self.down0_attn(self._pos("down0", self.down0(self.conv_in(x), temb)), ctx,
                             return_dict=False)[0]  # (BF, c0, S, S), S = H / r
        h1 = self.down1_attn(self._pos("down1", self.down1(self.ds0(h0), temb)), ctx,
                             return_dict=False)[0]  # (BF, c1, S/2, S/2)
        h2 = self.down2_attn(self._pos("down2", self.down2(self.ds1(h1), temb)), ctx,
                             return_dict=False)[0]  # (BF, c2, S/4, S/4)
        m = self.mid2(self.mid_attn(self._pos("mid", self.mid1(h2, temb)), ctx, return_dict=False)[0], temb)
        u = self.up2_attn(self._pos("up2", self.up2(torch.cat([m, h2], 1), temb)), ctx,
                          return_dict=False)[0]  # (BF, c2, S/4, S/4)
        u = self.us1(F.interpolate(u, scale_factor=2.0, mode="nearest"))  # (BF, c1, S/2, S/2)
        u = self.up1_attn(self._pos("up1", self.up1(torch.cat([u, h1], 1), temb)), ctx, return_dict=False)[0]
        u = self.us0(F.interpolate(u, scale_factor=2.0, mode="nearest"))  # (BF, c0, S, S)
        u = self.up0_attn(self._pos("up0", self.up0(torch.cat([u, h0], 1), temb)), ctx, return_dict=False)[0]
        out = self.conv_out(F.silu(self.norm_out(u)))  # (BF, 3*r*r, S, S)
        out = F.pixel_shuffle(out, r)  # (BF, 3, H, W)
        return rearrange(out, "(b f) c h w -> b f c h w", b=B)
