"""Aggregation without an aggregator LLM: the recruited experts' choices, weighted, vote.

With replay experts (or any pool too large for an aggregator to read every answer) the final
answer is a weighted vote over the extracted choices. The weight of a vote is the recruiting
router's weight for that expert (`ExpertScore.weight`): S_i·γ_i for Symbolic-MoE (profile-
weighted voting), the log-odds of the estimated accuracy for the k-NN router. Log-odds weights
are the optimal weighted majority for independent voters (Nitzan & Paroush 1982): an expert
right with probability p among m options outvotes two experts at p' exactly when its evidence
ratio p(m−1)/(1−p) exceeds theirs combined. An expert that gave no choice casts no vote.

A vote may be corrected by the expert's per-letter reliability (`reliability.AnswerReliability`),
and start from a prior over the options (`option_prior.OptionPrior`: log prior ratios added to
the support, so the winner is the posterior choice among the letters voted for).

`lettered_vote` is the `auto` aggregation of a pool with an aggregator LLM: a question with
lettered options whose every answer picked one is decided by the vote, and only the rest go to
the aggregator. On the embedded pool's held-out MMLU (bench/live_quality.py) the aggregator,
Qwen2.5-1.5B, followed the 0.5B's wrong letter where the two disagreed, while the vote of the
same answers kept the 1.5B's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from experts.prompt_text import lettered_options, option_texts, strip_options
from orchestrator.aggregation.option_prior import OptionPrior
from orchestrator.aggregation.reliability import P_CLIP, AnswerReliability
from orchestrator.domain import ExpertScore
from skills.grading import extract_choice

DEFAULT_OPTIONS = 10  # MMLU-Pro's; the chance level assumed where a question's own count is unknown
_MIN_WEIGHT = 1e-6  # an expert barely above chance still breaks ties rather than vanishing


@dataclass(frozen=True)
class VoteResult:
    answer: str | None
    support: dict[str, float] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        """The winner's share of the cast weight (0 when nobody voted)."""
        total = sum(self.support.values())
        return self.support.get(self.answer, 0.0) / total if self.answer and total > 0 else 0.0


def log_odds_weight(p: float, n_options: int = DEFAULT_OPTIONS) -> float:
    """log(p·(m−1)/(1−p)): zero at chance (p = 1/m), floored just above zero below it."""
    p = min(max(p, P_CLIP), 1.0 - P_CLIP)
    return max(math.log(p * (max(n_options, 2) - 1) / (1.0 - p)), _MIN_WEIGHT)


def weighted_vote(
    answers: Sequence[tuple[str, str | None]],
    weights: Mapping[str, float],
    reliability: AnswerReliability | None = None,
    prior: Mapping[str, float] | None = None,
) -> VoteResult:
    """The choice with most weight; `answers` are (expert, choice or None), repeats allowed.
    With `reliability`, each vote's weight moves by its (expert, choice) offset; with `prior`
    (choice → log prior ratio), a choice's support plus its prior decides. `support` stays the
    votes' own weight.

    Ties go to the choice whose heaviest single voter is heaviest, then alphabetically, so the
    result never depends on the order the answers arrived in.
    """
    cast: dict[str, list[float]] = {}
    for expert, choice in answers:
        if choice is not None:
            shift = reliability.offset(expert, choice) if reliability else 0.0
            cast.setdefault(choice, []).append(_vote_weight(weights.get(expert, 0.0) + shift))
    if not cast:
        return VoteResult(None)
    support = {c: math.fsum(ws) for c, ws in cast.items()}  # fsum: exact, so the same whatever the order
    start = prior or {}
    winner = min(support, key=lambda c: (-(support[c] + start.get(c, 0.0)), -max(cast[c]), c))
    return VoteResult(winner, support)


def _vote_weight(w: float) -> float:
    """A vote's weight, floored at `_MIN_WEIGHT`; a NaN or infinite one (a broken profile) counts
    as the floor too: NaN compares false both ways, so it made the result hang on the order."""
    return max(w, _MIN_WEIGHT) if math.isfinite(w) else _MIN_WEIGHT


def moves_a_vote(score: ExpertScore) -> bool:
    """Whether the expert's answer can move a vote: a weight above the floor. For the k-NN router
    that is an estimate above the question's chance level; at or below it (the embedded pool's
    0.5B at 3/16 against 1/4) its vote only breaks ties."""
    return _vote_weight(score.weight) > _MIN_WEIGHT


def vote_by_scores(
    answers: Sequence[tuple[str, str | None]],
    scores: Sequence[ExpertScore],
    reliability: AnswerReliability | None = None,
    prior: Mapping[str, float] | None = None,
) -> VoteResult:
    """Weighted vote with the router's per-query weights (what the service aggregates with)."""
    return weighted_vote(answers, {s.name: s.weight for s in scores}, reliability, prior)


def vote_answer(
    answers: Sequence[tuple[str, str]], scores: Sequence[ExpertScore], reliability: AnswerReliability | None = None,
    question: str = "", option_prior: OptionPrior | None = None,
) -> VoteResult:
    """The weighted vote over (expert, reply text) pairs: each reply's option letter, if any,
    among the question's own options ("E" of A-D won a vote, read with every letter valid). A
    question with fewer than two lettered options has nothing to vote on: no result, and the
    caller falls back (read with every letter valid, "Answer: I don't know" voted "I" over two
    "Answer: Paris")."""
    n = option_count(question)
    if n < 2:
        return VoteResult(None)
    return vote_by_scores([(expert, extract_choice(text, n)) for expert, text in answers], scores, reliability,
                          prior_of(option_prior, question))


def prior_of(option_prior: OptionPrior | None, question: str) -> dict[str, float]:
    """The question's options' log prior ratios ({} without a prior or lettered options)."""
    return option_prior.log_ratios(strip_options(question), option_texts(question)) if option_prior else {}


def option_count(question: str) -> int:
    """How many lettered options the question offers (`experts.prompt_text.lettered_options`:
    the rule the replay lookup and the embedded question cut a prompt's options by, so a dialogue's
    speakers "A: …", "B: …" are no options to any of them)."""
    return lettered_options(question)[1]


def vote_decides(mode: str, question: str) -> bool:
    """Whether aggregation `mode` votes on `question` instead of asking the aggregator LLM:
    always under `vote` (no aggregator there: free text, with nothing to vote on, takes the
    best-ranked answer); under `auto`, when it has lettered options (`lettered_vote` falls
    back to the aggregator only when an answer picks none)."""
    return mode == "vote" or (mode == "auto" and option_count(question) >= 2)


def lettered_vote(question: str, answers: Sequence[tuple[str, str]], scores: Sequence[ExpertScore],
                  reliability: AnswerReliability | None = None, option_prior: OptionPrior | None = None
                  ) -> str | None:
    """The reply the vote decides, when the question has lettered options (two or more) and
    every answer picked one: the winning letter's answer from its heaviest voter, reasoning
    kept. None when the vote cannot decide, so the aggregator reads the answers instead."""
    n = option_count(question)
    letters = [(expert, extract_choice(text, n)) for expert, text in answers]
    if n < 2 or any(choice is None for _, choice in letters):
        return None
    weight = {s.name: s.weight for s in scores}
    result = weighted_vote(letters, weight, reliability, prior_of(option_prior, question))
    backers = [(e, t) for (e, t), (_, c) in zip(answers, letters, strict=True) if c == result.answer]
    return max(backers, key=lambda et: weight.get(et[0], 0.0))[1]
