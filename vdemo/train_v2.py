"""The long run of the v2 built-in model: the bake-off's winner (candidate A, latent video diffusion, Video LDM).

    python -m vdemo.train --arch v2 --init runs/bakeoff3/A/state.pt --minutes 600 --threads 1   # first start
    nohup python -m vdemo.train --arch v2 --minutes 600 > runs/tiny_v2.log 2>&1 &                 # resumes
    python -m vdemo.train --arch v2 --save-compact    # the small resumable state to commit (once or twice a session)
    python -m vdemo.train --arch v2 --velocity ...    # add the text-conditioned velocity to a run (kept from then on)

It continues where the bake-off stopped (same model, optimiser, data generator and CPU-time count), with what a long
run needs and a bake-off does not: every world kind (person and depth scenes too, so pose and depth conditioning are
learned), 16-frame clips beside 8-frame ones, an EMA of the weights (diffusers' EMAModel) that is what gets evaluated
and shipped, and a checkpoint every few CPU-minutes (and on SIGTERM), so a run that dies with its session loses little.
Time is *process CPU time* as in the bake-off (`vdemo.bakeoff`), so the curve continues its x-axis.

Writes, overwriting in place:
  - `<out>/` (default `assets/tiny_v2/`): EMA weights (fp16 safetensors) + config.json + tokenizer: what the
    `tiny-v2` backend loads; `<out>/learning_curve.csv` and `.png`: the bake-off's held-out eval (shape from text,
    shape kept, edge sharpness, and direction from text: the model alone, as the text task has no planner; 30 cases,
    full mode) every `--eval-every` CPU-minutes, with the issue's goals drawn in;
  - `<state>` (default `runs/tiny_v2/state.pt`): the full state, AdamW moments included (not committed);
  - `--save-compact`: `<compact>` (default `<out>/train_state.pt`): bf16 weights, data/noise generators and the run
    record, no AdamW moments (a resume re-warms the learning rate), small enough to commit.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from vdemo import world
from vdemo.backends.tiny import bf16_flag
from vdemo.backends.tiny_v2 import WEIGHTS, save_v2_model
from vdemo.bakeoff import (
    MODE_WEIGHTS,
    BakeoffConfig,
    detected_shape,
    eval_cases,
    evaluate,
    one_object_spec,
    sample_grid,
    save_png,
    shape_from_text,
    shape_kept,
    stack_examples,
    to_u8,
    train_step,
)
from vdemo.config import ATTENTION_MODES
from vdemo.eval import read_direction
from vdemo.models.v2 import build
from vdemo.models.v2.latent import widen_input
from vdemo.strokes import drag_frames, stroke_heatmaps, strokes_from_paths
from vdemo.train import TrainConfig, example_from_clip, make_tokenizer, object_mask
from vdemo.world.detect import detect_objects

CANDIDATE = "A"
GOALS = {"shape_from_text": 0.9, "shape_kept": 0.9, "direction_from_text": 0.7}  # issue 13's goals for these rows
CHANCE = {"shape_from_text": 1 / 3, "shape_kept": 1 / 3, "direction_from_text": 1 / 9}  # 3 shapes; 8 directions + still


@dataclass(frozen=True)
class V2Config:
    out: str = "assets/tiny_v2"
    state: str = "runs/tiny_v2/state.pt"
    compact: str = ""  # "" = <out>/train_state.pt
    init: str = ""  # a bake-off state of candidate A to start from when no state exists yet
    minutes: float = 60.0  # CPU-minutes to train in this invocation
    threads: int = 1
    batch_size: int = 4  # clips per step at 8 frames; halved at 16 frames
    share_16: float = 0.3  # share of steps on 16-frame clips
    size: int = 128
    lr: float = 4e-4
    warmup_steps: int = 50
    ema_decay: float = 0.999
    # Depth maps for non-depth clips: 0.7 up to 249 CPU-min (v1's mix), then 0.15 (a depth map gives every frame's
    # silhouettes away, so at 0.7 shape from text and shape kept from frame 0 were barely trained: see the README).
    p_depth_other: float = 0.15
    reference: bool = True  # SVD-style first-frame latents for every frame (vdemo.models.v2.latent.reference_latents)
    # The motion-compensated reference experiment: this share of clips are one-object clips given frame 0, the true
    # motion as strokes (and the caption half the time) and, as reference latents, frame 0's object cut out and
    # dragged along a jittered copy of its path (`dragged_example`). 0 = the shipped model's mix.
    p_dragged: float = 0.0
    # Text-conditioned motion in the distance bias (`LatentConfig.velocity`); sticky: a state that has it keeps it.
    velocity: bool = False
    velocity_lr_scale: float = 30.0  # the velocity maps' learning rate, × --lr
    # Weight of the velocity maps' supervision by the clip's true motion (`vdemo.models.v2.latent.velocity_loss`);
    # 0 = learnt from the denoising loss alone.
    velocity_loss: float = 0.0
    ae_minutes: float = 24.0  # a fresh model trains its autoencoder first for this long (the bake-off's 20 %)
    eval_every: float = 30.0  # CPU-minutes
    ckpt_every: float = 5.0  # CPU-minutes
    cases: int = 30
    steps: int = 10
    guidance: float = 2.0
    bf16: bool = True
    seed: int = 0
    tiny: bool = False  # minute-scale model for tests
    save_compact: bool = False  # only write the compact resumable state from <state>, then exit
    diagnose: bool = False  # only print `conditioning_gain` of the model in <out>, then exit
    # Only write <out> as a model soup of two exported folders of this run, then exit (`soup`): soup_weight × A +
    # (1 − soup_weight) × B.
    soup_a: str = ""
    soup_b: str = ""
    soup_weight: float = 0.5

    @property
    def compact_path(self) -> Path:
        return Path(self.compact) if self.compact else Path(self.out) / "train_state.pt"

    def eval_config(self) -> BakeoffConfig:
        return BakeoffConfig(size=self.size, cases=self.cases, steps=self.steps, guidance=self.guidance,
                             bf16=self.bf16, tiny=self.tiny)


def parse_args(argv: list[str] | None) -> V2Config:
    parser = argparse.ArgumentParser(prog="python -m vdemo.train --arch v2", description=__doc__.split("\n\n")[0])
    for f in fields(V2Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":  # --bf16 left out: the app's choice for this CPU (bf16_flag)
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None if f.name == "bf16"
                                else f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    args = vars(parser.parse_args(argv))
    cfg = V2Config(**{**args, "bf16": bf16_flag(parser, args["bf16"])})
    if not 0.0 <= cfg.p_dragged <= 1.0:
        parser.error(f"--p-dragged must be in [0, 1], got {cfg.p_dragged}")
    if not 0.0 <= cfg.soup_weight <= 1.0:
        parser.error(f"--soup-weight must be in [0, 1], got {cfg.soup_weight}")
    if bool(cfg.soup_a) != bool(cfg.soup_b) or (cfg.soup_weight != V2Config.soup_weight and not cfg.soup_a):
        parser.error("--soup-a and --soup-b go together (with --soup-weight): the two exported folders to average")
    if cfg.soup_a and (cfg.save_compact or cfg.diagnose):
        parser.error("--soup-a/--soup-b only write a soup: run --save-compact or --diagnose on their own")
    if cfg.soup_a:
        given_out = any(a == "--out" or a.startswith("--out=") for a in (argv if argv is not None else sys.argv[1:]))
        resolved = Path(cfg.out).resolve()
        if not given_out or resolved in (Path(cfg.soup_a).resolve(), Path(cfg.soup_b).resolve()):
            parser.error("a soup needs its own --out folder, neither --soup-a nor --soup-b (the default, "
                         f"{V2Config.out}, is the shipped model)")
    for name in ("velocity_lr_scale", "velocity_loss", "minutes", "lr"):
        if not getattr(cfg, name) >= 0:  # also NaN
            parser.error(f"--{name.replace('_', '-')} must not be negative, got {getattr(cfg, name)}")
    return cfg


VELOCITY_PREFIX = "unet.velocity."


def add_velocity(saved: dict, model) -> bool:
    """Load-time surgery for a state saved before `velocity` was switched on: the model's zero-initialised velocity
    maps are added to the weights, the AdamW parameter list (their moments start at zero; the others keep theirs) and
    the EMA's shadow weights. The velocity parameters come last in `model.parameters()`, so every saved index still
    names the same parameter. Returns whether it added them; the model then computes exactly what the saved one did."""
    names = [k for k, _ in model.named_parameters()]
    new = [k for k in names if k.startswith(VELOCITY_PREFIX)]
    if not new or any(k in saved["model"] for k in new):
        return False
    if names[-len(new):] != new:
        raise ValueError("the velocity parameters must come last in model.parameters() to extend a saved state")
    params = dict(model.named_parameters())
    saved["model"].update({k: params[k].detach().clone() for k in new})
    if "opt" in saved:
        saved["opt"]["param_groups"].append({**saved["opt"]["param_groups"][-1],
                                             "params": list(range(len(names) - len(new), len(names)))})
    shadow = saved.get("ema", {}).get("shadow_params")
    if shadow is not None:
        saved["ema"]["shadow_params"] = list(shadow) + [params[k].detach().clone().float() for k in new]
    return True


def param_groups(model) -> list[dict]:
    """AdamW's groups: every parameter, then (with `velocity`) the velocity maps in a group of their own, so they can
    learn at a higher rate (`--velocity-lr-scale`): they start at zero inside a model that has long converged."""
    named = list(model.named_parameters())
    groups = [{"params": [p for k, p in named if not k.startswith(VELOCITY_PREFIX)]}]
    velocity = [p for k, p in named if k.startswith(VELOCITY_PREFIX)]
    return groups + ([{"params": velocity}] if velocity else [])


def split_velocity_group(opt_state: dict, model) -> None:
    """A saved AdamW state whose single group holds the velocity maps (as saved before they had a group of their own)
    -> the two groups of `param_groups`; every parameter's moments stay where they are (they are keyed by index)."""
    names = [k for k, _ in model.named_parameters()]
    velocity = [i for i, k in enumerate(names) if k.startswith(VELOCITY_PREFIX)]
    groups = opt_state["param_groups"]
    if velocity and len(groups) == 1:
        groups.append({**groups[0], "params": velocity})
        groups[0]["params"] = [i for i in groups[0]["params"] if i not in set(velocity)]


def make_batch(rng: np.random.Generator, batch_size: int, frames: int, size: int, tokenizer,
               train_cfg: TrainConfig, p_dragged: float = 0.0) -> dict:
    """Fresh clips of every world kind with v1's modality dropout (the bake-off's batch, all kinds); with
    `p_dragged` > 0 that share are `dragged_example`s, and the batch carries "dragged" (B,) and "reference_frames"
    (B, F, 3, S, S) in [-1, 1] (black where not dragged; unused there)."""
    dragged = rng.random(batch_size) < p_dragged if p_dragged > 0 else np.zeros(batch_size, bool)
    examples = []
    for d in dragged:
        if d:
            examples.append(dragged_example(rng, frames, size))
            continue
        clip = world.sample_clip(rng, frames, size)
        example = example_from_clip(clip, rng, train_cfg)
        examples.append({**example, "motion": motion_target(clip, example["caption"])})
    batch = stack_examples(examples, tokenizer)
    batch["motion"] = torch.from_numpy(np.stack([e["motion"] for e in examples]))  # (B, 2), NaN: no target
    if dragged.any():
        refs = np.stack([e.get("reference", np.zeros_like(e["frames"])) for e in examples]).astype(np.float32)
        batch["reference_frames"] = torch.from_numpy(refs / 127.5 - 1.0).permute(0, 1, 4, 2, 3).contiguous()
        batch["dragged"] = torch.from_numpy(dragged)
    return batch


DRAG_JITTER = 0.006  # sd of the reference path's random walk per frame, as a fraction of the side (0.8 px at 128)
DRAG_JITTER_MAX = 0.03  # the walk's bound (4 px at 128): a hand-drawn stroke is this far off the truth


def jittered_paths(paths, rng: np.random.Generator) -> list[np.ndarray]:
    """Each (F, 2) path plus a bounded random walk that starts at 0 (frame 0 stays where it is)."""
    out = []
    for path in paths:
        path = np.asarray(path, np.float64)
        walk = np.cumsum(rng.normal(0.0, DRAG_JITTER, path.shape), axis=0)
        walk -= walk[0]
        out.append(np.clip(path + np.clip(walk, -DRAG_JITTER_MAX, DRAG_JITTER_MAX), 0.0, 1.0))
    return out


def dragged_example(rng: np.random.Generator, frames: int, size: int) -> dict:
    """A one-object clip (straight or curved path) given frame 0, the true motion as strokes and the caption half the
    time, with "reference" (uint8): `drag_frames` along a jittered copy of the path (the stroke a user draws is off by
    a few pixels, so the model must take the shape from the reference and the place from the strokes)."""
    from vdemo.models.controls import control_tensors

    clip = world.make_clip(one_object_spec(rng, "objects" if rng.random() < 0.5 else "path"), frames, size)
    caption = clip.caption if rng.random() < 0.5 else ""
    strokes = strokes_from_paths(clip.paths, 0.1)
    controls, flags = control_tensors(frames, size, known={0: clip.frames[0]}, has_text=bool(caption),
                                      stroke_maps=stroke_heatmaps(strokes, frames, size))
    return {"frames": clip.frames, "caption": caption, "controls": controls, "flags": flags, "fg": object_mask(clip),
            "reference": clip_drag(clip, rng), "motion": motion_target(clip, caption)}


def motion_target(clip, caption: str) -> np.ndarray:
    """(2,) float32 x, y: the one object's displacement over the clip, in fractions of the side, for a captioned
    one-object clip of a kind whose caption names its motion (objects, path); 0 without a caption (no text, no
    motion: the unconditional half of guidance then contrasts the caption's motion with a still bias); NaN (no
    velocity target) for other captioned clips."""
    if not caption:
        return np.zeros(2, np.float32)
    if clip.kind not in ("objects", "path") or len(clip.paths) != 1:
        return np.full(2, np.nan, np.float32)
    return (clip.paths[0][-1] - clip.paths[0][0]).astype(np.float32)


def export(out: Path, model, ema: EMAModel, tokenizer, st: dict) -> None:
    """The EMA weights (fp16) + config + tokenizer: the folder the `tiny-v2` backend loads."""
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        save_v2_model(out, model, tokenizer, trained_cpu_minutes=round(st["cpu_s"] / 60, 1), trained_steps=st["step"])
    finally:
        ema.restore(model.parameters())


def soup(a: Path, b: Path, weight: float, out: Path) -> int:
    """A model soup (Wortsman et al. 2022; WiSE-FT's weight-space interpolation) of two exports of one run, B trained
    on from A: every tensor of <out> is weight × A + (1 − weight) × B, in B's dtype. Tensors only B has (e.g. the
    velocity maps added after A) are B's; config and tokenizer are B's, and the config records the soup. Returns how
    many tensors were averaged."""
    wa, wb = load_file(str(Path(a) / WEIGHTS)), load_file(str(Path(b) / WEIGHTS))
    if missing := sorted(set(wa) - set(wb)):
        raise ValueError(f"{b} lacks {len(missing)} of {a}'s tensors (e.g. {missing[0]}): not a later export of A")
    if wrong := [k for k in wa if wa[k].shape != wb[k].shape]:
        raise ValueError(f"{a} and {b} differ in the shape of {wrong[0]}: not exports of one architecture")
    if odd := [k for k in wa if not wa[k].is_floating_point() and not torch.equal(wa[k], wb[k])]:
        raise ValueError(f"{a} and {b} differ in the non-float tensor {odd[0]}: it cannot be averaged")
    mixed = {k: (weight * wa[k].float() + (1 - weight) * v.float()).to(v.dtype)
             if k in wa and v.is_floating_point() else v for k, v in wb.items()}
    config_a, config = (json.loads((Path(d) / "config.json").read_text()) for d in (a, b))
    config["soup"] = {"weight_a": weight, **{f"{name}_{key}": c.get(key) if key != "folder" else str(d)
                                             for name, c, d in (("a", config_a, a), ("b", config, b))
                                             for key in ("folder", "trained_cpu_minutes", "trained_steps")},
                      # the sources' weights by content: a folder is overwritten when a soup is shipped into it
                      **{f"{name}_sha256": hashlib.sha256((Path(d) / WEIGHTS).read_bytes()).hexdigest()
                         for name, d in (("a", a), ("b", b))},
                      "note": "trained_cpu_minutes and trained_steps above this entry are B's"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(mixed, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copytree(Path(b) / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    return len(wa)


def save_state(path: Path, model, opt, ema: EMAModel, rng, generator, st: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                "rng": rng.bit_generator.state, "generator": generator.get_state(), "st": st}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def save_compact(state_path: Path, dest: Path) -> int:
    """bf16 raw weights, the EMA's counters (its weights are the exported fp16 safetensors beside it), the generators
    and the run record; no AdamW moments. Returns its size in bytes."""
    saved = torch.load(state_path, map_location="cpu", weights_only=False)
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in saved["model"].items()}
    ema = {k: v for k, v in saved["ema"].items() if k not in ("shadow_params", "collected_params")}
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": half, "ema": ema, "rng": saved["rng"], "generator": saved["generator"], "st": saved["st"]},
               dest)
    return dest.stat().st_size


def write_curve(out: Path, st: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = st["rows"]
    if rows:
        with (out / "learning_curve.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[-1]))
            writer.writeheader()
            writer.writerows([{k: r.get(k, "") for k in rows[-1]} for r in rows])
    metrics = ("shape_from_text", "shape_kept", "edge_sharpness", "direction_from_text", "loss")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), dpi=80)
    for ax, metric in zip(axes, metrics):
        for weights, style, colour in (("raw", "o:", "C0"), ("ema", "o-", "C1")):
            pts = [(r["cpu_minutes"], r[metric]) for r in rows
                   if r.get("weights", "raw") == weights and r.get(metric, "") != ""]
            if pts:
                ax.plot(*zip(*pts), style, color=colour,
                        label="bake-off (raw weights)" if weights == "raw" else "long run (EMA)")
        for i, x in enumerate(st.get("mix_changes", [])):
            ax.axvline(x, color="k", ls="-.", lw=0.8, label="training mix or learning rate changed" if i == 0 else None)
        if metric in GOALS:
            ax.axhline(GOALS[metric], color="g", ls="--", lw=1, label="goal")
        if metric in CHANCE:
            ax.axhline(CHANCE[metric], color="grey", ls=":", lw=1, label="chance")
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("training CPU-minutes")
        if metric != "loss":
            ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png")
    plt.close(fig)


def train_v2(cfg: V2Config) -> dict:
    torch.set_num_threads(cfg.threads)
    out, state_path = Path(cfg.out), Path(cfg.state)
    tokenizer = make_tokenizer()
    torch.manual_seed(cfg.seed)
    source = next((p for p in (state_path, cfg.compact_path, Path(cfg.init) if cfg.init else None)
                   if p is not None and p.exists()), None)
    saved = torch.load(source, map_location="cpu", weights_only=False) if source is not None else None
    had_velocity = saved is not None and any(k.startswith(VELOCITY_PREFIX) for k in saved["model"])
    model = build(CANDIDATE, tiny=cfg.tiny, size=cfg.size, vocab_size=max(128, len(tokenizer)),
                  reference=cfg.reference, velocity=cfg.velocity or had_velocity)
    opt = torch.optim.AdamW(param_groups(model), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    st = {"cpu_s": 0.0, "step": 0, "rows": [], "losses": []}
    ema_state, warm_start = None, 0
    if saved is not None:
        widened = widen_input(saved["model"], model)
        if add_velocity(saved, model):
            print("[v2] text-conditioned velocity added to the distance bias (zero-initialised: same function)",
                  flush=True)
        model.load_state_dict(saved["model"])
        rng.bit_generator.state = saved["rng"]
        generator.set_state(saved["generator"])
        kept = ("cpu_s", "step", "rows", "losses", "p_depth_other", "p_dragged", "lr", "velocity", "velocity_lr_scale",
                "velocity_loss", "mix_changes")
        st = {**st, **{k: saved["st"][k] for k in kept if k in saved["st"]}}
        st["losses"] = st["losses"][-200:]
        if "opt" in saved and not widened:
            split_velocity_group(saved["opt"], model)
            opt.load_state_dict(saved["opt"])
        else:
            warm_start = st["step"]
        ema_state = saved.get("ema")
        if ema_state is not None and "shadow_params" not in ema_state:  # a compact state: the exported EMA weights
            # Its EMA is the exported model beside it (a fresh clone's `assets/tiny_v2/`), else the one in <out>.
            beside = next((f for f in (source.parent / WEIGHTS, out / WEIGHTS) if f.exists()), None)
            exported = load_file(str(beside)) if beside is not None else {}
            ema_state = {**ema_state, "shadow_params": [exported.get(k, p.detach()).float()
                                                        for k, p in model.named_parameters()]}
        if ema_state is not None and widened:
            names = [k for k, _ in model.named_parameters()]
            shadow = dict(zip(names, ema_state["shadow_params"]))
            widen_input(shadow, model)
            ema_state = {**ema_state, "shadow_params": [shadow[k] for k in names]}
        print(f"[v2] from {source}: step {st['step']}, {st['cpu_s'] / 60:.1f} CPU-min"
              f"{' (input widened for the reference latents: zero-initialised)' if widened else ''}"
              f"{'' if 'opt' in saved and not widened else ' (AdamW moments restart, learning rate re-warmed)'}",
              flush=True)
    model.velocity_weight = cfg.velocity_loss
    trainable = [p for p in model.parameters()]
    ema = EMAModel(trainable, decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    if ema_state is not None:
        ema.load_state_dict({**ema_state, "shadow_params": [p.float() for p in ema_state["shadow_params"]]})
    for key, before, what in (("p_depth_other", 0.7, "depth maps for non-depth clips"),
                              ("p_dragged", 0.0, "clips with a cut-and-drag reference"),
                              ("lr", V2Config.lr, "learning rate"),
                              ("velocity", False, "text-conditioned velocity in the distance bias"),
                              ("velocity_lr_scale", 1.0, "the velocity maps' learning-rate scale"),
                              ("velocity_loss", 0.0, "the velocity maps' supervision by the true motion")):
        value = model.cfg.velocity if key == "velocity" else getattr(cfg, key)
        if key in ("velocity_lr_scale", "velocity_loss") and not model.cfg.velocity:
            continue
        if st["step"] and st.get(key, before) != value:
            now = round(st["cpu_s"] / 60, 3)
            st["mix_changes"] = [x for x in st.get("mix_changes", []) if x != now] + [now]
            print(f"[v2] training mix: {what} {st.get(key, before)} -> {value} from here", flush=True)
        st[key] = value
    last_eval = max([r["cpu_minutes"] * 60 for r in st["rows"] if r.get("weights") == "ema"] or [st["cpu_s"]])
    train_cfg = TrainConfig(size=cfg.size, p_known=0.5, p_strokes=0.2, p_depth_other=cfg.p_depth_other)
    eval_cfg = cfg.eval_config()
    cases = eval_cases(cfg.cases, eval_cfg.frames, cfg.size)
    mode_p = np.asarray(MODE_WEIGHTS) / sum(MODE_WEIGHTS)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    end = st["cpu_s"] + cfg.minutes * 60
    last_ckpt = st["cpu_s"]
    print(f"[v2] {model.paper}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
          f"{cfg.threads} thread(s); training to {end / 60:.1f} CPU-min", flush=True)
    model.train()
    while not stop["flag"] and st["cpu_s"] < end:
        t0 = time.process_time()
        frames = 16 if rng.random() < cfg.share_16 else 8
        model.set_attention_mode(ATTENTION_MODES[int(rng.choice(len(ATTENTION_MODES), p=mode_p))])
        batch = make_batch(rng, cfg.batch_size if frames == 8 else max(1, cfg.batch_size // 2), frames, cfg.size,
                           tokenizer, train_cfg, cfg.p_dragged)
        for i, group in enumerate(opt.param_groups):
            scale = cfg.velocity_lr_scale if i == 1 else 1.0
            group["lr"] = scale * cfg.lr * min(1.0, (st["step"] + 1 - warm_start) / cfg.warmup_steps)
        progress = model.cfg.ae_share * min(1.0, st["cpu_s"] / (cfg.ae_minutes * 60))
        st["losses"] = st["losses"][-199:] + [train_step(model, opt, batch, generator, progress, cfg.bf16)]
        ema.step(model.parameters())
        st["step"] += 1
        st["cpu_s"] += time.process_time() - t0
        if st["step"] % 25 == 0:
            print(f"[v2] step {st['step']} loss {np.mean(st['losses'][-25:]):.4f} {st['cpu_s'] / 60:.2f} CPU-min",
                  flush=True)
        if st["cpu_s"] - last_eval >= cfg.eval_every * 60:
            last_eval = st["cpu_s"]
            evaluate_ema(model, ema, cases, tokenizer, eval_cfg, st, out)
        if st["cpu_s"] - last_ckpt >= cfg.ckpt_every * 60:
            last_ckpt = st["cpu_s"]
            save_state(state_path, model, opt, ema, rng, generator, st)
            export(out, model, ema, tokenizer, st)
    save_state(state_path, model, opt, ema, rng, generator, st)
    export(out, model, ema, tokenizer, st)
    print(f"[v2] saved step {st['step']} ({st['cpu_s'] / 60:.1f} CPU-min) to {state_path} and {out}", flush=True)
    return st


def direction_from_text(generated: list[np.ndarray], cases: list) -> float:
    """Share of caption-only clips whose detected object moves the caption's way (`vdemo.eval.read_direction`): the
    model alone, as the bake-off's eval gives the text task no planner."""
    hits = [read_direction([next(iter(detect_objects(f, max_objects=1)), None) for f in g]) == c.objects[0]["motion"]
            for g, c in zip(generated, cases)]
    return float(np.mean(hits))


def evaluate_ema(model, ema: EMAModel, cases, tokenizer, eval_cfg: BakeoffConfig, st: dict, out: Path) -> dict:
    """The bake-off's eval on the EMA weights; appends a row to st["rows"] and rewrites the curve and sample grid."""
    t0 = time.process_time()
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.eval()
    metrics, text, kept = evaluate(model, cases, tokenizer, eval_cfg)
    metrics["direction_from_text"] = direction_from_text(text, cases)
    model.train()
    ema.restore(model.parameters())
    row = {"candidate": CANDIDATE, "cpu_minutes": round(st["cpu_s"] / 60, 3), "step": st["step"],
           "loss": round(float(np.mean(st["losses"][-50:])), 5), **{k: round(v, 4) for k, v in metrics.items()},
           "cpu_s_per_step": round(st["cpu_s"] / max(st["step"], 1), 3),
           "eval_cpu_s": round(time.process_time() - t0, 1), "weights": "ema",
           "p_depth_other": st.get("p_depth_other", 0.7), "p_dragged": st.get("p_dragged", 0.0),
           "lr": st.get("lr", V2Config.lr), "velocity_lr_scale": st.get("velocity_lr_scale", ""),
           "velocity_loss": st.get("velocity_loss", "")}
    st["rows"].append(row)
    print(f"[v2] eval {json.dumps(row)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_curve(out, st)
    save_png(out / "samples_eval.png", sample_grid(text, kept, cases))
    return row


def _conditions(clips: list, tokenizer, size: int, names: tuple[str, ...]) -> dict[str, tuple]:
    """(ids, controls, flags) per named condition for the diagnosis's cases: "nothing" (all dropped), "caption",
    "frame0", "frame0+depth" (every frame's depth map too), "frame0+motion" (caption and the true trajectories as
    motion strokes too: everything but the later frames' appearance)."""
    from vdemo.models.controls import control_tensors
    from vdemo.models.tokenizer import encode_prompts
    from vdemo.models.v2.core import MAX_TOKENS, unconditional

    frames = clips[0].frames.shape[0]
    conds = {}
    for name in names:
        caption = name in ("caption", "frame0+motion")
        pairs = [control_tensors(frames, size, known=None if name in ("nothing", "caption") else {0: c.frames[0]},
                                 depth=c.depth if name == "frame0+depth" else None, has_text=caption,
                                 stroke_maps=stroke_heatmaps(strokes_from_paths(c.paths, 0.1), frames, size)
                                 if name == "frame0+motion" else None) for c in clips]
        cond = (encode_prompts(tokenizer, [c.caption if caption else "" for c in clips], MAX_TOKENS),
                torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))
        conds[name] = unconditional(*cond) if name == "nothing" else cond
    return conds


def _noised(model, clips: list, timesteps: tuple[int, ...], seed: int):
    """The clean latents of the clips and, per timestep, (t, z_t) with fixed noise."""
    from vdemo.models.v2.core import train_scheduler

    x0 = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    scheduler, generator = train_scheduler(), torch.Generator().manual_seed(seed)
    z0 = model.encode(x0)
    noised = []
    for t in timesteps:
        tt = torch.full((len(clips),), t)
        noised.append((tt, scheduler.add_noise(z0, torch.randn(z0.shape, generator=generator), tt)))
    return z0, noised


@torch.no_grad()
def conditioning_gain(model, tokenizer, cases: int = 12, timesteps: tuple[int, ...] = (400, 800, 950),
                      seed: int = 0) -> dict[str, list]:
    """How much frame 0 (+ its depth maps) tells the model about the later frames: the one-step x0 error in latent
    space (MSE per frame, frames 1.. averaged) at each noise level, for the bake-off's held-out shape-kept cases given
    nothing, frame 0 only, and frame 0 plus every frame's depth map. A model that carries frame 0 forward has
    `frame0` well below `nothing`; one that learned shapes only from depth maps has it near `nothing`."""
    clips = eval_cases(cases, 8, model.cfg.size)
    conds = _conditions(clips, tokenizer, model.cfg.size, ("nothing", "frame0", "frame0+depth"))
    model.eval().set_attention_mode("full")
    z0, noised = _noised(model, clips, timesteps, seed)
    out = {"t": list(timesteps), **{name: [] for name in conds}}
    for tt, zt in noised:
        for name, (i, c, f) in conds.items():
            out[name].append(float(((model.denoise(zt, tt, i, c, f) - z0)[:, 1:] ** 2).mean()))
    return out


@torch.no_grad()
def shape_by_noise(model, tokenizer, cases: int = 12, timesteps: tuple[int, ...] = (300, 500, 700, 850, 950),
                   seed: int = 0) -> dict[str, list]:
    """Where the shape is lost: the share of held-out cases whose *one-step* x0 prediction, decoded, shows the true
    shape in the last frame, per noise level, given the caption, frame 0, or frame 0 + caption + the true motion
    strokes. Sampling decides the shape at the noise levels where this falls towards chance (1/3)."""
    clips = eval_cases(cases, 8, model.cfg.size)
    conds = _conditions(clips, tokenizer, model.cfg.size, ("caption", "frame0", "frame0+motion"))
    model.eval().set_attention_mode("full")
    _, noised = _noised(model, clips, timesteps, seed)
    truth = [c.objects[0]["shape"] for c in clips]
    out = {"t": list(timesteps), **{name: [] for name in conds}}
    for tt, zt in noised:
        for name, (i, c, f) in conds.items():
            last = to_u8(model.decode(model.denoise(zt, tt, i, c, f)[:, -1:]))
            out[name].append(float(np.mean([detected_shape(x[0]) == s for x, s in zip(last, truth)])))
    return out


def clip_drag(clip, rng: np.random.Generator | None = None) -> np.ndarray:
    """`drag_frames` of the clip's frame 0 along its paths, true or (with `rng`) `jittered_paths`; frame 0 repeated
    when nothing can be dragged."""
    frames = len(clip.frames)
    paths = clip.paths if rng is None else jittered_paths(clip.paths, rng)
    dragged = drag_frames(clip.frames[0], strokes_from_paths(paths, 0.1), frames,
                          world.BACKGROUNDS[clip.meta["background"]])
    return np.repeat(clip.frames[:1], frames, 0) if dragged is None else dragged


def centre_error(generated: list[np.ndarray], clips: list) -> float:
    """Mean distance (px) between the largest detected object's centre in the last generated frame and the true
    path's end; a clip without a detected object counts as the frame's diagonal."""
    errors = []
    for g, c in zip(generated, clips):
        size = g.shape[1]
        found = detect_objects(g[-1], max_objects=1)
        if not found:
            errors.append(size * np.sqrt(2))
            continue
        centre = np.argwhere(found[0].mask).mean(0)[::-1]  # (x, y) px
        errors.append(float(np.hypot(*(centre - np.asarray(c.paths[0][-1]) * size))))
    return float(np.mean(errors))


@torch.no_grad()
def kept_given_motion(model, tokenizer, cases: int = 12, cfg: BakeoffConfig | None = None) -> dict[str, dict]:
    """Sampled clips (defaults: 10 steps, guidance 2, full mode) given frame 0 only (the eval's task), frame 0 +
    caption + the true motion strokes, and each of those with a motion-compensated reference (`clip_drag`'s frames,
    encoded, as the reference latents: no training, the shipped weights): the bake-off's `shape kept` and how far the
    last frame's object is from where the true path ends. Whether knowing where the object goes, or seeing it already
    there, is enough for the model to carry its shape."""
    cfg = cfg or BakeoffConfig(size=model.cfg.size)
    clips = eval_cases(cases, 8, model.cfg.size)
    conds = _conditions(clips, tokenizer, model.cfg.size, ("frame0", "frame0+motion"))
    dragged = torch.from_numpy(np.stack([clip_drag(c) for c in clips])).permute(0, 1, 4, 2, 3)
    reference = model.encode(dragged.float() / 127.5 - 1.0)
    model.eval().set_attention_mode("full")
    out = {}
    for name, (i, c, f) in conds.items():
        for ref_name, ref in (("", None), ("+dragged-reference", reference)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                clip = to_u8(model.generate(i, c, f, cfg.steps, cfg.guidance, torch.Generator().manual_seed(1234),
                                            reference=ref))
            out[name + ref_name] = {"shape_kept": shape_kept(clip, clips), "centre_error_px": centre_error(clip, clips)}
    return out


SWEEP = ((10, 2.0, 0.0), (10, 1.0, 0.0), (10, 4.0, 0.0), (25, 2.0, 0.0), (25, 2.0, 1.0))  # (steps, guidance, eta)


@torch.no_grad()
def sampler_sweep(model, tokenizer, cases: int = 9, configs=SWEEP, bf16: bool = True) -> list[dict]:
    """The bake-off's shape figures under other sampler settings (DDIM steps, guidance, eta = 1 for ancestral
    sampling): whether the sampler, not the model, is what loses the shape. The first config is the default."""
    clips = eval_cases(cases, 8, model.cfg.size)
    conds = _conditions(clips, tokenizer, model.cfg.size, ("caption", "frame0"))
    model.eval().set_attention_mode("full")
    rows = []
    for steps, guidance, eta in configs:
        out = {}
        for name, (i, c, f) in conds.items():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                generator = torch.Generator().manual_seed(1234)
                out[name] = to_u8(model.generate(i, c, f, steps, guidance, generator, eta=eta))
        rows.append({"steps": steps, "guidance": guidance, "eta": eta,
                     "shape_from_text": shape_from_text(out["caption"], clips),
                     "shape_kept": shape_kept(out["frame0"], clips)})
    return rows


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    if cfg.diagnose:
        from vdemo.backends.tiny_v2 import load_v2_model
        from vdemo.models.tokenizer import load_tokenizer

        if not (Path(cfg.out) / "config.json").exists():
            raise SystemExit(f"error: no v2 model in {cfg.out} (config.json missing); --out names the folder "
                             f"`python -m vdemo.train --arch v2` writes")
        torch.set_num_threads(cfg.threads)
        model, tokenizer = load_v2_model(Path(cfg.out)), load_tokenizer(Path(cfg.out) / "tokenizer")
        print(f"[v2] one-step x0 error of frames 1.. (latent MSE), {cfg.out}, held-out shape-kept cases:")
        n = min(12, cfg.cases)
        for name, errors in conditioning_gain(model, tokenizer, cases=n).items():
            print(f"  {name:>13}: " + "  ".join(f"{e:>7.4f}" if name != "t" else f"{e:>7}" for e in errors))
        print("[v2] last frame's shape right in the one-step x0 prediction (share of cases):")
        for name, shares in shape_by_noise(model, tokenizer, cases=n).items():
            print(f"  {name:>13}: " + "  ".join(f"{e:>7.2f}" if name != "t" else f"{e:>7}" for e in shares))
        kept = kept_given_motion(model, tokenizer, cases=n, cfg=cfg.eval_config())
        print("[v2] sampled clips: shape kept; last frame's object centre off the true path's end:")
        for name, row in kept.items():
            print(f"  {name:>35}: kept {row['shape_kept']:.2f}, off by {row['centre_error_px']:.1f} px")
        print("[v2] the bake-off's shape figures under other sampler settings (first: the default):")
        for row in sampler_sweep(model, tokenizer, cases=min(9, cfg.cases), bf16=cfg.bf16):
            print(f"  DDIM {row['steps']:>2} steps, guidance {row['guidance']:.0f}, eta {row['eta']:.0f}: "
                  f"shape from text {row['shape_from_text']:.2f}, shape kept {row['shape_kept']:.2f}")
        return
    if cfg.soup_a:
        try:
            count = soup(Path(cfg.soup_a), Path(cfg.soup_b), cfg.soup_weight, Path(cfg.out))
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        print(f"[v2] soup: {cfg.soup_weight} × {cfg.soup_a} + {1 - cfg.soup_weight:g} × {cfg.soup_b} "
              f"({count} tensors averaged) -> {cfg.out}")
        return
    if cfg.save_compact:
        size = save_compact(Path(cfg.state), cfg.compact_path)
        print(f"[v2] compact resumable state: {cfg.compact_path} ({size / 2**20:.1f} MiB)")
        return
    train_v2(cfg)


if __name__ == "__main__":
    main()
