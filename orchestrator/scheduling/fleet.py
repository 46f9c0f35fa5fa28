"""The deployment's device workers, run at once: a batch's jobs go to their own worker.

Each worker takes the jobs queued for it, runs them by the planner's rules for one device
(resident models first, its `keep_last` model last, each base loaded at most once per take),
hands each reply on as soon as its chunk is done, and takes what was queued meanwhile. The
workers do this on threads of their own, so devices work in parallel: a batch takes as long
as its busiest device (MoE^2's max over devices, a sum within one). A caller may queue more
jobs while the batch runs (a fallback for a failed expert, an aggregation whose answers are
in) until it says the batch is over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from experts.streaming import whole
from experts.traits import traits
from experts.types import BaseModelSpec, Generation, storable
from orchestrator.scheduling.executor import ELSEWHERE_THREADS, Executor, Progress, execute
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker

log = logging.getLogger(__name__)
T = TypeVar("T")

OnReply = Callable[[str, Generation], None]
Wanted = Callable[[str, BaseModelSpec], bool]  # whether a model (on a worker) is still needed
OnPiece = Callable[[str], None]  # a streamed job's text, piece by piece as it is generated; must not raise


class Fleet:
    def __init__(self, workers: Mapping[str, DeviceWorker], executor: Executor = execute):
        if not workers:
            raise ValueError("a fleet needs at least one worker")
        self.workers, self.executor = dict(workers), executor
        self.default = next(iter(self.workers))
        # work on models served elsewhere (`Dispatch._elsewhere`), every batch's: batches on other
        # workers run at once, and each call is one a worker actor answers on one of its threads
        # Never shut down: a batch outliving the window's bounded close still sends its calls here.
        self.elsewhere = ThreadPoolExecutor(ELSEWHERE_THREADS, thread_name_prefix="elsewhere")
        self._shut = threading.Event()  # `shutdown` was called: nothing more is loaded at start

    def __getitem__(self, name: str) -> DeviceWorker:
        return self.workers[name]

    def resident(self) -> dict[str, set[str]]:
        return {name: w.resident() for name, w in self.workers.items()}

    def each(self, read: Callable[[DeviceWorker], T]) -> tuple[dict[str, T], dict[str, str]]:
        """`read` of every worker that answers, and why each other one did not: a status page
        shows the workers it can reach and names the rest, where one lost worker failed it."""
        answers: dict[str, T] = {}
        unavailable: dict[str, str] = {}
        for name, worker in self.workers.items():
            try:
                answers[name] = read(worker)
            except Exception as exc:  # a lost actor, an absent node, a timeout: this worker alone
                log.warning("worker %s did not answer a status read: %s", name, exc)
                unavailable[name] = f"{type(exc).__name__}: {exc}"
        return answers, unavailable

    def dispatch(self, on_reply: OnReply, keep_last: Mapping[str, str] | None = None) -> Dispatch:
        return Dispatch(self, on_reply, dict(keep_last or {}))

    def execute(self, jobs: Mapping[str, Sequence[Job]], progress: Progress | None = None) -> dict[str, Generation]:
        """Every worker's jobs at once; every reply (or failure) by job id. `progress` hears the
        count of replies so far (one at a time)."""
        out: dict[str, Generation] = {}
        total, lock = sum(len(j) for j in jobs.values()), threading.Lock()

        def reply(job_id: str, gen: Generation) -> None:
            with lock:
                out[job_id] = gen
                if progress:
                    progress(len(out), total)

        run = self.dispatch(reply)
        for worker, batch in jobs.items():
            run.submit(worker, batch)
        run.finish()
        run.wait()
        return out

    def connect_elsewhere(self, models: Collection[tuple[str, BaseModelSpec]], wanted: Wanted = lambda w, b: True
                          ) -> None:
        """Load these models served elsewhere (each on a worker: their clients), one after another
        on a thread of their own: a load takes its worker's device lock, and the first chat to one
        after a start waited out a local generation for it. One not reachable now loads on first
        use; none loads once the fleet is shut down (it would stay loaded, its worker gone), and
        one no longer `wanted` (its expert removed meanwhile) is left, or let go once loaded."""
        def connect() -> None:
            for worker, base in models:
                if self._shut.is_set():
                    return
                try:
                    if wanted(worker, base):
                        self[worker].ensure_loaded(base)
                    if not wanted(worker, base):  # removed while it loaded: the removal found nothing to unload
                        self[worker].unload(base.key)
                except Exception as exc:  # its server is down: its first query finds out and says so
                    log.warning("model %s served elsewhere could not be reached at start: %s", base.key, exc)

        if models:
            threading.Thread(target=connect, name="connect-elsewhere", daemon=True).start()

    def shutdown(self) -> None:
        """Unload every worker's models; one that cannot be reached keeps the others' going."""
        self._shut.set()
        for name, w in self.workers.items():
            try:
                w.shutdown()
            except Exception:  # a lost or absent worker's models are gone with its actor anyway
                log.warning("worker %s could not be shut down", name, exc_info=True)


@dataclass
class _Queue:
    jobs: list[Job] = field(default_factory=list)
    streams: list[tuple[Job, OnPiece]] = field(default_factory=list)
    busy_s: float = 0.0  # takes finished
    started: float | None = None  # the take in progress began (perf_counter)
    thread: threading.Thread | None = None


class Dispatch:
    """One batch's run over the fleet (see the module doc)."""

    def __init__(self, fleet: Fleet, on_reply: OnReply, keep_last: dict[str, str]):
        self.fleet, self.on_reply, self.keep_last = fleet, on_reply, keep_last
        self._queues: dict[str, _Queue] = {}
        self._cond = threading.Condition()
        self._finished = False
        self._far_runs: list[Future[None]] = []  # work on models served elsewhere (`_elsewhere`)

    def submit(self, worker: str, jobs: Sequence[Job]) -> None:
        near: list[Job] = []
        far: dict[str, list[Job]] = {}
        for job in jobs:
            if traits(job.base).served_elsewhere:
                far.setdefault(job.base.key, []).append(job)
            else:
                near.append(job)
        for model in far.values():  # a run a model: the pool's threads bound the calls at once
            self._elsewhere(partial(self._run, worker, model, {}))
        if not near:
            return
        with self._cond:
            self._queue(worker).jobs.extend(near)
            self._cond.notify_all()

    def submit_stream(self, worker: str, job: Job, on_piece: OnPiece) -> None:
        """A job whose text is handed to `on_piece` as it is generated (a client is watching);
        its reply still comes to `on_reply`. The worker runs it before its next batch of jobs; those
        whose model cannot stream (`traits.streams`) run as one batch, each handed its reply whole."""
        if traits(job.base).served_elsewhere:
            self._elsewhere(partial(self._streamed, worker, job, on_piece))
            return
        with self._cond:
            self._queue(worker).streams.append((job, on_piece))
            self._cond.notify_all()

    def _elsewhere(self, work: Callable[[], None]) -> None:
        """Run work on models served elsewhere (`traits.served_elsewhere`) on the fleet's threads
        for it, never in a worker's take: a competitor on another server, run in the CPU worker's
        take, held the next query's aggregation there for its 2 s, past that query's budget, and
        two streamed chats on two servers ran in turn."""
        with self._cond:
            self._far_runs.append(self.fleet.elsewhere.submit(work))

    def _queue(self, worker: str) -> _Queue:
        queue = self._queues.setdefault(worker, _Queue())
        if queue.thread is None:
            queue.thread = threading.Thread(target=self._work, args=(worker, queue), daemon=True,
                                            name=f"device-{worker}")
            queue.thread.start()
        return queue

    def finish(self) -> None:
        """No more jobs will come: each worker stops once its queue is empty."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def wait(self) -> dict[str, float]:
        """Wait for every worker to stop; the seconds each spent working on this batch. A worker
        first sent jobs while the wait runs (an aggregation on a worker no expert used) is waited
        for too: its thread starts from a reply on a thread being joined, so each round looks
        again until a round finds no thread it has not joined."""
        joined: set[threading.Thread] = set()
        waited = 0  # the runs elsewhere waited for (`_elsewhere`): their replies may send more too
        while True:
            left, far = self._unjoined(joined), self._far_since(waited)
            if not left and not far:
                break
            for thread in left:
                thread.join()
                joined.add(thread)
            futures.wait(far)
            waited += len(far)
        with self._cond:
            return {name: q.busy_s for name, q in self._queues.items()}

    def _far_since(self, waited: int) -> list[Future[None]]:
        with self._cond:
            return self._far_runs[waited:]

    def _unjoined(self, joined: set[threading.Thread]) -> list[threading.Thread]:
        with self._cond:  # the queues a device thread adds meanwhile
            return [q.thread for q in self._queues.values() if q.thread is not None and q.thread not in joined]

    def busy(self) -> dict[str, float]:
        """The seconds each worker has spent on this batch so far, its take in progress included:
        a query finished early is stored with its workers' time up to then, not the batch's."""
        now = time.perf_counter()
        with self._cond:
            return {name: q.busy_s + (now - q.started if q.started is not None else 0.0)
                    for name, q in self._queues.items()}

    def _take(self, queue: _Queue) -> tuple[list[tuple[Job, OnPiece]], list[Job]]:
        with self._cond:
            while not queue.jobs and not queue.streams and not self._finished:
                self._cond.wait()
            streams, jobs = queue.streams, queue.jobs
            queue.streams, queue.jobs = [], []
            queue.started = time.perf_counter() if streams or jobs else None
            if not streams and not jobs:  # the thread ends: a job sent later (a reply from elsewhere's) starts another
                queue.thread = None
            return streams, jobs

    def _took(self, queue: _Queue) -> None:
        """Count the take that just ended into the worker's busy seconds."""
        with self._cond:
            assert queue.started is not None
            queue.busy_s += time.perf_counter() - queue.started
            queue.started = None

    def _work(self, name: str, queue: _Queue) -> None:
        while True:
            streams, jobs = self._take(queue)
            if not streams and not jobs:
                return
            at_once = {j.job_id: on_piece for j, on_piece in streams if not traits(j.base).streams}
            for job, on_piece in streams:  # first: someone is watching these
                if job.job_id not in at_once:
                    self._streamed(name, job, on_piece)
            if at_once:  # first too, batched among themselves
                self._run(name, [j for j, _ in streams if j.job_id in at_once], at_once)
            if jobs:
                self._run(name, jobs, {})
            self._took(queue)

    def _run(self, name: str, jobs: list[Job], at_once: dict[str, OnPiece]) -> None:
        """The jobs batched; `at_once`: streamed jobs whose model cannot stream, each handed its
        reply in one piece as it comes (six streamed chats to a vLLM engine ran as six generate
        calls in turn, where a batch is one)."""
        pending = {j.job_id: j for j in jobs}
        try:
            self.fleet.executor(jobs, self.fleet[name], keep_last=self.keep_last.get(name),
                                emit=partial(self._hand_on, pending=pending, pieces=at_once))
        except Exception as exc:  # a bug of ours: what was not handed on fails, nothing hangs
            self._hand_on({i: Generation.failed(j.request.request_id, f"{type(exc).__name__}: {exc}")
                           for i, j in pending.items()}, pending)

    def _streamed(self, name: str, job: Job, on_piece: OnPiece) -> None:
        self._hand_on({job.job_id: self._stream(name, job, on_piece)}, {})

    def _stream(self, name: str, job: Job, on_piece: OnPiece) -> Generation:
        """Run one job as a stream, handing its pieces on; its reply, or its failure."""
        keep = self.keep_last.get(name)
        reply: Generation | None = None
        try:
            for event in self.fleet[name].stream(job.base, job.request, {keep} if keep else ()):
                if isinstance(event, Generation):
                    reply = event
                else:
                    on_piece(storable(event))  # as the reply's text is stored, so the two join alike
        except Exception as exc:  # the failure is this job's alone, as in a batch
            return Generation.failed(job.request.request_id, f"{type(exc).__name__}: {exc}")
        return reply or Generation.failed(job.request.request_id, "the stream ended without a reply")

    def _hand_on(self, done: Mapping[str, Generation], pending: dict[str, Job],
                 pieces: Mapping[str, OnPiece] | None = None) -> None:
        for job_id, gen in done.items():
            pending.pop(job_id, None)
            if pieces and job_id in pieces:
                _pieces_of(gen, pieces[job_id])
            try:
                self.on_reply(job_id, gen)
            except Exception:  # the handler's own failure: the other replies are still handed on
                log.exception("handing on the reply to job %s failed", job_id)


def _pieces_of(gen: Generation, on_piece: OnPiece) -> None:
    """A whole reply handed to its stream, as a backend that cannot stream is streamed."""
    for event in whole(gen):
        if not isinstance(event, Generation):
            on_piece(storable(event))
