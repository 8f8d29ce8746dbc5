"""A tiny random AnyFlow-FAR pipeline saved in the layout of nvidia/AnyFlow-FAR-Wan2.1-1.3B-Diffusers.

Sizes follow diffusers' own fast test (tests/pipelines/anyflow/test_anyflow_far.py): a Wan VAE with base_dim 3 and
z_dim 16, a 2-layer FAR transformer with 2 heads of 12 channels, FlowMapEulerDiscreteScheduler(shift=5.0). Their text
encoder and tokenizer come from the hub (hf-internal-testing/tiny-random-t5); here nothing may, so the text encoder
is a 2-layer UMT5 built from a config (the real repo's text_encoder is a UMT5EncoderModel) and the tokenizer a T5
Unigram tokenizer built from a word list.

    root = build_anyflow_folder(tmp_path)   # root/anyflow: model_index.json, transformer/, vae/, text_encoder/,
                                             # tokenizer/, scheduler/  ($VDEMO_ANYFLOW_FAR_DIR=root)
"""

from __future__ import annotations

from pathlib import Path

import torch
from hub_fixtures import WORDS

TEXT_DIM = 32
ROLE = "anyflow"


def t5_tokenizer():
    """A T5 (Unigram) tokenizer over a few words, built in memory (scores: log-probabilities, words first)."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", *(f"▁{w}" for w in WORDS), "▁", *"abcdefghijklmnopqrstuvwxyz"]
    vocab = [(p, 0.0 if i < 3 else -1.0 - 0.1 * i) for i, p in enumerate(dict.fromkeys(pieces))]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def anyflow_components() -> dict:
    from diffusers import AnyFlowFARTransformer3DModel, AutoencoderKLWan, FlowMapEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=37,
                                               num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    torch.manual_seed(0)
    transformer = AnyFlowFARTransformer3DModel(
        patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3, num_attention_heads=2,
        attention_head_dim=12, in_channels=16, out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32,
        num_layers=2, cross_attn_norm=True, rope_max_seq_len=32, gate_value=0.25, deltatime_type="r")
    scheduler = FlowMapEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)  # the released repos' shift
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler, "text_encoder": text_encoder,
            "tokenizer": tokenizer}


def save_anyflow(folder: Path) -> None:
    """AnyFlow-FAR-Wan2.1-1.3B-Diffusers layout: model_index.json, transformer/, vae/, text_encoder/, tokenizer/,
    scheduler/ (safetensors)."""
    from diffusers import AnyFlowFARPipeline

    AnyFlowFARPipeline(**anyflow_components()).save_pretrained(folder, safe_serialization=True)


def build_anyflow_folder(root: Path) -> Path:
    """`root/anyflow` holding the tiny pipeline (seeded: reproducible); returns root."""
    root = Path(root)
    save_anyflow(root / ROLE)
    return root
