"""What a running batch claims on its worker (worker.Claims): a load from outside it (a
registration's, another batch's) does not switch out the model its stage generates on, nor evict
the model a later stage of it needs; and batches that need each other's room still all finish."""

from __future__ import annotations

import threading

from experts.mock import MockBackend
from experts.types import BaseModelSpec, Generation, GenerationRequest, SamplingParams
from orchestrator.scheduling.executor import execute
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker, claims

MB = 100 * 2**20
WAIT_S = 30.0
A, B, C = (BaseModelSpec(kind="mock", source=s) for s in "abc")


class Sized(MockBackend):
    """A mock that says when the worker first asks its size: a load of it holds the worker and is
    making room now."""

    def __init__(self, key: str):
        super().__init__(key, MB)
        self.sized = threading.Event()

    def memory_bytes(self) -> int:
        self.sized.set()
        return super().memory_bytes()


def job(i: int, base: BaseModelSpec) -> Job:
    request = GenerationRequest.model_validate({"request_id": f"{base.source}{i}", "sampling": SamplingParams(),
                                                "messages": [{"role": "user", "content": f"q{i}"}]})
    return Job(f"{base.source}{i}", base, request)


def test_a_load_from_outside_waits_for_the_running_stage_and_spares_a_later_one() -> None:
    """A registration's load (ExpertService.check_loads, which protects nothing) between a batch's
    chunks evicted the model of the batch's later stage, which the batch then loaded again."""
    c = Sized(C.key)
    backends = {A.key: MockBackend(A.key, MB), B.key: MockBackend(B.key, MB), C.key: c}
    worker = DeviceWorker("cpu", 2 * MB, lambda s: backends[s.key])  # room for two models
    worker.ensure_loaded(B)
    worker.ensure_loaded(A)  # both in: A's stage runs first (submission order), then B's
    registering = threading.Thread(target=worker.ensure_loaded, args=(C,))

    def between_chunks(done: dict[str, Generation]) -> None:  # the worker is free, as while replies are stored
        if "a0" in done:
            registering.start()
            assert c.sized.wait(WAIT_S)  # the registration holds the worker and makes room now

    out = execute([job(0, A), job(1, B)], worker, emit=between_chunks)
    registering.join(WAIT_S)
    assert sorted(out) == ["a0", "b1"] and all(g.error is None for g in out.values())
    assert backends[B.key].loads == 1 and c.loads == 1  # A, done with, made the room
    assert worker.resident() == {B.key, C.key}


def test_two_batches_on_one_worker_take_turns_by_stage_not_by_chunk() -> None:
    """A profiling run and a batch of queries on a device with room for one model: their chunks
    alternated and each chunk loaded its model again."""
    b = Sized(B.key)
    backends = {A.key: MockBackend(A.key, MB), B.key: b}
    worker = DeviceWorker("cpu", MB, lambda s: backends[s.key])  # room for one model
    other = threading.Thread(target=execute, args=([job(i, B) for i in range(3)], worker), kwargs={"chunk": 1})

    def between_chunks(done: dict[str, Generation]) -> None:
        if "a0" in done:
            other.start()
            assert b.sized.wait(WAIT_S)  # the other batch holds the worker and makes room for its model

    execute([job(i, A) for i in range(3)], worker, chunk=1, emit=between_chunks)
    other.join(WAIT_S)
    assert not other.is_alive() and (backends[A.key].loads, b.loads) == (1, 1)


def test_batches_that_need_each_other_s_models_all_finish() -> None:
    """Two batches over the same two models, in opposite orders, with room for one: each stage
    waits for the other batch's running stage at most, never for its later ones, so neither
    waits on the other for good."""
    worker = DeviceWorker("cpu", MB, lambda s: MockBackend(s.key, MB))
    runs = [threading.Thread(target=execute, args=(jobs, worker), kwargs={"chunk": 1})
            for jobs in ([job(0, A), job(1, A), job(2, B)], [job(3, B), job(4, B), job(5, A)])]
    for run in runs:
        run.start()
    for run in runs:
        run.join(WAIT_S)
    assert not any(run.is_alive() for run in runs)
    assert claims(worker).needed() == set()  # every claim let go


def test_batches_whose_engines_died_mid_stage_do_not_wait_on_each_other() -> None:
    """Both running models' engines died (a GPU fault: not loaded, still counted resident); each
    batch's next chunk loads its model again, and each waited for the other's stage for good."""
    backends = {k.key: MockBackend(k.key, MB) for k in (A, B)}
    worker = DeviceWorker("cpu", 2 * MB, lambda s: backends[s.key])
    worker.ensure_loaded(A)
    worker.ensure_loaded(B)
    died = threading.Event()

    def engines_die(done: dict[str, Generation]) -> None:
        if "b0" in done:
            backends[A.key].unload()  # behind the worker's back, as a dead engine is
            backends[B.key].unload()
            died.set()

    other = threading.Thread(target=execute, args=([job(0, B), job(1, B)], worker),
                             kwargs={"chunk": 1, "emit": engines_die}, daemon=True)  # hung, it fails alone

    def start_other(done: dict[str, Generation]) -> None:
        if "a2" in done:
            other.start()
            assert died.wait(WAIT_S)

    out = execute([job(2, A), job(3, A)], worker, chunk=1, emit=start_other)
    other.join(WAIT_S)
    assert not other.is_alive() and all(g.error is None for g in out.values())


def test_two_loads_of_one_model_waiting_at_once_load_it_once() -> None:
    """The second, woken after the first loaded the model, made room for it again (evicting B,
    which the batch still needed) and counted a second load."""
    backends = {k.key: MockBackend(k.key, MB) for k in (A, B, C)}
    worker = DeviceWorker("cpu", 2 * MB, lambda s: backends[s.key])
    worker.ensure_loaded(B)
    worker.ensure_loaded(A)
    loads = [threading.Thread(target=worker.ensure_loaded, args=(C,), daemon=True) for _ in range(2)]

    def between_chunks(done: dict[str, Generation]) -> None:
        if "a0" in done:
            for load in loads:
                load.start()
            both = threading.Event()
            while not both.wait(0.01):  # until both wait for A's stage (counted by the claims)
                if claims(worker)._waiting == 2:
                    both.set()

    out = execute([job(0, A), job(1, A), job(2, B)], worker, chunk=1, emit=between_chunks)
    for load in loads:
        load.join(WAIT_S)
    assert all(g.error is None for g in out.values())
    assert worker.residency_counts()[C.key] == (1, 0) and backends[B.key].loads == 1
