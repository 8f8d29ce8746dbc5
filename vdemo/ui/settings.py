"""The shared settings panel: its components, the values of one run (`Settings`), and what changes with the backend.

Every generation endpoint takes the panel's values after its own inputs, in `SETTING_NAMES` order. The ranges and
defaults come from the backend's contract (`vdemo.backends.backend_info`); the attention mode and sampler are live
(their change events are wired in `vdemo.ui.session`). On a Space with a GPU limit the panel's GPU-time estimate
(`gpu_estimate`) shows what a Generate would ask for.
"""

from __future__ import annotations

import abc
import secrets
from dataclasses import dataclass, replace

import gradio as gr

from vdemo.backends import BackendInfo, backend_info, load_backend
from vdemo.config import LIMITS, MODALITIES
from vdemo.errors import UserError
from vdemo.ui.messages import safe_line, user_error
from vdemo.ui.space import SERVED, offered_backends, unavailable_backends

SETTING_NAMES = ("backend", "attention_mode", "sampler", "steps", "guidance", "frames", "fps", "seed", "random_seed")
SETTINGS_DOC = """Shared settings, in this order after each endpoint's own inputs:
backend (str, a registered backend name), attention_mode (spatial | temporal | full | causal | sparse_causal),
sampler (e.g. "DDIM", "Euler", "DPM++ 2M"), steps (int), guidance (float), frames (int), fps (int), seed (int),
random_seed (bool: draw a fresh seed and report it in the manifest)."""


@dataclass(frozen=True)
class Settings:
    """The shared settings panel's values for one run."""

    backend: str
    attention_mode: str
    sampler: str
    num_steps: int
    guidance: float
    num_frames: int
    fps: int
    seed: int
    random_seed: bool

    @classmethod
    def from_inputs(cls, backend, attention_mode, sampler, steps, guidance, frames, fps, seed, random_seed) -> Settings:
        def number(name: str, value) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise user_error(f"{name} must be a number, got {value!r}")
            try:
                return float(value)
            except ValueError:
                raise user_error(f"{name} must be a number, got {value!r}") from None

        def whole(name: str, value) -> int:
            x = number(name, value)
            if not x.is_integer():
                raise user_error(f"{name} must be a whole number, got {value!r}")
            return int(x)

        if not isinstance(random_seed, bool):
            raise user_error(f"random_seed must be true or false, got {random_seed!r}")
        if random_seed:
            seed = secrets.randbelow(min(LIMITS.max_seed, 2**31 - 1) + 1)
        return cls(str(backend), str(attention_mode), str(sampler), whole("steps", steps), number("guidance", guidance),
                   whole("frames", frames), whole("fps", fps), whole("seed", seed), random_seed)


def _check_payload(component: gr.components.Component, setting: str, payload) -> None:
    if isinstance(component, gr.Checkbox):
        if not isinstance(payload, bool):
            raise user_error(f"{setting} must be true or false, got {payload!r}")
    elif isinstance(payload, bool) or not isinstance(payload, (int, float)):
        raise user_error(f"{setting} must be a number, got {payload!r}")
    elif isinstance(component, gr.Number) and component.precision == 0 and not float(payload).is_integer():
        raise user_error(f"{setting} must be a whole number, got {payload!r}")


_STRICT_CLASSES: dict[tuple[type, str], type] = {}


def _strict_class(base: type, setting: str) -> type:
    """A subclass of `base` whose preprocess checks the raw value first; the page still renders it as `base`."""
    if (base, setting) not in _STRICT_CLASSES:
        def preprocess(self, payload):
            _check_payload(self, setting, payload)
            return base.preprocess(self, payload)

        name = base.__name__.lower()
        attrs = {"__module__": __name__, "__qualname__": f"Strict{base.__name__}", "__doc__": base.__doc__,
                 "_vdemo_strict": setting, "preprocess": preprocess,
                 "get_block_name": lambda self: name, "get_block_class": lambda self: name,
                 "get_component_class_id": classmethod(lambda cls: base.get_component_class_id())}
        # ABCMeta's __new__, not Gradio's ComponentMeta's: the events are inherited, and ComponentMeta would look for
        # this class's source to write a .pyi stub beside this module
        _STRICT_CLASSES[base, setting] = abc.ABCMeta.__new__(type(base), f"Strict{base.__name__}", (base,), attrs)
    return _STRICT_CLASSES[base, setting]


def strict_input(component: gr.components.Component, setting: str) -> gr.components.Component:
    """Make the component refuse a raw value of the wrong type with a one-line gr.Error naming the setting, before its
    own preprocess can coerce it or fail with a TypeError (Gradio's generic "upstream app" message):
    Slider and Number take numbers only (an API caller's "abc", None), a Number with precision 0 a whole number (its
    preprocess would silently round seed 1.5 to 2), a Checkbox a boolean (it would take "yes" or "maybe" as true).
    Other components are returned unchanged; wrapping twice is harmless.

    The check lives on the component's class (a `Strict<Base>` subclass, rendered as the base): once an event has
    *updated* a component (gr.update, gr.skip), Gradio serves that session a fresh copy built from
    `block.__class__(**constructor_args)`, and a check on the instance alone was lost there (a backend change updates
    the steps, guidance and frames sliders)."""
    if getattr(component, "_vdemo_strict", None) or not isinstance(component, (gr.Slider, gr.Number, gr.Checkbox)):
        return component
    component.__class__ = _strict_class(type(component), setting)
    return component


def numbers_only(slider: gr.Slider, setting: str) -> gr.Slider:
    """`strict_input` for a slider (the settings panel's numbers)."""
    return strict_input(slider, setting)


def strict_inputs(demo: gr.Blocks) -> int:
    """`strict_input` on every Slider, Number and Checkbox that an event of `demo` takes, named as the API names it
    (the handler's parameter name, e.g. "seed", "plan_motion"); returns how many were wrapped. Called once on the
    finished page, so no tab can forget it."""
    import inspect

    wrapped = 0
    for block_fn in demo.fns.values():
        if block_fn.fn is None:
            continue
        try:
            params = inspect.signature(block_fn.fn).parameters.values()
        except (TypeError, ValueError):
            continue
        names = []
        for param in params:  # positional names only: a *values handler (compare_tab) names nothing after it
            if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                break
            names.append(param.name)
        for name, component in zip(names, block_fn.inputs):
            if isinstance(component, (gr.Slider, gr.Number, gr.Checkbox)) and not getattr(component, "_vdemo_strict",
                                                                                          None):
                strict_input(component, name)
                wrapped += 1
    return wrapped


def settings_panel(info: BackendInfo) -> dict[str, gr.components.Component]:
    """The panel's components (a column), keyed by SETTING_NAMES, at the given backend's defaults and limits."""
    lim = info.limits
    with gr.Column(scale=2, min_width=250, elem_id="vd-settings"):
        gr.Markdown("### Settings")
        s = {
            "backend": gr.Dropdown(offered_backends(), value=info.name, label="Backend", elem_id="vd-backend"),
            "notes": gr.Markdown(notes_text(info), elem_id="vd-backend-notes", elem_classes=["vd-caption"]),
            "unavailable": gr.Markdown(unavailable_text(), elem_id="vd-backends-unavailable",
                                       elem_classes=["vd-caption", "vd-unavailable"]),
            "attention_mode": gr.Radio(list(info.attention_modes), value=info.default_attention_mode,
                                       label="Attention mode (live)", elem_id="vd-mode"),
            "sampler": gr.Dropdown(list(info.samplers), value=info.default_sampler, label="Sampler (live)",
                                   elem_id="vd-sampler"),
            "steps": gr.Slider(lim.min_steps, lim.max_steps, value=info.default_steps, step=1, label="Steps",
                               elem_id="vd-steps"),
            "guidance": gr.Slider(lim.min_guidance, lim.max_guidance, value=info.default_guidance, step=0.5,
                                  label="Guidance", elem_id="vd-guidance"),
            "frames": gr.Slider(lim.min_frames, lim.max_frames, value=info.default_num_frames, step=1,
                                label="Frames", elem_id="vd-frames"),
            "fps": gr.Slider(lim.min_fps, lim.max_fps, value=8, step=1, label="fps", elem_id="vd-fps"),
        }
        with gr.Row(equal_height=True):
            s["seed"] = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=lim.max_seed, min_width=90,
                                  elem_id="vd-seed")
            s["random_seed"] = gr.Checkbox(False, label="random seed", min_width=90, elem_id="vd-random-seed")
    for name in ("steps", "guidance", "frames", "fps"):
        numbers_only(s[name], name)
    return s


def notes_text(info: BackendInfo) -> str:
    """Markdown under the backend dropdown: what the chosen backend is and what it cannot do yet (its registry note)."""
    return f"*{info.notes}*" if info.notes else ""


def unavailable_text() -> str:
    """Markdown under the backend dropdown: each backend this app does not serve, greyed, with why."""
    from vdemo.ui.space import MISSING_WEIGHTS

    reasons = unavailable_backends()
    missing = [name for name, why in reasons.items() if why.startswith(MISSING_WEIGHTS)]
    lines = [f"Unavailable here: **{name}**: {safe_line(why)}" for name, why in reasons.items() if name not in missing]
    if missing:
        lines.append(f"Unavailable here, no weights on this machine: **{'**, **'.join(missing)}** (set "
                     f"`VDEMO_<NAME>_DIR` to a folder in the hub layout, or put the pinned revision in the hub cache)")
    return "  \n".join(lines)


def info_or_error(backend: str) -> BackendInfo:
    """backend_info, with an unknown name as a one-line gr.Error."""
    try:
        return backend_info(backend)
    except UserError as err:
        raise user_error(str(err)) from None


def on_backend_change(backend: str, attention_mode: str, sampler: str):
    """Backend changed: offer only its modes, samplers and tabs (the chosen mode and sampler stay when it has them,
    else its defaults); its own default steps, guidance and frames; slider ranges from its limits; its note."""
    info = info_or_error(backend)
    mode = attention_mode if attention_mode in info.attention_modes else info.default_attention_mode
    samp = sampler if sampler in info.samplers else info.default_sampler
    lim = info.limits
    tabs = [gr.update(visible=m in info.modalities) for m in MODALITIES]
    return (gr.update(choices=list(info.attention_modes), value=mode),
            gr.update(choices=list(info.samplers), value=samp),
            gr.update(minimum=lim.min_steps, maximum=lim.max_steps, value=info.default_steps),
            gr.update(minimum=lim.min_guidance, maximum=lim.max_guidance, value=info.default_guidance),
            gr.update(minimum=lim.min_frames, maximum=lim.max_frames, value=info.default_num_frames), *tabs,
            gr.update(value=notes_text(info)))


def gpu_estimate(backend: str, attention_mode: str, sampler: str, steps, frames) -> str:
    """The GPU time a Generate with these settings would ask for, next to the button on a ZeroGPU Space ("" when the
    app has no GPU limit); names settings that fit when it is over the limit."""
    from vdemo.cost import fitting_settings, gpu_limit_s, request_seconds
    from vdemo.pipeline import GenerationRequest

    limit = gpu_limit_s()
    if not limit:
        return ""
    try:
        info = backend_info(backend)
        height, width = info.default_size
        req = GenerationRequest(num_frames=int(frames), height=height, width=width, num_steps=int(steps),
                                sampler=sampler, attention_mode=attention_mode)
        source = load_backend(backend) if SERVED.get(backend) == "ok" else info
        seconds = request_seconds(source, req)
    except (gr.Error, UserError, TypeError, ValueError):
        return ""
    if seconds <= limit:
        return f"GPU time for this run ≈ **{seconds} s** (this Space allows {limit} s per run)"
    options = fitting_settings(source, replace(req), limit)
    return (f"GPU time for this run ≈ **{seconds} s**, over this Space's {limit} s: "
            f"{'try ' + ', or '.join(options) if options else 'choose fewer frames, steps or a smaller size'}")
