"""The Compare tab in a real browser (Debian's headless Chromium via Playwright, as tests/test_app_browser.py): three
modes stream three previews, the three finished clips play in sync under one play/pause and one scrubber, and the
cost table and the plots show."""

from __future__ import annotations

import os

from test_app_browser import CHROMIUM, RUN_TIMEOUT_MS, browser, open_tab, page, pytestmark, small_settings

__all__ = ["browser", "page", "pytestmark", "CHROMIUM"]  # fixtures and the skip marker, re-used

# Records every distinct preview src per run (by its label) while the comparison streams.
PREVIEW_RECORDER_JS = """
() => {
  const log = window.__vdc = {};
  const look = () => {
    document.querySelectorAll('#vd-compare-previews figure').forEach((fig) => {
      const img = fig.querySelector('img');
      if (!img) return;
      const seen = log[fig.dataset.label] = log[fig.dataset.label] || [];
      if (!seen.includes(img.src)) seen.push(img.src);
    });
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true});
  setInterval(look, 20);
}
"""


def clip_frames(page) -> list[int]:
    return page.evaluate("() => [...document.querySelectorAll('#vd-compare-player .vd-cmp-clip')]"
                         ".map((c) => parseInt(c.dataset.frame))")


def test_compare_three_modes_streams_plays_and_reports(page, tmp_path):
    small_settings(page, steps=4, frames=6)
    open_tab(page, "Compare")
    page.wait_for_selector("#vd-compare-run")
    modes = ["spatial", "full", "sparse_causal"]
    for mode in ("spatial", "temporal", "full", "causal", "sparse_causal"):  # exactly the three
        box = page.locator("#vd-compare-modes").get_by_label(mode, exact=True)
        if box.is_checked() != (mode in modes):
            box.click()
    page.evaluate(PREVIEW_RECORDER_JS)
    page.click("#vd-compare-run")
    page.wait_for_selector("#vd-compare-player .vd-cmp-clip >> nth=2", timeout=RUN_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#vd-compare-status').innerText.includes('done')")

    log = page.evaluate("() => window.__vdc")
    labels = [f"{m} · DDIM" for m in modes]
    assert sorted(log) == sorted(labels), log
    assert all(len(log[label]) >= 2 for label in labels), {k: len(v) for k, v in log.items()}  # streamed

    clips = page.locator("#vd-compare-player .vd-cmp-clip")
    assert clips.count() == 3
    assert page.locator("#vd-compare-player .vd-cmp-play").count() == 1  # one control for all
    assert page.locator("#vd-compare-player .vd-cmp-scrub").count() == 1
    page.wait_for_function("() => document.querySelector('.vd-cmp-player').dataset.playing === 'true'")
    page.wait_for_function("() => parseInt(document.querySelector('.vd-cmp-player').dataset.frame) > 0")
    page.click("#vd-compare-player .vd-cmp-play")  # pause
    assert page.evaluate("() => document.querySelector('.vd-cmp-player').dataset.playing") == "false"
    frames = clip_frames(page)
    assert len(set(frames)) == 1, frames  # in sync
    page.locator("#vd-compare-player .vd-cmp-scrub").fill("4")
    assert clip_frames(page) == [4, 4, 4]
    srcs = page.evaluate("() => [...document.querySelectorAll('.vd-cmp-clip')].map((c) => "
                         "[c.querySelector('img').src, JSON.parse(c.dataset.srcs)[4]])")
    assert all(shown == expected for shown, expected in srcs)
    page.click("#vd-compare-player .vd-cmp-play")  # play again: all clips advance together
    page.wait_for_function("() => parseInt(document.querySelector('.vd-cmp-player').dataset.frame) !== 4")
    assert len(set(clip_frames(page))) == 1

    table = page.locator("#vd-compare-table table")
    assert table.is_visible() and table.locator("tbody tr").count() == 3
    for elem in ("vd-compare-cost", "vd-compare-quality", "vd-compare-masks"):
        img = page.locator(f"#{elem} img")
        img.wait_for(state="visible")
        assert page.evaluate("(el) => el.naturalWidth > 100", img.element_handle()), elem
    if os.environ.get("VDEMO_COMPARE_SCREENSHOT"):  # a path: where to save the page after the run
        page.screenshot(path=os.environ["VDEMO_COMPARE_SCREENSHOT"], full_page=True)
