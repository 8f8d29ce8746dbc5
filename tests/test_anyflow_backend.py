"""AnyFlow-FAR on a tiny random pipeline saved in the real repo's layout (tests/anyflow_fixtures.py), loaded through the
registry's local folder ($VDEMO_ANYFLOW_FAR_DIR) and run through `get_pipeline(name).generate`: text and first-frame
requests, chunks streamed as they finish and equal to the final video (and to the pipeline's own decode), causality
across lengths, stop within a step, what it refuses, the manifest's pinned revision and the GPU-time estimate."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from anyflow_fixtures import build_anyflow_folder

from vdemo.backends import backend_info, get_pipeline, load_backend
from vdemo.backends.hub.anyflow import (
    ROLE,
    AnyFlowFARBackend,
    chunk_noise,
    chunk_partition,
    latent_frame_count,
    pixel_frame_count,
)
from vdemo.backends.hub.base import to_uint8_frames
from vdemo.backends.hub.registry import get_spec, resolve
from vdemo.cost import ZERO_GPU_LIMIT_S, request_seconds
from vdemo.pipeline import ChunkDone, Done, GenerationRequest, Progress, RequestError, VideoPipeline

NAME = "anyflow-far"
NATIVE = (1, 3, 3, 3, 3, 3, 3, 2)  # the released checkpoint's transformer.config.chunk_partition

pytestmark = [pytest.mark.hub, pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The registry entry loaded from a local folder through the env var, as a Space finds it; one torch thread."""
    root = build_anyflow_folder(tmp_path_factory.mktemp("anyflow"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(get_spec(NAME).env_var, str(root))
        patch.setenv("HF_HUB_OFFLINE", "1")
        load_backend.cache_clear()
        yield get_pipeline(NAME)
        load_backend.cache_clear()
    torch.set_num_threads(previous)


def request(**kw) -> GenerationRequest:
    base = {"prompt": "a red cat moves right", "num_frames": 17, "height": 32, "width": 32, "num_steps": 2,
            "guidance": 1.0, "seed": 3, "attention_mode": "causal", "sampler": "Euler"}
    return GenerationRequest(**{**base, **kw})


def events_of(pipeline, req) -> list:
    return list(pipeline.generate(req))


def test_chunk_schedule_matches_the_checkpoint():
    assert chunk_partition(21, NATIVE) == NATIVE
    assert chunk_partition(8, NATIVE) == (1, 3, 3, 1)
    assert chunk_partition(2, NATIVE) == (1, 1)
    assert [latent_frame_count(f) for f in (5, 6, 9, 29, 32, 81)] == [2, 3, 3, 8, 9, 21]
    assert [pixel_frame_count(n) for n in (0, 1, 2, 8, 21)] == [0, 1, 5, 29, 81]
    generator = torch.Generator().manual_seed(0)
    short, long = chunk_noise(generator, 2, 16, 4, 4), chunk_noise(torch.Generator().manual_seed(0), 5, 16, 4, 4)
    assert torch.equal(short, long[:, :, :2]), "a longer clip's noise starts with the shorter clip's"


def test_loads_through_the_registry_with_its_contract(pipeline):
    assert isinstance(pipeline.backend, AnyFlowFARBackend)
    info = backend_info(NAME)
    assert info.modalities == {"text", "image"} and info.attention_modes == ("causal",)
    assert info.samplers == ("Euler",) and info.default_steps == 4 and info.default_guidance == 1.0
    assert info.default_size == (480, 832) and info.default_num_frames == 29
    default = GenerationRequest(num_frames=29, height=480, width=832, num_steps=4, guidance=1.0,
                                attention_mode="causal", sampler="Euler")
    seconds = request_seconds(pipeline.backend, default)
    assert seconds <= ZERO_GPU_LIMIT_S and seconds == request_seconds(AnyFlowFARBackend, default)


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_text_and_image_give_frames_of_the_requested_shape(pipeline, with_image):
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8) if with_image else None
    req = request(num_frames=6, height=32, width=48, image=image)  # 6 is not 4n + 1: the last chunk is trimmed
    *steps, done = events_of(pipeline, req)
    assert isinstance(done, Done) and not done.stopped
    assert done.frames.shape == (6, 32, 48, 3) and done.frames.dtype == np.uint8
    chunks = done.manifest["chunks"]
    assert chunks["partition"] == [1, 2] and chunks["context_chunks"] == int(with_image)
    progress = [e for e in steps if not isinstance(e, ChunkDone)]
    denoised = 2 - int(with_image)
    assert [p.step for p in progress] == list(range(1, 2 * denoised + 1))  # one Progress per step of every chunk
    assert all(p.total == 2 * denoised and p.preview.ndim == 4 for p in progress)
    assert done.manifest["timings"]["steps_done"] == 2 * denoised


def test_chunks_stream_as_they_finish_and_equal_the_final_video(pipeline):
    req = request(num_frames=29)  # 8 latent frames: chunks 1, 3, 3, 1
    events = events_of(pipeline, req)
    done = events[-1]
    chunk_at = [i for i, e in enumerate(events) if isinstance(e, ChunkDone)]
    chunks = [events[i] for i in chunk_at]
    assert [c.chunk for c in chunks] == [0, 1, 2, 3] and all(c.chunks == 4 for c in chunks)
    assert chunk_at[0] < chunk_at[-1] < len(events) - 1
    assert any(isinstance(e, Progress) and not isinstance(e, ChunkDone) for e in events[chunk_at[0]:chunk_at[1]])
    sizes = [len(c.frames) for c in chunks]
    assert sizes == [1, 13, 25, 29], "each chunk adds its frames"
    assert [c.new_frames for c in chunks] == [(0, 1), (1, 13), (13, 25), (25, 29)]
    for chunk in chunks:
        np.testing.assert_array_equal(chunk.frames, done.frames[:len(chunk.frames)], "streamed = final")
    assert all(c.elapsed_s < done.manifest["timings"]["total_s"] for c in chunks)
    assert [r["frames"] for r in done.manifest["chunks"]["done"]] == [[0, 1], [1, 13], [13, 25], [25, 29]]


def test_streamed_decode_equals_the_pipelines_own(pipeline):
    """ChunkDecoder (chunk by chunk, cache kept) against AnyFlowFARPipeline's decode of the whole latent video."""
    req = request(num_frames=17)
    done = events_of(pipeline, req)[-1]
    backend = pipeline.backend
    partition = backend.partition_for(req)
    noise = chunk_noise(torch.Generator().manual_seed(req.seed), sum(partition), 16, 4, 4)
    with backend.lock:
        backend.pipe.scheduler = backend.make_scheduler("Euler")
        out = backend.pipe(prompt=req.prompt, height=32, width=32, num_frames=17, num_inference_steps=2,
                           guidance_scale=1.0, latents=noise, chunk_partition=list(partition), output_type="np")
    np.testing.assert_array_equal(done.frames, to_uint8_frames(out.frames))


def test_causal_a_longer_clip_starts_with_the_shorter_one(pipeline):
    short = events_of(pipeline, request(num_frames=17))[-1]  # chunks 1, 3, 1
    long = events_of(pipeline, request(num_frames=29))[-1]  # chunks 1, 3, 3, 1
    np.testing.assert_array_equal(short.frames[:13], long.frames[:13])  # the first two chunks
    other = events_of(pipeline, request(num_frames=29, seed=4))[-1]
    assert not np.array_equal(other.frames[:13], long.frames[:13])


def test_stop_mid_run_ends_within_a_step(pipeline):
    run = pipeline.start(request(num_frames=17))
    seen, stopped_at = [], None
    for event in run:
        seen.append(event)
        if type(event) is Progress and event.step == 3:  # chunk 1 (steps 3-4), its first step
            run.stop()
            stopped_at = len(seen)
    done = seen[-1]
    assert isinstance(done, Done) and done.stopped
    assert seen[stopped_at:] == [done], "nothing comes between the step in flight and Done"
    assert done.manifest["timings"]["steps_done"] == 3 and done.manifest["stopped"] is True
    assert len(done.frames) == 13 and done.manifest["chunks"]["done"][-1]["stopped_early"] is True


def test_refuses_what_it_cannot_do_in_one_line(pipeline):
    image = np.zeros((32, 32, 3), np.uint8)
    cases = [(request(attention_mode="full"), "attention mode 'full'"), (request(sampler="DDIM"), "sampler 'DDIM'"),
             (request(keyframes=((2, image),)), "keyframes"), (request(width=40), "multiple of 16")]
    for req, words in cases:
        with pytest.raises(RequestError, match=words) as err:
            pipeline.start(req)
        assert "\n" not in str(err.value)


def test_manifest_records_the_pinned_repo_and_revision(pipeline):
    local = events_of(pipeline, request(num_frames=5))[-1].manifest
    assert local["backend"] == NAME and local["models"][ROLE] == {"local": str(pipeline.backend.sources[ROLE].location)}
    spec = get_spec(NAME)
    hub = resolve(spec, ROLE, None)  # what a Space without a local folder runs (same weights here)
    backend = AnyFlowFARBackend(spec, {ROLE: hub}, "cpu", torch.float32, pipeline.backend.pipe)
    manifest = events_of(VideoPipeline(backend), replace(request(num_frames=5)))[-1].manifest
    assert manifest["models"][ROLE] == {"id": "nvidia/AnyFlow-FAR-Wan2.1-1.3B-Diffusers",
                                        "revision": "915af337434035df8545797ecc910d79fa78cf29"}
    assert spec.repos[ROLE].provenance and manifest["chunks"]["steps_per_chunk"] == 2
