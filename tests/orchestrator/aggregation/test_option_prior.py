"""The vote's prior over options: fitted on gold letters, a trace in how options were written
moves a close vote; a set with no trace leaves it flat; only voted options can win."""

from __future__ import annotations

import math
import random

import pytest

from orchestrator.aggregation.option_prior import MIN_QUESTIONS, OptionPrior, option_features
from orchestrator.aggregation.vote import lettered_vote, weighted_vote
from orchestrator.domain import ExpertScore

LETTERS = "ABCDEFGHIJ"


def written(rng: random.Random, gold_longest: bool, m: int = 6) -> tuple[str, tuple[str, ...], str]:
    """A question whose options are random words; with `gold_longest` the gold one is written longer."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa"]
    options = [" ".join(rng.choices(words, k=rng.randint(2, 4))) for _ in range(m)]
    gold = rng.randrange(m)
    if gold_longest:
        options[gold] = " ".join(rng.choices(words, k=7))
    return "Which one?", tuple(options), LETTERS[gold]


def test_gold_written_longest_makes_the_longest_option_likelier() -> None:
    rng = random.Random(0)
    prior = OptionPrior.fit(written(rng, True) for _ in range(300))
    assert prior is not None
    ratios = prior.log_ratios("Which one?", ["a b", "a b c d e f g h", "a b c"])
    assert ratios["B"] > 0 > ratios["A"] and ratios["B"] > ratios["C"]
    assert sum(math.exp(r) for r in ratios.values()) / 3 == pytest.approx(1.0)  # log(m·P): P sums to one


def test_options_with_no_trace_leave_the_prior_nearly_flat() -> None:
    rng = random.Random(1)
    prior = OptionPrior.fit(written(rng, False) for _ in range(2000))
    assert prior is not None
    ratios = prior.log_ratios("Which one?", ["a b", "a b c d e f g h", "a b c"])
    assert max(abs(r) for r in ratios.values()) < 0.25


def test_too_few_lettered_questions_fit_nothing() -> None:
    rng = random.Random(2)
    few = [written(rng, True) for _ in range(MIN_QUESTIONS - 1)]
    assert OptionPrior.fit(few) is None
    unusable = [("Q?", ("x",), "A"), ("Q?", ("x", "y"), "C"), ("Q?", ("x", "y"), ""),  # one option; gold not
                ("Q?", ("x", "y"), "AB")] * MIN_QUESTIONS  # among them, none, or not one letter
    assert OptionPrior.fit(few + unusable) is None
    assert OptionPrior.fit(few + [written(rng, True)]) is not None


def test_features_are_relative_within_the_question() -> None:
    few, many = option_features("Q", ["a", "bb", "ccc"]), option_features("Q", ["a", "bb", "ccc", "bb", "a", "bb"])
    assert few.shape == (3, 7) and many.shape == (6, 7)
    assert few[2, 1] == 1.0 and few[0, 2] == 1.0  # longest, shortest
    assert option_features("Q", ["same", "same"]).tolist()[0][0] == 0.0  # equal lengths: z-score 0, not NaN


def test_the_prior_decides_a_close_vote_but_never_an_unvoted_option() -> None:
    answers, weights = [("x", "A"), ("y", "B")], {"x": 1.0, "y": 1.0}
    assert weighted_vote(answers, weights).answer == "A"  # a tie: the letter breaks it
    result = weighted_vote(answers, weights, prior={"A": -0.5, "B": 0.4, "C": 9.0})
    assert result.answer == "B" and result.support == {"A": 1.0, "B": 1.0}  # support stays the votes'
    assert weighted_vote([("x", "A"), ("y", "A"), ("z", "B")], {"x": 1.0, "y": 1.0, "z": 1.0},
                         prior={"A": -0.5, "B": 0.4}).answer == "A"  # two votes outweigh a small prior


def test_lettered_vote_reads_the_options_from_the_question_text() -> None:
    prior = OptionPrior.fit(written(random.Random(3), True) for _ in range(300))
    question = "Which one?\nA. a b\nB. a b c d e f g h i j\nC. a b c\nReply with 'Answer: <letter>'."
    answers = [("x", "Answer: A"), ("y", "Answer: B")]
    scores = [ExpertScore(name=n, suitability=0.5, competence=0.5, weight=1.0) for n in "xy"]
    assert lettered_vote(question, answers, scores) == "Answer: A"
    assert lettered_vote(question, answers, scores, option_prior=prior) == "Answer: B"
