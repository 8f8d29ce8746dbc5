"""The Gradio app: layout (`build_demo`), handlers (importable, testable without a browser), the strokes pad, and
pose/depth detectors. `app.py` only builds `demo = build_demo()` and launches it."""

from vdemo.ui.layout import build_demo, launch_kwargs
from vdemo.ui.space import serve_backends

__all__ = ["build_demo", "launch_kwargs", "serve_backends"]
