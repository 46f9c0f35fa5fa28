"""ExpertService over its lifetime on the mock pool: what a persona change forgets (profile,
graded answers, lesson marks, aggregator score), what a profiling run finishing late may not
undo (a removal, a disable), which writes answer while a run holds the worker, a failed expert's
retry, and unloading per worker when two workers share a base model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from experts.backend import BackendError
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec, Generation, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.pools.schema import ArithmeticSource, PoolConfig, ValidationConfig
from orchestrator.routing.learning import CERTAIN_AFTER, Lesson
from orchestrator.scheduling.executor import Emit, Progress, execute
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.services.errors import Conflict, Unprocessable
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.services.pool import AGGREGATOR_KEY
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.state import StateRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

PERSONA = ExpertChange({"system_prompt": "You are a historian."})


def eid(c: SkillRoute, name: str) -> int:
    return c.experts.find(name).id


def status(c: SkillRoute, name: str) -> str:
    return c.experts.find(name).status


def teach(c: SkillRoute, n: int, marks: dict[str, bool]) -> None:
    dim = len(c.embedder.encode(["x"])[0])
    c.pool.learn([(None, Lesson(np.ones(dim, dtype=np.float32), ("arithmetic",), marks)) for _ in range(n)])


def test_a_persona_change_forgets_what_judged_the_old_one(container: SkillRoute) -> None:
    teach(container, CERTAIN_AFTER + 5, {"alpha": True, "gamma": False})
    gamma_before = container.pool.evidence_counts()["gamma"]
    assert gamma_before == container.pool.evidence_counts()["beta"] + CERTAIN_AFTER + 5
    row, profiling = container.experts.update(eid(container, "alpha"), PERSONA, background=False)
    assert profiling and row.status == "profiling" and row.accuracy is None and row.skills == []
    # its lesson marks no longer count, so it is explored (uncertain), never recruited; others keep theirs
    assert container.pool.evidence_counts()["alpha"] == 0 and "alpha" in container.pool.snapshot.uncertain
    assert container.pool.evidence_counts()["gamma"] == gamma_before
    container.experts.profile_now([row.id])
    counts = container.pool.evidence_counts()
    assert status(container, "alpha") == "ready" and counts["alpha"] == counts["beta"]  # no lessons
    assert "alpha" not in container.pool.snapshot.uncertain


def test_the_aggregator_is_benchmarked_again_after_its_persona_changes(container: SkillRoute) -> None:
    def chosen() -> dict[str, object]:
        with container.db.session() as s:
            return StateRepository(s).get(AGGREGATOR_KEY) or {}

    name = str(chosen()["name"])
    container.experts.update(eid(container, name), PERSONA, background=False)
    assert chosen()["name"] is None and name not in chosen()["accuracy"]  # type: ignore[operator]
    assert container.pool.snapshot.aggregator != name  # not aggregating on a stale benchmark meanwhile
    container.experts.profile_now([eid(container, name)])
    assert name in chosen()["accuracy"] and chosen()["name"] is not None  # type: ignore[operator]
    container.experts.remove(eid(container, str(chosen()["name"])))
    container.experts.queue.join()  # the aggregator is chosen again among the rest
    assert chosen()["name"] in container.pool.snapshot.experts


def test_a_disabled_expert_profiled_meanwhile_stays_disabled_until_enabled(container: SkillRoute) -> None:
    alpha = eid(container, "alpha")
    container.experts.update(alpha, PERSONA, background=False)
    container.experts.update(alpha, ExpertChange(enabled=False), background=False)
    container.experts.profile_now([alpha])
    assert status(container, "alpha") == "disabled" and container.experts.get(alpha).accuracy is not None
    row, profiling = container.experts.update(alpha, ExpertChange(enabled=True))
    assert row.status == "ready" and not profiling and "alpha" in container.pool.snapshot.experts


@pytest.fixture
def held(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, threading.Event, threading.Event]]:
    """The mock pool whose generations wait on `gate` (open at first); `entered` is set when one waits."""
    gate, entered = threading.Event(), threading.Event()
    gate.set()

    def wait(_: GenerationRequest) -> float:
        entered.set()
        assert gate.wait(30), "the test never opened the gate"
        return 0.0

    experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona")]
    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=40)]), experts=experts)  # 3 chunks
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, delay_s=wait))
    c.bootstrap()
    yield c, gate, entered
    gate.set()
    c.close()


def answered_at_once(*calls: Callable[[], object]) -> list[object]:
    """Each call's result or the error it raised, in order, on a thread that must end while the
    gate is still closed: a call that waited on the worker (or on one that does) would not."""
    out: list[object] = []

    def run() -> None:
        for call in calls:
            try:
                out.append(call())
            except Exception as exc:
                out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"only {len(out)} of {len(calls)} answered while the worker was busy"
    return out


def profiling_new(c: SkillRoute, gate: threading.Event, entered: threading.Event, name: str, base: str) -> int:
    """Register an expert whose profiling run is then generating, held at the closed gate."""
    gate.clear()
    entered.clear()
    expert_id = c.experts.register(mock_expert(name, base)).id
    assert entered.wait(30)
    return expert_id


def test_refusals_changes_and_removals_answer_while_a_registration_waits_on_the_worker(held, monkeypatch) -> None:
    c, gate, entered = held
    delta = profiling_new(c, gate, entered, "delta", "m3")
    loading, check_loads = threading.Event(), c.experts.check_loads

    def noted(spec: ExpertSpec) -> None:
        loading.set()
        check_loads(spec)

    monkeypatch.setattr(c.experts, "check_loads", noted)
    slow = threading.Thread(target=c.experts.register, args=(mock_expert("eps", "m4"),), daemon=True)
    slow.start()
    assert loading.wait(30)  # eps's model waits for the worker the run holds
    taken, disabled, removed = answered_at_once(
        lambda: c.experts.register(mock_expert("alpha", "m5")),
        lambda: c.experts.update(eid(c, "beta"), ExpertChange(enabled=False))[0].status,
        lambda: c.experts.remove(delta).status)
    assert isinstance(taken, Conflict) and "'alpha' already exists" in taken.message
    assert (disabled, removed) == ("disabled", "removed")
    gate.set()
    slow.join(30)
    c.experts.queue.join()
    assert status(c, "eps") == "ready" and "alpha" in c.pool.snapshot.experts


def test_a_removed_expert_s_model_still_loaded_refuses_another_context_window_until_it_is_unloaded(held) -> None:
    """delta is removed mid-run, its model (n_ctx 2048) unloaded only when the run ends; an expert
    over the same weights asking for 4096 was taken then, and ran on the 2048 window for good."""
    c, gate, entered = held
    c.experts.remove(profiling_new(c, gate, entered, "delta", "m3"))
    wider = mock_expert("zeta", "m3").model_copy(update={"base": BaseModelSpec(kind="mock", source="m3", n_ctx=4096)})
    (refused,) = answered_at_once(lambda: c.experts.register(wider))
    assert isinstance(refused, Conflict) and refused.param == "model.n_ctx" and "'delta'" in refused.message
    gate.set()
    c.experts.queue.join()
    assert "mock:m3" not in c.fleet["cpu"].resident()
    assert c.experts.register(wider).status == "profiling"


def test_a_model_removed_mid_run_is_not_loaded_again_and_is_unloaded_when_the_run_ends(held) -> None:
    c, gate, entered = held
    delta = profiling_new(c, gate, entered, "delta", "m3")  # its run takes three chunks
    assert answered_at_once(lambda: c.experts.remove(delta).status) == ["removed"]
    gate.set()
    c.experts.queue.join()
    assert "mock:m3" not in c.fleet["cpu"].resident()
    assert c.fleet["cpu"].residency_counts()["mock:m3"] == (1, 1)  # loaded by the registration only


@pytest.fixture
def flaky(tmp_path: Path, embedder: Embedder) -> Iterator[tuple[SkillRoute, set[str]]]:
    """The mock pool, where every generation on a base model key in the set fails (its server lost)."""
    down: set[str] = set()

    def backend(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, fault=lambda _: "backend down" if spec.key in down else None)

    c = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]), embedder=embedder,
                   factory=backend)
    c.bootstrap()
    yield c, down
    c.close()


def test_a_failed_expert_frees_its_model_and_is_profiled_again_when_enabled(flaky) -> None:
    c, down = flaky
    down.add("mock:m3")
    delta = c.experts.register(mock_expert("delta", "m3"), profile=False).id
    c.experts.profile_now([delta])
    assert c.experts.get(delta).status == "failed" and "mock:m3" not in c.fleet["cpu"].resident()
    down.clear()  # the server is back
    row, profiling = c.experts.update(delta, ExpertChange(enabled=True), background=False)
    assert profiling and row.status == "profiling"
    c.experts.profile_now([delta])
    assert c.experts.get(delta).status == "ready" and "delta" in c.pool.snapshot.experts


def test_an_aggregator_choice_that_fails_fails_no_expert_just_profiled(container: SkillRoute, monkeypatch) -> None:
    def fails() -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(container.profiler, "choose_aggregator", fails)
    delta = container.experts.register(mock_expert("delta", "m3"), profile=False).id
    container.experts.profile_now([delta])
    row = container.experts.get(delta)
    assert row.status == "ready" and row.error is None and row.accuracy is not None
    assert "delta" in container.pool.snapshot.experts


def test_a_name_another_service_stores_while_the_model_loads_is_the_same_409(container: SkillRoute,
                                                                              monkeypatch) -> None:
    """A registration another service has not committed is invisible to the name checks: the
    unique name decides, refused as a name taken before is, and the model loaded for it freed."""
    monkeypatch.setattr(ExpertRepository, "by_name", lambda self, name: None)
    with pytest.raises(Conflict, match="'alpha' already exists"):
        container.experts.register(mock_expert("alpha", "m3"))
    assert [e.name for e in container.experts.all()].count("alpha") == 1
    assert "mock:m3" not in container.fleet["cpu"].resident()


def test_a_profiling_run_under_way_neither_takes_a_persona_change_nor_undoes_a_removal(held) -> None:
    c, gate, entered = held
    alpha = eid(c, "alpha")
    c.experts.update(alpha, PERSONA, background=False)
    gate.clear()
    entered.clear()
    run = threading.Thread(target=c.experts.profile_now, args=([alpha],))
    run.start()
    assert entered.wait(30)  # the run is generating now
    with pytest.raises(Conflict, match="being profiled"):
        c.experts.update(alpha, ExpertChange({"system_prompt": "Another one."}))
    assert c.experts.find("alpha").spec["system_prompt"] == "You are a historian."
    c.experts.remove(alpha)  # beta shares m1: nothing to unload, so nothing waits on the worker
    gate.set()
    run.join(30)
    assert status(c, "alpha") == "removed" and "alpha" not in c.pool.snapshot.experts


@pytest.fixture
def two_workers(tmp_path: Path, embedder: Embedder) -> Iterator[SkillRoute]:
    """Two devices; alpha on `cpu` and beta on `edge` share base m1, gamma (m2) is on `cpu`."""
    def on(name: str, base: str, worker: str) -> ExpertSpec:
        return mock_expert(name, base).model_copy(update={"placement": ExpertPlacement(worker=worker)})

    workers = {n: DeviceWorker(n, 8 * 2**30, mock_or_real) for n in ("cpu", "edge")}
    experts = [on("alpha", "m1", "cpu"), on("beta", "m1", "edge"), on("gamma", "m2", "cpu")]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(experts), embedder=embedder, workers=workers)
    c.bootstrap()
    yield c
    c.close()


def test_a_model_is_unloaded_from_the_worker_nothing_runs_it_on_any_more(two_workers: SkillRoute) -> None:
    c = two_workers
    for worker in ("cpu", "edge"):
        c.fleet[worker].ensure_loaded(BaseModelSpec(kind="mock", source="m1"))
    c.experts.remove(eid(c, "alpha"))
    assert "mock:m1" not in c.fleet["cpu"].resident() and "mock:m1" in c.fleet["edge"].resident()
    row, profiling = c.experts.update(eid(c, "gamma"), ExpertChange({"placement": {"worker": "edge"}}))
    assert not profiling and c.pool.snapshot.placement["gamma"] == "edge"
    assert "mock:m2" in c.fleet["edge"].resident() and "mock:m2" not in c.fleet["cpu"].resident()


def test_a_worker_the_deployment_lacks_is_refused_and_changes_nothing(two_workers: SkillRoute) -> None:
    c = two_workers
    before, snap = c.experts.find("gamma").spec, c.pool.snapshot
    with pytest.raises(Unprocessable, match="unknown worker 'edge-9'"):
        c.experts.update(eid(c, "gamma"), ExpertChange({"placement": {"worker": "edge-9"}, "timeout_s": 3}))
    assert c.experts.find("gamma").spec == before and c.pool.snapshot is snap


def test_a_removed_expert_revived_is_routed_again_with_its_profile(two_workers: SkillRoute) -> None:
    c = two_workers
    gamma = c.experts.find("gamma")
    c.experts.remove(gamma.id)
    assert "gamma" not in c.pool.snapshot.experts
    back = c.experts.revive(gamma.id)
    assert back.status == "ready" and back.accuracy == gamma.accuracy and "gamma" in c.pool.snapshot.experts
    assert c.experts.revive(gamma.id).status == "ready"  # one not removed: unchanged


def test_a_removal_goes_through_while_another_worker_cannot_answer(two_workers: SkillRoute, monkeypatch) -> None:
    """A worker whose node is away (serving/test_worker_faults.py has the real one) holds nothing
    this process can free: removing an expert unloads what the others hold, where it raised."""
    c = two_workers
    c.fleet["cpu"].ensure_loaded(BaseModelSpec(kind="mock", source="m2"))

    def away() -> set[str]:
        raise RuntimeError("worker edge is unavailable: its node has not joined")

    monkeypatch.setattr(c.fleet["edge"], "resident", away)
    assert c.experts.remove(eid(c, "gamma")).status == "removed"
    assert "mock:m2" not in c.fleet["cpu"].resident()


def test_progress_is_each_expert_s_own_and_shows_its_total_from_the_start(held) -> None:
    """A run's combined count was written to every expert in it (alpha and beta, profiled
    together at the start, each showed 80 of 80 for 40 questions), and nothing but 0 of 0 until
    the first chunk came back."""
    c, gate, entered = held
    assert [(e.progress_done, e.progress_total) for e in c.experts.all()] == [(40, 40), (40, 40)]
    delta = profiling_new(c, gate, entered, "delta", "m3")
    row = c.experts.get(delta)
    assert (row.progress_done, row.progress_total) == (0, 40)
    gate.set()
    c.experts.queue.join()
    row = c.experts.get(delta)
    assert (row.progress_done, row.progress_total) == (40, 40)


def test_a_model_that_fails_on_a_worker_that_is_gone_is_a_422(container: SkillRoute,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed load's clean-up (`forget`) is one more call to a worker that may be gone: it
    raised again from the handler, and registering onto a lost worker was a 500, not the 422."""
    worker = container.fleet["cpu"]

    def lost(*_: object) -> None:
        raise BackendError("worker cpu was lost mid-call")

    monkeypatch.setattr(worker, "ensure_loaded", lost)
    monkeypatch.setattr(worker, "forget", lost)
    with pytest.raises(Unprocessable, match="worker cpu was lost mid-call"):
        container.experts.check_loads(mock_expert("delta", "m3"))


def test_a_model_removed_mid_batch_is_unloaded_once_the_batch_is_done_with_it(
        tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removed between a batch's stages, an expert's model was unloaded at once; the batch's later
    stage (routed before the removal) loaded it again, and it stayed resident with nothing on it."""
    c = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1"), mock_expert("gamma", "m2")]),
                   factory=mock_or_real, embedder=embedder)
    c.bootstrap()
    cpu, alpha, removed = c.fleet["cpu"], eid(c, "alpha"), threading.Event()
    loads_before = cpu.residency_counts()["mock:m1"][0]

    def removing_after_m2(jobs: Sequence[Job], worker: DeviceWorker, keep_last: str | None = None,
                          progress: Progress | None = None, chunk: int = 16, emit: Emit | None = None
                          ) -> dict[str, Generation]:
        def hand_on(done: dict[str, Generation]) -> None:  # between chunks: the worker is free
            assert emit is not None
            emit(done)
            if {j.base.key for j in jobs if j.job_id in done} == {"mock:m2"} and not removed.is_set():
                removed.set()
                c.experts.remove(alpha)  # m1's stage, alpha's job, is still to come
        return execute(jobs, worker, keep_last, progress, chunk, hand_on)

    monkeypatch.setattr(c.fleet, "executor", removing_after_m2)
    try:
        c.queries.submit([Ask(text="gamma question?", expert="gamma"), Ask(text="alpha question?", expert="alpha")]
                         ).result(60)
        for thread in [t for t in threading.enumerate() if t.name.startswith("release-")]:
            thread.join(30)  # the unload deferred until the batch was done with m1
        assert removed.is_set() and "mock:m1" not in cpu.resident()
        assert cpu.residency_counts()["mock:m1"][0] == loads_before  # never loaded again
    finally:
        c.close()
