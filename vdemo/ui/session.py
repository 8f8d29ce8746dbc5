"""Each browser session's live run: the registry the live toggles and Stop look in.

The running `Run` of a session sits in `ACTIVE_RUNS` under the session hash (never in a module-level "current run"
shared by all users). The attention-mode and sampler controls' change events and the Stop button look up the
caller's own run and call `run.set_attention_mode` / `run.set_sampler` / `run.stop()`, which the denoising loop reads
before its next step — in this process or, on ZeroGPU, in the GPU worker (the run's settings live in a shared
mapping, see `vdemo.ui.gpu`). A new Generate in the same session stops the session's previous run.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr

from vdemo.ui.messages import USER_ERRORS, guarded

SESSION_FALLBACK = "local"  # the session key when a handler is called without a gr.Request (tests, scripts)


class ActiveRuns:
    """Each browser session's running Run (session hash -> Run), so live toggles and Stop reach only its own run.

    Runs hold locks and threads' shared state: they are kept here by reference, never copied into gr.State.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, Any] = {}

    def add(self, session: str, run) -> None:
        with self._lock:
            previous = self._runs.get(session)
            self._runs[session] = run
        if previous is not None and previous is not run:  # one run per session: a new Generate stops the old one
            previous.stop()

    def remove(self, session: str, run) -> None:
        with self._lock:
            if self._runs.get(session) is run:
                del self._runs[session]

    def get(self, session: str):
        with self._lock:
            return self._runs.get(session)

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)


ACTIVE_RUNS = ActiveRuns()


def session_key(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or SESSION_FALLBACK


@guarded
def live_attention_mode(attention_mode: str, request: gr.Request = None) -> None:
    """Attention-mode dropdown changed: the caller's running run uses it from its next step."""
    run = ACTIVE_RUNS.get(session_key(request))
    if run is not None and attention_mode:
        with USER_ERRORS:
            run.set_attention_mode(attention_mode)


@guarded
def live_sampler(sampler: str, request: gr.Request = None) -> None:
    """Sampler dropdown changed: the caller's running run switches scheduler from its next step."""
    run = ACTIVE_RUNS.get(session_key(request))
    if run is not None and sampler:
        with USER_ERRORS:
            run.set_sampler(sampler)


@guarded
def stop_run(request: gr.Request = None) -> str | Any:
    """Stop button: the caller's run ends before its next step and keeps its last preview."""
    run = ACTIVE_RUNS.get(session_key(request))
    if run is None:
        return gr.skip()
    run.stop()
    return "stopping after this step…"
