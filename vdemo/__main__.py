"""Command-line front of the shared pipeline.

    python -m vdemo generate --prompt "a red circle moves right on a black background" --out out/red.mp4
    python -m vdemo generate --image first.png --strokes strokes.json --mode causal --sampler "DPM++ 2M" --out out/s.mp4

Writes the mp4, a gif, `manifest.json` beside the video and, with --frames-dir, the frames as 0000.png, 0001.png, ….
Bad inputs end with a one-line error (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vdemo.config import ATTENTION_MODES, DEFAULTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vdemo", description="vdemo: video diffusion lab")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate one video with the shared pipeline")
    g.add_argument("--prompt", default="")
    g.add_argument("--image", help="PNG/JPEG used as the first frame (image-to-video)")
    g.add_argument("--pose", help="folder of OpenPose skeleton PNGs, or a video file")
    g.add_argument("--depth", help="folder of depth-map PNGs (near = bright), or a video file")
    g.add_argument("--strokes", help='JSON file: [{"points": [[x, y], ...], "radius": r}, ...], x, y in [0, 1]')
    g.add_argument("--no-plan", dest="plan_motion", action="store_false",
                   help="text only: skip the layout planner (the model alone places and moves the objects)")
    g.add_argument("--mode", default=DEFAULTS.attention_mode, help=f"attention mode: {', '.join(ATTENTION_MODES)}")
    g.add_argument("--sampler", default=DEFAULTS.sampler)
    g.add_argument("--steps", type=int, default=DEFAULTS.num_steps)
    g.add_argument("--frames", type=int, default=DEFAULTS.num_frames)
    g.add_argument("--size", type=int, default=DEFAULTS.height, help="square side in pixels")
    g.add_argument("--guidance", type=float, default=DEFAULTS.guidance)
    g.add_argument("--seed", type=int, default=DEFAULTS.seed)
    g.add_argument("--fps", type=int, default=DEFAULTS.fps)
    g.add_argument("--out", default="out/video.mp4")
    g.add_argument("--frames-dir", help="also write the frames here as 0000.png, 0001.png, …")
    g.add_argument("--backend", default="tiny", help="a registered backend name")
    g.add_argument("--model-dir", help="local folder with the backend's weights (instead of its default)")
    return parser


def request_from_args(args: argparse.Namespace):
    """Read the files named on the command line and build a validated GenerationRequest."""
    from vdemo.media import load_frames, load_image, to_gray
    from vdemo.pipeline import GenerationRequest
    from vdemo.strokes import parse_strokes

    strokes = ()
    if args.strokes:
        path = Path(args.strokes)
        if not path.exists():
            raise ValueError(f"strokes file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path.name} is not valid JSON ({err.msg if hasattr(err, 'msg') else err})") from None
        strokes = tuple(parse_strokes(data))
    return GenerationRequest(
        prompt=args.prompt,
        image=load_image(args.image) if args.image else None,
        pose=load_frames(args.pose) if args.pose else None,
        depth=to_gray(load_frames(args.depth)) if args.depth else None,
        strokes=strokes,
        num_frames=args.frames, height=args.size, width=args.size, num_steps=args.steps, guidance=args.guidance,
        seed=args.seed, fps=args.fps, attention_mode=args.mode, sampler=args.sampler, plan_motion=args.plan_motion,
    )


def generate(args: argparse.Namespace) -> int:
    from vdemo.backends import load_backend
    from vdemo.export import export_result
    from vdemo.pipeline import Done, VideoPipeline

    request = request_from_args(args)
    pipe = VideoPipeline(load_backend(args.backend, args.model_dir))
    done = None
    for event in pipe.generate(request):
        if isinstance(event, Done):
            done = event
        else:
            print(f"\rstep {event.step}/{event.total} [{event.mode}, {event.sampler}] {event.elapsed_s:.1f}s",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = Path(args.out)
    paths = export_result(done.frames, out.parent, request.fps, done.manifest, stem=out.stem)
    paths.manifest.replace(out.parent / "manifest.json")  # the CLI's contract: manifest.json beside the video
    if args.frames_dir:
        from vdemo.export import write_frames

        write_frames(done.frames, Path(args.frames_dir))
    print(f"wrote {paths.mp4} ({len(done.frames)} frames, {done.manifest['timings']['total_s']:.1f} s)")
    if done.manifest.get("motion_plan"):
        print(f"motion planned from the prompt: {', '.join(done.manifest['motion_plan']['directions'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return generate(args)
    except (ValueError, FileNotFoundError) as err:  # RequestError, MediaError, stroke errors are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
