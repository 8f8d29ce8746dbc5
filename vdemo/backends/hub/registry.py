"""The hub model registry: an allow-list of backends, each a set of hub repos pinned to commit SHAs.

The UI and the CLI pick a backend by its registry name; a free-typed repo id is refused. Weights load with
`use_safetensors=True` (never pickle) and no remote code. Any entry can instead point at a local folder with one
sub-folder per role, each a copy of that role's repo in the hub layout:

    $VDEMO_ANIMATEDIFF_DIR/base/            stable-diffusion-v1-5 (model_index.json, unet/, vae/, text_encoder/, …)
    $VDEMO_ANIMATEDIFF_DIR/motion_adapter/  config.json + diffusion_pytorch_model.safetensors
    $VDEMO_ANIMATEDIFF_DIR/controlnet_pose/ …

Where each revision came from: public code that pins these repos (HF cache snapshot paths, `revision=` constants,
`/resolve/<sha>/` URLs) found in a code-search index; none was fetched from the hub from this machine (offline).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from vdemo.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class HubError(UserError):
    """A hub backend cannot be loaded; the message is one line, fit to show a user."""


@dataclass(frozen=True)
class HubRepo:
    """One hub repo at one commit. `variant` names the fp16 weight files loaded when running in float16."""

    repo_id: str
    revision: str  # a 40-hex commit SHA
    provenance: str  # where the SHA was found
    variant: str | None = None


@dataclass(frozen=True)
class HubSpec:
    """A registry entry: which backend class runs it and which repo fills each role."""

    name: str
    label: str
    backend: str  # "module:Class", the module under vdemo.backends.hub
    repos: Mapping[str, HubRepo]
    lazy_roles: tuple[str, ...] = ()  # loaded on first use (ControlNets), not at startup
    notes: str = ""
    default_num_frames: int | None = None  # None: the backend class's; set where one class serves several entries

    @property
    def env_var(self) -> str:
        return "VDEMO_" + "".join(c if c.isalnum() else "_" for c in self.name.upper()) + "_DIR"


SD15 = HubRepo("stable-diffusion-v1-5/stable-diffusion-v1-5", "f03de327dd89b501a01da37fc5240cf4fdba85a1",
               "pinned as MODEL_REVISION for this repo (with per-file hashes of its fp16 safetensors) and as a "
               "/tree/<sha>/ URL in public code; also an HF-cache snapshot of sd-legacy/runwayml (same history)",
               variant="fp16")
# The v1-5-3 adapter is newer, but no commit SHA for guoyww/animatediff-motion-adapter-v1-5-3 could be found offline,
# and a hash is never guessed: the registry pins v1-5-2, whose SHA several independent sources agree on.
MOTION_ADAPTER = HubRepo("guoyww/animatediff-motion-adapter-v1-5-2", "6167b88ffe39b4441fdf2113e77b99a6f56b7906",
                         "pinned as MOTION_ADAPTER_REVISION / ANIMATEDIFF_MOTION_REVISION in several public projects "
                         "and seen as an HF-cache snapshot")
OPENPOSE = HubRepo("lllyasviel/control_v11p_sd15_openpose", "9ae9f970358db89e211b87c915f9535c6686d5ba",
                   "/resolve/<sha>/diffusion_pytorch_model.fp16.safetensors URLs and an AI_CONTROLNET_REVISION pin in "
                   "public code; an HF-cache snapshot", variant="fp16")
DEPTH = HubRepo("lllyasviel/control_v11f1p_sd15_depth", "539f99181d33db39cf1af2e517cd8056785f0a87",
                "HF-cache snapshot paths in two public projects; a /resolve/<sha>/diffusion_pytorch_model.fp16"
                ".safetensors URL in public code (a ControlNet weights_location)", variant="fp16")
# the fp16 file sits next to the fp32 one at this SHA (that URL names it), as in the OpenPose repo: float16 runs load
# it (half the download); float32 runs the fp32 file
SVD = HubRepo("stabilityai/stable-video-diffusion-img2vid", "9cf024d5bfa8f56622af86c884f26a52f6676f2e",
              "HF-cache snapshot paths in several public projects (loaded there with the diffusers layout, "
              "subfolder='vae', variant='fp16')", variant="fp16")
SVD_XT = HubRepo("stabilityai/stable-video-diffusion-img2vid-xt", "9e43909513c6714f1bc78bcb44d96e733cd242aa",
                 "HF-cache snapshot paths (StableVideoDiffusionPipeline.from_pretrained, feature_extractor/ listed) "
                 "and a revisions table ('svd-xt') in public code", variant="fp16")
WAN_T2V = HubRepo("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "0fad780a534b6463e45facd96134c9f345acfa5b",
                  "an HF-cache snapshot path (models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers/snapshots/<sha>) and "
                  "MODEL_REVISION / revisions-table pins in several independent public projects")
WAN_VACE = HubRepo("Wan-AI/Wan2.1-VACE-1.3B-diffusers", "ec4d2cb062b548996b179d493fdd05340de702a1",
                   "HF-cache snapshot paths, a /tree/<sha> URL, snapshot_download(revision=...) and MODEL_REVISION "
                   "pins in several independent public projects")
# one public project only (no HF-cache path or /resolve/ URL found): treat it as pinned, not independently confirmed
ANYFLOW_FAR = HubRepo("nvidia/AnyFlow-FAR-Wan2.1-1.3B-Diffusers", "915af337434035df8545797ecc910d79fa78cf29",
                      "pinned as a CheckpointSpec revision (with the sha256 and size of its "
                      "transformer/diffusion_pytorch_model.safetensors) in one public project, repeated there as the "
                      "audited checkpoint identity in its tests and design notes; no second source found")

HUB_BACKENDS: Mapping[str, HubSpec] = MappingProxyType({
    "animatediff": HubSpec(
        "animatediff", "AnimateDiff (SD 1.5 + motion adapter v1-5-2, ControlNet pose/depth)",
        "animatediff:AnimateDiffBackend",
        MappingProxyType({"base": SD15, "motion_adapter": MOTION_ADAPTER, "controlnet_pose": OPENPOSE,
                          "controlnet_depth": DEPTH}),
        lazy_roles=("controlnet_pose", "controlnet_depth")),
    "zeroshot": HubSpec(
        "zeroshot", "Zero-shot SD 1.5 + ControlNet (Text2Video-Zero style, cross-frame attention)",
        "zeroshot:ZeroShotBackend",
        MappingProxyType({"base": SD15, "controlnet_pose": OPENPOSE, "controlnet_depth": DEPTH}),
        lazy_roles=("controlnet_pose", "controlnet_depth")),
    "svd": HubSpec(
        "svd", "Stable Video Diffusion (image → 14 frames)", "svd:SVDBackend",
        MappingProxyType({"svd": SVD}), notes="gated on the hub: accept the licence and set HF_TOKEN",
        default_num_frames=14),  # the frames each SVD UNet was trained for: its unet config's num_frames, the
    "svd-xt": HubSpec(        # pipeline's default (diffusers: "14 for img2vid and 25 for img2vid-xt")
        "svd-xt", "Stable Video Diffusion XT (image → 25 frames)", "svd:SVDBackend",
        MappingProxyType({"svd": SVD_XT}), notes="gated on the hub: accept the licence and set HF_TOKEN",
        default_num_frames=25),
    "wan": HubSpec(
        "wan", "Wan 2.1 T2V 1.3B (DiT, full 3D attention; text → video)", "wan:WanBackend",
        MappingProxyType({"wan": WAN_T2V})),
    "wan-vace": HubSpec(
        "wan-vace", "Wan 2.1 VACE 1.3B (text, first frame, pose, depth, stroke layout → video)",
        "wan:WanVACEBackend", MappingProxyType({"vace": WAN_VACE})),
    "anyflow-far": HubSpec(
        "anyflow-far",
        "AnyFlow-FAR Wan 2.1 1.3B (causal, few-step, streams chunks; text / first frame / a clip to continue → video)",
        "anyflow:AnyFlowFARBackend", MappingProxyType({"anyflow": ANYFLOW_FAR}),
        notes="NVIDIA One-Way Noncommercial licence (weights)"),
})


def get_spec(name: str) -> HubSpec:
    """The registry entry for `name`; anything else (a free-typed repo id included) is refused."""
    spec = HUB_BACKENDS.get(name)
    if spec is None:
        what = "free-typed repo ids are not accepted" if "/" in str(name) else "not in the registry"
        raise HubError(f"unknown hub backend {name!r} ({what}); choose one of: {', '.join(HUB_BACKENDS)}")
    return spec


@dataclass(frozen=True)
class Source:
    """Where one role's weights come from: a pinned hub repo, or a local folder with the same layout."""

    role: str
    location: str  # hub repo id or local folder path
    revision: str | None  # None for a local folder
    local: bool
    variant: str | None = None

    def pretrained_kwargs(self, dtype=None, subfolder: str | None = None) -> dict:
        """Keyword arguments for `from_pretrained`: pinned revision, safetensors only, no remote code; in float16 the
        repo's fp16 variant, or for a local folder "fp16" only where `location/subfolder` holds such files."""
        kwargs = {"revision": self.revision, "use_safetensors": True, "local_files_only": self.local}
        import torch

        if dtype == torch.float16:
            variant = local_variant(Path(self.location, subfolder or "")) if self.local else self.variant
            if variant:
                kwargs["variant"] = variant
        return kwargs

    def describe(self) -> dict:
        return {"local": self.location} if self.local else {"id": self.location, "revision": self.revision}


def local_variant(folder: Path, variant: str = "fp16") -> str | None:
    """`variant` if `folder` (or a sub-folder) holds safetensors saved as that variant, else None.

    Names as `save_pretrained(..., variant=...)` writes them: diffusers `diffusion_pytorch_model.fp16.safetensors`,
    transformers `model.fp16.safetensors`, shards `model.fp16-00001-of-00002.safetensors` (`_add_variant` in both).
    """
    tag = f".{variant}"
    for path in folder.rglob("*.safetensors"):
        stem = path.name.removesuffix(".safetensors")
        if stem.endswith(tag) or f"{tag}-" in stem:
            return variant
    return None


def local_root(spec: HubSpec, local_dir: str | os.PathLike | None = None) -> Path | None:
    """The entry's local folder (argument first, then $VDEMO_<NAME>_DIR), checked to exist; None means the hub."""
    folder = local_dir if local_dir is not None else os.environ.get(spec.env_var) or None
    if folder is None:
        return None
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise HubError(f"local folder for hub backend {spec.name!r} not found: {path} "
                       f"(set {spec.env_var} or pass a folder with {', '.join(spec.repos)}/ inside)")
    return path


def check_safetensors(folder: Path) -> None:
    """Refuse a folder whose weights are pickle files only (.bin/.pt/.ckpt): safetensors are required."""
    weights = [p for p in folder.rglob("*")
               if p.is_file() and (p.suffix in PICKLE_SUFFIXES or p.suffix == ".safetensors")]
    by_dir: dict[Path, set[str]] = {}
    for p in weights:
        by_dir.setdefault(p.parent, set()).add(p.suffix)
    for directory, suffixes in sorted(by_dir.items()):
        if ".safetensors" not in suffixes:
            pickles = sorted(p.name for p in weights if p.parent == directory)
            raise HubError(f"refusing {directory}: only pickle weights ({', '.join(pickles)}); "
                           f"safetensors are required (convert them or download the .safetensors files)")
    if not weights:
        raise HubError(f"no weights in {folder}: expected *.safetensors files in the hub layout")


def resolve(spec: HubSpec, role: str, root: Path | None) -> Source:
    """The source of one role: `root/role` (checked: exists, safetensors only) or the pinned hub repo."""
    repo = spec.repos[role]
    if root is None:
        return Source(role, repo.repo_id, repo.revision, local=False, variant=repo.variant)
    folder = root / role
    if not folder.is_dir():
        raise HubError(f"{root} has no {role}/ folder (expected a copy of {repo.repo_id} in the hub layout)")
    check_safetensors(folder)
    return Source(role, str(folder), None, local=True)
