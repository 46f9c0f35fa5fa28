"""Per-letter answer reliability: a vote for a letter an expert picks by habit counts less."""

from __future__ import annotations

import numpy as np

from orchestrator.aggregation.reliability import AnswerReliability
from orchestrator.aggregation.vote import weighted_vote


def test_answer_reliability_discounts_a_letter_the_expert_picks_by_habit() -> None:
    """"biased" says A half the time and is then right 10% of the time; elsewhere 70%."""
    rng = np.random.default_rng(5)
    says_a = rng.random(600) < 0.5
    right = np.where(says_a, rng.random(600) < 0.1, rng.random(600) < 0.7)
    choices = ["A" if a else "BCD"[i % 3] for i, a in enumerate(says_a)]
    reliability = AnswerReliability({"biased": right}, {"biased": choices})
    assert reliability.offset("biased", "A") < -1.0 < 0.5 < reliability.offset("biased", "B")
    assert reliability.offset("biased", "J") == 0.0 and reliability.offset("other", "A") == 0.0
    weights = {"biased": 2.0, "steady": 1.5}
    assert weighted_vote([("biased", "A"), ("steady", "C")], weights).answer == "A"
    assert weighted_vote([("biased", "A"), ("steady", "C")], weights, reliability).answer == "C"


def test_answer_reliability_shrinkage_grows_when_letters_carry_no_signal() -> None:
    rng = np.random.default_rng(6)
    right = rng.random(2000) < 0.5
    choices = [rng.choice(list("ABCD")) for _ in range(2000)]
    assert AnswerReliability({"x": right}, {"x": choices}).smoothing >= 50.0
