"""The Compare tab: the current request of any modality tab, run in 2–5 attention modes and/or samplers with the same
seed and initial noise (`vdemo.compare`), side by side.

Streams one preview per run as it denoises, then plays the finished clips in sync (one play/pause, one scrubber; the
frames travel as PNG data URLs in a `gr.HTML` with a small script, like the strokes pad), and shows the cost table,
a cost bar chart, per-frame quality against the `full`-attention clip and what each mode sees (masks probed from
`vdemo.attention.attend`). All runs are one GPU job (`compare_on_gpu`: on ZeroGPU one `spaces.GPU` call whose
duration is the sum of the runs' `vdemo.cost.request_seconds`); Stop ends the current run and skips the rest.

Endpoints: the Compare button (`compare_tab`, undocumented: it reads every tab's inputs) and the documented API
endpoint `compare` (a text prompt; its outputs are the shared output panel's, the manifest being compare.json).
"""

from __future__ import annotations

import html
import json
import time
import uuid
from dataclasses import replace

import gradio as gr
import numpy as np
import spaces

from vdemo.backends import get_pipeline
from vdemo.compare import (
    MAX_VARIANTS,
    CompareError,
    CompareResult,
    RunFinished,
    RunProgress,
    check_variants,
    cost_table,
    make_variants,
    reference_for,
    stream_compare,
    write_compare,
)
from vdemo.config import ATTENTION_MODES, MODALITIES
from vdemo.cost import gpu_limit_s, request_seconds
from vdemo.pipeline import GenerationRequest, RunControl
from vdemo.samplers import SAMPLERS
from vdemo.ui.canvas import to_data_url
from vdemo.ui.gpu import live_settings
from vdemo.ui.messages import USER_ERRORS, guarded, user_error
from vdemo.ui.queue import Place, Work
from vdemo.ui.run import RUNS_DIR, Builder, _clean_old_runs, preview_image
from vdemo.ui.session import ACTIVE_RUNS, session_key, stop_run
from vdemo.ui.settings import Settings, info_or_error
from vdemo.ui.space import check_served
from vdemo.ui.tabs import TabUI

NAME, LABEL = "compare", "Compare"
DEFAULT_MODES = ["spatial", "full", "sparse_causal"]
PREVIEW_EVERY_S = 0.2  # at most this often a streamed preview row (the first of each run always)
SOURCE_LABELS = {"text": "Text", "image": "Image", "pose": "Pose", "depth": "Depth", "strokes": "Motion strokes"}

PLAYER_CSS = """
.vd-cmp-row { display: flex; flex-wrap: wrap; gap: 8px; }
.vd-cmp-row figure { margin: 0; text-align: center; font-size: 0.75rem; }
.vd-cmp-row img { width: 150px; height: auto; image-rendering: pixelated; border-radius: 4px; background: #111; }
.vd-cmp-preview img { width: 190px; }
.vd-cmp-controls { display: flex; align-items: center; gap: 8px; margin-top: 6px; }
.vd-cmp-controls input[type=range] { flex: 1; }
"""

# Runs once when the player mounts (`element`, `watch` come from gr.HTML); the markup it drives is replaced on every
# new comparison, so every listener is delegated from `element`.
PLAYER_JS = """
let timer = null, frame = 0;
const cache = new WeakMap();
function player() { return element.querySelector('.vd-cmp-player'); }
function srcs(clip) {
  if (!cache.has(clip)) cache.set(clip, JSON.parse(clip.dataset.srcs));
  return cache.get(clip);
}
function show(i) {
  const p = player(); if (!p) return;
  const n = parseInt(p.dataset.frames);
  frame = ((i % n) + n) % n;
  p.dataset.frame = frame;
  p.querySelectorAll('.vd-cmp-clip').forEach((clip) => {
    const s = srcs(clip); clip.querySelector('img').src = s[Math.min(frame, s.length - 1)]; clip.dataset.frame = frame;
  });
  p.querySelector('.vd-cmp-scrub').value = frame;
  p.querySelector('.vd-cmp-frame').textContent = `frame ${frame + 1}/${n}`;
}
function pause() {
  if (timer) clearInterval(timer);
  timer = null;
  const p = player(); if (!p) return;
  p.dataset.playing = 'false'; p.querySelector('.vd-cmp-play').textContent = '▶ play';
}
function play() {
  const p = player(); if (!p) return;
  pause();
  timer = setInterval(() => show(frame + 1), 1000 / parseFloat(p.dataset.fps));
  p.dataset.playing = 'true'; p.querySelector('.vd-cmp-play').textContent = '⏸ pause';
}
element.addEventListener('click', (ev) => {
  if (!ev.target.closest('.vd-cmp-play')) return;
  player().dataset.playing === 'true' ? pause() : play();
});
element.addEventListener('input', (ev) => {
  if (!ev.target.matches('.vd-cmp-scrub')) return;
  pause(); show(parseInt(ev.target.value));
});
function reset() { pause(); frame = 0; if (player()) { show(0); play(); } }
watch('value', () => setTimeout(reset, 0));
setTimeout(reset, 0);
"""


# ------------------------------------------------------------------------------------------------------ the UI
def build() -> TabUI:
    """The tab's components (inside its gr.Tab)."""
    gr.Markdown("Run the **current request of another tab** (its prompt, controls and the settings' seed) in 2–5 "
                "attention modes and/or samplers, with the same initial noise. Quality is measured against the "
                "`full`-attention clip (run as a reference if not chosen).", elem_classes=["vd-hint"])
    with gr.Row(equal_height=False):
        source = gr.Radio([(SOURCE_LABELS[m], m) for m in MODALITIES], value="text", label="Request from the tab",
                          elem_id="vd-compare-source")
        modes = gr.CheckboxGroup(list(ATTENTION_MODES), value=DEFAULT_MODES, label="Attention modes",
                                 elem_id="vd-compare-modes")
    samplers = gr.CheckboxGroup(list(SAMPLERS), value=[], label=f"Samplers (none: the settings' sampler); modes × "
                                f"samplers = 2–{MAX_VARIANTS} runs", elem_id="vd-compare-samplers")
    with gr.Row():
        button = gr.Button("Compare", variant="primary", elem_id="vd-compare-run")
        stop = gr.Button("Stop all", variant="stop", size="sm", scale=0, min_width=80, elem_id="vd-compare-stop")
    api_prompt = gr.Textbox(visible=False)  # the `compare` API endpoint's prompt
    api_button = gr.Button(visible=False)  # vdemo.ui.layout wires the `compare` API endpoint here
    status = gr.Markdown("", elem_id="vd-compare-status")
    previews = gr.HTML("", css_template=PLAYER_CSS, js_on_load=None, elem_id="vd-compare-previews")
    player = gr.HTML("", css_template=PLAYER_CSS, js_on_load=PLAYER_JS, elem_id="vd-compare-player")
    table = gr.Markdown("", elem_id="vd-compare-table")
    with gr.Row():
        cost_plot = gr.Image(label="Cost per run", type="filepath", interactive=False, buttons=[],
                             elem_id="vd-compare-cost")
    quality_plot = gr.Image(label="Quality per frame vs full attention", type="filepath", interactive=False,
                            buttons=[], elem_id="vd-compare-quality")
    masks_plot = gr.Image(label="What each mode sees (probed from attention.attend)", type="filepath",
                          interactive=False, buttons=[], elem_id="vd-compare-masks")
    with gr.Accordion("compare.json and downloads", open=False):
        summary = gr.JSON(label="compare.json", elem_id="vd-compare-json")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="vd-compare-files")
    return TabUI(NAME, [api_prompt, modes, samplers], api_button,
                 {"source": source, "modes": modes, "samplers": samplers, "run": button, "stop": stop,
                  "status": status, "previews": previews, "player": player, "table": table, "cost": cost_plot,
                  "quality": quality_plot, "masks": masks_plot, "summary": summary, "files": files})


def wire(ui: TabUI, settings: dict, tabs: dict) -> None:
    """The Compare button reads the chosen tab's inputs (every modality tab's, picked by `source`) + the settings."""
    from vdemo.ui.layout import GPU_CONCURRENCY, GPU_QUEUE
    from vdemo.ui.settings import SETTING_NAMES

    p = ui.parts
    sources = [m for m in MODALITIES if m in tabs]
    counts = [len(tabs[m].inputs) for m in sources]
    trailing = [len(tabs[m].trailing) for m in sources]
    # As on each tab's own endpoint, switches added once the endpoint was public (`TabUI.trailing`) come last, after
    # the settings, so a positional caller's values keep their places.
    inputs = [p["source"], p["modes"], p["samplers"]] + [c for m in sources for c in tabs[m].inputs]
    inputs += [settings[k] for k in SETTING_NAMES] + [c for m in sources for c in tabs[m].trailing]
    outputs = [p[k] for k in ("status", "previews", "player", "table", "cost", "quality", "masks", "summary", "files")]

    @guarded
    def compare_tab(*values, request: gr.Request = None):
        """Compare button: (source tab, modes, samplers, every modality tab's inputs, the settings, every modality
        tab's trailing switches)."""
        source, modes, samplers = values[:3]
        tab_values, start = {}, 3
        for name, n in zip(sources, counts):
            tab_values[name] = values[start:start + n]
            start += n
        settings_obj = Settings.from_inputs(*values[start:start + len(SETTING_NAMES)])
        start += len(SETTING_NAMES)
        for name, n in zip(sources, trailing):
            tab_values[name] = (*tab_values[name], *values[start:start + n])
            start += n
        if source not in tab_values:
            raise user_error(f"unknown source tab {source!r}; choose one of: {', '.join(sources)}")
        builder = _builder(source, tab_values[source])
        for state in compare_stream(source, builder, modes, samplers, settings_obj, request):
            yield tuple(state.get(k, gr.skip()) for k in ("status", "previews", "player", "table", "cost", "quality",
                                                           "masks", "summary", "files"))

    p["run"].click(compare_tab, inputs=inputs, outputs=outputs, api_name="compare_tab", api_visibility="undocumented",
                   show_progress="minimal", show_progress_on=p["status"], concurrency_id=GPU_QUEUE,
                   concurrency_limit=GPU_CONCURRENCY, trigger_mode="once")
    p["stop"].click(stop_run, inputs=None, outputs=p["status"], queue=False, show_progress="hidden",
                    api_visibility="undocumented")


def _builder(source: str, values: tuple) -> Builder:
    import importlib

    with USER_ERRORS:
        return importlib.import_module(f"vdemo.ui.tabs.{source}").request_builder(*values)


# ------------------------------------------------------------------------------------------------- the GPU job
def compare_duration(backend_name: str, request: GenerationRequest, variants: list, control: RunControl) -> int:
    """spaces.GPU's duration: the sum of every run's estimate (the added reference included), capped at the limit."""
    from vdemo.backends import loaded_backend

    backend = loaded_backend(backend_name)
    if backend is None:
        return 60
    seconds = total_seconds(backend, request, variants)
    limit = gpu_limit_s()
    return int(min(seconds, limit) if limit else seconds)


def total_seconds(backend, request: GenerationRequest, variants: list) -> int:
    ref, added = reference_for(variants, backend)
    plan = list(variants) + ([ref] if added else [])
    return sum(request_seconds(backend, request, v.mode, v.sampler) for v in plan)


@spaces.GPU(duration=compare_duration)
def compare_on_gpu(backend_name: str, request: GenerationRequest, variants: list, control: RunControl):
    """Every run of one comparison in one GPU job; yields `vdemo.compare` events, the CompareResult last."""
    from vdemo.ui.gpu import one_line_errors, worker_backend

    backend = worker_backend(backend_name)
    yield from one_line_errors(stream_compare(backend, request, variants, control),
                               f"a comparison on backend {backend_name!r}")


class CompareHandle:
    """What ACTIVE_RUNS holds for a comparison: Stop reaches every run; the live mode / sampler toggles do not apply
    (each run has its own)."""

    def __init__(self, control: RunControl):
        self.control = control

    def stop(self) -> None:
        self.control.stop()

    def set_attention_mode(self, mode: str) -> None:
        pass

    def set_sampler(self, name: str) -> None:
        pass


# -------------------------------------------------------------------------------------------------- streaming
def prepare(tab: str, build: Builder, modes, samplers, settings: Settings):
    """(backend, request, variants) checked: one-line errors before any GPU time."""
    info = info_or_error(settings.backend)
    if tab not in info.modalities:
        raise user_error(f"backend {settings.backend!r} does not support {tab} conditioning")
    check_served(settings.backend)
    with USER_ERRORS:
        backend = get_pipeline(settings.backend).backend
        variants = make_variants(modes, samplers, backend, settings.attention_mode, settings.sampler)
        height, width = info.default_size
        fields, _ = build(settings.num_frames, height, width)
        request = GenerationRequest(**fields, num_frames=settings.num_frames, height=height, width=width,
                                    num_steps=settings.num_steps, guidance=settings.guidance, seed=settings.seed,
                                    fps=settings.fps, attention_mode=variants[0].mode, sampler=variants[0].sampler)
        check_variants(backend, request, variants)
        limit, seconds = gpu_limit_s(), total_seconds(backend, request, variants)
        if limit is not None and seconds > limit:
            raise CompareError(f"this comparison needs about {seconds} s of GPU time, over this Space's {limit} s "
                               f"limit per run: choose fewer runs, frames or steps")
    return backend, request, variants


def compare_stream(tab: str, build: Builder, modes, samplers, settings: Settings, request: gr.Request | None):
    """The Compare button's and the API's shared body: dicts of output values (status, previews, player, table,
    cost, quality, masks, summary, files, result)."""
    backend, req, variants = prepare(tab, build, modes, samplers, settings)
    ref, added = reference_for(variants, backend)
    labels = [v.label for v in variants] + ([f"{ref.label} (reference)"] if added else [])
    control = live_settings(variants[0].mode, variants[0].sampler)
    handle, session = CompareHandle(control), session_key(request)
    grids: list[np.ndarray | None] = [None] * len(labels)
    notes = ["waiting"] * len(labels)
    last_yield, result = 0.0, None
    plan = [replace(req, attention_mode=v.mode, sampler=v.sampler) for v in variants + ([ref] if added else [])]
    ACTIVE_RUNS.add(session, handle)
    place = Place(Work.of_many(settings.backend, backend, plan), total_seconds(backend, req, variants),
                  stopped=lambda: control.stopped)
    try:
        with place:  # several runs in several modes: their step times are not one run's measurement
            for waiting in place.waiting():
                yield {"status": waiting}
            if not place.admitted:
                place.done()  # out of line before the message goes
                yield {"status": "**stopped** before it started (it was waiting in line)"}
                return
            yield from place.hand({"status": f"comparing {len(labels)} runs: {', '.join(labels)}…", "previews": "",
                                   "player": ""})
            for event in compare_on_gpu(settings.backend, req, variants, control):
                if isinstance(event, RunProgress) and event.progress.step_done:
                    place.step()
                if isinstance(event, RunProgress):
                    i, pr = event.index, event.progress
                    first = grids[i] is None
                    grids[i], notes[i] = preview_image(pr.preview), f"step {pr.step}/{pr.total}"
                    if first or time.perf_counter() - last_yield >= PREVIEW_EVERY_S:
                        last_yield = time.perf_counter()
                        yield from place.hand({
                            "status": f"run {i + 1}/{event.count}: **{labels[i]}** · step {pr.step}/{pr.total}",
                            "previews": previews_html(grids, labels, notes)})
                elif isinstance(event, RunFinished):
                    r = event.record
                    notes[event.index] = f"{'stopped' if r.stopped else 'done'}: {r.wall_s:.2f} s"
                    yield from place.hand({"previews": previews_html(grids, labels, notes)})
                elif isinstance(event, CompareResult):
                    result = event
            if result is None:
                raise user_error("the comparison ended without a result")
            final = finish(result, settings, grids, labels, notes)
            place.done()  # the slot is free before the result goes out
        yield final
    finally:
        control.stop()
        ACTIVE_RUNS.remove(session, handle)
        place.done()


def finish(result: CompareResult, settings: Settings, grids, labels, notes) -> dict:
    """Export every run and the figures; the final output values."""
    _clean_old_runs()
    out_dir = RUNS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-compare-{uuid.uuid4().hex[:8]}"
    paths = write_compare(result, out_dir, settings.fps)
    summary = json.loads(paths["json"].read_text())
    head = "**stopped** — kept what finished" if result.stopped else "**done**"
    ref_note = summary["reference"]["note"]
    status = (f"{head}: {len(result.runs)} runs, seed {settings.seed}, same initial noise  \nquality reference: "
              f"`{result.reference.label}` ({ref_note})")
    files = [str(p) for k, p in paths.items() if k.startswith("mp4:")] + [str(paths[k]) for k in
                                                                          ("json", "cost", "quality", "masks", "clips")
                                                                          if k in paths]
    quality = str(paths["quality"]) if "quality" in paths else None
    return {"status": status, "previews": previews_html(grids, labels, notes), "player": player_html(result),
            "table": cost_table(result), "cost": str(paths["cost"]), "quality": quality,
            "masks": str(paths["masks"]), "summary": summary, "files": files, "result": result, "paths": paths}


def previews_html(grids: list, labels: list[str], notes: list[str]) -> str:
    figures = []
    for grid, label, note in zip(grids, labels, notes):
        img = f'<img src="{to_data_url(grid)}" alt="{html.escape(label)}">' if grid is not None else ""
        figures.append(f'<figure class="vd-cmp-preview" data-label="{html.escape(label)}">{img}'
                       f'<figcaption><b>{html.escape(label)}</b><br>{html.escape(note)}</figcaption></figure>')
    return f'<div class="vd-cmp-row">{"".join(figures)}</div>'


def player_html(result: CompareResult) -> str:
    """The synced player's markup: one clip per run (its frames as PNG data URLs), one play/pause, one scrubber."""
    runs = [r for r in result.runs if len(r.frames)]
    if not runs:
        return ""
    n = max(len(r.frames) for r in runs)
    clips = []
    for r in runs:
        srcs = [to_data_url(f) for f in r.frames]
        label = html.escape(r.variant.label + (" (reference)" if r.reference else ""))
        clips.append(f"<figure class=\"vd-cmp-clip\" data-label=\"{label}\" data-srcs='{json.dumps(srcs)}'>"
                     f'<img src="{srcs[0]}" alt="{label}"><figcaption><b>{label}</b></figcaption></figure>')
    return (f'<div class="vd-cmp-player" data-frames="{n}" data-fps="{result.request.fps}" data-frame="0" '
            f'data-playing="false"><div class="vd-cmp-row">{"".join(clips)}</div>'
            f'<div class="vd-cmp-controls"><button class="vd-cmp-play" type="button">▶ play</button>'
            f'<input class="vd-cmp-scrub" type="range" min="0" max="{n - 1}" step="1" value="0">'
            f'<span class="vd-cmp-frame">frame 1/{n}</span></div></div>')


# ------------------------------------------------------------------------------------------------ the API
@guarded
def compare(prompt: str, modes: list[str], samplers: list[str], backend: str, attention_mode: str, sampler: str,
            steps: int, guidance: float, frames: int, fps: int, seed: int, random_seed: bool,
            request: gr.Request = None):
    """Compare attention modes / samplers on one text request. prompt: what to show (the layout planner plans the
    motion, as in the Text tab); modes: 0–5 of spatial, temporal, full, causal, sparse_causal (none: attention_mode);
    samplers: e.g. ["DDIM", "Euler"] (none: sampler); modes × samplers must give 2–5 runs, all with the same seed and
    initial noise. Returns (status, the runs' last previews side by side, None, downloads: each run's mp4 +
    compare.json + plots, the compare.json summary, seed)."""
    from vdemo.ui.tabs.text import request_builder

    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    seed_out = settings.seed  # written back as a plain value (the API returns the seed used)
    for state in compare_stream("text", request_builder(prompt, True), modes, samplers, settings, request):
        if "result" not in state:
            yield state.get("status", gr.skip()), gr.skip(), gr.skip(), gr.skip(), gr.skip(), seed_out
            continue
        row = [r.frames for r in state["result"].runs if len(r.frames)]
        side = np.concatenate([preview_image(f) for f in row], axis=1) if row else None
        yield state["status"], side, None, state["files"], state["summary"], seed_out


ENDPOINT = compare
