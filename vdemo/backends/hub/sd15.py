"""Stable Diffusion 1.5 parts shared by the AnimateDiff and zero-shot backends: the components of an SD 1.5 repo, and
ControlNets (v1.1 OpenPose / depth, Zhang et al. 2023) loaded on first use, one pipeline per combination of controls,
all sharing one set of weights through diffusers' `from_pipe`.

One SD 1.5 per process: every part is loaded once per (source location, revision, dtype) (`shared_part`, held weakly:
freed when no backend uses it), so the AnimateDiff and zero-shot backends built on the same repo hold the same VAE,
CLIP text encoder, tokenizer, UNet and ControlNets (AnimateDiff ties its motion UNet's 2-D weights to that UNet:
`tie_parameters`). Modules two backends share get attention processors bound to a `SharedFrameContext`, which reads
the mode and frame count of the backend whose run is in the calling thread (`bind_frames`, done in `pipeline_for`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from vdemo.backends.hub.base import control_frames, place
from vdemo.backends.hub.registry import HubError, HubSpec, Source, resolve
from vdemo.pipeline import GenerationRequest

CONTROL_ROLES = {"pose": "controlnet_pose", "depth": "controlnet_depth"}  # modality -> registry role

_PARTS: weakref.WeakValueDictionary[tuple, object] = weakref.WeakValueDictionary()  # (where, revision, dtype, part)
_PARTS_LOCK = threading.Lock()
_BOUND = threading.local()  # .ctx: the FrameContext of the backend whose run is in this thread


def source_key(source: Source) -> tuple:
    """(location, revision) naming a source's weights: a local folder by its resolved path, a hub repo by id."""
    location = str(Path(source.location).expanduser().resolve()) if source.local else source.location
    return location, source.revision


def shared_part(source: Source, dtype: torch.dtype | None, part: str, load: Callable[[], object]):
    """The process's one copy of `part` of `source` in `dtype`, loaded by `load()` on first use and kept while any
    backend holds it (a weak cache: dropping every backend frees the weights)."""
    key = (*source_key(source), dtype, part)
    with _PARTS_LOCK:
        obj = _PARTS.get(key)
        if obj is None:
            obj = load()
            _PARTS[key] = obj
        return obj


def load_sd15_parts(base: Source, dtype: torch.dtype) -> dict:
    """UNet, VAE, CLIP text encoder + tokenizer (each shared: `shared_part`) and the scheduler config of an SD 1.5
    repo (safetensors only). A fresh dict each call: callers may pop from it."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    where = {"revision": base.revision, "local_files_only": base.local}

    def model(cls, subfolder: str, **extra):
        return shared_part(base, dtype, subfolder, lambda: cls.from_pretrained(
            base.location, subfolder=subfolder, dtype=dtype, **base.pretrained_kwargs(dtype, subfolder), **extra))

    return {
        "unet": model(UNet2DConditionModel, "unet"),
        "vae": model(AutoencoderKL, "vae"),
        "text_encoder": model(CLIPTextModel, "text_encoder", trust_remote_code=False),
        "tokenizer": shared_part(base, None, "tokenizer",
                                 lambda: CLIPTokenizer.from_pretrained(base.location, subfolder="tokenizer", **where)),
        "scheduler_config": dict(DDIMScheduler.load_config(base.location, subfolder="scheduler", **where)),
    }


def load_controlnet(source: Source, dtype: torch.dtype):
    """A ControlNet, once per process per (location, revision, dtype): both SD 1.5 backends use the same repos."""
    from diffusers import ControlNetModel

    return shared_part(source, dtype, "controlnet", lambda: ControlNetModel.from_pretrained(
        source.location, dtype=dtype, **source.pretrained_kwargs(dtype)))


def tie_parameters(target: torch.nn.Module, source: torch.nn.Module) -> list[str]:
    """Make each parameter of `source` also the same-named, same-shaped parameter of `target` (the same Parameter
    object: one copy in memory, still one after `.to()`, which replaces `.data` in place). Returns the names of the
    `source` parameters that found no twin in `target`."""
    untied = []
    for name, param in source.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = target.get_submodule(owner_name)
        except AttributeError:
            untied.append(name)
            continue
        twin = owner._parameters.get(leaf)
        if twin is None or twin.shape != param.shape:
            untied.append(name)
            continue
        setattr(owner, leaf, param)
    return untied


class SharedFrameContext:
    """A FrameContext stand-in for the attention processors of a module several backends share (the SD 1.5 UNet, a
    ControlNet): mode and num_frames come from the context bound in the calling thread (`bind_frames`: the backend
    whose run this is), else from `default` (the installing backend's)."""

    def __init__(self, default):
        self.default = default

    @property
    def current(self):
        return getattr(_BOUND, "ctx", None) or self.default

    @property
    def mode(self):
        return self.current.mode

    @property
    def num_frames(self) -> int:
        return self.current.num_frames


def bind_frames(ctx) -> None:
    """Make `ctx` the FrameContext that shared modules read in this thread (a run's worker thread)."""
    _BOUND.ctx = ctx


def share_frame_attention(module: torch.nn.Module, ctx) -> int:
    """Re-bind the FrameAttnProcessors installed on a shared `module` to a SharedFrameContext (default `ctx`);
    returns how many. Processors of other kinds are left alone."""
    from vdemo.attention import FrameAttnProcessor

    shared = SharedFrameContext(ctx)
    procs = [p for p in module.attn_processors.values() if isinstance(p, FrameAttnProcessor)]
    for proc in procs:
        proc.ctx = shared
    return len(procs)


def available_controls(spec: HubSpec, root: Path | None) -> dict[str, Source]:
    """modality -> Source for the ControlNets this entry can load (a local folder may leave some out)."""
    out = {}
    for modality, role in CONTROL_ROLES.items():
        if role in spec.repos and (root is None or (root / role).is_dir()):
            out[modality] = resolve(spec, role, root)  # refuses pickle-only folders now, not mid-run
    return out


class ControlNetMixin:
    """Lazily loaded ControlNets (one per control modality, shared across backends) and one pipeline per combination,
    sharing weights."""

    controls: dict[str, Source]
    pipes: dict[tuple[str, ...], object]

    def controlnet(self, modality: str):
        if modality not in self._controlnets:
            source = self.controls.get(modality)
            if source is None:
                raise HubError(f"backend {self.name!r} has no ControlNet for {modality}")
            net = load_controlnet(source, self.dtype)
            self.install_controlnet_attention(net)
            share_frame_attention(net, self.ctx_self)  # the other SD 1.5 backend may hold this ControlNet too
            self.sources[CONTROL_ROLES[modality]] = source
            self._controlnets[modality] = net
        return self._controlnets[modality]

    def request_controls(self, request: GenerationRequest) -> tuple[str, ...]:
        return tuple(m for m in CONTROL_ROLES if getattr(request, m) is not None)

    def models_for(self, request: GenerationRequest) -> dict:
        used = {CONTROL_ROLES[m] for m in self.request_controls(request)}
        return {role: src.describe() for role, src in self.sources.items()
                if role not in CONTROL_ROLES.values() or role in used}

    def pipeline_for(self, request: GenerationRequest):
        """The pipeline for this request's controls (built and placed on first use); binds this backend's frame
        context for the shared modules, in the calling (run) thread."""
        bind_frames(self.ctx_self)
        key = self.request_controls(request)
        if key not in self.pipes:
            nets = [self.controlnet(m) for m in key]
            pipe = self.controlnet_pipeline_class().from_pipe(self.pipes[()], controlnet=nets[0] if len(nets) == 1
                                                              else nets)
            if self.offload == "none":
                self.offload = place(pipe, self.device, self.min_vram_gib)
            else:  # offload already: keep it (free memory now would tell nothing about the whole backend)
                pipe.enable_model_cpu_offload(device=self.device)
            self.pipes[key] = pipe
        elif self.offload != "none" and key != self._active:  # offload hooks belong to one pipeline at a time
            self.pipes[key].enable_model_cpu_offload(device=self.device)
        self._active = key
        return self.pipes[key]

    def conditioning(self, request: GenerationRequest, height: int, width: int):
        clips = [control_frames(getattr(request, m), request.num_frames, height, width)
                 for m in self.request_controls(request)]
        return clips[0] if len(clips) == 1 else clips
