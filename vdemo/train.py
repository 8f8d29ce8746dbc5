"""Train the built-in `tiny` video diffusion model on the procedural synthetic world.

    python -m vdemo.train --minutes 60                     # resumes from assets/tiny/train_state.pt if present
    nohup python -m vdemo.train --minutes 170 > runs/train.log 2>&1 &
    python -m vdemo.train --planner --threads 1             # only the layout planner (~2 min) -> <out>/planner/

Every step draws fresh clips from `vdemo.world` (no dataset on disk), with modality dropout so that any subset of
{text, known frames, pose, depth, strokes} can condition the model, and an all-dropped share for classifier-free
guidance. The attention mode is sampled per step so that every mode gives sensible videos. x0-prediction ("sample") on
diffusers' DDPM cosine schedule, the loss weighted like v-prediction's but capped (min(SNR + 1, 5), Hang et al. 2023's
min-SNR), foreground-weighted MSE, AdamW, EMA (diffusers' EMAModel).

Checkpointing (overwritten in place, never a new file per run):
  - `<out>/` (default `assets/tiny/`): the EMA weights in fp16 safetensors + config + tokenizer — what the app loads;
  - `<state>` (default `assets/tiny/train_state.pt`): raw weights (fp16), Adam moments (bf16), EMA step, data RNG —
    small enough to commit, so the next session resumes where this one stopped.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from vdemo import world
from vdemo.backends.tiny import bf16_flag
from vdemo.config import ATTENTION_MODES
from vdemo.models.controls import control_tensors
from vdemo.models.tiny_unet import TinyVideoUNet
from vdemo.models.tokenizer import build_tokenizer, encode_prompts
from vdemo.samplers import default_scheduler_config
from vdemo.strokes import stroke_heatmaps, strokes_from_paths


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; the CLI flags mirror these names."""

    out: str = "assets/tiny"
    state: str = "assets/tiny/train_state.pt"
    log: str = "runs/tiny/log.csv"
    minutes: float = 60.0
    max_steps: int = 1_000_000
    batch_size: int = 8  # clips per step at 8 frames; halved at 16 frames
    size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    resume_warmup_steps: int = 100
    bf16: bool = True  # autocast to bfloat16 (1.7x faster on AVX512-BF16 CPUs); the CLI's default: bf16_flag
    ema_decay: float = 0.999
    fg_weight: float = 4.0
    p_drop_all: float = 0.1
    p_drop_text: float = 0.25
    # Shares of clips given known frames (image-to-video : extension : in-betweening = 7 : 2 : 1) and, for object and
    # path clips, strokes. Both give the layout away; only clips without them teach the layout from a caption alone.
    p_known: float = 0.3
    p_strokes: float = 0.3
    # Shares of clips given their pose / depth maps. Every world clip has a depth map, and a depth map gives away each
    # object's silhouette and place in every frame: given to most object clips, it lets a model skip learning shapes
    # from a caption or from frame 0 (issue 13's diagnosis). `p_depth_other` is the share for clips that are not depth
    # scenes (v1 trained with 0.7 everywhere).
    p_pose: float = 0.7
    p_depth: float = 0.7
    p_depth_other: float = 0.7
    ckpt_every_s: float = 300.0
    seed: int = 0
    threads: int = 0  # 0 = torch default
    tiny: bool = False  # a minute-scale model for tests
    channels: tuple[int, int, int] = (64, 128, 192)
    prediction: str = "sample"  # what the model predicts: sample (x0), v_prediction or epsilon
    snr_cap: float = 5.0  # x0 loss weight min(SNR + 1, snr_cap); SNR + 1 alone is v-prediction's weighting
    position_embedding: bool = True  # 2D token positions before every attention block
    distance_bias: bool = True  # learned per-head attention bias by query-key distance (vdemo.attention.DistanceBias)
    frame_conditioning: bool = True  # per-frame MLP of (clip conditioning, frame time) in the time embedding
    # How often each attention mode (config.ATTENTION_MODES order: spatial, temporal, full, causal, sparse_causal) is
    # drawn per step: every mode is trained, the frame-mixing ones more (only they can learn coherent motion).
    mode_weights: tuple[float, ...] = (1.0, 1.5, 3.0, 2.5, 2.0)
    # Share of clips whose timestep is drawn from [high_noise_from, T) instead of [0, T). Large flat objects stay
    # visible in one frame down to t ≈ 850; only above it does a frame's layout (where the object is) depend on the
    # other frames, so that is where frame-mixing attention is learned (runs/diag: x0 MSE per mode and t).
    high_noise_frac: float = 0.3
    high_noise_from: int = 850
    planner: bool = False  # train only the layout planner (vdemo.train_planner, ~2 min) into <out>/planner
    planner_steps: int = 3000

    def __post_init__(self) -> None:
        if self.planner_steps < 1:
            raise ValueError(f"planner_steps must be at least 1, got {self.planner_steps}")
        for name in ("p_known", "p_strokes", "p_drop_all", "p_drop_text", "p_pose", "p_depth", "p_depth_other"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.mode_weights) != len(ATTENTION_MODES) or min(self.mode_weights) <= 0:
            raise ValueError(f"mode_weights needs {len(ATTENTION_MODES)} positive weights, got {self.mode_weights}")
        if not 0.0 <= self.high_noise_frac <= 1.0:
            raise ValueError(f"high_noise_frac must be in [0, 1], got {self.high_noise_frac}")

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> TrainConfig:
        parser = argparse.ArgumentParser(prog="python -m vdemo.train", description=__doc__.split("\n\n")[0])
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":  # --bf16 left out: the app's choice for this CPU (bf16_flag)
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None if f.name == "bf16"
                                    else f.default)
            elif f.name == "channels":
                parser.add_argument(flag, type=int, nargs=3, default=list(f.default))
            elif f.name == "mode_weights":
                parser.add_argument(flag, type=float, nargs=len(ATTENTION_MODES), default=list(f.default))
            else:
                parser.add_argument(flag, type=type(f.default), default=f.default)
        args = vars(parser.parse_args(argv))
        args["channels"], args["mode_weights"] = tuple(args["channels"]), tuple(args["mode_weights"])
        args["bf16"] = bf16_flag(parser, args["bf16"])
        return cls(**args)


def max_tokens() -> int:
    """Longest caption of the grammar is 19 words + [CLS]; a little headroom for user prompts."""
    return 24


def new_model(cfg: TrainConfig, vocab_size: int) -> TinyVideoUNet:
    if cfg.tiny:
        return TinyVideoUNet(vocab_size=vocab_size, channels=(16, 32, 32), attention_head_dim=16, temb_dim=64,
                             norm_groups=8, text_dim=32, text_layers=1, max_tokens=max_tokens(),
                             prediction_type=cfg.prediction, position_embedding=cfg.position_embedding,
                             distance_bias=cfg.distance_bias, frame_conditioning=cfg.frame_conditioning)
    return TinyVideoUNet(vocab_size=vocab_size, channels=cfg.channels, max_tokens=max_tokens(),
                         prediction_type=cfg.prediction, position_embedding=cfg.position_embedding,
                         distance_bias=cfg.distance_bias, frame_conditioning=cfg.frame_conditioning)


def make_tokenizer():
    return build_tokenizer(world.VOCAB, max_tokens())


def example_from_clip(clip, rng: np.random.Generator, cfg: TrainConfig) -> dict:
    """One training example with modality dropout: which conditions the model sees for this clip."""
    num_frames, size = clip.frames.shape[0], clip.frames.shape[1]
    drop_all = rng.random() < cfg.p_drop_all
    caption = "" if drop_all or rng.random() < cfg.p_drop_text else clip.caption
    known = None
    if not drop_all:
        u = rng.random() / cfg.p_known if cfg.p_known > 0 else 1.0  # uniform in [0, 1) when known frames are given
        if u < 0.7:  # image-to-video
            known = {0: clip.frames[0]}
        elif u < 0.9:  # extension: the first k frames come from the previous clip
            k = int(rng.integers(1, max(2, num_frames // 4) + 1))
            known = {i: clip.frames[i] for i in range(k)}
        elif u < 1.0:  # in-betweening
            known = {0: clip.frames[0], num_frames - 1: clip.frames[-1]}
    pose = clip.pose if (clip.pose is not None and not drop_all and rng.random() < cfg.p_pose) else None
    p_depth = cfg.p_depth if clip.kind == "depth" else cfg.p_depth_other
    depth = clip.depth if (clip.depth is not None and not drop_all and rng.random() < p_depth) else None
    stroke_maps = None
    if clip.paths and clip.kind in ("objects", "path") and not drop_all and rng.random() < cfg.p_strokes:
        chosen = [p for p in clip.paths if rng.random() < 0.8] or clip.paths[:1]
        stroke_maps = stroke_heatmaps(strokes_from_paths(chosen, 0.1), num_frames, size)
    controls, flags = control_tensors(num_frames, size, known=known, pose=pose, depth=depth,
                                      stroke_maps=stroke_maps, has_text=bool(caption))
    return {"frames": clip.frames, "caption": caption, "controls": controls, "flags": flags, "fg": object_mask(clip)}


def object_mask(clip) -> np.ndarray:
    """(F, S, S) float32: 1 where a frame differs from the clip's background by more than 24/255 (the loss weight)."""
    bg = np.array(world.BACKGROUNDS[clip.meta["background"]], np.int16)
    return (np.abs(clip.frames.astype(np.int16) - bg).max(-1) > 24).astype(np.float32)


def make_batch(rng: np.random.Generator, batch_size: int, num_frames: int, cfg: TrainConfig, tokenizer) -> dict:
    examples = [example_from_clip(world.sample_clip(rng, num_frames=num_frames, size=cfg.size), rng, cfg)
                for _ in range(batch_size)]
    frames = np.stack([e["frames"] for e in examples]).astype(np.float32) / 127.5 - 1.0  # (B, F, S, S, 3)
    return {
        "x0": torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous(),  # (B, F, 3, S, S)
        "ids": encode_prompts(tokenizer, [e["caption"] for e in examples], max_tokens()),
        "controls": torch.from_numpy(np.stack([e["controls"] for e in examples])),  # (B, F, 9, S, S)
        "flags": torch.from_numpy(np.stack([e["flags"] for e in examples])),  # (B, 5)
        "fg": torch.from_numpy(np.stack([e["fg"] for e in examples]))[:, :, None],  # (B, F, 1, S, S)
    }


def sample_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator, high_noise_frac: float = 0.0,
                     high_noise_from: int = 850) -> torch.Tensor:
    """n training timesteps: uniform, except a `high_noise_frac` share drawn uniformly from [high_noise_from, T)."""
    t = torch.randint(0, num_train_timesteps, (n,), generator=generator)
    if high_noise_frac > 0:
        high = torch.randint(min(high_noise_from, num_train_timesteps - 1), num_train_timesteps, (n,),
                             generator=generator)
        t = torch.where(torch.rand(n, generator=generator) < high_noise_frac, high, t)
    return t


def diffusion_loss(model: TinyVideoUNet, scheduler: DDPMScheduler, batch: dict, fg_weight: float,
                   generator: torch.Generator, snr_cap: float = 5.0, high_noise_frac: float = 0.0,
                   high_noise_from: int = 850) -> torch.Tensor:
    """Foreground-weighted MSE on the model's own target (x0, v or ε); object pixels weighted up.

    For x0 ("sample") the per-clip weight is min(SNR + 1, snr_cap): v-prediction's implicit weighting (its MSE is the
    x0 MSE times SNR + 1) without the blow-up at low noise. Timesteps: `sample_timesteps`.
    """
    x0 = batch["x0"]
    noise = torch.randn(x0.shape, generator=generator)
    t = sample_timesteps(x0.shape[0], scheduler.config.num_train_timesteps, generator, high_noise_frac,
                         high_noise_from)
    xt = scheduler.add_noise(x0, noise, t)
    prediction = model.config.prediction_type
    if prediction == "sample":
        target = x0
        alpha_bar = scheduler.alphas_cumprod[t].float()
        clip_weight = (1.0 / (1.0 - alpha_bar)).clamp(max=snr_cap).reshape(-1, 1, 1, 1, 1)
    else:
        target = scheduler.get_velocity(x0, noise, t) if prediction == "v_prediction" else noise
        clip_weight = torch.ones(x0.shape[0], 1, 1, 1, 1)
    tokens, pooled = model.encode_text(batch["ids"])
    pred = model(xt, t, tokens, pooled, batch["controls"], batch["flags"]).float()
    weight = 1.0 + fg_weight * batch["fg"]
    return (clip_weight * weight * (pred - target) ** 2).mean() / weight.mean()


WEIGHTS = "diffusion_pytorch_model.safetensors"
# Layers a checkpoint may lack: zero-initialised, so they start as the identity.
NEW_LAYER_PREFIXES = ("pos_proj.", "pos_bias.", "frame_cond.")


def load_weights(model: TinyVideoUNet, state_dict: dict) -> list[str]:
    """Load a checkpoint into `model`; returns the keys it lacked, which may only be zero-initialised new layers."""
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
    wrong = unexpected + [k for k in missing if not k.startswith(NEW_LAYER_PREFIXES)]
    if wrong:
        raise RuntimeError(f"checkpoint does not match the model: {', '.join(wrong[:5])}")
    return missing


def switch_parameterisation(model: TinyVideoUNet, old: str, new: str) -> None:
    """Resume a v-prediction state as an x0 ("sample") model: negate the output layer.

    At high noise v = √ᾱ·ε − √(1−ᾱ)·x0 ≈ −x0, so the negated head starts as a fair x0 predictor where the layout of the
    clip is decided; fine-tuning fixes the rest. Other switches keep the weights as they are.
    """
    model.register_to_config(prediction_type=new)
    if old == "v_prediction" and new == "sample":
        with torch.no_grad():
            model.conv_out.weight.neg_()
            model.conv_out.bias.neg_()


def save_state(path: Path, model, ema: EMAModel, step: int, rng: np.random.Generator, elapsed_s: float) -> None:
    """Small resumable state (~2 bytes/parameter): fp16 raw weights, EMA step, data RNG, elapsed time.

    Adam's moments are not kept (they would triple the file); a resumed run rebuilds them under a short learning-rate
    warm-up (`resume_warmup_steps`). The EMA weights themselves are the exported model in `out`.
    """
    state = {
        "model": {k: v.half() for k, v in model.state_dict().items()},
        "ema_step": ema.optimization_step,
        "step": step,
        "elapsed_s": elapsed_s,
        "rng": rng.bit_generator.state,
        "config": dict(model.config),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def export_ema(out: Path, model: TinyVideoUNet, ema: EMAModel, tokenizer) -> None:
    """Write what the app loads: EMA weights (fp16 safetensors) + config + tokenizer."""
    shipped = copy.deepcopy(model)
    ema.copy_to(shipped.parameters())
    shipped.to(torch.float16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")


def train(cfg: TrainConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out, state_path, log_path = Path(cfg.out), Path(cfg.state), Path(cfg.log)
    out.mkdir(parents=True, exist_ok=True)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    scheduler = DDPMScheduler.from_config(default_scheduler_config())

    torch.manual_seed(cfg.seed)
    model = new_model(cfg, vocab_size=max(128, len(tokenizer)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    rng = np.random.default_rng(cfg.seed)
    step, elapsed_prev = 0, 0.0
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        added = load_weights(model, state["model"])
        step, elapsed_prev = state["step"], state["elapsed_s"]
        rng.bit_generator.state = state["rng"]
        old_prediction = state["config"].get("prediction_type", "v_prediction")
        if old_prediction != cfg.prediction:  # restart the EMA from the converted weights
            switch_parameterisation(model, old_prediction, cfg.prediction)
            ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
            print(f"switched the model from {old_prediction} to {cfg.prediction} at step {step}", flush=True)
        else:
            ema_source = model
            if (out / WEIGHTS).exists():
                ema_source = new_model(cfg, vocab_size=model.config.vocab_size)
                ema_missing = load_weights(ema_source, load_file(out / WEIGHTS))
                if ema_missing:  # new layers: the EMA starts from the model's own init (both halves of an MLP agree)
                    own = model.state_dict()
                    ema_source.load_state_dict({k: own[k] for k in ema_missing}, strict=False)
            ema = EMAModel(ema_source.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
            ema.optimization_step = state["ema_step"]
        if added:
            print(f"new layers start at zero: {', '.join(sorted({k.rsplit('.', 2)[0] for k in added}))}", flush=True)
        print(f"resumed from {state_path} at step {step} ({elapsed_prev / 3600:.2f} h trained)", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; threads {torch.get_num_threads()}", flush=True)

    mode_p = np.asarray(cfg.mode_weights, float) / sum(cfg.mode_weights)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    gen = torch.Generator().manual_seed(cfg.seed + step)
    start = time.time()
    last_ckpt = start
    new_log = not log_path.exists()
    log_file = log_path.open("a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["step", "loss", "lr", "frames", "mode", "s_per_step", "hours"])
    losses: list[float] = []
    first_step = step
    while not stop["flag"] and step < cfg.max_steps and time.time() - start < cfg.minutes * 60:
        t0 = time.time()
        num_frames = 8 if rng.random() < 0.7 else 16
        batch_size = cfg.batch_size if num_frames == 8 else max(1, cfg.batch_size // 2)
        mode = ATTENTION_MODES[int(rng.choice(len(ATTENTION_MODES), p=mode_p))]
        model.set_attention_mode(mode)
        batch = make_batch(rng, batch_size, num_frames, cfg, tokenizer)
        warm = cfg.warmup_steps if first_step == 0 else cfg.resume_warmup_steps
        lr = cfg.lr * min(1.0, (step - first_step + 1) / warm)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = diffusion_loss(model, scheduler, batch, cfg.fg_weight, gen, cfg.snr_cap, cfg.high_noise_frac,
                                  cfg.high_noise_from)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        step += 1
        losses.append(loss.item())
        dt = time.time() - t0
        hours = (elapsed_prev + time.time() - start) / 3600
        writer.writerow([step, f"{loss.item():.5f}", f"{lr:.2e}", num_frames, mode, f"{dt:.3f}", f"{hours:.4f}"])
        if step % 50 == 0:
            log_file.flush()
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} {dt:.2f}s/step {hours:.2f}h", flush=True)
        if time.time() - last_ckpt > cfg.ckpt_every_s:
            save_state(state_path, model, ema, step, rng, elapsed_prev + time.time() - start)
            export_ema(out, model, ema, tokenizer)
            last_ckpt = time.time()
            print(f"checkpoint at step {step}", flush=True)
    save_state(state_path, model, ema, step, rng, elapsed_prev + time.time() - start)
    export_ema(out, model, ema, tokenizer)
    log_file.close()
    print(f"saved step {step} to {out} and {state_path}", flush=True)
    return {"steps": step - first_step, "total_steps": step, "loss_last": float(np.mean(losses[-20:])) if losses
            else math.nan}


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--arch", choices=("v1", "v2"), default="v1")
    arch, argv = pre.parse_known_args(argv)
    if arch.arch == "v2":  # the v2 model's long run (vdemo.train_v2) has its own flags
        from vdemo.train_v2 import main as main_v2

        main_v2(argv)
        return
    try:
        cfg = TrainConfig.from_args(argv)
    except ValueError as err:
        raise SystemExit(f"python -m vdemo.train: error: {err}") from None
    if cfg.planner:
        from vdemo.models.planner import PLANNER_DIR
        from vdemo.train_planner import train_planner

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        train_planner(Path(cfg.out) / PLANNER_DIR, make_tokenizer(), max_tokens(), steps=cfg.planner_steps,
                      examples=min(60_000, max(4_000, 20 * cfg.planner_steps)), seed=cfg.seed)
        print(f"wrote {Path(cfg.out) / PLANNER_DIR}")
        return
    train(cfg)


if __name__ == "__main__":
    main()
