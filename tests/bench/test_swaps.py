"""The swaps benchmark's recruitment and accounting, end to end over mock weights.

The real run (llama.cpp, minutes) is `bench/swaps.py`; here every base model of the bench pool
is a mock, so what is checked is what the bench reports, not how fast the models are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from orchestrator.domain import Decision
from skills.embedder import get_embedder


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("swaps")


def decision(seed: int, recruited: list[str]) -> Decision:
    return Decision(recruited=recruited, aggregator="agg", router="symbolic", mode="sample", seed=seed)


def test_uniform_recruits_spread_over_the_pool_reproducibly(bench: ModuleType) -> None:
    routed = [decision(seed, ["best"] * 3) for seed in range(60)]  # a router that always draws one expert
    experts = ["best", "middling", "poor"]
    drawn = bench.uniform_recruits(routed, experts, 3)
    assert drawn == bench.uniform_recruits(routed, list(reversed(experts)), 3)  # seeded, order-free
    assert len(drawn) == len(routed)
    assert all(len(d.recruited) == 3 and d.seed == r.seed and d.aggregator == "agg"
               for d, r in zip(drawn, routed, strict=True))
    counts = Counter(name for d in drawn for name in d.recruited)
    assert set(counts) == set(experts) and min(counts.values()) > 40  # 180 draws, 60 expected each
    assert any(len(set(d.recruited)) < 3 for d in drawn)  # with replacement, as the router draws
    assert routed[0].recruited == ["best"] * 3  # the routed decisions are left as they were


def test_bench_reports_loads_at_the_floor_and_identical_answers(bench: ModuleType, tmp_path: Path) -> None:
    backends: dict[str, MockBackend] = {}

    def mocks(spec: BaseModelSpec) -> MockBackend:
        return backends.setdefault(spec.key, MockBackend(spec.key))

    res = bench.run(6, 3, 8, tmp_path, "uniform", factory=mocks, embedder=get_embedder())
    assert res["base_models"] == 3 == len(res["expert_calls_by_base"])
    assert res["expert_calls"] == 18 == sum(res["expert_calls_by_base"].values())
    assert 6 <= res["expert_generations_ours"] < 18  # experts drawn twice for a query run once
    assert res["loads_ours"] == res["loads_floor"] == 3
    assert res["loads_naive"] == 18 + 6  # every expert call and every aggregation loads its model
    assert res["identical_answers"] is True
    assert res["wall_ratio_naive_over_ours"] > 0 and min(res["load_s_naive"], res["load_s_ours"]) >= 0


def test_the_vllm_variant_runs_the_same_models_with_room_for_all_three(bench: ModuleType, tmp_path: Path) -> None:
    llama, vllm = bench.bench_pool(8), bench.bench_pool(8, "vllm")
    assert [e.base.kind for e in vllm.experts] == ["vllm"] * 3
    assert [e.base.source for e in vllm.experts] == [e.base.source for e in llama.experts]
    budgets = [bench.bench_settings(tmp_path, b).backends.memory_budget_gb for b in ("vllm", "llamacpp")]
    assert budgets[0] >= 16 > budgets[1]  # three float32 engines: 0.5 + 2.4 + 6.8 GB
