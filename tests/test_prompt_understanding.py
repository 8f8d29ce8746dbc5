"""The built-in model says what it understood of a prompt, and refuses a text-only prompt that names nothing of its
world instead of drawing a random blob (tests on random weights: understanding is about words, not pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from vdemo.backends.tiny import TinyBackend
from vdemo.pipeline import Done, GenerationRequest, RequestError, VideoPipeline
from vdemo.world import vocabulary_report


@pytest.mark.parametrize(("prompt", "used", "ignored", "subject"), [
    ("a red ball moving to the right", "a red circle moving right", [], True),
    ("A Grey box slides up left", "a gray square slides up-left", [], True),
    ("a cat playing piano", "a", ["cat", "playing", "piano"], False),
    ("a red car drives to the left", "a red left", ["car", "drives"], False),
    ("un círculo rojo", "", ["un", "círculo", "rojo"], False),
    ("an orange person waves", "an orange person waves", [], True),
])
def test_vocabulary_report(prompt, used, ignored, subject):
    report = vocabulary_report(prompt)
    assert " ".join(report["used"]) == used and report["ignored"] == ignored and report["subject"] is subject


@pytest.fixture(scope="module")
def pipe():
    import torch

    torch.set_num_threads(1)
    return VideoPipeline(TinyBackend.random(seed=0))


def request(prompt: str, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, num_frames=4, height=48, width=48, num_steps=1, **kw)


@pytest.mark.parametrize("prompt", ["a cat playing piano", "un círculo rojo", "a red car drives to the left"])
def test_a_text_only_prompt_outside_the_world_is_refused_in_one_line(pipe, prompt):
    with pytest.raises(RequestError) as err:
        pipe.start(request(prompt))
    message = str(err.value)
    assert message.startswith("the built-in model did not understand '") and "\n" not in message
    assert "for open prompts use a GPU backend" in message


def test_the_manifest_says_what_was_used_and_ignored(pipe):
    done = [e for e in pipe.generate(request("a red ball bouncing happily")) if isinstance(e, Done)][0]
    assert done.manifest["prompt_understood"] == {"used": ["a", "red", "circle"], "ignored": ["bouncing", "happily"],
                                                  "subject": True}


def test_with_other_conditioning_unknown_words_are_reported_not_refused(pipe):
    frame = np.zeros((48, 48, 3), np.uint8)
    done = [e for e in pipe.generate(request("a cat", image=frame)) if isinstance(e, Done)][0]
    assert done.manifest["prompt_understood"]["ignored"] == ["cat"]
    no_text = [e for e in pipe.generate(request("", image=frame)) if isinstance(e, Done)][0]
    assert no_text.manifest["prompt_understood"] is None
