"""Tiny random hub components saved in the real repos' layouts, so the hub backends load them from a local folder.

Sizes follow diffusers' own pipeline tests (tests/pipelines/animatediff, controlnet, stable_video_diffusion): two UNet
levels, a handful of channels, a 32-wide CLIP text/vision tower, and a CLIPTokenizer built from a vocab.json +
merges.txt written here (transformers 5 no longer ships `bytes_to_unicode`, and nothing may come from the hub).

    root = build_hub_folder(tmp_path)   # root/base, motion_adapter, controlnet_pose, controlnet_depth, svd

Each role folder mirrors one hub repo: `base` is stable-diffusion-v1-5 (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/), `motion_adapter` and `controlnet_*` are single-model repos (config.json +
diffusion_pytorch_model.safetensors), `svd` is stable-video-diffusion-img2vid (unet/, vae/, image_encoder/,
feature_extractor/, scheduler/).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WORDS = ("a", "red", "blue", "green", "circle", "square", "cat", "dog", "moves", "right", "left", "on", "the", "black",
         "background", "person", "walks", "dances", "in", "park")
CHANNELS = (16, 32)  # two levels: VAE / ControlNet downsample by 2 (the real SD 1.5 ones by 8)
TEXT_DIM = 32
GROUPS = 8


def write_clip_tokenizer(folder: Path, max_length: int = 16) -> None:
    """vocab.json + merges.txt (+ configs) in the layout of openai/clip-vit-large-patch14's tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters),
              *(w + "</w>" for w in WORDS)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    merges = []  # whole-word merges, built character by character, so the words above become single tokens
    for word in WORDS:
        if len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            merged = pieces[0] + pieces[1]
            vocab.setdefault(merged, len(vocab))
            pieces = [merged, *pieces[2:]]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length,
                                                              "tokenizer_class": "CLIPTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))


def _sd15_parts() -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(block_out_channels=CHANNELS, layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                                attention_head_dim=2, norm_num_groups=GROUPS)
    vae = AutoencoderKL(block_out_channels=CHANNELS, in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=GROUPS, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=TEXT_DIM,
                                                intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                                vocab_size=200, max_position_embeddings=16, projection_dim=TEXT_DIM))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def save_sd15(folder: Path) -> None:
    """stable-diffusion-v1-5 layout: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder / "tokenizer")
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)  # the values of SD 1.5's scheduler_config.json
    pipe = StableDiffusionPipeline(**_sd15_parts(), tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    config_file = folder / "scheduler" / "scheduler_config.json"  # SD 1.5's also says clip_sample: false
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "clip_sample": False}, indent=2))
    shutil.rmtree(folder / "tokenizer")  # keep the original layout: vocab.json + merges.txt, no tokenizer.json
    write_clip_tokenizer(folder / "tokenizer")


def save_motion_adapter(folder: Path) -> None:
    from diffusers import MotionAdapter

    MotionAdapter(block_out_channels=CHANNELS, motion_layers_per_block=1, motion_norm_num_groups=GROUPS,
                  motion_num_attention_heads=2, motion_max_seq_length=32).save_pretrained(folder,
                                                                                           safe_serialization=True)


def save_controlnet(folder: Path) -> None:
    from diffusers import ControlNetModel

    ControlNetModel(block_out_channels=CHANNELS, layers_per_block=1, in_channels=4, cross_attention_dim=TEXT_DIM,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=2,
                    conditioning_embedding_out_channels=(8, 16), norm_num_groups=GROUPS,
                    ).save_pretrained(folder, safe_serialization=True)


def save_svd(folder: Path) -> None:
    """stable-video-diffusion-img2vid layout: model_index.json, unet/, vae/, image_encoder/, feature_extractor/,
    scheduler/."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNetSpatioTemporalConditionModel(  # its GroupNorms have 32 groups: channels must be multiples of 32
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=TEXT_DIM,
        num_attention_heads=2, projection_class_embeddings_input_dim=24, addition_time_embed_dim=8)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D"] * 2, latent_channels=4, sample_size=32)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TEXT_DIM, projection_dim=TEXT_DIM, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32))  # the pipeline resizes its image to 224² for CLIP
    feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
    scheduler = EulerDiscreteScheduler(  # the values of SVD's scheduler_config.json
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                 feature_extractor=feature_extractor).save_pretrained(folder, safe_serialization=True)


def build_hub_folder(root: Path, roles: tuple[str, ...] = ("base", "motion_adapter", "controlnet_pose",
                                                           "controlnet_depth", "svd")) -> Path:
    """Random tiny components for every role, each in its own sub-folder of `root` (seeded: reproducible)."""
    root = Path(root)
    savers = {"base": save_sd15, "motion_adapter": save_motion_adapter, "controlnet_pose": save_controlnet,
              "controlnet_depth": save_controlnet, "svd": save_svd}
    for i, role in enumerate(roles):
        torch.manual_seed(i)
        savers[role](root / role)
    return root
