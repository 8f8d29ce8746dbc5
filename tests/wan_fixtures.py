"""Tiny random Wan 2.1 T2V and VACE pipelines saved in the real repos' layouts, for the `wan` / `wan-vace` backends.

Sizes follow diffusers' own tests (tests/pipelines/wan/test_wan.py and test_wan_vace.py, `get_dummy_components`): an
`AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True,
True])` (8× spatial, 4× temporal, as the real one), a two-head transformer of 2 blocks (VACE: 3 blocks, VACE blocks
at 0 and 2). diffusers' tests download `hf-internal-testing/tiny-random-t5`; nothing may come from the hub here, so
the text encoder is a 32-wide `UMT5EncoderModel` built from a config (the class the real repos use for umt5-xxl) and
the tokenizer a `T5Tokenizer` (Unigram, as umt5's) over a few words, built in memory and saved as tokenizer.json.
The scheduler is the real repos' `UniPCMultistepScheduler` in flow-matching form (`use_flow_sigmas`,
`prediction_type="flow_prediction"`, `flow_shift=3.0`: the value diffusers' Wan docs give for 480p).

    root = build_wan_folder(tmp_path)   # root/wan (Wan2.1-T2V-1.3B-Diffusers), root/vace (Wan2.1-VACE-1.3B-diffusers)

Each folder holds model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/ (safetensors only).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a", "red", "blue", "green", "circle", "square", "cat", "dog", "moves", "right", "left", "on", "the",
         "black", "background", "person", "walks", "dances", "in", "park")
TEXT_DIM = 32
FLOW_SCHEDULER = {  # the flow-matching UniPC of the real repos' scheduler_config.json
    "num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
    "solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
    "final_sigmas_type": "zero", "timestep_spacing": "linspace"}


def make_tokenizer():
    """A T5Tokenizer (Unigram) whose pieces are the words above plus single letters: offline, a few KB."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -15.0)]
    vocab += [(f"▁{w}", -1.0 - i) for i, w in enumerate(WORDS)]
    vocab += [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _text_encoder():
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                       relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                       decoder_start_token_id=0))


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _transformer_kwargs() -> dict:
    return {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16,
            "out_channels": 16, "text_dim": TEXT_DIM, "freq_dim": 256, "ffn_dim": 32, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32}


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**FLOW_SCHEDULER)


def save_wan_t2v(folder: Path) -> None:
    """Wan-AI/Wan2.1-T2V-1.3B-Diffusers layout (WanPipeline)."""
    from diffusers import WanPipeline, WanTransformer3DModel

    transformer = WanTransformer3DModel(num_layers=2, **_transformer_kwargs())
    WanPipeline(tokenizer=make_tokenizer(), text_encoder=_text_encoder(), vae=_vae(), transformer=transformer,
                scheduler=_scheduler()).save_pretrained(folder, safe_serialization=True)


def save_wan_vace(folder: Path) -> None:
    """Wan-AI/Wan2.1-VACE-1.3B-diffusers layout (WanVACEPipeline): VACE blocks after blocks 0 and 2; their input is
    the control video's inactive + reactive latents (2 × 16 channels) and the 8×8-unshuffled mask (64): 96."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    transformer = WanVACETransformer3DModel(num_layers=3, vace_layers=[0, 2], vace_in_channels=96,
                                            **_transformer_kwargs())
    WanVACEPipeline(tokenizer=make_tokenizer(), text_encoder=_text_encoder(), vae=_vae(), transformer=transformer,
                    scheduler=_scheduler()).save_pretrained(folder, safe_serialization=True)


def build_wan_folder(root: Path, roles: tuple[str, ...] = ("wan", "vace")) -> Path:
    """Random tiny Wan pipelines, each in its own sub-folder of `root` (seeded: reproducible); returns root."""
    root = Path(root)
    savers = {"wan": save_wan_t2v, "vace": save_wan_vace}
    for i, role in enumerate(roles):
        torch.manual_seed(100 + i)
        savers[role](root / role)
    return root
