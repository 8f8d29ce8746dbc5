"""The five frame-attention modes on the 3D self-attention of Wan 2.1's DiT (diffusers' `WanTransformer3DModel`, and
`WanVACETransformer3DModel` whose `vace_blocks` carry the same self-attention).

    ctx = install_grid_attention(pipe.transformer)   # every attn1 gets a GridAttnProcessor; returns the shared context
    ctx.mode = "sparse_causal"                        # takes effect on the next forward; no reinstall

Wan patchifies the latent (B, C, F, H, W) with a (p_t, p_h, p_w) Conv3d and flattens it frame-major, so its
self-attention sees S = F·H·W tokens in (f, h, w) order (grid in tokens after patching). That is exactly the layout of
`vdemo.attention.attend` with N = H·W tokens per frame, which gathers only the allowed keys (pairs per mode: the table
in `vdemo.attention` and DESIGN.md "Attention modes"; `grid_pairs` counts them). It never builds a dense S × S mask.

Why a pre-hook: diffusers calls `WanAttnProcessor(attn, hidden_states, None, None, rotary_emb)` with (B, S, C) tokens
and is never told the grid. One forward pre-hook on the transformer reads `hidden_states` and `config.patch_size` and
writes the grid into the shared `GridContext` before any block runs; the frame count never comes from the batch size.

`full` is the stock `WanAttnProcessor`, bit for bit. Wan 2.1 was trained with full bidirectional attention, so the
other modes run it off its training distribution: a causal mask on a bidirectional model degrades it (blur, drift,
frozen motion); models meant to generate causally are distilled into causal students (CausVid, Yin et al. 2025;
Self-Forcing, Huang et al. 2025; AnyFlow / FAR). Here the modes are a lab instrument: cost and effect, side by side.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from vdemo.attention import AttentionMode, attend, pair_count, parse_mode

__all__ = ["GridAttnProcessor", "GridContext", "grid_pairs", "install_grid_attention"]

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMode, int], torch.Tensor]


@dataclass
class GridContext:
    """Shared, mutable state of every GridAttnProcessor of one transformer; a change takes effect on the next forward.

    grid is (frames, height, width) in tokens after patching; the transformer's pre-hook sets it on every forward.
    """

    mode: AttentionMode = AttentionMode.FULL
    grid: tuple[int, int, int] | None = None

    def __setattr__(self, name: str, value) -> None:
        """Validate on every assignment, so a bad mode or grid fails where it is set, not deep inside a forward."""
        if name == "mode":
            value = parse_mode(value)
        elif name == "grid" and value is not None:
            value = tuple(operator.index(n) for n in value)
            if len(value) != 3 or min(value) < 1:
                raise ValueError(f"grid must be (frames, height, width) in tokens, each >= 1, got {value}")
        super().__setattr__(name, value)


def grid_pairs(mode: str | AttentionMode, grid: tuple[int, int, int]) -> int:
    """Attention pairs per head of one self-attention call on a (frames, height, width) token grid."""
    frames, height, width = grid
    return pair_count(mode, frames, height * width)


def _qkv(attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-attention q, k, v (B, S, C): diffusers' `_get_qkv_projections` with encoder_hidden_states=None."""
    if getattr(attn, "fused_projections", False):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's 3D RoPE on (B, S, h, d) with (1, S, 1, d) cos/sin: verbatim from diffusers' `WanAttnProcessor`."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class GridAttnProcessor:
    """diffusers' `WanAttnProcessor` for self-attention (attn1) whose frames see each other as `ctx.mode` says.

    `full` delegates to a stock `WanAttnProcessor` unchanged (so diffusers' `set_attention_backend` still applies to
    it); the other modes compute q, k, v, QK-norm and RoPE as the stock processor does and call `attend_fn`
    (`vdemo.attention.attend`; the tests pass `reference_attend`, the masked oracle) with the grid's frame count.
    """

    def __init__(self, ctx: GridContext, attend_fn: AttendFn = attend):
        self.ctx = ctx
        self.stock = WanAttnProcessor()
        self.attend_fn = attend_fn

    # diffusers' ModelMixin.set_attention_backend / enable_parallelism set these on every processor: pass them on
    @property
    def _attention_backend(self):
        return self.stock._attention_backend

    @_attention_backend.setter
    def _attention_backend(self, backend) -> None:
        self.stock._attention_backend = backend

    @property
    def _parallel_config(self):
        return self.stock._parallel_config

    @_parallel_config.setter
    def _parallel_config(self, config) -> None:
        self.stock._parallel_config = config

    def _num_frames(self, seq_len: int) -> int:
        """The grid's frame count, after checking that the grid describes this sequence."""
        grid = self.ctx.grid
        if grid is None:
            raise ValueError("GridContext.grid is not set: call the transformer itself (its pre-hook from "
                             "install_grid_attention sets the grid), or set ctx.grid = (frames, height, width)")
        frames, height, width = grid
        if frames * height * width != seq_len:
            raise ValueError(f"self-attention got {seq_len} tokens but the grid {frames}×{height}×{width} has "
                             f"{frames * height * width}; the grid must be (frames, height, width) in patched tokens")
        return frames

    def __call__(
        self,
        attn,  # diffusers.models.transformers.transformer_wan.WanAttention
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        mode = self.ctx.mode
        if mode is AttentionMode.FULL:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"GridAttnProcessor is for self-attention (attn1) without a mask; mode {mode.value!r} "
                             "got encoder_hidden_states or an attention_mask")
        num_frames = self._num_frames(hidden_states.shape[1])

        query, key, value = _qkv(attn, hidden_states)  # (B, S, C)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))  # (B, S, h, d)
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, h, S, d), S = F·H·W frame-major
        out = self.attend_fn(q, k, v, mode, num_frames)  # (B, h, S, d)
        hidden_states = out.transpose(1, 2).flatten(2, 3).type_as(query)  # (B, S, C)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        return attn.to_out[1](hidden_states)  # dropout


def _attn1_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention of every block in `blocks` and, for VACE, `vace_blocks`."""
    blocks = list(transformer.blocks) + list(getattr(transformer, "vace_blocks", None) or [])
    return [block.attn1 for block in blocks]


def _grid_pre_hook(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: ctx.grid from hidden_states (B, C, F, H, W) and config.patch_size, before any block runs."""
    latents = kwargs["hidden_states"] if "hidden_states" in kwargs else (args[0] if args else None)
    if latents is None or latents.ndim != 5:
        shape = None if latents is None else tuple(latents.shape)
        raise ValueError(f"a Wan transformer takes hidden_states (batch, channels, frames, height, width), got {shape}")
    p_t, p_h, p_w = transformer.config.patch_size
    _, _, frames, height, width = latents.shape
    transformer._vdemo_grid.grid = (frames // p_t, height // p_h, width // p_w)


def install_grid_attention(transformer: torch.nn.Module) -> GridContext:
    """Give every attn1 of a Wan transformer a GridAttnProcessor bound to one GridContext (returned), and register the
    pre-hook that tells it the grid. Idempotent: a second call returns the same context, adds no second hook and only
    replaces processors that are not already bound to it."""
    ctx = getattr(transformer, "_vdemo_grid", None)
    if ctx is None:
        ctx = GridContext()
        transformer._vdemo_grid = ctx
        transformer._vdemo_grid_hook = transformer.register_forward_pre_hook(_grid_pre_hook, with_kwargs=True)
    for attn in _attn1_modules(transformer):
        if not (isinstance(attn.processor, GridAttnProcessor) and attn.processor.ctx is ctx):
            attn.set_processor(GridAttnProcessor(ctx))
    return ctx
