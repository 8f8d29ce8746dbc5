"""The one error type a user is shown as is.

`UserError` (a `ValueError`, so older callers that catch ValueError still work) is what request validation, input
parsing, media loading, backend loading and detectors raise when the *input or the setup* is wrong; its message is one
line that says what to change. The UI and the CLI turn exactly these into a one-line message. Anything else is a bug:
it is logged with its traceback and shown as one line that says so (`internal_error_line`).
"""

from __future__ import annotations

MAX_LINE_CHARS = 300


class UserError(ValueError):
    """Bad input or setup; the message is one line, fit to show a user."""


def one_line(message: object, limit: int = MAX_LINE_CHARS) -> str:
    """The first non-empty line of a message, capped at `limit` characters."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return (lines[0] if lines else "error")[:limit]


def internal_error_line(err: BaseException) -> str:
    """What a user sees for a bug: the exception type and its first line, and where the details are."""
    detail = one_line(err, 160) if str(err).strip() else ""
    name = type(err).__name__
    return f"internal error (a bug; the traceback is in the server log): {name}{': ' + detail if detail else ''}"


class ModelNotFound(UserError, FileNotFoundError):
    """A model's weights are not where they should be; the message says how to provide them."""
