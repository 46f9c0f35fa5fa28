"""A vote's result is the same whatever order its answers arrived in, whatever the weights."""

from __future__ import annotations

import itertools

from orchestrator.aggregation.vote import weighted_vote


def test_float_sums_do_not_depend_on_the_order() -> None:
    answers = [("a", "A"), ("b", "A"), ("c", "A"), ("d", "B")]
    weights = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.6}  # 0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1 in floats
    results = {weighted_vote(list(p), weights).answer for p in itertools.permutations(answers)}
    assert results == {"B"}  # exactly 0.6 each: the tie goes to the heaviest single voter, d


def test_a_non_finite_weight_counts_as_the_floor_whatever_the_order() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        weights = {"x": bad, "y": 1.0, "z": 0.5}
        votes = [("x", "A"), ("y", "B"), ("z", "C")]
        results = {weighted_vote(list(p), weights).answer for p in itertools.permutations(votes)}
        assert results == {"B"}, bad
