"""A Serve replica's running batch claims its models on the worker actor (remote_claims): another
replica's load there spares them, as a load in the batch's own process does (worker.Claims)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import ray
from ray.exceptions import GetTimeoutError

from experts.backend import BackendError
from experts.mock import MockBackend
from experts.types import BaseModelSpec, Generation, GenerationRequest, SamplingParams
from experts.workers import WorkerSpec
from orchestrator.scheduling.executor import execute
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import claims
from orchestrator.services.profiling_pending import unload_if_free
from orchestrator.serving.remote_claims import RemoteClaims
from orchestrator.serving.remote_worker import RemoteWorker, WorkerLost
from orchestrator.serving.worker_actor import MAX_CONCURRENCY, spawn

MB = 100 * 2**20
WAIT_S = 30.0
A, B, C, D = (BaseModelSpec(kind="mock", source=s) for s in "abcd")


def sized(spec: BaseModelSpec) -> MockBackend:
    return MockBackend(spec.key, MB)


def job(i: int, base: BaseModelSpec) -> Job:
    request = GenerationRequest.model_validate({"request_id": f"{base.source}{i}", "sampling": SamplingParams(),
                                                "messages": [{"role": "user", "content": f"q{i}"}]})
    return Job(f"{base.source}{i}", base, request)


@pytest.fixture
def replicas(local_ray: None) -> Iterator[tuple[RemoteWorker, RemoteWorker]]:
    """Two proxies of one worker actor with room for three models, as two replicas hold."""
    actor = spawn(WorkerSpec(name="claims", device="local-cpu"), 3 * MB, sized)
    yield RemoteWorker(actor), RemoteWorker(actor)
    ray.kill(actor)


@pytest.mark.slow
def test_another_replica_s_load_spares_the_later_stage_of_a_running_batch(replicas) -> None:
    mine, other = replicas
    for base in (B, D, A):
        other.ensure_loaded(base)  # B least recently used

    def between_stages(done: dict[str, Generation]) -> None:
        if "a0" in done:  # a registration on the other replica loads C
            other.ensure_loaded(C)

    out = execute([job(0, A), job(1, B)], mine, emit=between_stages)
    assert all(g.error is None for g in out.values())
    assert mine.loads_by_model()[B.key] == 1  # D, which no batch needed, made the room
    assert mine.resident() == {A.key, B.key, C.key}


@pytest.mark.slow
def test_another_replica_sees_a_running_batch_s_claims_and_waits_them_out(replicas) -> None:
    """ExpertService releases a removed expert's model once no batch on the worker needs it
    (`claims(worker).needed()`, `wait_unneeded`), whichever replica runs the batch."""
    mine, other = replicas
    seen: list[set[str]] = []
    released = threading.Event()
    waiting = threading.Thread(target=lambda: (claims(other).wait_unneeded(B.key), released.set()))

    def between_stages(done: dict[str, Generation]) -> None:
        if "a0" in done:
            seen.append(claims(other).needed())
            waiting.start()
        if "b1" in done:
            seen.append(claims(other).needed())
            assert not released.is_set()  # B's stage has run, the batch has not ended

    execute([job(0, A), job(1, B)], mine, emit=between_stages)
    waiting.join(WAIT_S)
    assert released.is_set() and seen == [{A.key, B.key}, {B.key}]
    assert claims(other).needed() == set()


@pytest.mark.slow
def test_claims_are_told_while_every_thread_of_the_actor_is_parked(replicas) -> None:
    """Releases waiting for a model (and generations queued on the device) held all of the
    actor's threads: a batch's tells and beats found none, its lease lapsed, and the models it
    still needed were freed under it. Claims calls have threads of their own."""
    mine, other = replicas
    with claims(mine).claim([A.key]) as held:
        held.stage(A.key)
        parked = [mine.actor.wait_unneeded.remote(A.key, WAIT_S) for _ in range(MAX_CONCURRENCY)]
        with claims(other).claim([B.key]):
            assert claims(other).needed() == {A.key, B.key}
    assert all(ray.get(parked, timeout=WAIT_S))  # each wait ended with the claim


class OldActor:
    """An actor made by a release without claims (reused while its settings are unchanged)."""

    name = "old"

    def ask(self, method: str, *args: object, timeout: float | None = None) -> object:
        raise AttributeError(f"'ActorHandle' object has no attribute {method!r}")


def test_a_worker_that_cannot_take_claims_fails_no_batch() -> None:
    """The tell's AttributeError failed every batch on it: claims only spare models."""
    with RemoteClaims(OldActor()).claim([A.key, B.key]) as held:
        held.stage(A.key)
        held.stage(B.key)


class BusyActor:
    """An actor whose threads are all busy once: the first slice's answer comes late."""

    name = "busy"

    def __init__(self, alive: bool = True) -> None:
        self.asked: list[str] = []
        self.alive = alive

    def ask(self, method: str, *args: object, timeout: float | None = None) -> object:
        self.asked.append(method)
        if method == "info" and not self.alive:
            raise BackendError("worker busy is unavailable: its actor is not running")
        if method == "wait_unneeded" and self.asked.count(method) == 1:
            late = BackendError("worker busy did not answer within 15 s (busy, or its node unreachable)")
            late.__cause__ = GetTimeoutError()
            raise late
        return True


def test_a_wait_for_an_unneeded_model_answered_late_is_asked_again_while_the_actor_answers() -> None:
    """A late slice raised: the release gave up and the removed model was never freed."""
    actor = BusyActor()
    assert RemoteClaims(actor).wait_unneeded(A.key) is True
    assert actor.asked == ["wait_unneeded", "info", "wait_unneeded"]
    with pytest.raises(BackendError, match="not running"):
        RemoteClaims(BusyActor(alive=False)).wait_unneeded(A.key)


def failed(work: Callable[[], object], errors: list[BaseException]) -> None:
    try:
        work()
    except BaseException as exc:  # noqa: BLE001 - kept for the test to read
        errors.append(exc)


def slow_or_sized(spec: BaseModelSpec) -> MockBackend:
    """`slow`'s replies take a minute: a generation holding the actor's device for the whole test."""
    return MockBackend(spec.key, MB, delay_s=60.0 if spec.source == "slow" else 0.0)


@pytest.mark.slow
def test_an_unload_if_free_asks_the_actor_and_never_waits_for_its_device(local_ray: None) -> None:
    """The proxy's own lock is no one's: a DELETE that unloads a model through it waited out the
    actor's generation under way (5.6 s behind an unrelated chat), where it should leave it to a thread."""
    actor = spawn(WorkerSpec(name="busy", device="local-cpu"), 3 * MB, slow_or_sized)
    worker, slow = RemoteWorker(actor), BaseModelSpec(kind="mock", source="slow")
    cut_short: list[BaseException] = []
    generating = threading.Thread(target=lambda: failed(lambda: worker.generate(slow, [job(0, slow).request]),
                                                        cut_short), daemon=True)
    try:
        worker.ensure_loaded(A)
        generating.start()
        deadline = time.monotonic() + WAIT_S
        while slow.key not in worker.resident():  # loaded under the device lock its generation holds
            assert time.monotonic() < deadline, "the slow generation never started"
        answer: list[bool] = []
        asking = threading.Thread(target=lambda: answer.append(unload_if_free(worker, A.key)), daemon=True)
        asking.start()
        asking.join(WAIT_S)
        assert answer == [False] and A.key in worker.resident()  # busy: left to a thread of its own
    finally:
        ray.kill(actor)
    generating.join(WAIT_S)  # a thread still calling Ray at the module's shutdown started a Ray of its own
    assert not generating.is_alive() and [isinstance(e, WorkerLost) for e in cut_short] == [True]  # cut short
