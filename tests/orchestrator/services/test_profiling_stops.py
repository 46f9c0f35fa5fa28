"""A profiling run under way on the mock pool: removing its expert stops it (its remaining
questions dropped, nothing stored for it, the rest of the run and the queue going on); disabling
it does not, and enabling it again waits for that run (or the queued one) instead of queueing a
second."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, Generation, GenerationRequest
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import ArithmeticSource, PoolConfig, ValidationConfig
from orchestrator.scheduling.executor import CHUNK_JOBS
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from orchestrator.scheduling.worker import DeviceWorker, claims
from orchestrator.services.expert_changes import ExpertChange, next_status
from orchestrator.services.profiling_portions import PORTION_CHUNKS, PortionedRun, portions
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings

WAIT_S = 30
PORTION = PORTION_CHUNKS * CHUNK_JOBS
PROFILING_JOB = re.compile(r"(\d+):\d+")  # `ProfilingService._job`: expert id, question row id


@dataclass
class Held:
    """The mock pool (alpha and beta on m1, ready) whose generations wait on `gate` (open at first);
    `entered` is set when one waits, `asked` counts each expert's profiling generations, and the
    bases in `down` fail every generation."""

    c: SkillRoute
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    asked: Counter[int] = field(default_factory=Counter)
    down: set[str] = field(default_factory=set)

    def profiling(self, name: str, base: str) -> int:
        """Register an expert whose profiling run is then generating, held at the closed gate."""
        self.gate.clear()
        self.entered.clear()
        expert_id = self.c.experts.register(mock_expert(name, base)).id
        assert self.entered.wait(WAIT_S)
        return expert_id

    def questions(self) -> int:
        return len(self.c.profiler.validation_set())


@pytest.fixture
def held(tmp_path: Path, embedder: Embedder) -> Iterator[Held]:
    counting = threading.Lock()
    h: Held

    def wait(request: GenerationRequest) -> float:
        if m := PROFILING_JOB.fullmatch(request.request_id):
            with counting:
                h.asked[int(m.group(1))] += 1
        h.entered.set()
        assert h.gate.wait(WAIT_S), "the test never opened the gate"
        return 0.0

    def backend(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, delay_s=wait, fault=lambda _: "backend down" if spec.key in h.down else None)

    experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona")]
    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=40)]), experts=experts)
    h = Held(SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=backend))
    h.gate.set()
    h.c.bootstrap()
    assert h.questions() > PORTION  # a run of one expert takes more than one portion
    yield h
    h.gate.set()
    h.c.close()


def stored_answers(c: SkillRoute, expert_id: int) -> int:
    with c.db.session() as s:
        return len(ValidationRepository(s).answers([expert_id]))


def test_removing_an_expert_stops_its_profiling_and_stores_nothing_for_it(held: Held) -> None:
    c = held.c
    delta = held.profiling("delta", "m3")
    assert c.experts.remove(delta).status == "removed"
    held.gate.set()
    c.experts.queue.join()
    row = c.experts.get(delta)
    assert held.asked[delta] <= PORTION < held.questions()  # the portion under way, then no more
    assert row.status == "removed" and row.accuracy is None and stored_answers(c, delta) == 0
    assert row.progress_done <= PORTION
    assert "mock:m3" not in c.fleet["cpu"].resident()


def test_removing_one_expert_of_a_run_profiles_the_others_whole(held: Held) -> None:
    c, n = held.c, held.questions()
    delta = c.experts.register(mock_expert("delta", "m3"), profile=False).id
    eps = c.experts.register(mock_expert("eps", "m4"), profile=False).id
    bar: list[tuple[int, int]] = []
    held.gate.clear()
    run = threading.Thread(target=c.experts.profile_now, args=([delta, eps], lambda d, t: bar.append((d, t))))
    run.start()
    assert held.entered.wait(WAIT_S)
    c.experts.remove(delta)
    held.gate.set()
    run.join(WAIT_S)
    assert not run.is_alive()
    kept, removed = c.experts.get(eps), c.experts.get(delta)
    assert kept.status == "ready" and kept.accuracy is not None and held.asked[eps] == n
    assert (kept.progress_done, kept.progress_total) == (n, n) and stored_answers(c, eps) == n
    assert removed.accuracy is None and stored_answers(c, delta) == 0 and held.asked[delta] < n
    assert bar[-1][0] == bar[-1][1] == held.asked[delta] + n  # the bar ends full, less what was dropped


def test_disabling_and_enabling_an_expert_being_profiled_queues_no_second_run(held: Held) -> None:
    c = held.c
    delta = held.profiling("delta", "m3")
    assert c.experts.update(delta, ExpertChange(enabled=False))[0].status == "disabled"
    row, profiling = c.experts.update(delta, ExpertChange(enabled=True))
    assert (row.status, profiling) == ("profiling", False)  # its run under way goes on
    held.gate.set()
    c.experts.queue.join()
    assert c.experts.get(delta).status == "ready" and held.asked[delta] == held.questions()


def test_disabling_and_enabling_an_expert_whose_run_is_queued_queues_no_second_run(held: Held) -> None:
    c = held.c
    eps = c.experts.register(mock_expert("eps", "m4"), profile=False).id
    held.profiling("delta", "m3")  # the queue's run under way: eps's waits behind it
    c.experts.queue.submit([eps])  # as a start hands over the experts it left unprofiled
    c.experts.update(eps, ExpertChange(enabled=False))
    row, profiling = c.experts.update(eps, ExpertChange(enabled=True))
    assert (row.status, profiling) == ("profiling", False)
    held.gate.set()
    c.experts.queue.join()
    assert c.experts.get(eps).status == "ready" and held.asked[eps] == held.questions()


def test_an_expert_enabled_after_its_run_kept_its_failure_is_profiled_again(
        held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disabled mid-run, its failed run left it disabled; enabled while that run still chose the
    aggregator, it waited for the run, which then queues it again rather than leaving it `profiling`."""
    c = held.c
    choosing, resume = threading.Event(), threading.Event()
    choose = c.profiler.choose_aggregator

    def held_choice() -> str | None:
        choosing.set()
        assert resume.wait(WAIT_S)
        return choose()

    monkeypatch.setattr(c.profiler, "choose_aggregator", held_choice)
    held.down.add("mock:m3")
    delta = c.experts.register(mock_expert("delta", "m3"), profile=False).id
    c.experts.update(delta, ExpertChange(enabled=False))
    c.experts.queue.submit([delta])
    assert choosing.wait(WAIT_S)  # every answer failed, its status kept: disabled
    assert c.experts.get(delta).status == "disabled" and c.experts.get(delta).accuracy is None
    row, profiling = c.experts.update(delta, ExpertChange(enabled=True))
    assert (row.status, profiling) == ("profiling", False)
    held.down.clear()  # its server is back
    resume.set()
    c.experts.queue.join()
    assert c.experts.get(delta).status == "ready"


def test_a_failed_expert_enabled_while_its_run_ends_is_profiled_once_more(
        held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed by its run and enabled while that run still chose the aggregator: the PATCH queued a
    run and the run's end queued it again (three runs of it, not two)."""
    c = held.c
    choosing, resume = threading.Event(), threading.Event()
    choose, real, runs = c.profiler.choose_aggregator, c.experts.profile_now, []

    def held_choice() -> str | None:
        choosing.set()
        assert resume.wait(WAIT_S)
        return choose()

    def counted(ids: list[int], *args: object, **kwargs: object) -> None:
        runs.append(list(ids))
        real(ids, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(c.profiler, "choose_aggregator", held_choice)
    monkeypatch.setattr(c.experts, "profile_now", counted)
    held.down.add("mock:m3")
    delta = c.experts.register(mock_expert("delta", "m3"), profile=False).id
    c.experts.queue.submit([delta])
    assert choosing.wait(WAIT_S) and c.experts.get(delta).status == "failed"
    held.down.clear()
    row, profiling = c.experts.update(delta, ExpertChange(enabled=True))
    assert (row.status, profiling) == ("profiling", False)  # its run, still ending, queues it again
    resume.set()
    c.experts.queue.join()
    assert sum(r.count(delta) for r in runs) == 2 and c.experts.get(delta).status == "ready"


def test_a_progress_report_that_raises_ends_the_run_all_the_same() -> None:
    """The last reply's report (a store write, done == total) raised inside the run's lock: the
    run waited for good, its expert in flight and the profiling queue behind it stuck. Each reply
    here comes once the run waits again, as replies generated one by one do."""
    waits, seen, waited = [0], [0], threading.Condition()

    def executor(jobs: list[Job], worker: object, keep_last: str | None = None, emit: object = None,
                 **_: object) -> dict[str, object]:
        for j in jobs:
            with waited:
                assert waited.wait_for(lambda: waits[0] > seen[0], WAIT_S)
                seen[0] = waits[0]
            emit({j.job_id: Generation(request_id=j.job_id, text="ok")})  # type: ignore[operator]
        return {}

    def progress(done: int, total: int) -> None:
        if done == total:
            raise RuntimeError("database is locked")

    spec = mock_expert("a", "m1")
    jobs = [Job(f"1:{i}", spec.base, spec.request(f"1:{i}", f"question {i}")) for i in range(40)]
    fleet = Fleet({"w": DeviceWorker("w")}, executor=executor)
    run = PortionedRun(fleet, {"w": jobs}, lambda ids: set(), progress)
    wait = run._cond.wait

    def counted(timeout: float | None = None) -> bool:
        with waited:
            waits[0] += 1
            waited.notify_all()
        return wait(timeout)

    run._cond.wait = counted  # type: ignore[method-assign]
    finished = threading.Thread(target=run.run, daemon=True)
    finished.start()
    finished.join(WAIT_S)
    assert not finished.is_alive() and len(run.out) == 40


def test_a_run_claims_the_models_its_later_portions_need() -> None:
    """Each portion claimed only its own model: between two, a query batch's load could evict the
    model the next portion needed (loaded again chunk after chunk on a device too small for both)."""
    a, b = mock_expert("a", "m1"), mock_expert("b", "m2")
    jobs = [Job(f"{e}:{q}", spec.base, spec.request(f"{e}:{q}", f"question {q}"))
            for q in range(20) for e, spec in ((1, a), (2, b))]
    worker = DeviceWorker("w")
    needed: list[set[str]] = []

    def executor(part: list[Job], on: DeviceWorker, keep_last: str | None = None, emit: object = None,
                 **_: object) -> dict[str, object]:
        needed.append(claims(on).needed())  # what another batch's load spares while this portion runs
        emit({j.job_id: Generation(request_id=j.job_id, text="ok") for j in part})  # type: ignore[operator]
        return {}

    PortionedRun(Fleet({"w": worker}, executor=executor), {"w": jobs}, lambda ids: set()).run()
    assert needed[0] == {"mock:m1", "mock:m2"}  # the first portion, m1's alone: m2 is claimed for later
    assert needed[-1] == {"mock:m2"} and claims(worker).needed() == set()  # done with m1; all freed at the end


@pytest.mark.parametrize(("profiled", "persona", "pending", "expected"), [
    (False, False, True, ("profiling", False)), (False, False, False, ("profiling", True)),
    (True, False, True, ("ready", False)), (False, True, True, ("profiling", True)),
])
def test_enabling_a_disabled_expert_waits_for_its_pending_run(profiled: bool, persona: bool, pending: bool,
                                                              expected: tuple[str, bool]) -> None:
    assert next_status("disabled", profiled, True, persona, pending) == expected


def test_portions_keep_each_base_model_together() -> None:
    """A question's jobs come together (`ProfilingService.profile`); cut, each base still runs
    once, the resident one first, in portions of PORTION jobs."""
    specs = [mock_expert("a", "m1"), mock_expert("b", "m2"), mock_expert("c", "m1")]
    jobs = [Job(f"{e}:{q}", spec.base, spec.request(f"{e}:{q}", f"question {q}"))
            for q in range(30) for e, spec in enumerate(specs)]
    cut = portions(jobs, resident={"mock:m2"})
    bases = [j.base.key for p in cut for j in p]
    assert bases == ["mock:m2"] * 30 + ["mock:m1"] * 60
    assert [len(p) for p in cut] == [PORTION] * (90 // PORTION) + ([90 % PORTION] if 90 % PORTION else [])
    assert sorted(j.job_id for p in cut for j in p) == sorted(j.job_id for j in jobs)
