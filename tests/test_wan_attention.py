"""The five attention modes on Wan 2.1's 3D self-attention (vdemo.backends.hub.wan_attention), on tiny random
`WanTransformer3DModel` / `WanVACETransformer3DModel`s configured like diffusers' own Wan tests."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from vdemo.attention import AttentionMode, attend, mode_mask, reference_attend
from vdemo.backends.hub.wan_attention import GridAttnProcessor, GridContext, grid_pairs, install_grid_attention

NON_FULL = ("spatial", "temporal", "causal", "sparse_causal")
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32)  # diffusers tests/pipelines/wan/test_wan.py
GRIDS = [(1, 2, 3), (2, 3, 2), (5, 2, 3), (5, 3, 4)]  # (frames, height, width) in tokens; H != W


def tiny_wan() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(num_layers=2, **TINY).eval()


def tiny_vace() -> WanVACETransformer3DModel:
    """As diffusers' tests/pipelines/wan/test_wan_vace.py builds it."""
    torch.manual_seed(0)
    return WanVACETransformer3DModel(num_layers=3, vace_layers=[0, 2], vace_in_channels=96, **TINY).eval()


def inputs(grid: tuple[int, int, int], batch: int = 1, seed: int = 1, vace: bool = False) -> dict:
    """Transformer kwargs for a token grid: latents (B, 16, F, 2H, 2W) under patch (1, 2, 2)."""
    frames, height, width = grid
    gen = torch.Generator().manual_seed(seed)
    kwargs = {
        "hidden_states": torch.randn(batch, 16, frames, 2 * height, 2 * width, generator=gen),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 6, 32, generator=gen),
        "return_dict": False,
    }
    if vace:
        kwargs["control_hidden_states"] = torch.randn(batch, 96, frames, 2 * height, 2 * width, generator=gen)
    return kwargs


@torch.no_grad()
def run(model, **kwargs) -> torch.Tensor:
    return model(**kwargs)[0]  # (B, 16, F, 2H, 2W)


def attn1s(model) -> list:
    blocks = list(model.blocks) + list(getattr(model, "vace_blocks", []))
    return [block.attn1 for block in blocks]


def install_reference(model, ctx: GridContext) -> None:
    """The naive oracle in every attn1: same processor, but `reference_attend` (full scores + boolean mask)."""
    for attn in attn1s(model):
        attn.set_processor(GridAttnProcessor(ctx, attend_fn=reference_attend))


def layer_inputs(model, grid, batch=2, seed=2):
    """(hidden_states (B, S, C), rotary_emb) as the blocks receive them for a token grid."""
    frames, height, width = grid
    rotary = model.rope(torch.zeros(1, 16, frames, 2 * height, 2 * width))
    hidden = torch.randn(batch, frames * height * width, 24, generator=torch.Generator().manual_seed(seed))
    return hidden, rotary


# ------------------------------------------------------------------------------------------------ per layer
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("mode", NON_FULL)
@torch.no_grad()
def test_each_layer_matches_the_masked_reference(mode, grid):
    model = tiny_wan()
    ctx = GridContext(mode=mode, grid=grid)
    fast, ref = GridAttnProcessor(ctx), GridAttnProcessor(ctx, attend_fn=reference_attend)
    hidden, rotary = layer_inputs(model, grid)
    for attn in attn1s(model):
        out = fast(attn, hidden, None, None, rotary)
        torch.testing.assert_close(out, ref(attn, hidden, None, None, rotary), atol=1e-5, rtol=1e-5)
        assert out.shape == hidden.shape


@torch.no_grad()
def test_gathered_path_is_the_stock_processor_when_every_key_is_allowed():
    """q/k/v, QK-norm, RoPE and the output projection are the stock ones: with `attend` forced to full attention,
    a non-full-mode processor reproduces WanAttnProcessor (also with fused projections)."""
    model = tiny_wan()
    ctx = GridContext(mode="causal", grid=(3, 2, 3))
    every_key = GridAttnProcessor(ctx, attend_fn=lambda q, k, v, mode, num_frames: attend(q, k, v, "full", num_frames))
    hidden, rotary = layer_inputs(model, ctx.grid)
    attn = model.blocks[1].attn1
    stock = WanAttnProcessor()(attn, hidden, None, None, rotary)
    torch.testing.assert_close(every_key(attn, hidden, None, None, rotary), stock, atol=1e-6, rtol=1e-6)
    causal = GridAttnProcessor(ctx)(attn, hidden, None, None, rotary)
    attn.fuse_projections()
    torch.testing.assert_close(GridAttnProcessor(ctx)(attn, hidden, None, None, rotary), causal, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["spatial", "temporal", "full", "causal", "sparse_causal"])
def test_grid_pairs_counts_the_mask(mode):
    for frames, height, width in GRIDS:
        expected = int(mode_mask(mode, frames, height * width).sum())
        assert grid_pairs(mode, (frames, height, width)) == expected


# ------------------------------------------------------------------------------------------ whole transformer
@pytest.mark.parametrize("grid", [(1, 2, 3), (2, 3, 2), (5, 2, 3)])
@pytest.mark.parametrize("mode", NON_FULL)
def test_whole_transformer_matches_the_reference_processor(mode, grid):
    model = tiny_wan()
    ctx = install_grid_attention(model)
    ctx.mode = mode
    fast = run(model, **inputs(grid))
    assert ctx.grid == grid
    install_reference(model, ctx)
    torch.testing.assert_close(fast, run(model, **inputs(grid)), atol=1e-5, rtol=1e-5)


def test_full_is_the_stock_model_exactly_before_and_after_switching():
    model = tiny_wan()
    stock = copy.deepcopy(model)
    kwargs = inputs((5, 2, 3))
    expected = run(stock, **kwargs)
    ctx = install_grid_attention(model)
    assert ctx.mode is AttentionMode.FULL
    assert torch.equal(run(model, **kwargs), expected)
    for mode in NON_FULL:
        ctx.mode = mode
        assert not torch.allclose(run(model, **kwargs), expected, atol=1e-4), mode
        ctx.mode = "full"
        assert torch.equal(run(model, **kwargs), expected), f"full after {mode}"


@pytest.mark.parametrize("mode", ["causal", "sparse_causal", "full"])
def test_causal_modes_are_causal_through_the_whole_transformer(mode):
    """Changing latent frames > t leaves the output of frames <= t unchanged in causal modes (changes it in full)."""
    model = tiny_wan()
    install_grid_attention(model).mode = mode
    kwargs = inputs((5, 2, 3))
    out = run(model, **kwargs)
    for t in (0, 1, 3):
        changed = dict(kwargs, hidden_states=kwargs["hidden_states"].clone())
        changed["hidden_states"][:, :, t + 1 :] = torch.randn_like(changed["hidden_states"][:, :, t + 1 :])
        early, early_changed = out[:, :, : t + 1], run(model, **changed)[:, :, : t + 1]
        if mode == "full":
            assert (early - early_changed).abs().max() > 1e-3
        else:
            torch.testing.assert_close(early_changed, early, atol=1e-6, rtol=0)


def test_switching_mode_changes_the_output_without_reinstalling():
    model = tiny_wan()
    ctx = install_grid_attention(model)
    processors = [attn.processor for attn in attn1s(model)]
    kwargs = inputs((4, 2, 3))
    outs = {}
    for mode in ("full", *NON_FULL):
        ctx.mode = mode
        outs[mode] = run(model, **kwargs)
    assert [attn.processor for attn in attn1s(model)] == processors
    modes = list(outs)
    for i, a in enumerate(modes):
        for b in modes[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


def test_install_is_idempotent_and_touches_only_self_attention():
    model = tiny_wan()
    ctx = install_grid_attention(model)
    processors = [attn.processor for attn in attn1s(model)]
    assert all(isinstance(p, GridAttnProcessor) and p.ctx is ctx for p in processors)
    assert all(type(block.attn2.processor) is WanAttnProcessor for block in model.blocks)
    hooks = len(model._forward_pre_hooks)
    assert install_grid_attention(model) is ctx
    assert len(model._forward_pre_hooks) == hooks == 1
    assert [attn.processor for attn in attn1s(model)] == processors
    ctx.mode = "causal"
    kwargs = inputs((3, 2, 2))
    once = run(model, **kwargs)
    install_grid_attention(model)
    assert torch.equal(run(model, **kwargs), once)


def test_pre_hook_reads_the_grid_from_hidden_states_positional_or_keyword():
    model = tiny_wan()
    ctx = install_grid_attention(model)
    ctx.mode = "sparse_causal"
    kwargs = inputs((3, 2, 4))
    by_keyword = run(model, **kwargs)
    assert ctx.grid == (3, 2, 4)
    ctx.grid = None
    with torch.no_grad():
        by_position = model(kwargs["hidden_states"], kwargs["timestep"], kwargs["encoder_hidden_states"],
                            return_dict=False)[0]
    assert ctx.grid == (3, 2, 4)
    assert torch.equal(by_position, by_keyword)
    run(model, **inputs((2, 3, 3)))
    assert ctx.grid == (2, 3, 3)


def test_the_frame_count_never_comes_from_the_batch_size():
    """A batch of two (classifier-free guidance's cond + uncond) gives each sample what a batch of one gives it."""
    model = tiny_wan()
    install_grid_attention(model).mode = "causal"
    pair = inputs((4, 2, 2), batch=2)
    both = run(model, **pair)
    for i in range(2):
        single = {k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in pair.items()}
        torch.testing.assert_close(run(model, **single)[0], both[i], atol=1e-5, rtol=1e-5)


def test_a_missing_or_wrong_grid_is_a_clear_error():
    model = tiny_wan()
    ctx = install_grid_attention(model)
    ctx.mode = "causal"
    hidden, rotary = layer_inputs(model, (2, 2, 3))
    attn = model.blocks[0].attn1
    with pytest.raises(ValueError, match="grid is not set"):
        attn(hidden, None, None, rotary)  # a block called outside the transformer: no pre-hook ran
    ctx.grid = (3, 2, 3)
    with pytest.raises(ValueError, match=r"got 12 tokens but the grid 3×2×3 has 18"):
        attn(hidden, None, None, rotary)
    ctx.mode = "full"  # stock processor: needs no grid
    assert attn(hidden, None, None, rotary).shape == hidden.shape


def test_grid_context_validates_on_assignment():
    ctx = GridContext()
    ctx.mode = "Sparse-Causal"
    assert ctx.mode is AttentionMode.SPARSE_CAUSAL
    with pytest.raises(ValueError, match="unknown attention mode"):
        ctx.mode = "diagonal"
    with pytest.raises(ValueError, match="grid must be"):
        ctx.grid = (4, 2)
    with pytest.raises(ValueError, match="grid must be"):
        ctx.grid = (0, 2, 2)
    with pytest.raises(ValueError, match="unknown attention mode"):
        GridContext(mode="nope")


# -------------------------------------------------------------------------------------------------------- VACE
def test_vace_blocks_get_the_processor_too():
    model = tiny_vace()
    stock = copy.deepcopy(model)
    ctx = install_grid_attention(model)
    assert len(model.vace_blocks) == 2
    for attn in attn1s(model):
        assert isinstance(attn.processor, GridAttnProcessor) and attn.processor.ctx is ctx
    kwargs = inputs((3, 2, 3), vace=True)
    assert torch.equal(run(model, **kwargs), run(stock, **kwargs))

    ctx.mode = "sparse_causal"
    fast = run(model, **kwargs)
    assert ctx.grid == (3, 2, 3)
    install_reference(model, ctx)
    torch.testing.assert_close(fast, run(model, **kwargs), atol=1e-5, rtol=1e-5)


def test_vace_is_causal_in_causal_mode():
    model = tiny_vace()
    install_grid_attention(model).mode = "causal"
    kwargs = inputs((4, 2, 3), vace=True)
    out = run(model, **kwargs)
    changed = dict(kwargs)
    for key in ("hidden_states", "control_hidden_states"):
        changed[key] = kwargs[key].clone()
        changed[key][:, :, 2:] = torch.randn_like(changed[key][:, :, 2:])
    torch.testing.assert_close(run(model, **changed)[:, :, :2], out[:, :, :2], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------- benchmark
def test_dit_attention_benchmark_runs_on_a_small_grid(capsys):
    from vdemo.bench import main

    assert main(["dit-attention", "--grid", "3", "4", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_mode = {r["mode"]: r for r in rows}
    assert set(by_mode) == {"spatial", "temporal", "full", "causal", "sparse_causal"}
    assert by_mode["full"]["pairs_ratio_vs_full"] == 1.0
    assert by_mode["full"]["pairs_per_head"] == 32_760**2  # the real Wan 2.1 1.3B grid, 21×30×52 tokens
    assert all(r["measured_grid"] == [3, 4, 5] and r["ms"] > 0 for r in rows)
