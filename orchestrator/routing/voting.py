"""Aggregation without an aggregator LLM: the recruited experts' choices, weighted, vote.

With replay experts (or any pool too large for an aggregator to read every answer) the final
answer is a weighted vote over the extracted choices. The weight of a vote is the recruiting
router's weight for that expert (`ExpertScore.weight`): S_i·γ_i for Symbolic-MoE (profile-
weighted voting), the log-odds of the estimated accuracy for the k-NN router. Log-odds weights
are the optimal weighted majority for independent voters (Nitzan & Paroush 1982): an expert
right with probability p among m options outvotes two experts at p' exactly when its evidence
ratio p(m−1)/(1−p) exceeds theirs combined. An expert that gave no choice casts no vote.

Which option an expert picked says something too: small models lean on some letters (position
bias), so a vote for a letter the expert picks often and wrongly is worth less than a vote for
one it picks rarely and rightly. `AnswerReliability` measures this on the profiling answers —
the expert's accuracy when it picked letter c, shrunk towards its overall accuracy — and moves
the vote's log-odds by logit(acc_i|c) − logit(acc_i) (a one-coin Dawid–Skene correction).
The shrinkage is fitted on the profiling answers alone by leave-one-out log-loss. On the
MMLU-Pro replay corpus it added ~0.5–0.8 points to the open ≤13B pool at k=3 (seeds 0–2).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from orchestrator.routing.recruit import ExpertScore

DEFAULT_OPTIONS = 10  # MMLU-Pro; the options count only shifts every log-odds weight alike
_P_CLIP = 1e-3
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
    p = min(max(p, _P_CLIP), 1.0 - _P_CLIP)
    return max(math.log(p * (max(n_options, 2) - 1) / (1.0 - p)), _MIN_WEIGHT)


SMOOTHING_GRID = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _logit(p: float) -> float:
    p = min(max(p, _P_CLIP), 1.0 - _P_CLIP)
    return math.log(p / (1.0 - p))


class AnswerReliability:
    """Per (expert, letter) log-odds offsets from the profiling answers (see module doc)."""

    def __init__(self, correct: Mapping[str, np.ndarray], choices: Mapping[str, Sequence[str | None]]):
        cells = {n: _letter_cells(correct[n], choices[n]) for n in correct if n in choices}
        overall = {n: float(np.mean(correct[n])) if len(correct[n]) else 0.0 for n in cells}
        self.smoothing = _fit_smoothing(cells, overall)
        self._offsets = {
            (n, c): _logit((hits + self.smoothing * overall[n]) / (total + self.smoothing)) - _logit(overall[n])
            for n, by_letter in cells.items()
            for c, (hits, total) in by_letter.items()
        }

    def offset(self, expert: str, choice: str) -> float:
        return self._offsets.get((expert, choice), 0.0)


def _letter_cells(marks: np.ndarray, choices: Sequence[str | None]) -> dict[str, tuple[int, int]]:
    """letter → (times right, times picked)."""
    cells: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ok, c in zip(np.asarray(marks, dtype=bool).tolist(), choices, strict=True):
        if c is not None:
            cells[c][0] += int(ok)
            cells[c][1] += 1
    return {c: (hits, total) for c, (hits, total) in cells.items()}


def _fit_smoothing(cells: Mapping[str, Mapping[str, tuple[int, int]]], overall: Mapping[str, float]) -> float:
    """The shrinkage with the lowest leave-one-out log-loss of acc_i|c over every profiling answer."""

    def loss(s: float) -> float:
        total = 0.0
        for n, by_letter in cells.items():
            for hits, picked in by_letter.values():
                right = (hits - 1 + s * overall[n]) / (picked - 1 + s)  # each answer left out of its cell
                wrong = (hits + s * overall[n]) / (picked - 1 + s)
                total -= hits * math.log(max(right, _P_CLIP)) + (picked - hits) * math.log(max(1 - wrong, _P_CLIP))
        return total

    return min(SMOOTHING_GRID, key=loss)


def weighted_vote(
    answers: Sequence[tuple[str, str | None]],
    weights: Mapping[str, float],
    reliability: AnswerReliability | None = None,
) -> VoteResult:
    """The choice with most weight; `answers` are (expert, choice or None), repeats allowed.
    With `reliability`, each vote's weight moves by its (expert, choice) offset.

    Ties go to the choice whose heaviest single voter is heaviest, then alphabetically, so the
    result never depends on the order the answers arrived in.
    """
    support: dict[str, float] = {}
    heaviest: dict[str, float] = {}
    for expert, choice in answers:
        if choice is None:
            continue
        shift = reliability.offset(expert, choice) if reliability else 0.0
        w = max(weights.get(expert, 0.0) + shift, _MIN_WEIGHT)
        support[choice] = support.get(choice, 0.0) + w
        heaviest[choice] = max(heaviest.get(choice, 0.0), w)
    if not support:
        return VoteResult(None)
    winner = min(support, key=lambda c: (-support[c], -heaviest[c], c))
    return VoteResult(winner, support)


def vote_by_scores(
    answers: Sequence[tuple[str, str | None]],
    scores: Sequence[ExpertScore],
    reliability: AnswerReliability | None = None,
) -> VoteResult:
    """Weighted vote with the router's per-query weights (what the service aggregates with)."""
    return weighted_vote(answers, {s.name: s.weight for s in scores}, reliability)
