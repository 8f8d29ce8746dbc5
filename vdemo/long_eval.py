"""Drift of long videos on the built-in world: autoregressive vs hierarchical (`python -m vdemo.eval --metrics long`).

The seed's claim, after Ho et al. 2022 (VDM), He et al. 2022 (LVDM) and Blattmann et al. 2023 (Video LDM): extending a
clip window by window gives "more repetition and a loss of quality as the extension grows"; hierarchical generation
(NUWA-XL, Yin et al. 2023; Imagen Video; Make-A-Video) fixes the whole length's layout first. Measured here, per
segment of `SEGMENT` frames along the clip, against the first segment: the object's colour and shape kept, its size
ratio and mean-colour distance, frames where it is lost, flicker (mean absolute pixel change between consecutive
frames) and, with the layout planner's plan, the object's distance from the planned path (÷ frame diagonal). Per
clip: seam jumps (change across window boundaries ÷ change within windows) and seconds per output frame. Then SDEdit
on world clips: the prompt's colour swapped ("make the red circle blue"), at two strengths: does the new colour show,
and does the object keep its old path.

    python -m vdemo.eval --backend tiny --metrics long --cases 2 --steps 20 --out assets/long/drift.json   # v1
    python -m vdemo.long_eval --plot assets/long/drift.json assets/long/drift.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from vdemo import world
from vdemo.long import STRATEGIES, LongJob, edit, flicker, generate_long, seam_jump
from vdemo.pipeline import Done, GenerationRequest
from vdemo.strokes import resample_stroke

LENGTHS = (32, 64, 128)
SEGMENT = 16  # frames per measured segment along the clip
WINDOW, CONTEXT = 16, 4
EDIT_STRENGTHS = (0.6, 0.8)
SERIES = ("colour_kept", "shape_kept", "size_ratio", "colour_distance", "lost", "flicker", "plan_error")


def cases(n: int, side: int = 64) -> list[world.Clip]:
    """Held-out single-object, moving world clips (16 frames): their captions are the long videos' prompts."""
    from vdemo.eval import held_out_specs

    specs = held_out_specs("objects", n, lambda sp: len(sp["objects"]) == 1 and sp["objects"][0]["motion"] != "still")
    return [world.make_clip(spec, 16, side) for spec in specs]


def backend_settings(backend) -> dict:
    """The request fields that follow the backend's own defaults: frame size and guidance (v1 64 px, v2 128 px)."""
    height, width = backend.default_size
    return {"height": int(height), "width": int(width), "guidance": float(backend.default_guidance)}


def _detections(frames: np.ndarray, bg) -> list:
    from vdemo.eval import main_object

    return [main_object(f, bg) for f in frames]


def _plan_targets(manifest: dict, length: int) -> np.ndarray | None:
    plan = manifest.get("motion_plan")
    if not plan or not plan.get("strokes"):
        return None
    return resample_stroke(np.array(plan["strokes"][0]["points"]), length)


def segment_series(frames: np.ndarray, bg, manifest: dict) -> dict[str, list[float]]:
    """Each SERIES metric per segment of SEGMENT frames, the first segment being the reference."""
    from vdemo.eval import majority, track_error

    dets = _detections(frames, bg)
    first = dets[:SEGMENT]
    ref_colour = majority(d.colour if d else None for d in first)
    ref_shape = majority(d.shape if d else None for d in first)
    ref_area = np.mean([d.area_frac for d in first if d]) if any(first) else math.nan
    ref_rgb = np.mean([frames[i][d.mask].mean(0) for i, d in enumerate(first) if d], 0) if any(first) else None
    target = _plan_targets(manifest, len(frames))
    change = np.concatenate([[math.nan], flicker(frames)])  # change into frame f
    out: dict[str, list[float]] = {k: [] for k in SERIES}
    for start in range(0, len(frames), SEGMENT):
        seg = range(start, min(start + SEGMENT, len(frames)))
        found = [(f, dets[f]) for f in seg if dets[f] is not None]
        out["colour_kept"].append(float(np.mean([d.colour == ref_colour for _, d in found])) if found else 0.0)
        out["shape_kept"].append(float(np.mean([d.shape == ref_shape for _, d in found])) if found else 0.0)
        out["size_ratio"].append(float(np.mean([d.area_frac for _, d in found]) / ref_area) if found else math.nan)
        rgb = [frames[f][d.mask].mean(0) for f, d in found]
        out["colour_distance"].append(float(np.abs(np.mean(rgb, 0) - ref_rgb).mean() / 255)
                                      if rgb and ref_rgb is not None else math.nan)
        out["lost"].append(1.0 - len(found) / len(seg))
        out["flicker"].append(float(np.nanmean(change[list(seg)])) if len(seg) > 1 else math.nan)
        out["plan_error"].append(track_error(frames[list(seg)], bg, ref_colour or "red", target[list(seg)])
                                 if target is not None else math.nan)
    return out


def run_long(backend, prompt: str, length: int, strategy: str, steps: int, seed: int, plan_motion: bool = True,
             keep_known: bool = True) -> Done:
    request = GenerationRequest(prompt=prompt, num_frames=WINDOW, num_steps=steps, seed=seed, plan_motion=plan_motion,
                                keep_known=keep_known,
                                **backend_settings(backend))
    return [e for e in generate_long(backend, LongJob(request, length, strategy, CONTEXT)) if isinstance(e, Done)][0]


def eval_long(backend, n_cases: int, steps: int, lengths=LENGTHS, log=print, plan_motion: bool = True,
              keep_known: bool = True) -> dict:
    """Per (strategy, length): per-segment series averaged over cases, seam jumps and seconds per output frame."""
    clips = cases(n_cases, backend.default_size[0])
    results = {}
    for length in lengths:
        for strategy in STRATEGIES:
            runs = []
            for i, clip in enumerate(clips):
                done = run_long(backend, clip.caption, length, strategy, steps, seed=i, plan_motion=plan_motion,
                                keep_known=keep_known)
                bg = world.BACKGROUNDS[clip.meta["background"]]
                series = segment_series(done.frames, bg, done.manifest)
                jump = seam_jump(done.frames, done.manifest["long"]["seams"])
                info = done.manifest["long"]
                runs.append({"series": series, **jump, "s_per_frame": done.manifest["timings"]["s_per_output_frame"],
                             "windows": len(info["windows"]), "levels": info["levels"], "seams": len(info["seams"])})
            key = f"{strategy}@{length}"
            results[key] = summarise(runs)
            log(json.dumps({"run": key, **{k: v for k, v in results[key].items() if k != "series"}}))
    return results


def summarise(runs: list[dict]) -> dict:
    series = {k: np.nanmean([r["series"][k] for r in runs], axis=0).round(4).tolist() for k in SERIES}
    out = {k: round(float(np.nanmean([r[k] for r in runs])), 4)
           for k in ("seam_change", "within_change", "seam_ratio", "s_per_frame")}
    out.update({k: runs[0][k] for k in ("windows", "levels", "seams")})
    out["last_segment"] = {k: v[-1] for k, v in series.items()}
    return {**out, "series": series}


def eval_edit(backend, n_cases: int, steps: int, strengths=EDIT_STRENGTHS) -> dict:
    """SDEdit with the caption's colour swapped: share of frames showing the new colour, and the object's distance
    from its original path (÷ diagonal), per strength."""
    from vdemo.eval import main_object, track_error
    from vdemo.world.palette import colours_for_background

    out = {}
    for strength in strengths:
        new_colour, path_error = [], []
        for i, clip in enumerate(cases(n_cases, backend.default_size[0])):
            bg_name, old = clip.meta["background"], clip.objects[0]["colour"]
            new = next(c for c in colours_for_background(bg_name) if c != old)
            request = GenerationRequest(prompt=clip.caption.replace(old, new, 1), num_frames=16, num_steps=steps,
                                        seed=i, **backend_settings(backend))
            done = [e for e in generate_long(backend, edit(request, clip.frames, strength)) if isinstance(e, Done)][0]
            bg = world.BACKGROUNDS[bg_name]
            new_colour.append(np.mean([(d := main_object(f, bg)) is not None and d.colour == new for f in done.frames]))
            path_error.append(track_error(done.frames, bg, new, clip.paths[0]))
        out[f"strength {strength}"] = {"new_colour": round(float(np.mean(new_colour)), 3),
                                       "path_error": round(float(np.mean(path_error)), 4)}
    return out


ROWS = (("colour kept, last segment", "last_segment", "colour_kept", "{:.2f}"),
        ("shape kept, last segment", "last_segment", "shape_kept", "{:.2f}"),
        ("size ratio, last segment", "last_segment", "size_ratio", "{:.2f}"),
        ("colour distance, last segment", "last_segment", "colour_distance", "{:.3f}"),
        ("object lost, last segment", "last_segment", "lost", "{:.2f}"),
        ("flicker, last segment (0–255)", "last_segment", "flicker", "{:.2f}"),
        ("distance from plan, last segment", "last_segment", "plan_error", "{:.3f}"),
        ("seam change (0–255)", None, "seam_change", "{:.2f}"),
        ("within-window change (0–255)", None, "within_change", "{:.2f}"),
        ("seam ÷ within", None, "seam_ratio", "{:.2f}"),
        ("windows / levels", None, "windows", "{}"),
        ("s per output frame", None, "s_per_frame", "{:.3f}"))


def table(results: dict) -> str:
    """Both strategies side by side at every length: one row per metric."""
    keys = sorted(results, key=lambda k: (int(k.split("@")[1]), STRATEGIES.index(k.split("@")[0])))
    lines = ["| metric | " + " | ".join(k.replace("@", " @ ") for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for label, group, key, fmt in ROWS:
        cells = []
        for k in keys:
            value = results[k][group][key] if group else results[k][key]
            if key == "windows":
                value = f"{value} / {results[k]['levels']}"
            cells.append(fmt.format(value) if not isinstance(value, float) or not math.isnan(value) else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, png: Path) -> None:
    """One panel per SERIES metric over the clip (segment start frame), both strategies at the longest length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max(int(k.split("@")[1]) for k in results)
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.5), constrained_layout=True)
    for ax, metric in zip(axes.flat, SERIES):
        for strategy, style in zip(STRATEGIES, ("o-", "s--")):
            for length in sorted({int(k.split("@")[1]) for k in results}):
                series = results.get(f"{strategy}@{length}", {}).get("series", {}).get(metric)
                if series and length == longest:
                    ax.plot(np.arange(len(series)) * SEGMENT, series, style, label=strategy, markersize=4)
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("frame (segment start)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[-1]
    for strategy, style in zip(STRATEGIES, ("o-", "s--")):
        pts = sorted((int(k.split("@")[1]), v["seam_ratio"]) for k, v in results.items() if k.startswith(strategy))
        ax.plot(*zip(*pts), style, label=strategy)
    ax.set_title("seam ÷ within-window change")
    ax.set_xlabel("length (frames)")
    ax.grid(alpha=0.3)
    fig.suptitle(f"long-video drift on the built-in model, {longest} frames, per {SEGMENT}-frame segment")
    fig.savefig(png, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from vdemo.backends import BUILTIN, DEFAULT_BACKEND

    parser = argparse.ArgumentParser(prog="python -m vdemo.long_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BUILTIN, help="which built-in model")
    parser.add_argument("--steps", type=int, default=None, help="default: the backend's (tiny: 20, tiny-v2: 10)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    parser.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"), default=None, help="only plot a results JSON")
    parser.add_argument("--no-edit", action="store_true", help="skip the SDEdit colour-swap check")
    parser.add_argument("--no-plan", dest="plan_motion", action="store_false",
                        help="no layout planner: each window is the video model alone (no path over the length)")
    parser.add_argument("--no-keep-known", dest="keep_known", action="store_false",
                        help="each window's model redraws its context / keyframes instead of keeping them as given")
    args = parser.parse_args(argv)
    if args.plot:
        results = json.loads(Path(args.plot[0]).read_text())
        plot(results["long"], Path(args.plot[1]))
        print(f"wrote {args.plot[1]}")
        return 0
    from vdemo.backends import load_backend

    backend = load_backend(args.backend, args.model_dir)
    if args.steps is None:
        args.steps = int(backend.default_steps)
    t0 = time.perf_counter()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results = {"long": eval_long(backend, args.cases, args.steps, args.lengths, log=log, plan_motion=args.plan_motion,
                                 keep_known=args.keep_known),
               "settings": {"backend": args.backend, "cases": args.cases, "steps": args.steps, "window": WINDOW,
                            "context": CONTEXT, "segment": SEGMENT, "plan_motion": args.plan_motion,
                            "keep_known": args.keep_known}}
    if not args.no_edit:
        results["edit"] = eval_edit(backend, args.cases, args.steps)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    print(table(results["long"]))
    if "edit" in results:
        print("\nSDEdit, colour swapped in the prompt:", json.dumps(results["edit"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
