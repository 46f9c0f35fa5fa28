"""The fleet: each worker runs its own jobs, a failure stays with the jobs it hit, and jobs queued
while a batch runs (a stand-in, an aggregation) are taken by the worker before it stops."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ChatMessage, Generation, GenerationRequest
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker


class Broken(MockBackend):
    """Loads, then raises on every generate: an engine that crashed."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        raise RuntimeError("engine crashed")


class WontLoad(MockBackend):
    def load(self) -> None:
        raise RuntimeError("out of memory")


def factory(spec: BaseModelSpec) -> MockBackend:
    kinds = {"broken": Broken, "wontload": WontLoad}
    return kinds.get(spec.source, MockBackend)(spec.key)


def job(job_id: str, base: str) -> Job:
    request = GenerationRequest(request_id=job_id, messages=[ChatMessage(role="user", content=job_id)])
    return Job(job_id, BaseModelSpec(kind="mock", source=base), request)


def fleet() -> Fleet:
    return Fleet({name: DeviceWorker(name, 2**30, factory) for name in ("a", "b")})


def test_each_worker_runs_its_own_jobs_and_a_failure_stays_with_its_jobs() -> None:
    f = fleet()
    out = f.execute({"a": [job("a1", "m1"), job("a2", "broken"), job("a3", "wontload"), job("a4", "m2")],
                     "b": [job("b1", "m1"), job("b2", "m3")]})
    assert out["a2"].error == "RuntimeError: engine crashed" and out["a3"].error == "RuntimeError: out of memory"
    assert all(out[j].error is None and out[j].text for j in ("a1", "a4", "b1", "b2"))
    assert f["a"].resident() >= {"mock:m1", "mock:m2"} and f["b"].resident() == {"mock:m1", "mock:m3"}


def test_jobs_queued_while_a_batch_runs_are_taken_before_the_worker_stops() -> None:
    f, replies, lock = fleet(), {}, threading.Lock()

    def reply(job_id: str, gen: Generation) -> None:
        with lock:
            replies[job_id] = gen
            if job_id == "first":
                run.submit("b", [job("second", "m2")])  # an aggregation whose answers just came in
            if len(replies) == 2:
                run.finish()

    run = f.dispatch(reply)
    run.submit("a", [job("first", "m1")])
    busy = run.wait()
    assert set(replies) == {"first", "second"} and set(busy) == {"a", "b"}
    assert all(g.error is None for g in replies.values())
