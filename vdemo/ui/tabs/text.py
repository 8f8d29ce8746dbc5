"""The Text tab: a prompt (and the built-in model's layout-planner switch) → video. Endpoint `text_to_video`."""

from __future__ import annotations

import gradio as gr

from vdemo.ui.messages import guarded, user_error
from vdemo.ui.run import Builder, generate
from vdemo.ui.settings import Settings
from vdemo.ui.tabs import TabUI, generate_button

NAME, LABEL = "text", "Text"


def build() -> TabUI:
    """The tab's components (inside its gr.Tab)."""
    prompt_text = gr.Textbox(label="Prompt", lines=2, elem_id="vd-prompt-text",
                             value="a red circle moves right on a black background")
    plan_motion = gr.Checkbox(
        True, label="Plan the motion first (built-in model): a small planner turns the prompt into "
        "a path per object, which the video model follows as motion strokes", elem_id="vd-plan")
    button = generate_button("text")
    gr.Examples([["a red circle moves right on a black background"],
                 ["a blue square moves up-left on a white background"],
                 ["a green triangle and a yellow circle move down on a gray background"],
                 ["an orange person waves on a black background"]],
                inputs=[prompt_text], cache_examples=False, label="Examples")
    return TabUI(NAME, [prompt_text, plan_motion], button)


def wire(ui: TabUI, settings: dict, tabs: dict) -> None:
    """No helper events: the prompt goes straight to Generate."""


@guarded
def text_to_video(prompt: str, plan_motion: bool, backend: str, attention_mode: str, sampler: str, steps: int,
                  guidance: float, frames: int, fps: int, seed: int, random_seed: bool, request: gr.Request = None):
    """Text → video. prompt: what to show, e.g. "a red circle moves right on a black background"; plan_motion: let
    the built-in model's layout planner turn the prompt into a path per object first."""
    settings = Settings.from_inputs(backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed)
    yield from generate(NAME, request_builder(prompt, plan_motion), settings, request)


def request_builder(prompt: str, plan_motion: bool) -> Builder:
    """The tab's inputs -> a Builder of the request's fields (shared by Generate and other users of a tab's request)."""
    if not (prompt or "").strip():
        raise user_error("write a prompt first, e.g. “a red circle moves right on a black background”")
    fields = {"prompt": prompt, "plan_motion": bool(plan_motion)}
    return lambda num_frames, height, width: (fields, {})


ENDPOINT = text_to_video
