"""The built-in video U-Net: shapes, how frames mix in each attention mode, token positions."""

from __future__ import annotations

import copy

import pytest
import torch

from vdemo.models.tiny_unet import LEVELS, PREDICTION_TYPES, TinyVideoUNet, position_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_unet(position_embedding: bool = True, seed: int = 0, distance_bias: bool = False) -> TinyVideoUNet:
    """Minute-scale weights with non-zero output and position layers (both start at zero in training)."""
    torch.manual_seed(seed)
    model = TinyVideoUNet(channels=(16, 32, 32), attention_head_dim=16, temb_dim=64, norm_groups=8, text_dim=32,
                          text_layers=1, max_tokens=16, prediction_type="sample", position_embedding=position_embedding,
                          distance_bias=distance_bias, frame_conditioning=False).eval()
    layers = [model.conv_out, *(model.pos_proj.values() if position_embedding else [])]
    for layer in layers:
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.1)
    return model


def forward(model: TinyVideoUNet, x: torch.Tensor, mode: str = "full") -> torch.Tensor:
    B, F, _, H, W = x.shape
    ids = torch.zeros(B, 8, dtype=torch.long)
    ids[:, 0] = 1  # a one-token prompt (all-padding would be an empty attention)
    tokens, pooled = model.encode_text(ids)
    model.set_attention_mode(mode)
    with torch.no_grad():
        return model(x, torch.full((B,), 500), tokens, pooled, torch.zeros(B, F, 9, H, W), torch.zeros(B, 5))


def frame_changes(model: TinyVideoUNet, mode: str, frame: int = 2, num_frames: int = 5) -> list[bool]:
    """Which output frames move when only input frame `frame` is perturbed."""
    x = torch.randn(1, num_frames, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, frame] += torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2))
    diff = (forward(model, x, mode) - forward(model, y, mode)).abs().amax(dim=(0, 2, 3, 4))
    return (diff > 1e-5).tolist()


@pytest.mark.parametrize(("frames", "size"), [(4, 64), (8, 48), (3, 128)])
def test_output_has_the_input_shape(frames, size):
    out = forward(small_unet(), torch.randn(2, frames, 3, size, size))
    assert out.shape == (2, frames, 3, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize(("mode", "expected"), [
    ("spatial", [False, False, True, False, False]),  # each frame on its own
    ("full", [True, True, True, True, True]),
    ("temporal", [True, True, True, True, True]),
    ("causal", [False, False, True, True, True]),  # earlier frames never see later ones
    # frame f sees frames 0 and f-1 in each layer; stacked layers pass a change on to f+1, f+2, ...
    ("sparse_causal", [False, False, True, True, True]),
])
def test_which_frames_a_change_reaches_in_each_mode(mode, expected):
    assert frame_changes(small_unet(), mode) == expected


def test_sparse_causal_frames_see_the_first_frame():
    assert frame_changes(small_unet(), "sparse_causal", frame=0) == [True, True, True, True, True]


def test_zero_position_layers_leave_the_model_as_it_was():
    plain, with_pos = small_unet(position_embedding=False), small_unet(position_embedding=True)
    with_pos.load_state_dict(plain.state_dict(), strict=False)
    for proj in with_pos.pos_proj.values():
        torch.nn.init.zeros_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    x = torch.randn(1, 4, 3, 64, 64)
    torch.testing.assert_close(forward(plain, x), forward(with_pos, x))


def test_distance_bias_starts_off_is_saved_and_wired_after_loading(tmp_path):
    plain, biased = small_unet(), small_unet(distance_bias=True)
    assert set(biased.state_dict()) - set(plain.state_dict()) == {f"pos_bias.{n}.strength" for n in LEVELS}
    x = torch.randn(1, 4, 3, 64, 64)
    torch.testing.assert_close(forward(plain, x), forward(biased, x))  # strength 0: the same model
    with torch.no_grad():
        for bias in biased.pos_bias.values():
            bias.strength.fill_(0.05)
    moved = forward(biased, x)
    assert (moved - forward(plain, x)).abs().max() > 1e-3
    biased.save_pretrained(tmp_path)
    loaded = TinyVideoUNet.from_pretrained(tmp_path).eval()  # processors must see the loaded strengths
    torch.testing.assert_close(forward(loaded, x), moved)
    copied = copy.deepcopy(biased)  # the trainer exports a deep copy: its processors must follow its own biases
    with torch.no_grad():
        for bias in copied.pos_bias.values():
            bias.strength.zero_()
    torch.testing.assert_close(forward(copied, x), forward(plain, x))
    torch.testing.assert_close(forward(biased, x), moved)


def test_distance_bias_learns():
    model = small_unet(distance_bias=True).train()
    x = torch.randn(1, 3, 3, 64, 64)
    ids = torch.ones(1, 4, dtype=torch.long)
    tokens, pooled = model.encode_text(ids)
    out = model(x, torch.full((1,), 900), tokens, pooled, torch.zeros(1, 3, 9, 64, 64), torch.zeros(1, 5))
    out.square().mean().backward()
    assert all(b.strength.grad is not None and b.strength.grad.abs().sum() > 0 for b in model.pos_bias.values())


def test_position_features_tell_every_token_apart_at_any_size():
    for h, w in ((16, 16), (12, 20), (4, 4)):
        f = position_features(h, w, torch.device("cpu"), torch.float32)
        assert f.shape == (1, 32, h, w) and f.abs().max() <= 1.0
        flat = f[0].reshape(32, -1).T  # (h*w, 32)
        assert torch.cdist(flat, flat).add(torch.eye(h * w) * 10).min() > 1e-3
    # normalised coordinates: the centre token of a 3×3 and of a 5×7 grid get the same features
    a = position_features(3, 3, torch.device("cpu"), torch.float32)[0, :, 1, 1]
    b = position_features(5, 7, torch.device("cpu"), torch.float32)[0, :, 2, 3]
    torch.testing.assert_close(a, b)


def test_prediction_type_is_checked():
    assert "sample" in PREDICTION_TYPES
    with pytest.raises(ValueError, match="prediction_type"):
        TinyVideoUNet(channels=(16, 32, 32), norm_groups=8, prediction_type="noise")


def test_frame_conditioning_starts_off_and_makes_frames_differ():
    plain = small_unet()
    mixed = TinyVideoUNet(**{**plain.config, "frame_conditioning": True}).eval()
    missing, unexpected = mixed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == {"frame_cond"}
    x = torch.zeros(1, 4, 3, 64, 64)
    torch.testing.assert_close(forward(plain, x), forward(mixed, x))  # zero last layer: no change
    with torch.no_grad():
        torch.nn.init.normal_(mixed.frame_cond[-1].weight, std=0.5)
    before, after = forward(plain, x), forward(mixed, x)
    assert (after - before).abs().amax(dim=(0, 2, 3, 4)).min() > 1e-3  # every frame's output moves
    gaps = [(after[0, i] - after[0, 0]).abs().max() - (before[0, i] - before[0, 0]).abs().max() for i in (1, 2, 3)]
    assert max(abs(float(g)) for g in gaps) > 1e-3  # and not by the same amount in every frame
