"""Benchmark of the hub backends: load each at its default settings, time one clip, record peak memory.

    python -m vdemo.backends.hub.bench --backends animatediff svd --out runs/bench_backends
    (wired by the CLI as `python -m vdemo.bench backends`)

Needs the hub (downloads the pinned revisions) or local folders ($VDEMO_<NAME>_DIR), and a GPU to be meaningful; not
part of CI. Writes `<out>.json` (one row per backend) and `<out>.md` (the same as a markdown table). Peak memory is
CUDA's max allocated per backend on a GPU, else the process's peak resident set (which only grows).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from vdemo.pipeline import Backend, Done, GenerationRequest, VideoPipeline

PROMPT = "a red fox runs through a snowy forest, cinematic, highly detailed"
SD15_DEFAULTS = {"prompt": PROMPT, "height": 512, "width": 512, "num_steps": 25, "guidance": 7.5, "sampler": "DDIM"}
SVD_DEFAULTS = {"height": 576, "width": 1024, "num_steps": 25, "guidance": 3.0, "fps": 7, "sampler": "Euler",
                "attention_mode": "temporal"}
DEFAULTS: dict[str, dict] = {  # each backend's documented default settings (diffusers docs / model cards)
    "animatediff": {**SD15_DEFAULTS, "num_frames": 16, "attention_mode": "temporal"},
    "zeroshot": {**SD15_DEFAULTS, "num_frames": 8, "attention_mode": "sparse_causal"},
    "svd": {**SVD_DEFAULTS, "num_frames": 14},
    "svd-xt": {**SVD_DEFAULTS, "num_frames": 25},
}
COLUMNS = ("backend", "device", "frames", "size", "steps", "load_s", "seconds", "first_preview_s", "s_per_step",
           "peak_mem_gib", "error")


def synthetic_image(height: int = 576, width: int = 1024) -> np.ndarray:
    """A synthetic first frame for the image backends: a sky-to-ground gradient with a red disc."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    image = np.stack([0.3 + 0.4 * y, 0.5 + 0.3 * y, 0.9 - 0.5 * y], axis=-1)
    disc = (x - 0.3) ** 2 + ((y - 0.6) * height / width) ** 2 < 0.01
    image[disc] = (0.9, 0.1, 0.1)
    return (image * 255).astype(np.uint8)


def _peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_one(name: str, loader: Callable[[str], Backend], settings: dict) -> dict:
    """One row: load time, seconds for one clip at `settings`, time to first preview, peak memory (or the error)."""
    row = {"backend": name, "error": None}
    try:
        started = time.perf_counter()
        backend = loader(name)
        row["load_s"] = round(time.perf_counter() - started, 2)
        device = str(getattr(backend, "device", "cpu"))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        request_kw = {**DEFAULTS.get(name, {}), **settings}
        if "image" in backend.modalities and "image" not in request_kw:
            request_kw["image"] = synthetic_image(request_kw.get("height", 576), request_kw.get("width", 1024))
        if "text" not in backend.modalities:
            request_kw.pop("prompt", None)
        request = GenerationRequest(**request_kw)
        done = [e for e in VideoPipeline(backend).generate(request) if isinstance(e, Done)][-1]
        timings = done.manifest["timings"]
        row.update(device=device, frames=request.num_frames, size=f"{request.width}x{request.height}",
                   steps=request.num_steps, seconds=timings["total_s"], first_preview_s=timings["first_preview_s"],
                   s_per_step=round(timings["total_s"] / max(1, timings["steps_done"]), 3),
                   peak_mem_gib=round(_peak_gib(device), 2))
    except Exception as err:  # noqa: BLE001 - one backend failing (offline, no GPU, gated repo) must not hide the others
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return row


def markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def run_backends_bench(names: Sequence[str] | None = None, out_path: str | Path = "runs/bench_backends", *,
                       settings: dict | None = None, local_dirs: dict[str, str] | None = None,
                       loader: Callable[[str], Backend] | None = None) -> dict[str, Path]:
    """Bench each named hub backend (default: all); write `<out>.json` and `<out>.md`; return their paths."""
    from vdemo.backends.hub import HUB_BACKENDS, load_hub_backend

    names = list(names or HUB_BACKENDS)
    local_dirs = local_dirs or {}
    loader = loader or (lambda name: load_hub_backend(name, local_dir=local_dirs.get(name)))
    rows = [bench_one(name, loader, dict(settings or {})) for name in names]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": out.with_suffix(".json"), "markdown": out.with_suffix(".md")}
    paths["json"].write_text(json.dumps(rows, indent=2))
    paths["markdown"].write_text(markdown_table(rows))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="*", default=None, help="registry names (default: all)")
    parser.add_argument("--out", default="runs/bench_backends", help="output path without suffix")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--frames", type=int, default=None, help="override the number of frames")
    args = parser.parse_args(argv)
    settings = {k: v for k, v in (("num_steps", args.steps), ("num_frames", args.frames)) if v is not None}
    paths = run_backends_bench(args.backends, args.out, settings=settings)
    sys.stdout.write(paths["markdown"].read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
