"""vdemo's Gradio app: five modality tabs on one shared video pipeline (see vdemo/ui for the layout and handlers).

    python app.py            # http://127.0.0.1:7860, the built-in model on CPU
"""

import logging
import os

import spaces  # noqa: F401 - first, before anything touches CUDA (ZeroGPU patches torch on import)
import torch

from vdemo.ui import build_demo, launch_kwargs, serve_backends

SERVER_NAME = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
SERVER_PORT = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
TORCH_THREADS = int(os.environ.get("VDEMO_TORCH_THREADS", "0"))  # 1 is much faster on a small shared CPU

if TORCH_THREADS > 0:
    torch.set_num_threads(TORCH_THREADS)

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve_backends()  # main thread, before launch: what this app serves is loaded now (ZeroGPU forks workers from here)
demo = build_demo()

if __name__ == "__main__":
    demo.launch(server_name=SERVER_NAME, server_port=SERVER_PORT, **launch_kwargs())
