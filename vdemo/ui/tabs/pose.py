"""The Pose tab: OpenPose skeletons (a preset, extracted from an upload with controlnet_aux, or uploaded renderings)
and an optional prompt → video. Endpoint `pose_to_video`; helper events: the skeleton preview, which inputs show."""

from __future__ import annotations

import gradio as gr

from vdemo import world
from vdemo.backends import backend_info
from vdemo.config import DEFAULTS
from vdemo.ui import sources
from vdemo.ui.messages import USER_ERRORS, guarded
from vdemo.ui.run import Builder, Built, generate, preview_image
from vdemo.ui.settings import Settings
from vdemo.ui.tabs import IMAGE_TYPES, PREVIEW_SIZE, TabUI, extract_upload, generate_button

NAME, LABEL = "pose", "Pose"


def build() -> TabUI:
    """The tab's components (inside its gr.Tab)."""
    pose_source = gr.Radio(list(sources.POSE_SOURCES), value="Preset", label="Skeletons from",
                           elem_id="vd-pose-source")
    pose_preset = gr.Dropdown(list(world.POSE_PRESETS), value="walk", label="Preset",
                              elem_id="vd-pose-preset")
    with gr.Group(visible=False) as pose_extract:
        pose_video = extract_upload("pose", "Image or short video to extract OpenPose skeletons from")
    skeleton_images = gr.File(label="Skeleton images (OpenPose renderings, one per frame)",
                             file_count="multiple", file_types=IMAGE_TYPES, visible=False,
                             height=120, elem_id="vd-pose-files")
    pose_control = gr.Image(preview_image(world.pose_clip("walk", DEFAULTS.num_frames, PREVIEW_SIZE)),
                            label="Skeleton frames", interactive=False, height=180, buttons=[],
                            format="png", elem_id="vd-control-pose")
    prompt_pose = gr.Textbox(label="Prompt (optional)", lines=1, elem_id="vd-prompt-pose",
                             value="a red person walks right on a black background")
    button = generate_button("pose")
    gr.Examples([["a red person walks right on a black background", "Preset", "walk"],
                 ["a blue person waves on a white background", "Preset", "wave"],
                 ["a green person jumps on a gray background", "Preset", "jump"],
                 ["a yellow person squats on a black background", "Preset", "squat"]],
                inputs=[prompt_pose, pose_source, pose_preset], cache_examples=False,
                label="Examples")
    return TabUI(NAME, [prompt_pose, pose_source, pose_preset, pose_video, skeleton_images], button,
                 {"source": pose_source, "preset": pose_preset, "video": pose_video, "skeletons": skeleton_images,
                  "control": pose_control, "extract": pose_extract})


def wire(ui: TabUI, settings: dict, tabs: dict) -> None:
    kw = {"show_progress": "minimal", "api_visibility": "undocumented"}
    p = ui.parts
    inputs = [p["source"], p["preset"], p["video"], p["skeletons"], settings["frames"], settings["backend"]]
    for trigger in (p["source"].change, p["preset"].change, settings["frames"].change):
        trigger(pose_preview_quiet, inputs=inputs, outputs=p["control"], **kw)
    for trigger in (p["video"].upload, p["skeletons"].upload):  # a new upload: extract / show, errors shown
        trigger(pose_preview, inputs=inputs, outputs=p["control"], **kw)
    p["source"].change(source_visibility, inputs=p["source"], outputs=[p["preset"], p["extract"], p["skeletons"]],
                       **kw)


@guarded
def pose_to_video(prompt: str, pose_source: str, pose_preset: str, pose_video, skeleton_images, backend: str,
                  attention_mode: str, sampler: str, steps: int, guidance: float, frames: int, fps: int, seed: int,
                  random_seed: bool, request: gr.Request = None):
    """Pose → video. pose_source: "Preset" (pose_preset: walk | wave | jump | squat), "Extract from image/video"
    (pose_video: an image or short video; OpenPose weights needed) or "Skeleton images" (skeleton_images: OpenPose
    renderings, one per frame, in name order)."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    build = request_builder(prompt, pose_source, pose_preset, pose_video, skeleton_images)
    yield from generate(NAME, build, settings, request)


def request_builder(prompt: str, pose_source: str, pose_preset: str, pose_video, skeleton_images) -> Builder:
    """The tab's inputs -> a Builder of the request's fields (controls are read or extracted when it is built)."""

    def build(num_frames: int, height: int, width: int) -> Built:
        clip = sources.pose_frames(pose_source, pose_preset, pose_video, skeleton_images, num_frames, height)
        info = {"pose_source": pose_source, **({"pose_preset": pose_preset} if pose_source == "Preset" else {})}
        return {"prompt": prompt or "", "pose": clip}, info

    return build


def pose_preview(pose_source: str, pose_preset: str, pose_video, skeleton_images, frames: int, backend: str):
    """Pose tab: the skeleton frames the run will use."""
    size = backend_info(backend).default_size[0]
    with USER_ERRORS:
        clip = sources.pose_frames(pose_source, pose_preset, pose_video, skeleton_images, int(frames), size)
    return preview_image(clip)


def pose_preview_quiet(pose_source: str, pose_preset: str, pose_video, skeleton_images, frames: int, backend: str):
    """Source, preset or frame count changed: redraw without running the detector and without error toasts (an
    input not uploaded yet just clears the preview)."""
    if pose_source.startswith("Extract"):
        return gr.skip() if sources._path(pose_video) else None
    try:
        return pose_preview(pose_source, pose_preset, pose_video, skeleton_images, frames, backend)
    except gr.Error:
        return None


def source_visibility(source: str):
    """Pose/depth tabs: show only the inputs of the chosen source (preset, upload to extract, or control images)."""
    return (gr.update(visible=source == "Preset"), gr.update(visible=source.startswith("Extract")),
            gr.update(visible=not (source == "Preset" or source.startswith("Extract"))))


ENDPOINT = pose_to_video
