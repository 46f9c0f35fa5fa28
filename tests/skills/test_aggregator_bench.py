"""Synthetic aggregator tasks and the aggregator pick."""

from __future__ import annotations

import pytest

from skills.aggregator_bench import build_synthetic_tasks, pick_aggregator, synthetic_accuracy
from skills.datasets import LabelledQuestion


def _q(i: int) -> LabelledQuestion:
    return LabelledQuestion(f"q{i}", f"Question {i}?", ("x", "y", "z", "w"), "B", "s")


def _chains(n_right: int, n_wrong: int) -> list[tuple[str, bool]]:
    right = [(f"right {j}. Answer: B", True) for j in range(n_right)]
    return right + [(f"wrong {j}. Answer: C", False) for j in range(n_wrong)]


def test_each_task_has_one_correct_and_two_wrong() -> None:
    questions = [_q(i) for i in range(6)]
    chains = {q.id: _chains(2, 3) for q in questions}
    tasks = build_synthetic_tasks(questions, chains, n_tasks=6, seed=0)
    assert len(tasks) == 6
    for t in tasks:
        assert len(t.responses) == 3
        assert sum(r.startswith("right") for r in t.responses) == 1
        assert t.responses[t.correct_index].startswith("right")
    assert len({t.correct_index for t in tasks}) > 1  # shuffled, not always first


def test_questions_without_enough_chains_are_skipped() -> None:
    questions = [_q(i) for i in range(4)]
    chains = {"q0": _chains(0, 3), "q1": _chains(1, 1), "q2": _chains(1, 2)}
    tasks = build_synthetic_tasks(questions, chains, n_tasks=10)
    assert [t.question.id for t in tasks] == ["q2"]


def test_tasks_are_deterministic_by_seed_and_capped() -> None:
    questions = [_q(i) for i in range(20)]
    chains = {q.id: _chains(3, 4) for q in questions}
    a = build_synthetic_tasks(questions, chains, n_tasks=5, seed=7)
    assert a == build_synthetic_tasks(questions, chains, n_tasks=5, seed=7)
    assert len(a) == 5
    assert a != build_synthetic_tasks(questions, chains, n_tasks=5, seed=8)


def test_synthetic_accuracy_grades_outputs() -> None:
    tasks = build_synthetic_tasks([_q(0), _q(1)], {"q0": _chains(1, 2), "q1": _chains(1, 2)}, 2)
    assert synthetic_accuracy(tasks, ["Answer: B", "Answer: C"]) == 0.5
    with pytest.raises(ValueError):
        synthetic_accuracy(tasks, ["Answer: B"])


def test_pick_aggregator_accuracy_then_competence_then_name() -> None:
    assert pick_aggregator({"a": 0.5, "b": 0.7}, {"a": 0.9, "b": 0.1}) == "b"
    assert pick_aggregator({"a": 0.7, "b": 0.7}, {"a": 0.2, "b": 0.3}) == "b"
    assert pick_aggregator({"b": 0.7, "a": 0.7}, {}) == "a"
    with pytest.raises(ValueError):
        pick_aggregator({}, {})
