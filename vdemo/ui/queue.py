"""The generation queue: one run at a time, and every waiting user told their place and an honest wait.

Gradio's own queue estimates a wait from its average event time, which knows nothing of steps, frames or modes (8
users at once: it told the last one 33 s; the wait was 139 s). So Gradio lets every generation event into its
handler (`concurrency_limit` = the queue's size) and the handler waits its turn here, in arrival order, yielding

    waiting: 3rd in line, about 24 s (2 runs ahead; measured 0.31 s per step at these settings)

every second until its turn. The wait is

    remaining time of the running job + Σ predicted time of each job ahead

- the running job's remaining time: its own measured seconds per step × steps left + the backend's measured
  after-the-last-step time (decode, export), once it has done a step; before that its prediction less its elapsed;
- a job's prediction: `THROUGHPUT.predict` — per backend, the median over recent runs of measured seconds per *work
  unit* (one model call on one frame of one pixel, times the mode's cost, `vdemo.cost.mode_factor`: the GPU-cost model's
  scaling, with this machine's measured rate in place of its GPU estimate) and of the fixed per-run time (start-up,
  decode, export). Before the first measurement it falls back to the backend's `GpuCost` estimate.

A job that leaves (cancelled, tab closed: the generator is closed) frees its place at once; the slot is released in a
`finally`, whatever happens. One `RunQueue` per process (`QUEUE`); on ZeroGPU the runs it admits still go through
`spaces.GPU`, so this is the Space's own queue in front of ZeroGPU's.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

POLL_S = 1.0  # a waiting user's status is refreshed this often
RECENT_RUNS = 5  # the throughput model is the median of this many latest runs per backend


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Work:
    """What one job asks for, in the units the throughput model counts: `runs` runs (a compare's variants, a long
    video's windows) of `steps` scheduler steps in all, each step `units_per_step` work units on average."""

    backend: str
    steps: int  # scheduler steps of the whole job (progress is counted in these)
    units_per_step: float  # model calls per step × frames × pixels × mode factor (mean over the job's steps)
    runs: int = 1

    @staticmethod
    def units(backend, request) -> float:
        """Work units of one scheduler step of `request` on `backend` (an instance or class with a gpu_cost)."""
        from vdemo.cost import mode_factor, model_calls

        calls = model_calls(request.sampler, request.num_steps) / max(1, request.num_steps)
        factor = mode_factor(backend, request.attention_mode, request.num_frames, request.height, request.width)
        return calls * request.num_frames * request.height * request.width * factor

    @classmethod
    def of(cls, backend_name: str, backend, request, runs: int = 1) -> Work:
        """`runs` runs of `request` (a long video's windows)."""
        return cls(backend_name, request.num_steps * runs, cls.units(backend, request), runs)

    @classmethod
    def of_many(cls, backend_name: str, backend, requests: list) -> Work:
        """One run of each request (a compare: each variant in its own mode and sampler)."""
        steps = sum(r.num_steps for r in requests)
        units = sum(r.num_steps * cls.units(backend, r) for r in requests) / max(1, steps)
        return cls(backend_name, steps, units, len(requests))


class Throughput:
    """Per backend: measured seconds per work unit and per-run fixed seconds, each the median of the last
    `RECENT_RUNS` finished runs (a median, so one cold first run, or one slowed by a neighbour, does not skew it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, deque] = {}

    def record(self, work: Work, step_s: float, fixed_s: float, tail_s: float) -> None:
        """One finished run: its mean seconds per step, its time outside the steps, and after the last one."""
        if work.units_per_step <= 0 or step_s <= 0:
            return
        with self._lock:
            runs = self._runs.setdefault(work.backend, deque(maxlen=RECENT_RUNS))
            runs.append((step_s / work.units_per_step, max(0.0, fixed_s), max(0.0, tail_s)))

    def _median(self, backend: str, index: int) -> float | None:
        with self._lock:
            runs = list(self._runs.get(backend, ()))
        return statistics.median(r[index] for r in runs) if runs else None

    def measured(self, backend: str) -> bool:
        return self._median(backend, 0) is not None

    def step_s(self, work: Work) -> float | None:
        rate = self._median(work.backend, 0)
        return None if rate is None else rate * work.units_per_step

    def tail_s(self, backend: str) -> float:
        return self._median(backend, 2) or 0.0

    def predict(self, work: Work, fallback_s: float | None = None) -> float:
        """Seconds one run of `work` takes here: measured rates, else `fallback_s` (the GPU-cost estimate)."""
        step = self.step_s(work)
        if step is None:
            return float(fallback_s or 0.0)
        return (self._median(work.backend, 1) or 0.0) * work.runs + step * work.steps

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()


THROUGHPUT = Throughput()


@dataclass(eq=False)
class Job:
    """One run's place in the queue, and what it has measured about itself while running."""

    work: Work
    fallback_s: float = 0.0  # the GPU-cost estimate, used until the backend has been measured here
    number: int = 0
    admitted_at: float | None = None
    planned_steps: int = 0  # the job's steps as the running loop reports them (a causal model: per chunk)
    steps_done: int = 0
    last_step_at: float | None = None
    step_times: list[float] = field(default_factory=list)

    def predicted_s(self) -> float:
        return THROUGHPUT.predict(self.work, self.fallback_s)

    def remaining_s(self, now: float) -> float:
        """Seconds until this (running) job ends: measured steps left × its own step time + the backend's tail."""
        if self.admitted_at is None:
            return self.predicted_s()
        if self.step_times:
            mean = sum(self.step_times) / len(self.step_times)
            steps = max(0, (self.planned_steps or self.work.steps) - self.steps_done) * mean
            since = now - (self.last_step_at or now)  # the steps and then the tail count down
            return max(0.0, steps - since) + max(0.0, THROUGHPUT.tail_s(self.work.backend) - max(0.0, since - steps))
        return max(0.0, self.predicted_s() - (now - self.admitted_at))


class RunQueue:
    """Arrival-order admission to `slots` concurrent runs, with waits estimated from measured step times."""

    def __init__(self, slots: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = slots
        self.clock = clock
        self._cond = threading.Condition()
        self._jobs: list[Job] = []  # running first (admitted), then waiting, each in arrival order
        self._numbers = itertools.count(1)

    def join(self, work: Work, fallback_s: float = 0.0) -> Job:
        job = Job(work, fallback_s, next(self._numbers))
        with self._cond:
            self._jobs.append(job)
            self._admit()
        return job

    def _admit(self) -> None:  # holds the lock
        running = sum(j.admitted_at is not None for j in self._jobs)
        for job in self._jobs:
            if running >= self.slots:
                break
            if job.admitted_at is None:
                job.admitted_at = self.clock()
                running += 1
        self._cond.notify_all()

    def position(self, job: Job) -> tuple[int, float]:
        """(runs ahead of `job`, estimated seconds until it starts); (0, 0.0) once it runs."""
        with self._cond:
            if job.admitted_at is not None or job not in self._jobs:
                return 0, 0.0
            now = self.clock()
            ahead = self._jobs[: self._jobs.index(job)]
            running = [j for j in ahead if j.admitted_at is not None]
            waiting = [j for j in ahead if j.admitted_at is None]
            ends = sorted(j.remaining_s(now) for j in running)
            # with one slot: the running job's end, then each job ahead back to back (several slots: earliest free)
            free = ends + [0.0] * (self.slots - len(ends))
            for j in waiting:
                free.sort()
                free[0] += j.predicted_s()
            free.sort()
            return len(ahead), free[0]

    def wait(self, job: Job, poll_s: float = POLL_S,
             stopped: Callable[[], bool] | None = None) -> Iterator[tuple[int, float]]:
        """Yield (runs ahead, estimated wait s) about every poll_s until `job` may run, or until `stopped()` (the
        user pressed Stop while waiting); then return."""
        while True:
            with self._cond:
                if job.admitted_at is not None:
                    return
            if stopped is not None and stopped():
                return
            yield self.position(job)
            with self._cond:
                if job.admitted_at is None:
                    self._cond.wait(poll_s)

    def step(self, job: Job, steps_done: int, total: int | None = None) -> None:
        """The running job completed scheduler step `steps_done` (of `total`, as its loop counts them): its step time
        feeds its own remaining time."""
        now = self.clock()
        with self._cond:
            if total:
                job.planned_steps = total
            if steps_done <= job.steps_done:
                return
            if job.last_step_at is not None:
                job.step_times.append((now - job.last_step_at) / (steps_done - job.steps_done))
            job.last_step_at, job.steps_done = now, steps_done

    def leave(self, job: Job, measure: bool = False) -> None:
        """Free the job's place (finished, failed, stopped or cancelled). With `measure` (a single run that finished
        in the mode and sampler it was costed at), its step times feed THROUGHPUT; a job of several runs does not:
        its runs differ (a compare's modes), and what it measured is not one run."""
        now = self.clock()
        with self._cond:
            if job not in self._jobs:
                return
            self._jobs.remove(job)
            self._admit()
        if measure and job.work.runs == 1 and job.admitted_at is not None and job.step_times:
            total = now - job.admitted_at
            step = sum(job.step_times) / len(job.step_times)
            THROUGHPUT.record(job.work, step, total - step * job.steps_done, now - (job.last_step_at or now))

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)


QUEUE = RunQueue()


def waiting_text(ahead: int, wait_s: float, job: Job) -> str:
    """The status a waiting user reads."""
    step = THROUGHPUT.step_s(job.work)
    basis = (f"measured {step:.2f} s per step at these settings" if step is not None
             else "estimated; this app has not timed this backend yet")
    runs = "1 run" if ahead == 1 else f"{ahead} runs"
    about = f"{wait_s:.1f}" if wait_s < 10 else f"{wait_s:.0f}"
    return f"**waiting**: {ordinal(ahead + 1)} in line, about {about} s ({runs} ahead; {basis})"


def queued(work: Work, fallback_s: float, queue: RunQueue | None = None,
           stopped: Callable[[], bool] | None = None) -> Iterator:
    """For a handler: yields (status text, None) while waiting, then (None, job) once admitted — or (None, None) when
    `stopped()` turned true while it waited (it has left the queue). The caller must `queue.leave(job)` when done."""
    queue = queue or QUEUE
    job = queue.join(work, fallback_s)
    admitted = False
    try:
        for ahead, wait_s in queue.wait(job, stopped=stopped):
            yield waiting_text(ahead, wait_s, job), None
        admitted = job.admitted_at is not None
    finally:
        if not admitted:  # stopped, cancelled (the generator closed) or failed while waiting
            queue.leave(job)
    yield None, job if admitted else None
