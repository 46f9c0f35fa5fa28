"""Weighted voting: log-odds weights, abstentions, order-free ties, the router's weights."""

from __future__ import annotations

import math
import random

import pytest

from orchestrator.aggregation.vote import log_odds_weight, weighted_vote


def test_log_odds_weight_is_zero_at_chance_and_grows_with_accuracy() -> None:
    assert log_odds_weight(0.1, 10) == pytest.approx(1e-6)
    assert log_odds_weight(0.5, 10) == pytest.approx(math.log(9))
    assert log_odds_weight(0.9, 4) > log_odds_weight(0.6, 4) > log_odds_weight(0.3, 4)


def test_weighted_vote_sums_weights_and_ignores_abstentions() -> None:
    answers = [("strong", "A"), ("weak1", "B"), ("weak2", "B"), ("silent", None)]
    assert weighted_vote(answers, {"strong": 3.0, "weak1": 1.0, "weak2": 1.0, "silent": 9.0}).answer == "A"
    result = weighted_vote(answers, {"strong": 1.5, "weak1": 1.0, "weak2": 1.0})
    assert (result.answer, result.confidence) == ("B", pytest.approx(2 / 3.5))
    assert weighted_vote([("x", None)], {"x": 1.0}).answer is None


def test_vote_ties_break_by_heaviest_voter_then_letter_whatever_the_order() -> None:
    weights = {"a": 2.0, "b": 1.0, "c": 1.0, "d": 2.0}
    answers = [("a", "C"), ("b", "D"), ("c", "D")]
    for _ in range(5):
        random.shuffle(answers)
        assert weighted_vote(answers, weights).answer == "C"
    assert weighted_vote([("a", "B"), ("d", "A")], weights).answer == "A"
