"""SDPA's batch dimension stays within what CUDA kernels launch (MAX_SDPA_BATCH, pytorch#146704): every SDPA call of
every mode, recorded on real-size temporal layers (AnimateDiff v1-5-2 at 512², SVD at 576×1024, both with CFG), and
the split path held to the naive oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from vdemo import attention
from vdemo.attention import AttentionMode, FrameAttnProcessor, FrameContext, attend, reference_attend

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: a shared 2-core CPU

MODES = list(AttentionMode)
CUDA_LIMIT = 65_535  # 2**16 - 1; independent of the module constant, which the split test shrinks


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[torch.Size]:
    """q.shape of every torch SDPA call made while the test runs (the real SDPA still computes the result)."""
    calls, original = [], F.scaled_dot_product_attention

    def recording(q, *args, **kwargs):
        calls.append(q.shape)
        return original(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


# ------------------------------------------------------------------------------------------ real-size temporal layers
LAYERS = {  # (heads, head_dim, slices = CFG·H·W latents, frames): hidden states (slices, frames, 320)
    "animatediff_512": (8, 40, 2 * 64 * 64, 16),  # v1-5-2 motion module, 512², 16 frames; diffusers: (8192, 8, 16, 40)
    "svd_576x1024": (5, 64, 2 * 72 * 128, 14),  # SVD temporal block, latents 72×128, 14 frames
}


@pytest.fixture(scope="module", params=LAYERS)
def layer(request) -> tuple[Attention, torch.Tensor]:
    """A real-size temporal attention layer and float32 hidden states (B·H·W, F, C), made once for every mode."""
    heads, head_dim, slices, frames = LAYERS[request.param]
    torch.manual_seed(0)
    attn = Attention(query_dim=heads * head_dim, heads=heads, dim_head=head_dim).eval()
    return attn, torch.randn(slices, frames, heads * head_dim)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@torch.no_grad()
def test_real_size_temporal_layer_stays_within_cuda_batch_limit(sdpa_calls, layer, mode):
    attn, x = layer
    attn.set_processor(FrameAttnProcessor(FrameContext(mode, x.shape[1]), layout="frames_in_sequence"))
    assert attn(x).shape == x.shape
    assert sdpa_calls, "no SDPA call recorded"
    batch_dims = [shape[0] for shape in sdpa_calls]
    assert max(batch_dims) <= CUDA_LIMIT, batch_dims
    assert max(shape[1] for shape in sdpa_calls) <= CUDA_LIMIT  # CUDA's head dimension has the same limit


def test_one_group_is_the_diffusers_layout(sdpa_calls):
    """frames_in_sequence temporal: N = 1 group per head, so SDPA gets diffusers' (B, h, F, d), not (B·h, 1, F, d)."""
    q, k, v = (torch.randn(6, 8, 16, 40) for _ in range(3))  # (B, h, F·N, d) with N = 1
    attend(q, k, v, "temporal", 16)
    assert sdpa_calls == [torch.Size([6, 8, 16, 40])]


# ------------------------------------------------------------------------------------------------- the split path
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("batch,heads,frames,tokens", [(5, 3, 4, 2), (9, 2, 5, 1), (2, 1, 6, 9)])
def test_split_equals_unsplit_and_reference(monkeypatch, sdpa_calls, mode, batch, heads, frames, tokens):
    g = torch.Generator().manual_seed(batch * 100 + frames)
    q, k, v = (torch.randn(batch, heads, frames * tokens, 8, generator=g) for _ in range(3))  # (B, h, F·N, d)
    whole = attend(q, k, v, mode, frames)
    monkeypatch.setattr(attention, "MAX_SDPA_BATCH", 7)
    sdpa_calls.clear()
    split = attend(q, k, v, mode, frames)
    assert sdpa_calls and max(max(shape[:2]) for shape in sdpa_calls) <= 7
    torch.testing.assert_close(split, whole, atol=0, rtol=0)
    torch.testing.assert_close(split, reference_attend(q, k, v, mode, frames), atol=1e-5, rtol=0)


def test_split_cross_attention_keeps_its_mask(monkeypatch, sdpa_calls):
    """Cross-attention (text tokens) goes through the same split, its (B, h, 1, L) mask split alongside."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=12).eval()
    attn.set_processor(FrameAttnProcessor(FrameContext("causal", num_frames=3)))
    x, text, mask = torch.randn(9, 5, 16), torch.randn(9, 7, 12), torch.ones(9, 7)
    mask[::2, -3:] = 0
    with torch.no_grad():
        whole = attn(x, encoder_hidden_states=text, attention_mask=mask)
        monkeypatch.setattr(attention, "MAX_SDPA_BATCH", 4)
        sdpa_calls.clear()
        split = attn(x, encoder_hidden_states=text, attention_mask=mask)
    assert [shape[0] for shape in sdpa_calls] == [3, 3, 3]  # 9 slices: 3 equal pieces
    torch.testing.assert_close(split, whole, atol=0, rtol=0)
