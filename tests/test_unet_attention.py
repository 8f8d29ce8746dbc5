"""install_frame_attention on tiny random diffusers UNets (the way diffusers' own tests build them):
an image UNet2DConditionModel inflated to video (Tune-A-Video / Text2Video-Zero), and AnimateDiff's UNetMotionModel."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from vdemo.attention import FrameAttnProcessor, FrameContext, install_frame_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: tiny models on a shared 2-core CPU

FRAMES, TEXT_TOKENS, TEXT_DIM = 4, 5, 16


def text_per_frame(videos: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(videos, TEXT_TOKENS, TEXT_DIM, generator=g).repeat_interleave(FRAMES, dim=0)  # (B·F, L, D)


def bump(x: torch.Tensor) -> torch.Tensor:
    """A random change (a constant offset would vanish in LayerNorm)."""
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(7))


def changed_frames(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> list[bool]:
    """Per frame (dim 0 of a (F, ...) tensor): did anything move by more than atol?"""
    return [bool((x - y).abs().max() > atol) for x, y in zip(a, b, strict=True)]


# --------------------------------------------------------------------------------- image UNet inflated to video
@pytest.fixture(scope="module")
def image_unets() -> tuple[UNet2DConditionModel, UNet2DConditionModel, FrameContext]:
    torch.manual_seed(0)
    plain = UNet2DConditionModel(
        block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1, sample_size=8,
        in_channels=4, out_channels=4, cross_attention_dim=TEXT_DIM, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()
    inflated, ctx = copy.deepcopy(plain), FrameContext(num_frames=FRAMES)
    assert install_frame_attention(inflated, ctx, layers="self") == 4  # down 1, mid 1, up 2
    return plain, inflated, ctx


@torch.no_grad()
def run_image_unet(unet: UNet2DConditionModel, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return unet(latents, 10, encoder_hidden_states=text).sample  # (B·F, 4, 8, 8)


def frame_latents(videos: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(videos * FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(seed))  # (B·F, 4, h, w)


def test_self_layers_only(image_unets):
    _, inflated, _ = image_unets
    for name, proc in inflated.attn_processors.items():
        expected = FrameAttnProcessor if name.endswith("attn1.processor") else AttnProcessor2_0
        assert type(proc) is expected, name
        if expected is FrameAttnProcessor:
            assert proc.layout == "frames_in_batch"


@pytest.mark.parametrize("videos", [1, 2])
def test_spatial_is_the_image_unet_per_frame(image_unets, videos):
    plain, inflated, ctx = image_unets
    ctx.mode = "spatial"
    x, text = frame_latents(videos), text_per_frame(videos)
    out = run_image_unet(inflated, x, text)
    for i in range(videos * FRAMES):
        torch.testing.assert_close(out[i : i + 1], run_image_unet(plain, x[i : i + 1], text[i : i + 1]),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["full", "sparse_causal"])
def test_frames_influence_each_other(image_unets, mode):
    _, inflated, ctx = image_unets
    ctx.mode = mode
    x, text = frame_latents(), text_per_frame(1)
    x2 = x.clone()
    x2[0] += bump(x2[0])  # frame 0 is a key of every frame in both modes
    assert changed_frames(run_image_unet(inflated, x2, text), run_image_unet(inflated, x, text)) == [True] * FRAMES


def test_causal_earlier_frames_ignore_later_ones(image_unets):
    _, inflated, ctx = image_unets
    ctx.mode = "causal"
    x, text = frame_latents(), text_per_frame(1)
    base = run_image_unet(inflated, x, text)
    for t in range(1, FRAMES):
        x2 = x.clone()
        x2[t] += bump(x2[t])
        assert changed_frames(run_image_unet(inflated, x2, text), base) == [i >= t for i in range(FRAMES)]


def test_videos_of_a_guidance_batch_stay_apart(image_unets):
    _, inflated, ctx = image_unets
    ctx.mode = "full"
    x, text = frame_latents(videos=2), text_per_frame(2)
    x2 = x.clone()
    x2[FRAMES:] += bump(x2[FRAMES:])  # change the second video only
    assert changed_frames(run_image_unet(inflated, x2, text), run_image_unet(inflated, x, text)) == (
        [False] * FRAMES + [True] * FRAMES)


def test_mode_switch_between_steps_without_reinstall(image_unets):
    plain, inflated, ctx = image_unets
    x, text = frame_latents(), text_per_frame(1)
    per_frame = torch.cat([run_image_unet(plain, x[i : i + 1], text[i : i + 1]) for i in range(FRAMES)])
    ctx.mode = "spatial"
    step1 = run_image_unet(inflated, x, text)
    ctx.mode = "causal"  # the next denoising step
    step2 = run_image_unet(inflated, x, text)
    torch.testing.assert_close(step1, per_frame, atol=1e-5, rtol=0)
    torch.testing.assert_close(step2[0], per_frame[0], atol=1e-5, rtol=0)  # frame 0 sees only itself
    assert changed_frames(step2, per_frame, atol=1e-5) == [False, True, True, True]
    ctx.mode = "spatial"
    torch.testing.assert_close(run_image_unet(inflated, x, text), per_frame, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ AnimateDiff's motion UNet
@pytest.fixture(scope="module")
def motion_unets() -> tuple[UNetMotionModel, UNetMotionModel, FrameContext]:
    torch.manual_seed(0)
    stock = UNetMotionModel(
        block_out_channels=(16, 32), norm_num_groups=16, layers_per_block=1, sample_size=8,
        in_channels=4, out_channels=4, cross_attention_dim=TEXT_DIM, num_attention_heads=2,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
    ).eval()
    lab, ctx = copy.deepcopy(stock), FrameContext()
    assert install_frame_attention(lab, ctx, layers="temporal") == 14  # 7 motion modules × (attn1, attn2)
    return stock, lab, ctx


@torch.no_grad()
def run_motion_unet(unet: UNetMotionModel, latents: torch.Tensor) -> torch.Tensor:
    """(1, 4, F, h, w) -> (F, 4, h, w); the text is already repeated per frame, as AnimateDiffPipeline does."""
    out = unet(latents, 10, encoder_hidden_states=text_per_frame(1)).sample  # (1, 4, F, h, w)
    return out[0].transpose(0, 1)


def video_latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(seed))  # (B, C, F, h, w)


def test_temporal_layers_only(motion_unets):
    _, lab, _ = motion_unets
    for name, proc in lab.attn_processors.items():
        if "motion_modules" in name:
            assert isinstance(proc, FrameAttnProcessor) and proc.layout == "frames_in_sequence", name
        else:
            assert type(proc) is AttnProcessor2_0, name


@pytest.mark.parametrize("mode", ["temporal", "full"])  # one token per frame: full is temporal here
def test_temporal_mode_is_the_stock_motion_model(motion_unets, mode):
    stock, lab, ctx = motion_unets
    ctx.mode = mode
    x = video_latents()
    torch.testing.assert_close(run_motion_unet(lab, x), run_motion_unet(stock, x), atol=1e-5, rtol=0)


def test_other_modes_change_the_motion_model(motion_unets):
    stock, lab, ctx = motion_unets
    x = video_latents()
    ref = run_motion_unet(stock, x)
    for mode in ["spatial", "causal", "sparse_causal"]:
        ctx.mode = mode
        assert not torch.allclose(run_motion_unet(lab, x), ref, atol=1e-4), mode


def motion_block(lab: UNetMotionModel):
    return lab.down_blocks[0].motion_modules[0].transformer_blocks[0]  # BasicTransformerBlock on (B·h·w, F, C)


@torch.no_grad()
def block_change(lab: UNetMotionModel, frame: int) -> list[bool]:
    """Which frames of one temporal transformer block's output move when input frame `frame` moves."""
    block = motion_block(lab)
    h = torch.randn(8 * 8, FRAMES, block.dim, generator=torch.Generator().manual_seed(0))  # (h·w, F, C)
    h2 = h.clone()
    h2[:, frame] += bump(h2[:, frame])
    return changed_frames(block(h2).transpose(0, 1), block(h).transpose(0, 1))


def test_causal_temporal_block(motion_unets):
    _, lab, ctx = motion_unets
    ctx.mode = "causal"
    for t in range(FRAMES):
        assert block_change(lab, t) == [i >= t for i in range(FRAMES)]


def test_spatial_mode_makes_temporal_block_framewise(motion_unets):
    _, lab, ctx = motion_unets
    ctx.mode = "spatial"
    for t in range(FRAMES):
        assert block_change(lab, t) == [i == t for i in range(FRAMES)]


@pytest.fixture(scope="module")
def motion_unet_without_frame_norm(motion_unets) -> UNetMotionModel:
    """The lab model with each motion module's GroupNorm (it pools statistics over all frames) replaced by Identity,
    so that the temporal attention is the only place where frames meet."""
    lab = copy.deepcopy(motion_unets[1])
    motion_modules = [m for m in lab.modules() if isinstance(m, AnimateDiffTransformer3D)]
    assert len(motion_modules) == 7
    for module in motion_modules:
        module.norm = torch.nn.Identity()
    return lab


@torch.no_grad()
def model_change(unet: UNetMotionModel, frame: int) -> list[bool]:
    x = video_latents()
    x2 = x.clone()
    x2[:, :, frame] += bump(x2[:, :, frame])
    return changed_frames(run_motion_unet(unet, x2), run_motion_unet(unet, x))


def test_causal_motion_model_once_frames_meet_only_in_attention(motion_unet_without_frame_norm):
    lab = motion_unet_without_frame_norm
    contexts = {id(p.ctx): p.ctx for p in lab.attn_processors.values() if isinstance(p, FrameAttnProcessor)}
    assert len(contexts) == 1  # deepcopy keeps the one shared context
    ctx = contexts.popitem()[1]
    for mode, expected in [("causal", [False, False, True, True]), ("spatial", [False, False, True, False]),
                           ("temporal", [True] * FRAMES)]:
        ctx.mode = mode
        assert model_change(lab, frame=2) == expected, mode


def test_stock_motion_norm_still_mixes_frames_in_causal_mode(motion_unets):
    """Known limit: AnimateDiff's motion-module GroupNorm pools over frames, so causal temporal attention alone does
    not make a UNetMotionModel causal — later frames still shift earlier ones through the normalisation."""
    _, lab, ctx = motion_unets
    ctx.mode = "causal"
    assert model_change(lab, frame=FRAMES - 1)[0]
