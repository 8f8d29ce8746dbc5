"""AnyFlow-FAR (Wan 2.1, 1.3B) behind the shared pipeline: a causal, few-step video model that streams its clip chunk by
chunk. Gu et al. 2026, "AnyFlow: Any-Step Video Diffusion Model with On-Policy Flow Map Distillation", on the FAR
backbone (Gu, Mao & Shou 2025, "Long-Context Autoregressive Video Modeling with Next-Frame Prediction"); run with
diffusers' `AnyFlowFARPipeline`.

How it generates: the latent frames are split into chunks (`chunk_partition`: 1, then 3 at a time, as the released
checkpoint's `transformer.config.chunk_partition` = 1 + 3·6 + 2 for 81 frames). Each chunk is denoised with a few
flow-map Euler steps while attending only to itself and to the chunks before it (their keys and values in a KV cache;
chunks older than `full_chunk_limit` as compressed tokens). A finished chunk never changes, so it is final as soon as
its last step ends. The pipeline's own loop runs it; `callback_on_step_end` is the per-step hook:

    pipeline (worker thread)                           this backend (the caller's generator)
    chunk k, step i ──cb──► Progress(step, preview of the clip so far + chunk k's x0̂)
    chunk k, last step ──cb──► decode chunk k (Wan VAE, causal) ──► ChunkDone(frames so far: final)
    encode_kv_cache(chunks ≤ k) → chunk k+1 …          stop: the callback raises after the step in flight

- streaming: the Wan VAE decodes frame by frame through a causal feature cache (`AutoencoderKLWan._decode`), so
  `ChunkDecoder` decodes each finished chunk alone, keeping that cache between chunks; the frames equal one decode of
  the whole latent video (tested). The pipeline is asked for latents only (`output_type="latent"`): the streamed
  frames *are* the result, no second decode.
- noise: drawn latent frame by latent frame (`chunk_noise`), so a seed gives the same first chunks whatever the
  length: a longer clip continues the shorter one (the model is causal; tested).
- modalities: text; image = known frames that form a prefix of the clip: a first frame (image-to-video), or the
  frames 0..k−1 of a clip to continue (keyframes; the Video tab's autoregressive long videos and "extend a clip"). They
  are VAE-encoded as the conditioning prefix (the pipeline's `video=` context: `encode_video`, then `video_latents=`),
  in chunks of their own (no chunk mixes context and new frames); those chunks are not denoised, only cached, and
  stream first, as the known frames themselves (exact, not VAE round-tripped). The Wan VAE encodes 4n + 1 frames, so
  of k known frames the *last* m = the largest 4n + 1 ≤ k condition the model (the frames the continuation must join)
  and the k − m before them are returned unchanged without being seen (k = 4, the Video tab's default context: m = 1;
  5 uses all; the manifest's `video_context` says which). A known frame after a generated one (in-betweening, a last
  frame, the hierarchical long-video strategy) is refused: the causal model only continues.
- attention: only `causal`. The model is a trained causal student: every query sees its own chunk and all earlier
  chunks, never later ones, which is the lab's `causal` mode at chunk granularity. The other lab modes are not
  offered: `full` would need the KV cache of future chunks, which do not exist when a chunk is denoised (the pipeline
  has no bidirectional path; that is the separate AnyFlowPipeline / AnyFlow-Wan2.1-T2V checkpoint); `spatial`,
  `temporal` and `sparse_causal` would cut the context the student was distilled with, so they would only measure
  how it breaks, and the FAR processor consumes a flex_attention BlockMask and a cache layout that the lab's frame
  processors do not produce.
- samplers: only `Euler`, the checkpoint's FlowMapEulerDiscreteScheduler (shift 5.0 baked into its config): the model
  predicts a mean velocity between two noise levels t → r, which no other diffusers scheduler consumes.
- defaults: 4 steps per chunk (the pipeline docs' any-step setting; 1, 2, 8 … also work), guidance 1.0 (CFG is fused
  into the weights; > 1 runs a redundant unconditional pass), 480×832 (the checkpoint's resolution), 29 frames (the
  most the lab's 32-frame limit allows of the 4n + 1 the VAE wants). Any frame count works: the run makes the next
  4n + 1 and the last chunk is trimmed to the request.
- dtype: bfloat16 on a GPU (the released weights; UMT5 overflows in float16, and diffusers' fast tests skip fp16 for
  AnyFlow), float32 on a CPU.
- GPU time (ZeroGPU's 120 s limit): about 23 s for the default clip (29 frames, 480×832, 4 steps): 20 s start-up
  (hand-over of the 1.3B DiT and the 5.7B UMT5 encoder, text encoding, chunk decodes) + 4 steps × 29 frames ×
  (480·832 / 512²) × 0.016 s. The per-frame figure scales a Wan 2.1 1.3B forward pass (about 1 s for 81 frames at
  480p on an H100-class GPU) down to chunk-causal calls, plus the cache passes (~60 % more) and diffusers' unfused
  flex_attention; an estimate, not measured here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vdemo.backends.hub.base import RESIDENCY, DiffusersBackend, RunState, StopRun, place, to_uint8_frames
from vdemo.backends.hub.preview import WAN21_LATENT_RGB, WAN21_LATENT_RGB_BIAS, latents_to_rgb
from vdemo.backends.hub.registry import HubSpec, Source, resolve
from vdemo.config import LIMITS, Limits
from vdemo.cost import GpuCost
from vdemo.media import fit_image
from vdemo.pipeline import ChunkDone, GenerationRequest, Progress, RequestError

ROLE = "anyflow"
ANYFLOW_SAMPLERS = ("Euler",)
TEMPORAL_STRIDE = 4  # pixel frames per latent frame after the first (the Wan VAE's scale_factor_temporal)


def latent_frame_count(num_frames: int, stride: int = TEMPORAL_STRIDE) -> int:
    """Latent frames that cover `num_frames` video frames: the first stands for one frame, each next for `stride`
    (0 -> 0)."""
    return math.ceil((num_frames - 1) / stride) + 1 if num_frames else 0


def pixel_frame_count(latent_frames: int, stride: int = TEMPORAL_STRIDE) -> int:
    """Video frames decoded from the first `latent_frames` latent frames (0 -> 0)."""
    return stride * (latent_frames - 1) + 1 if latent_frames else 0


def chunk_partition(latent_frames: int, native: tuple[int, ...]) -> tuple[int, ...]:
    """Latent frames per chunk: the checkpoint's first chunk, then chunks of its second size, the rest last.
    `native` is `transformer.config.chunk_partition` (1, 3, 3, 3, 3, 3, 3, 2 for 21 latent frames), returned as is
    when it fits."""
    if sum(native) == latent_frames:
        return tuple(native)
    first, size = native[0], native[1] if len(native) > 1 else native[0]
    parts, left = [min(first, latent_frames)], latent_frames - min(first, latent_frames)
    while left > 0:
        parts.append(min(size, left))
        left -= parts[-1]
    return tuple(parts)


def context_frame_count(known: int, stride: int = TEMPORAL_STRIDE) -> int:
    """Frames of a k-frame known prefix the Wan VAE can encode as context: the largest stride·n + 1 ≤ k (0 -> 0)."""
    return stride * ((known - 1) // stride) + 1 if known > 0 else 0


def context_partition(context_latents: int, latent_frames: int, native: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks for a clip whose first `context_latents` latent frames are given: the context split as the checkpoint
    splits a clip's start (`chunk_partition`), then the new frames in chunks of the checkpoint's size, so that no chunk
    holds both (the pipeline treats every chunk up to the context's end as context: it would never denoise the rest)."""
    if context_latents == 0:
        return chunk_partition(latent_frames, native)
    size, left = native[1] if len(native) > 1 else native[0], latent_frames - context_latents
    return chunk_partition(context_latents, native) + (size,) * (left // size) + ((left % size,) if left % size else ())


def known_indices(request: GenerationRequest) -> list[int]:
    """Indices of a request's known frames, sorted (repeats kept): 0 for the image, then the keyframes'."""
    return sorted(([0] if request.image is not None else []) + [int(i) for i, _ in request.keyframes])


def chunk_noise(generator: torch.Generator, latent_frames: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Initial noise (1, C, T, h, w) drawn one latent frame at a time, so its first frames do not depend on T."""
    frames = [torch.randn(1, channels, 1, height, width, generator=generator) for _ in range(latent_frames)]
    return torch.cat(frames, dim=2)


def onto_device(module: torch.nn.Module) -> None:
    """Under model CPU offload, bring `module` onto its execution device as its forward would (accelerate's hook);
    needed where the pipeline calls a method its hook does not wrap (`vae._encode`, the chunk decoder). No-op else."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


class ChunkDecoder:
    """Wan VAE decode of a latent video that arrives chunk by chunk; equals `vae.decode` of the whole video.

    `AutoencoderKLWan._decode` runs its causal decoder one latent frame at a time through a feature cache (the last
    frames each causal conv saw); this keeps that cache between calls instead of clearing it, so each chunk is decoded
    once. Latents are the pipeline's normalised ones ((z − mean) / std), un-normalised as the pipeline does.
    """

    def __init__(self, vae, video_processor):
        if getattr(vae, "use_tiling", False):
            raise RuntimeError("ChunkDecoder needs the Wan VAE without tiling (tiles decode the whole video at once)")
        self.vae, self.video_processor = vae, video_processor
        self.cache = [None] * vae._cached_conv_counts["decoder"]  # what vae.clear_cache() gives _decode
        self.latent_frames = 0

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        """(T, C, h, w) normalised latents, the next T of the video -> their (F, H, W, 3) uint8 frames."""
        vae = self.vae
        onto_device(vae)
        device = next(vae.parameters()).device
        z = latents.permute(1, 0, 2, 3)[None].to(device, vae.dtype)  # (1, C, T, h, w)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z.device, z.dtype)
        std_inv = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z.device, z.dtype)
        x = vae.post_quant_conv(z / std_inv + mean)  # 1×1×1 conv: per frame, no cache
        outs = []
        for i in range(x.shape[2]):
            frame, index = x[:, :, i:i + 1], [0]
            if self.latent_frames == 0:
                outs.append(vae.decoder(frame, feat_cache=self.cache, feat_idx=index, first_chunk=True))
            else:
                outs.append(vae.decoder(frame, feat_cache=self.cache, feat_idx=index))
            self.latent_frames += 1
        out = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=vae.config.patch_size)
        video = self.video_processor.postprocess_video(out.clamp(-1.0, 1.0), output_type="np")
        return to_uint8_frames(video)


@dataclass
class ChunkStream:
    """One run's chunks: which are context, which are done, the frames decoded so far, and when each was ready.

    The video is `known[:lead]` (known frames the model does not see, returned as given), then the pipeline's clip:
    its context chunks shown as the known frames they encode (`known[lead:]`, exact), then the decoded new chunks.
    """

    partition: tuple[int, ...]
    context_chunks: int
    steps: int  # denoising steps per chunk
    num_frames: int  # requested video frames (the last chunk is trimmed to them)
    decoder: ChunkDecoder
    known: np.ndarray | None = None  # (k, H, W, 3) uint8: the request's known prefix
    lead: int = 0  # known frames before the VAE context (k − m)
    latents: list[torch.Tensor] = field(default_factory=list)  # finished chunks, (T_k, C, h, w) each
    frames: list[np.ndarray] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    chunk: int = 0  # the chunk being denoised
    chunk_started: float = 0.0

    def __post_init__(self) -> None:
        if self.lead:
            self.frames.append(self.known[:self.lead])

    @property
    def total_steps(self) -> int:
        return (len(self.partition) - self.context_chunks) * self.steps

    def span(self, chunk: int) -> tuple[int, int]:
        """Latent frames [start, end) of a chunk."""
        start = sum(self.partition[:chunk])
        return start, start + self.partition[chunk]

    def video(self) -> np.ndarray:
        frames = np.concatenate(self.frames) if self.frames else np.zeros((0, 1, 1, 3), np.uint8)
        return frames[:self.num_frames]

    def finish(self, latents: torch.Tensor, started: float, context: bool = False, partial: bool = False
               ) -> np.ndarray:
        """Decode a finished chunk (T_k, C, h, w) (partial: a stopped chunk's last clean estimate); record it;
        returns every frame so far (trimmed)."""
        decoded = self.decoder(latents)  # context too: it primes the decoder's causal cache for the chunks after it
        start, end = self.span(self.chunk)
        first, last = self.lead + pixel_frame_count(start), self.lead + pixel_frame_count(end)
        if context:
            decoded = self.known[first:last]  # the known frames themselves, not their VAE round trip
        self.latents.append(latents.detach())
        self.frames.append(decoded)
        now = time.perf_counter()
        self.records.append({"chunk": self.chunk, "latent_frames": [start, end], "context": context,
                             "stopped_early": partial,
                             "frames": [first if self.chunk else 0, min(last, self.num_frames)],
                             "seconds": round(now - (self.chunk_started or started), 4),
                             "ready_s": round(now - started, 4)})
        self.chunk, self.chunk_started = self.chunk + 1, now
        return self.video()

    def manifest(self) -> dict:
        return {"partition": list(self.partition), "context_chunks": self.context_chunks,
                "steps_per_chunk": self.steps, "done": self.records,
                "first_chunk_s": self.records[0]["ready_s"] if self.records else None}


class AnyFlowFARBackend(DiffusersBackend):
    """AnyFlow-FAR Wan 2.1 1.3B: text, a first frame or a clip's first frames to video (a continuation), causal chunks
    streamed as they finish."""

    modalities = frozenset({"text", "image"})
    attention_modes = ("causal",)
    samplers = ANYFLOW_SAMPLERS
    default_attention_mode = "causal"
    default_sampler = "Euler"
    default_steps = 4
    default_guidance = 1.0
    default_size = (480, 832)
    default_num_frames = 29
    limits = Limits(**{**LIMITS.__dict__, "side_multiple": 16})  # VAE 8 × transformer patch 2
    interruptible = False  # the chunk loop has no interrupt flag: the step callback raises StopRun
    min_vram_gib = 20.0  # 1.3B DiT + 5.7B UMT5-XXL encoder in bf16 (~14 GiB) + working memory
    preview_scale = 2
    long_video_defaults = ("autoregressive", 5)  # it only continues; 5 = 4·1 + 1 frames, all encoded as context
    gpu_cost = GpuCost(startup_s=20.0, s_per_frame_call=0.016, attention_share=0.3, latent_factor=16,
                       temporal_factor=4,
                       source="estimate: a Wan 2.1 1.3B forward (public H100-class timings) scaled to chunk-causal "
                              "calls plus KV-cache passes; not measured here")

    def __init__(self, spec: HubSpec, sources: dict[str, Source], device: str, dtype: torch.dtype, pipe):
        super().__init__(spec, sources, device, dtype)
        RESIDENCY.track(self)
        self.scheduler_config = dict(pipe.scheduler.config)
        self.native_partition = tuple(pipe.transformer.config.chunk_partition)
        self.offload = place(pipe, device, self.min_vram_gib)
        self.pipe = pipe

    @classmethod
    def load(cls, spec: HubSpec, root: Path | None, device: str, dtype: torch.dtype) -> AnyFlowFARBackend:
        from diffusers import AnyFlowFARPipeline

        if dtype == torch.float16:
            dtype = torch.bfloat16
        source = resolve(spec, ROLE, root)
        pipe = AnyFlowFARPipeline.from_pretrained(source.location, dtype=dtype, **source.pretrained_kwargs(dtype))
        pipe.set_progress_bar_config(disable=True)
        return cls(spec, {ROLE: source}, device, dtype, pipe)

    # ------------------------------------------------------------------------------------------------- contract
    def check(self, request: GenerationRequest) -> None:
        known = known_indices(request)
        if len(set(known)) < len(known):
            raise RequestError(f"backend {self.name!r} got a known frame twice (frames {known}; the image is "
                               f"frame 0): give each once")
        if known != list(range(len(known))):
            raise RequestError(f"backend {self.name!r} takes known frames only as the clip's first frames 0, 1, …, "
                               f"k − 1 (a first frame, or a clip to continue), got frames {known}; a known frame "
                               f"after a generated one (in-betweening, a last frame) is not supported")
        if known and len(known) >= request.num_frames:
            raise RequestError(f"backend {self.name!r} got {len(known)} known frames for a {request.num_frames}-frame "
                               f"clip: nothing is left to generate")
        super().check(request)

    def input_warnings(self, request: GenerationRequest) -> list[str]:
        warnings = []
        if request.guidance > 1.0:
            warnings.append(f"guidance {request.guidance:g} > 1 runs an extra unconditional pass: AnyFlow has "
                            f"guidance fused into its weights (use 1)")
        known, used = self.context_plan(request)
        if used < known:
            warnings.append(f"{known} known frames: the Wan VAE encodes 4n + 1, so the last {used} condition the "
                            f"model and the {known - used} before them are kept but unseen (a context of 1, 5, 9, … "
                            f"frames is used whole)")
        return warnings

    def describe(self) -> dict:
        return {**super().describe(), "attention": "native causal chunk attention (FAR, KV cache)",
                "streaming": "chunks decoded and sent as each finishes",
                "known_frames": "a prefix of the clip (a first frame, or frames 0..k−1 to continue); its last "
                                "4n + 1 ≤ k are the VAE-encoded context"}

    @staticmethod
    def context_plan(request: GenerationRequest) -> tuple[int, int]:
        """(k, m): the request's known frames (a prefix) and how many of them, the last, are the VAE context."""
        known = len(known_indices(request))
        return known, context_frame_count(known)

    def partition_for(self, request: GenerationRequest) -> tuple[int, ...]:
        """Latent frames per chunk of the pipeline's clip: the context's chunks, then the new frames'."""
        known, used = self.context_plan(request)
        made = request.num_frames - (known - used)  # pixel frames of the pipeline's clip: context + new
        return context_partition(latent_frame_count(used), latent_frame_count(made), self.native_partition)

    # ---------------------------------------------------------------------------------------- DiffusersBackend hooks
    def pipeline_for(self, request: GenerationRequest):
        return self.pipe

    def make_scheduler(self, name: str):
        from diffusers import FlowMapEulerDiscreteScheduler

        if name not in ANYFLOW_SAMPLERS:
            raise ValueError(f"backend {self.name!r} does not support sampler {name!r}; choose one of: "
                             f"{', '.join(ANYFLOW_SAMPLERS)}")
        return FlowMapEulerDiscreteScheduler.from_config(self.scheduler_config)

    def apply_mode(self, mode: str, num_frames: int) -> None:
        """Nothing to install: `causal` is the model's own attention (check() refuses every other mode)."""

    def to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[0]  # (1, T, C, h, w) -> (T, C, h, w): the FAR layout the pipeline's chunk loop holds

    def from_frames(self, frames: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return frames[None].to(like.dtype)

    def _instrument(self, scheduler, state: RunState) -> None:
        """Record x0̂ = z_t − σ_t·u at each step (u: the predicted mean velocity from t to r; exact when r = 0, the
        last step) and ε̂ = z_t + (1 − σ_t)·u, then step as the scheduler does."""
        original = scheduler.step

        def step(model_output, timestep, sample, *args, **kwargs):
            sigma = float(scheduler.sigmas[scheduler.index_for_timestep(timestep)])
            state.x0_hat = sample - sigma * model_output
            state.eps_hat = sample + (1.0 - sigma) * model_output
            return original(model_output, timestep, sample, *args, **kwargs)

        scheduler.step = step

    # ------------------------------------------------------------------------------------------------- the run
    def _call(self, pipe, request: GenerationRequest, state: RunState) -> np.ndarray:
        """Run the pipeline's chunk loop with a per-step callback; returns the streamed frames (the result)."""
        partition = self.partition_for(request)
        latent_frames = sum(partition)
        factor = pipe.vae_scale_factor_spatial
        noise = chunk_noise(state.generator, latent_frames, pipe.transformer.config.in_channels,
                            request.height // factor, request.width // factor)
        known = self.known_frames(request)  # (k, H, W, 3)
        used = context_frame_count(len(known))  # the last `used` are the VAE context
        context_chunks = len(chunk_partition(latent_frame_count(used), self.native_partition)) if used else 0
        stream = ChunkStream(partition, context_chunks, request.num_steps, request.num_frames,
                             ChunkDecoder(pipe.vae, pipe.video_processor), known, len(known) - used)
        state.chunk_stream = stream  # read by _manifest (RunState has no slot for a backend's own record)
        kwargs = {"prompt": request.prompt, "height": request.height, "width": request.width,
                  "num_frames": pixel_frame_count(latent_frames), "num_inference_steps": request.num_steps,
                  "guidance_scale": float(request.guidance), "latents": noise.to(self.device),
                  "chunk_partition": list(partition)}
        if used:
            context = self._encode_context(pipe, known[len(known) - used:], request)  # (1, c, C, h, w)
            kwargs["video_latents"] = context
            for chunk in range(context_chunks):
                start, end = stream.span(chunk)
                frames = stream.finish(context[0, start:end], state.started, context=True)
                self._emit_chunk(state, stream, frames, step=0)

        def callback(pipe_, i, t, callback_kwargs):
            return self._on_chunk_step(state, stream, i, callback_kwargs["latents"])

        try:
            pipe(**kwargs, output_type="latent", callback_on_step_end=callback,
                 callback_on_step_end_tensor_inputs=["latents"])
        except StopRun:
            pipe.maybe_free_model_hooks()
        return stream.video()

    @staticmethod
    def known_frames(request: GenerationRequest) -> np.ndarray:
        """The request's known prefix (the image as frame 0, then the keyframes by index), fitted to its size:
        (k, H, W, 3) uint8 (check() has made sure the indices are 0..k−1)."""
        given = {} if request.image is None else {0: request.image}
        given.update({int(i): frame for i, frame in request.keyframes})
        frames = [fit_image(given[i], request.height, request.width) for i in sorted(given)]
        return np.stack(frames) if frames else np.zeros((0, request.height, request.width, 3), np.uint8)

    def _encode_context(self, pipe, frames: np.ndarray, request: GenerationRequest) -> torch.Tensor:
        """(m, H, W, 3) uint8 frames, m = 4n + 1, as a video in [0, 1] VAE-encoded by the pipeline (its `video=`
        path): (1, n + 1, C, h, w) FAR layout."""
        video = rearrange(torch.from_numpy(frames).float() / 255.0, "f h w c -> 1 f c h w")
        onto_device(pipe.vae)  # encode_video calls vae._encode, which accelerate's offload hook does not wrap
        with torch.no_grad():
            return pipe.encode_video(video.to(self.device), height=request.height, width=request.width)

    def _on_chunk_step(self, state: RunState, stream: ChunkStream, i: int, latents: torch.Tensor) -> dict:
        """After step i of the chunk in flight: Progress; if the chunk is done, decode it and send ChunkDone; stop."""
        state.index += 1
        step = (stream.chunk - stream.context_chunks) * stream.steps + i + 1
        state.steps_done = step
        control = state.control
        control.history.append({"step": step, "call": state.index, "mode": state.mode, "sampler": state.sampler,
                                "chunk": stream.chunk})
        clip = torch.cat([*stream.latents, self.to_frames(state.x0_hat)]) if stream.latents else \
            self.to_frames(state.x0_hat)
        preview = latents_to_rgb(clip, WAN21_LATENT_RGB, scale=self.preview_scale, bias=WAN21_LATENT_RGB_BIAS)
        elapsed = time.perf_counter() - state.started
        state.first_preview_s = elapsed if state.first_preview_s is None else state.first_preview_s
        state.handoff.put(Progress(step, stream.total_steps, preview, state.mode, state.sampler, elapsed,
                                   calls=state.index, total_calls=stream.total_steps), wait=True)
        finished = i + 1 == len(state.scheduler.timesteps)
        if finished:
            frames = stream.finish(self.to_frames(latents), state.started)
            self._emit_chunk(state, stream, frames, step)
        if control.stopped and step < stream.total_steps:
            state.stopped = True
            if not finished:  # the chunk in flight keeps its last clean estimate, as a stopped run does elsewhere
                stream.finish(self.to_frames(state.x0_hat), state.started, partial=True)
            raise StopRun
        return {}

    def _emit_chunk(self, state: RunState, stream: ChunkStream, frames: np.ndarray, step: int) -> None:
        elapsed = time.perf_counter() - state.started
        event = ChunkDone(step, stream.total_steps, frames, state.mode, state.sampler, elapsed, calls=state.index,
                          total_calls=stream.total_steps, chunk=stream.chunk - 1, chunks=len(stream.partition),
                          frames=frames, new_frames=tuple(stream.records[-1]["frames"]))
        state.handoff.put(event, wait=True)

    def _manifest(self, state: RunState, total_s: float) -> dict:
        manifest = super()._manifest(state, total_s)
        stream = getattr(state, "chunk_stream", None)
        if stream is not None:
            manifest["chunks"] = stream.manifest()
        known, used = self.context_plan(state.request)
        manifest["video_context"] = {"known_frames": known, "context_frames": used,
                                     "context_span": [known - used, known],  # [start, end) of the clip
                                     "context_latent_frames": latent_frame_count(used),
                                     "kept_unseen": known - used}
        manifest["warnings"] = self.input_warnings(state.request)
        return manifest
