"""Command-line front of the shared pipeline.

    python -m vdemo generate --prompt "a red circle moves right on a black background" --out out/red.mp4
    python -m vdemo generate --image first.png --strokes strokes.json --mode causal --sampler "DPM++ 2M" --out out/s.mp4

Writes the mp4, a gif, `manifest.json` beside the video and, with --frames-dir, the frames as 0000.png, 0001.png, ….
Bad inputs or setup (a `vdemo.errors.UserError`) end with `error: <one line>` and exit status 2, never a traceback;
anything else is a bug: its traceback, then `internal error (a bug): <Type>: <first line>`, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from pathlib import Path

from vdemo.config import ATTENTION_MODES, DEFAULT_BACKEND, DEFAULTS
from vdemo.errors import UserError, one_line


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
    g.add_argument("--no-drag", dest="drag_reference", action="store_false",
                   help="first frame + strokes on tiny-v2: no cut-and-drag reference (the model gets the first frame)")
    g.add_argument("--no-keep-known", dest="keep_known", action="store_false",
                   help="built-in models: let the model redraw the known frames (first frame, keyframes) instead of "
                        "keeping them as given")
    g.add_argument("--mode", default=DEFAULTS.attention_mode, help=f"attention mode: {', '.join(ATTENTION_MODES)}")
    g.add_argument("--sampler", default=DEFAULTS.sampler)
    g.add_argument("--steps", type=int, default=None, help="default: the backend's (tiny-v2: 10, tiny: 20)")
    g.add_argument("--frames", type=int, default=DEFAULTS.num_frames)
    g.add_argument("--size", type=int, default=None, help="square side in pixels (default: the backend's)")
    g.add_argument("--guidance", type=float, default=None, help="default: the backend's")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed)
    g.add_argument("--fps", type=int, default=DEFAULTS.fps)
    g.add_argument("--out", default="out/video.mp4")
    g.add_argument("--frames-dir", help="also write the frames here as 0000.png, 0001.png, …")
    g.add_argument("--backend", default=DEFAULT_BACKEND, help=f"a registered backend name (default {DEFAULT_BACKEND})")
    g.add_argument("--model-dir", help="local folder with the backend's weights (instead of its default)")
    add_long_arguments(g)
    return parser


def add_long_arguments(g: argparse.ArgumentParser) -> None:
    """Long videos and video-to-video (`vdemo.long`); --frames is then the window size."""
    g.add_argument("--length", type=int, help="long video: this many frames, made window by window (≤ 256)")
    g.add_argument("--strategy", default="hierarchical", choices=("autoregressive", "hierarchical"))
    g.add_argument("--context", type=int, default=4, help="frames each autoregressive window is conditioned on")
    g.add_argument("--prompts", nargs="+", default=(), help="one prompt per segment, in order along the clip")
    g.add_argument("--video", help="a clip to extend or edit (mp4, gif, webm, a zip or folder of frames)")
    g.add_argument("--extend", type=int, help="with --video: add this many frames after it (autoregressive)")
    g.add_argument("--edit-strength", type=float, help="with --video: SDEdit it with --prompt at this strength")
    g.add_argument("--last", help="with --image as the first frame: the last frame; --length frames in between")


def request_from_args(args: argparse.Namespace):
    """Read the files named on the command line and build a validated GenerationRequest. Frame size (`--size`: a
    square), steps and guidance default to the backend's own, as the page sets them (`backend_info`: no weights are
    loaded, so a bad input file is reported before any model loads; a hub backend keeps its aspect and the Space's
    `VDEMO_<NAME>_SIZE`)."""
    from vdemo.backends import backend_info
    from vdemo.media import load_frames, load_image, to_gray
    from vdemo.pipeline import GenerationRequest

    info = backend_info(args.backend)
    height, width = (args.size, args.size) if args.size is not None else info.default_size
    steps = args.steps if args.steps is not None else info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance

    strokes = read_strokes(Path(args.strokes)) if args.strokes else ()
    return GenerationRequest(
        prompt=args.prompt,
        image=load_image(args.image) if args.image else None,
        pose=load_frames(args.pose) if args.pose else None,
        depth=to_gray(load_frames(args.depth)) if args.depth else None,
        strokes=strokes,
        num_frames=args.frames, height=height, width=width, num_steps=steps, guidance=guidance,
        seed=args.seed, fps=args.fps, attention_mode=args.mode, sampler=args.sampler, plan_motion=args.plan_motion,
        drag_reference=args.drag_reference, keep_known=args.keep_known,
    )


def read_strokes(path: Path) -> tuple:
    """The strokes JSON file named by --strokes; every way it can be wrong is a UserError (the user's file)."""
    from vdemo.strokes import parse_strokes

    if not path.is_file():
        raise UserError(f"strokes file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path.name} is not valid JSON ({err.msg if hasattr(err, 'msg') else err})") from None
    try:
        return tuple(parse_strokes(data))
    except ValueError as err:  # parse_strokes says what is wrong with the data in plain ValueErrors
        raise UserError(f"{path.name}: {one_line(err)}") from None


def check_out(out: Path) -> None:
    """Refuse an --out name that `vdemo.export.export_result` would refuse as a stem, before any work is done."""
    if not re.fullmatch(r"[\w.-]+", out.stem):
        raise UserError(f"--out must name a plain file (letters, digits, _ . -), got {out.name!r}")


def write_outputs(done, out: Path, fps: int, frames_dir: str | None):
    """mp4, gif, frames and `manifest.json` beside the video; a path that cannot be written is the user's to fix."""
    from vdemo.export import export_result, write_frames

    try:
        paths = export_result(done.frames, out.parent, fps, done.manifest, stem=out.stem)
        paths.manifest.replace(out.parent / "manifest.json")  # the CLI's contract: manifest.json beside the video
        if frames_dir:
            write_frames(done.frames, Path(frames_dir))
    except OSError as err:  # permissions, a file where a folder should be, a full disk …
        raise UserError(f"cannot write the output: {one_line(err)}") from err
    return paths


def generate(args: argparse.Namespace) -> int:
    from vdemo.backends import load_backend
    from vdemo.pipeline import Done, VideoPipeline

    check_out(Path(args.out))
    request = request_from_args(args)
    if args.length or args.video or args.last:
        return generate_long(args, request)
    pipe = VideoPipeline(load_backend(args.backend, args.model_dir))
    done = None
    for event in pipe.generate(request):
        if isinstance(event, Done):
            done = event
        else:
            print(f"\rstep {event.step}/{event.total} [{event.mode}, {event.sampler}] {event.elapsed_s:.1f}s",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    paths = write_outputs(done, Path(args.out), request.fps, args.frames_dir)
    print(f"wrote {paths.mp4} ({len(done.frames)} frames, {done.manifest['timings']['total_s']:.1f} s)")
    if done.manifest.get("motion_plan"):
        print(f"motion planned from the prompt: {', '.join(done.manifest['motion_plan']['directions'])}")
    return 0


def generate_long(args: argparse.Namespace, request) -> int:
    """A long video, an extension, an edit or an in-betweening (`vdemo.long.job_from_args`), window by window."""
    from vdemo.backends import load_backend
    from vdemo.long import LongProgress, SegmentDone, generate_long, job_from_args

    job = job_from_args(args, request)
    done = None
    for event in generate_long(load_backend(args.backend, args.model_dir), job):
        if isinstance(event, LongProgress):
            print(f"\rsegment {event.segment + 1}/{event.segments} step {event.step}/{event.total} [{event.mode}, "
                  f"{event.sampler}] {event.elapsed_s:.1f}s", end="", file=sys.stderr, flush=True)
        elif not isinstance(event, SegmentDone):
            done = event
    print(file=sys.stderr)
    paths = write_outputs(done, Path(args.out), request.fps, args.frames_dir)
    info = done.manifest["long"]
    print(f"wrote {paths.mp4} ({len(done.frames)} frames, {job.kind}, {job.strategy}, {len(info['windows'])} windows, "
          f"seams after {info['seams']}, {done.manifest['timings']['total_s']:.1f} s)")
    return 0


def internal_error_line(err: BaseException) -> str:
    """`internal error (a bug): <Type>: <first line>` (the CLI prints the traceback just above it)."""
    detail = one_line(err) if str(err).strip() else ""
    return f"internal error (a bug): {type(err).__name__}{': ' + detail if detail else ''}"


def main(argv: list[str] | None = None) -> int:
    """Exit status 0: done; 2: a user error (bad input or setup, one line); 1: a bug (traceback, then one line)."""
    args = build_parser().parse_args(argv)
    try:
        return generate(args)
    except UserError as err:  # RequestError, MediaError, HubError, ModelNotFound …: the message says what to change
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - anything else is a bug: show where, and say so
        traceback.print_exc(file=sys.stderr)
        print(internal_error_line(err), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
