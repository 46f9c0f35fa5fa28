"""The worker actor's class and the remote proxy's interface, without starting Ray."""

from __future__ import annotations

import inspect
import threading

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.serving.remote_worker import RemoteWorker
from orchestrator.serving.worker_actor import WorkerActor, actor_name

M1 = BaseModelSpec(kind="mock", source="m1")
M2 = BaseModelSpec(kind="mock", source="m2")


def mock_factory(spec: BaseModelSpec) -> MockBackend:
    return MockBackend(spec.key)


def request(rid: str) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=[ChatMessage(role="user", content=f"q{rid}")])


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in vars(cls).items() if callable(f) and not n.startswith("_")}


def test_remote_worker_overrides_every_device_worker_method_with_its_signature():
    """A method added to DeviceWorker and not proxied would run the parent's code on empty state."""
    ours, theirs = public_methods(RemoteWorker), public_methods(DeviceWorker)
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    assert all(ours[n].parameters.keys() == theirs[n].parameters.keys() for n in theirs)



def test_actor_class_keeps_models_resident_within_its_budget():
    actor = WorkerActor("cpu", memory_budget_bytes=150 * 2**20, factory=mock_factory)  # room for one mock
    gens = actor.generate(M1, [request("a"), request("b")])
    assert [g.request_id for g in gens] == ["a", "b"]
    actor.generate(M1, [request("c")])
    assert actor.resident() == {M1.key} and actor.loads_by_model() == {M1.key: 1}
    actor.generate(M2, [request("d")])  # evicts m1: the budget holds one
    assert actor.resident() == {M2.key} and actor.total_loads() == 2
    assert [e[1:] for e in actor.timeline()] == [("load", M1.key), ("unload", M1.key), ("load", M2.key)]
    assert actor.residency_counts() == {M1.key: (1, 1), M2.key: (1, 0)}


def test_actor_class_answers_only_the_backend_members_a_proxy_needs():
    actor = WorkerActor("cpu", 2**30, factory=mock_factory)
    actor.ensure_loaded(M1)
    assert actor.backend_member(M1, "is_loaded") is True
    assert actor.backend_member(M1, "loads") == 1 and actor.backend_member(M1, "validate") is None
    with pytest.raises(AttributeError):
        actor.backend_member(M1, "load")  # loading must go through the worker's budget
    assert actor.info()["device"] == "cpu" and actor_name("cpu") == "skillroute-worker-cpu"


def test_a_size_read_loads_nothing_and_needs_no_device() -> None:
    """A control call: placing a registration read sizes through the device lock, which a
    generation holds through a whole chunk."""
    actor = WorkerActor("cpu", 2**30, factory=mock_factory)
    held, done = threading.Event(), threading.Event()

    def generating() -> None:  # holds the device as a generation does
        with actor.worker.lock:
            held.set()
            done.wait(30)

    threading.Thread(target=generating, daemon=True).start()
    assert held.wait(30)
    try:
        reads = [actor.size_of(M1), actor.size_of(M1)]  # on the device lock, this waited for `done`
    finally:
        done.set()
    assert reads == [mock_factory(M1).memory_bytes()] * 2 and actor.resident() == set()
