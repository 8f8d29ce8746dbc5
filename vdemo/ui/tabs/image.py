"""The Image tab: a first frame (any size; centre-cropped and resized to the backend's frame) and an optional
prompt → video. Endpoint `image_to_video`; helper event: the preview of what the model will see."""

from __future__ import annotations

import gradio as gr
import numpy as np

from vdemo.backends import DEFAULT_BACKEND, backend_info
from vdemo.ui import sources
from vdemo.ui.messages import USER_ERRORS, guarded
from vdemo.ui.run import Builder, Built, generate
from vdemo.ui.settings import Settings
from vdemo.ui.tabs import IMAGE_TYPES, TabUI, example_images, generate_button

NAME, LABEL = "image", "Image"
# the examples' prompts, one per `example_images()` frame: each names an object in its frame (so the planner finds it
# and the reference drags it), and the last leaves the motion to the model
EXAMPLE_PROMPTS = ("a yellow circle moves right", "a green circle moves up-left", "")


def build() -> TabUI:
    """The tab's components (inside its gr.Tab)."""
    with gr.Row(equal_height=True):
        image_file = gr.File(label="Image (any size)", file_types=IMAGE_TYPES, type="filepath",
                             height=190, elem_id="vd-image-file")
        image_preview = gr.Image(label="What the model sees (centre-cropped, resized)",
                                 interactive=False, height=190, buttons=[], format="png",
                                 elem_id="vd-image-preview")
    prompt_image = gr.Textbox(label="Prompt (optional)", lines=1, elem_id="vd-prompt-image")
    with gr.Row():
        plan_motion = gr.Checkbox(True, label="Plan the motion (built-in model): a prompt that names a motion becomes "
                                  "a path from the object found in the image", elem_id="vd-plan-image")
        drag = gr.Checkbox(True, label="Cut and drag (tiny-v2): move that object along its path as the model's "
                           "reference", elem_id="vd-drag-image")
    button = generate_button("image")
    examples = example_images()
    gr.Examples([list(pair) for pair in zip(examples, EXAMPLE_PROMPTS)],
                inputs=[image_file, prompt_image], cache_examples=False, label="Examples")
    # the switches trail the settings in the API: calls written before they existed keep working
    return TabUI(NAME, [prompt_image, image_file], button, {"file": image_file, "preview": image_preview},
                 trailing=[plan_motion, drag])


def wire(ui: TabUI, settings: dict, tabs: dict) -> None:
    kw = {"show_progress": "minimal", "api_visibility": "undocumented"}
    ui.parts["file"].change(image_preview, inputs=[ui.parts["file"], settings["backend"]],
                            outputs=ui.parts["preview"], **kw)


@guarded
def image_to_video(prompt: str, image, backend: str, attention_mode: str, sampler: str, steps: int, guidance: float,
                   frames: int, fps: int, seed: int, random_seed: bool, plan_motion: bool = True, drag: bool = True,
                   request: gr.Request = None):
    """Image → video. image: an image file of any size (centre-cropped and resized to the model's frame), used as
    frame 0; prompt: optional text; plan_motion: let the built-in model's planner turn a motion in the prompt into a
    path from the object it finds in the image; drag: give a model that takes one (tiny-v2) that object cut out and
    dragged along the path as its reference. The two switches come after the settings."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    yield from generate(NAME, request_builder(prompt, image, plan_motion, drag), settings, request)


def request_builder(prompt: str, image, plan_motion: bool = True, drag: bool = True) -> Builder:
    """The tab's inputs -> a Builder of the request's fields (the upload is read when the request is built)."""

    def build(num_frames: int, height: int, width: int) -> Built:
        picture = sources.load_user_image(image)
        return ({"prompt": prompt or "", "image": picture, "plan_motion": plan_motion, "drag_reference": drag},
                {"image_size": list(picture.shape[:2])})

    return build


def image_preview(image, backend: str = DEFAULT_BACKEND) -> np.ndarray | None:
    """Image tab: what the model will see (centre-cropped, resized to the backend's frame), shown pixel-exact."""
    if sources._path(image) is None:
        return None
    with USER_ERRORS:
        picture = sources.load_user_image(image)
    height, width = backend_info(backend).default_size
    return sources.upscale_nearest(sources.fit(picture, height, width), 256)


ENDPOINT = image_to_video
