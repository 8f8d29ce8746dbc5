"""The procedural world the built-in `tiny` model learns from: captioned clips with exact ground truth.

Objects, curved paths, stick figures (with OpenPose skeletons) and depth scenes, generated on the fly from a
numpy Generator (see scenes.py for the kinds, grammar.py for the captions, detect.py for the eval's detector).
"""

from .grammar import VOCAB, build_caption, parse_caption
from .palette import ACTIONS, BACKGROUNDS, COLOURS, KINDS, MOTIONS, SHAPES
from .person import KEYPOINT_NAMES, draw_bodypose, person_keypoints, pose_frames
from .render import render_objects
from .scenes import DEPTH_PRESETS, POSE_PRESETS, Clip, depth_clip, make_clip, pose_clip, sample_clip, sample_spec

__all__ = [
    "ACTIONS", "BACKGROUNDS", "COLOURS", "DEPTH_PRESETS", "KEYPOINT_NAMES", "KINDS", "MOTIONS", "POSE_PRESETS",
    "SHAPES", "VOCAB", "Clip", "build_caption", "depth_clip", "draw_bodypose", "make_clip", "parse_caption",
    "person_keypoints", "pose_clip", "pose_frames", "render_objects", "sample_clip", "sample_spec",
]  # fmt: skip
