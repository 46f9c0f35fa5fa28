"""Runs a planned batch on a device worker, stage by stage, reporting progress."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Protocol

from experts.cost_model import approx_prompt_tokens
from experts.traits import traits
from experts.types import Generation
from orchestrator.scheduling.planner import Job, Stage, plan_stages
from orchestrator.scheduling.worker import DeviceWorker, claims

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
CHUNK_JOBS = 16  # requests per generate call of a backend that is not a lookup (`chunk`)
CHUNK_TOKENS = 4096  # predicted tokens per generate call: a long job runs alone, short ones 16 at a time
# stages served elsewhere run at once, all batches' together (`Fleet.elsewhere`; one `execute`'s own
# `_beside`): each is a call a worker actor answers on one of its threads
# (serving.worker_actor.MAX_CONCURRENCY, 16), which the batches' local stages need too
ELSEWHERE_THREADS = 8


Emit = Callable[[dict[str, Generation]], None]


class Executor(Protocol):
    def __call__(self, jobs: Sequence[Job], worker: DeviceWorker, keep_last: str | None = None,
                 progress: Progress | None = None, chunk: int = CHUNK_JOBS, emit: Emit | None = None
                 ) -> dict[str, Generation]: ...


def execute(jobs: Sequence[Job], worker: DeviceWorker, keep_last: str | None = None,
            progress: Progress | None = None, chunk: int = CHUNK_JOBS, emit: Emit | None = None
            ) -> dict[str, Generation]:
    """Generate every job; each base model is loaded at most once for the whole batch.

    Stages are cut into chunks so progress can be reported and finished replies handed on
    (`emit`) while the rest run; the model stays resident between chunks because every
    remaining stage's model (and `keep_last`) is protected, and claimed on the worker
    (worker.Claims), so another batch's load or a registration's spares it too. Once a
    stage's model is in, the next stage's starts loading beside its generation where the
    backend allows (DeviceWorker.prefetch).

    A failure stays with the jobs it hit: a model that will not load fails its stage's jobs, a
    generate call that raises (a lost worker, a crashed engine) fails that chunk's, each with
    the error as its reply's `error`, and the other stages still run.

    Within a stage the shortest jobs (predicted prompt + output tokens) go first and a chunk
    holds at most CHUNK_TOKENS of work, so a short query's generation waits for at most one long
    one on its device, not for a batch of them. A model that computes a call's requests one after
    another (`traits.sequential`: llama.cpp) gains nothing from a call of many, so its chunks are
    of one: each reply is handed on as soon as it is done.

    A stage whose model is served elsewhere (an OpenAI-compatible server: `traits.served_elsewhere`)
    needs nothing of the device: it runs on a thread of its own beside the worker's stages (two
    such experts on one worker took the sum of their replies' times where the slower one's was due).

    Greedy jobs that repeat an earlier one (same model, messages and time limit, temperature 0: an
    expert drawn twice for a query, or one question asked twice in a window) run once and
    share its reply: at temperature 0 the seed changes nothing, so a second run would only
    repeat the first's tokens.
    """
    unique, copies = coalesce(jobs)
    stages = plan_stages(unique, _resident(worker), keep_last)
    run = _Run(worker, copies, len(jobs), chunk, emit, progress)
    local = [s for s in stages if not traits(s.base).served_elsewhere]
    elsewhere = [s for s in stages if s not in local]
    if not local:  # nothing of the device's: no claim (a claim's change waits for the device while a load waits)
        with _beside(run, elsewhere):
            pass  # beside nothing: waited for as the block ends
        return run.out
    # the claim: what other loads spare meanwhile (a model served elsewhere takes no room to spare)
    with claims(worker).claim([s.key for s in local], keep_last) as claim, _beside(run, elsewhere):
        for i, stage in enumerate(local):
            claim.stage(stage.key)
            protect = {s.key for s in local[i:]} | ({keep_last} if keep_last else set())
            run.stage(stage, partial(_load, worker, local, i, protect), protect)
    return run.out


class _Run:
    """One `execute` call's stages: each stage's chunks in turn, the replies gathered and handed
    on under one lock, as stages served elsewhere run on threads of their own (`_beside`)."""

    def __init__(self, worker: DeviceWorker, copies: dict[str, list[Job]], total: int, chunk: int,
                 emit: Emit | None, progress: Progress | None):
        self.worker, self.copies, self.total, self.chunk = worker, copies, total, chunk
        self.emit, self.progress = emit, progress
        self.out: dict[str, Generation] = {}
        self._lock = threading.Lock()

    def stage(self, stage: Stage, load: Callable[[], object], protect: Collection[str] = ()) -> None:
        """Load the stage's model (`load`: empty when it is in), then its jobs a chunk at a time."""
        failed = _guarded(stage.jobs, load)
        refused = dict(zip((j.job_id for j in stage.jobs), failed, strict=False))  # all, or none
        kind = traits(stage.base)
        size = kind.lookup_chunk or (1 if kind.sequential else self.chunk)
        for part in _chunks(stage.jobs, size, None if kind.lookup_chunk else CHUNK_TOKENS):
            gens = [refused[j.job_id] for j in part] if refused else _guarded(
                part, partial(self.worker.generate, stage.base, [j.request for j in part], protect))
            self._done(_with_copies(part, gens, self.copies))

    def _done(self, done: dict[str, Generation]) -> None:
        with self._lock:
            self.out.update(done)
            if self.emit:
                self.emit(done)
            if self.progress:
                self.progress(len(self.out), self.total)


@contextmanager
def _beside(run: _Run, stages: Sequence[Stage]) -> Iterator[None]:
    """Run `stages` (models served elsewhere) on threads of their own while the block runs the
    worker's own, and wait for them at its end: two experts on their own servers, run in turn,
    took the sum of their times where either's alone was due."""
    if not stages:
        yield
        return
    threads = min(len(stages), ELSEWHERE_THREADS)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{run.worker.name}-elsewhere") as pool:
        futures = [pool.submit(run.stage, s, partial(run.worker.ensure_loaded, s.base, {s.key})) for s in stages]
        yield
        for future in futures:
            future.result()


def job_tokens(job: Job) -> int:
    """A job's predicted work: its prompt (~4/3 tokens a word) and the most it may generate."""
    return approx_prompt_tokens(m.content for m in job.request.messages) + job.request.sampling.max_tokens


def _chunks(jobs: Sequence[Job], most: int, most_tokens: int | None) -> list[list[Job]]:
    """The jobs, shortest first, in runs of at most `most` jobs and `most_tokens` predicted tokens (one at least)."""
    out: list[list[Job]] = []
    part: list[Job] = []
    tokens = 0
    for size, job in sorted(((job_tokens(j), j) for j in jobs), key=lambda x: x[0]):  # shortest first
        if part and (len(part) >= most or (most_tokens is not None and tokens + size > most_tokens)):
            out.append(part)
            part, tokens = [], 0
        part.append(job)
        tokens += size
    return [*out, part] if part else out


def _with_copies(part: Sequence[Job], gens: Sequence[Generation], copies: dict[str, list[Job]]
                 ) -> dict[str, Generation]:
    """Each job's reply, and the same reply under each coalesced copy's own request id."""
    done = {}
    for job, gen in zip(part, gens, strict=True):
        done[job.job_id] = gen
        done.update((c.job_id, gen.model_copy(update={"request_id": c.request.request_id}))
                    for c in copies.get(job.job_id, []))
    return done


def _load(worker: DeviceWorker, stages: Sequence[Stage], i: int, protect: set[str]) -> None:
    """This stage's model in first, so the next one's load fits beside it (where it may load).
    Loaded here for the last stage too: a model that will not load fails its stage once, where
    each chunk's generate call would try (and wait for) the load again."""
    worker.ensure_loaded(stages[i].base, protect)
    if i + 1 < len(stages):
        _prefetch(worker, stages[i + 1], protect)


def _resident(worker: DeviceWorker) -> set[str]:
    """What the worker holds, to order the stages by; a worker that cannot say (its actor lost
    or not placed) plans as if empty: ordering is a hint, and each stage's own load then fails
    its jobs alone with the worker's error, where a raise here failed the whole batch."""
    try:
        return worker.resident()
    except Exception as exc:  # the worker's error names the cause; its traceback adds nothing
        log.warning("worker %s could not say what it holds (%s); planning as if empty", worker.name, exc)
        return set()


def _prefetch(worker: DeviceWorker, stage: Stage, protect: set[str]) -> None:
    """Start the next stage's load; one that cannot start is that stage's to fail, when its own
    load raises the same error, never the jobs of the stage running now."""
    try:
        worker.prefetch(stage.base, protect)
    except Exception:
        log.warning("prefetching %s failed; its stage will load it itself", stage.key, exc_info=True)


def _guarded(jobs: Sequence[Job], work: Callable[[], object]) -> list[Generation]:
    """`work`'s result; if it raises, an empty list becomes every job failed with its error."""
    try:
        result = work()
    except Exception as exc:  # the failure belongs to these jobs alone
        error = f"{type(exc).__name__}: {exc}"
        return [Generation.failed(j.request.request_id, error) for j in jobs]
    return list(result) if isinstance(result, list) else []


def coalesce(jobs: Sequence[Job]) -> tuple[list[Job], dict[str, list[Job]]]:
    """The jobs to run, and for each of them the later greedy jobs that are the same request."""
    first: dict[object, Job] = {}
    unique: list[Job] = []
    copies: dict[str, list[Job]] = {}
    for job in jobs:
        key = greedy_key(job)
        if key is not None and key in first:
            copies.setdefault(first[key].job_id, []).append(job)
            continue
        if key is not None:
            first[key] = job
        unique.append(job)
    return unique, copies


GreedyKey = tuple[str, tuple[tuple[str, str], ...], str, float | None]


def greedy_key(job: Job) -> GreedyKey | None:
    """What determines a greedy job's reply (model, messages, sampling but the seed, and its time
    limit: a shared run's timeout would fail a request that set none); None if it samples, where
    two runs rightly differ."""
    req = job.request
    if req.sampling.temperature > 0:
        return None
    sampling = repr(req.sampling.model_dump(exclude={"seed"}))  # fields in declaration order
    return job.base.key, tuple((m.role, m.content) for m in req.messages), sampling, req.timeout_s


def execute_naive(jobs: Sequence[Job], worker: DeviceWorker, keep_last: str | None = None,
                  progress: Progress | None = None, chunk: int = CHUNK_JOBS, emit: Emit | None = None
            ) -> dict[str, Generation]:
    """The baseline we beat: every job loads its model, generates alone and unloads it.

    This is what per-query serving does (and what Symbolic-MoE's offline code does per model,
    minus its 10 s sleeps); `bench/swaps.py` runs it on the same jobs as `execute`.
    """
    out: dict[str, Generation] = {}
    for job in jobs:
        out[job.job_id] = _guarded([job], partial(worker.generate, job.base, [job.request]))[0]
        worker.unload(job.base.key)
        if emit:
            emit({job.job_id: out[job.job_id]})
        if progress:
            progress(len(out), len(jobs))
    return out
