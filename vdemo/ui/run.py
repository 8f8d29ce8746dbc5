"""The streaming and export path every generation endpoint shares, and the output panel it fills.

`generate(tab, build, settings, request)` builds the GenerationRequest from a tab's inputs, refuses what the backend
cannot do or what does not fit the Space's GPU limit (one line, before any GPU time), runs it through
`vdemo.ui.gpu.generate_on_gpu` (the ZeroGPU worker on a ZeroGPU Space, this thread elsewhere) once it is its turn
(`vdemo.ui.queue`: while it waits, the status says its place and an estimate from measured step times), while the
session's live toggles steer it, and yields (status, preview grid, mp4, downloads, manifest, seed): a preview and a
status line per denoising step, then the exported result (mp4, gif, frames zip, manifest.json).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np

from vdemo.backends import get_pipeline
from vdemo.cost import check_fits, request_seconds
from vdemo.pipeline import ChunkDone, Done, GenerationRequest
from vdemo.ui import sources
from vdemo.ui.gpu import generate_on_gpu, live_settings
from vdemo.ui.messages import USER_ERRORS, safe_line, user_error
from vdemo.ui.queue import Place, Work
from vdemo.ui.session import ACTIVE_RUNS, session_key
from vdemo.ui.settings import Settings, info_or_error
from vdemo.ui.space import check_served

RUNS_DIR = Path(tempfile.gettempdir()) / "vdemo-runs"
RUNS_KEEP_S = 3600.0  # exported results older than this are deleted when a new run starts
RUNS_MAX_MB_ENV, RUNS_MAX_MB = "VDEMO_RUNS_MAX_MB", 256  # and the oldest beyond this much disk (MiB)
CACHE_MAX_MB_ENV, CACHE_MAX_MB = "VDEMO_CACHE_MAX_MB", 512  # Gradio's copy of uploads and results, the same way
CACHE_MIN_AGE_ENV, CACHE_MIN_AGE_S = "VDEMO_CACHE_MIN_AGE_S", 900.0  # never trim Gradio's entries younger than this
PROTECTED_CACHE: set[str] = set()  # Gradio cache entries this process made before the page was built (examples)
STARTED_AT = time.time()


def _cap_bytes(env: str, default_mb: int) -> int:
    try:
        return int(float(os.environ.get(env, "") or default_mb) * 2**20)
    except ValueError:
        return default_mb * 2**20
Built = tuple[dict, dict]  # (GenerationRequest fields, what the UI records in the manifest)
Builder = Callable[[int, int, int], Built]  # (num_frames, height, width) -> Built


def output_panel() -> dict[str, gr.components.Component]:
    """Status + Stop, the GPU-time estimate, the preview grid, the video, downloads and the manifest."""
    with gr.Column(scale=4, min_width=340):
        with gr.Row(equal_height=False):
            status = gr.Markdown("Pick a tab, set its inputs, press **Generate**.", elem_id="vd-status")
            stop = gr.Button("Stop", variant="stop", size="sm", scale=0, min_width=70, elem_id="vd-stop")
        estimate = gr.Markdown("", elem_id="vd-gpu-estimate")
        gr.Markdown("Preview: every frame's predicted clean image, updated each step", elem_classes=["vd-caption"])
        preview = gr.Image(label="Preview", show_label=False, format="png", type="numpy", interactive=False,
                           height=250, buttons=[], elem_id="vd-preview")  # no label badge over the top row of frames
        video = gr.Video(label="Result (mp4)", format="mp4", interactive=False, autoplay=True, loop=True, height=250,
                         elem_id="vd-video")
        with gr.Accordion("Downloads (mp4, gif, frames, manifest) and manifest", open=False):
            files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="vd-files")
            manifest = gr.JSON(label="Manifest", elem_id="vd-manifest")
    return {"status": status, "stop": stop, "estimate": estimate, "preview": preview, "video": video, "files": files,
            "manifest": manifest}


# ------------------------------------------------------------------------------------------------- formatting
def _runs_of(history: list[dict]) -> str:
    """'full ×5 → causal ×3' (mode · sampler per run of equal steps) from the loop's per-step history."""
    runs: list[list] = []
    for h in history:
        key = (h["mode"], h["sampler"])
        if runs and runs[-1][0] == key:
            runs[-1][1] += 1
        else:
            runs.append([key, 1])
    return " → ".join(f"{mode} · {sampler} ×{n}" for (mode, sampler), n in runs)


def progress_text(step: int, total: int, elapsed_s: float, history: list[dict], first_s: float | None) -> str:
    mode, sampler = history[-1]["mode"], history[-1]["sampler"]
    lines = [f"**step {step}/{total}** · {elapsed_s:.2f} s · mode `{mode}` · sampler `{sampler}`",
             f"steps: {_runs_of(history)}"]
    if first_s is not None:
        lines.append(f"first preview after {first_s:.2f} s")
    return "  \n".join(lines)


def preview_image(frames: np.ndarray) -> np.ndarray:
    """All frames of a prediction as one grid (4 per row up to 16 frames, else 8)."""
    return sources.frame_grid(frames, columns=4 if len(frames) <= 16 else 8)


def _history_text(history: list[dict]) -> str:
    return _runs_of(history) if history else "—"


# ------------------------------------------------------------------------------------------------------ export
def _entry_stats(entry: Path) -> tuple[float, int]:
    """(newest mtime, bytes) of a folder's files, or of a file: Gradio touches a cached file it hands out again, not
    its folder, so a folder's own mtime is not its age."""
    if not entry.is_dir():
        st = entry.stat()
        return st.st_mtime, st.st_size
    newest, size = entry.stat().st_mtime, 0
    for f in entry.rglob("*"):
        if f.is_file():
            st = f.stat()
            newest, size = max(newest, st.st_mtime), size + st.st_size
    return newest, size


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def trim_folder(root: Path, max_age_s: float, max_bytes: int, *, min_age_s: float = 0.0,
                only: Callable[[Path], bool] | None = None, keep: frozenset[str] = frozenset()) -> int:
    """Delete the entries of `root` older than max_age_s, then the oldest until the rest take at most max_bytes;
    returns the bytes left. Each entry (a run folder; one of Gradio's per-file hash folders) goes whole. Entries
    newer than `min_age_s`, named in `keep`, or not matching `only` are never deleted."""
    if not root.is_dir():
        return 0
    now, kept = time.time(), []
    for entry in root.iterdir():
        if entry.name in keep or (only is not None and not only(entry)):
            continue
        try:
            newest, size = _entry_stats(entry)
            if now - newest > max_age_s:
                _remove(entry)
            else:
                kept.append((newest, entry, size))
        except OSError:
            pass
    total = sum(size for *_, size in kept)
    for newest, entry, size in sorted(kept, key=lambda item: item[0]):
        if total <= max_bytes:
            break
        if now - newest < min_age_s:
            break  # everything left is newer: a result being downloaded, an upload a queued request needs
        _remove(entry)
        total -= size
    return total


def _gradio_entry(entry: Path) -> bool:
    """One of Gradio's cache folders (named by a 64-hex hash): never anything else in a shared temp directory."""
    return entry.is_dir() and len(entry.name) == 64 and all(c in "0123456789abcdef" for c in entry.name)


def protect_cache() -> None:
    """Keep what this process has put in Gradio's cache so far (called when the page is built: the examples' copies)
    from trimming; what earlier processes left there is not protected."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    if folder.is_dir():
        for entry in folder.iterdir():
            try:
                if _gradio_entry(entry) and _entry_stats(entry)[0] >= STARTED_AT - 1.0:
                    PROTECTED_CACHE.add(entry.name)
            except OSError:
                pass


def _clean_old_runs() -> None:
    """Before a new export: our run folders and Gradio's upload/result cache, each by age and by size (a busy app
    makes many runs within the hour; Gradio's own `delete_cache` only goes by age, hourly). Gradio's entries younger
    than CACHE_MIN_AGE_S stay whatever the size (results not yet downloaded, uploads of queued requests)."""
    trim_folder(RUNS_DIR, RUNS_KEEP_S, _cap_bytes(RUNS_MAX_MB_ENV, RUNS_MAX_MB))
    from gradio.utils import get_upload_folder

    trim_folder(Path(get_upload_folder()), RUNS_KEEP_S, _cap_bytes(CACHE_MAX_MB_ENV, CACHE_MAX_MB),
                min_age_s=float(os.environ.get(CACHE_MIN_AGE_ENV) or CACHE_MIN_AGE_S), only=_gradio_entry,
                keep=frozenset(PROTECTED_CACHE))


def export_run(frames: np.ndarray, manifest: dict, fps: int, stem: str) -> tuple[str, list[str], dict]:
    """Write mp4 + gif + frames (zipped) + manifest.json; returns (mp4, every download, the manifest as written)."""
    from vdemo.export import export_result

    _clean_old_runs()
    out_dir = RUNS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    paths = export_result(frames, out_dir, fps, manifest, stem)
    frames_zip = shutil.make_archive(str(out_dir / f"{stem}-frames"), "zip", root_dir=paths.frames_dir)
    return str(paths.mp4), [str(paths.mp4), str(paths.gif), frames_zip, str(paths.manifest)], paths.manifest_data


# -------------------------------------------------------------------------------------------------- generation
def generate(tab: str, build: Builder, settings: Settings, request: gr.Request | None):
    """Shared body of the five endpoints: build the request, run it live (on the GPU worker on ZeroGPU), stream
    previews, export the result."""
    info = info_or_error(settings.backend)
    if tab not in info.modalities:
        raise user_error(f"backend {settings.backend!r} does not support {tab} conditioning")
    check_served(settings.backend)
    with USER_ERRORS:
        pipe = get_pipeline(settings.backend)
    height, width = info.default_size
    with USER_ERRORS:
        fields, ui_info = build(settings.num_frames, height, width)
        request_obj = GenerationRequest(
            **fields, num_frames=settings.num_frames, height=height, width=width, num_steps=settings.num_steps,
            guidance=settings.guidance, seed=settings.seed, fps=settings.fps, attention_mode=settings.attention_mode,
            sampler=settings.sampler)
        run = pipe.start(request_obj, live_settings(request_obj.attention_mode, request_obj.sampler))
        check_fits(pipe.backend, request_obj)  # before any GPU time is asked for
    session = session_key(request)
    seed_out = settings.seed  # written back as a plain value (the API returns the seed used)
    started = time.perf_counter()
    first_s, last_preview, history, event, last_total = None, None, [], None, settings.num_steps
    ACTIVE_RUNS.add(session, run)  # Stop works while it waits, too
    place = Place(Work.of(settings.backend, pipe.backend, request_obj), request_seconds(pipe.backend, request_obj),
                  stopped=lambda: run.control.stopped)
    try:
        with place:
            for waiting in place.waiting():
                yield waiting, gr.skip(), None, None, None, seed_out
            if not place.admitted:
                place.done()  # out of line before the message goes
                yield "**stopped** before it started (it was waiting in line)", gr.skip(), None, None, None, seed_out
                return
            started = time.perf_counter()
            yield from place.hand((f"starting ({settings.backend}, {settings.num_frames} frames, "
                                   f"{settings.num_steps} steps)…", gr.skip(), None, None, None, seed_out))
            for event in generate_on_gpu(settings.backend, run.request, run.control):
                if isinstance(event, Done):
                    break
                if getattr(event, "step_done", False) and not isinstance(event, ChunkDone):  # a chunk repeats its step
                    last_total = event.total
                    place.step(event.total)
                if isinstance(event, ChunkDone):  # a causal backend finished a chunk: the clip so far, final
                    last_preview = preview_image(event.frames)
                    text = (f"**chunk {event.chunk + 1}/{event.chunks} done** · {len(event.frames)}/"
                            f"{settings.num_frames} frames final · {event.elapsed_s:.2f} s")
                    yield from place.hand((text, last_preview, gr.skip(), gr.skip(), gr.skip(), seed_out))
                    continue
                first_s = first_s if first_s is not None else time.perf_counter() - started
                if getattr(event, "step_done", True):  # a 2-call sampler (Heun) previews each call, counts one step
                    history.append({"step": event.step, "mode": event.mode, "sampler": event.sampler})
                current = {"step": event.step, "mode": event.mode, "sampler": event.sampler}
                text = progress_text(event.step, event.total, event.elapsed_s, history or [current], first_s)
                last_preview = preview_image(event.preview)
                yield from place.hand((text, last_preview, gr.skip(), gr.skip(), gr.skip(), seed_out))
            if not isinstance(event, Done):
                raise user_error("the run ended without a result")
            history = event.manifest.get("steps") or history  # the loop's own record (it ran in the GPU worker)
            manifest = {**event.manifest, "ui": {"tab": tab, "random_seed": settings.random_seed, **ui_info,
                                                 "first_preview_in_handler_s": round(first_s or 0.0, 4)}}
            mp4, files, manifest = export_run(event.frames, manifest, settings.fps, tab)
            # measured only when it ran to the end in the mode and sampler it was costed at (a live switch changes
            # the work per step; a stopped run's tail is not a run's); the slot is free before the result goes out
            place.done(measure=(not event.stopped and run.control.mode == request_obj.attention_mode
                                and run.control.sampler == request_obj.sampler))
        steps_done = manifest.get("timings", {}).get("steps_done", len(history))
        total = max(last_total, steps_done)
        head = (f"**stopped** at step {steps_done}/{total} — kept the last preview" if event.stopped
                else f"**done**: {steps_done} steps in {time.perf_counter() - started:.2f} s")
        text = f"{head}  \nsteps: {_history_text(history)}  \nseed {settings.seed}"
        understood = manifest.get("prompt_understood") or {}
        if understood.get("ignored"):
            text += (f"  \nthe model ignored: {', '.join(understood['ignored'][:8])} (it used: "
                     f"{' '.join(understood['used']) or 'nothing'})")
        for warning in manifest.get("warnings") or []:
            text += f"  \nwarning: {safe_line(warning)}"
        if manifest.get("motion_plan"):
            text += f"  \nmotion planned from the prompt: {', '.join(manifest['motion_plan']['directions'])}"
        # The last preview again (same pixels: a stopped run keeps it on screen), so API callers get every output.
        yield text, last_preview, mp4, files, manifest, settings.seed
    finally:
        run.stop()  # a cancelled / abandoned event must not leave its run denoising (reaches a ZeroGPU worker too)
        ACTIVE_RUNS.remove(session, run)
        place.done()
