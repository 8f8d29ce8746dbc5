"""The built-in `tiny` backend: the project's own small video model, on CPU, loaded from `assets/tiny/`.

Accepts every modality (text, image, pose, depth, strokes, in any combination) and every attention mode. Classifier-free
guidance contrasts the full condition set with nothing at all (the model was trained with an all-dropped share).
A request with a prompt and nothing else that gives the motion (text only, or text + a first frame) first goes through
the layout planner (`assets/tiny/planner/`, `vdemo.models.planner`) when the folder has one: its motion strokes join
the prompt as the stroke control (request.plan_motion=False turns it off).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from vdemo.config import ATTENTION_MODES, LIMITS, MODALITIES, Limits
from vdemo.errors import ModelNotFound, UserError
from vdemo.media import fit_clip, fit_image, to_uint8
from vdemo.models.controls import control_tensors
from vdemo.models.planner import PLANNER_DIR, Plan, Planner
from vdemo.models.tiny_unet import TinyVideoUNet
from vdemo.models.tokenizer import build_tokenizer, encode_prompts, load_tokenizer
from vdemo.pipeline import DenoisingBackend, GenerationRequest, RequestError
from vdemo.samplers import default_scheduler_config, sampler_names
from vdemo.strokes import stroke_heatmaps

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets" / "tiny"
TINY_LIMITS = Limits(min_side_px=48, max_side_px=128)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic in hardware
NO_SHAPE_WARNING = ("the built-in model found no shape of its world in this image: it will replace it with its own "
                    "shapes from frame 1")
NOT_OPENPOSE_WARNING = ("the pose frames do not look like OpenPose renderings (coloured limbs on a black background): "
                        "the built-in model will follow them poorly")
# OpenPose-likeness of skeleton frames (see `looks_like_openpose`)
POSE_DARK_MAX, POSE_MIN_DARK_SHARE, POSE_MIN_PALETTE_SHARE, POSE_CHROMA_TOLERANCE = 40, 0.6, 0.7, 0.2
POSE_CHECK_FRAMES = 8
# A first frame "shows the world" when the detector finds an object and background + objects explain the frame
WORLD_BACKGROUND_TOLERANCE, WORLD_MIN_EXPLAINED_SHARE = 40.0, 0.9


def cpu_bf16(setting: str | None = None) -> bool:
    """Whether to run the model under bf16 autocast: VDEMO_CPU_BF16 = "1" / "0", or "auto" (default): on where the
    CPU has bf16 arithmetic in hardware (~1.4× faster there, and the model was trained under the same autocast;
    emulated bf16 elsewhere would be slower than float32)."""
    import os

    setting = (setting if setting is not None else os.environ.get("VDEMO_CPU_BF16", "auto")).strip().lower()
    if setting in ("1", "0"):
        return setting == "1"
    if setting != "auto":
        raise UserError(f"VDEMO_CPU_BF16 must be 1, 0 or auto, got {setting!r}")
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in CPU_BF16_FLAGS)


def bf16_flag(parser, value: bool | None) -> bool:
    """A tool's `--bf16` / `--no-bf16`, or where neither is given (None) the app's own choice, `cpu_bf16`: bf16
    autocast emulated on a CPU without it runs several times slower than float32 (seen on an AVX2-only AMD EPYC, 2
    threads: a 60-case score took 2 min 50 s in float32 and had not finished after 22 minutes under bf16). A bad
    VDEMO_CPU_BF16 is the parser's one-line error."""
    if value is not None:
        return value
    try:
        return cpu_bf16()
    except UserError as err:
        parser.error(str(err))


def openpose_palette() -> np.ndarray:
    """OpenPose's 18 limb colours (vdemo/world/person.py, copied from controlnet_aux): fully saturated hues 20° apart,
    starting at red — as (18, 3) floats with max channel 1."""
    import colorsys

    return np.array([colorsys.hsv_to_rgb(k / 18, 1.0, 1.0) for k in range(18)], dtype=np.float32)


def looks_like_openpose(clip: np.ndarray) -> bool:
    """Whether (F, H, W, 3) uint8 frames look like OpenPose renderings: at least POSE_MIN_DARK_SHARE of the pixels are
    near black (max channel < POSE_DARK_MAX), and of the rest at least POSE_MIN_PALETTE_SHARE have the chromaticity of
    an OpenPose palette colour (pixel / its max channel within POSE_CHROMA_TOLERANCE of one: limbs are drawn at 60 %,
    joints at 100 %, anti-aliased and downscaled onto black, which all keep the chromaticity). Checks at most
    POSE_CHECK_FRAMES evenly spread frames."""
    clip = np.asarray(clip)
    picked = clip[np.unique(np.linspace(0, len(clip) - 1, min(len(clip), POSE_CHECK_FRAMES)).astype(int))]
    pixels = picked.reshape(-1, 3).astype(np.float32)
    peak = pixels.max(axis=1)
    lit = pixels[peak >= POSE_DARK_MAX]
    if 1.0 - len(lit) / len(pixels) < POSE_MIN_DARK_SHARE:
        return False
    if len(lit) == 0:
        return True  # nothing drawn: no person in view, still an OpenPose rendering
    chroma = lit / lit.max(axis=1, keepdims=True)
    nearest = np.linalg.norm(chroma[:, None, :] - openpose_palette()[None], axis=2).min(axis=1)
    return float((nearest <= POSE_CHROMA_TOLERANCE).mean()) >= POSE_MIN_PALETTE_SHARE


def shows_its_world(frame: np.ndarray) -> bool:
    """Whether an (H, W, 3) uint8 frame shows shapes of the built-in world: vdemo.world.detect finds an object, and
    the background (within WORLD_BACKGROUND_TOLERANCE) plus the detected objects cover at least
    WORLD_MIN_EXPLAINED_SHARE of the pixels. World frames: ~0.99; a photo: ~0.5 (the detector, made for flat
    shapes, also finds dozens of spurious specks in one)."""
    from vdemo.world.detect import detect_objects, estimate_background

    background = estimate_background(frame)
    detections = detect_objects(frame, background, max_objects=None)
    if not detections:
        return False
    explained = np.linalg.norm(frame.astype(np.float32) - np.float32(background), axis=2) < WORLD_BACKGROUND_TOLERANCE
    for detection in detections:
        explained |= detection.mask
    return float(explained.mean()) >= WORLD_MIN_EXPLAINED_SHARE


def find_planner(tokenizer, *folders: Path) -> Planner | None:
    """The layout planner in the first of `folders` that has one (`<folder>/planner/`), or None."""
    for folder in folders:
        if (folder / PLANNER_DIR / "config.json").exists():
            return Planner.from_pretrained(folder / PLANNER_DIR, tokenizer)
    return None


def known_frames(controls: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`DenoisingBackend.known_sample` of a built-in model: controls (1, F, 9, H, W) (`vdemo.models.controls`; the
    known mask is channel 3, whole frames) and the known frames' clean sample (1, F, ...) -> ((1, F, 1, 1, 1) bool,
    values), or None when no frame is known."""
    known = controls[:, :, 3:4].amax((-2, -1), keepdim=True) > 0  # (1, F, 1, 1, 1)
    return (known, values) if bool(known.any()) else None


class TinyBackend(DenoisingBackend):
    """The built-in CPU model behind the shared pipeline."""

    name = "tiny"
    modalities = frozenset(MODALITIES)
    attention_modes = ATTENTION_MODES
    samplers = tuple(sampler_names())
    limits = Limits(**{**LIMITS.__dict__, "min_side_px": TINY_LIMITS.min_side_px,
                       "max_side_px": TINY_LIMITS.max_side_px})

    def __init__(self, model: TinyVideoUNet, tokenizer, source: str, planner: Planner | None = None):
        self.model = model.eval().requires_grad_(False)
        self._setup(tokenizer, source, planner, model.config.prediction_type)

    def _setup(self, tokenizer, source: str, planner: Planner | None, prediction: str) -> None:
        self.tokenizer = tokenizer
        self.source = source
        self.planner = planner
        # "trailing" spacing starts sampling at t = 999 (pure noise), as the model was trained (Lin et al. 2024).
        self.output_type = "sample" if prediction == "sample" else None  # x0 -> v for the scheduler, per step
        self.scheduler_config = dict(default_scheduler_config(
            "v_prediction" if prediction == "sample" else prediction, timestep_spacing="trailing"))
        self.lock = threading.Lock()
        self.bf16 = cpu_bf16()

    @classmethod
    def from_pretrained(cls, folder: str | Path = ASSETS) -> TinyBackend:
        """Load weights + config + tokenizer from a local folder (the layout `python -m vdemo.train` writes)."""
        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise ModelNotFound(f"no tiny model in {folder}: train one with `python -m vdemo.train` "
                                    f"or point VDEMO_TINY_DIR at a folder with config.json")
        model = TinyVideoUNet.from_pretrained(str(folder), torch_dtype=torch.float32, local_files_only=True)
        tokenizer = load_tokenizer(folder / "tokenizer")
        planner = find_planner(tokenizer, folder)
        return cls(model, tokenizer, source=str(folder), planner=planner)

    @classmethod
    def random(cls, seed: int = 0, vocab: list[str] | None = None,
               prediction_type: str = "v_prediction") -> TinyBackend:
        """Random weights at a minute scale: exercises the whole pipeline before (or without) training (the shipped
        model predicts "sample", x0)."""
        from vdemo import world

        torch.manual_seed(seed)
        model = TinyVideoUNet(channels=(16, 32, 32), attention_head_dim=16, temb_dim=64, norm_groups=8, text_dim=32,
                              text_layers=1, max_tokens=16, prediction_type=prediction_type, position_embedding=False,
                              distance_bias=False, frame_conditioning=False)
        for p in model.conv_out.parameters():  # zero-init output would make every sample identical
            torch.nn.init.normal_(p, std=0.05)
        return cls(model, build_tokenizer(vocab or world.VOCAB, model.config.max_tokens), source=f"random:{seed}")

    def describe(self) -> dict:
        n = sum(p.numel() for p in self.model.parameters())
        return {"backend": self.name, "model": self.source, "parameters": n,
                "compute": "bf16 autocast" if self.bf16 else "float32", "layout_planner": self.planner is not None}

    def prompt_report(self, request: GenerationRequest) -> dict | None:
        """What the model understood of the prompt: the words of its world it used and the ones it ignored."""
        from vdemo.world import vocabulary_report

        return vocabulary_report(request.prompt) if request.prompt.strip() else None

    def check(self, request: GenerationRequest) -> None:
        """Also refuses a text-only prompt that names nothing of the world (instead of a random blob, silently)."""
        super().check(request)
        report = self.prompt_report(request)
        if report and not report["subject"] and request.modalities == {"text"}:
            ignored = ", ".join(f"'{w}'" for w in report["ignored"][:6]) or "its words"
            raise RequestError(f"the built-in model did not understand {ignored}: it knows flat shapes (circle, "
                               f"square, triangle) in colours, stick figures ('a red person waves') and motions "
                               f"('moves left', 'moves closer'); for open prompts use a GPU backend")

    def input_warnings(self, request: GenerationRequest) -> list[str]:
        """Inputs it accepts but will render wrong: a first frame with no shape of its world in it (the world's own
        detector, vdemo.world.detect), pose frames that are not OpenPose renderings (`looks_like_openpose`)."""
        warnings = []
        if request.image is not None and not shows_its_world(fit_image(request.image, request.height, request.width)):
            warnings.append(NO_SHAPE_WARNING)
        if request.pose is not None and not looks_like_openpose(request.pose):
            warnings.append(NOT_OPENPOSE_WARNING)
        return warnings

    def plan_layout(self, request: GenerationRequest) -> Plan | None:
        """The planner's strokes when nothing else gives the motion: text only, or text + a first frame (image-to-
        video: the paths then start at the objects in that frame). Strokes, more known frames, pose or depth: None."""
        given = request.strokes or request.keyframes or request.pose is not None or request.depth is not None
        if self.planner is None or not request.plan_motion or given or not request.prompt.strip():
            return None
        first = None if request.image is None else fit_image(request.image, request.height, request.width)
        return self.planner.plan(request.prompt, request.seed, first_frame=first) or None

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        return (1, request.num_frames, 3, request.height, request.width)

    def control_maps(self, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """The request's controls (1, F, 9, H, W) at pixel size (`vdemo.models.controls` layout) and presence flags
        (1, 5): known frames, pose, depth and stroke heatmaps, each fitted to the request's frames and size."""
        F, H, W = request.num_frames, request.height, request.width
        if H != W:
            raise RequestError(f"the {self.name} model makes square videos: height and width must match, got {H}×{W}")
        known = {}
        if request.image is not None:
            known[0] = fit_image(request.image, H, W)
        for index, frame in request.keyframes:
            known[int(index)] = fit_image(frame, H, W)
        pose = fit_clip(request.pose, F, H, W) if request.pose is not None else None
        depth = fit_clip(request.depth, F, H, W) if request.depth is not None else None
        strokes = stroke_heatmaps(list(request.strokes), F, H) if request.strokes else None
        controls, flags = control_tensors(F, H, known=known or None, pose=pose, depth=depth, stroke_maps=strokes,
                                          has_text=bool(request.prompt.strip()))
        return torch.from_numpy(controls)[None], torch.from_numpy(flags)[None]

    def prepare(self, request: GenerationRequest) -> dict:
        controls_t, flags_t = self.control_maps(request)  # (1, F, 9, H, W), (1, 5)
        ids = encode_prompts(self.tokenizer, [request.prompt.strip(), ""], self.model.config.max_tokens)
        with torch.no_grad():
            tokens, pooled = self.model.encode_text(ids)  # (2, L, D), (2, D): conditional, unconditional
        return {
            "tokens": tokens, "pooled": pooled,
            "controls": torch.cat([controls_t, torch.zeros_like(controls_t)]),  # (2, F, 9, H, W)
            "flags": torch.cat([flags_t, torch.zeros_like(flags_t)]),  # (2, 5)
        }

    def known_sample(self, cond: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The known frames' pixels (controls 0-3, in [-1, 1]) where the known mask (control 3) is set."""
        return known_frames(cond["controls"][:1], cond["controls"][:1, :, :3])

    @torch.no_grad()
    def predict(self, x_in: torch.Tensor, t: torch.Tensor, cond: dict, guidance: float, mode: str) -> torch.Tensor:
        self.model.set_attention_mode(mode)
        t = torch.as_tensor(t, dtype=torch.float32).reshape(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            if guidance == 1.0:  # conditional only
                return self.model(x_in, t, cond["tokens"][:1], cond["pooled"][:1], cond["controls"][:1],
                                  cond["flags"][:1]).float()
            out = self.model(x_in.repeat(2, 1, 1, 1, 1), t.repeat(2), cond["tokens"], cond["pooled"],
                             cond["controls"], cond["flags"]).float()  # (2, F, 3, H, W)
        return out[1:] + guidance * (out[:1] - out[1:])

    def decode(self, x0: torch.Tensor) -> np.ndarray:
        return to_uint8(x0[0], channels_first=True)  # (F, 3, H, W) in [-1, 1] -> (F, H, W, 3)
