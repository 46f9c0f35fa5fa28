"""The planner's order and the executor's promises: each base model loads at most once, and a
greedy request repeated in a batch is generated once."""

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, GenerationRequest, SamplingParams
from orchestrator.scheduling.executor import CHUNK_TOKENS, coalesce, execute, job_tokens
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


def job(job_id: str, base: BaseModelSpec, text: str, temperature: float = 0.0, seed: int | None = None) -> Job:
    sampling = SamplingParams(temperature=temperature, seed=seed)
    return Job(job_id, base, GenerationRequest(request_id=f"r{job_id}", sampling=sampling,
                                               messages=[{"role": "user", "content": text}]))


def test_a_repeated_greedy_request_runs_once_and_every_job_gets_its_reply():
    jobs = [job("0:0", BASES[0], "q0", seed=1), job("0:1", BASES[0], "q0", seed=2),  # same expert drawn twice
            job("1:0", BASES[0], "q0"), job("1:1", BASES[1], "q0"), job("2:0", BASES[0], "q2")]
    w = worker(budget_models=2)
    seen: list[tuple[int, int]] = []
    out = execute(jobs, w, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5)  # the copies count as done
    backend = w.backend(BASES[0])
    assert isinstance(backend, MockBackend) and backend.generate_calls == 1
    assert sorted(out) == sorted(j.job_id for j in jobs)
    assert out["0:0"].text == out["0:1"].text == out["1:0"].text != out["2:0"].text
    assert [out[j.job_id].request_id for j in jobs] == [j.request.request_id for j in jobs]
    unique, copies = coalesce(jobs)
    assert [j.job_id for j in unique] == ["0:0", "1:1", "2:0"]
    assert [j.job_id for j in copies["0:0"]] == ["0:1", "1:0"]


@pytest.mark.parametrize("differ", ["sampled", "model", "max_tokens", "timeout_s"])
def test_requests_that_may_reply_differently_all_run(differ: str):
    a = job("a", BASES[0], "q", temperature=0.7 if differ == "sampled" else 0.0, seed=1)
    b = job("b", BASES[1] if differ == "model" else BASES[0], "q",
            temperature=0.7 if differ == "sampled" else 0.0, seed=2)
    if differ == "max_tokens":
        b.request.sampling.max_tokens = 3
    if differ == "timeout_s":
        b.request.timeout_s = 0.1
    unique, copies = coalesce([a, b])
    assert [j.job_id for j in unique] == ["a", "b"] and copies == {}


def test_a_repeat_with_its_own_time_limit_keeps_its_own_timeout():
    """Two experts over one model and prompt, one with a time limit it cannot meet: the timeout
    is that request's alone, the one without a limit still gets its reply."""
    strict, patient = job("strict", BASES[0], "q"), job("patient", BASES[0], "q")
    strict.request.timeout_s = 0.01
    w = DeviceWorker("cpu", 2**30, lambda spec: MockBackend(spec.key, delay_s=0.05))
    out = execute([strict, patient], w)
    assert out["strict"].error is not None and "timed out" in out["strict"].error
    assert out["patient"].error is None and out["patient"].text


def test_short_jobs_run_first_and_a_long_one_runs_alone():
    """Within a stage: shortest predicted work first, and a chunk never holds more than
    CHUNK_TOKENS of it, so a short query waits for at most one long job on its device."""
    long_text = "word " * 4000  # ~5,300 tokens: over a chunk's budget on its own
    jobs = [job("long", BASES[0], long_text), *(job(f"s{i}", BASES[0], f"short {i}") for i in range(20))]
    w = worker(budget_models=1)
    order: list[list[str]] = []
    out = execute(jobs, w, emit=lambda done: order.append(sorted(done)))
    assert sorted(out) == sorted(j.job_id for j in jobs)
    assert "long" not in {x for chunk in order[:-1] for x in chunk}  # every short one before it
    assert order[-1] == ["long"] and [len(c) for c in order] == [16, 4, 1]
    assert job_tokens(jobs[0]) > CHUNK_TOKENS > job_tokens(jobs[1]) * 16


def test_a_model_that_computes_requests_one_after_another_hands_each_reply_on_as_it_is_done():
    """llama.cpp runs a call's requests in turn: a call of 16 held every reply (and a profiling
    run's progress: 0/16 for three minutes, then 16/16) until the last was done."""
    base = BaseModelSpec(kind="llamacpp", source="/m.gguf")
    w = DeviceWorker("cpu", 2**30, lambda spec: MockBackend(spec.key))
    handed: list[list[str]] = []
    out = execute([job(f"q{i}", base, f"question {i}") for i in range(3)], w, emit=lambda d: handed.append(sorted(d)))
    assert [len(h) for h in handed] == [1, 1, 1] and len(out) == 3
    assert w.backend(base).generate_calls == 3  # type: ignore[attr-defined]


class WontLoad(MockBackend):
    """A model whose load fails (unreadable weights), counting the attempts."""

    def load(self) -> None:
        self.loads += 1
        raise RuntimeError("weights unreadable")


@pytest.mark.parametrize("order", ["alone", "last stage", "first stage"])
def test_a_model_that_will_not_load_is_tried_once_and_fails_its_own_jobs_alone(order: str):
    broken = BaseModelSpec(kind="mock", source="broken")
    backends: dict[str, MockBackend] = {}

    def factory(spec: BaseModelSpec) -> MockBackend:
        return backends.setdefault(spec.key, WontLoad(spec.key) if spec == broken else MockBackend(spec.key))

    bad = [job(f"b{i}", broken, f"q{i}") for i in range(64)]
    good = [] if order == "alone" else [job(f"g{i}", BASES[0], f"q{i}") for i in range(8)]
    w = DeviceWorker("cpu", factory=factory)
    out = execute([*bad, *good] if order == "first stage" else [*good, *bad], w)
    assert backends[broken.key].loads == 1  # once for the batch, not once per chunk of 16
    assert all(out[j.job_id].error and "weights unreadable" in out[j.job_id].error for j in bad)
    assert all(out[j.job_id].error is None for j in good)


def test_a_next_model_that_cannot_prefetch_fails_its_own_stage_not_the_one_running():
    class Unreadable(MockBackend):
        loads_in_background = True  # as a vLLM backend, which checks its folder for memory_bytes

        def memory_bytes(self) -> int:
            raise RuntimeError("model-00001.safetensors is not a complete safetensors file")

    broken = BaseModelSpec(kind="mock", source="broken")
    w = DeviceWorker("gpu0", factory=lambda s: Unreadable(s.key) if s == broken else MockBackend(s.key))
    out = execute([job("good-1", BASES[0], "q1"), job("good-2", BASES[0], "q2"), job("bad", broken, "q3")], w)
    assert out["good-1"].error is None and out["good-2"].error is None
    assert out["bad"].error and "safetensors" in out["bad"].error


def test_the_kept_aggregator_gives_way_when_the_next_models_do_not_fit_beside_it():
    """`keep_last` keeps the aggregator's model resident between batches only where memory
    allows: a worker that fits one model loaded the experts' beside it, past its budget."""
    w = worker(budget_models=1)
    peak = 0

    def sample(done: dict[str, object]) -> None:
        nonlocal peak
        peak = max(peak, sum(w.backend(b).memory_bytes() for b in BASES if w.backend(b).is_loaded))

    execute([job("agg", BASES[3], "aggregate")], w, keep_last=BASES[3].key)
    execute([job("a", BASES[0], "qa"), job("b", BASES[1], "qb")], w, keep_last=BASES[3].key, emit=sample)
    assert peak <= w.memory_budget
