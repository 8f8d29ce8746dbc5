"""Shared pytest fixtures. Everything runs offline on a CPU: no hub, no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id without network would otherwise retry for ~23 s
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parent.parent
TRAINED_TINY = REPO / "assets" / "tiny"


# ------------------------------------------------------------------------------------------------- app / UI
_SMALL_PLANNER: list[Path] = []


def small_planner(tmp_path_factory) -> Path:
    """A layout planner trained for 600 steps on 6,000 world captions (~20 s), saved once per test session."""
    if not _SMALL_PLANNER:
        import torch

        from vdemo.train import make_tokenizer, max_tokens
        from vdemo.train_planner import train_planner

        folder = tmp_path_factory.mktemp("planner")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        train_planner(folder, make_tokenizer(), max_tokens(), steps=600, examples=6000, log=lambda *_: None)
        torch.set_num_threads(threads)
        _SMALL_PLANNER.append(folder)
    return _SMALL_PLANNER[0]


@pytest.fixture(scope="session")
def small_planner_dir(tmp_path_factory) -> Path:
    return small_planner(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The built-in model for app tests: the trained one in assets/tiny when it exists (unless
    VDEMO_TEST_RANDOM_MODEL=1), else random weights saved in the same layout. Sets VDEMO_TINY_DIR for the session."""
    if (TRAINED_TINY / "config.json").exists() and os.environ.get("VDEMO_TEST_RANDOM_MODEL") != "1":
        folder = TRAINED_TINY
    else:
        from vdemo.backends.tiny import TinyBackend

        folder = tmp_path_factory.mktemp("tiny-random")
        backend = TinyBackend.random()
        backend.model.save_pretrained(folder)
        backend.tokenizer.save_pretrained(folder / "tokenizer")
        import shutil

        from vdemo.models.planner import PLANNER_DIR

        shutil.copytree(small_planner(tmp_path_factory), folder / PLANNER_DIR)
    # v2 (tiny-v2) beside it, the same way: the shipped assets/tiny_v2, else random weights in its layout
    v2 = TRAINED_TINY.parent / "tiny_v2"
    if not (v2 / "config.json").exists() or os.environ.get("VDEMO_TEST_RANDOM_MODEL") == "1":
        from vdemo.backends.tiny_v2 import TinyV2Backend, save_v2_model

        v2 = tmp_path_factory.mktemp("tiny-v2-random")
        random_v2 = TinyV2Backend.random()
        save_v2_model(v2, random_v2.model, random_v2.tokenizer)
    previous = {k: os.environ.get(k) for k in ("VDEMO_TINY_DIR", "VDEMO_TINY_V2_DIR")}
    os.environ["VDEMO_TINY_DIR"], os.environ["VDEMO_TINY_V2_DIR"] = str(folder), str(v2)
    from vdemo.backends import load_backend

    load_backend.cache_clear()
    yield folder
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    load_backend.cache_clear()


@pytest.fixture(scope="session")
def openpose_weights_dir(tmp_path_factory) -> Path:
    """Random OpenPose weights in controlnet_aux's layout (body/hand keys without their first module prefix),
    float16 to halve the ~0.5 GB; loading casts them back to float32."""
    import torch
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    folder = tmp_path_factory.mktemp("openpose")
    torch.manual_seed(0)
    for name, model in (("body_pose_model.pth", bodypose_model()), ("hand_pose_model.pth", handpose_model())):
        state = {".".join(k.split(".")[1:]): v.half() for k, v in model.state_dict().items()}
        torch.save(state, folder / name)
    torch.save({k: v.half() for k, v in FaceNet().state_dict().items()}, folder / "facenet.pth")
    return folder


@pytest.fixture(scope="session")
def midas_small_weights_dir(tmp_path_factory) -> Path:
    """Random MiDaS-small weights (midas_v21_small_256.pt) built with geffnet's EfficientNet-Lite3 (offline)."""
    import torch
    from controlnet_aux.midas.midas.midas_net_custom import MidasNet_small

    from vdemo.ui.detectors import MIDAS_FILES, _geffnet_backbone

    folder = tmp_path_factory.mktemp("midas")
    torch.manual_seed(0)
    with _geffnet_backbone():
        model = MidasNet_small(None, features=64, backbone="efficientnet_lite3", exportable=True, non_negative=True,
                               blocks={"expand": True})
    torch.save(model.state_dict(), folder / MIDAS_FILES["midas_v21_small"])
    return folder


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory) -> Path:
    """Tiny random hub components (SD 1.5, motion adapter, ControlNets, SVD; AnyFlow-FAR; Wan T2V and VACE) in their
    real repo layouts, one folder per test module (tests/hub_fixtures.py, anyflow_fixtures.py, wan_fixtures.py)."""
    from anyflow_fixtures import build_anyflow_folder
    from hub_fixtures import build_hub_folder
    from wan_fixtures import build_wan_folder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_wan_folder(build_anyflow_folder(build_hub_folder(tmp_path_factory.mktemp("hub"))))


# ---------------------------------------------------------------------------------------------------- markers
def pytest_configure(config):
    config.addinivalue_line("markers", "hub: hub backends (vdemo/backends/hub) on tiny random components saved locally")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the module: on a small shared CPU, two threads contending with other processes make
    the built-in model several times slower (measured: 0.12 s vs 0.5-3 s per step at 8 frames)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def launch_app():
    """app.py imported afresh (its module-level `demo` built anew) and launched on a free local port: (module, url)."""
    import importlib.util
    import socket

    from vdemo.ui import launch_kwargs

    spec = importlib.util.spec_from_file_location("vdemo_app", REPO / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url, _ = module.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                                   ssr_mode=False, **launch_kwargs())
    return module, url.rstrip("/")


@pytest.fixture(scope="module")
def app_url(tiny_model_dir, one_torch_thread) -> str:
    """The app's module-level `demo` (app.py, imported afresh), launched on a free local port for one test module."""
    module, url = launch_app()
    yield url
    leaked = wait_for_empty_run_queue()  # closing the server under a running handler would strand its place
    module.demo.close()
    assert not leaked, f"run queue still held when the app closed: {leaked}"


# ------------------------------------------------------------------------------------------------ run queue
def wait_for_empty_run_queue(timeout_s: float = 30.0) -> list:
    """Wait for the app's one-per-process run queue to empty; return (and clear) what still holds a place."""
    import sys
    import time

    queue_module = sys.modules.get("vdemo.ui.queue")
    if queue_module is None:
        return []
    queue = queue_module.QUEUE
    deadline = time.monotonic() + timeout_s
    while len(queue) and time.monotonic() < deadline:
        time.sleep(0.1)
    return queue.clear()  # so one leak fails one test, not every later one


@pytest.fixture(autouse=True)
def run_queue_left_empty():
    """No test may leave a place in the app's run queue: a leaked place makes every later run in the process wait
    (CI once hung for 90 minutes this way). Runs still ending (a stopped run's export) get a grace period; no garbage
    collection is forced, since the product must not depend on one."""
    yield
    leaked = wait_for_empty_run_queue()
    assert not leaked, f"run queue still held after the test: {leaked}"
