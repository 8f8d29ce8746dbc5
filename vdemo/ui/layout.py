"""The Blocks layout: five modality tabs | the shared output panel | the shared settings panel, and the wiring.

`build_demo()` returns the configured (queued) `gr.Blocks`; `launch_kwargs()` is what `launch()` needs on top (CSS,
theme, upload limit) so that `app.py`, the tests and the screenshot script all launch the same thing.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from vdemo import world
from vdemo.config import DEFAULTS, LIMITS, MODALITIES
from vdemo.ui import handlers as h
from vdemo.ui import sources
from vdemo.ui.canvas import PAD_CSS, PAD_JS, PAD_TEMPLATE, render_pad
from vdemo.ui.detectors import DEPTH_MODELS

GPU_QUEUE = "gpu"  # every generation event shares this concurrency group: one GPU (or CPU) queue
GPU_CONCURRENCY = 1
QUEUE_MAX_SIZE = 16
TAB_LABELS = {"text": "Text", "image": "Image", "pose": "Pose", "depth": "Depth", "strokes": "Motion strokes"}
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp"]
VIDEO_TYPES = [".mp4", ".mov", ".webm", ".avi", ".mkv", ".gif"]
EXAMPLES_DIR = Path(tempfile.gettempdir()) / "vdemo-examples"
DEFAULT_SCENE = 7

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
""" + PAD_CSS


def launch_kwargs() -> dict:
    """Arguments every launch of the app passes (Gradio 6 takes css/theme in launch())."""
    theme = gr.themes.Default(primary_hue="indigo", spacing_size="sm", text_size="sm", radius_size="sm")
    return {"css": CSS, "theme": theme, "max_file_size": f"{LIMITS.max_upload_mb}mb",
            "footer_links": ["api", "gradio"]}


def _example_images() -> list[str]:
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


def _settings_panel(caps: h.Capabilities) -> dict[str, gr.components.Component]:
    lim = caps.limits
    with gr.Column(scale=2, min_width=250, elem_id="vd-settings"):
        gr.Markdown("### Settings")
        s = {
            "backend": gr.Dropdown(_backend_names(), value="tiny", label="Backend", elem_id="vd-backend"),
            "attention_mode": gr.Radio(list(caps.attention_modes), value=DEFAULTS.attention_mode,
                                       label="Attention mode (live)", elem_id="vd-mode"),
            "sampler": gr.Dropdown(list(caps.samplers), value=DEFAULTS.sampler, label="Sampler (live)",
                                   elem_id="vd-sampler"),
            "steps": gr.Slider(lim.min_steps, lim.max_steps, value=DEFAULTS.num_steps, step=1, label="Steps",
                               elem_id="vd-steps"),
            "guidance": gr.Slider(lim.min_guidance, lim.max_guidance, value=DEFAULTS.guidance, step=0.5,
                                  label="Guidance", elem_id="vd-guidance"),
            "frames": gr.Slider(lim.min_frames, lim.max_frames, value=DEFAULTS.num_frames, step=1, label="Frames",
                                elem_id="vd-frames"),
            "fps": gr.Slider(lim.min_fps, lim.max_fps, value=DEFAULTS.fps, step=1, label="fps", elem_id="vd-fps"),
        }
        with gr.Row(equal_height=True):
            s["seed"] = gr.Number(DEFAULTS.seed, label="Seed", precision=0, minimum=0, maximum=lim.max_seed,
                                  min_width=90, elem_id="vd-seed")
            s["random_seed"] = gr.Checkbox(False, label="random seed", min_width=90, elem_id="vd-random-seed")
    return s


def _backend_names() -> list[str]:
    return h.offered_backends()


def _output_panel() -> dict[str, gr.components.Component]:
    with gr.Column(scale=4, min_width=340):
        with gr.Row(equal_height=False):
            status = gr.Markdown("Pick a tab, set its inputs, press **Generate**.", elem_id="vd-status")
            stop = gr.Button("Stop", variant="stop", size="sm", scale=0, min_width=70, elem_id="vd-stop")
        estimate = gr.Markdown("", elem_id="vd-gpu-estimate")
        preview = gr.Image(label="Preview: every frame's predicted clean image, updated each step", format="png",
                           type="numpy", interactive=False, height=250, buttons=[], elem_id="vd-preview")
        video = gr.Video(label="Result (mp4)", format="mp4", interactive=False, autoplay=True, loop=True, height=250,
                         elem_id="vd-video")
        with gr.Accordion("Downloads (mp4, gif, frames, manifest) and manifest", open=False):
            files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="vd-files")
            manifest = gr.JSON(label="Manifest", elem_id="vd-manifest")
    return {"status": status, "stop": stop, "estimate": estimate, "preview": preview, "video": video, "files": files,
            "manifest": manifest}


def _generate_button(tab: str) -> gr.Button:
    return gr.Button("Generate", variant="primary", elem_id=f"vd-generate-{tab}")


def build_demo(warm_up: bool = True) -> gr.Blocks:
    """The whole app (module-level `demo` in app.py). warm_up: load the built-in model in the background now."""
    caps = h.capabilities("tiny")
    size = caps.default_size[0]
    with gr.Blocks(title="vdemo — video diffusion lab", fill_width=True) as demo:
        gr.Markdown("## vdemo <small>— a browser lab for video diffusion: one pipeline, five kinds of control; switch "
                    "the attention mode or sampler <b>while</b> it denoises, every step streams the predicted "
                    "frames</small>", elem_id="vd-header")
        banner = gr.Markdown("", elem_id="vd-banner")
        tabs: dict[str, gr.Tab] = {}
        inputs: dict[str, list] = {}
        buttons: dict[str, gr.Button] = {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=400), gr.Tabs(elem_id="vd-tabs"):
                # ---------------------------------------------------------------- text
                with gr.Tab(TAB_LABELS["text"], id="text", elem_id="vd-tab-text") as tabs["text"]:
                    prompt_text = gr.Textbox(label="Prompt", lines=2, elem_id="vd-prompt-text",
                                             value="a red circle moves right on a black background")
                    plan_motion = gr.Checkbox(
                        True, label="Plan the motion first (built-in model): a small planner turns the prompt into "
                        "a path per object, which the video model follows as motion strokes", elem_id="vd-plan")
                    buttons["text"] = _generate_button("text")
                    gr.Examples([["a red circle moves right on a black background"],
                                 ["a blue square moves up-left on a white background"],
                                 ["a green triangle and a yellow circle move down on a gray background"],
                                 ["an orange person waves on a black background"]],
                                inputs=[prompt_text], cache_examples=False, label="Examples")
                    inputs["text"] = [prompt_text, plan_motion]
                # --------------------------------------------------------------- image
                with gr.Tab(TAB_LABELS["image"], id="image", elem_id="vd-tab-image") as tabs["image"]:
                    with gr.Row(equal_height=True):
                        image_file = gr.File(label="Image (any size)", file_types=IMAGE_TYPES, type="filepath",
                                             height=190, elem_id="vd-image-file")
                        image_preview = gr.Image(label="What the model sees (centre-cropped, resized)",
                                                 interactive=False, height=190, buttons=[], format="png",
                                                 elem_id="vd-image-preview")
                    prompt_image = gr.Textbox(label="Prompt (optional)", lines=1, elem_id="vd-prompt-image")
                    buttons["image"] = _generate_button("image")
                    examples = _example_images()
                    gr.Examples([[examples[0], "a red circle moves right"], [examples[1], ""],
                                 [examples[2], ""]],
                                inputs=[image_file, prompt_image], cache_examples=False, label="Examples")
                    inputs["image"] = [prompt_image, image_file]
                # ---------------------------------------------------------------- pose
                with gr.Tab(TAB_LABELS["pose"], id="pose", elem_id="vd-tab-pose") as tabs["pose"]:
                    pose_source = gr.Radio(list(sources.POSE_SOURCES), value="Preset", label="Skeletons from",
                                           elem_id="vd-pose-source")
                    pose_preset = gr.Dropdown(list(world.POSE_PRESETS), value="walk", label="Preset",
                                              elem_id="vd-pose-preset")
                    pose_video = gr.File(label="Image or short video to extract OpenPose skeletons from",
                                         file_types=IMAGE_TYPES + VIDEO_TYPES, visible=False, height=120,
                                         elem_id="vd-pose-video")
                    skeleton_images = gr.File(label="Skeleton images (OpenPose renderings, one per frame)",
                                             file_count="multiple", file_types=IMAGE_TYPES, visible=False,
                                             height=120, elem_id="vd-pose-files")
                    pose_control = gr.Image(h.preview_image(world.pose_clip("walk", DEFAULTS.num_frames, size)),
                                            label="Skeleton frames", interactive=False, height=180, buttons=[],
                                            format="png", elem_id="vd-control-pose")
                    prompt_pose = gr.Textbox(label="Prompt (optional)", lines=1, elem_id="vd-prompt-pose",
                                             value="a red person walks right on a black background")
                    buttons["pose"] = _generate_button("pose")
                    gr.Examples([["a red person walks right on a black background", "Preset", "walk"],
                                 ["a blue person waves on a white background", "Preset", "wave"],
                                 ["a green person jumps on a gray background", "Preset", "jump"],
                                 ["a yellow person squats on a black background", "Preset", "squat"]],
                                inputs=[prompt_pose, pose_source, pose_preset], cache_examples=False,
                                label="Examples")
                    inputs["pose"] = [prompt_pose, pose_source, pose_preset, pose_video, skeleton_images]
                # --------------------------------------------------------------- depth
                with gr.Tab(TAB_LABELS["depth"], id="depth", elem_id="vd-tab-depth") as tabs["depth"]:
                    depth_source = gr.Radio(list(sources.DEPTH_SOURCES), value="Preset", label="Depth from",
                                            elem_id="vd-depth-source")
                    depth_preset = gr.Dropdown(list(world.DEPTH_PRESETS), value="approach", label="Preset",
                                               elem_id="vd-depth-preset")
                    with gr.Group(visible=False) as depth_extract:
                        depth_model = gr.Radio(list(DEPTH_MODELS), value="DPT-hybrid", label="MiDaS model",
                                               elem_id="vd-depth-model")
                        depth_video = gr.File(label="Image or short video to estimate depth from",
                                              file_types=IMAGE_TYPES + VIDEO_TYPES, height=120,
                                              elem_id="vd-depth-video")
                    depth_maps = gr.File(label="Depth maps (grayscale, near = bright, one per frame)",
                                          file_count="multiple", file_types=IMAGE_TYPES, visible=False,
                                          height=120, elem_id="vd-depth-files")
                    depth_control = gr.Image(h.preview_image(world.depth_clip("approach", DEFAULTS.num_frames,
                                                                              size)),
                                             label="Depth frames", interactive=False, height=180, buttons=[],
                                             format="png", elem_id="vd-control-depth")
                    prompt_depth = gr.Textbox(label="Prompt (optional)", lines=1, elem_id="vd-prompt-depth",
                                              value="a white circle moves closer on a black background")
                    buttons["depth"] = _generate_button("depth")
                    gr.Examples([["a white circle moves closer on a black background", "Preset", "approach"],
                                 ["a white circle moves away on a black background", "Preset", "recede"],
                                 ["", "Preset", "pass"], ["", "Preset", "three-objects"]],
                                inputs=[prompt_depth, depth_source, depth_preset], cache_examples=False,
                                label="Examples")
                    inputs["depth"] = [prompt_depth, depth_source, depth_preset, depth_model, depth_video,
                                       depth_maps]
                # ------------------------------------------------------------- strokes
                with gr.Tab(TAB_LABELS["strokes"], id="strokes", elem_id="vd-tab-strokes") as tabs["strokes"]:
                    base0 = h.strokes_base(None, DEFAULT_SCENE, "tiny")
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
                                new_scene = gr.Button("New scene", size="sm", min_width=70,
                                                      elem_id="vd-new-scene")
                            strokes_image = gr.File(label="…or your own first frame", file_types=IMAGE_TYPES,
                                                    height=64, elem_id="vd-strokes-image")
                            prompt_strokes = gr.Textbox(label="Prompt (optional)", lines=1,
                                                        elem_id="vd-prompt-strokes")
                            buttons["strokes"] = _generate_button("strokes")
                    strokes_json = gr.Textbox("[]", label="Strokes (JSON; x, y in [0, 1], drawing order)",
                                              lines=1, max_lines=4, elem_id="vd-strokes-json",
                                              elem_classes=["vd-small"])
                    strokes_examples = gr.Examples(
                        [['[{"points": [[0.3, 0.5], [0.5, 0.35], [0.75, 0.5]], "radius": 0.1}]', 7],
                         ['[{"points": [[0.3, 0.5], [0.3, 0.5]], "radius": 0.1}]', 7],
                         ['[{"points": [[0.35, 0.45], [0.75, 0.75]], "radius": 0.12}]', 3]],
                        inputs=[strokes_json, scene], cache_examples=False, label="Examples")
                    inputs["strokes"] = [prompt_strokes, strokes_json, strokes_image, scene]
            out = _output_panel()
            settings = _settings_panel(caps)

        setting_inputs = [settings[k] for k in ("backend", "attention_mode", "sampler", "steps", "guidance", "frames",
                                                "fps", "seed", "random_seed")]
        outputs = [out["status"], out["preview"], out["video"], out["files"], out["manifest"], settings["seed"]]

        # ------------------------------------------------------------------------------ generation (one queue)
        for tab, fn in h.ENDPOINTS.items():
            buttons[tab].click(fn, inputs=inputs[tab] + setting_inputs, outputs=outputs, api_name=fn.__name__,
                               api_description=(fn.__doc__ or "").split("\n")[0], show_progress="minimal",
                               show_progress_on=out["status"],
                               concurrency_id=GPU_QUEUE, concurrency_limit=GPU_CONCURRENCY, trigger_mode="once")

        # ----------------------------------------------------------------------- live toggles and Stop
        control = {"queue": False, "show_progress": "hidden", "api_visibility": "undocumented"}
        settings["attention_mode"].change(h.live_attention_mode, inputs=settings["attention_mode"], outputs=None,
                                          api_name="set_attention_mode", **control)
        settings["sampler"].change(h.live_sampler, inputs=settings["sampler"], outputs=None, api_name="set_sampler",
                                   **control)
        out["stop"].click(h.stop_run, inputs=None, outputs=out["status"], api_name="stop", **control)
        estimate_inputs = [settings[k] for k in ("backend", "attention_mode", "sampler", "steps", "frames")]
        for component in estimate_inputs:  # a ZeroGPU Space shows the GPU time a Generate would ask for
            component.change(h.gpu_estimate, inputs=estimate_inputs, outputs=out["estimate"], queue=False,
                             show_progress="hidden", api_visibility="undocumented")
        settings["backend"].change(h.on_backend_change,
                                   inputs=[settings["backend"], settings["attention_mode"], settings["sampler"]],
                                   outputs=[settings["attention_mode"], settings["sampler"], settings["steps"],
                                            settings["guidance"], settings["frames"],
                                            *[tabs[m] for m in MODALITIES]],
                                   api_visibility="undocumented")

        # ------------------------------------------------------------------------------ tab helpers
        helper = {"show_progress": "minimal", "api_visibility": "undocumented"}
        image_file.change(h.image_preview, inputs=[image_file, settings["backend"]], outputs=image_preview, **helper)
        pose_inputs = [pose_source, pose_preset, pose_video, skeleton_images, settings["frames"], settings["backend"]]
        for trigger in (pose_source.change, pose_preset.change, settings["frames"].change):
            trigger(h.pose_preview_quiet, inputs=pose_inputs, outputs=pose_control, **helper)
        for trigger in (pose_video.upload, skeleton_images.upload):  # a new upload: extract / show, errors shown
            trigger(h.pose_preview, inputs=pose_inputs, outputs=pose_control, **helper)
        pose_source.change(h.source_visibility, inputs=pose_source, outputs=[pose_preset, pose_video, skeleton_images],
                           **helper)
        depth_inputs = [depth_source, depth_preset, depth_model, depth_video, depth_maps, settings["frames"],
                        settings["backend"]]
        for trigger in (depth_source.change, depth_preset.change, settings["frames"].change):
            trigger(h.depth_preview_quiet, inputs=depth_inputs, outputs=depth_control, **helper)
        for trigger in (depth_video.upload, depth_maps.upload):
            trigger(h.depth_preview, inputs=depth_inputs, outputs=depth_control, **helper)
        depth_model.input(h.depth_model_changed, inputs=depth_inputs, outputs=depth_control, **helper)
        depth_source.change(h.source_visibility, inputs=depth_source, outputs=[depth_preset, depth_extract, depth_maps],
                            **helper)

        pad_outputs = [strokes_state, strokes_json, pad]
        pad.stroke(h.strokes_add, inputs=[strokes_state, pad_base, radius, settings["frames"]], outputs=pad_outputs,
                   **helper)
        undo.click(h.strokes_undo, inputs=[strokes_state, pad_base, settings["frames"]], outputs=pad_outputs, **helper)
        clear.click(h.strokes_clear, inputs=[pad_base, settings["frames"]], outputs=pad_outputs, **helper)
        strokes_json.input(h.strokes_edit, inputs=[strokes_json, pad_base, settings["frames"]],
                           outputs=[strokes_state, pad], **helper)
        strokes_examples.load_input_event.then(h.strokes_example,
                                               inputs=[strokes_json, strokes_image, scene, settings["frames"],
                                                       settings["backend"]],
                                               outputs=[strokes_state, pad_base, pad], **helper)
        for trigger in (scene.submit, scene.blur, strokes_image.change, settings["backend"].change):
            trigger(h.strokes_new_base, inputs=[strokes_image, scene, strokes_state, settings["frames"],
                                                settings["backend"]], outputs=[pad_base, pad], **helper)
        new_scene.click(h.new_scene, inputs=[strokes_state, settings["frames"], settings["backend"]],
                        outputs=[scene, strokes_image, pad_base, pad], **helper)
        settings["frames"].change(h.strokes_redraw, inputs=[strokes_state, pad_base, settings["frames"]], outputs=pad,
                                  **helper)  # one dot per frame

        demo.load(h.model_status, inputs=None, outputs=banner, api_visibility="undocumented")
        demo.load(h.gpu_estimate, inputs=estimate_inputs, outputs=out["estimate"], api_visibility="undocumented")
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=GPU_CONCURRENCY)
    from vdemo.ui.gpu import ZERO_GPU

    if warm_up and not ZERO_GPU and not h.model_status():  # on ZeroGPU every run belongs in the GPU worker
        threading.Thread(target=h.warm_up, args=("tiny",), name="vdemo-warm-up", daemon=True).start()
    return demo
