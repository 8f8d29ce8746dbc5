"""Wan 2.1 behind the shared pipeline: the 1.3B text-to-video DiT (Wan Team 2025, "Wan: Open and Advanced Large-Scale
Video Generative Models") via diffusers' `WanPipeline`, and Wan 2.1 VACE 1.3B (Jiang et al. 2025, "VACE: All-in-One
Video Creation and Editing") via `WanVACEPipeline`, which adds VACE blocks fed by a control video and a mask.

- modalities: `wan` text only. `wan-vace` text; image = known frames through VACE's control video + mask (frame 0 is
  the upload with mask 0, every other frame grey with mask 1: diffusers' documented first/last-frame recipe; any
  `keyframes` the same way); pose and depth = the control video itself (OpenPose renderings / inverse-depth maps,
  mask 1); motion strokes = VACE's *layout* task: per frame, a box outline of the stroke's region (side 2 × radius of
  the shorter frame side) at the stroke's arc-length position, black on white, 2 px, as VACE's `LayoutBboxAnnotator`
  draws its moving boxes. Layout rather than scribble: a stroke says where a region goes, which is what VACE's
  layout condition was trained on (boxes tracking objects); a scribble control is an edge map of the whole scene, so
  a drawn stroke would read as a thin line-shaped object, not as motion. The image can join one control (frame 0
  known, the rest controlled); pose, depth and strokes are one control video, so only one of them at a time.
- known frames come out as given: VACE conditions on them (the model reproduces them closely), and the returned clip
  then carries the upload itself at those indices, as the lab's other known-frame paths do.
- frames: Wan's VAE packs 4 frames into one latent frame after the first (`num_frames = 4k + 1`). A request for F
  frames generates the next 4k + 1 ≥ F and returns the first F; controls are laid out over F and hold their last
  frame after it. The manifest records both counts.
- attention modes: `wan_attention.install_grid_attention` on the transformer (its `blocks` and VACE's `vace_blocks`);
  `apply_mode` sets the shared GridContext, which the next forward reads: live. `full` is the stock processor, bit for
  bit; Wan was trained with full 3D attention, so the other modes run it off its training distribution.
- samplers: Wan is a rectified-flow model (x_σ = (1 − σ)·x0 + σ·ε, the network predicts v = ε − x0); its repo
  scheduler is `UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)`.
  Only flow-matching samplers are offered, built from that config: `UniPC` (the repo's), `DPM++ 2M`
  (`DPMSolverMultistepScheduler`, dpmsolver++, order 2, flow sigmas: the original Wan code's "dpm++" solver) and
  `Euler` (the same, order 1: DPM-Solver++(1) on a flow schedule is exactly the Euler step
  x' = x + (σ' − σ)·v). All three run on the UniPC grid (DPM-Solver's own flow grid differs by < 0.003 in σ), so the
  base loop's same-grid test passes and a switch mid-run is live. x0̂ and ε̂ for previews and re-projection come from
  the flow parametrisation (`flow_split`), not `vdemo.samplers.split_prediction` (VP only).
- previews: x0̂ through ComfyUI's Wan 2.1 latent→RGB factors (`preview.WAN21_LATENT_RGB`), each latent frame shown
  for the 4 video frames it stands for.
- precision and memory: on CUDA the transformer and the UMT5-XXL text encoder run in bfloat16 (float16 is refused:
  T5 encoders overflow in it) and the VAE in float32, as diffusers' Wan docs load them; VAE slicing always; model CPU
  offload through `base.place` when free GPU memory is short of `min_vram_gib`, and then VAE tiling too.
- defaults: 480 × 832 (Wan 1.3B's 480p), 29 frames (4·7 + 1, the most ≤ the lab's 32-frame limit: 1.8 s at Wan's
  16 fps), 25 UniPC steps, guidance 5.0 (WanPipeline's), diffusers' documented negative prompt.

GPU time of the default clip (not measured here: no GPU, no weights). 29 frames at 480 × 832 are 8 latent frames of
30 × 52 tokens: S = 12,480. One forward of the 1.3B DiT ≈ 2·1.3e9·S (linear layers) + 4·S²·1536·30 (self-attention)
≈ 3.2e13 + 2.9e13 = 6.1e13 FLOPs; with classifier-free guidance 1.2e14 per step, 3.0e15 for 25 steps. The Wan README
gives ~4 min for 81 frames at 480p, 50 steps, on an RTX 4090 (2.8e16 FLOPs: ~120 TFLOP/s effective). At that rate
the steps take ~25 s; with ~15 s for text encoding, the VAE decode and ZeroGPU's hand-over: ~40 s, a third of a 120 s
ZeroGPU limit (an H200 slice should be faster still). `GpuCost` below says so: 1 s per step for 29 frames.
VACE adds 15 VACE blocks to the 30 (×1.5 per call) and two VAE encodes of the control video: ~58 s.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from vdemo.backends.hub.base import RESIDENCY, DiffusersBackend, RunState, control_frames, place
from vdemo.backends.hub.preview import WAN21_LATENT_RGB, WAN21_LATENT_RGB_BIAS, latents_to_rgb
from vdemo.backends.hub.registry import HubError, HubSpec, Source, resolve
from vdemo.config import ATTENTION_MODES, LIMITS, Limits
from vdemo.cost import GpuCost
from vdemo.media import fit_image
from vdemo.pipeline import GenerationRequest, RequestError
from vdemo.strokes import Stroke, stroke_positions

WAN_SAMPLERS = ("UniPC", "DPM++ 2M", "Euler")
FRAMES_PER_LATENT = 4  # Wan VAE's temporal factor: latent frame k > 0 holds video frames 4k − 3 … 4k
# diffusers' Wan docs' English negative prompt (the Wan repo's default, translated)
NEGATIVE_PROMPT = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
                   "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
                   "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
                   "fused fingers, still picture, messy background, three legs, many people in the background, "
                   "walking backwards")
LAYOUT_BOX_PX = 2  # VACE's LayoutBboxAnnotator: cv2.rectangle(..., thickness=2), black boxes on white
UNKNOWN_GREY = 128  # frames VACE is to generate, in the control video (diffusers' VACE example)


def generated_frames(num_frames: int) -> int:
    """The 4k + 1 frames Wan generates for a request of num_frames (the least that is ≥ num_frames)."""
    return FRAMES_PER_LATENT * -(-(num_frames - 1) // FRAMES_PER_LATENT) + 1


def latent_index(num_frames: int) -> np.ndarray:
    """For each of num_frames video frames, the latent frame that holds it: (F,) int (0, 1, 1, 1, 1, 2, …)."""
    return (np.arange(num_frames) + FRAMES_PER_LATENT - 1) // FRAMES_PER_LATENT


def flow_split(model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0̂, ε̂) from a rectified-flow velocity v = ε − x0 at x_σ = (1 − σ)·x0 + σ·ε (Liu et al. 2023; Wan's training
    objective): x0 = x − σ·v, ε = x + (1 − σ)·v."""
    return sample - sigma * model_output, sample + (1.0 - sigma) * model_output


def flow_scheduler(name: str, config: dict) -> SchedulerMixin:
    """A flow-matching sampler from the repo's UniPC config, on the UniPC timestep grid (see the module docstring)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if name == "UniPC":
        return UniPCMultistepScheduler.from_config(config)
    if name not in WAN_SAMPLERS:
        raise ValueError(f"Wan does not support sampler {name!r}; choose one of: {', '.join(WAN_SAMPLERS)}")
    order = 2 if name == "DPM++ 2M" else 1
    scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=order,
                                                        solver_type="midpoint")
    own = scheduler.set_timesteps

    def set_timesteps(num_inference_steps=None, device=None, **kwargs):
        own(num_inference_steps, device=device, **kwargs)
        grid = UniPCMultistepScheduler.from_config(config)
        grid.set_timesteps(num_inference_steps, device=device)
        scheduler.timesteps, scheduler.sigmas = grid.timesteps.clone(), grid.sigmas.clone()

    scheduler.set_timesteps = set_timesteps
    return scheduler


def render_layout(strokes: tuple[Stroke, ...], num_frames: int, height: int, width: int) -> np.ndarray:
    """VACE's layout control for motion strokes: (F, H, W, 3) uint8, white, with each stroke's region as a black box
    outline at the stroke's arc-length position in each frame (an anchor: a box that stays)."""
    frames = np.full((num_frames, height, width, 3), 255, np.uint8)
    side = min(height, width)
    for stroke, path in zip(strokes, stroke_positions(strokes, num_frames)):  # path: (F, 2) in [0, 1]
        half = max(stroke.radius * side, LAYOUT_BOX_PX)
        for frame, (x, y) in zip(frames, path * (width, height)):
            cv2.rectangle(frame, (round(x - half), round(y - half)), (round(x + half), round(y + half)), (0, 0, 0),
                          LAYOUT_BOX_PX)
    return frames


def _hold_last(frames: np.ndarray, total: int) -> np.ndarray:
    """Pad a clip to `total` frames by repeating its last one."""
    return np.concatenate([frames, np.repeat(frames[-1:], total - len(frames), axis=0)])


class WanBackend(DiffusersBackend):
    """Wan 2.1 T2V 1.3B: text → video, every attention mode live, flow-matching samplers."""

    pipeline_class = "WanPipeline"
    modalities = frozenset({"text"})
    attention_modes = ATTENTION_MODES
    samplers = WAN_SAMPLERS
    default_attention_mode = "full"  # Wan as trained
    default_sampler = "UniPC"  # the repo's scheduler
    limits = Limits(**{**LIMITS.__dict__, "side_multiple": 16})  # VAE 8× and patch 2×
    default_size = (480, 832)
    default_steps = 25
    default_guidance = 5.0  # WanPipeline's guidance_scale default
    default_num_frames = 29
    min_vram_gib = 24.0  # bf16 UMT5-XXL (~11 GB) + DiT (~3 GB) + fp32 VAE, activations and the VAE decode
    preview_scale = 2
    gpu_cost = GpuCost(startup_s=15.0, s_per_frame_call=0.035, attention_share=0.45, reference_px=480 * 832,
                       latent_factor=16, temporal_factor=4,
                       source="estimate: FLOP count at the Wan README's RTX 4090 rate (~4 min for 81 frames, 480p, 50 "
                              "steps); see vdemo/backends/hub/wan.py")

    def __init__(self, spec: HubSpec, sources: dict[str, Source], device: str, dtype: torch.dtype, pipe):
        from vdemo.backends.hub.wan_attention import install_grid_attention

        super().__init__(spec, sources, device, dtype)
        RESIDENCY.track(self)
        self.scheduler_config = dict(pipe.scheduler.config)
        self.ctx = install_grid_attention(pipe.transformer)
        self.offload = place(pipe, device, self.min_vram_gib)
        if self.offload != "none":
            pipe.vae.enable_tiling()
        self.pipe = pipe

    @classmethod
    def load(cls, spec: HubSpec, root: Path | None, device: str, dtype: torch.dtype) -> WanBackend:
        import diffusers

        role = next(iter(spec.repos))
        source = resolve(spec, role, root)
        compute = torch.bfloat16 if dtype == torch.float16 else dtype  # T5 overflows in float16
        pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(
            source.location, dtype={"default": compute, "vae": torch.float32}, **source.pretrained_kwargs(compute))
        return cls(spec, {role: source}, device, compute, pipe)

    def describe(self) -> dict:
        return {**super().describe(), "attention": "grid attention on every self-attention (wan_attention.py)",
                "flow_shift": self.scheduler_config.get("flow_shift"), "negative_prompt": NEGATIVE_PROMPT}

    # ------------------------------------------------------------------------------------------ subclass hooks
    def pipeline_for(self, request: GenerationRequest):
        return self.pipe

    def make_scheduler(self, name: str) -> SchedulerMixin:
        return flow_scheduler(name, self.scheduler_config)

    def apply_mode(self, mode: str, num_frames: int) -> None:
        self.ctx.mode = mode  # the transformer's pre-hook sets the token grid on every forward

    def to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[0].transpose(0, 1)  # (1, C, L, h, w) -> (L, C, h, w)

    def from_frames(self, frames: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return frames.transpose(0, 1)[None].to(like.dtype)

    def call_kwargs(self, request: GenerationRequest, state: RunState) -> dict:
        return {"prompt": request.prompt, "negative_prompt": NEGATIVE_PROMPT, "height": request.height,
                "width": request.width, "num_frames": generated_frames(request.num_frames),
                "num_inference_steps": request.num_steps, "guidance_scale": request.guidance}

    def known_frames(self, request: GenerationRequest) -> dict[int, np.ndarray]:
        """Frames the request gives (index -> (H, W, 3) uint8 at the request's size); none for text to video."""
        return {}

    # ------------------------------------------------------------------------------- the run, flow-matching
    def _call(self, pipe, request: GenerationRequest, state: RunState) -> np.ndarray:
        frames = super()._call(pipe, request, state)[: request.num_frames]
        for index, frame in self.known_frames(request).items():
            frames[index] = frame
        return frames

    def split(self, scheduler: SchedulerMixin, model_output: torch.Tensor, sample: torch.Tensor, t,
              state: RunState) -> tuple[torch.Tensor, torch.Tensor]:
        """x0̂ / ε̂ from the flow velocity at σ of the current timestep entry (`flow_split`)."""
        sigma = float(scheduler.sigmas[min(state.index, len(scheduler.sigmas) - 1)])
        return flow_split(model_output.float(), sample.float(), sigma)

    def _paste_steps(self, state: RunState) -> set[int]:
        return set()  # strokes are a VACE control video here, not latent pasting

    def preview(self, x0_hat: torch.Tensor, num_frames: int) -> np.ndarray:
        """x0̂ (1, 16, L, h, w) -> (num_frames, h·s, w·s, 3) uint8 through the Wan 2.1 latent→RGB factors."""
        rgb = latents_to_rgb(self.to_frames(x0_hat), WAN21_LATENT_RGB, scale=self.preview_scale,
                             bias=WAN21_LATENT_RGB_BIAS)  # (L, h·s, w·s, 3)
        return rgb[np.minimum(latent_index(num_frames), len(rgb) - 1)]

    def _manifest(self, state: RunState, total_s: float) -> dict:
        manifest = super()._manifest(state, total_s)
        request = state.request
        manifest["frames"] = {"requested": request.num_frames, "generated": generated_frames(request.num_frames),
                              "latent": int(latent_index(generated_frames(request.num_frames))[-1]) + 1}
        return manifest


class WanVACEBackend(WanBackend):
    """Wan 2.1 VACE 1.3B: text, first frame / known frames, pose, depth, stroke layout → video."""

    pipeline_class = "WanVACEPipeline"
    modalities = frozenset({"text", "image", "pose", "depth", "strokes"})
    min_vram_gib = 26.0
    gpu_cost = GpuCost(startup_s=20.0, s_per_frame_call=0.052, attention_share=0.45, reference_px=480 * 832,
                       latent_factor=16, temporal_factor=4,
                       source="estimate: the T2V figure × 1.5 (15 VACE blocks on 30) + two VAE encodes of the control "
                              "video; see vdemo/backends/hub/wan.py")

    @classmethod
    def load(cls, spec: HubSpec, root: Path | None, device: str, dtype: torch.dtype) -> WanBackend:
        from diffusers.utils import is_ftfy_available

        if not is_ftfy_available():  # WanVACEPipeline's prompt cleaning calls ftfy.fix_text without a guard
            raise HubError(f"hub backend {spec.name!r} needs the ftfy package (pip install ftfy)")
        return super().load(spec, root, device, dtype)

    def check(self, request: GenerationRequest) -> None:
        controls = [m for m in ("pose", "depth", "strokes") if m in request.modalities]
        if len(controls) > 1:
            raise RequestError(f"backend {self.name!r} takes one control video at a time (pose, depth or strokes), "
                               f"got {' and '.join(controls)}")
        super().check(request)

    def known_frames(self, request: GenerationRequest) -> dict[int, np.ndarray]:
        given = {} if request.image is None else {0: request.image}
        given.update({int(i): frame for i, frame in request.keyframes})
        return {i: fit_image(frame, request.height, request.width) for i, frame in given.items()}

    @staticmethod
    def control_kind(request: GenerationRequest) -> str | None:
        """Which control video the request makes: "pose", "depth", "layout" (strokes) or None."""
        if request.pose is not None:
            return "pose"
        if request.depth is not None:
            return "depth"
        return "layout" if request.strokes else None

    def control(self, request: GenerationRequest) -> np.ndarray | None:
        """The request's control video (F, H, W, 3) uint8 at its own frame count, or None."""
        kind, F, H, W = self.control_kind(request), request.num_frames, request.height, request.width
        if kind == "layout":
            return render_layout(request.strokes, F, H, W)
        if kind is not None:
            clip = request.pose if kind == "pose" else request.depth
            return np.stack([np.asarray(f) for f in control_frames(clip, F, H, W)])
        return None

    def vace_inputs(self, request: GenerationRequest) -> tuple[np.ndarray, np.ndarray] | None:
        """VACE's (video (G, H, W, 3) uint8, mask (G, H, W) uint8: 255 = generate, 0 = keep) for the G generated
        frames, or None for plain text to video. Controls hold their last frame past the requested count."""
        control, known = self.control(request), self.known_frames(request)
        if control is None and not known:
            return None
        F, H, W = request.num_frames, request.height, request.width
        video = control if control is not None else np.full((F, H, W, 3), UNKNOWN_GREY, np.uint8)
        mask = np.full((F, H, W), 255, np.uint8)
        for index, frame in known.items():
            video[index], mask[index] = frame, 0
        total = generated_frames(F)
        return _hold_last(video, total), _hold_last(mask, total)

    def call_kwargs(self, request: GenerationRequest, state: RunState) -> dict:
        from PIL import Image

        kwargs = super().call_kwargs(request, state)
        inputs = self.vace_inputs(request)
        if inputs is not None:
            video, mask = inputs
            kwargs["video"] = [Image.fromarray(f) for f in video]
            kwargs["mask"] = [Image.fromarray(m) for m in mask]  # 2-D uint8: mode "L"
        return kwargs

    def _manifest(self, state: RunState, total_s: float) -> dict:
        manifest = super()._manifest(state, total_s)
        manifest["vace"] = {"control": self.control_kind(state.request),
                            "known_frames": sorted(self.known_frames(state.request)),
                            "known_frames_returned": "as given"}
        return manifest
