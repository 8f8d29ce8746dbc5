"""The Depth tab: MiDaS-style depth (a preset, estimated from an upload with controlnet_aux, or uploaded maps; near =
bright) and an optional prompt → video. Endpoint `depth_to_video`; helper events: the depth preview, which inputs
show."""

from __future__ import annotations

import gradio as gr

from vdemo import world
from vdemo.backends import backend_info
from vdemo.config import DEFAULTS
from vdemo.ui import sources
from vdemo.ui.detectors import DEPTH_MODELS
from vdemo.ui.messages import USER_ERRORS, guarded
from vdemo.ui.run import Builder, Built, generate, preview_image
from vdemo.ui.settings import Settings
from vdemo.ui.tabs import IMAGE_TYPES, PREVIEW_SIZE, TabUI, extract_upload, generate_button
from vdemo.ui.tabs.pose import source_visibility

NAME, LABEL = "depth", "Depth"


def build() -> TabUI:
    """The tab's components (inside its gr.Tab)."""
    depth_source = gr.Radio(list(sources.DEPTH_SOURCES), value="Preset", label="Depth from",
                            elem_id="vd-depth-source")
    depth_preset = gr.Dropdown(list(world.DEPTH_PRESETS), value="approach", label="Preset",
                               elem_id="vd-depth-preset")
    with gr.Group(visible=False) as depth_extract:
        depth_model = gr.Radio(list(DEPTH_MODELS), value="DPT-hybrid", label="MiDaS model",
                               elem_id="vd-depth-model")
        depth_video = extract_upload("depth", "Image or short video to estimate depth from")
    depth_maps = gr.File(label="Depth maps (grayscale, near = bright, one per frame)",
                          file_count="multiple", file_types=IMAGE_TYPES, visible=False,
                          height=120, elem_id="vd-depth-files")
    depth_control = gr.Image(preview_image(world.depth_clip("approach", DEFAULTS.num_frames, PREVIEW_SIZE)),
                             label="Depth frames", interactive=False, height=180, buttons=[],
                             format="png", elem_id="vd-control-depth")
    prompt_depth = gr.Textbox(label="Prompt (optional)", lines=1, elem_id="vd-prompt-depth",
                              value="a white circle moves closer on a black background")
    button = generate_button("depth")
    gr.Examples([["a white circle moves closer on a black background", "Preset", "approach"],
                 ["a white circle moves away on a black background", "Preset", "recede"],
                 ["", "Preset", "pass"], ["", "Preset", "three-objects"]],
                inputs=[prompt_depth, depth_source, depth_preset], cache_examples=False,
                label="Examples")
    return TabUI(NAME, [prompt_depth, depth_source, depth_preset, depth_model, depth_video, depth_maps], button,
                 {"source": depth_source, "preset": depth_preset, "model": depth_model, "video": depth_video,
                  "maps": depth_maps, "extract": depth_extract, "control": depth_control})


def wire(ui: TabUI, settings: dict, tabs: dict) -> None:
    kw = {"show_progress": "minimal", "api_visibility": "undocumented"}
    p = ui.parts
    inputs = [p["source"], p["preset"], p["model"], p["video"], p["maps"], settings["frames"], settings["backend"]]
    for trigger in (p["source"].change, p["preset"].change, settings["frames"].change):
        trigger(depth_preview_quiet, inputs=inputs, outputs=p["control"], **kw)
    for trigger in (p["video"].upload, p["maps"].upload):
        trigger(depth_preview, inputs=inputs, outputs=p["control"], **kw)
    p["model"].input(depth_model_changed, inputs=inputs, outputs=p["control"], **kw)
    p["source"].change(source_visibility, inputs=p["source"], outputs=[p["preset"], p["extract"], p["maps"]], **kw)


@guarded
def depth_to_video(prompt: str, depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps,
                   backend: str, attention_mode: str, sampler: str, steps: int, guidance: float, frames: int, fps: int,
                   seed: int, random_seed: bool, request: gr.Request = None):
    """Depth → video. depth_source: "Preset" (depth_preset: one of vdemo.world.DEPTH_PRESETS), "Extract from
    image/video" (depth_video with depth_model "DPT-hybrid" or "MiDaS small"; MiDaS weights needed) or "Depth maps"
    (depth_maps: grayscale images, near = bright, one per frame)."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    build = request_builder(prompt, depth_source, depth_preset, depth_model, depth_video, depth_maps)
    yield from generate(NAME, build, settings, request)


def request_builder(prompt: str, depth_source: str, depth_preset: str, depth_model: str, depth_video,
                    depth_maps) -> Builder:
    """The tab's inputs -> a Builder of the request's fields (controls are read or extracted when it is built)."""

    def build(num_frames: int, height: int, width: int) -> Built:
        clip = sources.depth_frames(depth_source, depth_preset, depth_model, depth_video, depth_maps, num_frames,
                                    height)
        info = {"depth_source": depth_source, **({"depth_preset": depth_preset} if depth_source == "Preset" else {}),
                **({"depth_model": depth_model} if depth_source.startswith("Extract") else {})}
        return {"prompt": prompt or "", "depth": clip}, info

    return build


def depth_preview(depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps, frames: int,
                  backend: str):
    """Depth tab: the depth frames the run will use."""
    size = backend_info(backend).default_size[0]
    with USER_ERRORS:
        clip = sources.depth_frames(depth_source, depth_preset, depth_model, depth_video, depth_maps, int(frames),
                                    size)
    return preview_image(clip)


def depth_preview_quiet(depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps, frames: int,
                        backend: str):
    """As pose_preview_quiet, for the depth tab."""
    if depth_source.startswith("Extract"):
        return gr.skip() if sources._path(depth_video) else None
    try:
        return depth_preview(depth_source, depth_preset, depth_model, depth_video, depth_maps, frames, backend)
    except gr.Error:
        return None


def depth_model_changed(depth_source: str, depth_preset: str, depth_model: str, depth_video, depth_maps, frames: int,
                        backend: str):
    """Another MiDaS model picked: re-extract if there is an upload to extract from."""
    if not sources._path(depth_video):
        return gr.skip()
    return depth_preview(depth_source, depth_preset, depth_model, depth_video, depth_maps, frames, backend)


ENDPOINT = depth_to_video
