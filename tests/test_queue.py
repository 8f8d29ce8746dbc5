"""The generation queue: arrival order, waits from measured step times, places freed on cancel; run folders trimmed.

A fake clock drives the queue, so the estimates are checked exactly; `python -m vdemo.bench queue` measures them
against real waits with 8 users on the app.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from vdemo.ui.queue import ABANDONED_S, THROUGHPUT, Place, RunQueue, Work, ordinal, waiting_text


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_throughput():
    THROUGHPUT.clear()
    yield
    THROUGHPUT.clear()


WORK = Work("tiny", steps=10, units_per_step=1000.0)


def run_job(queue: RunQueue, clock: Clock, job, step_s: float, tail_s: float) -> None:
    for step in range(1, job.work.steps + 1):
        clock.now += step_s
        queue.step(job, step)
    clock.now += tail_s
    queue.leave(job, measure=True)


def test_jobs_run_one_at_a_time_in_arrival_order():
    clock = Clock()
    queue = RunQueue(clock=clock)
    a, b, c = (queue.join(WORK, fallback_s=30.0) for _ in range(3))
    assert a.admitted_at is not None and b.admitted_at is None and c.admitted_at is None
    assert queue.position(a) == (0, 0.0)
    assert queue.position(b)[0] == 1 and queue.position(c)[0] == 2
    queue.leave(a, measure=False)
    assert b.admitted_at == clock.now and queue.position(c)[0] == 1


def test_before_any_measurement_the_wait_is_the_cost_models_estimate():
    clock = Clock()
    queue = RunQueue(clock=clock)
    a = queue.join(WORK, fallback_s=30.0)
    b = queue.join(WORK, fallback_s=30.0)
    c = queue.join(WORK, fallback_s=30.0)
    clock.now += 10.0
    assert queue.position(b) == (1, pytest.approx(20.0))  # a's estimate less its elapsed time
    assert queue.position(c) == (2, pytest.approx(50.0))  # + b's estimate
    assert "estimated; this app has not timed this backend yet" in waiting_text(2, 50.0, c)
    assert a.admitted_at is not None


def test_waits_come_from_measured_step_times():
    """After one measured run (0.5 s a step, 10 steps, 2 s after the last): each run is 7 s; a running job's own step
    times give its remaining time; jobs ahead add their predictions."""
    clock = Clock()
    queue = RunQueue(clock=clock)
    first = queue.join(WORK)
    clock.now += 0.5  # start-up before its first step
    run_job(queue, clock, first, step_s=0.5, tail_s=2.0)
    assert THROUGHPUT.step_s(WORK) == pytest.approx(0.5)
    assert THROUGHPUT.predict(WORK) == pytest.approx(7.5)  # 10 × 0.5 + 2.5 s outside the steps
    running = queue.join(WORK)
    waiting = [queue.join(WORK) for _ in range(3)]
    for step in range(1, 5):  # the running job is slower now: 1 s a step
        clock.now += 1.0
        queue.step(running, step)
    # running: 6 steps left × 1.0 s + its backend's tail 2.0 s = 8 s; each waiting job ahead: 7.5 s
    assert [queue.position(w) for w in waiting] == [(1, pytest.approx(8.0)), (2, pytest.approx(15.5)),
                                                    (3, pytest.approx(23.0))]
    assert waiting_text(3, 23.0, waiting[2]) == ("**waiting**: 4th in line, about 23 s (3 runs ahead; measured 0.50 s "
                                                 "per step at these settings)")


def test_the_prediction_scales_with_the_work():
    clock = Clock()
    queue = RunQueue(clock=clock)
    job = queue.join(WORK)
    run_job(queue, clock, job, step_s=0.5, tail_s=0.0)
    double = Work("tiny", steps=20, units_per_step=2000.0)  # twice the steps, each twice the work
    assert THROUGHPUT.step_s(double) == pytest.approx(1.0)
    assert THROUGHPUT.predict(double) == pytest.approx(20.0)
    assert THROUGHPUT.step_s(Work("other", 10, 1000.0)) is None  # per backend


def test_a_stopped_or_failed_run_is_not_measured():
    clock = Clock()
    queue = RunQueue(clock=clock)
    job = queue.join(WORK)
    clock.now += 1.0
    queue.step(job, 1)
    clock.now += 1.0
    queue.step(job, 2)
    queue.leave(job, measure=False)
    assert not THROUGHPUT.measured("tiny") and len(queue) == 0


def test_a_cancelled_waiting_request_leaves_the_queue():
    """Closing the handler's generator while it waits (Gradio's cancel, a closed tab) frees its place at once."""
    queue = RunQueue()
    running = queue.join(WORK, fallback_s=5.0)

    def handler():
        with Place(WORK, 5.0, queue) as place:
            yield from place.waiting()

    waiting = handler()
    text = next(waiting)
    assert text.startswith("**waiting**: 2nd in line") and len(queue) == 2
    waiting.close()
    assert len(queue) == 1
    queue.leave(running)
    assert len(queue) == 0


def test_waiting_users_are_admitted_in_order_across_threads():
    queue = RunQueue()
    order, statuses = [], {}
    first = queue.join(WORK, fallback_s=1.0)

    def user(i: int) -> None:
        with Place(WORK, 1.0, queue) as place:
            for text in place.waiting():
                statuses.setdefault(i, text)
            assert place.admitted
            order.append(i)

    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=user, args=(i,)))
        threads[-1].start()
        time.sleep(0.05)  # arrive in order
    assert len(queue) == 5
    queue.leave(first)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]
    assert [statuses[i].split(" in line")[0] for i in range(4)] == [
        "**waiting**: 2nd", "**waiting**: 3rd", "**waiting**: 4th", "**waiting**: 5th"]


@pytest.mark.parametrize("n, text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (22, "22nd")])
def test_ordinal(n, text):
    assert ordinal(n) == text


def test_run_folders_are_trimmed_by_age_then_size(tmp_path):
    from vdemo.ui.run import trim_folder

    now = time.time()
    for i, (age_s, size) in enumerate([(7200, 10), (300, 400), (200, 400), (100, 400)]):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        (folder / "clip.mp4").write_bytes(b"x" * size)
        os.utime(folder, (now - age_s, now - age_s))
    left = trim_folder(tmp_path, max_age_s=3600, max_bytes=900)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run2", "run3"]  # too old; then the oldest over 900 B
    assert left == 800


def test_the_start_up_warm_up_times_the_backend_for_the_first_estimates(tiny_model_dir, one_torch_thread):
    """The app's warm-up run goes through the queue, so the first users' waits come from measured step times."""
    from vdemo.ui.queue import QUEUE
    from vdemo.ui.space import WARM_UP_STEPS, warm_up

    assert not THROUGHPUT.measured("tiny")
    warm_up("tiny")
    assert THROUGHPUT.measured("tiny") and len(QUEUE) == 0
    assert 0 < THROUGHPUT.step_s(Work("tiny", 1, 16 * 64 * 64)) < 30
    assert WARM_UP_STEPS >= 2  # one step has no step time to measure


def test_stop_while_waiting_leaves_the_queue_at_once():
    """The user presses Stop while in line: the wait ends within a poll, the place is freed, nothing runs."""
    queue = RunQueue()
    running = queue.join(WORK, fallback_s=5.0)
    stopped = []
    with Place(WORK, 5.0, queue, stopped=lambda: bool(stopped)) as place:
        waiting = place.waiting()
        assert next(waiting).startswith("**waiting**") and len(queue) == 2
        stopped.append(True)
        assert next(waiting, None) is None and not place.admitted
    assert len(queue) == 1
    queue.leave(running)


def test_a_job_of_several_runs_is_costed_per_run_and_not_recorded():
    """A compare of three modes: its work is the sum of its runs (each at its own cost), its fixed time is paid per
    run, and finishing it does not feed the single-run model."""
    from types import SimpleNamespace

    from vdemo.backends.tiny import TinyBackend

    req = SimpleNamespace(num_steps=10, num_frames=8, height=64, width=64, sampler="DDIM", attention_mode="spatial")
    plan = [SimpleNamespace(**{**vars(req), "attention_mode": m}) for m in ("spatial", "full", "sparse_causal")]
    many = Work.of_many("tiny", TinyBackend, plan)
    units = [Work.units(TinyBackend, r) for r in plan]
    assert many.runs == 3 and many.steps == 30 and many.units_per_step == pytest.approx(sum(units) / 3)
    assert units[1] > units[0]  # full costs more than spatial
    clock = Clock()
    queue = RunQueue(clock=clock)
    single = queue.join(WORK)
    clock.now += 1.0  # one second before its first step: the fixed time
    run_job(queue, clock, single, step_s=0.5, tail_s=0.0)
    assert THROUGHPUT.predict(Work("tiny", 30, 1000.0, runs=3)) == pytest.approx(3 * 1.0 + 30 * 0.5)
    job = queue.join(Work("tiny", 30, 4000.0, runs=3))
    run_job(queue, clock, job, step_s=9.0, tail_s=0.0)
    assert THROUGHPUT.step_s(WORK) == pytest.approx(0.5)  # unchanged by the compare


def test_the_running_jobs_own_step_count_and_its_tail_count_down():
    """A causal model reports more steps than the request's (per chunk): the reported total wins. Past its last step
    the remaining time is the tail, counting down."""
    clock = Clock()
    queue = RunQueue(clock=clock)
    first = queue.join(WORK)
    run_job(queue, clock, first, step_s=1.0, tail_s=4.0)  # tail 4 s measured
    job = queue.join(WORK)  # costed at 10 steps
    behind = queue.join(WORK)
    for step in range(1, 3):
        clock.now += 1.0
        queue.step(job, step, total=40)  # it reports 40 steps in all
    assert job.remaining_s(clock.now) == pytest.approx(38 * 1.0 + 4.0)
    for step in range(3, 41):
        clock.now += 1.0
        queue.step(job, step, total=40)
    assert job.remaining_s(clock.now) == pytest.approx(4.0)
    clock.now += 3.0
    assert job.remaining_s(clock.now) == pytest.approx(1.0)
    assert queue.position(behind) == (1, pytest.approx(1.0))


def test_gradio_cache_trimming_spares_young_kept_and_foreign_entries(tmp_path):
    from vdemo.ui.run import _gradio_entry, trim_folder

    now = time.time()
    names = {"example": "a" * 64, "old": "b" * 64, "young": "c" * 64, "foreign": "vdemo-runs"}
    ages = {"example": 5000, "old": 2000, "young": 60, "foreign": 9000}
    for key, name in names.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "f.bin").write_bytes(b"x" * 500)
        os.utime(folder / "f.bin", (now - ages[key], now - ages[key]))
        os.utime(folder, (now - 9999, now - 9999))  # a folder's own mtime is not its age: its newest file's is
    trim_folder(tmp_path, max_age_s=3600, max_bytes=100, min_age_s=900, only=_gradio_entry,
                keep=frozenset({names["example"]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["example"], names["young"], "vdemo-runs"])


def test_with_nothing_loaded_the_page_still_builds_and_offers_the_built_in_model(monkeypatch, tiny_model_dir):
    from vdemo.ui import space
    from vdemo.ui.layout import build_demo

    monkeypatch.setattr(space, "SERVED", {"tiny-v2": "no built-in model found", "tiny": "no built-in model found"})
    assert space.offered_backends() == ["tiny-v2"]  # the default, refused with the reason when chosen
    monkeypatch.setattr(space, "SERVED", {"tiny": "no built-in model found"})  # a Space that asked for v1 only
    assert space.offered_backends() == ["tiny"]
    demo = build_demo(warm_up_model=False)
    assert any(getattr(b, "elem_id", None) == "vd-backend" for b in demo.blocks.values())


# ------------------------------------------------------------------------------------- abandoned places
def test_a_turn_nobody_takes_up_is_given_up_and_the_next_user_runs(caplog):
    """A waiting handler whose generator was dropped without being closed (its turn comes, nobody takes it) cannot
    stall the queue: the next waiting user's poll gives the place up after ABANDONED_S."""
    clock = Clock()
    queue = RunQueue(clock=clock)
    running = queue.join(WORK, fallback_s=5.0)
    lost = queue.join(WORK, fallback_s=5.0)  # its owner never polls again
    with Place(WORK, 5.0, queue) as place:
        waiting = place.waiting()
        assert next(waiting).startswith("**waiting**: 3rd in line")
        queue.leave(running)
        assert lost.admitted_at is not None and not lost.claimed
        clock.now += ABANDONED_S - 1
        assert next(waiting).startswith("**waiting**: 2nd in line")  # not yet: it may still take its turn
        clock.now += 2
        assert next(waiting, None) is None and place.admitted and not queue.holds(lost)
    assert len(queue) == 0
    assert "its handler is gone (never took its turn)" in caplog.text  # the log names why


def test_a_waiting_place_nobody_polls_is_given_up():
    clock = Clock()
    queue = RunQueue(clock=clock)
    running = queue.join(WORK, fallback_s=5.0)
    queue.step(running, 0)  # its owner took its turn and runs
    queue.join(WORK, fallback_s=5.0)  # waiting, never polled
    with Place(WORK, 5.0, queue) as place:
        waiting = place.waiting()
        assert next(waiting).startswith("**waiting**: 3rd in line")
        clock.now += ABANDONED_S + 1
        assert next(waiting).startswith("**waiting**: 2nd in line")
    queue.leave(running)
    assert len(queue) == 0


def running_handler(queue: RunQueue, clock: Clock, slow_step_s: float):
    """A handler as vdemo.ui.run's: waits its turn, steps, yields "preview 1", computes `slow_step_s`, steps again,
    yields "preview 2"."""
    with Place(WORK, 5.0, queue) as place:
        yield from place.waiting()
        place.step(10)
        yield from place.hand("preview 1")
        clock.now += slow_step_s
        place.step(10)
        yield from place.hand("preview 2")


def test_a_run_parked_at_a_yield_and_never_resumed_loses_its_place_but_a_computing_one_never_does():
    """Gradio resumes a generator as soon as its output is sent. A running handler left at a `yield` (its server
    closed under it) is given up after ABANDONED_S; one that computes for longer (a slow step) keeps its place."""
    clock = Clock()
    queue = RunQueue(clock=clock)
    slow = running_handler(queue, clock, slow_step_s=10 * ABANDONED_S)  # a very slow step: computing, not parked
    assert next(slow) == "preview 1"
    with Place(WORK, 5.0, queue) as place:
        waiting = place.waiting()
        assert next(waiting).startswith("**waiting**: 2nd")
        assert next(slow) == "preview 2"  # resumed at once after a long computation: still its place
        assert next(waiting).startswith("**waiting**: 2nd")
        clock.now += ABANDONED_S + 1  # parked at "preview 2" and never resumed
        assert next(waiting, None) is None and place.admitted
    assert len(queue) == 0
    slow.close()  # the lost handler's own exit: a no-op for the queue
    assert len(queue) == 0


def test_a_place_given_up_while_its_owner_was_away_rejoins_at_the_end():
    clock = Clock()
    queue = RunQueue(clock=clock)
    running = queue.join(WORK, fallback_s=5.0)
    queue.step(running, 0)
    away = Place(WORK, 5.0, queue).__enter__()
    with Place(WORK, 5.0, queue) as other:
        other_waiting = other.waiting()
        next(other_waiting)
        clock.now += ABANDONED_S + 1
        next(other_waiting)  # gives up `away`'s place
        assert not queue.holds(away.job)
        assert next(away.waiting()).startswith("**waiting**: 3rd in line")  # back, behind `other`
        queue.leave(running)
    away.done()
    assert len(queue) == 0


def test_a_run_whose_client_vanished_mid_run_does_not_stall_the_next_user(tiny_model_dir, one_torch_thread,
                                                                          monkeypatch):
    """What hung CI for 90 minutes: a browser test closed its page just after pressing Stop, then the module's app
    closed; the run's handler was left parked at a `yield`, never resumed nor closed (Gradio closes a lost client's
    handler on its next pass, which a closed server never makes), and held the process's one run slot, so every
    later run waited for ever. The real text handler is dropped here mid-run the same way (kept referenced, never
    closed); the next user's run goes through once the parked place is given up."""
    from types import SimpleNamespace

    from vdemo.ui import handlers as h
    from vdemo.ui import queue as queue_module

    monkeypatch.setattr(queue_module, "ABANDONED_S", 2.0)
    settings = dict(backend="tiny", attention_mode="full", sampler="DDIM", guidance=3.0, frames=4, fps=8, seed=0,
                    random_seed=False)
    lost = h.text_to_video("a red circle moves right", True, **settings, steps=50,
                           request=SimpleNamespace(session_hash="lost"))
    while not str(next(lost)[0]).startswith("**step"):  # running, parked at a preview
        pass
    assert len(queue_module.QUEUE) == 1
    started = time.monotonic()
    outputs = list(h.text_to_video("a blue square moves left", True, **settings, steps=2,
                                   request=SimpleNamespace(session_hash="next")))
    assert str(outputs[-1][0]).startswith("**done**") and any("waiting" in str(o[0]) for o in outputs)
    assert 2.0 <= time.monotonic() - started < 30
    assert len(queue_module.QUEUE) == 0
    lost.close()  # the lost handler's own exit later: nothing left to free
    assert len(queue_module.QUEUE) == 0


def test_a_run_resumed_after_losing_its_place_ends_with_a_clear_line_instead_of_running_beside_another():
    from vdemo.errors import UserError

    clock = Clock()
    queue = RunQueue(clock=clock)
    stalled = running_handler(queue, clock, slow_step_s=0.0)
    assert next(stalled) == "preview 1"
    clock.now += ABANDONED_S + 1
    with Place(WORK, 5.0, queue) as other:
        assert next(other.waiting(), None) is None and other.admitted  # the stalled run's place was given up
        with pytest.raises(UserError, match="lost its place in the queue"):
            next(stalled)
        assert queue.holds(other.job) and len(queue) == 1
    assert len(queue) == 0


def test_the_app_benches_drive_the_backend_they_are_given_at_its_own_guidance():
    """`python -m vdemo.bench queue|soak --backend`: the Text tab's API inputs name that backend and its guidance."""
    from vdemo.bench import build_parser
    from vdemo.bench_app import text_args

    assert text_args(10, 16, 3, "tiny-v2")[2:] == ["tiny-v2", "full", "DDIM", 10, 2.0, 16, 8, 3, False]
    assert text_args(20, 16, 3, "tiny")[2:7] == ["tiny", "full", "DDIM", 20, 3.0]
    parser = build_parser()
    assert parser.parse_args(["queue"]).backend == "tiny-v2"  # the default model
    assert parser.parse_args(["soak", "--backend", "tiny"]).backend == "tiny"
    with pytest.raises(SystemExit):
        parser.parse_args(["queue", "--backend", "svd"])  # built-in models only: the bench starts app.py on the CPU
