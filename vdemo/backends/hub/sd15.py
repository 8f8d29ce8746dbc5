"""Stable Diffusion 1.5 parts shared by the AnimateDiff and zero-shot backends: the components of an SD 1.5 repo, and
ControlNets (v1.1 OpenPose / depth, Zhang et al. 2023) loaded on first use, one pipeline per combination of controls,
all sharing one set of weights through diffusers' `from_pipe`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vdemo.backends.hub.base import control_frames, place
from vdemo.backends.hub.registry import HubError, HubSpec, Source, resolve
from vdemo.pipeline import GenerationRequest

CONTROL_ROLES = {"pose": "controlnet_pose", "depth": "controlnet_depth"}  # modality -> registry role


def load_sd15_parts(base: Source, dtype: torch.dtype) -> dict:
    """UNet, VAE, CLIP text encoder + tokenizer and the scheduler config of an SD 1.5 repo (safetensors only)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = base.pretrained_kwargs(dtype)
    where = {"revision": base.revision, "local_files_only": base.local}
    return {
        "unet": UNet2DConditionModel.from_pretrained(base.location, subfolder="unet", dtype=dtype, **kw),
        "vae": AutoencoderKL.from_pretrained(base.location, subfolder="vae", dtype=dtype, **kw),
        "text_encoder": CLIPTextModel.from_pretrained(base.location, subfolder="text_encoder", dtype=dtype,
                                                      trust_remote_code=False, **kw),
        "tokenizer": CLIPTokenizer.from_pretrained(base.location, subfolder="tokenizer", **where),
        "scheduler_config": dict(DDIMScheduler.load_config(base.location, subfolder="scheduler", **where)),
    }


def available_controls(spec: HubSpec, root: Path | None) -> dict[str, Source]:
    """modality -> Source for the ControlNets this entry can load (a local folder may leave some out)."""
    out = {}
    for modality, role in CONTROL_ROLES.items():
        if role in spec.repos and (root is None or (root / role).is_dir()):
            out[modality] = resolve(spec, role, root)  # refuses pickle-only folders now, not mid-run
    return out


class ControlNetMixin:
    """Lazily loaded ControlNets (one per control modality) and one pipeline per combination, sharing weights."""

    controls: dict[str, Source]
    pipes: dict[tuple[str, ...], object]

    def controlnet(self, modality: str):
        from diffusers import ControlNetModel

        if modality not in self._controlnets:
            source = self.controls.get(modality)
            if source is None:
                raise HubError(f"backend {self.name!r} has no ControlNet for {modality}")
            net = ControlNetModel.from_pretrained(source.location, dtype=self.dtype,
                                                  **source.pretrained_kwargs(self.dtype))
            self.install_controlnet_attention(net)
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
        key = self.request_controls(request)
        if key not in self.pipes:
            nets = [self.controlnet(m) for m in key]
            pipe = self.controlnet_pipeline_class().from_pipe(self.pipes[()], controlnet=nets[0] if len(nets) == 1
                                                              else nets)
            self.offload = place(pipe, self.device, self.min_vram_gib)
            self.pipes[key] = pipe
        elif self.offload != "none" and key != self._active:  # offload hooks belong to one pipeline at a time
            self.pipes[key].enable_model_cpu_offload(device=self.device)
        self._active = key
        return self.pipes[key]

    def conditioning(self, request: GenerationRequest, height: int, width: int):
        clips = [control_frames(getattr(request, m), request.num_frames, height, width)
                 for m in self.request_controls(request)]
        return clips[0] if len(clips) == 1 else clips
