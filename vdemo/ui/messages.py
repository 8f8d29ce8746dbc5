"""What a user reads when something goes wrong: one line, never Gradio's generic "upstream app has raised an
exception".

- `user_error(message)`: a one-line `gr.Error` (toast) with no traceback printed;
- `USER_ERRORS`: a context manager that turns a `vdemo.errors.UserError` (bad input or setup) into one;
- `guarded(fn)`: wraps an event handler (plain or generator) so that anything else — a bug — is logged with its
  traceback on the server and reaches the user as "internal error …" in one line.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging

import gradio as gr

from vdemo.errors import UserError, internal_error_line, one_line

MAX_MESSAGE_CHARS = 300
LOG = logging.getLogger("vdemo")


def safe_line(message: object) -> str:
    """One line (the first, capped) with HTML special characters escaped: Gradio renders a toast's message as HTML,
    and a message may quote what the user typed (a strokes JSON holding markup must show as text)."""
    return html.escape(one_line(message, MAX_MESSAGE_CHARS), quote=False)


def user_error(message: str) -> gr.Error:
    """A gr.Error whose message is one safe line — what the user sees in the toast."""
    return gr.Error(safe_line(message), print_exception=False)


class _UserErrors:
    """`with USER_ERRORS:` turns a UserError (bad input or setup) into a one-line gr.Error; anything else propagates
    (and reaches `guarded`, which logs it as a bug)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, gr.Error):
            return False
        if isinstance(exc, UserError):
            raise user_error(str(exc)) from None
        return False


USER_ERRORS = _UserErrors()


def guarded(fn):
    """An endpoint whose every failure reaches the user as one line: gr.Error as it is, a UserError as its message,
    anything else (a bug) as "internal error …" with the full traceback in the server log — never Gradio's generic
    "upstream app has raised an exception"."""

    def convert(err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, UserError):
            return user_error(str(err))
        LOG.error("internal error in %s", fn.__name__, exc_info=err)
        return gr.Error(safe_line(internal_error_line(err)), print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - converted, logged when it is a bug
                raise convert(err) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - converted, logged when it is a bug
            raise convert(err) from None
    return call
