"""Bake-off of the v2 built-in model candidates: same data, same CPU budget, same held-out eval; choose by measurement.

    python -m vdemo.bakeoff --candidates A B D --minutes 25 --threads 1 --out runs/bakeoff
    nohup python -m vdemo.bakeoff --candidates D A B --minutes 25 --threads 1 --out runs/bakeoff \
        --assets assets/bakeoff > runs/bakeoff/log.txt 2>&1 &

Each candidate (`vdemo.models.v2`) trains one after another for `--minutes` of *process CPU time*
(`time.process_time()`, threads pinned with `torch.set_num_threads`), counting everything its training does: drawing
and rendering world clips, its autoencoder stage (A), both of its stages (B). Evaluation time is measured but not
counted. Every `--eval-every` CPU-minutes (and at the end) it is evaluated in `full` attention mode on FIXED held-out
world clips (single-object scenes from seeds no training draw uses, balanced over the three shapes, 128 px, 8 frames):

- shape from text: generate from the caption alone; the shape of the largest object the world's detector
  (`vdemo.world.detect`, bounding-box fill ratio) finds in the LAST frame must be the caption's shape (none = wrong);
- shape kept: give frame 0 (known frame + mask, no text) and generate the rest; the last frame's detected shape must
  be the one detected in frame 0;
- edge sharpness: on the shape-kept clips, the mean Sobel gradient magnitude on a 3-px band around each generated
  frame's detected object (frames 1..F-1), divided by the same on the ground-truth clip, capped at 1 per clip
  (1 = as sharp as the renderer; a frame without an object counts 0).

At the end the shape-kept test is also run in every attention mode, and one 16-frame clip is timed in float32.
Writes `<out>/metrics.csv`, `<out>/curves.png`, `<out>/grid_<X>.png` (rows: text cases, then shape-kept cases with
ground truth beneath each), `<out>/summary.json` naming the winner by WINNER_RULE and `<out>/results.md` (the table).
Resumable: `<out>/<X>/state.pt`; `--report-only` rewrites the reports (and `--assets`) from those states.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from vdemo import world
from vdemo.backends.tiny import bf16_flag
from vdemo.config import ATTENTION_MODES
from vdemo.models.controls import control_tensors
from vdemo.models.tokenizer import encode_prompts
from vdemo.models.v2 import build
from vdemo.models.v2.core import MAX_TOKENS
from vdemo.train import TrainConfig, example_from_clip, make_tokenizer
from vdemo.world.detect import detect_objects

WINNER_RULE = ("highest mean of shape-from-text and shape-kept at the final eval; if the best two are within one "
               "case (1 / cases), the higher edge sharpness wins")
TRAIN_KINDS = ("objects", "objects", "path")  # what the eval measures; person and depth scenes are left out here
MODE_WEIGHTS = (1.0, 1.5, 3.0, 2.5, 2.0)  # v1's: spatial, temporal, full, causal, sparse_causal
EVAL_SEED = 10_000_000  # held-out cases come from seeds far from every training seed


@dataclass(frozen=True)
class BakeoffConfig:
    candidates: tuple[str, ...] = ("D", "A", "B")
    minutes: float = 25.0
    threads: int = 1
    out: str = "runs/bakeoff"
    assets: str = ""  # copy the small artefacts here after every eval ("" = do not)
    eval_every: float = 5.0  # CPU-minutes
    batch_size: int = 4
    frames: int = 8
    size: int = 128
    lr: float = 4e-4
    warmup_steps: int = 50
    cases: int = 9
    steps: int = 10
    guidance: float = 2.0
    bf16: bool = True
    seed: int = 0
    tiny: bool = False  # minute-scale models (tests)


# ------------------------------------------------------------------------------------------------ eval cases
def one_object_spec(rng: np.random.Generator, kind: str = "objects", shape: str | None = None) -> dict:
    """The first spec of `kind` drawn from `rng` with exactly one object (of `shape`, when given)."""
    while True:
        spec = world.sample_spec(rng, kind)
        if len(spec["objects"]) == 1 and shape in (None, spec["objects"][0]["shape"]):
            return spec


def eval_cases(n: int, frames: int = 8, size: int = 128) -> list[world.Clip]:
    """n fixed held-out single-object clips, shapes in turn circle, square, triangle."""
    return [world.make_clip(one_object_spec(np.random.default_rng(EVAL_SEED + 7919 * i), "objects",
                                            world.SHAPES[i % len(world.SHAPES)]), frames, size) for i in range(n)]


# ------------------------------------------------------------------------------------------------ metrics
def detected_shape(frame_u8: np.ndarray) -> str | None:
    """The shape of the largest object the world's detector finds in one (H, W, 3) uint8 frame, or None."""
    found = detect_objects(frame_u8, max_objects=1)
    return found[0].shape if found else None


def shape_from_text(generated: list[np.ndarray], cases: list[world.Clip]) -> float:
    """Share of clips (F, H, W, 3) uint8 whose last frame shows the caption's shape."""
    return float(np.mean([detected_shape(g[-1]) == c.objects[0]["shape"] for g, c in zip(generated, cases)]))


def shape_kept(generated: list[np.ndarray], cases: list[world.Clip]) -> float:
    """Share of clips whose last frame shows the shape detected in the given frame 0."""
    return float(np.mean([detected_shape(g[-1]) == detected_shape(c.frames[0]) for g, c in zip(generated, cases)]))


def shape_breakdown(generated: list[np.ndarray], cases: list[world.Clip], task: str) -> dict:
    """Where the shape rows fail, per shape the case asks for: for task "text" the share of clips whose last frame
    shows the caption's shape, for "kept" the share showing frame 0's (what `shape_from_text` / `shape_kept` average),
    and what the detector read instead ("none": no object found)."""
    right: dict[str, list[bool]] = {shape: [] for shape in world.SHAPES}
    read_as: dict[str, dict[str, int]] = {}
    for g, c in zip(generated, cases):
        asked = (c.objects[0]["shape"] if task == "text" else detected_shape(c.frames[0])) or "none"
        seen = detected_shape(g[-1]) or "none"
        right.setdefault(asked, []).append(seen == asked)
        if seen != asked:
            counts = read_as.setdefault(asked, {})
            counts[seen] = counts.get(seen, 0) + 1
    return {shape: {"right": round(float(np.mean(r)), 4) if r else None, "cases": len(r),
                    "read_as": read_as.get(shape, {})} for shape, r in right.items()}


def shape_kept_per_frame(generated: list[np.ndarray], cases: list[world.Clip]) -> list[float]:
    """Share of clips whose frame i shows the shape detected in the given frame 0, for every frame i: when the
    shape is lost."""
    first = [detected_shape(c.frames[0]) for c in cases]
    frames = min(g.shape[0] for g in generated)
    return [round(float(np.mean([detected_shape(g[i]) == f for g, f in zip(generated, first)])), 4)
            for i in range(frames)]


def edge_strength(frame_u8: np.ndarray) -> float | None:
    """Mean Sobel gradient magnitude (grey, [0, 1] units) on a 3-px band around the largest object; None if none."""
    found = detect_objects(frame_u8, max_objects=1)
    if not found:
        return None
    mask = found[0].mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    band = (cv2.dilate(mask, kernel) - cv2.erode(mask, kernel)).astype(bool)
    grey = frame_u8.astype(np.float32).mean(-1) / 255.0
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    return float(magnitude[band].mean()) if band.any() else None


def edge_sharpness(generated: list[np.ndarray], cases: list[world.Clip]) -> float:
    """Mean over clips of min(1, mean edge strength of frames 1..F-1 / the ground truth's over the same frames);
    a frame without an object counts 0."""
    ratios = []
    for g, c in zip(generated, cases):
        ref = np.mean([s for s in (edge_strength(f) for f in c.frames[1:]) if s is not None])
        mean = np.mean([edge_strength(f) or 0.0 for f in g[1:]])
        ratios.append(min(1.0, float(mean / ref)))
    return float(np.mean(ratios))


def to_u8(clips: torch.Tensor) -> list[np.ndarray]:
    """(B, F, 3, H, W) in [-1, 1] -> B arrays (F, H, W, 3) uint8."""
    x = ((clips.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
    return list(x.numpy())


# ------------------------------------------------------------------------------------------------ generation
def _conditioning(cases: list[world.Clip], tokenizer, task: str, size: int):
    captions, controls, flags = [], [], []
    for c in cases:
        text = task == "text"
        ctrl, flag = control_tensors(c.frames.shape[0], size, known=None if text else {0: c.frames[0]}, has_text=text)
        captions.append(c.caption if text else "")
        controls.append(ctrl)
        flags.append(flag)
    ids = encode_prompts(tokenizer, captions, MAX_TOKENS)
    return ids, torch.from_numpy(np.stack(controls)), torch.from_numpy(np.stack(flags))


@torch.no_grad()
def generate_cases(model, cases, tokenizer, task: str, cfg: BakeoffConfig, mode: str = "full") -> list[np.ndarray]:
    """Clips for the held-out cases: task "text" (caption only) or "kept" (frame 0 only), fixed noise."""
    model.set_attention_mode(mode)
    ids, controls, flags = _conditioning(cases, tokenizer, task, cfg.size)
    generator = torch.Generator().manual_seed(1234)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        clips = model.generate(ids, controls, flags, cfg.steps, cfg.guidance, generator)
    return to_u8(clips)


def evaluate(model, cases, tokenizer, cfg: BakeoffConfig) -> tuple[dict, list, list]:
    text = generate_cases(model, cases, tokenizer, "text", cfg)
    kept = generate_cases(model, cases, tokenizer, "kept", cfg)
    metrics = {"shape_from_text": shape_from_text(text, cases), "shape_kept": shape_kept(kept, cases),
               "edge_sharpness": edge_sharpness(kept, cases)}
    return metrics, text, kept


def score_exports(folders: list[Path], cfg: BakeoffConfig) -> dict[str, dict]:
    """The held-out eval above on exported v2 model folders (what `python -m vdemo.train --arch v2` writes), each at
    its own size, all on the same `cfg.cases` cases and seeds: the head-to-head that chooses a checkpoint to ship;
    with each row's breakdown by shape and the shape kept frame by frame (where it is lost)."""
    from vdemo.backends.tiny_v2 import TinyV2Backend

    scores = {}
    for folder in folders:
        backend = TinyV2Backend.from_pretrained(folder)
        size = backend.model.cfg.size
        with torch.no_grad():
            cases = eval_cases(cfg.cases, cfg.frames, size)
            metrics, text, kept = evaluate(backend.model.float().eval(), cases, backend.tokenizer,
                                           replace(cfg, size=size))
        scores[str(folder)] = {**{k: round(v, 4) for k, v in metrics.items()},
                               "by_shape": {"shape_from_text": shape_breakdown(text, cases, "text"),
                                            "shape_kept": shape_breakdown(kept, cases, "kept")},
                               "shape_kept_per_frame": shape_kept_per_frame(kept, cases)}
    return scores


def sample_grid(text: list, kept: list, cases: list, rows: int = 3) -> np.ndarray:
    """Rows: `rows` text-to-video clips, then `rows` shape-kept clips, each with its ground truth beneath."""
    lines = list(text[:rows])
    for g, c in zip(kept[:rows], cases[:rows]):
        lines += [g, c.frames]
    return np.concatenate([np.concatenate(list(clip), axis=1) for clip in lines], axis=0)


def save_png(path: Path, image: np.ndarray, max_bytes: int = 400_000) -> None:
    """Save, halving the size until it fits max_bytes."""
    while True:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if len(buf) <= max_bytes or image.shape[0] < 64:
            path.write_bytes(buf.tobytes())
            return
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------------ training
def make_batch(rng: np.random.Generator, cfg: BakeoffConfig, tokenizer, train_cfg: TrainConfig) -> dict:
    """Fresh world clips with v1's modality dropout (`vdemo.train.example_from_clip`)."""
    examples = []
    for _ in range(cfg.batch_size):
        kind = TRAIN_KINDS[int(rng.integers(len(TRAIN_KINDS)))]
        examples.append(example_from_clip(world.sample_clip(rng, cfg.frames, cfg.size, kind=kind), rng, train_cfg))
    return stack_examples(examples, tokenizer)


def stack_examples(examples: list[dict], tokenizer) -> dict:
    """`example_from_clip` dicts -> one batch of tensors (the `Candidate` batch layout)."""
    frames = np.stack([e["frames"] for e in examples]).astype(np.float32) / 127.5 - 1.0  # (B, F, S, S, 3)
    return {
        "x0": torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous(),  # (B, F, 3, S, S)
        "ids": encode_prompts(tokenizer, [e["caption"] for e in examples], MAX_TOKENS),
        "controls": torch.from_numpy(np.stack([e["controls"] for e in examples])),  # (B, F, 9, S, S)
        "flags": torch.from_numpy(np.stack([e["flags"] for e in examples])),  # (B, 5)
        "fg": torch.from_numpy(np.stack([e["fg"] for e in examples]))[:, :, None],  # (B, F, 1, S, S)
    }


def train_step(model, opt, batch: dict, generator: torch.Generator, progress: float, bf16: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.training_loss(batch, generator, progress)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    return float(loss.detach())


def run_candidate(name: str, cfg: BakeoffConfig, cases: list, tokenizer, out: Path, on_eval) -> dict:
    """Train one candidate for cfg.minutes of CPU time with evals; resumes from <out>/<name>/state.pt."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "state.pt"
    torch.manual_seed(cfg.seed)
    model = build(name, tiny=cfg.tiny, size=cfg.size, vocab_size=max(128, len(tokenizer)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    st = {"cpu_s": 0.0, "step": 0, "rows": [], "next_eval": cfg.eval_every * 60, "losses": [], "final": None}
    warm_start = 0  # the step the learning-rate warm-up counts from (again, when AdamW's moments restart)
    if state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])  # a compact state's bf16 weights are cast back to float32 here
        rng.bit_generator.state = saved["rng"]
        generator.set_state(saved["generator"])
        st = saved["st"]
        if "opt" in saved:
            opt.load_state_dict(saved["opt"])
        else:  # a compact state (`save_resume`): fresh moments, so warm the learning rate up again
            warm_start = st["step"]
        print(f"[{name}] resumed at step {st['step']}, {st['cpu_s'] / 60:.1f} CPU-min"
              f"{'' if 'opt' in saved else ' (compact state: AdamW moments restart, learning rate re-warmed)'}",
              flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] {model.paper}: {params / 1e6:.2f} M parameters, budget {cfg.minutes} CPU-min", flush=True)
    train_cfg = TrainConfig(size=cfg.size, p_known=0.5, p_strokes=0.2)
    mode_p = np.asarray(MODE_WEIGHTS) / sum(MODE_WEIGHTS)
    budget = cfg.minutes * 60
    model.train()
    while st["final"] is None:
        done = st["cpu_s"] >= budget
        if not done:
            t0 = time.process_time()
            model.set_attention_mode(ATTENTION_MODES[int(rng.choice(len(ATTENTION_MODES), p=mode_p))])
            batch = make_batch(rng, cfg, tokenizer, train_cfg)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (st["step"] + 1 - warm_start) / cfg.warmup_steps)
            st["losses"].append(train_step(model, opt, batch, generator, st["cpu_s"] / budget, cfg.bf16))
            st["step"] += 1
            st["cpu_s"] += time.process_time() - t0
            if st["step"] % 25 == 0:
                print(f"[{name}] step {st['step']} loss {np.mean(st['losses'][-25:]):.4f} "
                      f"{st['cpu_s'] / st['step']:.2f} CPU-s/step {st['cpu_s'] / 60:.2f} CPU-min", flush=True)
            if st["cpu_s"] < min(st["next_eval"], budget):
                continue
        t0 = time.process_time()
        model.eval()
        metrics, text, kept = evaluate(model, cases, tokenizer, cfg)
        row = {"candidate": name, "cpu_minutes": round(st["cpu_s"] / 60, 3), "step": st["step"],
               "loss": round(float(np.mean(st["losses"][-50:])), 5) if st["losses"] else float("nan"),
               **{k: round(v, 4) for k, v in metrics.items()},
               "cpu_s_per_step": round(st["cpu_s"] / max(st["step"], 1), 3),
               "eval_cpu_s": round(time.process_time() - t0, 1)}
        st["rows"].append(row)
        st["next_eval"] += cfg.eval_every * 60
        print(f"[{name}] eval {json.dumps(row)}", flush=True)
        save_png(out / f"grid_{name}.png", sample_grid(text, kept, cases))
        if st["cpu_s"] >= budget:
            st["final"] = final_checks(model, cases, tokenizer, cfg, params)
        model.train()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
                    "generator": generator.get_state(), "st": st}, state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)
        on_eval(name, st)
    return st


def final_checks(model, cases, tokenizer, cfg: BakeoffConfig, params: int) -> dict:
    """Shape kept in every attention mode, and the CPU time of one 16-frame clip in float32 (this thread count)."""
    per_mode = {mode: shape_kept(generate_cases(model, cases, tokenizer, "kept", cfg, mode), cases)
                for mode in ATTENTION_MODES}
    model.set_attention_mode("full")
    ids, controls, flags = _conditioning(cases[:1], tokenizer, "text", cfg.size)
    controls = controls[:, :1].expand(-1, 16, -1, -1, -1).contiguous()
    t0, w0 = time.process_time(), time.time()
    with torch.no_grad():
        model.generate(ids, controls, flags, cfg.steps, cfg.guidance, torch.Generator().manual_seed(0))
    return {"params_m": round(params / 1e6, 2), "shape_kept_per_mode": per_mode,
            "clip16_f32_cpu_s": round(time.process_time() - t0, 2), "clip16_f32_wall_s": round(time.time() - w0, 2),
            "clip16_steps": cfg.steps, "clip16_guidance": cfg.guidance, "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ reporting
METRICS = ("shape_from_text", "shape_kept", "edge_sharpness", "loss")


def save_resume(state_path: Path, dest: Path) -> int:
    """A compact copy of a candidate's state to commit between sessions: weights in bfloat16, the data and noise
    generators and the run record, no AdamW moments (two more copies of the weights; `run_candidate` restarts them
    with a short learning-rate warm-up). Returns its size in bytes."""
    saved = torch.load(state_path, map_location="cpu", weights_only=False)
    compact = {"model": {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in saved["model"].items()},
               "rng": saved["rng"], "generator": saved["generator"], "st": saved["st"]}
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(compact, dest)
    return dest.stat().st_size


def choose_winner(finals: dict[str, dict], cases: int) -> str | None:
    """WINNER_RULE over {candidate: last eval row}."""
    if not finals:
        return None
    score = {k: (r["shape_from_text"] + r["shape_kept"]) / 2 for k, r in finals.items()}
    ranked = sorted(finals, key=lambda k: -score[k])
    margin = 1.0 / cases - 1e-3  # rows are rounded to 4 decimals: a gap of exactly one case is not "within"
    if len(ranked) > 1 and score[ranked[0]] - score[ranked[1]] < margin:
        top = [k for k in ranked if score[ranked[0]] - score[k] < margin]
        return max(top, key=lambda k: finals[k]["edge_sharpness"])
    return ranked[0]


def write_reports(out: Path, states: dict[str, dict], cfg: BakeoffConfig) -> dict:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for st in states.values() for r in st["rows"]]
    if rows:
        with (out / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), dpi=80)
    for ax, metric in zip(axes, METRICS):
        for name, st in states.items():
            xs = [r["cpu_minutes"] for r in st["rows"]]
            ax.plot(xs, [r[metric] for r in st["rows"]], "o-", label=name)
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("training CPU-minutes (1 thread)")
        if metric != "loss":
            ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    plt.close(fig)
    finals = {k: st["rows"][-1] for k, st in states.items() if st["final"] is not None}
    summary = {
        "budget_cpu_minutes": cfg.minutes, "threads": cfg.threads, "batch": f"{cfg.batch_size} clips x {cfg.frames} "
        f"frames at {cfg.size} px", "eval": {"cases": cfg.cases, "steps": cfg.steps, "guidance": cfg.guidance,
                                             "mode": "full", "sampler": "DDIM (trailing), x0-prediction"},
        "rule": WINNER_RULE, "winner": choose_winner(finals, cfg.cases),
        "candidates": {k: {"paper": None, "last_eval": st["rows"][-1] if st["rows"] else None,
                           "finished": st["final"] is not None, **(st["final"] or {})} for k, st in states.items()},
    }
    for k in summary["candidates"]:
        summary["candidates"][k]["paper"] = build(k, tiny=True).paper
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(results_table(summary))
    return summary


def results_table(summary: dict) -> str:
    """The last eval of every candidate as a markdown table, with the winner line."""
    lines = ["| candidate | design | CPU-min | steps | CPU-s/step | shape from text | shape kept | edge sharpness | "
             "kept per mode (spatial/temporal/full/causal/sparse) | 16-frame clip, f32 CPU-s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in summary["candidates"].items():
        r = c["last_eval"] or {}
        modes = "/".join(f"{v:.2f}" for v in c.get("shape_kept_per_mode", {}).values()) or "–"
        lines.append(f"| {name}{'' if c['finished'] else ' (running)'} | {c['paper']} | {r.get('cpu_minutes', '–')} | "
                     f"{r.get('step', '–')} | {r.get('cpu_s_per_step', '–')} | {r.get('shape_from_text', '–')} | "
                     f"{r.get('shape_kept', '–')} | {r.get('edge_sharpness', '–')} | {modes} | "
                     f"{c.get('clip16_f32_cpu_s', '–')} |")
    lines.append(f"\nWinner: **{summary['winner']}** (rule: {summary['rule']}).\n")
    return "\n".join(lines)


def copy_assets(out: Path, assets: Path) -> None:
    assets.mkdir(parents=True, exist_ok=True)
    for path in [out / "metrics.csv", out / "curves.png", out / "summary.json", out / "results.md",
                 *sorted(out.glob("grid_*.png"))]:
        if path.exists():
            shutil.copy(path, assets / path.name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m vdemo.bakeoff", description=__doc__.split("\n\n")[0])
    defaults = BakeoffConfig()
    parser.add_argument("--candidates", nargs="+", default=list(defaults.candidates))
    for name in ("minutes", "eval_every", "lr", "guidance"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    for name in ("threads", "batch_size", "frames", "size", "cases", "steps", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--assets", default=defaults.assets)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: where the CPU has it in hardware, as the app)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="rewrite the reports from <out>/<X>/state.pt")
    parser.add_argument("--save-resume", default="", metavar="DIR",
                        help="with --report-only: also write each candidate's compact state to DIR/<X>.pt")
    parser.add_argument("--score", nargs="+", default=None, metavar="DIR",
                        help="only score exported v2 model folders on the held-out eval (--cases, --steps, "
                             "--guidance, --frames; each at its own size) and print one JSON line each")
    args = vars(parser.parse_args(argv))
    report_only, save_to, score = args.pop("report_only"), args.pop("save_resume"), args.pop("score")
    if score and (report_only or save_to):
        parser.error("--score only scores exported folders; it cannot be combined with --report-only or --save-resume")
    if save_to and not report_only:
        parser.error("--save-resume writes compact states from --report-only; add --report-only")
    args["candidates"] = tuple(args["candidates"])
    args["bf16"] = bf16_flag(parser, args["bf16"])
    cfg = BakeoffConfig(**args)
    torch.set_num_threads(cfg.threads)
    if score:
        missing = [d for d in score if not (Path(d) / "config.json").exists()]
        if missing:
            parser.error(f"no exported v2 model in {missing[0]} (config.json missing)")
        scores = score_exports([Path(d) for d in score], cfg)
        for folder, metrics in scores.items():
            print(folder, json.dumps(metrics), flush=True)
        return scores
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    cases = eval_cases(cfg.cases, cfg.frames, cfg.size)
    states: dict[str, dict] = {}
    if report_only:
        for name in cfg.candidates:
            path = out / name / "state.pt"
            if path.exists():
                states[name] = torch.load(path, map_location="cpu", weights_only=False)["st"]
        summary = write_reports(out, states, cfg)
        if cfg.assets:
            copy_assets(out, Path(cfg.assets))
        for name in states if save_to else ():
            size = save_resume(out / name / "state.pt", Path(save_to) / f"{name}.pt")
            print(f"[{name}] compact resumable state: {Path(save_to) / f'{name}.pt'} ({size / 2**20:.1f} MiB)")
        print(results_table(summary))
        return summary

    def on_eval(name: str, st: dict) -> None:
        states[name] = st  # the running candidate's rows so far
        write_reports(out, states, cfg)
        if cfg.assets:
            copy_assets(out, Path(cfg.assets))

    for name in cfg.candidates:
        states[name] = run_candidate(name, cfg, cases, tokenizer, out, on_eval)
    summary = write_reports(out, states, cfg)
    if cfg.assets:
        copy_assets(out, Path(cfg.assets))
    print(f"winner: {summary['winner']} ({WINNER_RULE})", flush=True)
    return summary


if __name__ == "__main__":
    main()
