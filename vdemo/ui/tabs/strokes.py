"""The Motion strokes tab: paths and anchors drawn on a first frame (a generated scene or an upload) and an optional
prompt → video. Endpoint `strokes_to_video`; helper events: the strokes pad (draw, undo, clear, edit the JSON,
examples, a new scene). Strokes live in `gr.State`, never in a module global (shared by all users)."""

from __future__ import annotations

import secrets

import gradio as gr
import numpy as np

from vdemo.backends import DEFAULT_BACKEND, backend_info
from vdemo.config import DEFAULTS, LIMITS
from vdemo.ui import sources
from vdemo.ui.canvas import PAD_JS, PAD_TEMPLATE, render_pad
from vdemo.ui.messages import USER_ERRORS, guarded, user_error
from vdemo.ui.run import Builder, Built, generate
from vdemo.ui.settings import Settings
from vdemo.ui.sources import InputError
from vdemo.ui.tabs import IMAGE_TYPES, TabUI, generate_button

DEFAULT_SCENE = 7

NAME, LABEL = "strokes", "Motion strokes"


def build() -> TabUI:
    """The tab's components (inside its gr.Tab)."""
    base0 = strokes_base(None, DEFAULT_SCENE, DEFAULT_BACKEND)
    strokes_state = gr.State([])
    pad_base = gr.State(base0)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=240):
            pad = gr.HTML(render_pad(base0, [], DEFAULTS.num_frames), html_template=PAD_TEMPLATE,
                          js_on_load=PAD_JS, label="Strokes", elem_id="vd-pad")
            gr.Markdown("Drag on the frame to draw a path, click to pin an anchor. Dots: where "
                        "the object is in each frame.", elem_classes=["vd-hint"])
        with gr.Column(scale=2, min_width=180):
            radius = gr.Slider(0.02, 0.3, value=DEFAULTS.stroke_radius, step=0.01,
                               label="Next stroke's radius", elem_id="vd-radius")
            with gr.Row():
                undo = gr.Button("Undo last", size="sm", min_width=60, elem_id="vd-undo")
                clear = gr.Button("Clear", size="sm", min_width=60, elem_id="vd-clear")
            with gr.Row(equal_height=True):
                scene = gr.Number(DEFAULT_SCENE, label="Scene", precision=0, minimum=0,
                                  min_width=70, elem_id="vd-scene")
                new_scene_button = gr.Button("New scene", size="sm", min_width=70,
                                      elem_id="vd-new-scene")
            strokes_image = gr.File(label="…or your own first frame", file_types=IMAGE_TYPES,
                                    height=64, elem_id="vd-strokes-image")
            prompt_strokes = gr.Textbox(label="Prompt (optional)", lines=1,
                                        elem_id="vd-prompt-strokes")
            drag = gr.Checkbox(True, label="Cut and drag (tiny-v2): move each stroke's shape along it as the "
                               "model's reference", elem_id="vd-drag")
            button = generate_button("strokes")
    strokes_json = gr.Textbox("[]", label="Strokes (JSON; x, y in [0, 1], drawing order)",
                              lines=1, max_lines=4, elem_id="vd-strokes-json",
                              elem_classes=["vd-small"])
    strokes_examples = gr.Examples(
        [['[{"points": [[0.3, 0.5], [0.5, 0.35], [0.75, 0.5]], "radius": 0.1}]', 7],
         ['[{"points": [[0.3, 0.5], [0.3, 0.5]], "radius": 0.1}]', 7],
         ['[{"points": [[0.35, 0.45], [0.75, 0.75]], "radius": 0.12}]', 3]],
        inputs=[strokes_json, scene], cache_examples=False, label="Examples")
    return TabUI(NAME, [prompt_strokes, strokes_json, strokes_image, scene, drag], button,
                 {"state": strokes_state, "base": pad_base, "pad": pad, "radius": radius, "undo": undo, "clear": clear,
                  "scene": scene, "new_scene": new_scene_button, "image": strokes_image, "json": strokes_json,
                  "examples": strokes_examples})


def wire(ui: TabUI, settings: dict, tabs: dict) -> None:
    kw = {"show_progress": "minimal", "api_visibility": "undocumented"}
    p, frames, backend = ui.parts, settings["frames"], settings["backend"]
    pad_outputs = [p["state"], p["json"], p["pad"]]
    p["pad"].stroke(strokes_add, inputs=[p["state"], p["base"], p["radius"], frames], outputs=pad_outputs, **kw)
    p["undo"].click(strokes_undo, inputs=[p["state"], p["base"], frames], outputs=pad_outputs, **kw)
    p["clear"].click(strokes_clear, inputs=[p["base"], frames], outputs=pad_outputs, **kw)
    p["json"].input(strokes_edit, inputs=[p["json"], p["base"], frames], outputs=[p["state"], p["pad"]], **kw)
    p["examples"].load_input_event.then(strokes_example, inputs=[p["json"], p["image"], p["scene"], frames, backend],
                                        outputs=[p["state"], p["base"], p["pad"]], **kw)
    for trigger in (p["scene"].submit, p["scene"].blur, p["image"].change, backend.change):
        trigger(strokes_new_base, inputs=[p["image"], p["scene"], p["state"], frames, backend],
                outputs=[p["base"], p["pad"]], **kw)
    p["new_scene"].click(new_scene, inputs=[p["state"], frames, backend],
                         outputs=[p["scene"], p["image"], p["base"], p["pad"]], **kw)
    frames.change(strokes_redraw, inputs=[p["state"], p["base"], frames], outputs=p["pad"], **kw)  # a dot per frame


@guarded
def strokes_to_video(prompt: str, strokes: str, image, scene: int, drag: bool, backend: str, attention_mode: str,
                     sampler: str, steps: int, guidance: float, frames: int, fps: int, seed: int, random_seed: bool,
                     request: gr.Request = None):
    """Motion strokes → video. strokes: JSON [{"points": [[x, y], ...], "radius": r}, ...] with x, y in [0, 1]
    (origin top-left, drawing order; one point = an anchor); image: the first frame (optional file; without one, the
    generated scene number `scene` is used); prompt: optional text; drag: give a model that takes one (tiny-v2) the
    shapes under the strokes cut out and dragged along them as its reference."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    yield from generate(NAME, request_builder(prompt, strokes, image, scene, drag), settings, request)


def request_builder(prompt: str, strokes: str, image, scene: int, drag: bool = True) -> Builder:
    """The tab's inputs -> a Builder of the request's fields (controls are read or extracted when it is built)."""

    def build(num_frames: int, height: int, width: int) -> Built:
        parsed = sources.parse_strokes_text(strokes)
        if not parsed:
            raise InputError("draw at least one stroke on the image first (drag = path, click = anchor)")
        first = sources.strokes_image(image, scene, height, width)
        info = {"first_frame": "upload" if sources._path(image) else f"scene {int(scene)}"}
        return {"prompt": prompt or "", "image": first, "strokes": tuple(parsed), "drag_reference": bool(drag)}, info

    return build


def strokes_base(image, scene, backend: str = DEFAULT_BACKEND) -> np.ndarray:
    """The pad's background: the uploaded image or the generated scene, cropped to the backend's frame aspect."""
    from vdemo.ui.canvas import pad_shape

    height, width = pad_shape(*backend_info(backend).default_size)
    with USER_ERRORS:
        return sources.strokes_image(image, scene, height, width)


def _pad_outputs(strokes: list, base: np.ndarray, frames: int):
    from vdemo.ui.canvas import render_pad

    return strokes, sources.strokes_text(strokes), render_pad(base, strokes, int(frames))


def strokes_redraw(strokes: list, base: np.ndarray, frames: int) -> str:
    """The frame count changed: redraw the pad (one dot per frame)."""
    from vdemo.ui.canvas import render_pad

    return render_pad(base, strokes, int(frames))


def strokes_add(strokes: list, base: np.ndarray, radius: float, frames: int, evt: gr.EventData):
    """The pad fired `stroke` with {"points": [[x, y], ...]} in drawing order: append it (max LIMITS.max_strokes)."""
    points = getattr(evt, "_data", None) or {}
    with USER_ERRORS:
        stroke = sources.new_stroke(points.get("points") if isinstance(points, dict) else None, float(radius))
    if len(strokes) >= LIMITS.max_strokes:
        raise user_error(f"at most {LIMITS.max_strokes} strokes; undo one first")
    return _pad_outputs([*strokes, stroke], base, frames)


def strokes_undo(strokes: list, base: np.ndarray, frames: int):
    return _pad_outputs(list(strokes[:-1]), base, frames)


def strokes_clear(base: np.ndarray, frames: int):
    return _pad_outputs([], base, frames)


def strokes_edit(text: str, base: np.ndarray, frames: int):
    """The JSON box was edited by hand (or filled by an example): parse it into the state and redraw."""
    with USER_ERRORS:
        strokes = sources.parse_strokes_text(text)
    from vdemo.ui.canvas import render_pad

    return strokes, render_pad(base, strokes, int(frames))


def strokes_example(text: str, image, scene, frames: int, backend: str = DEFAULT_BACKEND):
    """An example row filled the JSON box and the scene number: load both into the state and the pad."""
    base = strokes_base(image, scene, backend)
    strokes, pad = strokes_edit(text, base, frames)
    return strokes, base, pad


def strokes_new_base(image, scene, strokes: list, frames: int, backend: str = DEFAULT_BACKEND):
    """A new first frame (upload, scene number or backend): redraw the pad with the current strokes."""
    from vdemo.ui.canvas import render_pad

    base = strokes_base(image, scene, backend)
    return base, render_pad(base, strokes, int(frames))


def new_scene(strokes: list, frames: int, backend: str = DEFAULT_BACKEND):
    """'New scene' button: a random generated first frame (and no upload)."""
    scene = secrets.randbelow(10_000)
    base, pad = strokes_new_base(None, scene, strokes, frames, backend)
    return scene, None, base, pad


ENDPOINT = strokes_to_video
