"""The live-quality benchmark's questions and report, over mock weights.

The real run (the embedded pool's llama.cpp models, about half an hour) is `bench/live_quality.py`;
here the pool is two mock experts, so what is checked is what the bench asks and reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from experts.mock import MockBackend
from experts.streaming import word_pieces
from experts.types import FinishReason, GenerationRequest
from orchestrator.pools.loader import load_pool_config
from orchestrator.settings import DEFAULT_POOL
from skills.datasets import arithmetic_questions, load_mmlu
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


def test_free_text_questions_are_none_the_pool_profiles_on(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("live_quality")
    pool = load_pool_config(DEFAULT_POOL)  # profiles on arithmetic drawn with its seed, 0
    profiled = {q.question for q in arithmetic_questions(4, pool.validation.seed)}
    questions = bench.held_out_arithmetic(50, 0, pool)  # the same seed: the same first draws
    assert len({q.question for q in questions}) == 50 and not {q.question for q in questions} & profiled
    assert all(not q.options and q.kind == "number" for q in questions)


def test_every_arm_is_reported_with_its_interval(load_bench: Callable[[str], ModuleType], tmp_path: Path,
                                                embedder: Embedder) -> None:
    bench = load_bench("live_quality")
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    res = bench.run(8, 2, 0, pool, quiet_settings(tmp_path), factory=mock_or_real, embedder=embedder)
    assert set(res["experts"]) == {"alpha", "beta"} and res["best_single"] in res["experts"]
    for arm in [res["routed"], *res["experts"].values()]:
        assert 0 <= arm["low"] <= arm["accuracy"] <= arm["high"] <= 1 and arm["hits"] == round(8 * arm["accuracy"])
    best = res["experts"][res["best_single"]]["accuracy"]
    assert res["questions"] == "mmlu" and set(res["profiled_accuracy"]) == {"alpha", "beta"}
    assert res["routed_minus_best"] == round(100 * (res["routed"]["accuracy"] - best), 2)


def test_an_interval_at_no_or_every_hit_is_bounded_by_zero_and_one(load_bench: Callable[[str], ModuleType]) -> None:
    bench = load_bench("live_quality")
    low, high = bench.interval(0, 60)
    assert json.dumps(round(low, 4)) == "0.0" and 0 < high < 0.1  # not "-0.0" in the report
    assert bench.interval(60, 60)[1] == 1.0


class _Crammer(MockBackend):
    """Right on the profiling questions it learned, wrong on every held-out one."""

    def __init__(self, key: str, learned: dict[str, str], held_out: dict[str, str]):
        super().__init__(key)
        self.learned, self.held_out = learned, held_out

    def _words(self, request: GenerationRequest) -> tuple[list[str], FinishReason]:
        prompt = "\n".join(m.content for m in request.messages)
        right = next((a for q, a in self.learned.items() if q in prompt), None)
        wrong = next(("ABCD".replace(a, "")[0] for q, a in self.held_out.items() if q in prompt), None)
        return word_pieces(f"Answer: {right or wrong or 'none'}"), "stop"


class _Steady(MockBackend):
    """Right on every held-out question, no answer to anything else."""

    def __init__(self, key: str, held_out: dict[str, str]):
        super().__init__(key)
        self.held_out = held_out

    def _words(self, request: GenerationRequest) -> tuple[list[str], FinishReason]:
        prompt = "\n".join(m.content for m in request.messages)
        right = next((a for q, a in self.held_out.items() if q in prompt), None)
        return word_pieces(f"Answer: {right}" if right else "I cannot tell."), "stop"


def test_the_single_expert_is_chosen_by_profiling_not_by_the_questions_it_is_scored_on(
        load_bench: Callable[[str], ModuleType], tmp_path: Path, embedder: Embedder) -> None:
    bench = load_bench("live_quality")
    held_out = {q.question.strip(): q.answer for q in bench.held_out(8, 0)}
    learned = {q.question.strip(): q.answer for q in load_mmlu("validation")}
    backends = {"m1": _Crammer("m1", learned, held_out), "m2": _Steady("m2", held_out)}
    pool = small_pool([mock_expert("crammer", "m1"), mock_expert("steady", "m2")])
    res = bench.run(8, 1, 0, pool, quiet_settings(tmp_path), factory=lambda spec: backends[spec.source],
                    embedder=embedder)
    assert res["profiled_accuracy"]["crammer"] > 0 == res["profiled_accuracy"]["steady"]
    assert res["experts"]["crammer"]["accuracy"] == 0 and res["experts"]["steady"]["accuracy"] == 1
    assert res["best_single"] == "crammer"  # what profiling tells beforehand; the test questions said steady
    assert res["routed_minus_best"] == round(100 * res["routed"]["accuracy"], 2)
    assert res["oracle_single"] == "steady"
    assert res["routed_minus_oracle"] == round(100 * (res["routed"]["accuracy"] - 1), 2)


def test_the_routed_arm_runs_no_competition_or_exploration(load_bench: Callable[[str], ModuleType],
                                                          tmp_path: Path) -> None:
    """At the service's defaults, 5 % of routed questions ran every expert as competitors: time
    the routed arm's wall clock counted, and router moves between one question and the next."""
    settings = load_bench("live_quality").bench_settings(tmp_path)
    assert settings.data_dir == tmp_path
    assert settings.learning.competition_rate == settings.learning.explore_rate == 0
