"""Claims told by another process (Claims.hold): a Serve replica's running batches, on a worker
actor. Held as a whole set per process, the newest version kept, for a lease it renews."""

from __future__ import annotations

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from orchestrator.scheduling.claims import Claims
from orchestrator.scheduling.worker import DeviceWorker, claims

MB = 100 * 2**20
A, B, C, D = (BaseModelSpec(kind="mock", source=s) for s in "abcd")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_process_s_claims_are_its_newest_version_and_lapse_unless_renewed() -> None:
    clock = Clock()
    held = Claims(clock=clock)
    held.hold("replica-1", 2, [(frozenset({"a", "b"}), "a")], lease_s=60)
    held.hold("replica-1", 1, [], lease_s=60)  # told earlier, came later: stale
    held.hold("replica-2", 1, [(frozenset({"c"}), None)], lease_s=60)
    assert held.needed() == {"a", "b", "c"}
    held.hold("replica-1", 3, [(frozenset({"b"}), "b")], lease_s=60)  # its batch moved on to b
    assert held.needed() == {"b", "c"}
    clock.now = 59.0
    held.hold("replica-2", 1, [(frozenset({"c"}), None)], lease_s=60)  # renewed, the same version
    clock.now = 61.0  # replica-1 stopped telling (it died mid-batch): its claims lapse
    assert held.needed() == {"c"}
    assert not held.wait_while(lambda needed, running: "b" in needed or "b" in running)


def test_a_load_spares_what_another_process_s_batch_still_needs() -> None:
    """The worker actor's own load (another replica's registration) evicted the least recently
    used model, the one a running batch of a replica would generate on next."""
    worker = DeviceWorker("cpu", 3 * MB, lambda s: MockBackend(s.key, MB))
    for base in (B, D, A):
        worker.ensure_loaded(base)  # B least recently used
    claims(worker).hold("replica-1", 1, [(frozenset({A.key, B.key}), A.key)], lease_s=60)
    worker.ensure_loaded(C)
    assert worker.resident() == {A.key, B.key, C.key}
