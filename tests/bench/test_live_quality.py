"""The live-quality benchmark's questions and report, over mock weights.

The real run (the embedded pool's llama.cpp models, about half an hour) is `bench/live_quality.py`;
here the pool is two mock experts, so what is checked is what the bench asks and reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from skills.datasets import load_mmlu
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool


def test_the_questions_are_held_out_from_profiling_and_spread_over_subjects(
        load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("live_quality")
    questions = bench.held_out(100, seed=0)
    validation = {q.id for q in load_mmlu("validation")}
    assert len({q.id for q in questions}) == 100 and not {q.id for q in questions} & validation
    assert len({q.subject for q in questions}) >= 40
    assert [q.id for q in bench.held_out(100, seed=0)] == [q.id for q in questions]


def test_every_arm_is_reported_with_its_interval(load_bench: Callable[[str], ModuleType], tmp_path: Path,
                                                embedder: Embedder) -> None:
    bench = load_bench("live_quality")
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    res = bench.run(8, 2, 0, pool, quiet_settings(tmp_path), factory=mock_or_real, embedder=embedder)
    assert set(res["experts"]) == {"alpha", "beta"} and res["best_single"] in res["experts"]
    for arm in [res["routed"], *res["experts"].values()]:
        assert 0 <= arm["low"] <= arm["accuracy"] <= arm["high"] <= 1 and arm["hits"] == round(8 * arm["accuracy"])
    best = res["experts"][res["best_single"]]["accuracy"]
    assert res["routed_minus_best"] == round(100 * (res["routed"]["accuracy"] - best), 2)
