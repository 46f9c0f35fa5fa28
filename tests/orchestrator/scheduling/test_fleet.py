"""The fleet: each worker runs its own jobs, a failure stays with the jobs it hit, and jobs queued
while a batch runs (a stand-in, an aggregation) are taken by the worker before it stops, and
waited for even on a worker whose thread started after the wait began."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ChatMessage, ExpertPlacement, ExpertSpec, Generation, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, Outcome
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.settings import BudgetSettings
from skills.embedder import Embedder
from tests.orchestrator.conftest import quiet_settings, small_pool
from tests.orchestrator.pipeline.test_batch import EXPERTS, PACKAGED, WORKERS, decided


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


MOMENT_S = 0.5  # how long storing a finished query takes below: always, unless `answer` returned early


def test_a_worker_first_used_after_the_batch_began_waiting_is_waited_for(tmp_path: Path, embedder: Embedder) -> None:
    """A query's experts run on w2 and w3, its aggregator on w1, whose thread starts only once
    their answers are in: after the batch began waiting. The query is handed to `finished` on
    w1's thread, which stores it until `answer` has returned (or a moment passes). Before, the
    wait ended with w2's and w3's threads: `answer` returned while w1 still stored the query, and
    w1's time was measured as 0."""
    returned, stored = threading.Event(), []

    def store(place: int, outcome: Outcome) -> None:
        returned.wait(MOMENT_S)
        stored.append(outcome)

    devices = tmp_path / "devices.yaml"
    devices.write_text(PACKAGED.read_text() + WORKERS)
    experts = [ExpertSpec(name=n, base=BaseModelSpec(kind="mock", source=b), placement=ExpertPlacement(worker=w))
               for n, (b, w) in EXPERTS.items()]
    settings = quiet_settings(tmp_path / "data", budgets=BudgetSettings(devices_file=str(devices)))
    c = SkillRoute(settings, small_pool(experts), factory=lambda spec: MockBackend(spec.key), embedder=embedder)
    c.start()
    try:
        (out,) = c.pipeline.answer(c.pool.snapshot, [Ask(text="what is 2+2?", k=2)],
                                   [decided(["beta", "gamma"], ["beta", "gamma"])], finished=store)
        stored_by_then = len(stored)
    finally:
        returned.set()
        c.close()
    assert [a.role for a in out.answers] == ["expert", "expert", "aggregator"] and out.error is None
    assert stored_by_then == 1
    measured = {d.worker: d.measured_s for d in out.decision.devices}
    assert set(measured) == {"w1", "w2", "w3"} and (measured["w1"] or 0.0) >= MOMENT_S
