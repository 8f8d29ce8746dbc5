"""AnyFlow-FAR on a tiny random pipeline saved in the real repo's layout (tests/anyflow_fixtures.py), loaded through the
registry's local folder ($VDEMO_ANYFLOW_FAR_DIR) and run through `get_pipeline(name).generate`: text and first-frame
requests, chunks streamed as they finish and equal to the final video (and to the pipeline's own decode), causality
across lengths, stop within a step, what it refuses, the manifest's pinned revision and the GPU-time estimate.
Continuation: a known prefix comes out unchanged and its last 4n + 1 frames condition the rest; autoregressive long
videos and clip extension run window by window through `vdemo.long.generate_long`; in-betweening (a known frame after
a generated one, the hierarchical strategy) is refused in one line before anything runs."""

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
    context_frame_count,
    context_partition,
    latent_frame_count,
    pixel_frame_count,
)
from vdemo.backends.hub.base import to_uint8_frames
from vdemo.backends.hub.registry import get_spec, resolve
from vdemo.cost import ZERO_GPU_LIMIT_S, request_seconds
from vdemo.long import LongJob, SegmentDone, extend, generate_long, inbetween
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
    assert [latent_frame_count(f) for f in (0, 1, 5, 6, 9, 29, 32, 81)] == [0, 1, 2, 3, 3, 8, 9, 21]
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
             (request(keyframes=((2, image),)), "first frames 0, 1"), (request(width=40), "multiple of 16")]
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


# ------------------------------------------------------------------------------------------------ continuation
def clip_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8)


def prefix(frames: np.ndarray) -> tuple:
    return tuple(enumerate(frames))


def test_context_schedule():
    assert [context_frame_count(k) for k in (0, 1, 2, 4, 5, 8, 9, 13)] == [0, 1, 1, 1, 5, 5, 9, 13]
    assert context_partition(2, 4, NATIVE) == (1, 1, 2), "5 context frames = 2 latents, a chunk each; then new ones"
    assert context_partition(3, 9, NATIVE) == (1, 2, 3, 3)
    assert context_partition(1, 8, NATIVE) == chunk_partition(8, NATIVE) == (1, 3, 3, 1)  # a first frame: as before
    assert context_partition(1, 21, NATIVE) == NATIVE and context_partition(0, 8, NATIVE) == (1, 3, 3, 1)


def test_a_known_prefix_comes_out_unchanged_and_the_rest_is_generated(pipeline):
    known = clip_of(5)
    events = events_of(pipeline, request(num_frames=13, keyframes=prefix(known)))
    done = events[-1]
    assert done.frames.shape == (13, 32, 32, 3) and not done.stopped
    np.testing.assert_array_equal(done.frames[:5], known)  # exact, not the VAE's round trip
    assert done.manifest["video_context"] == {"known_frames": 5, "context_frames": 5, "context_span": [0, 5],
                                              "context_latent_frames": 2, "kept_unseen": 0}
    chunks = done.manifest["chunks"]
    assert chunks["partition"] == [1, 1, 2] and chunks["context_chunks"] == 2
    streamed = [e for e in events if isinstance(e, ChunkDone)]
    assert [c.new_frames for c in streamed] == [(0, 1), (1, 5), (5, 13)]
    assert [c.step for c in streamed] == [0, 0, 2] and done.manifest["timings"]["steps_done"] == 2  # one chunk denoised
    for chunk in streamed:
        np.testing.assert_array_equal(chunk.frames, done.frames[:len(chunk.frames)])
    other = known.copy()
    other[0] = 255 - other[0]  # all 5 are context: changing the first changes the continuation
    again = events_of(pipeline, request(num_frames=13, keyframes=prefix(other)))[-1]
    assert not np.array_equal(again.frames[5:], done.frames[5:])
    np.testing.assert_array_equal(again.frames[:5], other)


def test_of_four_known_frames_the_last_one_is_the_context(pipeline):
    """4 known frames: the VAE takes 4n + 1, so the last one conditions the model and the first three are returned as
    given: the clip from frame 3 on is exactly the image-to-video run from that frame."""
    known = clip_of(4, seed=1)
    done = events_of(pipeline, request(num_frames=13, keyframes=prefix(known)))[-1]
    np.testing.assert_array_equal(done.frames[:4], known)
    assert done.manifest["video_context"] == {"known_frames": 4, "context_frames": 1, "context_span": [3, 4],
                                              "context_latent_frames": 1, "kept_unseen": 3}
    assert any("the last 1 condition" in w for w in done.manifest["warnings"])
    from_image = events_of(pipeline, request(num_frames=10, image=known[3]))[-1]
    np.testing.assert_array_equal(done.frames[3:], from_image.frames)


def test_known_frames_after_a_generated_one_are_refused_with_the_exact_message(pipeline):
    image = clip_of(1)[0]
    message = ("backend 'anyflow-far' takes known frames only as the clip's first frames 0, 1, …, k − 1 (a first "
               "frame, or a clip to continue), got frames {}; a known frame after a generated one (in-betweening, a "
               "last frame) is not supported")
    for req, got in [(request(keyframes=((0, image), (16, image))), [0, 16]),
                     (request(image=image, keyframes=((16, image),)), [0, 16]),
                     (request(keyframes=((0, image), (1, image), (3, image))), [0, 1, 3])]:
        with pytest.raises(RequestError) as err:
            pipeline.start(req)
        assert str(err.value) == message.format(got)
    with pytest.raises(RequestError, match="nothing is left to generate"):
        pipeline.start(request(num_frames=4, keyframes=prefix(clip_of(4))))


@pytest.mark.parametrize("context", [5, 4])
def test_an_autoregressive_long_video_keeps_its_context_frames(pipeline, context):
    """Two windows of 9 over 13 frames: the second knows the first's last `context` frames (its VAE context: the
    largest 4n + 1 of them) and they stay exactly as the first window made them."""
    job = LongJob(request(num_frames=9), 13, "autoregressive", context)
    backend, windows = pipeline.backend, []  # each window's own Done, as the backend returned it
    run = backend.run

    def recording(req, control):
        for event in run(req, control):
            windows.extend([event] if isinstance(event, Done) else [])
            yield event

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend, "run", recording)
        events = list(generate_long(pipeline, job))
    done, segments = events[-1], [e for e in events if isinstance(e, SegmentDone)]
    assert isinstance(done, Done) and not done.stopped and done.frames.shape == (13, 32, 32, 3)
    assert [s.segment for s in segments] == [0, 1]
    start = 9 - context
    np.testing.assert_array_equal(windows[1].frames[:context], segments[0].clip[start:9], "the backend kept them")
    np.testing.assert_array_equal(done.frames[start:9], segments[0].clip[start:9], "the seam keeps the context")
    np.testing.assert_array_equal(done.frames[:9], segments[0].clip[:9])
    long = done.manifest["long"]
    assert long["seams"] == [8] and long["windows"][1]["known"] == list(range(start, 9))
    used = context_frame_count(context)
    assert long["windows"][0]["video_context"]["known_frames"] == 0
    assert long["windows"][1]["video_context"] == {"known_frames": context, "context_frames": used,
                                                   "context_span": [context - used, context],
                                                   "context_latent_frames": latent_frame_count(used),
                                                   "kept_unseen": context - used}
    assert not np.array_equal(done.frames[9:], np.zeros_like(done.frames[9:]))


def test_extending_a_clip_keeps_it_and_continues(pipeline):
    clip = clip_of(6, seed=2)
    done = list(generate_long(pipeline, extend(request(num_frames=9), clip, 7, context=5)))[-1]
    assert done.frames.shape == (13, 32, 32, 3) and done.manifest["long"]["kind"] == "extend"
    np.testing.assert_array_equal(done.frames[:6], clip)
    assert [w["known"] for w in done.manifest["long"]["windows"]] == [[1, 2, 3, 4, 5], [5, 6, 7, 8, 9]]


def test_the_hierarchical_strategy_is_refused_in_one_line_before_it_runs(pipeline):
    runs = []
    backend = pipeline.backend
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backend, "run", lambda *a: runs.append(a) or iter(()))
        with pytest.raises(RequestError) as err:
            next(generate_long(pipeline, LongJob(request(num_frames=9), 17, "hierarchical")))
        assert str(err.value).startswith("hierarchical window 2/4 (frames 0–5, known [0, 5]): backend 'anyflow-far' "
                                         "takes known frames only as the clip's first frames")
        assert str(err.value).endswith("; autoregressive windows know only their first frames")
        assert "\n" not in str(err.value)
        first, last = clip_of(2)
        with pytest.raises(RequestError, match="in-betweening") as err:
            next(generate_long(pipeline, inbetween(request(num_frames=9), first, last, 9)))
        assert "\n" not in str(err.value)
    assert runs == [], "refused before the first window ran"


def test_the_video_tab_refuses_the_hierarchical_strategy_before_queueing(pipeline, monkeypatch):
    """Through the tab's endpoint (at the backend's default 480×832): refused in one line before any window runs."""
    import gradio as gr

    from vdemo.ui import space
    from vdemo.ui.tabs import video

    monkeypatch.setattr(space, "SERVED", {})  # as if this app served every backend (an app test may have filled it)

    events = video.video_to_video("long video from the prompt", None, "a red cat", "", "hierarchical", 64, 4, 0.8, 32,
                                  None, None, NAME, "causal", "Euler", 2, 1.0, 9, 8, 0, False, request=None)
    with pytest.raises(gr.Error) as err:
        next(events)
    assert "hierarchical window 2/" in err.value.message and "\n" not in err.value.message
    assert "a known frame after a generated one" in err.value.message


def test_under_model_offload_the_vae_is_brought_onto_its_device_before_encoding_and_decoding(pipeline,
                                                                                          monkeypatch):
    """`encode_video` calls `vae._encode`, which accelerate's offload hook does not wrap: the backend runs the hook's
    pre_forward itself before the context encode and before each chunk decode (else: cuda input, cpu weights)."""
    vae = pipeline.backend.pipe.vae
    calls = []

    class Hook:
        def pre_forward(self, module):
            calls.append(module)

    monkeypatch.setattr(vae, "_hf_hook", Hook(), raising=False)
    done = events_of(pipeline, request(num_frames=9, keyframes=prefix(clip_of(5))))[-1]
    assert not done.stopped and calls and all(m is vae for m in calls)
    chunks = done.manifest["chunks"]["partition"]
    assert len(calls) >= 1 + (len(chunks) - 2)  # the context encode + every chunk decoded after the context
