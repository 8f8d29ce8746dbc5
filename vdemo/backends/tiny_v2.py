"""The built-in `tiny-v2` backend: the v2 model (latent video diffusion, Video LDM), the design issue 13's bake-off
chose, on CPU, loaded from `assets/tiny_v2/` (what `python -m vdemo.train --arch v2` writes).

A small f=4 autoencoder trained on the world maps 128×128 frames to 32×32×4 latents; the video U-Net denoises those
latents (the sample the shared pipeline's schedulers step is the latent clip), and every preview decodes the step's
x0 estimate with the same small decoder. Controls stay at pixel resolution (space-to-depth, lossless) and known frames
also enter as their own latents. Everything else is the `tiny` backend's: the same world, tokenizer, modalities,
checks, warnings and layout planner (its strokes are in normalised coordinates, so they fit any frame size).

Motion-compensated reference: with a first frame and motion strokes (drawn, or planned from the prompt) and
`request.drag_reference`, the object under each stroke's start is cut out of the first frame and dragged along the
stroke (`vdemo.strokes.drag_frames`); those frames, encoded, replace the first frame's latents as the model's
per-frame reference (conditioned half only). The model was trained with such references (jittered: `python -m
vdemo.train --arch v2 --p-dragged`), so it takes the object's shape from the reference and its place from the strokes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vdemo.backends.tiny import ASSETS as TINY_ASSETS
from vdemo.backends.tiny import TinyBackend, find_planner, known_frames
from vdemo.config import LIMITS, Limits
from vdemo.cost import GpuCost
from vdemo.errors import ModelNotFound
from vdemo.media import fit_image, to_uint8
from vdemo.models.planner import Planner
from vdemo.models.tokenizer import encode_prompts, load_tokenizer
from vdemo.models.v2.core import MAX_TOKENS, unconditional
from vdemo.models.v2.latent import LatentConfig, LatentVideoDiffusion, reference_latents
from vdemo.pipeline import GenerationRequest
from vdemo.strokes import drag_frames

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets" / "tiny_v2"
WEIGHTS = "diffusion_pytorch_model.safetensors"
NOTHING_TO_DRAG_WARNING = ("no shape under the strokes' starts to cut out and drag: the model only gets the first "
                           "frame as its reference (start each stroke on a shape)")
# The latent grid halves twice below the autoencoder's f=4 and the 2×2 token patch: sides are multiples of 32.
V2_LIMITS = Limits(**{**LIMITS.__dict__, "min_side_px": 64, "max_side_px": 256, "side_multiple": 32})


def save_v2_model(folder: Path, model: LatentVideoDiffusion, tokenizer, **extra) -> None:
    """The folder `load_v2_model` / `TinyV2Backend.from_pretrained` read: fp16 safetensors, config.json (the model's
    config plus `extra`), the tokenizer. Each file is replaced whole, so an app loading the folder meanwhile never
    reads half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / (WEIGHTS + ".tmp")))
    (folder / (WEIGHTS + ".tmp")).replace(folder / WEIGHTS)
    config = {"_class_name": type(model).__name__, "candidate": "A", **asdict(model.cfg), **extra}
    (folder / "config.json.tmp").write_text(json.dumps(config, indent=2))
    (folder / "config.json.tmp").replace(folder / "config.json")
    if not (folder / "tokenizer").is_dir():  # the world's vocabulary: fixed, written once
        tokenizer.save_pretrained(str(folder / "tokenizer"))


def load_v2_model(folder: Path) -> LatentVideoDiffusion:
    """The model in a folder `python -m vdemo.train --arch v2` wrote: config.json + fp16 safetensors."""
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") != LatentVideoDiffusion.__name__:
        raise ModelNotFound(f"{folder} does not hold a v2 model (config.json names {config.get('_class_name')!r}); "
                            f"for a v1 folder choose --backend tiny")
    known = {f.name for f in fields(LatentConfig)}
    cfg = LatentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known})
    model = LatentVideoDiffusion(cfg)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))  # fp16 on disk, copied into float32 parameters
    return model


class TinyV2Backend(TinyBackend):
    """The v2 built-in CPU model behind the shared pipeline: the `tiny` backend's contract on latents."""

    name = "tiny-v2"
    limits = V2_LIMITS
    default_size = (128, 128)
    default_steps = 10  # the bake-off's eval setting: a 16-frame clip in 3.9 s float32, 2.3 s bf16 (2 threads, bench)
    default_guidance = 2.0
    edit_strength = 0.9  # SDEdit, colour swapped in the prompt (4 held-out clips, 10 steps): new colour in 1.00 of the
    # frames at 0.9, 0.38 at 0.8 (v1 at 0.8: 0.63); the path moves 0.07 of the diagonal
    # The top attention grid is 16×16 at 128 px (f=4 latents in 2×2 tokens: 8 px a token). A 16-frame clip of 10 DDIM
    # steps with guidance took 5.3 CPU-s at 1 thread in float32 (bake-off final check): 0.033 s per frame and call.
    gpu_cost = GpuCost(startup_s=1.0, s_per_frame_call=0.033, attention_share=0.3, reference_px=128 * 128,
                       latent_factor=8, source="measured on a 2-core CPU; a GPU is faster")

    def __init__(self, model: LatentVideoDiffusion, tokenizer, source: str, planner: Planner | None = None):
        self.model = model.eval().requires_grad_(False)
        self.model.ae.decoder.to(memory_format=torch.channels_last)  # with `decode`'s channels-last input
        self._setup(tokenizer, source, planner, prediction="sample")

    @classmethod
    def from_pretrained(cls, folder: str | Path = ASSETS) -> TinyV2Backend:
        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise ModelNotFound(f"no tiny-v2 model in {folder}: train one with `python -m vdemo.train --arch v2` "
                                f"or point VDEMO_TINY_V2_DIR at a folder with config.json")
        model = load_v2_model(folder)
        tokenizer = load_tokenizer(folder / "tokenizer")
        return cls(model, tokenizer, source=str(folder), planner=find_planner(tokenizer, folder, TINY_ASSETS))

    @classmethod
    def random(cls, seed: int = 0, vocab: list[str] | None = None, reference: bool = False) -> TinyV2Backend:
        """Random weights at a minute scale (tests): the whole latent path without training; `reference`: with the
        shipped model's reference latents (and so the cut-and-drag reference)."""
        from vdemo import world
        from vdemo.models.tokenizer import build_tokenizer
        from vdemo.models.v2 import build

        torch.manual_seed(seed)
        tokenizer = build_tokenizer(vocab or world.VOCAB, MAX_TOKENS)
        model = build("A", tiny=True, vocab_size=max(128, len(tokenizer)), reference=reference)
        for p in model.unet.conv_out.parameters():  # zero-init output would make every sample identical
            torch.nn.init.normal_(p, std=0.05)
        return cls(model, tokenizer, source=f"random:{seed}")

    def describe(self) -> dict:
        return {**super().describe(), "latent": f"f={self.model.cfg.factor}, {self.model.cfg.latent_channels} "
                                                f"channels"}

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        f = self.model.cfg.factor
        return (1, request.num_frames, self.model.cfg.latent_channels, request.height // f, request.width // f)

    def dragged(self, request: GenerationRequest) -> np.ndarray | None:
        """The cut-and-drag frames (F, H, W, 3) uint8 for this request's first frame and strokes, or None: switched
        off, a model without reference latents, no first frame, no strokes, or nothing under the strokes to drag."""
        if not (request.drag_reference and self.model.cfg.reference and request.image is not None and request.strokes):
            return None
        first = fit_image(request.image, request.height, request.width)
        return drag_frames(first, request.strokes, request.num_frames)

    def input_warnings(self, request: GenerationRequest) -> list[str]:
        warnings = super().input_warnings(request)
        moving = any(not s.is_anchor for s in request.strokes)
        if (moving and request.drag_reference and self.model.cfg.reference and request.image is not None
                and self.dragged(request) is None):
            warnings.append(NOTHING_TO_DRAG_WARNING)
        return warnings

    def prepare(self, request: GenerationRequest) -> dict:
        controls_t, flags_t = self.control_maps(request)  # (1, F, 9, H, W), (1, 5)
        ids = encode_prompts(self.tokenizer, [request.prompt.strip()], MAX_TOKENS)  # (1, L)
        off = unconditional(ids, controls_t, flags_t)  # what classifier-free guidance trained as "nothing"
        both = [torch.cat(pair) for pair in zip((ids, controls_t, flags_t), off)]  # conditional, unconditional
        dragged = self.dragged(request)
        with torch.no_grad():
            known_z = self.model.known_latents(both[1])  # (2, F, C, H/f, W/f): once per run, not per step
            reference = None
            if dragged is not None:  # the conditioned half's reference; the unconditioned half keeps its own
                pixels = torch.from_numpy(dragged).permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0
                reference = torch.cat([self.model.encode(pixels), reference_latents(known_z[1:], both[1][1:])])
        return {"ids": both[0], "controls": both[1], "flags": both[2], "known_z": known_z, "reference": reference,
                "dragged": dragged}

    def conditioning_report(self, cond: dict) -> dict:
        """Which reference the model got: the cut-and-drag frames, the first known frame's latents (the default), or
        none (no known frame: zeros)."""
        if not self.model.cfg.reference:
            return {}
        if cond["reference"] is not None:
            return {"reference": "cut-and-drag along the strokes"}
        known = bool(cond["controls"][0, :, 3].amax() > 0)  # the known-frame mask channel
        return {"reference": "first frame" if known else "none"}

    def known_sample(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The known frames' own latents (`known_latents`, computed once in `prepare`) where the known mask is set."""
        return known_frames(cond["controls"][:1], cond["known_z"][:1])

    @torch.no_grad()
    def predict(self, x_in: torch.Tensor, t: torch.Tensor, cond: dict, guidance: float, mode: str) -> torch.Tensor:
        self.model.set_attention_mode(mode)
        t = torch.as_tensor(t, dtype=torch.float32).reshape(1)
        n = 1 if guidance == 1.0 else 2  # conditional only, or conditional + unconditional in one batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model.denoise(x_in.expand(n, -1, -1, -1, -1), t.expand(n), cond["ids"][:n],
                                     cond["controls"][:n], cond["flags"][:n], known_z=cond["known_z"][:n],
                                     reference=None if cond["reference"] is None else cond["reference"][:n]).float()
        return out if n == 1 else out[1:] + guidance * (out[:1] - out[1:])

    @torch.no_grad()
    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> the latent clip this backend denoises (`vdemo.eval` noises it; SDEdit starts
        from it, `vdemo.long.encode_pixels`)."""
        return self.model.encode(pixels.float())

    @torch.no_grad()
    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent clip -> (B, F, 3, H, W) in [-1, 1]."""
        return self.model.decode(latents.float())

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """Latent clip (1, F, C, h, w) -> (F, H, W, 3) uint8 with the model's own decoder (previews too)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            frames = self.model.decode(x0.to(torch.float32)).float()
        return to_uint8(frames[0], channels_first=True)
