"""Frame attention for video diffusion: which frames a query token may look at, and how to make that cheap.

Tokens are F frames × N spatial tokens, flattened frame-major into a sequence of F·N. For a query in frame t:

    spatial        frame t only                                      F·N²        pairs
    temporal       the same spatial position in every frame          N·F²
    full           every token of every frame                        F²·N²
    causal         every token of frames 0..t                        N²·F(F+1)/2
    sparse_causal  every token of frames {0, t-1, t} (as a set)      N²·(3F-3)   (N² when F = 1)

`attend` gathers only the allowed keys and calls `scaled_dot_product_attention` on them — it never masks a full
F·N × F·N score matrix — so the cheap modes are cheap for real. `reference_attend` is the naive oracle (full score
matrix + explicit boolean mask from `mode_mask`) that the tests hold `attend` to. Frames and heads are folded into
SDPA's batch dimension only in pieces of at most `MAX_SDPA_BATCH`, the most CUDA's kernels launch.

`FrameAttnProcessor` puts a mode into any diffusers `Attention` module (a copy of diffusers' `AttnProcessor2_0` whose
self-attention folds the frames together), and `install_frame_attention` inflates a UNet the way Tune-A-Video
(Wu et al. 2022) and Text2Video-Zero (Khachatryan et al. 2023) inflate Stable Diffusion's self-attention, or swaps
the temporal layers of an AnimateDiff `UNetMotionModel`. The frame count always comes from a shared `FrameContext`,
never from the batch size (which silently mis-groups frames when classifier-free guidance is off).
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F

from vdemo.config import ATTENTION_MODES


class AttentionMode(StrEnum):
    """How frames may attend to each other (the module docstring's table); a str: AttentionMode.FULL == "full"."""

    SPATIAL = "spatial"
    TEMPORAL = "temporal"
    FULL = "full"
    CAUSAL = "causal"
    SPARSE_CAUSAL = "sparse_causal"


assert tuple(m.value for m in AttentionMode) == ATTENTION_MODES, "AttentionMode and config.ATTENTION_MODES disagree"


def parse_mode(mode: str | AttentionMode) -> AttentionMode:
    """'causal' / AttentionMode.CAUSAL -> AttentionMode.CAUSAL; also accepts 'Sparse-Causal'; raises ValueError."""
    if isinstance(mode, AttentionMode):
        return mode
    key = str(mode).strip().lower().replace("-", "_")
    if key not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of: {', '.join(ATTENTION_MODES)}")
    return AttentionMode(key)


def _check_frames(seq_len: int, num_frames: int) -> int:
    """Tokens per frame N for a sequence of F·N tokens; raises if it does not split into num_frames frames."""
    if num_frames < 1 or seq_len % num_frames:
        raise ValueError(f"a sequence of {seq_len} tokens does not split into num_frames={num_frames} equal frames")
    return seq_len // num_frames


# ----------------------------------------------------------------------------------------------- counting and oracle
def pair_count(mode: str | AttentionMode, num_frames: int, tokens: int) -> int:
    """Number of (query, key) pairs P a mode computes (the module docstring's table; exact for sparse_causal)."""
    mode, Fr, N = parse_mode(mode), num_frames, tokens
    if mode is AttentionMode.SPATIAL:
        return Fr * N * N
    if mode is AttentionMode.TEMPORAL:
        return N * Fr * Fr
    if mode is AttentionMode.FULL:
        return Fr * Fr * N * N
    if mode is AttentionMode.CAUSAL:
        return N * N * Fr * (Fr + 1) // 2
    return N * N * (1 if Fr == 1 else 3 * Fr - 3)  # frame 0 sees 1 frame, frame 1 sees 2, the others 3


def mode_mask(
    mode: str | AttentionMode, num_frames: int, tokens: int, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean (F·N, F·N) matrix, True where query i may attend to key j."""
    mode = parse_mode(mode)
    idx = torch.arange(num_frames * tokens, device=device)
    frame, pos = idx // tokens, idx % tokens
    fq, fk = frame[:, None], frame[None, :]  # (FN, 1), (1, FN)
    if mode is AttentionMode.SPATIAL:
        return fq == fk
    if mode is AttentionMode.TEMPORAL:
        return pos[:, None] == pos[None, :]
    if mode is AttentionMode.FULL:
        return torch.ones(len(idx), len(idx), dtype=torch.bool, device=device)
    if mode is AttentionMode.CAUSAL:
        return fk <= fq
    return (fk == 0) | (fk == fq) | (fk == fq - 1)


def reference_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str | AttentionMode, num_frames: int
) -> torch.Tensor:
    """Naive oracle: the full (F·N)² score matrix, masked with `mode_mask`, softmax, weighted sum."""
    N = _check_frames(q.shape[-2], num_frames)
    mask = mode_mask(mode, num_frames, N, device=q.device)  # (FN, FN)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, h, FN, FN)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v  # (B, h, FN, d)


# ---------------------------------------------------------------------------------------------- the fast path
MAX_SDPA_BATCH = 65_535  # CUDA SDPA kernels fail on a batch (or head) dim > 2**16-1: pytorch#146704 (#142228)


def _pieces(x: torch.Tensor | None, dim: int, count: int) -> list[torch.Tensor | None]:
    """x split along dim into `count` near-equal views; None or a broadcast (size-1) dim repeats x."""
    if x is None or x.shape[dim] == 1:
        return [x] * count
    return list(x.tensor_split(count, dim))


def _sdpa_4d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA on 4-D (X, Y, L, d) tensors, split into the fewest equal pieces of at most MAX_SDPA_BATCH along X and Y:
    every CUDA kernel launches, and CPUs keep their fused 4-D kernel. The (x, y) problems are independent, so
    splitting changes no bit."""
    for dim in (0, 1):
        count = -(-q.shape[dim] // MAX_SDPA_BATCH)
        if count > 1:
            parts = zip(*(_pieces(x, dim, count) for x in (q, k, v, attn_mask)), strict=True)
            return torch.cat([_sdpa_4d(*part) for part in parts], dim=dim)  # (X, Y, L, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (X, Y, L, d)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on (B, h, G, L, d): G independent groups per head, as 4-D so that CPUs get their fused flash kernel (5-D
    inputs fall back to the slow math path). One group (a frames_in_sequence layer: N = 1) is diffusers' own
    (B, h, L, d) layout; more are folded to (B·h, G, L, d) (a view when the strides allow), which `_sdpa_4d` splits
    when B·h is too large a batch for CUDA."""
    if q.shape[2] == 1:
        return _sdpa_4d(q[:, :, 0], k[:, :, 0], v[:, :, 0])[:, :, None]  # (B, h, 1, L, d)
    B, h = q.shape[:2]
    out = _sdpa_4d(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))  # (B·h, G, L, d)
    return out.unflatten(0, (B, h))  # (B, h, G, L, d)


def _spatial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each frame attends to itself: one SDPA over B·h·F problems of N×N."""
    return _sdpa(q, k, v)  # (B, h, F, N, d)


def _temporal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each spatial position attends along time: one SDPA over B·h·N problems of F×F, on strided views (no copy)."""
    q, k, v = (x.transpose(2, 3) for x in (q, k, v))  # (B, h, N, F, d)
    return _sdpa(q, k, v).transpose(2, 3)  # (B, h, F, N, d)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Frame t attends to frames 0..t: the key set grows frame by frame, one SDPA per query frame."""
    N = q.shape[3]
    k, v = k.flatten(2, 3), v.flatten(2, 3)  # (B, h, F·N, d)
    outs = [_sdpa_4d(q[:, :, t], k[:, :, : (t + 1) * N], v[:, :, : (t + 1) * N])
            for t in range(q.shape[2])]  # F × (B, h, N, d)
    return torch.stack(outs, dim=2)  # (B, h, F, N, d)


def _sparse_keys(x: torch.Tensor) -> torch.Tensor:
    """Keys (or values) of query frames t = 2..F-1: frames 0, t-1 and t side by side, by slicing (no fancy indexing)."""
    Fr = x.shape[2]
    first = x[:, :, :1].expand(-1, -1, Fr - 2, -1, -1)  # (B, h, F-2, N, d): frame 0, a view
    return torch.cat([first, x[:, :, 1:-1], x[:, :, 2:]], dim=3)  # (B, h, F-2, 3N, d)


def _sparse_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Frame t attends to frames {0, t-1, t}: the sparse-causal attention of Tune-A-Video (Wu et al. 2022), as used
    zero-shot by Text2Video-Zero (Khachatryan et al. 2023).

    Frame 0 sees itself (N keys), frame 1 frames 0-1 (2N keys), frames t >= 2 their 3N gathered keys in one batched
    call; no key is counted twice.
    """
    Fr = q.shape[2]
    out0 = _sdpa_4d(q[:, :, 0], k[:, :, 0], v[:, :, 0])  # (B, h, N, d)
    if Fr == 1:
        return out0[:, :, None]
    out1 = _sdpa_4d(q[:, :, 1], k[:, :, :2].flatten(2, 3), v[:, :, :2].flatten(2, 3))  # (B, h, N, d)
    if Fr == 2:
        return torch.stack([out0, out1], dim=2)  # (B, h, 2, N, d)
    rest = _sdpa(q[:, :, 2:], _sparse_keys(k), _sparse_keys(v))  # (B, h, F-2, N, d)
    return torch.cat([out0[:, :, None], out1[:, :, None], rest], dim=2)  # (B, h, F, N, d)


_KERNELS = {
    AttentionMode.SPATIAL: _spatial,
    AttentionMode.TEMPORAL: _temporal,
    AttentionMode.CAUSAL: _causal,
    AttentionMode.SPARSE_CAUSAL: _sparse_causal,
}


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str | AttentionMode, num_frames: int
) -> torch.Tensor:
    """Frame attention on (B, h, F·N, d) tensors -> (B, h, F·N, d), computing only the pairs the mode allows."""
    mode = parse_mode(mode)
    _, _, S, _ = q.shape  # (B, h, F·N, d)
    N = _check_frames(S, num_frames)
    if k.shape[-2] != S:
        raise ValueError(f"frame attention is self-attention: {S} queries but {k.shape[-2]} keys")
    if mode is AttentionMode.FULL or (num_frames == 1 and mode is not AttentionMode.TEMPORAL):
        return _sdpa_4d(q, k, v)  # (B, h, FN, d): one frame, every causal mode is full
    q, k, v = (x.unflatten(2, (num_frames, N)) for x in (q, k, v))  # (B, h, F, N, d)
    return _KERNELS[mode](q, k, v).flatten(2, 3)  # (B, h, FN, d)


# ------------------------------------------------------------------------------------------ diffusers integration
@dataclass
class FrameContext:
    """Shared, mutable state of every FrameAttnProcessor of one model; a change takes effect on the next forward.

    num_frames is the clip length for the "frames_in_batch" layout (set it per forward; the "frames_in_sequence" layout
    reads F from the sequence length instead).
    """

    mode: AttentionMode = AttentionMode.FULL
    num_frames: int = 1

    def __setattr__(self, name: str, value) -> None:
        """Validate on every assignment, so a bad mode fails where it is set, not deep inside a forward."""
        if name == "mode":
            value = parse_mode(value)
        elif name == "num_frames":
            value = operator.index(value)  # accepts numpy / torch integers, rejects 2.0
            if value < 1:
                raise ValueError(f"num_frames must be >= 1, got {value}")
        super().__setattr__(name, value)


class DistanceBias(torch.nn.Module):
    """A learned per-head bias on self-attention scores by the spatial displacement Δ = p − p' of query and key tokens.

    It lets any mode prefer keys near the query's own position, in its own frame or in others, which content-based
    scores learn slowly (a frame-mixing mode can then start from what `temporal` mode does by construction: look at
    the same place in the other frames). The bias is a learned sum of cosines, per head, axis and frequency ω:
    b(Δ) = Σ λ·cos(ω·Δ), peaked at Δ = 0 when the λ are positive; the periods (32 and 64 units) are at least twice
    the frame's width, so the bias falls all the way across the frame and the far side never aliases to "near".
    Positions are in units of a 16-token grid over the frame (one token of the tiny model's finest level), whatever
    the level or the video size.

    No score matrix is built: cos(ω(p − p')) = cos ωp·cos ωp' + sin ωp·sin ωp', a dot product of extra query and key
    channels (bounded, so bf16 keeps it exact enough), so every kernel of `attend`, with its cheap gathering, works
    unchanged. λ = GAIN · strength, strength starting at 0: exactly the attention without the bias.

    `velocity`, when the model sets it for a forward, is a per-clip, per-head displacement over the whole clip,
    (B, heads, 2) in the same units (x, y): the bias is then taken at Δ − v·Δτ, with τ = frame / (F − 1), so a head
    can prefer keys in another frame where a moving object *was* rather than at the same place. Each token's position
    is shifted to p − v·τ before the cosines, so it is still a dot product of extra channels. Within a frame the
    shift cancels: `spatial` mode is unchanged. The displacement Δ − v·Δτ can then reach 16 + |v| units: past 16 the
    32-unit cosine turns back up (the 64-unit one only past 32), so a velocity of a frame's width or more aliases
    far keys towards "near" (the trained velocities stay near the world's motions, 5–8 units).
    """

    GAIN = 20.0  # Adam moves a parameter by ~lr per step; this moves λ by ~6e-3 per step at lr 3e-4
    REFERENCE_GRID = 16
    OMEGAS = (2 * math.pi / 32, 2 * math.pi / 64)
    EXTRA = 2 * len(OMEGAS) * 2  # axes × frequencies × (cos, sin)

    def __init__(self, heads: int):
        super().__init__()
        self.strength = torch.nn.Parameter(torch.zeros(heads, 2, len(self.OMEGAS)))  # (heads, axis, frequency)
        self.velocity: torch.Tensor | None = None  # (B, heads, 2) x, y per clip, set per forward by the model

    @classmethod
    @functools.lru_cache(maxsize=32)
    def positions(cls, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(N, 2) float32 (y, x) token centres of a frame in reference units, row-major (do not modify: cached)."""
        gh, gw = grid
        ys = (torch.arange(gh, device=device, dtype=torch.float32) + 0.5) * (cls.REFERENCE_GRID / gh)
        xs = (torch.arange(gw, device=device, dtype=torch.float32) + 0.5) * (cls.REFERENCE_GRID / gw)
        return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(gh * gw, 2)

    @classmethod
    @functools.lru_cache(maxsize=32)
    def features(cls, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(N, 2, len(OMEGAS), 2) float32 cos/sin of ω·y and ω·x for each token of a frame (row-major).

        Cached: every attention block of every denoising step asks for the same few grids (do not modify the result).
        """
        angles = cls.positions(grid, device)[:, :, None] * torch.tensor(cls.OMEGAS, device=device)  # (N, 2, W)
        return torch.stack([angles.cos(), angles.sin()], -1)

    def moving_features(self, grid: tuple[int, int], frames: int, device: torch.device) -> torch.Tensor:
        """(B, heads, F·N, 2, W, 2) cos/sin of ω·(p − v·τ) for each clip, head and frame-major token."""
        v = self.velocity.float()  # (B, h, 2): x, y
        tau = torch.arange(frames, device=device, dtype=torch.float32) / max(frames - 1, 1)  # (F,)
        pos = self.positions(tuple(grid), device)  # (N, 2): y, x
        shift = tau[:, None] * v.flip(-1)[:, :, None, :]  # (B, h, F, 2): y, x
        moved = (pos[None, None, None] - shift[:, :, :, None]).flatten(2, 3)  # (B, h, F·N, 2)
        angles = moved[..., None] * torch.tensor(self.OMEGAS, device=device)  # (B, h, F·N, 2, W)
        return torch.stack([angles.cos(), angles.sin()], -1)

    def augment(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int],
                across_frames: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, h, F·N, d) q, k, v of frame-major tokens on a token grid -> all three with EXTRA more channels.

        `across_frames=False` (spatial mode: no token sees another frame) skips the velocity, which shifts a whole
        frame's tokens alike and so cancels within a frame. v is zero-padded: SDPA's fused CPU kernels want one head
        size for q, k and v (4× slower otherwise); drop the output's last EXTRA channels."""
        B, heads, S, d = q.shape
        N = grid[0] * grid[1]
        if S % N:
            raise ValueError(f"{S} tokens do not split into frames of a {grid[0]}×{grid[1]} token grid")
        d_aug = d + self.EXTRA
        lam = (self.GAIN * self.strength.float())[:, None, :, :, None]  # (h, 1, 2, W, 1)
        if self.velocity is None or S == N or not across_frames:
            feats = self.features(tuple(grid), q.device).repeat(S // N, 1, 1, 1)  # (S, 2, W, 2)
            q_extra = (lam * feats * math.sqrt(d_aug)).flatten(2).to(q.dtype).expand(B, -1, -1, -1)  # (B, h, S, E)
            k_extra = feats.flatten(1).to(k.dtype).expand(B, heads, -1, -1)  # (B, h, S, EXTRA)
        else:
            if self.velocity.shape != (B, heads, 2):
                raise ValueError(f"velocity {tuple(self.velocity.shape)} does not match {B} clips of {heads} heads")
            feats = self.moving_features(grid, S // N, q.device)  # (B, h, S, 2, W, 2)
            q_extra = (lam * feats * math.sqrt(d_aug)).flatten(3).to(q.dtype)
            k_extra = feats.flatten(3).to(k.dtype)
        q = torch.cat([q * math.sqrt(d_aug / d), q_extra], -1)  # scores keep q·k / √d
        k = torch.cat([k, k_extra], -1)
        return q, k, F.pad(v, (0, self.EXTRA))

    def kernel(self, delta: torch.Tensor) -> torch.Tensor:
        """The bias for displacements delta (..., 2) in reference units: (heads, ...); for tests and plots."""
        angles = delta[..., :, None] * torch.tensor(self.OMEGAS)  # (..., 2, W)
        lam = self.GAIN * self.strength  # (h, 2, W)
        return (lam.reshape(lam.shape[0], *([1] * (delta.dim() - 1)), *lam.shape[1:]) * angles.cos()).sum((-1, -2))


LAYOUTS = ("frames_in_batch", "frames_in_sequence")


class FrameAttnProcessor:
    """diffusers' `AttnProcessor2_0` whose self-attention lets frames see each other as `ctx.mode` says.

    layout "frames_in_batch": hidden states (batch·F, N, C), an image UNet's attn1 inflated to video (Tune-A-Video,
    Text2Video-Zero); F is `ctx.num_frames`. layout "frames_in_sequence": hidden states (batch·H·W, F, C), the
    temporal layers of AnimateDiff's `UNetMotionModel` (one token per frame; F is the sequence length).
    Cross-attention (encoder_hidden_states given) is exactly `AttnProcessor2_0`.
    """

    def __init__(self, ctx: FrameContext, layout: str = "frames_in_batch", bias: DistanceBias | None = None):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
        if bias is not None and layout != "frames_in_batch":
            raise ValueError("a DistanceBias needs spatial tokens: layout 'frames_in_batch'")
        self.ctx = ctx
        self.layout = layout
        self.bias = bias  # owned (and saved) by the model; None = plain scores

    @staticmethod
    def _grid(tokens: int, shape: tuple[int, int] | None) -> tuple[int, int]:
        """The token grid of a frame: from a 4-D input's shape, else square (Transformer2DModel flattens it)."""
        if shape is not None:
            return shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"a DistanceBias needs the token grid: {tokens} flattened tokens are not a square")
        return side, side

    def _frames(self, slices: int, tokens: int) -> tuple[int, int]:
        """(num_frames, batch) of self-attention hidden states shaped (slices, tokens, C)."""
        if self.layout == "frames_in_sequence":
            return tokens, slices
        num_frames = self.ctx.num_frames
        if num_frames < 1 or slices % num_frames:
            raise ValueError(f"self-attention got {slices} frame slices, not a multiple of "
                             f"ctx.num_frames={num_frames}; set FrameContext.num_frames to the clip's frame count")
        return num_frames, slices // num_frames

    def __call__(
        self,
        attn,  # diffusers.models.attention_processor.Attention
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        grid = None
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
            grid = (height, width)

        batch_size, sequence_length, _ = hidden_states.shape if not is_cross else encoder_hidden_states.shape

        if attention_mask is not None:
            if not is_cross:
                raise ValueError("FrameAttnProcessor does not take an attention_mask in self-attention")
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        slices, tokens = query.shape[:2]  # (batch·F, N) or (batch·H·W, F)
        if not is_cross:
            num_frames, batch_size = self._frames(slices, tokens)
            query, key, value = (x.reshape(batch_size, -1, x.shape[-1]) for x in (query, key, value))  # (B, F·N, C)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, L, d)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if is_cross:
            hidden_states = _sdpa_4d(query, key, value, attn_mask=attention_mask)  # (B, h, L, d)
        elif self.bias is not None:
            across = parse_mode(self.ctx.mode) is not AttentionMode.SPATIAL
            q_aug, k_aug, v_aug = self.bias.augment(query, key, value, self._grid(tokens, grid), across)
            hidden_states = attend(q_aug, k_aug, v_aug, self.ctx.mode, num_frames)[..., :head_dim]  # (B, h, F·N, d)
        else:
            hidden_states = attend(query, key, value, self.ctx.mode, num_frames)  # (B, h, F·N, d)

        hidden_states = hidden_states.transpose(1, 2).reshape(slices, tokens, attn.heads * head_dim)  # unfold frames
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(slices, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _is_temporal(processor_name: str) -> bool:
    """AnimateDiff motion modules ('motion_modules'), SVD's 'temporal_transformer_blocks', 'temp_attentions', ..."""
    return "motion_modules" in processor_name or "temp" in processor_name


def install_frame_attention(unet: torch.nn.Module, ctx: FrameContext, layers: str = "self") -> int:
    """Give a UNet's attention layers a FrameAttnProcessor bound to `ctx`; returns how many were installed.

    layers="self": every spatial self-attention (`...attn1`), the Tune-A-Video / Text2Video-Zero inflation of an
    image UNet whose frames travel in the batch. layers="temporal": the temporal layers of a UNetMotionModel
    (AnimateDiff), whose frames travel in the sequence. Other layers keep their processors.
    """
    if layers not in ("self", "temporal"):
        raise ValueError(f"layers must be 'self' or 'temporal', got {layers!r}")
    layout = "frames_in_batch" if layers == "self" else "frames_in_sequence"
    installed = 0
    for name, module in unet.named_modules():
        if not hasattr(module, "set_processor"):  # diffusers Attention (same names as unet.attn_processors)
            continue
        key = f"{name}.processor"
        if layers == "temporal":
            wanted = _is_temporal(key)
        else:
            wanted = key.endswith("attn1.processor") and not _is_temporal(key)
        if wanted:
            module.set_processor(FrameAttnProcessor(ctx, layout))
            installed += 1
    return installed
