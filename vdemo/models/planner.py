"""A learned layout planner: caption -> a motion path per object, fed to the video model as motion strokes.

Two-stage text-to-video in the manner of LLM-grounded Video Diffusion (LVD, Lian et al. 2024) and VideoDirectorGPT
(Lin et al. 2023): a first stage turns the prompt into a dynamic layout (where each object is in each frame), the video
diffusion model then draws the clip along that layout. Here the first stage is not an LLM but a small network trained
on the synthetic world's captions and ground-truth paths (`python -m vdemo.train --planner`, about 2 minutes), and the
layout is expressed as the model's own motion-stroke control (a Gaussian blob per frame), which it follows closely.

Per object slot (up to SLOTS, in caption order) the network predicts whether the caption names a planar moving object
there, and a diagonal Gaussian over its path: start (x, y), displacement (dx, dy), and bend (the signed offset of the
path's midpoint from the chord's, perpendicular to it; 0 for straight moves). A plan is a sample from it (seeded, so
one seed gives one plan), moved (never turned) to keep every object inside the frame, and redrawn when two objects
would collide. Person captions and depth moves (closer / away) get no plan: their layout comes from pose / depth or
from the model itself.

This module is the model and its inference (prompt canonicalisation, path geometry, sampling a Plan); the training
set, targets, loss and loop are in `vdemo.train_planner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from vdemo.strokes import Stroke, resample_stroke
from vdemo.world import MOVE_WORDS, STAY_WORDS, VOCAB, nearest_direction, tokenize

PLANNER_DIR = "planner"  # subfolder of a tiny model folder (assets/tiny/planner/)
SLOTS = 2
TARGETS = ("x", "y", "dx", "dy", "bend")
LOG_STD_RANGE = (-6.0, 1.0)
PATH_POINTS = 33  # points per planned stroke (a quadratic Bezier, resampled by arc length downstream)
FRAME_BOX = (0.15, 0.85)  # where planned centres may go: a typical object (radius <= 0.2) stays inside the frame
STROKE_RADIUS = 0.1  # the radius training gives ground-truth strokes
ANCHOR_BELOW = 0.02  # a planned path shorter than this (fraction of the frame) is an anchor: the object stays put
MIN_GAP = 0.42  # two planned objects keep their centres this far apart in every frame (two reaches of <= 0.2)
REDRAWS = 16
TEMPERATURE = 0.5  # plans are drawn at half the learned spread (z clipped to ±2): typical layouts, not the tails


class LayoutPlanner(ModelMixin, ConfigMixin):
    """Token ids (B, L) -> per slot: presence logit (B, SLOTS), Gaussian mean and log-std (B, SLOTS, 5)."""

    @register_to_config
    def __init__(self, vocab_size: int = 64, max_tokens: int = 24, embed_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, embed_dim)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(max_tokens * embed_dim, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, SLOTS * (1 + 2 * len(TARGETS))),
        )

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(self.embed(ids).flatten(1)).view(ids.shape[0], SLOTS, 1 + 2 * len(TARGETS))
        n = len(TARGETS)
        log_std = out[..., 1 + n:].clamp(*LOG_STD_RANGE)
        return out[..., 0], out[..., 1:1 + n], log_std


# ------------------------------------------------------------------------------------------------ prompts
def canonical_prompt(text: str) -> str:
    """A user prompt in the caption grammar's words: the grammar's tolerant tokeniser (lower case, "grey" -> "gray",
    "ball" -> "circle", "up left" -> "up-left"), motion verbs ("moving", "goes", "slides", ...) -> "moves", and every
    word the grammar does not have dropped. A word-level planner learns nothing from unknown words; dropping them
    keeps the known ones where training put them ("a red ball moving to the right" -> "a red circle moves right")."""
    words = []
    for word in tokenize(text):
        if word in MOVE_WORDS and word not in ("move", "moves"):
            word = "moves"
        elif word in STAY_WORDS and word not in ("stay", "stays", "still"):
            word = "stays"
        if word in VOCAB:
            words.append(word)
    return " ".join(words)


# ------------------------------------------------------------------------------------------------ planning
def _bezier_path(start: np.ndarray, delta: np.ndarray, bend: float) -> np.ndarray:
    """(PATH_POINTS, 2): the quadratic Bezier from start to start + delta whose midpoint is `bend` off the chord."""
    end = start + delta
    length = float(np.hypot(*delta))
    normal = np.array([-delta[1], delta[0]]) / length if length > 1e-9 else np.zeros(2)
    middle = (start + end) / 2 + bend * normal
    control = 2 * middle - (start + end) / 2  # B(0.5) = (start + 2 control + end) / 4 = middle
    t = np.linspace(0.0, 1.0, PATH_POINTS)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def fit_inside(path: np.ndarray, lo: float = FRAME_BOX[0], hi: float = FRAME_BOX[1]) -> np.ndarray:
    """Shrink (about its centre, only if it is too big) and then move a path so that it lies in [lo, hi]²."""
    path = np.asarray(path, dtype=np.float64)
    low, high = path.min(0), path.max(0)
    span = float((high - low).max())
    if span > hi - lo:
        centre = (low + high) / 2
        path = centre + (path - centre) * ((hi - lo) / span)
        low, high = path.min(0), path.max(0)
    shift = np.maximum(lo - low, 0.0) - np.maximum(high - hi, 0.0)
    return path + shift


def fit_from(path: np.ndarray, lo: float = FRAME_BOX[0], hi: float = FRAME_BOX[1]) -> np.ndarray:
    """Shorten a path about its fixed first point (an object already in the picture) until it lies in [lo, hi]²
    (widened to include that point)."""
    path = np.asarray(path, dtype=np.float64)
    start = path[0]
    low, high = np.minimum(lo, start), np.maximum(hi, start)
    delta = path - start
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(delta > 0, (high - start) / delta, np.where(delta < 0, (low - start) / delta, np.inf))
    return start + delta * min(1.0, float(room.min()))


def starts_in(frame: np.ndarray, prompt: str, slots: list[int]) -> dict[int, tuple[float, float]]:
    """Where each planned slot's object already is in a given first frame: the largest detected object of the colour
    the caption names for it (any colour if it names none), each object used once. Slots not found are left out."""
    from vdemo.world.detect import detect_objects
    from vdemo.world.grammar import parse_caption

    detections = detect_objects(frame, max_objects=None)
    named = parse_caption(prompt)["objects"]
    starts, used = {}, set()
    for slot in slots:
        colour = named[slot]["colour"] if slot < len(named) else None
        for k, det in enumerate(detections):  # largest first
            if k not in used and (colour is None or det.colour == colour):
                starts[slot] = det.centre
                used.add(k)
                break
    return starts


@dataclass(frozen=True)
class Plan:
    """A planned layout: one stroke per planned object (caption order) and its compass word, for people to read."""

    strokes: tuple[Stroke, ...]
    directions: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.strokes)

    def to_manifest(self) -> dict:
        return {"by": "layout planner", "directions": list(self.directions),
                "strokes": [{"points": [[round(x, 4), round(y, 4)] for x, y in s.points], "radius": s.radius}
                            for s in self.strokes]}


class Planner:
    """A trained LayoutPlanner with the tokenizer it reads; `plan(prompt, seed)` -> Plan (empty when nothing moves)."""

    def __init__(self, model: LayoutPlanner, tokenizer):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | Path, tokenizer) -> Planner:
        model = LayoutPlanner.from_pretrained(str(folder), torch_dtype=torch.float32, local_files_only=True)
        return cls(model, tokenizer)

    @torch.no_grad()
    def distribution(self, prompt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(presence probability (SLOTS,), mean (SLOTS, 5), std (SLOTS, 5)) for one prompt."""
        from vdemo.models.tokenizer import encode_prompts

        ids = encode_prompts(self.tokenizer, [canonical_prompt(prompt)], self.model.config.max_tokens)
        logit, mean, log_std = self.model(ids)
        return torch.sigmoid(logit)[0].numpy(), mean[0].double().numpy(), log_std[0].exp().double().numpy()

    def plan(self, prompt: str, seed: int, first_frame: np.ndarray | None = None) -> Plan:
        """Sample one layout for `prompt` (deterministic in seed). No planar object named -> an empty Plan.

        first_frame (H, W, 3) uint8, for image-to-video: each path starts where its object already is in that frame
        (found by colour, `starts_in`) and is shortened rather than moved to stay inside; objects not found there
        are not planned.
        """
        if not prompt.strip():
            return Plan((), ())
        present, mean, std = self.distribution(prompt)
        slots = [i for i in range(SLOTS) if present[i] >= 0.5]
        starts = starts_in(first_frame, prompt, slots) if first_frame is not None and slots else None
        if starts is not None:
            slots = [i for i in slots if i in starts]
        if not slots:
            return Plan((), ())
        rng = np.random.default_rng(int(seed))
        best, best_gap = None, -math.inf
        for redraw in range(REDRAWS):
            spread = np.full(len(TARGETS), TEMPERATURE)
            spread[:2] *= 1.0 + redraw / 4  # after a collision, look further afield for start points (not directions)
            paths = []
            for i in slots:
                z = np.clip(rng.standard_normal(len(TARGETS)), -2.0, 2.0)
                x, y, dx, dy, bend = mean[i] + spread * std[i] * z
                fit = fit_inside
                if starts is not None:
                    (x, y), fit = starts[i], fit_from
                if math.hypot(dx, dy) < ANCHOR_BELOW:
                    paths.append(fit(np.array([[x, y]])))
                else:
                    paths.append(fit(_bezier_path(np.array([x, y]), np.array([dx, dy]), bend)))
            gap = math.inf
            if len(paths) == 2:
                gap = float(np.linalg.norm(resample_stroke(paths[0], 16) - resample_stroke(paths[1], 16), axis=1).min())
            if gap > best_gap:
                best, best_gap = paths, gap
            if gap >= MIN_GAP:
                break
        strokes, words = [], []
        for path in best:
            delta = path[-1] - path[0]
            strokes.append(Stroke(tuple((float(px), float(py)) for px, py in path), STROKE_RADIUS))
            words.append("still" if len(path) == 1 else nearest_direction(float(delta[0]), float(delta[1])))
        return Plan(tuple(strokes), tuple(words))
