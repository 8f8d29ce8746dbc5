"""Every event handler of the app by name, for scripts and tests: the five generation endpoints and the tabs' helper
events (their homes: `vdemo.ui.tabs.<tab>`), the live toggles and Stop (`vdemo.ui.session`), the settings panel's
events (`vdemo.ui.settings`) and what the app serves (`vdemo.ui.space`). Each is a plain function taking plain
values (generators for the endpoints); a `gr.Request` is optional (it only supplies the session key).

Generation endpoints (stable `api_name`s; each also takes the shared settings, see SETTINGS_DOC):

    text_to_video(prompt, plan_motion, *settings)
    image_to_video(prompt, image, *settings, plan_motion, drag)   # switches after the settings: older calls work
    pose_to_video(prompt, pose_source, pose_preset, pose_video, skeleton_images, *settings)
    depth_to_video(prompt, depth_source, depth_preset, depth_model, depth_video, depth_maps, *settings)
    strokes_to_video(prompt, strokes, image, scene, drag, *settings)

Each yields (status markdown, preview grid, mp4, [mp4, gif, frames.zip, manifest.json], manifest dict, seed).
"""

from vdemo.ui.messages import USER_ERRORS, guarded, user_error
from vdemo.ui.run import export_run, preview_image, progress_text
from vdemo.ui.session import ACTIVE_RUNS, live_attention_mode, live_sampler, session_key, stop_run
from vdemo.ui.settings import SETTINGS_DOC, Settings, gpu_estimate, on_backend_change
from vdemo.ui.space import SERVED, check_served, model_status, offered_backends, serve_backends, warm_up
from vdemo.ui.tabs.depth import depth_model_changed, depth_preview, depth_preview_quiet, depth_to_video
from vdemo.ui.tabs.image import image_preview, image_to_video
from vdemo.ui.tabs.pose import pose_preview, pose_preview_quiet, pose_to_video, source_visibility
from vdemo.ui.tabs.strokes import (
    new_scene,
    strokes_add,
    strokes_base,
    strokes_clear,
    strokes_edit,
    strokes_example,
    strokes_new_base,
    strokes_redraw,
    strokes_to_video,
    strokes_undo,
)
from vdemo.ui.tabs.text import text_to_video

ENDPOINTS = {"text": text_to_video, "image": image_to_video, "pose": pose_to_video, "depth": depth_to_video,
             "strokes": strokes_to_video}

__all__ = [
    "ACTIVE_RUNS", "ENDPOINTS", "SERVED", "SETTINGS_DOC", "USER_ERRORS", "Settings", "check_served",
    "depth_model_changed", "depth_preview", "depth_preview_quiet", "depth_to_video", "export_run", "gpu_estimate",
    "guarded", "image_preview", "image_to_video", "live_attention_mode", "live_sampler", "model_status",
    "new_scene", "offered_backends", "on_backend_change", "pose_preview", "pose_preview_quiet", "pose_to_video",
    "preview_image", "progress_text", "serve_backends", "session_key", "source_visibility", "stop_run",
    "strokes_add", "strokes_base", "strokes_clear", "strokes_edit", "strokes_example", "strokes_new_base",
    "strokes_redraw", "strokes_to_video", "strokes_undo", "text_to_video", "user_error", "warm_up",
]  # fmt: skip
