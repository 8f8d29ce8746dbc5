"""A bad input in a real browser: the error's *text* is visible in the page (the toast), not just a red badge.

Debian's headless Chromium via Playwright, as tests/test_app_browser.py (never `playwright install`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_app_browser import CHROMIUM, browser, open_tab, page  # noqa: F401 - the same browser fixtures

TOAST_TEXT = '[data-testid="toast-text"], .toast-message-text'

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (apt-get install -y chromium)")


def toast_text(page) -> str:  # noqa: F811 - a page, as the fixture gives it
    """The first error toast's visible text, once it shows."""
    toast = page.locator(TOAST_TEXT).first
    toast.wait_for(state="visible", timeout=30_000)
    return toast.inner_text().strip()


@pytest.mark.parametrize("prompt, expected", [
    ("", "write a prompt first, e.g. “a red circle moves right on a black background”"),
    ("a cat playing piano", "the built-in model did not understand 'cat', 'playing', 'piano': it knows flat shapes"),
])
def test_text_tab_error_text_is_visible(page, prompt, expected):  # noqa: F811 - the imported fixture
    page.fill("#vd-prompt-text textarea", prompt)
    page.click("#vd-generate-text")
    text = toast_text(page)
    assert text.startswith(expected), text
    assert "\n" not in text and "upstream" not in text


def test_markup_in_strokes_shows_as_text(page):  # noqa: F811 - the imported fixture
    """A strokes JSON holding markup: the toast shows the characters, it does not render them."""
    open_tab(page, "Motion strokes")
    box = page.locator("#vd-strokes-json textarea")
    box.fill('[{"points": [[0.3, 0.5]], "radius": "<b>big</b>"}]')
    page.click("#vd-generate-strokes")
    text = toast_text(page)
    assert text == "stroke 0 radius must be a number, got '<b>big</b>'", text
    assert page.locator('[data-testid="toast-text"] b, .toast-message-text b').count() == 0
