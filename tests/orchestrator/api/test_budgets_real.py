"""Budgets over the real local pool: llama.cpp experts on this CPU, the app on a real socket.

This CPU is shared and its speed moves with the load, so the service scales its `local-cpu`
profile by what its own recent generations took (`experts.calibration.Slowdown`); a few
unbudgeted warm-up queries teach it. The tight budget then gets its subset by the service's
prediction, and the measured wall time of the expert and aggregation stages must stay within it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import AggregatorConfig, ArithmeticSource, GenerationBudget, PoolConfig, ValidationConfig
from orchestrator.store.models import GenerationRow
from tests.orchestrator.conftest import quiet_settings

pytestmark = pytest.mark.slow

QWEN = BaseModelSpec(kind="llamacpp", source="package:qwen2.5-coder-0.5b-instruct")
SMOL = BaseModelSpec(kind="llamacpp", source="package:smollm2-135m-instruct")
QUESTION = "What is 12*11? Reply with the number."


def local_pool() -> PoolConfig:
    experts = [ExpertSpec(name="qwen-stem", base=QWEN, system_prompt="You are an expert in mathematics."),
               ExpertSpec(name="qwen-humanities", base=QWEN, system_prompt="You are an expert in history."),
               ExpertSpec(name="smollm2", base=SMOL)]
    tokens = GenerationBudget(profiling_max_tokens=8, expert_max_tokens=24, aggregator_max_tokens=24)
    return PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=4)]), generation=tokens,
                      aggregator=AggregatorConfig(fixed="qwen-stem"), experts=experts)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[SkillRoute]:
    # One llama.cpp thread: on a CPU other work shares, two threads spinning at barriers ran 5-40x
    # slower and far less steadily (bench/calibrate_cpu.py); the test needs steady timings.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKILLROUTE_LLAMA_THREADS", "1")
        c = SkillRoute(quiet_settings(tmp_path_factory.mktemp("budgets-real")), local_pool(), embedder=embedder)
        c.bootstrap()
        yield c
    c.close()


@pytest.fixture
def url(local: SkillRoute, serve: Any) -> Iterator[str]:
    with serve(create_app(local), 60) as base:
        yield base


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=600)


def test_profiling_costs_each_model_by_its_own_runs_before_any_query(local: SkillRoute) -> None:
    # runs first in this module: the pool's profiling (4 questions each) is all it has seen
    slowdown = local.pipeline.planner.slowdown
    assert slowdown.factor(QWEN.key) is not None and slowdown.factor(SMOL.key) is not None


def test_measured_latency_respects_a_tight_budget_on_the_local_pool(local: SkillRoute, url: str) -> None:
    warm = [post(url, "/v1/queries", {"query": q, "k": 3, "mode": "topk"}) for q in
            (QUESTION, "Name the capital of France and one fact about it.", "What is 7+8? Reply with the number.")]
    assert all(r.status_code == 200 for r in warm), [r.text for r in warm]

    loose = post(url, "/v1/queries", {"query": QUESTION, "k": 3, "latency_ms": 3_600_000}).json()["budget"]
    fastest = min(loose["candidates"], key=lambda c: c["latency_s"])
    tight_ms = 1.5 * fastest["latency_s"] * 1e3  # feasible, with room for a noisy shared CPU
    r = post(url, "/v1/queries", {"query": QUESTION, "k": 3, "latency_ms": tight_ms})
    assert r.status_code == 200, r.text
    tight = r.json()["budget"]
    assert tight["local_slowdown"] is not None  # learned from the warm-up's real generations
    print(f"local slowdown x{tight['local_slowdown']:.2f}")
    for name, b in (("loose", loose), (f"tight {tight_ms / 1e3:.2f} s", tight)):
        print(f"{name}: {b['chosen']} predicted {b['predicted_latency_s']:.2f} s / {b['predicted_energy_j']:.1f} J, "
              f"measured {b['measured_latency_s']:.2f} s / {b['measured_energy_j']:.1f} J")
    assert len(tight["chosen"]) < len(loose["chosen"])
    assert tight["predicted_latency_s"] < loose["predicted_latency_s"]
    assert tight["predicted_latency_s"] * 1e3 <= tight_ms
    assert tight["measured_latency_s"] * 1e3 <= tight_ms
    assert r.json()["answer"]


def test_an_infeasible_budget_on_the_local_pool_is_422_and_generates_nothing(local: SkillRoute, url: str) -> None:
    before = local.fleet["cpu"].total_loads(), _generations(local)
    r = post(url, "/v1/queries", {"query": QUESTION, "latency_ms": 1})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["param"] == "latency_ms" and err["fastest"]["expert"] in err["message"]
    assert (local.fleet["cpu"].total_loads(), _generations(local)) == before


def test_a_restart_costs_each_model_as_the_running_service_did(local: SkillRoute, embedder: Any) -> None:
    """Runs last: after profiling and the queries above, a restarted service (a new process's
    container on the same store) has each model's correction before its first query."""
    slowdown = local.pipeline.planner.slowdown
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKILLROUTE_LLAMA_THREADS", "1")
        restarted = SkillRoute(local.settings, local_pool(), embedder=embedder)
        try:
            restarted.bootstrap()
            again = restarted.pipeline.planner.slowdown
            assert local.fleet["cpu"].total_loads() > 0 and restarted.fleet["cpu"].total_loads() == 0
            for base in (QWEN, SMOL):
                assert again.factors(base.key) == slowdown.factors(base.key) is not None
        finally:
            restarted.close()


def _generations(local: SkillRoute) -> int:
    with local.db.session() as s:
        return s.scalar(select(func.count()).select_from(GenerationRow)) or 0
