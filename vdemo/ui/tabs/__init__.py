"""One module per modality tab. Each tab module has:

    NAME, LABEL                      # "pose", "Pose"
    build() -> TabUI                 # its components, created inside its gr.Tab
    wire(ui, settings, tabs)         # its helper events (previews, the strokes pad, ...), once every component
                                     # exists; `settings`: the settings panel's components, `tabs`: every TabUI by name
    request_builder(*ui.builder_inputs)  # the tab's inputs -> a Builder of GenerationRequest fields (modality tabs)
    ENDPOINT                         # its generation endpoint (api_name = the function's name), a generator

`vdemo.ui.layout.build_demo` composes them; a new tab is a new module here plus one line in `TAB_MODULES`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from vdemo import world
from vdemo.backends import DEFAULT_BACKEND, backend_info

IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp"]
VIDEO_TYPES = [".mp4", ".mov", ".webm", ".avi", ".mkv", ".gif"]
EXAMPLES_DIR = Path(tempfile.gettempdir()) / "vdemo-examples"
PREVIEW_SIZE = backend_info(DEFAULT_BACKEND).default_size[0]  # the presets' first previews: the default model's frames
TAB_MODULES = ("text", "image", "pose", "depth", "strokes", "compare", "video")  # page order; vdemo.ui.tabs.<name>


@dataclass
class TabUI:
    """A built tab: its name, the endpoint's own inputs in order, its Generate button, and named parts for wire().

    `trailing`: inputs the endpoint takes *after* the shared settings: switches added once the endpoint was public,
    so that an API call written before them (its settings positional) still works, with the switch at its default."""

    name: str
    inputs: list
    button: gr.Button
    parts: dict = field(default_factory=dict)
    trailing: list = field(default_factory=list)

    @property
    def builder_inputs(self) -> list:
        """What the tab's `request_builder` takes, in order: its own inputs, then the trailing ones."""
        return self.inputs + self.trailing


def generate_button(tab: str) -> gr.Button:
    return gr.Button("Generate", variant="primary", elem_id=f"vd-generate-{tab}")


def extract_upload(kind: str, label: str) -> gr.File:
    """The pose / depth tabs' "extract from an upload" input (elem_id `vd-<kind>-video`). When the detector's weights
    are missing (`detectors.unavailable_reason`, checked once at start-up) it is disabled and greyed, with a caption
    (`vd-<kind>-unavailable`) saying why and how to provide them."""
    from vdemo.ui.detectors import unavailable_reason

    reason = unavailable_reason(kind)
    upload = gr.File(label=label, file_types=IMAGE_TYPES + VIDEO_TYPES, height=64 if reason else 120,
                     interactive=not reason, elem_classes=["vd-disabled"] if reason else None,
                     elem_id=f"vd-{kind}-video")
    gr.Markdown(f"Unavailable here: {reason}" if reason else "", visible=bool(reason), elem_id=f"vd-{kind}-unavailable",
                elem_classes=["vd-caption", "vd-unavailable"])
    return upload


def example_images() -> list[str]:
    """A few first frames from the world, written once, for the Image tab's examples (offline)."""
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in (3, 11, 42):
        path = EXAMPLES_DIR / f"first-frame-{seed}.png"
        if not path.exists():
            clip = world.sample_clip(np.random.default_rng(seed), num_frames=2, size=256, kind="objects")
            Image.fromarray(clip.frames[0]).save(path)
        paths.append(str(path))
    return paths


def tab_modules() -> list:
    """The tab modules in page order."""
    import importlib

    return [importlib.import_module(f"vdemo.ui.tabs.{name}") for name in TAB_MODULES]
