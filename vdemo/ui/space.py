"""Which backends this app serves, loaded before launch; the banner when the built-in model is missing; warm-up.

`serve_backends()` runs in `app.py`'s main thread before `launch`: it loads the backends the app serves
(`vdemo.backends.served_backends`, ControlNets included), so nothing loads — or downloads — inside GPU time and a
forked ZeroGPU worker inherits them. The backend dropdown then offers exactly those (`offered_backends`); the others
are listed greyed under it, each with why (`unavailable_backends`), and an API call naming one is refused with that
reason (`check_served`).
"""

from __future__ import annotations

from vdemo.ui.messages import LOG, USER_ERRORS, user_error

MISSING_WEIGHTS = "weights not on this machine"
WARM_UP_STEPS = 3  # the start-up run: enough steps to time one (the queue's first estimate comes from it)
SERVED: dict[str, str] = {}  # name -> "ok" or why it is unavailable; filled by serve_backends() at start-up


def serve_backends() -> dict[str, str]:
    """Load what this app serves, in this (main) thread; returns (and keeps) name -> "ok" or the one-line reason."""
    from vdemo.backends import preload, served_backends
    from vdemo.ui.gpu import start_live_settings

    start_live_settings()  # fork the live-settings process while this one is still small
    with USER_ERRORS:
        names = served_backends()
    SERVED.clear()
    SERVED.update(preload(names, log=LOG.warning))
    return dict(SERVED)


def offered_backends() -> list[str]:
    """The backend dropdown's choices: what serve_backends() loaded, or (when it was not called) every backend. The
    rest are listed greyed under it with their reasons (`unavailable_backends`)."""
    from vdemo.backends import DEFAULT_BACKEND, backend_names

    if not SERVED:
        return backend_names()
    # nothing loaded (e.g. no built-in model yet): still offer it, so the page builds, shows the banner, and a
    # Generate is refused with the reason (check_served)
    # (the first the Space asked for, so its reason shows; else the default)
    return [n for n in backend_names() if SERVED.get(n) == "ok"] or [next(iter(SERVED), DEFAULT_BACKEND)]


def unavailable_backends() -> dict[str, str]:
    """Registry backends this app does not serve, each with why (shown greyed under the backend dropdown): the
    reason it failed to load, or that its weights are not on this machine (and how to provide them), or that the
    Space owner left it out. Empty when serve_backends() was not called (every backend is offered)."""
    import os

    from vdemo.backends import SPACE_BACKENDS_ENV, backend_names

    if not SERVED:
        return {}
    reasons = {}
    for name in backend_names():
        if SERVED.get(name) == "ok":
            continue
        if name in SERVED:
            reasons[name] = SERVED[name]
        elif os.environ.get(SPACE_BACKENDS_ENV, "").strip():
            reasons[name] = f"it is not in {SPACE_BACKENDS_ENV}"
        else:
            reasons[name] = _missing_weights(name)
    return reasons


def _missing_weights(name: str) -> str:
    from vdemo.backends import BUILTIN

    if name in BUILTIN:
        return f"no built-in model (assets/{name.replace('-', '_')}) found"
    from vdemo.backends.hub.registry import get_spec

    spec = get_spec(name)
    roles = [r for r in spec.repos if r not in spec.lazy_roles]
    return (f"{MISSING_WEIGHTS}: set {spec.env_var} to a folder with {'/, '.join(roles)}/ in the hub "
            f"layout, or download the pinned revision into the hub cache")


def check_served(name: str) -> None:
    """A backend this app did not load at start-up is refused with the reason (never loaded inside GPU time)."""
    if SERVED and SERVED.get(name) != "ok":
        reason = unavailable_backends().get(name) or "it is not in the registry"
        raise user_error(f"backend {name!r} is not available on this app: {reason}")


def model_status(name: str | None = None) -> str:
    """A banner (markdown) when the page's first backend is a built-in model whose weights are missing (default: the
    default backend); empty when all is well, and for hub backends (their reasons sit under the dropdown)."""
    from vdemo.backends import BUILTIN, DEFAULT_BACKEND, tiny_dir

    name = name or DEFAULT_BACKEND
    if name not in BUILTIN:
        return ""
    folder = tiny_dir(name=name)
    if (folder / "config.json").exists():
        return ""
    train, env = (("python -m vdemo.train --arch v2", "VDEMO_TINY_V2_DIR") if name == "tiny-v2"
                  else ("python -m vdemo.train", "VDEMO_TINY_DIR"))
    return (f"**No built-in model found** in `{folder}`. Train one with `{train}`, or set "
            f"`{env}` to a folder with `config.json`. Generation will fail until then; presets and "
            f"stroke drawing still work.")


def warm_up(backend: str, steps: int = WARM_UP_STEPS) -> None:
    """Load a backend and run a few steps at its default frames (weights, tokenizer, kernels), so the first Generate
    streams at once — through the generation queue, so its step times seed the waits users are shown.

    Meant for a background thread at startup; a failure (e.g. no model yet) is announced once and otherwise ignored.
    """
    from vdemo.backends import backend_info, get_pipeline
    from vdemo.pipeline import GenerationRequest
    from vdemo.ui.queue import Place, Work

    try:
        info = backend_info(backend)
        height, width = info.default_size
        request = GenerationRequest(prompt="", num_frames=info.default_num_frames, height=height, width=width,
                                    num_steps=steps, sampler=info.default_sampler,
                                    attention_mode=info.default_attention_mode)
        pipe = get_pipeline(backend)
        with Place(Work.of(backend, pipe.backend, request), 0.0) as place:
            for _ in place.waiting():
                pass
            for event in pipe.generate(request):
                if getattr(event, "step_done", False):
                    place.step()
            place.done(measure=True)
    except Exception as err:  # noqa: BLE001 - warm-up is an optimisation; the error shows again at Generate
        message = getattr(err, "message", None) or str(err)
        LOG.warning("could not warm up backend %r: %s", backend, message.splitlines()[0] if message else repr(err))
