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

A handler holds its place as a `Place` (a context manager): the place is given up when the block ends, whatever ends
it (finished, failed, stopped, or the generator closed by Gradio's cancel or a closed tab), and before the final result
is handed over. A place is also given up when its owner is plainly gone, so one lost handler cannot stall the app:
a waiting place nobody polls for `ABANDONED_S` (a waiting handler polls every second), a turn not taken up within it,
or a running handler left parked at a `yield` that long (Gradio resumes a generator as soon as its output is sent; a
generator that is never resumed nor closed, e.g. when the server was closed under it, used to hold the slot for ever
and hang every later run in the process). A handler that is computing is never evicted. One `RunQueue` per process
(`QUEUE`); on ZeroGPU the runs it admits still go through `spaces.GPU`, so this is the Space's own queue in front of
ZeroGPU's.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vdemo.errors import UserError

POLL_S = 1.0  # a waiting user's status is refreshed this often
ABANDONED_S = 30.0  # a place whose owner shows no sign of life this long (see the module's doc) is given up
LOG = logging.getLogger("vdemo.queue")
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
    seen_at: float = 0.0  # the owner's last poll while waiting
    claimed: bool = False  # the owner saw its turn come
    parked_at: float | None = None  # the running owner is suspended at a yield since then

    def abandoned(self, now: float) -> bool:
        """Its owner is plainly gone: not polling while waiting, not taking its turn, or never resumed at a yield."""
        if self.admitted_at is None:
            return now - self.seen_at > ABANDONED_S
        if not self.claimed:
            return now - self.admitted_at > ABANDONED_S
        return self.parked_at is not None and now - self.parked_at > ABANDONED_S

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
        job = Job(work, fallback_s, next(self._numbers), seen_at=self.clock())
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
                now = self.clock()
                job.seen_at = now
                if job not in self._jobs:  # given up while its owner was away, but the owner is back: end of the line
                    job.admitted_at, job.claimed = None, False
                    self._jobs.append(job)
                    self._admit()
                    continue
                if job.admitted_at is not None:
                    job.claimed = True
                    return
                self._evict_abandoned(now)
                if job.admitted_at is not None:
                    continue
            if stopped is not None and stopped():
                return
            yield self.position(job)
            with self._cond:
                if job.admitted_at is None:
                    self._cond.wait(poll_s)

    def _evict_abandoned(self, now: float) -> None:  # holds the lock
        gone = [j for j in self._jobs if j.abandoned(now)]
        for j in gone:
            LOG.warning("gave up the place of run #%d (%s): its handler is gone (%s)", j.number, j.work.backend,
                        "stopped polling" if j.admitted_at is None else
                        "never took its turn" if not j.claimed else "never resumed after a yield")
            self._jobs.remove(j)
            j.admitted_at = None  # an evicted job is not running, whatever its owner does next
        if gone:
            self._admit()

    def park(self, job: Job, parked: bool) -> None:
        """The running owner yields a value (parked) or is resumed."""
        with self._cond:
            job.parked_at = self.clock() if parked else None

    def step(self, job: Job, steps_done: int, total: int | None = None) -> None:
        """The running job completed scheduler step `steps_done` (of `total`, as its loop counts them): its step time
        feeds its own remaining time."""
        now = self.clock()
        with self._cond:
            job.claimed = True  # a job that steps is plainly owned
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

    def holds(self, job: Job) -> bool:
        """Whether `job` still has its place (it has not left nor been given up)."""
        with self._cond:
            return job in self._jobs

    def clear(self) -> list[Job]:
        """Drop every place and return them (for tests: a leaked place must not stall later ones)."""
        with self._cond:
            jobs, self._jobs = self._jobs, []
            self._cond.notify_all()
        return jobs

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


class Place:
    """A handler's place in the queue, held for a `with` block:

        with Place(work, fallback_s, stopped=lambda: control.stopped) as place:
            for text in place.waiting():
                yield text, ...                  # "waiting: 2nd in line, about 12 s …"
            if not place.admitted:               # Stop pressed while in line
                ...
            for event in run:
                place.step(i, total)
                yield from place.hand((...))     # a preview; parked at the yield
            place.done(measure=True)             # free the slot before handing over the result
            yield final

    The place is given up when the block ends, however it ends."""

    def __init__(self, work: Work, fallback_s: float, queue: RunQueue | None = None,
                 stopped: Callable[[], bool] | None = None) -> None:
        self.queue = queue if queue is not None else QUEUE  # an empty RunQueue is falsy
        self.work, self.fallback_s, self.stopped = work, fallback_s, stopped
        self.job: Job | None = None
        self.steps = 0
        self.finished = False

    def __enter__(self) -> Place:
        self.job = self.queue.join(self.work, self.fallback_s)
        return self

    def __exit__(self, *exc) -> None:
        self.done()

    def waiting(self) -> Iterator[str]:
        """The waiting user's status, about every POLL_S, until the turn comes or `stopped()` turns true."""
        for ahead, wait_s in self.queue.wait(self.job, stopped=self.stopped):
            yield waiting_text(ahead, wait_s, self.job)

    @property
    def admitted(self) -> bool:
        return self.job is not None and self.job.claimed and self.queue.holds(self.job)

    def step(self, total: int | None = None) -> None:
        """One more scheduler step done (of `total`, as the running loop counts them)."""
        self.steps += 1
        self.queue.step(self.job, self.steps, total)

    def hand(self, value):
        """Yield `value` to the client, parked meanwhile (see the module's doc): `yield from place.hand(...)`."""
        self.queue.park(self.job, True)
        try:
            yield value
        finally:
            self.queue.park(self.job, False)
        if not self.finished and not self.queue.holds(self.job):
            # resumed after its place was given up (the server stalled for over ABANDONED_S): another run may hold
            # the slot now, so this one ends with a clear line rather than run beside it
            raise UserError("this run lost its place in the queue (the server did not resume it for "
                            f"{ABANDONED_S:.0f} s); please generate again")

    def done(self, measure: bool = False) -> None:
        """Give up the place (again: a no-op); with `measure`, its step times feed THROUGHPUT (`RunQueue.leave`)."""
        if self.job is not None:
            self.finished = True
            self.queue.leave(self.job, measure)
