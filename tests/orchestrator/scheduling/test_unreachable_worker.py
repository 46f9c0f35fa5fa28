"""A worker that cannot say what it holds (its actor restarting, its node gone) fails no batch
by that alone, and a fleet's status reads and shutdown go on past it."""

from __future__ import annotations

from experts.backend import BackendError
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest
from orchestrator.scheduling.executor import execute
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker

M1 = BaseModelSpec(kind="mock", source="m1")


class Forgetful(DeviceWorker):
    """Generates as any worker does, but its status reads fail as a restarting actor's do."""

    def resident(self) -> set[str]:
        raise BackendError(f"worker {self.name} was lost mid-call (ActorUnavailableError)")

    def shutdown(self) -> None:
        raise BackendError("lost")


def job(jid: str) -> Job:
    return Job(jid, M1, GenerationRequest(request_id=jid, messages=[ChatMessage(role="user", content=f"q{jid}")]))


def test_a_worker_that_cannot_say_what_it_holds_still_runs_its_jobs() -> None:
    worker = Forgetful("w", factory=lambda spec: MockBackend(spec.key))
    out = execute([job("a"), job("b")], worker)
    assert {k: g.error for k, g in out.items()} == {"a": None, "b": None}


def test_fleet_reads_each_worker_apart_and_shuts_down_past_an_unreachable_one() -> None:
    good = DeviceWorker("good", factory=lambda spec: MockBackend(spec.key))
    good.ensure_loaded(M1)
    fleet = Fleet({"bad": Forgetful("bad", factory=lambda spec: MockBackend(spec.key)), "good": good})
    answers, unavailable = fleet.each(lambda w: w.resident())
    assert answers == {"good": {M1.key}} and "ActorUnavailableError" in unavailable["bad"]
    fleet.shutdown()
    assert good.resident() == set()
