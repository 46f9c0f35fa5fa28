"""A profiling run's jobs handed to the workers a chunk at a time, so removing an expert stops
its run: between portions the run asks which of its experts are gone, and their remaining
jobs are dropped (the worker moves on to the rest, or to other batches).

Each worker's jobs are cut in the order its planner would run them (resident models first, one
base model after another), so each base model is still loaded once for the run; a portion that
ends one base model and starts the next carries both, so the next one's load may start beside
the last generation (`scheduling.executor`). Replies are handed on as they come, as
`Fleet.execute` does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence

from experts.traits import traits
from experts.types import Generation
from orchestrator.scheduling.claims import Claim
from orchestrator.scheduling.executor import CHUNK_JOBS
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job, plan_stages
from orchestrator.scheduling.worker import claims

PORTION_CHUNKS = 1  # chunks a worker is given at a time: what still runs once its expert is removed

Gone = Callable[[Collection[int]], Collection[int]]  # of these expert ids, those no longer to profile
Progress = Callable[[int, int], None]

log = logging.getLogger(__name__)


def owner(job_id: str) -> int:
    """The expert a profiling job is for: its id starts the job's (`ProfilingService._job`)."""
    return int(job_id.split(":", 1)[0])


def portions(jobs: Sequence[Job], resident: Collection[str] = ()) -> list[list[Job]]:
    """The jobs in planner order, in runs of PORTION_CHUNKS chunks' jobs (a lookup backend's
    chunk is its `lookup_chunk` jobs), cut across base models as they come."""
    out: list[list[Job]] = []
    part: list[Job] = []
    chunks = 0.0
    for job in (j for stage in plan_stages(jobs, resident) for j in stage.jobs):
        part.append(job)
        chunks += 1 / (traits(job.base).lookup_chunk or CHUNK_JOBS)
        if chunks >= PORTION_CHUNKS - 1e-9:
            out.append(part)
            part, chunks = [], 0.0
    return [*out, part] if part else out


class PortionedRun:
    """One run: `run` returns every reply by job id and the experts whose jobs it dropped."""

    def __init__(self, fleet: Fleet, jobs: Mapping[str, Sequence[Job]], gone: Gone,
                 progress: Progress | None = None, done: Callable[[str], None] | None = None):
        self.fleet, self.gone, self.progress, self.done = fleet, gone, progress, done
        self.todo = {w: deque(portions(js, self._resident(w))) for w, js in jobs.items() if js}
        self.where = {j.job_id: w for w, js in jobs.items() for j in js}
        self.left = dict.fromkeys(self.todo, 0)  # replies each worker's portion still owes
        self.out: dict[str, Generation] = {}
        self.dropped: set[int] = set()
        self.total = sum(len(js) for js in jobs.values())
        # jobs not handed out yet, per expert: asked of the store before each portion (rescanning
        # every job left took 3.5 s over a 22-model replay pool's 86 portions)
        self.waiting = Counter(owner(j.job_id) for js in jobs.values() for j in js)
        self._cond = threading.Condition()

    def run(self) -> tuple[dict[str, Generation], set[int]]:
        dispatch = self.fleet.dispatch(self._reply)
        with contextlib.ExitStack() as held:
            marks = {w: held.enter_context(self._claimed(w)) for w in self.todo}
            try:
                while free := self._free():
                    self._drop(self._gone())
                    for worker in free:
                        if portion := self._next(worker):
                            marks[worker].stage(portion[0].base.key)
                            dispatch.submit(worker, portion)
            finally:
                dispatch.finish()
                dispatch.wait()
        return self.out, self.dropped

    def _claimed(self, worker: str) -> contextlib.AbstractContextManager[Claim]:
        """The run's models on `worker`, claimed for the run as one batch's are for its own
        (`scheduling.worker.Claims`): each portion claims only its own, and between two a query
        batch's load evicted the model the next portion needed (loaded again, chunk after chunk
        on a device too small for both), which the run as one batch had spared."""
        keys = list(dict.fromkeys(j.base.key for p in self.todo[worker] for j in p))
        return claims(self.fleet[worker]).claim(keys)

    def _free(self) -> list[str]:
        """Wait until a worker with portions left has answered its last; those workers (none:
        the run is over, every portion answered or dropped)."""
        def free() -> list[str]:
            return [w for w, q in self.todo.items() if q and not self.left[w]]

        with self._cond:
            self._cond.wait_for(lambda: free() or not any(self.left.values()))
            return free()

    def _gone(self) -> Collection[int]:
        """The experts with jobs left that are no longer to be profiled; none when the store cannot
        say (a locked database): the run goes on, as it did before it asked."""
        with self._cond:
            left = {e for e, n in self.waiting.items() if n > 0}
        try:
            return self.gone(left) if left else ()
        except Exception:
            log.warning("could not read which experts were removed; profiling goes on", exc_info=True)
            return ()

    def _drop(self, gone: Collection[int]) -> None:
        if not gone:
            return
        log.info("profiling stops for experts %s: removed", sorted(gone))
        with self._cond:
            self.dropped.update(gone)
            for w, q in self.todo.items():
                self.todo[w] = deque(kept for p in q if (kept := [j for j in p if owner(j.job_id) not in gone]))
            for expert in gone:
                self.waiting.pop(expert, None)
            self.total = len(self.out) + sum(self.left.values()) + sum(len(p) for q in self.todo.values() for p in q)
            if self.progress:  # the bar's total less the jobs dropped (its end written at done == total)
                with contextlib.suppress(Exception):  # a report lost, not the run (as in `_reply`)
                    self.progress(len(self.out), self.total)

    def _next(self, worker: str) -> list[Job]:
        with self._cond:
            if not self.todo[worker]:
                return []
            portion = self.todo[worker].popleft()
            self.left[worker] = len(portion)
            self.waiting.subtract(owner(j.job_id) for j in portion)
            return portion

    def _reply(self, job_id: str, gen: Generation) -> None:
        with self._cond:
            self.out[job_id] = gen
            self.left[self.where[job_id]] -= 1
            try:  # under the lock: progress is written in order, and its end once
                if self.done:
                    self.done(job_id)
                if self.progress:
                    self.progress(len(self.out), self.total)
            finally:  # a report that raised (a locked store) left the run waiting for good
                self._cond.notify_all()

    def _resident(self, worker: str) -> set[str]:
        try:
            return self.fleet[worker].resident()
        except Exception:  # ordering is a hint: each stage's own load fails its jobs alone
            return set()
