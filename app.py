"""vdemo's Gradio app: five modality tabs on one shared video pipeline (see vdemo/ui for the layout and handlers).

    python app.py            # http://127.0.0.1:7860, the built-in model on CPU
"""

import os

from vdemo.ui import build_demo, launch_kwargs

SERVER_NAME = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
SERVER_PORT = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))

demo = build_demo()

if __name__ == "__main__":
    demo.launch(server_name=SERVER_NAME, server_port=SERVER_PORT, **launch_kwargs())
