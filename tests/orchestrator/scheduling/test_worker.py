"""DeviceWorker's shutdown (every model unloaded, and what a backend keeps beside its weights,
a vLLM backend's warm worker process, ended too), its prefetch: the next stage's model loading
on a background thread beside the current stage's generation, within the budget, and how it lets
go of a model: one whose unload fails (a dead engine) leaves the device anyway, and a backend it
forgets or builds again is closed, its loads still counted."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from experts.backend import BackendError
from experts.mock import MockBackend
from experts.types import BaseModelSpec, Generation, GenerationRequest
from experts.vllm_backend import EngineConfig, VLLMBackend, VLLMEngine
from orchestrator.scheduling.executor import execute
from orchestrator.scheduling.planner import Job, loads_floor
from orchestrator.scheduling.worker import DeviceWorker
from tests.conftest import MakeHFFolder
from tests.experts.test_vllm_backend import MockVLLMEngine


def test_shutdown_unloads_every_model_and_closes_backends_that_keep_a_process(
    tmp_path: Path, make_hf_folder: MakeHFFolder
) -> None:
    engines: list[MockVLLMEngine] = []

    def engine(config: EngineConfig) -> VLLMEngine:
        engines.append(MockVLLMEngine(config, sleep_mode=True))
        return engines[-1]

    folder = make_hf_folder(tmp_path / "model", {})
    vllm_spec, mock_spec = BaseModelSpec(kind="vllm", source=str(folder)), BaseModelSpec(kind="mock", source="m")

    def factory(spec: BaseModelSpec) -> VLLMBackend | MockBackend:
        return VLLMBackend(spec, engine_factory=engine) if spec.kind == "vllm" else MockBackend(spec.key)

    worker = DeviceWorker(factory=factory)
    vllm, mock = worker.ensure_loaded(vllm_spec), worker.ensure_loaded(mock_spec)
    worker.shutdown()
    assert worker.resident() == set() and not mock.is_loaded
    assert engines[0].closed and engines[0].calls[-1] == ("close", None)  # ended, not left asleep
    assert isinstance(vllm, VLLMBackend) and not vllm.is_asleep
    worker.ensure_loaded(vllm_spec)
    assert len(engines) == 2 and vllm.loads == 2  # a new engine after shutdown, not a wake-up


class BackgroundMock(MockBackend):
    """A mock whose load can run beside another model's generation, with hooks to order them."""

    loads_in_background = True

    def __init__(self, key: str, memory: int = 100 * 2**20, fail: bool = False):
        super().__init__(key, memory)
        self.load_started, self.may_finish = threading.Event(), threading.Event()
        self.may_finish.set()
        self.load_thread: str | None = None
        self.fail = fail

    def load(self) -> None:
        self.load_started.set()
        self.load_thread = threading.current_thread().name
        assert self.may_finish.wait(WAIT_S), "the test never let the load finish"
        if self.fail:
            self.fail = False
            raise BackendError(f"{self.base_model_key}: weights unreadable")
        super().load()


WAIT_S = 30.0
A, B, C = (BaseModelSpec(kind="mock", source=s) for s in "abc")


def background_worker(budget_models: int, **backends: BackgroundMock) -> DeviceWorker:
    return DeviceWorker("cpu", budget_models * 100 * 2**20,
                        lambda spec: backends.get(spec.source) or BackgroundMock(spec.key))


def test_prefetch_loads_beside_a_generation_and_the_next_use_adopts_it() -> None:
    b = BackgroundMock(B.key)
    b.may_finish.clear()
    worker = background_worker(2, b=b)
    worker.ensure_loaded(A)
    assert worker.prefetch(B, {A.key, B.key})
    assert b.load_started.wait(WAIT_S)
    # the load is held open, yet the worker still generates on the resident model
    assert len(worker.generate(A, [request("while b loads")])) == 1
    assert worker.resident() == {A.key} and not worker.prefetch(B)  # not twice
    b.may_finish.set()
    assert worker.ensure_loaded(B) is b and b.loads == 1
    assert b.load_thread is not None and b.load_thread.startswith("cpu-prefetch")
    assert worker.resident() == {A.key, B.key} and [e[1:] for e in worker.events][-1] == ("load", B.key)


def test_prefetch_never_evicts_what_remains_and_skips_backends_that_load_in_process() -> None:
    worker = background_worker(1)
    worker.ensure_loaded(A)
    assert not worker.prefetch(B, {A.key, B.key})  # only room by evicting A, which a stage still needs
    assert worker.resident() == {A.key} and worker.total_loads() == 1
    assert worker.prefetch(B, {B.key})  # A is done with: it makes room
    assert worker.ensure_loaded(B) and worker.resident() == {B.key}
    in_process = DeviceWorker("cpu", 2**40, lambda spec: MockBackend(spec.key))
    assert not in_process.prefetch(A) and in_process.total_loads() == 0


def test_a_failed_prefetch_raises_at_first_use_and_the_next_use_loads_again() -> None:
    worker = background_worker(2, b=BackgroundMock(B.key, fail=True))
    assert worker.prefetch(B)
    with pytest.raises(BackendError, match="weights unreadable"):
        worker.ensure_loaded(B)
    assert worker.resident() == set()
    assert worker.ensure_loaded(B).is_loaded and worker.resident() == {B.key}


def test_shutdown_waits_for_a_prefetch_and_unloads_it() -> None:
    b = BackgroundMock(B.key)
    b.may_finish.clear()
    worker = background_worker(2, b=b)
    assert worker.prefetch(B) and b.load_started.wait(WAIT_S)
    stopping = threading.Thread(target=worker.shutdown)
    stopping.start()  # with the load still held open
    b.may_finish.set()
    stopping.join(WAIT_S)
    worker._loader.submit(lambda: None).result()  # every background load has ended by now
    assert b.loads == 1 and not b.is_loaded and worker.resident() == set()


def test_execute_starts_the_next_stage_load_while_the_current_stage_generates() -> None:
    """Stage A's generation waits until B's load has begun: without the overlap it would time out."""
    b, c = BackgroundMock(B.key), BackgroundMock(C.key)

    class WaitsForB(BackgroundMock):
        def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
            assert b.load_started.wait(WAIT_S), "B did not start loading during A's generation"
            return super().generate(requests)

    worker = background_worker(3, a=WaitsForB(A.key), b=b, c=c)
    jobs = [Job(f"{i}", base, request(f"q{i}")) for i, base in enumerate([A, B, C, A, B])]
    out = execute(jobs, worker, keep_last=C.key)
    assert sorted(out) == sorted(j.job_id for j in jobs)
    assert worker.total_loads() == loads_floor(jobs, set()) == 3
    assert b.load_thread is not None and b.load_thread.startswith("cpu-prefetch")


def request(text: str) -> GenerationRequest:
    return GenerationRequest.model_validate({"request_id": text, "messages": [{"role": "user", "content": text}]})


def test_the_residency_timeline_is_bounded_and_the_counts_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.scheduling import worker as worker_module

    monkeypatch.setattr(worker_module, "TIMELINE_EVENTS", 10)
    a, b = BaseModelSpec(kind="mock", source="a"), BaseModelSpec(kind="mock", source="b")
    worker = DeviceWorker(memory_budget_bytes=150 * 2**20, factory=lambda s: MockBackend(s.key))  # room for one
    for _ in range(20):
        worker.ensure_loaded(a)
        worker.ensure_loaded(b)  # evicts a
    assert len(worker.timeline()) == 10 and worker.timeline()[-1][1:] == ("load", b.key)
    assert worker.residency_counts() == {a.key: (20, 20), b.key: (20, 19)}  # every load and unload counted


def test_weights_asked_for_with_another_context_window_are_built_again_even_loaded() -> None:
    """The backend cache is by weights (`BaseModelSpec.key` leaves n_ctx out): a backend built for
    a removed expert's 512-token window served a later expert asking for 4,096, and still did
    while loaded (a batch had loaded it again after the removal's unload)."""
    built: list[MockBackend] = []

    def factory(spec: BaseModelSpec) -> MockBackend:
        built.append(MockBackend(f"{spec.key}@{spec.n_ctx}"))
        return built[-1]

    worker = DeviceWorker(factory=factory)
    short, wide = BaseModelSpec(kind="mock", source="m", n_ctx=512), BaseModelSpec(kind="mock", source="m", n_ctx=4096)
    worker.ensure_loaded(short)
    assert worker.ensure_loaded(wide) is built[1] and not built[0].is_loaded  # the old window is gone
    assert [b.base_model_key for b in built] == ["mock:m@512", "mock:m@4096"]
    assert worker.resident() == {wide.key} and worker.residency_counts()[wide.key] == (2, 1)


class Closable(MockBackend):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_models_a_worker_remembers_are_bounded_and_resident_ones_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Experts come and go, and each base's backend and counts (exported on every /metrics
    scrape) were kept forever. Past MAX_MODELS the least recently used one not resident is
    forgotten, its backend closed; the total of loads still counts it."""
    from orchestrator.scheduling import worker as worker_module

    monkeypatch.setattr(worker_module, "MAX_MODELS", 3)
    built: list[Closable] = []

    def factory(spec: BaseModelSpec) -> Closable:
        built.append(Closable(spec.key))
        return built[-1]

    worker = DeviceWorker(memory_budget_bytes=2**40, factory=factory)
    kept = BaseModelSpec(kind="mock", source="kept")
    worker.generate(kept, [request("q")])  # stays resident, the least recently used from here on
    for i in range(10):  # register, answer, remove: the removal unloads it
        base = BaseModelSpec(kind="mock", source=f"model-{i}")
        worker.generate(base, [request("q")])
        worker.unload(base.key)
    assert set(worker.residency_counts()) == {kept.key, "mock:model-8", "mock:model-9"}
    assert worker.residency_counts()[kept.key] == (1, 0)
    assert set(worker.loads_by_model()) == set(worker.residency_counts())
    assert worker.total_loads() == 11 and all(b.closed for b in built[1:-2]) and not built[-1].closed


class DiesOnUnload(MockBackend):
    """A resident model whose unload raises: a vLLM engine whose worker process died."""

    def unload(self) -> None:
        raise BackendError(f"{self.base_model_key}: vLLM worker has exited (-9)")


def test_a_model_whose_unload_fails_leaves_the_device_and_the_next_model_loads() -> None:
    """Before, the dead model stayed resident and every load needing its room failed with its
    error, for every other model, batch after batch."""
    worker = DeviceWorker(memory_budget_bytes=150 * 2**20,  # room for one model
                          factory=lambda s: (DiesOnUnload if s.source == "a" else MockBackend)(s.key))
    worker.generate(A, [request("q1")])
    (reply,) = worker.generate(B, [request("q2")])  # needs A's room
    assert reply.error is None and reply.text
    assert worker.resident() == {B.key} and worker.residency_counts()[A.key] == (1, 1)


def test_a_model_whose_unload_failed_yet_stayed_loaded_still_answers() -> None:
    """An unload that raised with the backend still loaded (a sleep call that timed out on a live
    engine) left the model counted gone for good: never loaded again (the backend said it was),
    every later request for it failed with a KeyError."""
    worker = DeviceWorker(memory_budget_bytes=150 * 2**20,  # room for one model
                          factory=lambda s: (DiesOnUnload if s.source == "a" else MockBackend)(s.key))
    worker.generate(A, [request("q1")])
    worker.generate(B, [request("q2")])  # evicts A: its unload raises, and it stays loaded
    (reply,) = worker.generate(A, [request("q3")])
    assert reply.error is None and reply.text and worker.resident() == {A.key}


class DyingEngine(MockVLLMEngine):
    """An engine whose worker process can die: a call to it then raises, as WorkerEngine's does."""

    alive = True

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        if not self.alive:
            raise BackendError("vLLM worker has exited (-9)")
        self.asleep = True


class OneModelSize(VLLMBackend):
    def memory_bytes(self) -> int:
        return 100 * 2**20


def test_a_vllm_model_whose_engine_died_is_forgotten_not_put_to_sleep(
    tmp_path: Path, make_hf_folder: MakeHFFolder
) -> None:
    engines: dict[str, DyingEngine] = {}

    def factory(spec: BaseModelSpec) -> VLLMBackend:
        def engine(config: EngineConfig) -> VLLMEngine:
            engines[spec.source] = DyingEngine(config)
            return engines[spec.source]
        return OneModelSize(spec, engine_factory=engine, background_loads=False)

    y, x = (BaseModelSpec(kind="vllm", source=str(make_hf_folder(tmp_path / s, {}))) for s in "yx")
    worker = DeviceWorker(memory_budget_bytes=150 * 2**20, factory=factory)  # room for one model
    worker.generate(y, [request("q1")])
    dead = engines[y.source]
    dead.alive = False  # its process is OOM-killed while it is resident
    (reply,) = worker.generate(x, [request("q2")])
    assert reply.error is None and worker.resident() == {x.key}
    assert dead.count("sleep") == 0  # its weights went with its process: it is forgotten, not paged out
    assert worker.ensure_loaded(y).loads == 2 and engines[y.source] is not dead  # a new engine, not a wake-up


class KeepsAProcess(MockBackend):
    """Like a vLLM backend: its load starts a process, kept until close(), even if the engine fails."""

    process_alive = False

    def __init__(self, key: str, fail: bool = False):
        super().__init__(key)
        self.fail = fail

    def load(self) -> None:
        self.process_alive = True
        if self.fail:
            raise BackendError(f"{self.base_model_key}: engine start failed: CUDA out of memory")
        super().load()

    def close(self) -> None:
        self.process_alive = False


def test_forgetting_a_model_closes_its_backend_and_keeps_its_loads_counted() -> None:
    """A refused registration forgets its model: before, its backend was dropped unclosed,
    leaking a vLLM worker process each time, and its loads vanished from the total."""
    built: list[KeepsAProcess] = []

    def factory(spec: BaseModelSpec) -> KeepsAProcess:
        built.append(KeepsAProcess(spec.key, fail=spec.source == "b"))
        return built[-1]

    worker = DeviceWorker(factory=factory)
    worker.ensure_loaded(A)
    with pytest.raises(BackendError, match="engine start failed"):
        worker.ensure_loaded(B)
    worker.forget(B.key)
    worker.forget(A.key)
    assert [b.process_alive for b in built] == [False, False]
    assert worker.resident() == set() and worker.loads_by_model() == worker.residency_counts() == {}
    assert worker.total_loads() == 1


def test_weights_built_again_for_another_context_window_close_the_old_backend_and_keep_its_loads() -> None:
    built: list[KeepsAProcess] = []

    def factory(spec: BaseModelSpec) -> KeepsAProcess:
        built.append(KeepsAProcess(spec.key))
        return built[-1]

    worker = DeviceWorker(factory=factory)
    short, wide = BaseModelSpec(kind="mock", source="m", n_ctx=512), BaseModelSpec(kind="mock", source="m", n_ctx=4096)
    worker.ensure_loaded(short)
    worker.unload(short.key)
    worker.ensure_loaded(wide)
    assert len(built) == 2 and not built[0].process_alive and built[1].process_alive
    assert worker.total_loads() == 2 and worker.residency_counts()[short.key] == (2, 1)
