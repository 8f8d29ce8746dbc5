"""The GPU part of a generation, shaped the way ZeroGPU runs it (and a plain call everywhere else).

On a ZeroGPU Space `spaces.GPU` runs `generate_on_gpu` in a forked worker process that is reused while idle
(spaces/zero/wrappers.py, `generator_function_wrapper`): its arguments are pickled, CUDA exists only there, and the
worker sees only what the main process had loaded when it was forked. So:

- the arguments are plain data: the backend's *name* (the worker finds the loaded backend in the process-wide cache,
  `vdemo.backends.loaded_backend`, inherited through the fork; it never loads one), the validated GenerationRequest,
  and a `RunControl` whose settings live in a `multiprocessing.Manager().dict()` proxy (`live_settings`): a mode, a
  sampler or a Stop set in the app process reaches the running worker at its next step;
- closing the caller's generator (Gradio's cancel, a closed tab) makes spaces set the worker's stop event, and our own
  `finally` sets the shared stop flag: either ends the worker's job within a step;
- the requested duration comes from the request (`vdemo.cost`), capped at the Space's limit; a request over the
  limit was already refused, with settings that fit, before this is called;
- every error leaves the worker as a `gr.Error` with one line (spaces would otherwise show "ZeroGPU worker error"):
  user errors as they are, bugs as "internal error …" with the traceback in the server log.

Off ZeroGPU `spaces.GPU` returns the function unchanged and the same code runs in the handler's thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator

import gradio as gr
import spaces
from spaces.config import Config as SpacesConfig

from vdemo.cost import gpu_limit_s, request_seconds
from vdemo.errors import UserError, internal_error_line
from vdemo.pipeline import Done, Event, GenerationRequest, RunControl
from vdemo.ui.messages import safe_line

LOG = logging.getLogger("vdemo")
ZERO_GPU = bool(SpacesConfig.zero_gpu)  # SPACES_ZERO_GPU=true: a ZeroGPU Space (spaces reads it at import)

_MANAGER = None
_MANAGER_LOCK = threading.Lock()


def start_live_settings() -> None:
    """Start the process that holds every run's live settings (ZeroGPU only; call before launch, in the main thread).
    The Manager's server is forked while the process is still small, before any weights are loaded."""
    global _MANAGER
    with _MANAGER_LOCK:
        if ZERO_GPU and _MANAGER is None:
            _MANAGER = multiprocessing.get_context("fork").Manager()


def live_settings(mode: str, sampler: str) -> RunControl:
    """A RunControl for one run: over a Manager dict on ZeroGPU (it crosses into the worker), else process-local."""
    if not ZERO_GPU:
        return RunControl(mode, sampler)
    start_live_settings()
    return RunControl(mode, sampler, shared=_MANAGER.dict())


def gpu_duration(backend_name: str, request: GenerationRequest, control: RunControl) -> int:
    """spaces.GPU's duration for this call: the request's estimate, capped at the Space's limit."""
    from vdemo.backends import loaded_backend

    backend = loaded_backend(backend_name)
    if backend is None:
        return 60
    seconds = request_seconds(backend, request, control.mode, control.sampler)
    limit = gpu_limit_s()
    return int(min(seconds, limit) if limit else seconds)


def worker_backend(backend_name: str):
    """The named backend as this process loaded it (a forked worker inherits it); a one-line gr.Error if it was
    not loaded before the worker started — nothing loads inside GPU time."""
    from vdemo.backends import loaded_backend

    backend = loaded_backend(backend_name)
    if backend is None:
        raise gr.Error(f"backend {backend_name!r} is not loaded in this GPU worker: a Space must load it at start-up "
                       f"(list it in VDEMO_SPACE_BACKENDS)", print_exception=False)
    return backend


def one_line_errors(events: Iterator, what: str) -> Iterator:
    """Yield a GPU job's events; every error leaves as a one-line gr.Error (a bug is logged with its traceback).
    Used by every `@spaces.GPU` generator: spaces would otherwise show "ZeroGPU worker error"."""
    try:
        yield from events
    except gr.Error:
        raise
    except UserError as err:
        raise gr.Error(safe_line(err), print_exception=False) from None
    except Exception as err:
        LOG.exception("internal error in %s", what)
        raise gr.Error(safe_line(internal_error_line(err)), print_exception=False) from None


@spaces.GPU(duration=gpu_duration)
def generate_on_gpu(backend_name: str, request: GenerationRequest, control: RunControl) -> Iterator[Event]:
    """Run one generation on the named, already loaded backend; yields Progress events, then Done."""
    backend = worker_backend(backend_name)
    for event in one_line_errors(backend.run(request, control), f"a generation on backend {backend_name!r}"):
        if isinstance(event, Done):
            event.manifest["gpu"] = {"zero_gpu": ZERO_GPU, "worker_pid": os.getpid(),
                                     "requested_s": gpu_duration(backend_name, request, control)}
        yield event
