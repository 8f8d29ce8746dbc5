"""Fidelity of the built-in model on held-out procedural cases, per modality and per attention mode.

    python -m vdemo.eval                      # the default model (tiny-v2): a table; --json for machine-readable rows
    python -m vdemo.eval --backend tiny --cases 16 --modes full causal --model-dir assets/tiny   # v1
    python -m vdemo.eval --plot assets/tiny/learning_curve.csv assets/learning_curve.png

Cases come from world seeds the training stream never draws (`HELDOUT_SEED0 + i`). Objects are found by
`vdemo.world.detect` (colour segmentation against the background), never by the model. Metrics:
  - text: colour / shape / direction accuracy of a single moving object generated from its caption alone, through
    the layout planner as the app does (`--no-plan`: the video model alone; rows then say "planner": false);
  - image: PSNR of generated frame 0 against the given first frame; share of frames keeping colour and shape; with
    the caption added, direction accuracy (the planner starts the path at the object it finds in the frame) and the
    share of frames keeping colour and shape then;
  - strokes: mean distance between the object's centre and the stroke's resampled point per frame, as a fraction of
    the frame diagonal, given first frame + stroke; the same without the stroke is the "ignores the stroke" baseline;
    and the share of frames keeping colour and shape along the stroke. Image and strokes rows say "drag" (`--no-drag`:
    without the cut-and-drag reference) and "dragged_share": how many runs' models really got it (tiny-v2 only);
  - pose: IoU between the generated figure and the ground-truth figure drawn from the same skeleton;
  - depth: share of frames where the nearer object is larger than the farther one and wins where they overlap;
  - temporal: frame-to-frame change of the object's mean colour (/255) and area (relative) in text runs;
  - coupling: the denoiser's own x0 error (MSE, foreground-weighted like training, text given) on held-out clips noised
    to t = 950 and 850. There a single frame barely shows where the object is, so only mixing frames can lower the
    error: a mode that ties frames together should beat `spatial` here, and text-only motion needs it;
  - layout: from pure noise, does the object's mean position drift the way each direction word says (`eval_layout`);
  - planner: the layout planner alone on held-out captions of every kind: is a plan made exactly when the caption
    names planar objects, and does each planned path go the caption's way (`eval_planner`; no video is generated).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from vdemo import world
from vdemo.backends import BUILTIN, DEFAULT_BACKEND
from vdemo.config import ATTENTION_MODES, DEFAULTS
from vdemo.pipeline import Done, GenerationRequest, VideoPipeline
from vdemo.strokes import resample_stroke, strokes_from_paths
from vdemo.world.detect import Detection, detect_objects
from vdemo.world.palette import nearest_direction

HELDOUT_SEED0 = 1_000_000
STILL_FRAC = 0.05  # a net displacement under 5% of the frame reads as "still"
METRICS = ("text", "image", "strokes", "pose", "depth", "coupling", "layout", "planner")
PLANNER_CASES = 400
COUPLING_T = (950, 850)


@dataclass(frozen=True)
class EvalSettings:
    cases: int = 8
    num_frames: int = DEFAULTS.num_frames
    size: int = 64
    num_steps: int = DEFAULTS.num_steps
    guidance: float = DEFAULTS.guidance
    sampler: str = DEFAULTS.sampler
    plan_motion: bool = True
    drag_reference: bool = True  # a first frame + strokes: the cut-and-drag reference, on backends that take one
    keep_known: bool = True  # known frames kept as given (False: the model's own redrawing, e.g. of frame 0's PSNR)


def held_out_specs(kind: str, n: int, accept) -> list[dict]:
    """The first n specs of `kind` from held-out seeds that pass `accept(spec)`."""
    out, seed = [], HELDOUT_SEED0
    while len(out) < n:
        spec = world.sample_spec(np.random.default_rng(seed), kind=kind)
        seed += 1
        if accept(spec):
            out.append(spec)
    return out


def generate(pipe: VideoPipeline, s: EvalSettings, mode: str, seed: int, dragged: list | None = None,
             **inputs) -> np.ndarray:
    """The run's frames; `dragged` (a list) gets whether the run's model got the cut-and-drag reference."""
    request = GenerationRequest(num_frames=s.num_frames, height=s.size, width=s.size, num_steps=s.num_steps,
                                guidance=s.guidance, sampler=s.sampler, attention_mode=mode, seed=seed,
                                plan_motion=s.plan_motion, drag_reference=s.drag_reference, keep_known=s.keep_known,
                                **inputs)
    done = [e for e in pipe.generate(request) if isinstance(e, Done)][0]
    if dragged is not None:
        dragged.append(done.manifest.get("reference") == "cut-and-drag along the strokes")
    return done.frames


def kept_share(frames: np.ndarray, bg, truth: dict) -> float:
    """The share of frames whose main object has the true colour and shape."""
    dets = [main_object(f, bg) for f in frames]
    return float(np.mean([d is not None and d.colour == truth["colour"] and d.shape == truth["shape"] for d in dets]))


def main_object(frame: np.ndarray, background: tuple[int, int, int], colour: str | None = None) -> Detection | None:
    """The largest detection (of `colour` if given)."""
    found = detect_objects(frame, background_rgb=background, max_objects=None)
    if colour is not None:
        found = [d for d in found if d.colour == colour]
    return found[0] if found else None


def majority(values: Iterable) -> object:
    values = [v for v in values if v is not None]
    return max(set(values), key=values.count) if values else None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def eval_text(pipe, s: EvalSettings, mode: str) -> dict:
    specs = held_out_specs("objects", s.cases, lambda sp: len(sp["objects"]) == 1)
    colour = shape = direction = 0
    colour_change, size_change = [], []
    for i, spec in enumerate(specs):
        clip = world.make_clip(spec, s.num_frames, s.size)
        truth = clip.objects[0]
        bg = world.BACKGROUNDS[clip.meta["background"]]
        frames = generate(pipe, s, mode, seed=i, prompt=clip.caption)
        dets = [main_object(f, bg) for f in frames]
        colour += majority(d.colour if d else None for d in dets) == truth["colour"]
        shape += majority(d.shape if d else None for d in dets) == truth["shape"]
        direction += read_direction(dets) == truth["motion"]
        colour_change.append(colour_drift(frames, dets))
        size_change.append(size_drift(dets))
    n = len(specs)
    return {"planner": s.plan_motion, "colour_acc": colour / n, "shape_acc": shape / n, "direction_acc": direction / n,
            "colour_change": float(np.nanmean(colour_change)), "size_change": float(np.nanmean(size_change))}


def read_direction(dets: list[Detection | None]) -> str | None:
    """Compass direction of the detected centre's net displacement (first to last detected frame)."""
    centres = [d.centre for d in dets if d is not None]
    if len(centres) < 2:
        return None
    dx, dy = np.subtract(centres[-1], centres[0])
    return "still" if math.hypot(dx, dy) < STILL_FRAC else nearest_direction(float(dx), float(dy))


def colour_drift(frames: np.ndarray, dets: list[Detection | None]) -> float:
    """Mean frame-to-frame change of the object's mean colour, in units of 255."""
    means = [frames[i][d.mask].mean(0) if d is not None else None for i, d in enumerate(dets)]
    steps = [np.abs(a - b).mean() / 255 for a, b in zip(means, means[1:]) if a is not None and b is not None]
    return float(np.mean(steps)) if steps else math.nan


def size_drift(dets: list[Detection | None]) -> float:
    """Mean frame-to-frame relative change of the object's area."""
    areas = [d.area_frac if d is not None else None for d in dets]
    steps = [abs(a - b) / max(a, b) for a, b in zip(areas, areas[1:]) if a and b]
    return float(np.mean(steps)) if steps else math.nan


def eval_image(pipe, s: EvalSettings, mode: str) -> dict:
    specs = held_out_specs("objects", s.cases, lambda sp: len(sp["objects"]) == 1)
    psnrs, kept, kept_moving, direction, dragged = [], [], [], 0, []
    for i, spec in enumerate(specs):
        clip = world.make_clip(spec, s.num_frames, s.size)
        truth = clip.objects[0]
        bg = world.BACKGROUNDS[clip.meta["background"]]
        frames = generate(pipe, s, mode, seed=i, image=clip.frames[0])
        psnrs.append(psnr(frames[0], clip.frames[0]))
        kept.append(kept_share(frames, bg, truth))
        moved = generate(pipe, s, mode, seed=i, dragged=dragged, image=clip.frames[0],
                         prompt=clip.caption)  # + "moves <dir>": the planner's path (and the cut-and-drag along it)
        direction += read_direction([main_object(f, bg, truth["colour"]) for f in moved]) == truth["motion"]
        kept_moving.append(kept_share(moved, bg, truth))
    return {"planner": s.plan_motion, "drag": s.drag_reference, "first_frame_psnr_db": float(np.mean(psnrs)),
            "identity_kept": float(np.mean(kept)), "with_text_direction_acc": direction / len(specs),
            "with_text_identity_kept": float(np.mean(kept_moving)), "dragged_share": float(np.mean(dragged))}


def eval_strokes(pipe, s: EvalSettings, mode: str) -> dict:
    specs = held_out_specs("path", s.cases, lambda sp: True)
    with_stroke, without, kept, dragged = [], [], [], []
    for i, spec in enumerate(specs):
        clip = world.make_clip(spec, s.num_frames, s.size)
        truth = clip.objects[0]
        bg = world.BACKGROUNDS[clip.meta["background"]]
        strokes = strokes_from_paths(clip.paths[:1], 0.1)
        target = resample_stroke(np.array(strokes[0].points), s.num_frames)  # (F, 2)
        frames = generate(pipe, s, mode, seed=i, dragged=dragged, image=clip.frames[0], strokes=tuple(strokes))
        with_stroke.append(track_error(frames, bg, truth["colour"], target))
        kept.append(kept_share(frames, bg, truth))
        without.append(track_error(generate(pipe, s, mode, seed=i, image=clip.frames[0]), bg, truth["colour"], target))
    return {"drag": s.drag_reference, "stroke_error_diag": float(np.mean(with_stroke)),
            "no_stroke_error_diag": float(np.mean(without)), "stroke_identity_kept": float(np.mean(kept)),
            "dragged_share": float(np.mean(dragged))}


def track_error(frames: np.ndarray, bg, colour: str, target: np.ndarray) -> float:
    """Mean distance (fraction of the diagonal) between the object's centre and the target point, per frame.

    A frame where the object is lost counts as the largest possible error of that frame's target (to a corner)."""
    errors = []
    for frame, point in zip(frames, target):
        d = main_object(frame, bg, colour) or main_object(frame, bg)
        if d is None:
            corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
            errors.append(np.linalg.norm(corners - point, axis=1).max() / math.sqrt(2))
        else:
            errors.append(float(np.linalg.norm(np.subtract(d.centre, point))) / math.sqrt(2))
    return float(np.mean(errors))


def foreground(frames: np.ndarray, bg) -> np.ndarray:
    return np.abs(frames.astype(np.int16) - np.array(bg, np.int16)).max(-1) > 48  # (F, H, W)


def eval_pose(pipe, s: EvalSettings, mode: str) -> dict:
    specs = held_out_specs("person", s.cases, lambda sp: True)
    ious = []
    for i, spec in enumerate(specs):
        clip = world.make_clip(spec, s.num_frames, s.size)
        bg = world.BACKGROUNDS[clip.meta["background"]]
        frames = generate(pipe, s, mode, seed=i, prompt=clip.caption, pose=clip.pose)
        got, want = foreground(frames, bg), foreground(clip.frames, bg)
        inter = (got & want).sum((1, 2))
        union = (got | want).sum((1, 2))
        ious.append(float(np.mean(inter / np.maximum(union, 1))))
    return {"pose_iou": float(np.mean(ious))}


def near_larger(frame: np.ndarray, bg, near: dict, far: dict) -> bool:
    """Whether the nearer object (by the caption's colour) is found and larger than the farther one (or hides it)."""
    d_near, d_far = main_object(frame, bg, near["colour"]), main_object(frame, bg, far["colour"])
    return d_near is not None and (d_far is None or d_near.area_frac > d_far.area_frac)


def eval_depth(pipe, s: EvalSettings, mode: str) -> dict:
    """"near_larger_in_front": the share of frames that get depth right; "truth_near_larger": the same metric on the
    ground-truth frames (its ceiling: a nearer object can be partly hidden or barely larger); "misses_colour_wrong":
    of the missed frames, the share whose largest object has a colour other than the nearer object's (the caption's
    colours bound to the wrong objects rather than the depth order lost; NaN without misses)."""
    specs = held_out_specs("depth", s.cases, lambda sp: len(sp["objects"]) >= 2)
    correct, ceiling, colour_wrong = [], [], []
    for i, spec in enumerate(specs):
        clip = world.make_clip(spec, s.num_frames, s.size)
        bg = world.BACKGROUNDS[clip.meta["background"]]
        frames = generate(pipe, s, mode, seed=i, prompt=clip.caption, depth=clip.depth)
        objs = clip.objects
        for f, frame in enumerate(frames):
            order = sorted(range(len(objs)), key=lambda k: objs[k]["z"][f])  # nearest first
            near, far = objs[order[0]], objs[order[1]]
            correct.append(near_larger(frame, bg, near, far))
            ceiling.append(near_larger(clip.frames[f], bg, near, far))
            if not correct[-1]:
                largest = main_object(frame, bg)
                colour_wrong.append(largest is not None and largest.colour != near["colour"])
    return {"near_larger_in_front": float(np.mean(correct)), "truth_near_larger": float(np.mean(ceiling)),
            "misses_colour_wrong": float(np.mean(colour_wrong)) if colour_wrong else math.nan}


def _x0_prediction(backend, scheduler, x_in: torch.Tensor, t: int, cond, mode: str) -> torch.Tensor:
    """The backend's clean-clip estimate (no guidance) for x_in at integer timestep t, as pixels (1, F, 3, H, W) in
    [-1, 1] (a latent backend's estimate goes through its decoder)."""
    from vdemo.samplers import split_prediction

    out = backend.predict(x_in, torch.tensor(float(t)), cond, 1.0, mode).float()
    x0 = out if backend.output_type == "sample" else split_prediction(scheduler, out, x_in, t)[0]
    return _sample_to_pixels(backend, x0)


def _pixels_to_sample(backend, pixels: torch.Tensor) -> torch.Tensor:
    """(1, F, 3, H, W) in [-1, 1] -> what the backend denoises (itself for a pixel model, latents for tiny-v2)."""
    encode = getattr(backend, "encode_frames", None)
    return pixels if encode is None else encode(pixels)


def _sample_to_pixels(backend, sample: torch.Tensor) -> torch.Tensor:
    decode = getattr(backend, "decode_frames", None)
    return sample if decode is None else decode(sample)


def _ddpm(backend) -> DDPMScheduler:
    from vdemo.samplers import default_scheduler_config

    return DDPMScheduler.from_config(default_scheduler_config(
        backend.scheduler_config.get("prediction_type", "v_prediction")))


def eval_coupling(pipe, s: EvalSettings, mode: str) -> dict:
    """x0 MSE of the backend's prediction (no guidance) at the COUPLING_T noise levels; fixed noise per case."""
    backend = pipe.backend
    specs = held_out_specs("objects", s.cases, lambda sp: len(sp["objects"]) == 1)
    scheduler = _ddpm(backend)
    errors: dict[int, list[float]] = {t: [] for t in COUPLING_T}
    for i, spec in enumerate(specs):
        clip = world.make_clip(spec, s.num_frames, s.size)
        request = GenerationRequest(prompt=clip.caption, num_frames=s.num_frames, height=s.size, width=s.size,
                                    attention_mode=mode)
        cond = backend.prepare(request)
        x0 = torch.from_numpy(clip.frames.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)[None]  # (1, F, 3, H, W)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(HELDOUT_SEED0 + i))
        bg = np.array(world.BACKGROUNDS[clip.meta["background"]], np.int16)
        fg = torch.from_numpy(np.abs(clip.frames.astype(np.int16) - bg).max(-1) > 24)[None, :, None]  # (1, F, 1, H, W)
        weight = 1.0 + 4.0 * fg.float()
        sample0 = _pixels_to_sample(backend, x0)
        noise = noise if sample0.shape == x0.shape else torch.randn(
            sample0.shape, generator=torch.Generator().manual_seed(HELDOUT_SEED0 + i))
        for t in COUPLING_T:
            x_in = scheduler.add_noise(sample0, noise, torch.tensor([t]))
            x0_hat = _x0_prediction(backend, scheduler, x_in, t, cond, mode)
            errors[t].append(float((weight * (x0_hat - x0) ** 2).sum() / (3 * weight.sum())))
    return {f"x0_mse_t{t}": float(np.mean(v)) for t, v in errors.items()}


def eval_layout(pipe, s: EvalSettings, mode: str) -> dict:
    """Where the denoiser puts the object from pure noise (t = 999: its mean layout), per direction word.

    For "a white circle moves <word> on a black background", the drift of the foreground's centroid from the first to
    the last frame, averaged over `cases` noise draws, is read as a compass word (under STILL_FRAC: "still"). A model
    that knows what the word means frame by frame drifts that way (the world's own mean drift is 0.3-0.4 of the frame);
    one that does not puts the object in the same place in every frame, and text-only motion cannot come out of it.
    """
    from vdemo.world.palette import DIRECTIONS

    backend = pipe.backend
    scheduler = _ddpm(backend)
    bg = torch.tensor(world.BACKGROUNDS["black"], dtype=torch.float32)[:, None, None] / 127.5 - 1.0  # (3, 1, 1)
    grid = (torch.arange(s.size, dtype=torch.float32) + 0.5) / s.size
    correct, drifts = 0, []
    for word in DIRECTIONS:
        cond = backend.prepare(GenerationRequest(prompt=f"a white circle moves {word} on a black background",
                                                 num_frames=s.num_frames, height=s.size, width=s.size,
                                                 attention_mode=mode))
        centres = []
        for i in range(s.cases):
            shape = (1, s.num_frames, 3, s.size, s.size)
            if hasattr(backend, "encode_frames"):  # a latent backend starts from noise in its latent space
                shape = backend.latent_shape(GenerationRequest(num_frames=s.num_frames, height=s.size, width=s.size))
            x_in = torch.randn(shape, generator=torch.Generator().manual_seed(HELDOUT_SEED0 + i))
            w = (_x0_prediction(backend, scheduler, x_in, 999, cond, mode)[0] - bg).abs().mean(1)  # (F, H, W)
            w = w / w.sum((1, 2), keepdim=True).clamp(min=1e-8)
            centres.append(torch.stack([(w.sum(1) * grid).sum(-1), (w.sum(2) * grid).sum(-1)], -1))  # (F, 2): x, y
        dx, dy = (torch.stack(centres).mean(0)[-1] - torch.stack(centres).mean(0)[0]).tolist()
        drifts.append(math.hypot(dx, dy))
        correct += math.hypot(dx, dy) >= STILL_FRAC and nearest_direction(dx, dy) == word
    return {"layout_direction_acc": correct / len(DIRECTIONS), "layout_drift": float(np.mean(drifts))}


def eval_planner(pipe, s: EvalSettings, mode: str) -> dict:
    """The layout planner alone (no video) on PLANNER_CASES held-out captions of every kind (mode-independent).

    presence_acc: a plan is made exactly for the objects the planner should place (every object of object and path
    clips, a depth clip's actor unless it moves closer / away, nothing for people); direction_acc: each planned
    path's compass word (still = an anchor) equals its object's motion word in the caption.
    """
    from vdemo.train_planner import caption_targets

    planner = getattr(pipe.backend, "planner", None)
    if planner is None:
        raise ValueError("this model folder has no layout planner (train one: python -m vdemo.train --planner)")
    present_ok, correct, paths = 0, 0, 0
    for i in range(PLANNER_CASES):
        spec = world.sample_spec(np.random.default_rng(HELDOUT_SEED0 + i))
        plan = planner.plan(world.build_caption(spec), seed=i)
        want = int(caption_targets(spec)[0].sum())
        present_ok += len(plan.strokes) == want
        for obj, word in zip(spec.get("objects", [])[:want], plan.directions):
            paths += 1
            correct += word == obj["motion"]
    return {"presence_acc": present_ok / PLANNER_CASES, "direction_acc": correct / max(paths, 1)}


def sample_grid(pipe: VideoPipeline, s: EvalSettings, mode: str = "full", frames_shown: int = 8) -> np.ndarray:
    """One row per modality (held-out cases; the row above each conditioned sample is its ground truth), as uint8."""
    cases = [("objects", lambda sp: len(sp["objects"]) == 1, lambda c: {"prompt": c.caption}),
             ("objects", lambda sp: len(sp["objects"]) == 2, lambda c: {"prompt": c.caption}),
             ("objects", lambda sp: len(sp["objects"]) == 1, lambda c: {"image": c.frames[0]}),
             ("path", lambda sp: True, lambda c: {"image": c.frames[0],
                                                   "strokes": tuple(strokes_from_paths(c.paths[:1], 0.1))}),
             ("person", lambda sp: True, lambda c: {"prompt": c.caption, "pose": c.pose}),
             ("depth", lambda sp: len(sp["objects"]) >= 2, lambda c: {"prompt": c.caption, "depth": c.depth})]
    pick = np.round(np.linspace(0, s.num_frames - 1, frames_shown)).astype(int)
    rows = []
    for i, (kind, accept, inputs) in enumerate(cases):
        clip = world.make_clip(held_out_specs(kind, 1 + i % 2, accept)[-1], s.num_frames, s.size)
        rows.append(clip.frames[pick])
        rows.append(generate(pipe, s, mode, seed=i, **inputs(clip))[pick])
    gap = np.full((s.size, 4, 3), 255, np.uint8)
    lines = [np.concatenate([x for f in row for x in (f, gap)][:-1], 1) for row in rows]
    spacer = np.full((4, lines[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for line in lines for x in (line, spacer)][:-1], 0)


EVALS = {"text": eval_text, "image": eval_image, "strokes": eval_strokes, "pose": eval_pose, "depth": eval_depth,
         "coupling": eval_coupling, "layout": eval_layout, "planner": eval_planner}


def evaluate(pipe: VideoPipeline, settings: EvalSettings, modes: Iterable[str] = ATTENTION_MODES,
             metrics: Iterable[str] = METRICS) -> list[dict]:
    """One row per (metric group, mode)."""
    rows = []
    metrics = list(metrics)
    if "planner" in metrics and getattr(pipe.backend, "planner", None) is None:
        print("no layout planner in this model folder: skipping the planner metric", file=sys.stderr)
        metrics.remove("planner")
    for mode in modes:
        for name in metrics:
            t0 = time.perf_counter()
            row = {"metric": name, "mode": mode, **EVALS[name](pipe, settings, mode)}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def append_learning_curve(path: Path, rows: list[dict], model_dir: Path) -> None:
    """One CSV line per eval run: training step and hours of the checkpoint, then every metric of the `full` rows.

    A run that reports a metric the file has no column for widens the file (earlier lines get empty cells).
    """
    state_path = model_dir / "train_state.pt"
    state = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.exists() else {}
    values = {f"{row_group(r)}.{k}": round(v, 4) for r in rows if r["mode"] == "full" for k, v in r.items()
              if k not in NOT_VALUES}
    old_rows, old_metrics = [], []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            old_rows, old_metrics = list(reader), [k for k in reader.fieldnames or [] if k not in ("step", "hours")]
    header = ["step", "hours", *old_metrics, *sorted(set(values) - set(old_metrics))]
    run = state.get("st", {})  # a v2 state (vdemo.train_v2) keeps its step and CPU time in its run record
    hours = state.get("elapsed_s", run.get("cpu_s", 0.0))
    new_row = {"step": state.get("step", run.get("step", "")), "hours": round(hours / 3600, 3), **values}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows([*old_rows, new_row])


CURVE_PANELS = {  # panel title: (CSV columns, y limits); bars at the targets
    "accuracy (text, depth)": (["text.colour_acc", "text.shape_acc", "text.direction_acc", "text_no_plan.direction_acc",
                                "depth.near_larger_in_front", "image.identity_kept", "layout.layout_direction_acc"],
                               (0.0, 1.05)),
    "stroke error (÷ diagonal)": (["strokes.stroke_error_diag", "strokes.no_stroke_error_diag"], (0.0, None)),
    "pose IoU": (["pose.pose_iou"], (0.0, 1.0)),
    "first-frame PSNR (dB)": (["image.first_frame_psnr_db"], (0.0, None)),
    "coupling: x0 error at high noise": (["coupling.x0_mse_t950", "coupling.x0_mse_t850"], (0.0, None)),
}
TARGETS = {"text.colour_acc": 0.95, "strokes.stroke_error_diag": 0.05, "pose.pose_iou": 0.6,
           "image.first_frame_psnr_db": 28.0}


def plot_learning_curve(csv_path: Path, png_path: Path) -> None:
    """The learning curve (full-mode eval metrics against training hours): a panel per metric group, targets dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} has no rows to plot")
    hours = [float(r["hours"]) for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(14, 6.5), constrained_layout=True)
    axes.flat[-1].set_visible(False)
    for ax, (title, (columns, ylim)) in zip(axes.flat, CURVE_PANELS.items()):
        for column in columns:
            points = [(h, float(r[column])) for h, r in zip(hours, rows) if r.get(column)]  # "" = not measured then
            if points:
                label = column.replace("text_no_plan.", "model alone: ").split(".", 1)[-1]
                line, = ax.plot(*zip(*points), marker="o", label=label)
                if column in TARGETS:
                    ax.axhline(TARGETS[column], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("training hours (2-core CPU)")
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"{csv_path.name}: full mode, held-out cases; dotted = target")
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


README_COLUMNS = (  # (header, metric, key, format)
    ("colour", "text", "colour_acc", "{:.2f}"), ("shape", "text", "shape_acc", "{:.2f}"),
    ("direction", "text", "direction_acc", "{:.2f}"),
    ("stroke error (÷ diagonal)", "strokes", "stroke_error_diag", "{:.3f}"),
    ("… without the stroke", "strokes", "no_stroke_error_diag", "{:.3f}"),
    ("pose IoU", "pose", "pose_iou", "{:.2f}"), ("depth: near larger", "depth", "near_larger_in_front", "{:.2f}"),
    ("first-frame PSNR", "image", "first_frame_psnr_db", "{:.1f} dB"),
    ("identity kept", "image", "identity_kept", "{:.2f}"),
    ("image + text: direction", "image", "with_text_direction_acc", "{:.2f}"),
    ("image + text: identity kept", "image", "with_text_identity_kept", "{:.2f}"),
    ("strokes: identity kept", "strokes", "stroke_identity_kept", "{:.2f}"),
    ("colour change / frame", "text", "colour_change", "{:.3f}"), ("size change / frame", "text", "size_change",
                                                                    "{:.2f}"),
    ("x0 error at t=950", "coupling", "x0_mse_t950", "{:.4f}"),
    ("mean-layout direction", "layout", "layout_direction_acc", "{:.2f}"),
    ("planner: direction", "planner", "direction_acc", "{:.2f}"),
)


NOT_VALUES = ("metric", "mode", "seconds", "planner", "drag")  # a row's labels, not its measurements


def row_group(row: dict) -> str:
    """A row's metric, told apart when it ran without the layout planner ("text_no_plan") or without the cut-and-drag
    reference ("strokes_no_drag")."""
    return (row["metric"] + ("_no_plan" if row.get("planner") is False else "")
            + ("_no_drag" if row.get("drag") is False else ""))


def readme_table(rows: list[dict]) -> str:
    """The README's results table: one line per attention mode, one column per metric ("–" where not run).

    Text rows run without the planner (`--no-plan`) get their own line, "<mode>, model alone", under their mode.
    """
    by = {(row_group(r), r["mode"]): r for r in rows}
    modes = [m for m in ATTENTION_MODES if any(mode == m for _, mode in by)]
    lines = ["| mode | " + " | ".join(h for h, *_ in README_COLUMNS) + " |",
             "|---|" + "---|" * len(README_COLUMNS)]
    for mode in modes:
        for suffix, label in (("", ""), ("_no_plan", ", model alone"), ("_no_drag", ", no cut-and-drag"),
                              ("_no_plan_no_drag", ", model alone, no cut-and-drag")):
            if suffix and not any((f"{metric}{suffix}", mode) in by for _, metric, *_ in README_COLUMNS):
                continue
            cells = [fmt.format(by[(metric + suffix, mode)][key]) if key in by.get((metric + suffix, mode), {}) else "–"
                     for _, metric, key, fmt in README_COLUMNS]
            lines.append(f"| {mode.replace('_', '-')}{label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    lines = ["| metric | mode | results |", "|---|---|---|"]
    for r in rows:
        values = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k not in NOT_VALUES)
        lines.append(f"| {row_group(r)} | {r['mode']} | {values} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vdemo.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--cases", type=int, default=EvalSettings.cases)
    parser.add_argument("--modes", nargs="+", default=list(ATTENTION_MODES), choices=ATTENTION_MODES)
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=[*METRICS, "long"],
                        help="'long': long videos, both strategies side by side at 32/64/128 frames (vdemo.long_eval)")
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BUILTIN,
                        help="which built-in model: v1 (tiny) or v2 (tiny-v2); size, steps and guidance default to "
                             "the backend's own defaults")
    parser.add_argument("--steps", type=int, default=None, help="default: the backend's (tiny: 20, tiny-v2: 10)")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--no-plan", dest="plan_motion", action="store_false",
                        help="text metric: the video model alone, without the layout planner")
    parser.add_argument("--no-drag", dest="drag_reference", action="store_false",
                        help="image and strokes metrics: without the cut-and-drag reference (tiny-v2)")
    parser.add_argument("--no-keep-known", dest="keep_known", action="store_false",
                        help="image, strokes and long metrics: the model redraws the known frames "
                             "(first-frame PSNR then measures the model, not the replacement)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here (e.g. runs/eval.json)")
    parser.add_argument("--grid", default=None, help="only render a sample grid PNG (truth / sample row pairs)")
    parser.add_argument("--curve", default=None, help="append the full-mode metrics and the checkpoint's step to a CSV")
    parser.add_argument("--plot", nargs=2, metavar=("CSV", "PNG"), default=None,
                        help="only plot a learning-curve CSV (from --curve) to a PNG")
    parser.add_argument("--table", nargs="+", metavar="JSON", default=None,
                        help="only print the README results table from eval JSON files (from --out)")
    args = parser.parse_args(argv)
    try:
        if args.table:
            print(readme_table([row for path in args.table for row in json.loads(Path(path).read_text())]))
            return 0
        if args.plot:
            plot_learning_curve(Path(args.plot[0]), Path(args.plot[1]))
            print(f"wrote {args.plot[1]}")
            return 0
    except (OSError, ValueError, KeyError, TypeError) as err:  # a missing, empty or foreign file: one line, no trace
        print(f"python -m vdemo.eval: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if "long" in args.metrics:
        from vdemo.long_eval import main as long_main

        extra = [*(["--out", args.out] if args.out else []),
                 *(["--model-dir", args.model_dir] if args.model_dir else [])]
        steps = ["--steps", str(args.steps)] if args.steps else []
        return long_main(["--backend", args.backend, "--cases", str(args.cases), *steps, *extra,
                          *([] if args.plan_motion else ["--no-plan"]),
                          *([] if args.keep_known else ["--no-keep-known"])])
    from vdemo.backends import load_backend, tiny_dir

    backend = load_backend(args.backend, args.model_dir)
    pipe = VideoPipeline(backend)
    settings = EvalSettings(cases=args.cases, num_steps=args.steps or backend.default_steps,
                            size=backend.default_size[0], guidance=backend.default_guidance,
                            sampler=backend.default_sampler, plan_motion=args.plan_motion,
                            drag_reference=args.drag_reference, keep_known=args.keep_known)
    if args.grid:
        from PIL import Image

        grid = sample_grid(pipe, settings)
        scale = max(1, 128 // settings.size)
        Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST).save(
            args.grid)
        print(f"wrote {args.grid}")
        return 0
    rows = evaluate(pipe, settings, args.modes, args.metrics)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if args.curve:
        append_learning_curve(Path(args.curve), rows, tiny_dir(args.model_dir, args.backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
