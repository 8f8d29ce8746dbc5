"""Training the layout planner (`vdemo.models.planner.LayoutPlanner`): world captions, their targets, the loss.

`python -m vdemo.train --planner` runs `train_planner` into `<out>/planner/` (about 2 minutes on one core). Each
example is a world caption (all kinds; seeds below the eval's held-out range) rewritten the way users write prompts
(`augment_caption`) or, for a share of them, into a prompt that names nothing to plan (`negative_caption`), then put
into the grammar's words (`canonical_prompt`, as at inference). Targets per object slot: presence, and the path's
start, displacement and bend (`path_targets` of the world's own object tracks, `caption_targets`). Loss: presence
BCE + Gaussian negative log-likelihood of the present slots' targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vdemo import world
from vdemo.models.planner import PATH_POINTS, SLOTS, TARGETS, LayoutPlanner, canonical_prompt
from vdemo.models.tokenizer import encode_prompts
from vdemo.strokes import resample_stroke

NEGATIVE_SHARE = 0.1  # share of training prompts that name nothing to plan (presence 0 in every slot)


# ------------------------------------------------------------------------------------------------ prompts
def augment_caption(caption: str, rng: np.random.Generator) -> str:
    """Training-time variants of a world caption that users write too: no articles, no verb, "stays" without "still",
    singular and plural verbs mixed up."""
    words = caption.split()
    if rng.random() < 0.25:
        words = [w for w in words if w not in ("a", "an")]
    if rng.random() < 0.15:
        words = [w for w in words if w not in ("moves", "move")]
    if rng.random() < 0.1:
        words = [w for w in words if w != "still"]
    if rng.random() < 0.2:
        words = [{"move": "moves", "moves": "move", "stay": "stays", "stays": "stay"}.get(w, w) for w in words]
    return " ".join(words)


def negative_caption(caption: str, rng: np.random.Generator) -> str:
    """A prompt that names no moving planar object: the noun phrases alone, the background alone, or junk."""
    words = caption.split()
    pick = int(rng.integers(5))
    if pick == 0:  # "a red circle and a blue square": objects, but no verb
        cut = next((i for i, w in enumerate(words) if w in ("moves", "move", "stays", "stay", "on")), len(words))
        return " ".join(words[:cut])
    if pick == 1:
        return " ".join(words[words.index("on"):]) if "on" in words else ""
    if pick == 3:  # a verb but no known direction: "a red circle moves somewhere"
        motions = set(world.MOTIONS) | set(world.DEPTH_MOTIONS) | {"still"}
        return " ".join(str(rng.choice(["somewhere", "around", "fast", "about"])) if w in motions else w for w in words)
    if pick == 2:  # words the tokenizer does not know
        return " ".join(rng.choice(["hello", "the", "video", "of", "thing", "nice", "sky", "it"], size=3))
    return ""


# ------------------------------------------------------------------------------------------------ targets
def path_targets(path: np.ndarray) -> np.ndarray:
    """(F, 2) centres at constant speed -> (5,) start x, y, displacement dx, dy, bend (midpoint off the chord)."""
    path = np.asarray(path, dtype=np.float64)
    start, end = path[0], path[-1]
    chord = end - start
    length = float(np.hypot(*chord))
    bend = 0.0
    if length > 1e-6:
        normal = np.array([-chord[1], chord[0]]) / length
        middle = resample_stroke(path, 3)[1]  # halfway along the arc
        bend = float(np.dot(middle - (start + end) / 2, normal))
        bend = 0.0 if abs(bend) < 1e-6 else bend  # a straight move is exactly straight (resampling is float32)
    return np.array([start[0], start[1], chord[0], chord[1], bend], dtype=np.float32)


def caption_targets(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """A world spec -> (presence (SLOTS,), targets (SLOTS, 5)), slots in caption order.

    Planned: every object of object and path clips; a depth clip's actor unless it moves closer or away (its
    caption reads like an object clip's; the static objects after "in front of" / "behind" are not planned).
    Person clips: nothing (pose drives them).
    """
    present = np.zeros(SLOTS, np.float32)
    targets = np.zeros((SLOTS, len(TARGETS)), np.float32)
    kind = spec["kind"]
    if kind in ("objects", "path") or (kind == "depth" and spec["objects"][0]["motion"] not in world.DEPTH_MOTIONS):
        tracks = world.object_tracks(spec, PATH_POINTS)[: 1 if kind == "depth" else SLOTS]
        for i, track in enumerate(tracks):
            present[i] = 1.0
            targets[i] = path_targets(track["centres"])
    return present, targets


# ------------------------------------------------------------------------------------------------ training
def planner_dataset(n: int, seed: int, tokenizer, max_tokens: int) -> dict[str, torch.Tensor]:
    """n world captions (all kinds) with their slot presence and path targets."""
    rng = np.random.default_rng(seed)
    captions, present, targets = [], [], []
    for _ in range(n):
        spec = world.sample_spec(rng)
        caption = world.build_caption(spec)
        p, t = caption_targets(spec)
        if rng.random() < NEGATIVE_SHARE:  # nothing to plan: no motion stated, or no object named
            caption, p = negative_caption(caption, rng), np.zeros_like(p)
        else:
            caption = augment_caption(caption, rng)
        captions.append(canonical_prompt(caption))
        present.append(p)
        targets.append(t)
    return {"ids": encode_prompts(tokenizer, captions, max_tokens), "present": torch.from_numpy(np.stack(present)),
            "targets": torch.from_numpy(np.stack(targets)), "captions": captions}


def planner_loss(model: LayoutPlanner, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Presence BCE + Gaussian negative log-likelihood of the present slots' targets."""
    logit, mean, log_std = model(batch["ids"])
    present = batch["present"]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, present)
    nll = (0.5 * ((batch["targets"] - mean) / log_std.exp()) ** 2 + log_std).sum(-1)  # (B, SLOTS)
    return bce + (nll * present).sum() / present.sum().clamp_min(1.0)


def train_planner(out: str | Path, tokenizer, max_tokens: int, steps: int = 3000, examples: int = 60_000,
                  batch_size: int = 512, lr: float = 2e-3, seed: int = 0, log=print) -> LayoutPlanner:
    """Train a LayoutPlanner on world captions (seeds below the eval's held-out range) and save it to `out`."""
    torch.manual_seed(seed)
    data = planner_dataset(examples, seed, tokenizer, max_tokens)
    model = LayoutPlanner(vocab_size=len(tokenizer), max_tokens=max_tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        pick = torch.randint(0, examples, (batch_size,), generator=gen)
        loss = planner_loss(model, {k: data[k][pick] for k in ("ids", "present", "targets")})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps:
            log(f"planner step {step} loss {loss.item():.3f}")
    model.eval().save_pretrained(str(out), safe_serialization=True)
    return model
