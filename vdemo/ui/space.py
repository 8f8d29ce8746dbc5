"""Which backends this app serves, loaded before launch; the banner when the built-in model is missing; warm-up.

`serve_backends()` runs in `app.py`'s main thread before `launch`: it loads the backends the app serves
(`vdemo.backends.served_backends`, ControlNets included), so nothing loads — or downloads — inside GPU time and a
forked ZeroGPU worker inherits them. The backend dropdown then offers exactly those (`offered_backends`); a backend
that failed to load is refused with its reason (`check_served`).
"""

from __future__ import annotations

from vdemo.ui.messages import LOG, USER_ERRORS, user_error

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
    """The backend dropdown's choices: what serve_backends() loaded, or (when it was not called) every backend."""
    from vdemo.backends import backend_names

    return [n for n in backend_names() if n in SERVED] if SERVED else backend_names()


def check_served(name: str) -> None:
    """A backend this app did not load at start-up is refused with the reason (never loaded inside GPU time)."""
    if SERVED and SERVED.get(name) != "ok":
        reason = SERVED.get(name) or "it is not in VDEMO_SPACE_BACKENDS"
        raise user_error(f"backend {name!r} is not available on this app: {reason}")


def model_status() -> str:
    """A banner (markdown) when the built-in model's weights are missing; empty when all is well."""
    from vdemo.backends import tiny_dir

    folder = tiny_dir()
    if (folder / "config.json").exists():
        return ""
    return (f"**No built-in model found** in `{folder}`. Train one with `python -m vdemo.train`, or set "
            f"`VDEMO_TINY_DIR` to a folder with `config.json`. Generation will fail until then; presets and "
            f"stroke drawing still work.")


def warm_up(backend: str = "tiny") -> None:
    """Load a backend and run one minimal step (weights, tokenizer, kernels), so the first Generate streams at once.

    Meant for a background thread at startup; a failure (e.g. no model yet) is announced once and otherwise ignored.
    """
    from vdemo.backends import backend_info, get_pipeline
    from vdemo.pipeline import GenerationRequest

    try:
        info = backend_info(backend)
        height, width = info.default_size
        request = GenerationRequest(prompt="", num_frames=info.limits.min_frames, height=height, width=width,
                                    num_steps=1, sampler=info.default_sampler,
                                    attention_mode=info.default_attention_mode)
        for _ in get_pipeline(backend).generate(request):
            pass
    except Exception as err:  # noqa: BLE001 - warm-up is an optimisation; the error shows again at Generate
        message = getattr(err, "message", None) or str(err)
        LOG.warning("could not warm up backend %r: %s", backend, message.splitlines()[0] if message else repr(err))
