"""Weighted voting: log-odds weights, abstentions, order-free ties, the router's weights, and
the `auto` aggregation's vote on lettered questions."""

from __future__ import annotations

import math
import random

import pytest

from orchestrator.aggregation.vote import lettered_vote, log_odds_weight, option_count, vote_answer, weighted_vote
from orchestrator.routing.recruit import score


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


LETTERED = "Which gas do plants take in?\nA. Oxygen\nB) Carbon dioxide\n(C) Helium\nReply with 'Answer: <letter>'."


def test_option_count_reads_the_lettered_option_lines_in_a_row() -> None:
    assert option_count(LETTERED) == 3
    assert option_count("What is 17*23?") == 0
    assert option_count("Pick one:\nB. two\nC. three") == 0  # no A: not a list of options
    assert option_count("Q\nA. x\nB. y\nD. z") == 2


def test_lettered_vote_keeps_the_heaviest_backer_s_reasoning() -> None:
    scores = [score("big", 1.0, 0.6, 2.0), score("small", 1.0, 0.3, 0.5), score("tiny", 1.0, 0.2, 0.4)]
    answers = [("small", "Answer: A. Oxygen feeds them."), ("big", "Answer: B, they fix carbon."),
               ("tiny", "Answer: A")]
    assert lettered_vote(LETTERED, answers, scores) == "Answer: B, they fix carbon."  # 2.0 > 0.5 + 0.4
    heavier = [score("big", 1.0, 0.6, 0.8), *scores[1:]]
    assert lettered_vote(LETTERED, answers, heavier) == "Answer: A. Oxygen feeds them."  # 0.9 > 0.8


def test_lettered_vote_leaves_free_text_and_unlettered_answers_to_the_aggregator() -> None:
    scores = [score("big", 1.0, 0.6, 2.0), score("small", 1.0, 0.3, 0.5)]
    assert lettered_vote("What is 17*23?", [("big", "Answer: 391"), ("small", "Answer: 401")], scores) is None
    assert lettered_vote(LETTERED, [("big", "Answer: B"), ("small", "Plants breathe.")], scores) is None
    assert lettered_vote(LETTERED, [("big", "Answer: B"), ("small", "Answer: F")], scores) is None  # no option F


def test_the_vote_mode_reads_letters_among_the_question_s_own_options() -> None:
    """Read with all 16 letters valid, an "E" to a four-option question won over a "B"."""
    question = "Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium"
    answers = [("strong", "Answer: E"), ("weak", "Answer: B")]
    scores = [score("strong", 0.9, 0.5, 2.0), score("weak", 0.6, 0.5, 1.0)]
    assert vote_answer(answers, scores, question=question).answer == "B"


def test_a_question_without_lettered_options_has_nothing_to_vote_on() -> None:
    """Read with every letter valid, "Answer: I don't know" was a vote for "I" and outvoted two
    "Answer: Paris": the reply was "Answer: I". No result: the caller falls back."""
    scores = [score("a", 0.9, 0.9, 2.0), score("b", 0.8, 0.8, 1.5), score("c", 0.7, 0.7, 1.5)]
    answers = [("a", "Answer: I don't know"), ("b", "Answer: Paris"), ("c", "Answer: Paris")]
    for question in ("What is the capital of France?", ""):
        assert vote_answer(answers, scores, question=question).answer is None
    assert vote_answer([("a", "Answer: E"), ("b", "Answer: B")], scores[:2]).answer is None
