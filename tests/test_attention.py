"""Frame attention: every mode against the naive masked oracle, causality and locality by perturbation, pair counts,
and FrameAttnProcessor against diffusers' own AttnProcessor2_0 on a standalone `Attention` module."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from vdemo.attention import (
    AttentionMode,
    DistanceBias,
    FrameAttnProcessor,
    FrameContext,
    attend,
    mode_mask,
    pair_count,
    parse_mode,
    reference_attend,
)
from vdemo.config import ATTENTION_MODES

MODES = list(AttentionMode)


def qkv(batch: int, frames: int, tokens: int, heads: int = 2, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, frames * tokens, dim, generator=g) for _ in range(3)]  # (B, h, F·N, d)


def per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    return x.unflatten(2, (frames, -1))  # (B, h, F, N, d)


# ------------------------------------------------------------------------------------------------- modes and oracle
def test_modes_match_config():
    assert [m.value for m in AttentionMode] == list(ATTENTION_MODES)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("frames", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("tokens", [1, 3, 16])
@pytest.mark.parametrize("batch", [1, 2])
def test_attend_matches_reference(mode, frames, tokens, batch):
    q, k, v = qkv(batch, frames, tokens, seed=frames * 100 + tokens)
    out = attend(q, k, v, mode, frames)
    assert out.shape == q.shape
    torch.testing.assert_close(out, reference_attend(q, k, v, mode, frames), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_attend_takes_non_contiguous_inputs(mode):
    """Processors hand over (B, L, h, d).transpose(1, 2) views; layout must not matter."""
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(2, 4, 6))
    assert not q.is_contiguous()
    torch.testing.assert_close(attend(q, k, v, mode, 4), reference_attend(q, k, v, mode, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("frames,tokens", [(1, 4), (2, 3), (3, 2), (7, 5), (16, 4)])
def test_pair_count_matches_mask(mode, frames, tokens):
    assert pair_count(mode, frames, tokens) == int(mode_mask(mode, frames, tokens).sum())


def test_pair_count_table():
    Fr, N = 16, 256
    assert pair_count("spatial", Fr, N) == Fr * N * N
    assert pair_count("temporal", Fr, N) == N * Fr * Fr
    assert pair_count("full", Fr, N) == Fr * Fr * N * N
    assert pair_count("causal", Fr, N) == N * N * Fr * (Fr + 1) // 2
    assert pair_count("sparse_causal", Fr, N) == N * N * (1 + 2 + 3 * (Fr - 2))
    assert pair_count("sparse_causal", 1, N) == N * N
    assert pair_count("sparse_causal", 2, N) == 3 * N * N


def test_sparse_causal_frame_sets():
    """Frame t sees frames {0, t-1, t} as a set: frame 0 itself, frame 1 frames 0-1, frame 5 frames 0, 4, 5."""
    Fr, N = 6, 2
    frames_seen = mode_mask("sparse_causal", Fr, N).unflatten(0, (Fr, N)).unflatten(2, (Fr, N)).any(-1).all(1)
    seen = [set(torch.nonzero(row).flatten().tolist()) for row in frames_seen]  # per query frame
    assert seen == [{0}, {0, 1}, {0, 1, 2}, {0, 2, 3}, {0, 3, 4}, {0, 4, 5}]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_attend_on_cuda_half(mode):
    q, k, v = (x.cuda().half() for x in qkv(2, 5, 64, heads=4, dim=64))
    expected = reference_attend(q.float(), k.float(), v.float(), mode, 5)
    torch.testing.assert_close(attend(q, k, v, mode, 5).float(), expected, atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------------------- locality by perturbation
@pytest.mark.parametrize("mode", ["causal", "sparse_causal"])
@pytest.mark.parametrize("batch", [1, 2])
def test_causal_modes_are_causal(mode, batch):
    Fr, N = 6, 5
    q, k, v = qkv(batch, Fr, N)
    out = per_frame(attend(q, k, v, mode, Fr), Fr)
    for t in range(Fr - 1):
        later = [per_frame(x.clone(), Fr) for x in (q, k, v)]
        for x in later:
            x[:, :, t + 1 :] += torch.randn_like(x[:, :, t + 1 :])  # perturb frames > t
        out2 = per_frame(attend(*(x.flatten(2, 3) for x in later), mode, Fr), Fr)
        torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(out2[:, :, t + 1 :], out[:, :, t + 1 :])


def _perturbed_outputs(mode: str, frames: int, tokens: int, where) -> torch.Tensor:
    """|attend(perturbed) - attend(original)| per (frame, token), perturbing q, k, v at index `where`."""
    q, k, v = qkv(1, frames, tokens)
    base = per_frame(attend(q, k, v, mode, frames), frames)
    qkv2 = [per_frame(x.clone(), frames) for x in (q, k, v)]
    for x in qkv2:
        x[where] += 1.0 + torch.rand_like(x[where])
    out = per_frame(attend(*(x.flatten(2, 3) for x in qkv2), mode, frames), frames)
    return (out - base).abs().amax(dim=(0, 1, 4))  # (F, N)


def test_spatial_mixes_no_frames():
    Fr, N = 5, 4
    for j in range(Fr):
        changed = _perturbed_outputs("spatial", Fr, N, (slice(None), slice(None), j)) > 1e-6  # (F, N)
        assert changed[j].all() and not changed[torch.arange(Fr) != j].any()


def test_temporal_mixes_only_equal_positions():
    Fr, N = 5, 4
    for p in range(N):
        changed = _perturbed_outputs("temporal", Fr, N, (slice(None), slice(None), 2, p)) > 1e-6  # frame 2, token p
        assert changed[:, p].all() and not changed[:, torch.arange(N) != p].any()


def test_full_mixes_everything():
    changed = _perturbed_outputs("full", 4, 3, (slice(None), slice(None), 3, 0)) > 1e-6
    assert changed.all()


# ------------------------------------------------------------------------------------------------------ parse_mode
def test_parse_mode():
    assert parse_mode("causal") is AttentionMode.CAUSAL
    assert parse_mode(AttentionMode.FULL) is AttentionMode.FULL
    assert parse_mode("Sparse-Causal") is AttentionMode.SPARSE_CAUSAL
    assert AttentionMode.TEMPORAL == "temporal"


def test_parse_mode_error_lists_choices():
    with pytest.raises(ValueError) as err:
        parse_mode("xyz")
    assert str(err.value) == (
        "unknown attention mode 'xyz'; choose one of: spatial, temporal, full, causal, sparse_causal"
    )


def test_attend_rejects_bad_frame_count():
    q, k, v = qkv(1, 3, 4)
    with pytest.raises(ValueError, match="num_frames=5"):
        attend(q, k, v, "full", 5)
    with pytest.raises(ValueError, match="num_frames=0"):
        attend(q, k, v, "spatial", 0)


# ------------------------------------------------------------------------------------- the diffusers processor
C, HEADS = 16, 2


def make_attn(**kwargs) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=C, heads=HEADS, dim_head=C // HEADS, **kwargs).eval()


def run(attn: Attention, processor, x: torch.Tensor, **kwargs) -> torch.Tensor:
    attn.set_processor(processor)
    with torch.no_grad():
        return attn(x, **kwargs)


@torch.no_grad()
def expected_folded(attn: Attention, x: torch.Tensor, mode: str, frames: int) -> torch.Tensor:
    """What frame attention must give on (batch·F, N, C): fold frames per video, reference attention, unfold."""
    BF, N, _ = x.shape
    h = x.reshape(BF // frames, frames * N, C)  # (B, F·N, C)
    q, k, v = (proj(h).unflatten(-1, (HEADS, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
    out = reference_attend(q, k, v, mode, frames).transpose(1, 2).flatten(2)  # (B, F·N, C)
    return attn.to_out[0](out).reshape(BF, N, C)


def test_processor_spatial_equals_diffusers_per_frame():
    attn, x = make_attn(), torch.randn(2 * 4, 6, C)  # 2 videos × 4 frames, 6 tokens
    expected = run(attn, AttnProcessor2_0(), x)
    got = run(attn, FrameAttnProcessor(FrameContext("spatial", num_frames=4)), x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("videos,frames", [(1, 4), (3, 2), (2, 3)])
def test_processor_groups_frames_by_context(mode, videos, frames):
    """Frames are grouped by ctx.num_frames, never by batch size (batch // 2 would be wrong for (1, 4) and (3, 2))."""
    attn, x = make_attn(), torch.randn(videos * frames, 5, C)
    got = run(attn, FrameAttnProcessor(FrameContext(mode, num_frames=frames)), x)
    torch.testing.assert_close(got, expected_folded(attn, x, mode, frames), atol=1e-5, rtol=0)


def test_processor_keeps_videos_apart():
    attn, x = make_attn(), torch.randn(2 * 3, 5, C)  # a classifier-free-guidance pair of 3-frame videos
    proc = FrameAttnProcessor(FrameContext("full", num_frames=3))
    base = run(attn, proc, x)
    x2 = x.clone()
    x2[:3] += 1.0  # change the first video only
    out = run(attn, proc, x2)
    torch.testing.assert_close(out[3:], base[3:], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:3], base[:3])


def test_context_validates_on_assignment():
    ctx = FrameContext()
    assert ctx.mode is AttentionMode.FULL and ctx.num_frames == 1
    ctx.mode = "sparse_causal"
    assert ctx.mode is AttentionMode.SPARSE_CAUSAL
    with pytest.raises(ValueError, match="unknown attention mode"):
        ctx.mode = "diagonal"
    with pytest.raises(ValueError, match="num_frames"):
        ctx.num_frames = 0
    with pytest.raises(TypeError):
        ctx.num_frames = 2.5


def test_processor_rejects_indivisible_batch():
    attn = make_attn()
    with pytest.raises(ValueError, match="num_frames=2"):
        run(attn, FrameAttnProcessor(FrameContext("full", num_frames=2)), torch.randn(5, 4, C))


def test_processor_mode_switch_takes_effect_without_reinstall():
    attn, x, ctx = make_attn(), torch.randn(4, 3, C), FrameContext("spatial", num_frames=4)
    proc = FrameAttnProcessor(ctx)
    for mode in ["spatial", "causal", "full", "sparse_causal", "temporal"]:
        ctx.mode = mode  # plain strings are accepted too
        torch.testing.assert_close(run(attn, proc, x), expected_folded(attn, x, mode, 4), atol=1e-5, rtol=0)


def test_processor_frames_in_sequence_layout():
    """(batch·H·W, F, C) as in AnimateDiff's temporal layers: one token per frame, F = sequence length."""
    attn, x = make_attn(), torch.randn(6, 5, C)  # 6 pixels, 5 frames
    ctx = FrameContext("temporal", num_frames=1)  # num_frames is not used by this layout
    proc = FrameAttnProcessor(ctx, layout="frames_in_sequence")
    torch.testing.assert_close(run(attn, proc, x), run(attn, AttnProcessor2_0(), x), atol=1e-6, rtol=0)
    ctx.mode = AttentionMode.CAUSAL  # each pixel is a 5-frame "video" of one token
    expected = expected_folded(attn, x.reshape(30, 1, C), "causal", 5).reshape(x.shape)
    torch.testing.assert_close(run(attn, proc, x), expected, atol=1e-5, rtol=0)


def test_processor_cross_attention_is_diffusers():
    attn = make_attn(cross_attention_dim=12)
    x, ctx_tokens = torch.randn(6, 5, C), torch.randn(6, 7, 12)
    mask = torch.ones(6, 7)
    mask[:, -2:] = 0
    proc = FrameAttnProcessor(FrameContext("causal", num_frames=3))
    for kwargs in [{"encoder_hidden_states": ctx_tokens},
                   {"encoder_hidden_states": ctx_tokens, "attention_mask": mask}]:
        torch.testing.assert_close(run(attn, proc, x, **kwargs), run(attn, AttnProcessor2_0(), x, **kwargs),
                                   atol=0, rtol=0)


def test_processor_4d_input_with_group_norm_and_residual():
    """VAE-style attention: (B·F, C, H, W) input, group norm, residual connection, output rescale."""
    attn = make_attn(norm_num_groups=4, residual_connection=True, rescale_output_factor=2.0)
    x = torch.randn(2 * 3, C, 4, 4)
    got = run(attn, FrameAttnProcessor(FrameContext("spatial", num_frames=3)), x)
    torch.testing.assert_close(got, run(attn, AttnProcessor2_0(), x), atol=1e-6, rtol=0)
    causal = run(attn, FrameAttnProcessor(FrameContext("causal", num_frames=3)), x)
    assert causal.shape == x.shape
    torch.testing.assert_close(causal[[0, 3]], got[[0, 3]], atol=1e-6, rtol=0)  # frame 0 only sees itself
    assert not torch.allclose(causal[[1, 2]], got[[1, 2]])


def test_processor_rejects_self_attention_mask():
    attn = make_attn()
    with pytest.raises(ValueError, match="attention_mask"):
        run(attn, FrameAttnProcessor(FrameContext("full", num_frames=2)), torch.randn(2, 3, C),
            attention_mask=torch.ones(2, 3))


# ------------------------------------------------------------------------------------------------------- benchmark
def test_bench_attention_rows():
    from vdemo.bench import bench_attention

    rows = bench_attention(frames=(3,), tokens=(4,), repeats=2, heads=2, head_dim=8)
    assert [r["mode"] for r in rows] == list(ATTENTION_MODES)
    for r in rows:
        assert {"mode", "frames", "tokens", "ms", "pairs", "speedup_vs_full", "theoretical_speedup_vs_full"} <= set(r)
        assert r["ms"] > 0 and r["pairs"] == pair_count(r["mode"], 3, 4)
    skipped = bench_attention(frames=(3,), tokens=(4,), repeats=1, max_pairs=100)  # full: 4·2·144 pairs > 100
    assert next(r for r in skipped if r["mode"] == "full")["ms"] is None


def test_bench_cli_json(capsys):
    import json

    from vdemo.bench import main

    assert main(["attention", "--frames", "2", "--tokens", "4", "--repeats", "1", "--modes", "causal", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["mode"] for r in rows} == {"full", "causal"}  # full is always timed: speedups are relative to it


# ------------------------------------------------------------------------------------- the distance bias
def token_positions(gh: int, gw: int, frames: int) -> torch.Tensor:
    """(F·N, 2) token centres in DistanceBias's reference units (a 16-token grid over the frame), frame-major."""
    ys, xs = ((torch.arange(n) + 0.5) * 16 / n for n in (gh, gw))
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2).repeat(frames, 1)


def biased_reference(q, k, v, mode, frames, bias: DistanceBias, grid) -> torch.Tensor:
    """The oracle: the full score matrix plus the bias evaluated at every query-key displacement, masked, softmax."""
    pos = token_positions(*grid, frames)
    with torch.no_grad():
        b = bias.kernel(pos[:, None] - pos[None])  # (h, FN, FN)
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + b
    return scores.masked_fill(~mode_mask(mode, frames, grid[0] * grid[1]), float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_distance_bias_is_exact_and_starts_off(mode):
    grid, frames = (4, 5), 3
    q, k, v = qkv(2, frames, 20)
    bias = DistanceBias(heads=2)
    plain = attend(q, k, v, mode, frames)
    torch.testing.assert_close(attend(*bias.augment(q, k, v, grid), mode, frames)[..., :8], plain, atol=1e-5, rtol=0)
    with torch.no_grad():
        bias.strength.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    got = attend(*bias.augment(q, k, v, grid), mode, frames)
    assert got.shape[-1] == 8 + DistanceBias.EXTRA and got[..., 8:].abs().max() == 0  # zero-padded values
    want = biased_reference(q, k, v, mode, frames, bias, grid)
    torch.testing.assert_close(got[..., :8], want, atol=1e-5, rtol=0)
    if mode is not AttentionMode.TEMPORAL:  # all keys of a temporal query share its position: the bias cancels
        assert (got[..., :8] - plain).abs().max() > 1e-2


def test_distance_bias_peaks_at_the_query_position_when_positive():
    bias = DistanceBias(heads=1)
    with torch.no_grad():
        bias.strength.fill_(0.1)
    delta = torch.stack(torch.meshgrid(torch.arange(-15.0, 16), torch.arange(-15.0, 16), indexing="ij"), -1)
    kernel = bias.kernel(delta)[0]  # (31, 31)
    assert kernel[15, 15] == kernel.max() and (kernel.flatten().argmax() == 15 * 31 + 15)
    assert (kernel[15, 15:].diff() < 0).all()  # falls with distance along an axis, no alias inside the frame


def test_distance_bias_moves_attention_towards_near_keys():
    """With equal content scores, a strong positive bias puts most of a query's attention on its own position.

    Each value holds its key's index, so the output is the attention-weighted mean key index."""
    grid, frames = (4, 4), 2
    q = torch.zeros(1, 1, frames * 16, 8)
    k = torch.zeros_like(q)
    v = torch.arange(frames * 16, dtype=torch.float32)[None, None, :, None].expand(1, 1, -1, 8).contiguous()
    bias = DistanceBias(heads=1)
    with torch.no_grad():
        bias.strength.fill_(1.0)
    out = attend(*bias.augment(q, k, v, grid), "temporal", frames)[..., :8]
    torch.testing.assert_close(out[0, 0, :16, 0], torch.arange(16.0) + 8.0)  # temporal: mean of the two frames
    spatial = attend(*bias.augment(q, k, v, grid), "spatial", frames)[0, 0, :16, 0]
    plain = attend(q, k, v, "spatial", frames)[0, 0, :16, 0]
    assert (spatial - torch.arange(16.0)).abs().mean() < 0.1 * (plain - torch.arange(16.0)).abs().mean()


def test_processor_with_distance_bias_needs_a_token_grid():
    attn = make_attn()
    bias = DistanceBias(HEADS)
    with torch.no_grad():
        bias.strength.fill_(0.05)
    ctx = FrameContext("full", num_frames=2)
    x = torch.randn(2, 16, C)  # 2 frames of a 4×4 grid
    got = run(attn, FrameAttnProcessor(ctx, bias=bias), x)
    h = x.reshape(1, 32, C)
    q, k, v = (proj(h).unflatten(-1, (HEADS, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
    with torch.no_grad():
        want = attn.to_out[0](biased_reference(q, k, v, "full", 2, bias, (4, 4)).transpose(1, 2).flatten(2))
    torch.testing.assert_close(got, want.reshape(2, 16, C), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not a square"):
        run(attn, FrameAttnProcessor(ctx, bias=bias), torch.randn(2, 15, C))
    with pytest.raises(ValueError, match="frames_in_batch"):
        FrameAttnProcessor(ctx, layout="frames_in_sequence", bias=bias)


def moving_reference(q, k, v, mode, frames, bias: DistanceBias, grid, velocity) -> torch.Tensor:
    """The oracle with a velocity: per clip and head, the bias at Δ − v·Δτ (τ = frame / (F − 1)), masked, softmax."""
    n = grid[0] * grid[1]
    tau = (torch.arange(frames * n) // n).float() / (frames - 1)  # (F·N,)
    pos = token_positions(*grid, frames)  # (F·N, 2) y, x
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            moved = pos - tau[:, None] * velocity[b, h].flip(-1)  # (F·N, 2): each token where it started
            with torch.no_grad():
                bias_h = bias.kernel(moved[:, None] - moved[None])[h]  # (F·N, F·N)
            scores = q[b, h] @ k[b, h].T * q.shape[-1] ** -0.5 + bias_h
            out[b, h] = scores.masked_fill(~mode_mask(mode, frames, n), float("-inf")).softmax(-1) @ v[b, h]
    return out


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_a_velocity_evaluates_the_bias_along_each_clips_motion(mode):
    grid, frames = (4, 4), 3
    q, k, v = qkv(2, frames, 16)
    bias = DistanceBias(heads=2)
    with torch.no_grad():
        bias.strength.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    still = attend(*bias.augment(q, k, v, grid), mode, frames)
    bias.velocity = torch.zeros(2, 2, 2)
    torch.testing.assert_close(attend(*bias.augment(q, k, v, grid), mode, frames), still, atol=1e-5, rtol=0)
    bias.velocity = torch.tensor([[[6.0, 0.0], [0.0, -4.0]], [[-3.0, 5.0], [2.0, 2.0]]])  # (B, heads, x/y)
    got = attend(*bias.augment(q, k, v, grid), mode, frames)[..., :8]
    torch.testing.assert_close(got, moving_reference(q, k, v, mode, frames, bias, grid, bias.velocity),
                               atol=1e-5, rtol=0)
    if mode is AttentionMode.SPATIAL:  # within a frame every token shifts alike: the bias is unchanged
        torch.testing.assert_close(got, still[..., :8], atol=1e-5, rtol=0)
        # ... so the processor skips the velocity there (across_frames=False): the same numbers, one shared table
        fast = bias.augment(q, k, v, grid, across_frames=False)
        velocity, bias.velocity = bias.velocity, None
        assert all(torch.equal(a, b) for a, b in zip(fast, bias.augment(q, k, v, grid), strict=True))
        bias.velocity = velocity
        torch.testing.assert_close(attend(*bias.augment(q, k, v, grid, across_frames=False), mode, frames)[..., :8],
                                   got, atol=1e-5, rtol=0)
    else:
        assert (got - still[..., :8]).abs().max() > 1e-2
    bias.velocity = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="does not match 2 clips of 2 heads"):
        bias.augment(q, k, v, grid)


def test_a_velocity_sends_a_later_frame_to_where_the_object_was():
    """Equal content scores, a strong bias, full mode: each value holds its key's column. Without a velocity, frame 1's
    token in column c attends to column c of both frames (mean c); with +8 reference units in x over the clip (two
    columns of a 4-wide grid) it attends to its own column and to frame 0's column c − 2 (mean c − 1; near the left
    edge, where c − 2 is outside the frame, to its own column alone)."""
    grid, frames = (4, 4), 2
    q = torch.zeros(1, 1, frames * 16, 8)
    k = torch.zeros_like(q)
    v = (torch.arange(frames * 16) % 4).float()[None, None, :, None].expand(1, 1, -1, 8).contiguous()
    bias = DistanceBias(heads=1)
    with torch.no_grad():
        bias.strength.fill_(1.0)
    plain = attend(*bias.augment(q, k, v, grid), "full", frames)[0, 0, 16:, 0].reshape(4, 4)
    torch.testing.assert_close(plain, torch.arange(4.0).expand(4, 4), atol=0.01, rtol=0)
    bias.velocity = torch.tensor([[[8.0, 0.0]]])
    moved = attend(*bias.augment(q, k, v, grid), "full", frames)[0, 0, 16:, 0].reshape(4, 4)
    torch.testing.assert_close(moved, torch.tensor([0.0, 1.0, 1.0, 2.0]).expand(4, 4), atol=0.01, rtol=0)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_the_processor_skips_a_velocity_only_in_spatial_mode(mode, monkeypatch):
    """In spatial mode the processor never computes the per-clip shifted positions (they cancel within a frame), and
    its output is what the velocity gives anyway; in every frame-mixing mode it uses them."""
    attn = make_attn()
    bias = DistanceBias(HEADS)
    with torch.no_grad():
        bias.strength.fill_(0.05)
    x = torch.randn(2, 16, C)  # one clip of 2 frames on a 4×4 grid
    still = run(attn, FrameAttnProcessor(FrameContext(mode, num_frames=2), bias=bias), x)
    bias.velocity = torch.tensor([[[6.0, -3.0]] * HEADS])  # (1 clip, heads, x/y)
    calls = []
    real = DistanceBias.moving_features
    monkeypatch.setattr(DistanceBias, "moving_features", lambda self, *a: calls.append(1) or real(self, *a))
    got = run(attn, FrameAttnProcessor(FrameContext(mode, num_frames=2), bias=bias), x)
    if mode is AttentionMode.SPATIAL:
        assert not calls
        torch.testing.assert_close(got, still, atol=0, rtol=0)
    else:
        assert calls and (got - still).abs().max() > 1e-3
