"""Caption grammar of the synthetic world, its vocabulary, and a tolerant parser (the grammar's best-effort inverse).

Grammar (lower case, words separated by single spaces; the compass words are hyphenated single words):

    caption     := subject [" on a " BACKGROUND " background"]
    np          := ("a " | "an ") COLOUR " " SHAPE                ("an" before a vowel: "an orange square")
    objects     := np " " verb                                  "a red circle moves right"
                 | np " and " np " " verb_plural               "a red circle and a blue square move up-left"
                 | np " " verb " and " np " " verb             "a red circle moves left and a blue square stays still"
    verb        := "moves " DIRECTION | "stays still"            (plural: "move " DIRECTION | "stay still")
    path        := np " moves " DIRECTION " along a curve"       (DIRECTION: compass word nearest the net displacement)
    person      := ("a " | "an ") COLOUR " person " ("walks left" | "walks right" | "waves" | "jumps" | "squats")
    depth       := np " " depth_verb [(" in front of " | " behind ") np [" and " np]]
    depth_verb  := "moves closer" | "moves away" | "moves " ("left"|"right"|"up"|"down") | "stays still"

The background phrase may be left out (specs carry "say_background"); the parser then reports background None.
"""

from __future__ import annotations

import re

from .palette import BACKGROUNDS, COLOURS, DEPTH_MOTIONS, DIRECTIONS, SHAPES

_ACTION_VERB = {"walk": "walks", "wave": "waves", "jump": "jumps", "squat": "squats"}

# Every word build_caption can produce, sorted: the word-level tokenizer's vocabulary.
VOCAB: list[str] = sorted(
    set(COLOURS)
    | set(BACKGROUNDS)
    | set(SHAPES)
    | set(DIRECTIONS)
    | set(DEPTH_MOTIONS)
    | set(_ACTION_VERB.values())
    | {"a", "an", "and", "on", "background", "moves", "move", "stays", "stay", "still", "along", "curve", "person"}
    | {"in", "front", "of", "behind"}
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: dict) -> str:
    return f"{_article(obj['colour'])} {obj['colour']} {obj['shape']}"


def _verb(motion: str, plural: bool = False) -> str:
    if motion == "still":
        return "stay still" if plural else "stays still"
    return f"{'move' if plural else 'moves'} {motion}"


def build_caption(spec: dict) -> str:
    """The caption of a world spec (see the module docstring for the grammar)."""
    kind = spec["kind"]
    if kind == "person":
        action = spec["action"]
        verb = f"walks {spec['params']['direction']}" if action == "walk" else _ACTION_VERB[action]
        text = f"{_article(spec['colour'])} {spec['colour']} person {verb}"
    elif kind == "objects":
        objs = spec["objects"]
        if len(objs) == 1:
            text = f"{_noun_phrase(objs[0])} {_verb(objs[0]['motion'])}"
        elif spec["shared_motion"]:
            text = f"{_noun_phrase(objs[0])} and {_noun_phrase(objs[1])} {_verb(objs[0]['motion'], plural=True)}"
        else:
            text = " and ".join(f"{_noun_phrase(o)} {_verb(o['motion'])}" for o in objs)
    elif kind == "path":
        obj = spec["objects"][0]
        text = f"{_noun_phrase(obj)} moves {obj['motion']} along a curve"
    elif kind == "depth":
        actor, *others = spec["objects"]
        text = f"{_noun_phrase(actor)} {_verb(actor['motion'])}"
        if others:
            relation = "in front of" if spec["relation"] == "front" else "behind"
            text += f" {relation} " + " and ".join(_noun_phrase(o) for o in others)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if spec.get("say_background", True):
        text += f" on a {spec['background']} background"
    return text


# ------------------------------------------------------------------------------------------------- parser
_ALIASES = {"grey": "gray", "violet": "purple", "ball": "circle", "box": "square", "man": "person", "woman": "person"}
# verbs the parser reads as "moves" / "stays" (public: the layout planner maps prompts onto them)
MOVE_WORDS = {"moves", "move", "moving", "moved", "goes", "go", "going", "travels", "travel", "slides", "slide"}
STAY_WORDS = {"stays", "stay", "staying", "stands", "stand", "standing", "still", "sits", "rests"}
_ACTION_WORDS = {
    **{w: "walk" for w in ("walks", "walk", "walking")},
    **{w: "wave" for w in ("waves", "wave", "waving")},
    **{w: "jump" for w in ("jumps", "jump", "jumping")},
    **{w: "squat" for w in ("squats", "squat", "squatting")},
}
_CURVE = {"curve", "curves", "curved", "curving", "path", "arc"}
_MOTION_WORDS = set(DIRECTIONS) | set(DEPTH_MOTIONS)


def tokenize(text: str) -> list[str]:
    """The parser's tolerant words: lower case, letters only, aliases mapped ("grey" -> "gray", "ball" -> "circle"),
    "up left" -> "up-left"."""
    words = [_ALIASES.get(w, w) for w in re.findall(r"[^\W\d_]+(?:-[^\W\d_]+)?", text.lower())]  # any letters
    merged: list[str] = []
    for w in words:  # "up left" -> "up-left"
        if merged and merged[-1] in ("up", "down") and w in ("left", "right"):
            merged[-1] = f"{merged[-1]}-{w}"
        else:
            merged.append(w)
    return merged


FILLER_WORDS = {"the", "to", "is", "are", "of", "in", "on", "at", "with", "its", "it", "towards", "toward", "into",
                "from", "very", "slowly", "quickly", "fast", "slow", "then"}  # carry no meaning for the world


def vocabulary_report(text: str) -> dict:
    """Which words of a prompt this world knows, as the parser reads them (aliases and verb synonyms included):
    {"used": [...], "ignored": [...] (unknown words, not fillers), "subject": True when it names a shape or a
    person}. "a red ball moving to the right" -> used: a red circle moving right, ignored: none."""
    known = set(VOCAB) | MOVE_WORDS | STAY_WORDS | set(_ACTION_WORDS) | _CURVE
    used, ignored = [], []
    for word in tokenize(text):
        if word in known:
            used.append(word)
        elif word not in FILLER_WORDS:
            ignored.append(word)
    return {"used": used, "ignored": ignored, "subject": any(w in SHAPES or w == "person" for w in used)}


def parse_caption(text: str) -> dict:
    """Best-effort inverse of build_caption; unknown words are skipped, missing parts come back as None.

    Returns {"objects": [{"colour", "shape", "motion"}], "background", "action", "direction", "curved",
    "relation" ("front" | "behind" | None), "kind" (a guess: "person" | "depth" | "path" | "objects" | None)}.
    For depth captions the objects after the relation are the static ones (motion None). "person" is a shape here.
    """
    tokens = tokenize(text)
    out: dict = {"objects": [], "background": None, "action": None, "direction": None, "curved": False}
    out["relation"] = None
    used = [False] * len(tokens)
    for i, tok in enumerate(tokens):  # "<bg> background" first, so that "white" there is not an object colour
        if tok == "background" and i > 0 and tokens[i - 1] in BACKGROUNDS:
            out["background"] = tokens[i - 1]
            used[i - 1] = used[i] = True
    objects = out["objects"]
    waiting: list[dict] = []  # objects named since the last verb: the verb applies to all of them
    colour = None

    def assign(motion: str) -> None:
        for obj in waiting or objects[-1:]:
            if obj["motion"] is None:
                obj["motion"] = motion
        waiting.clear()

    for i, tok in enumerate(tokens):
        if used[i]:
            continue
        following = [t for t, u in zip(tokens[i + 1 : i + 3], used[i + 1 : i + 3]) if not u]
        if tok in COLOURS:
            colour = tok
        elif tok in SHAPES or tok == "person":
            obj = {"colour": colour, "shape": tok, "motion": None}
            objects.append(obj)
            waiting.append(obj)
            colour = None
        elif tok in MOVE_WORDS:
            motion = next((t for t in following if t in _MOTION_WORDS), None)
            if motion is not None:
                assign(motion)
        elif tok in STAY_WORDS:
            assign("still")
        elif tok in _ACTION_WORDS:
            out["action"] = _ACTION_WORDS[tok]
            if out["action"] == "walk":
                out["direction"] = next((t for t in following if t in ("left", "right")), None)
                if out["direction"] is not None:
                    assign(out["direction"])
        elif tok in _CURVE:
            out["curved"] = True
        elif tok == "front" or tok == "behind":
            out["relation"] = tok
            waiting.clear()
    out["kind"] = _guess_kind(out)
    return out


def _guess_kind(parsed: dict) -> str | None:
    if parsed["action"] is not None or any(o["shape"] == "person" for o in parsed["objects"]):
        return "person"
    if parsed["relation"] is not None or any(o["motion"] in DEPTH_MOTIONS for o in parsed["objects"]):
        return "depth"
    if parsed["curved"]:
        return "path"
    return "objects" if parsed["objects"] else None

