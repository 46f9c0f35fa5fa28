"""The planner's order and the executor's promise: each base model loads at most once."""

from experts.mock import MockBackend
from experts.types import BaseModelSpec, GenerationRequest
from orchestrator.scheduling.executor import execute
from orchestrator.scheduling.planner import Job, loads_floor, plan_stages
from orchestrator.scheduling.worker import DeviceWorker

BASES = [BaseModelSpec(kind="mock", source=f"m{i}") for i in range(4)]


def jobs_for(n_queries: int, k: int) -> list[Job]:
    out = []
    for q in range(n_queries):
        for j in range(k):
            base = BASES[(q * 7 + j * 3) % len(BASES)]
            out.append(Job(f"{q}:{j}", base, GenerationRequest.model_validate(
                {"request_id": f"{q}:{j}", "messages": [{"role": "user", "content": f"q{q}"}]})))
    return out


def worker(budget_models: int) -> DeviceWorker:
    return DeviceWorker("cpu", budget_models * 100 * 2**20, lambda spec: MockBackend(spec.key))


def test_stages_group_by_model_resident_first_and_keep_last_at_the_end():
    jobs = jobs_for(10, 3)
    stages = plan_stages(jobs, resident={BASES[2].key}, keep_last=BASES[0].key)
    assert stages[0].key == BASES[2].key
    assert stages[-1].key == BASES[0].key
    assert sorted(len(s.jobs) for s in stages) == sorted(
        sum(1 for j in jobs if j.base.key == b.key) for b in BASES)
    assert [j.job_id for j in stages[0].jobs] == [j.job_id for j in jobs if j.base.key == BASES[2].key]


def test_batch_loads_each_model_once_even_when_only_one_fits():
    w = worker(budget_models=1)
    jobs = jobs_for(20, 3)
    out = execute(jobs, w, chunk=4)
    assert set(out) == {j.job_id for j in jobs}
    assert w.total_loads() == loads_floor(jobs, set()) == 4
    assert all(out[j.job_id].request_id == j.job_id for j in jobs)


def test_resident_models_cost_no_load_and_keep_last_stays_resident():
    w = worker(budget_models=2)
    first = jobs_for(5, 3)
    execute(first, w, keep_last=BASES[1].key)
    assert BASES[1].key in w.resident()
    before = w.total_loads()
    again = [j for j in jobs_for(5, 3) if j.base.key == BASES[1].key]
    execute(again, w)
    assert w.total_loads() == before  # the aggregator's model was kept: no reload


def test_floor_counts_only_non_resident_models():
    jobs = jobs_for(20, 3)
    assert loads_floor(jobs, {BASES[0].key, BASES[1].key}) == 2
