"""The procedural world the built-in `tiny` model learns from: captioned clips with exact ground truth.

Objects, curved paths, stick figures (with OpenPose skeletons) and depth scenes, generated on the fly from a
numpy Generator (see scenes.py for the kinds, grammar.py for the captions, detect.py for the eval's detector).
Code outside this package uses the names exported here (or other public names of its modules), never a `_private`
one: the layout planner reads prompts with `tokenize` / `MOVE_WORDS` / `STAY_WORDS` and its training targets come
from `object_tracks`.
"""

from .grammar import MOVE_WORDS, STAY_WORDS, VOCAB, build_caption, parse_caption, tokenize, vocabulary_report
from .palette import ACTIONS, BACKGROUNDS, COLOURS, DEPTH_MOTIONS, KINDS, MOTIONS, SHAPES, nearest_direction
from .person import KEYPOINT_NAMES, draw_bodypose, person_keypoints, pose_frames
from .render import render_objects
from .scenes import (
    DEPTH_PRESETS,
    POSE_PRESETS,
    Clip,
    depth_clip,
    make_clip,
    object_tracks,
    pose_clip,
    sample_clip,
    sample_spec,
)

__all__ = [
    "ACTIONS", "BACKGROUNDS", "COLOURS", "DEPTH_MOTIONS", "DEPTH_PRESETS", "KEYPOINT_NAMES", "KINDS", "MOTIONS",
    "MOVE_WORDS", "POSE_PRESETS", "SHAPES", "STAY_WORDS", "VOCAB", "Clip", "build_caption", "depth_clip",
    "draw_bodypose", "make_clip", "nearest_direction", "object_tracks", "parse_caption", "person_keypoints",
    "pose_clip", "pose_frames", "render_objects", "sample_clip", "sample_spec", "tokenize", "vocabulary_report",
]  # fmt: skip
