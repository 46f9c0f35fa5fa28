"""Claims told by another process (Claims.hold): a Serve replica's running batches, on a worker
actor. Held as a whole set per process, the newest version kept, for a lease it renews."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from orchestrator.scheduling.claims import Claims
from orchestrator.scheduling.worker import DeviceWorker, claims

MB = 100 * 2**20
WAIT_S = 30.0
A, B, C, D = (BaseModelSpec(kind="mock", source=s) for s in "abcd")


def until(check: Callable[[], bool]) -> bool:
    """Whether `check` holds within WAIT_S (polled: a thread's progress has no event to wait on)."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def generating(worker: DeviceWorker) -> Iterator[None]:
    """The device held for the block, as a generation holds it through a chunk."""
    held, done = threading.Event(), threading.Event()

    def generate() -> None:
        with worker.lock:
            held.set()
            done.wait(WAIT_S)

    threading.Thread(target=generate, daemon=True).start()
    assert held.wait(WAIT_S)
    try:
        yield
    finally:
        done.set()


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


def test_a_lapsed_process_s_late_tell_does_not_bring_its_claims_back() -> None:
    """Its entry was dropped with its version: a tell queued on a busy actor, arriving after the
    lapse, stood for another lease though the process had since told it held nothing."""
    clock = Clock()
    held = Claims(clock=clock)
    held.hold("replica-1", 6, [], lease_s=60)  # its batch ended: told it holds nothing
    clock.now = 61.0
    assert held.needed() == set()
    held.hold("replica-1", 5, [(frozenset({"a"}), "a")], lease_s=60)  # sent before, came late
    assert held.needed() == set()


def test_a_load_waiting_on_a_stage_of_a_process_that_died_goes_on_once_its_lease_lapses() -> None:
    """A lapsing claim wakes no one: the load waited out all of STAGE_WAIT_S (30 s)."""
    clock = Clock()
    worker = DeviceWorker("cpu", MB, lambda s: MockBackend(s.key, MB))
    worker._claims = Claims(worker.lock, clock)  # the worker's own, on a clock the test moves
    worker.ensure_loaded(A)
    claims(worker).hold("replica-1", 1, [(frozenset({A.key}), A.key)], lease_s=60)  # generating on A
    load = threading.Thread(target=worker.ensure_loaded, args=(B,), daemon=True)
    load.start()
    assert until(lambda: claims(worker)._waiting == 1)  # it waits for A's stage
    clock.now = 61.0  # the replica died mid-stage: no tell renews it
    load.join(WAIT_S / 3)
    assert not load.is_alive() and worker.resident() == {B.key}


def test_a_tell_does_not_wait_out_a_generation_while_a_load_waits() -> None:
    """The actor's notify took the device lock, held through a whole chunk: each tell (a replica's
    stage change) waited for it, parking the actor's thread and the replica's batch."""
    worker = DeviceWorker("cpu", MB, lambda s: MockBackend(s.key, MB))
    worker.ensure_loaded(A)
    claims(worker).hold("replica-1", 1, [(frozenset({A.key}), A.key)], lease_s=60)
    threading.Thread(target=worker.ensure_loaded, args=(B,), daemon=True).start()
    assert until(lambda: claims(worker)._waiting == 1)
    with generating(worker):
        tell = threading.Thread(target=claims(worker).hold, args=("replica-2", 1, [], 60.0), daemon=True)
        tell.start()
        tell.join(WAIT_S / 3)
        assert not tell.is_alive()


def test_a_bounded_wait_for_a_model_to_be_unneeded_is_bounded_by_a_generation_too() -> None:
    """The wait took the device lock first, for as long as the generation under way held it: an
    actor's caller, asking in slices, gave up on a busy worker and never freed the model."""
    worker = DeviceWorker("cpu", MB, lambda s: MockBackend(s.key, MB))
    with generating(worker):
        assert claims(worker).wait_unneeded(A.key, timeout=0.05) is False
    assert claims(worker).wait_unneeded(A.key, timeout=WAIT_S) is True


def test_a_bounded_wait_for_an_unneeded_model_is_not_held_past_its_time_by_a_generation() -> None:
    """It waited for the claims with the device lock, let go while waiting and taken back after:
    a generation that took the device meanwhile held the 0.5 s wait for its whole chunk, and a
    worker actor's caller gave up on the slice, never freeing the model."""
    worker = DeviceWorker("cpu", MB, lambda s: MockBackend(s.key, MB))
    claims(worker).hold("replica-1", 1, [(frozenset({A.key}), A.key)], lease_s=60)
    done, answers = threading.Event(), list[bool]()
    waiting = threading.Thread(target=lambda: answers.append(claims(worker).wait_unneeded(A.key, timeout=0.5)))

    def generate() -> None:  # a chunk taking the device once the wait is under way
        time.sleep(0.1)  # (the wait started first: were it not, the old code passed, never the new failed)
        with worker.lock:
            done.wait(WAIT_S)

    waiting.start()
    threading.Thread(target=generate, daemon=True).start()
    try:
        waiting.join(WAIT_S / 10)
        assert answers == [False]  # within its time, the batch still needing the model
        claims(worker).hold("replica-1", 2, [], lease_s=60)
        assert claims(worker).wait_unneeded(A.key, timeout=0.2) is False  # unclaimed, the device busy
    finally:
        done.set()
    assert claims(worker).wait_unneeded(A.key, timeout=WAIT_S) is True
