"""The page: the modality tabs | the shared output panel | the shared settings panel, and the shared wiring.

`build_demo()` composes the tab modules (`vdemo.ui.tabs`), the output panel (`vdemo.ui.run`) and the settings panel
(`vdemo.ui.settings`), wires Generate (one GPU queue), the live toggles and Stop (`vdemo.ui.session`), and returns
the queued `gr.Blocks`; `launch_kwargs()` is what `launch()` needs on top (CSS, theme, upload limit), so `app.py`,
the tests and the screenshot script all launch the same thing.
"""

from __future__ import annotations

import functools
import threading

import gradio as gr

from vdemo.backends import BUILTIN, DEFAULT_BACKEND, backend_info
from vdemo.config import LIMITS, MODALITIES
from vdemo.ui import session
from vdemo.ui.canvas import PAD_CSS
from vdemo.ui.run import output_panel, protect_cache
from vdemo.ui.settings import SETTING_NAMES, gpu_estimate, on_backend_change, settings_panel, strict_inputs
from vdemo.ui.space import SERVED, model_status, offered_backends, warm_up
from vdemo.ui.tabs import tab_modules
from vdemo.ui.tabs.strokes import DEFAULT_SCENE  # noqa: F401 - re-exported: the strokes tab's first scene

GPU_QUEUE = "gpu"  # every generation event shares this concurrency group
QUEUE_MAX_SIZE = 16
# Gradio lets every queued generation into its handler, where `vdemo.ui.queue.QUEUE` admits one run at a time (one GPU
# or CPU) and tells each waiting user their place and an estimate from measured step times (Gradio's own ETA knows
# nothing of steps, frames or modes)
GPU_CONCURRENCY = QUEUE_MAX_SIZE
CACHE_CLEANUP = (3600, 3600)  # Gradio deletes uploads and results older than an hour, checking every hour
HEADER = ("## vdemo <small>— a browser lab for video diffusion: one pipeline, five kinds of control; switch the "
          "attention mode or sampler <b>while</b> it denoises, every step streams the predicted frames</small>")

CSS = """
.gradio-container { max-width: 100% !important; padding-top: 6px !important; }
#vd-header h2 { font-size: 1.15rem; margin: 0 0 2px 0; }
#vd-header small { font-weight: 400; font-size: 0.8rem; opacity: 0.75; }
#vd-banner:empty { display: none; }
#vd-status { min-height: 3.6em; font-size: 0.85rem; line-height: 1.35; }
#vd-status p { margin: 0; }
#vd-preview img, #vd-control-pose img, #vd-control-depth img, #vd-image-preview img { image-rendering: pixelated; }
#vd-settings { gap: 6px; }
#vd-settings .block { padding: 6px 8px; }
.vd-small textarea { font-family: ui-monospace, monospace; font-size: 0.75rem; }
.vd-caption p { font-size: 0.75rem; opacity: 0.75; margin: 0; }
.vd-unavailable p { opacity: 0.55; font-style: italic; }
.vd-disabled { opacity: 0.45; pointer-events: none; }
/* uploads' whole names, wrapped (Gradio cuts the stem with an ellipsis) */
.filename { display: block !important; }
.filename .stem, .filename .ext { display: inline; white-space: normal !important; word-break: break-all; }
#vd-backends-unavailable:empty { display: none; }
#vd-compare-table { overflow-x: auto; }
#vd-compare-table th, #vd-compare-table td { white-space: nowrap; word-break: keep-all; font-size: 0.72rem;
                                             padding: 2px 5px; }
""" + PAD_CSS


def launch_kwargs() -> dict:
    """Arguments every launch of the app passes (Gradio 6 takes css/theme in launch())."""
    theme = gr.themes.Default(primary_hue="indigo", spacing_size="sm", text_size="sm", radius_size="sm")
    return {"css": CSS, "theme": theme, "max_file_size": f"{LIMITS.max_upload_mb}mb",
            "footer_links": ["api", "gradio"]}


def _wire_generation(tabs: list, uis: dict, settings: dict, out: dict) -> None:
    """Each tab's Generate: its inputs + the shared settings (+ its trailing switches) -> the output panel, all in one
    GPU queue."""
    setting_inputs = [settings[k] for k in SETTING_NAMES]
    outputs = [out["status"], out["preview"], out["video"], out["files"], out["manifest"], settings["seed"]]
    for tab in tabs:
        fn, ui = tab.ENDPOINT, uis[tab.NAME]
        ui.button.click(fn, inputs=ui.inputs + setting_inputs + ui.trailing, outputs=outputs,
                        api_name=fn.__name__, api_description=(fn.__doc__ or "").split("\n")[0],
                        show_progress="minimal", show_progress_on=out["status"], concurrency_id=GPU_QUEUE,
                        concurrency_limit=GPU_CONCURRENCY, trigger_mode="once")


def _wire_settings(settings: dict, out: dict, tab_panels: dict) -> None:
    """Live toggles and Stop (no queue: they reach a running run at its next step), backend changes, GPU estimate."""
    control = {"queue": False, "show_progress": "hidden", "api_visibility": "undocumented"}
    settings["attention_mode"].change(session.live_attention_mode, inputs=settings["attention_mode"], outputs=None,
                                      api_name="set_attention_mode", **control)
    settings["sampler"].change(session.live_sampler, inputs=settings["sampler"], outputs=None,
                               api_name="set_sampler", **control)
    out["stop"].click(session.stop_run, inputs=None, outputs=out["status"], api_name="stop", **control)
    settings["backend"].change(on_backend_change,
                               inputs=[settings["backend"], settings["attention_mode"], settings["sampler"]],
                               outputs=[settings["attention_mode"], settings["sampler"], settings["steps"],
                                        settings["guidance"], settings["frames"], *[tab_panels[m] for m in MODALITIES],
                                        settings["notes"]],
                               api_visibility="undocumented")
    estimate_inputs = [settings[k] for k in ("backend", "attention_mode", "sampler", "steps", "frames")]
    for component in estimate_inputs:  # a ZeroGPU Space shows the GPU time a Generate would ask for
        component.change(gpu_estimate, inputs=estimate_inputs, outputs=out["estimate"], queue=False,
                         show_progress="hidden", api_visibility="undocumented")


def build_demo(warm_up_model: bool = True) -> gr.Blocks:
    """The whole app (module-level `demo` in app.py). warm_up_model: run the built-in model once in the background."""
    backends = offered_backends()
    first = DEFAULT_BACKEND if DEFAULT_BACKEND in backends else backends[0]  # what the page opens on
    info = backend_info(first)
    tabs = tab_modules()
    with gr.Blocks(title="vdemo — video diffusion lab", fill_width=True, delete_cache=CACHE_CLEANUP) as demo:
        gr.Markdown(HEADER, elem_id="vd-header")
        banner = gr.Markdown("", elem_id="vd-banner")
        uis, panels = {}, {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=400), gr.Tabs(elem_id="vd-tabs"):
                for tab in tabs:
                    with gr.Tab(tab.LABEL, id=tab.NAME, elem_id=f"vd-tab-{tab.NAME}") as panels[tab.NAME]:
                        uis[tab.NAME] = tab.build()
            out = output_panel()
            settings = settings_panel(info)
        _wire_generation(tabs, uis, settings, out)
        _wire_settings(settings, out, panels)
        for tab in tabs:
            tab.wire(uis[tab.NAME], settings, uis)
        demo.load(functools.partial(model_status, first), inputs=None, outputs=banner, api_visibility="undocumented")
        estimate_inputs = [settings[k] for k in ("backend", "attention_mode", "sampler", "steps", "frames")]
        demo.load(gpu_estimate, inputs=estimate_inputs, outputs=out["estimate"], api_visibility="undocumented")
    strict_inputs(demo)  # every number / checkbox an event takes refuses a wrong type in one line, never coerces
    protect_cache()  # the examples' copies Gradio just made stay out of the cache trimming
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)  # helper events (previews) one at a time
    from vdemo.ui.gpu import ZERO_GPU

    serves_builtin = first in BUILTIN and SERVED.get(first, "ok") == "ok"
    if warm_up_model and not ZERO_GPU and not model_status(first) and serves_builtin:
        # on ZeroGPU every run belongs in the GPU worker; a Space that opens on a hub backend skips it
        threading.Thread(target=warm_up, args=(first,), name="vdemo-warm-up", daemon=True).start()
    return demo
