"""Runs a planned batch on a device worker, stage by stage, reporting progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from experts.types import Generation
from orchestrator.scheduling.planner import Job, plan_stages
from orchestrator.scheduling.worker import DeviceWorker

Progress = Callable[[int, int], None]


class Executor(Protocol):
    def __call__(self, jobs: Sequence[Job], worker: DeviceWorker, keep_last: str | None = None,
                 progress: Progress | None = None, chunk: int = 16) -> dict[str, Generation]: ...


def execute(jobs: Sequence[Job], worker: DeviceWorker, keep_last: str | None = None,
            progress: Progress | None = None, chunk: int = 16) -> dict[str, Generation]:
    """Generate every job; each base model is loaded at most once for the whole batch.

    Stages are cut into chunks only so progress can be reported; the model stays resident
    between chunks because every remaining stage's model (and `keep_last`) is protected.
    """
    stages = plan_stages(jobs, worker.resident(), keep_last)
    out: dict[str, Generation] = {}
    for i, stage in enumerate(stages):
        protect = {s.key for s in stages[i:]} | ({keep_last} if keep_last else set())
        for start in range(0, len(stage.jobs), chunk):
            part = stage.jobs[start:start + chunk]
            gens = worker.generate(stage.base, [j.request for j in part], protect)
            out.update((j.job_id, g) for j, g in zip(part, gens, strict=True))
            if progress:
                progress(len(out), len(jobs))
    return out


def execute_naive(jobs: Sequence[Job], worker: DeviceWorker, keep_last: str | None = None,
                  progress: Progress | None = None, chunk: int = 16) -> dict[str, Generation]:
    """The baseline we beat: every job loads its model, generates alone and unloads it.

    This is what per-query serving does (and what Symbolic-MoE's offline code does per model,
    minus its 10 s sleeps); `bench/swaps.py` runs it on the same jobs as `execute`.
    """
    out: dict[str, Generation] = {}
    for job in jobs:
        out[job.job_id] = worker.generate(job.base, [job.request])[0]
        worker.unload(job.base.key)
        if progress:
            progress(len(out), len(jobs))
    return out
