"""Export round trips: what we write must read back (frame count, colours, pixel format, exact PNGs, manifest)."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from vdemo.export import (
    ExportPaths,
    export_result,
    preview_strip,
    upscale_for_players,
    write_frames,
    write_gif,
    write_mp4,
)
from vdemo.media import frames_to_uint8

RED = (200, 30, 40)


def solid(num_frames: int, colour=RED, size=(64, 64)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (num_frames, *size, 3)).copy()


def ramp(num_frames: int, size=(64, 64)) -> np.ndarray:
    """Frames that all differ: frame i is a solid grey of level 20 + 10·i."""
    return np.stack([np.full((*size, 3), 20 + 10 * i, np.uint8) for i in range(num_frames)])


def read_mp4(path) -> tuple[dict, np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader])
    return meta, frames


# --- frames_to_uint8 ------------------------------------------------------------------------------------------------


def test_float_frames_in_either_layout_map_to_the_same_uint8():
    x = torch.linspace(-1, 1, 4 * 3 * 5 * 6).reshape(4, 3, 5, 6)  # (F, C, H, W)
    channels_first = frames_to_uint8(x)
    channels_last = frames_to_uint8(x.permute(0, 2, 3, 1).numpy())
    assert channels_first.dtype == np.uint8 and channels_first.shape == (4, 5, 6, 3)
    assert np.array_equal(channels_first, channels_last)
    assert channels_first.min() == 0 and channels_first.max() == 255
    assert frames_to_uint8(np.zeros((1, 2, 2, 3), np.float32))[0, 0, 0, 0] == 128  # 127.5, half to even
    u8 = ramp(3, (4, 4))
    assert np.array_equal(frames_to_uint8(u8), u8)


def test_bfloat16_tensors_are_accepted():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16)
    assert frames_to_uint8(x).shape == (2, 4, 4, 3)


@pytest.mark.parametrize(("frames", "message"), [
    (np.zeros((4, 4, 3), np.uint8), "4-D"),
    (np.zeros((0, 4, 4, 3), np.uint8), "at least 1 frame, got 0"),
    (np.zeros((2, 3, 4, 4), np.uint8), r"uint8 frames must be \(F, H, W, 3\)"),
    (np.zeros((2, 4, 4, 3), np.int64), "uint8 .* or floating point"),
    (np.full((2, 4, 4, 3), 1.5, np.float32), r"in \[-1, 1\], got min 1.5, max 1.5"),
    (np.full((2, 4, 4, 3), np.nan, np.float32), "finite"),
    (np.zeros((2, 4, 4, 2), np.float32), "3 colour channels"),
])
def test_bad_frames_raise_clear_errors(frames, message):
    with pytest.raises(ValueError, match=message):
        frames_to_uint8(frames)


def test_upscale_is_a_whole_nearest_neighbour_factor_to_even_sizes():
    frames = ramp(2, (64, 48))
    up = upscale_for_players(frames, 256)
    assert up.shape == (2, 64 * 6, 48 * 6, 3)  # ceil(256 / 48) = 6
    assert np.array_equal(up[:, ::6, ::6], frames)
    odd = upscale_for_players(ramp(1, (5, 7)), 0)  # no scaling, but even sizes
    assert odd.shape == (1, 6, 8, 3)
    assert upscale_for_players(ramp(1, (300, 400)), 256).shape == (1, 300, 400, 3)


# --- mp4 / gif ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_frames", "fps"), [(6, 6), (7, 3), (16, 8)])
def test_mp4_reads_back_with_every_frame_in_yuv420p(tmp_path, num_frames, fps):
    """(6, 6) and (7, 3) are pairs where moviepy alone writes one frame short."""
    path = write_mp4(ramp(num_frames), tmp_path / "clip.mp4", fps)
    meta, frames = read_mp4(path)
    assert meta["pix_fmt"].startswith("yuv420p")
    assert meta["codec"] == "h264"
    assert meta["size"] == (256, 256)  # 64 px upscaled ×4 for players
    assert meta["fps"] == pytest.approx(fps)
    assert len(frames) == num_frames
    levels = frames.reshape(num_frames, -1).mean(axis=1)
    assert np.allclose(levels, 20 + 10 * np.arange(num_frames), atol=3)  # order kept, nothing dropped or repeated


def test_mp4_keeps_a_solid_colour(tmp_path):
    meta, frames = read_mp4(write_mp4(solid(8), tmp_path / "red.mp4", 8))
    assert len(frames) == 8
    assert np.allclose(frames.reshape(-1, 3).mean(axis=0), RED, atol=6)


def test_mp4_scale_is_a_parameter(tmp_path):
    meta, _ = read_mp4(write_mp4(solid(2, size=(64, 64)), tmp_path / "native.mp4", 4, min_side_px=0))
    assert meta["size"] == (64, 64)


def test_gif_reads_back_with_every_frame(tmp_path):
    path = write_gif(ramp(7), tmp_path / "clip.gif", fps=3)
    frames = iio.imread(path, index=None)
    assert frames.shape[:3] == (7, 256, 256)
    assert np.allclose(frames[..., :3].reshape(7, -1).mean(axis=1), 20 + 10 * np.arange(7), atol=2)
    with Image.open(path) as gif:
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == pytest.approx(1000 / 3, abs=10)


# --- frames / manifest / everything ---------------------------------------------------------------------------------


def test_png_frames_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    (tmp_path / "0007.png").write_bytes(b"stale frame from a longer export")
    (tmp_path / "notes.png").write_bytes(b"not ours")
    paths = write_frames(frames, tmp_path)
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png", "0003.png", "0004.png"]
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in paths]), frames)
    assert not (tmp_path / "0007.png").exists() and (tmp_path / "notes.png").exists()


def test_export_result_writes_everything_and_the_manifest_round_trips(tmp_path):
    manifest = {
        "backend": "tiny", "sampler": "DPM++ 2M", "steps": np.int64(20), "guidance": np.float32(3.5),
        "seed": torch.tensor(1234), "timings": {"total_s": np.float64(1.25), "bad": float("nan")},
        "modes": ("full", "causal"), "size": np.array([64, 64]),
    }
    frames = torch.rand(4, 3, 32, 32) * 2 - 1  # float, channels first, straight from a model
    paths = export_result(frames, tmp_path / "out", fps=np.int64(4), manifest=manifest, stem="run1")
    assert isinstance(paths, ExportPaths)
    assert paths.mp4.name == "run1.mp4" and paths.gif.name == "run1.gif"
    assert len(paths.frames) == 4 and all(p.parent == paths.frames_dir for p in paths.frames)
    assert len(read_mp4(paths.mp4)[1]) == 4
    assert iio.imread(paths.gif, index=None).shape[0] == 4

    text = paths.manifest.read_text()
    loaded = json.loads(text)
    assert text == json.dumps(loaded, indent=2, sort_keys=True) + "\n"
    assert loaded["backend"] == "tiny" and loaded["sampler"] == "DPM++ 2M"
    assert loaded["steps"] == 20 and loaded["seed"] == 1234
    assert math.isclose(loaded["guidance"], 3.5) and loaded["timings"]["total_s"] == 1.25
    assert loaded["timings"]["bad"] is None  # strict JSON for the browser
    assert loaded["modes"] == ["full", "causal"] and loaded["size"] == [64, 64]
    assert loaded["export"] == {"num_frames": 4, "height": 32, "width": 32, "fps": 4,
                                "files": {"mp4": "run1.mp4", "gif": "run1.gif", "frames_dir": "run1_frames"}}


def test_export_result_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        export_result(solid(2), tmp_path, 4, {"export": 1})
    with pytest.raises(ValueError, match="stem"):
        export_result(solid(2), tmp_path, 4, {}, stem="../escape")
    with pytest.raises(ValueError, match="fps"):
        write_mp4(solid(2), tmp_path / "x.mp4", 0)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        export_result(solid(2), tmp_path, 4, {"model": object()})


# --- preview strip --------------------------------------------------------------------------------------------------


def test_preview_strip_tiles_frames_in_rows():
    frames = ramp(5, (10, 20))
    strip = preview_strip(frames, max_width_px=60)  # 3 frames per row, 2 rows, last two cells black
    assert strip.shape == (20, 60, 3)
    assert np.array_equal(strip[:10, 20:40], frames[1])
    assert np.array_equal(strip[10:, 20:40], frames[4])
    assert not strip[10:, 40:].any()
    assert preview_strip(frames).shape == (10, 100, 3)  # all in one row
    assert preview_strip(frames, max_width_px=5).shape == (50, 20, 3)  # wider than the limit: one per row
