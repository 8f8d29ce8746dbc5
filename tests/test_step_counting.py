"""Progress and the manifest count scheduler steps, not model calls (Heun / DPM++ SDE: 2n−1 calls, PLMS: n+1).

A 20-step Heun run must say "step 20/20", never "step 39/39"; a stop after step k must report k ≤ n. The mapping from
calls to steps is `vdemo.samplers.step_progress`; these tests drive it through the samplers, the built-in backend's
loop (`DenoisingBackend.run`) and a hub backend's (`DiffusersBackend._on_step_end`).
"""

from __future__ import annotations

import os

import pytest
import torch

from vdemo.backends.tiny import TinyBackend
from vdemo.pipeline import Done, GenerationRequest, Progress, VideoPipeline
from vdemo.samplers import (
    SAMPLERS,
    default_scheduler_config,
    make_scheduler,
    sample_steps,
    schedule_steps,
    set_timesteps,
    step_progress,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TWO_CALL = ("Heun", "DPM++ SDE")
CALLS = {"Heun": lambda n: 2 * n - 1, "DPM++ SDE": lambda n: 2 * n - 1, "PNDM": lambda n: n + 1 if n > 1 else 1}


def model_calls(sampler: str, n: int) -> int:
    return CALLS.get(sampler, lambda m: m)(n)


def labels(sampler: str, n: int, switch_at: dict | None = None) -> list[tuple[int, bool]]:
    """(step, step_done) per model call of a `sample_steps` run with a zero model."""
    scheduler = make_scheduler(sampler, default_scheduler_config(timestep_spacing="trailing"))
    run = sample_steps(lambda x, t: torch.zeros_like(x), scheduler, (1, 2, 3, 8, 8), n,
                       torch.Generator().manual_seed(0), (switch_at or {}).get)
    out, total = [], None
    for call in run:
        total = total or schedule_steps(call["scheduler"])
        out.append(step_progress(call["scheduler"], call["index"], total))
    return out


# --------------------------------------------------------------------------------------------- samplers alone
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("n", [1, 2, 4, 20])
def test_every_sampler_counts_n_steps(sampler, n):
    scheduler = make_scheduler(sampler, default_scheduler_config())
    set_timesteps(scheduler, n)
    assert len(scheduler.timesteps) == model_calls(sampler, n) and schedule_steps(scheduler) == n
    seen = labels(sampler, n)
    assert len(seen) == model_calls(sampler, n)
    assert [step for step, done in seen if done] == list(range(1, n + 1)), "each step completes once, in order"
    assert [step for step, _ in seen] == sorted(step for step, _ in seen) and seen[-1] == (n, True)


def test_two_call_steps_pair_up_and_the_last_is_one_call():
    assert labels("Heun", 4) == [(1, False), (1, True), (2, False), (2, True), (3, False), (3, True), (4, True)]
    assert labels("DPM++ SDE", 3) == [(1, False), (1, True), (2, False), (2, True), (3, True)]
    assert labels("PNDM", 4) == [(1, False), (1, True), (2, True), (3, True), (4, True)]  # PLMS warm-up pair


@pytest.mark.parametrize(("first", "second"), [("DDIM", "Heun"), ("Heun", "DDIM"), ("Heun", "DPM++ SDE")])
def test_switch_between_steps_keeps_the_count(first, second):
    n, k = 10, 4
    after = 2 * k if first in TWO_CALL else k  # the model calls that complete k steps
    seen = labels(first, n, switch_at={after: second})
    completed = [step for step, done in seen if done]
    assert completed == sorted(completed) and set(completed) == set(range(1, n + 1)) and seen[-1] == (n, True)
    # The new sampler continues at its first level at least as noisy as the run (`continue_index`). Its grid may sit
    # just above the old one (DDIM "trailing" 599 → Heun 600), so at most one step is run again, labelled again.
    assert len(completed) - n <= 1
    assert after + model_calls(second, n - k) <= len(seen) <= after + model_calls(second, n - k + 1)


@pytest.mark.parametrize(("first", "second"), [("DPM++ 2M Karras", "Heun"), ("DPM++ 2M Karras", "DDIM"),
                                               ("DDIM", "DPM++ 2M Karras"), ("Heun", "DPM++ 2M Karras")])
def test_a_switch_across_grids_of_other_ranges_stays_within_the_steps_asked(first, second):
    """Karras σs reach 2e4 (the cosine schedule's top), a uniform grid's far less: leaving Karras mid-run the new
    sampler takes no more than the steps left (+1), not its whole schedule again; joining Karras it may finish early
    at its dense low-noise levels. Either way the count ends at n/n and never runs backwards."""
    n, k = 10, 4
    after = 2 * k if first in TWO_CALL else k
    seen = labels(first, n, switch_at={after: second})
    completed = [step for step, done in seen if done]
    assert completed == sorted(completed) and completed[:k] == list(range(1, k + 1)) and seen[-1] == (n, True)
    assert len(completed) <= n + 1 and len(seen) <= after + model_calls(second, n - k + 1)


# ----------------------------------------------------------------------------------------- the built-in loop
@pytest.fixture(scope="module")
def pipe() -> VideoPipeline:
    return VideoPipeline(TinyBackend.random(seed=0))


def small(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle moves right", num_frames=4, height=48, width=48, num_steps=4, guidance=2.0,
                seed=1, sampler="DDIM")
    return GenerationRequest(**{**base, **kw})


def drive(run, act=None) -> tuple[list[Progress], Done]:
    """Iterate a run; `act(progress, run)` after each Progress."""
    progress, done = [], None
    for event in run:
        if isinstance(event, Done):
            done = event
        else:
            progress.append(event)
            if act is not None:
                act(event, run)
    return progress, done


@pytest.mark.parametrize("sampler", TWO_CALL)
@pytest.mark.parametrize("n", [4, 20])
def test_two_call_samplers_report_scheduler_steps(pipe, sampler, n):
    progress, done = drive(pipe.start(small(sampler=sampler, num_steps=n)))
    calls = 2 * n - 1
    assert len(progress) == calls, "previews still stream per model call"
    assert {p.total for p in progress} == {n} and progress[-1].step == n and progress[-1].step_done
    assert [p.step for p in progress] == [1 + c // 2 for c in range(calls)]
    assert [p.calls for p in progress] == list(range(1, calls + 1)) and {p.total_calls for p in progress} == {calls}
    assert max(p.step for p in progress) <= n
    m = done.manifest
    assert m["timings"]["steps_done"] == n and m["timings"]["model_calls"] == calls
    assert [h["step"] for h in m["steps"]] == [p.step for p in progress]
    assert [h["call"] for h in m["steps"]] == list(range(1, calls + 1))


def test_ddim_is_one_call_per_step(pipe):
    progress, done = drive(pipe.start(small(num_steps=4)))
    assert [(p.step, p.total, p.step_done, p.calls, p.total_calls) for p in progress] == [
        (k, 4, True, k, 4) for k in range(1, 5)]
    assert done.manifest["timings"]["steps_done"] == 4 and [h["step"] for h in done.manifest["steps"]] == [1, 2, 3, 4]


def test_pndm_counts_its_warm_up_as_one_step(pipe):
    progress, done = drive(pipe.start(small(sampler="PNDM", num_steps=4)))
    assert [(p.step, p.step_done) for p in progress] == [(1, False), (1, True), (2, True), (3, True), (4, True)]
    assert done.manifest["timings"]["steps_done"] == 4 and done.manifest["timings"]["model_calls"] == 5


@pytest.mark.parametrize("sampler", TWO_CALL)
def test_stop_after_step_k_reports_k(pipe, sampler):
    k, n = 3, 20

    def stop_after_k(p, run):
        if p.step == k and p.step_done:
            run.stop()

    progress, done = drive(pipe.start(small(sampler=sampler, num_steps=n)), stop_after_k)
    assert done.stopped and progress[-1].step == k <= n and progress[-1].steps_done == k
    assert done.manifest["timings"]["steps_done"] == k and done.manifest["timings"]["model_calls"] == 2 * k


def test_stop_inside_a_step_counts_only_completed_steps(pipe):
    def stop_mid_step_3(p, run):
        if p.step == 3 and not p.step_done:
            run.stop()

    progress, done = drive(pipe.start(small(sampler="Heun", num_steps=20)), stop_mid_step_3)
    assert done.stopped and (progress[-1].step, progress[-1].step_done) == (3, False)
    assert done.manifest["timings"]["steps_done"] == 2 and done.manifest["timings"]["model_calls"] == 5
    assert done.frames.shape == (4, 48, 48, 3), "a stop between a step's two calls keeps the last prediction"


def test_mode_and_sampler_change_between_steps_only(pipe):
    """A toggle made after a step's first call applies from the next step: one mode and one sampler per step."""
    def toggle_mid_step_2(p, run):
        if p.step == 2 and not p.step_done:
            run.set_attention_mode("causal")
            run.set_sampler("DDIM")

    progress, done = drive(pipe.start(small(sampler="Heun", num_steps=4, attention_mode="spatial")), toggle_mid_step_2)
    history = done.manifest["steps"]
    assert [(h["step"], h["mode"], h["sampler"]) for h in history] == [
        (1, "spatial", "Heun"), (1, "spatial", "Heun"), (2, "spatial", "Heun"), (2, "spatial", "Heun"),
        (3, "causal", "DDIM"), (4, "causal", "DDIM")]
    assert {p.total for p in progress} == {4} and done.manifest["timings"]["steps_done"] == 4


# ----------------------------------------------------------------------------------------------- a hub backend
@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    pytest.importorskip("transformers")
    from hub_fixtures import build_hub_folder

    from vdemo.backends.hub import load_hub_backend

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return VideoPipeline(load_hub_backend("animatediff", local_dir=build_hub_folder(tmp_path_factory.mktemp("hub"))))


@pytest.mark.hub
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_hub_backend_counts_scheduler_steps(animatediff):
    req = GenerationRequest(prompt="a red circle moves right", num_frames=4, height=32, width=32, num_steps=3,
                            guidance=2.0, seed=3, sampler="Heun", attention_mode="spatial")

    def toggle_mid_step_2(p, run):
        if p.step == 2 and not p.step_done:
            run.set_attention_mode("full")

    progress, done = drive(animatediff.start(req), toggle_mid_step_2)
    assert [(p.step, p.step_done) for p in progress] == [(1, False), (1, True), (2, False), (2, True), (3, True)]
    assert {p.total for p in progress} == {3} and {p.total_calls for p in progress} == {5}
    m = done.manifest
    assert m["timings"]["steps_done"] == 3 and m["timings"]["model_calls"] == 5
    assert [(h["step"], h["mode"]) for h in m["steps"]] == [
        (1, "spatial"), (1, "spatial"), (2, "spatial"), (2, "spatial"), (3, "full")]

    def stop_after_1(p, run):
        if p.step == 1 and p.step_done:
            run.stop()

    progress, done = drive(animatediff.start(GenerationRequest(**{**req.__dict__, "num_steps": 6})), stop_after_1)
    assert done.stopped and progress[-1].step == 1 and done.manifest["timings"]["steps_done"] == 1
