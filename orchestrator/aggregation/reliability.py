"""Per-letter reliability: how far to trust an expert's vote given the letter it picked.

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
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

P_CLIP = 1e-3
SMOOTHING_GRID = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _logit(p: float) -> float:
    p = min(max(p, P_CLIP), 1.0 - P_CLIP)
    return math.log(p / (1.0 - p))


class AnswerReliability:
    """Per (expert, letter) log-odds offsets from the profiling answers (see module doc)."""

    def __init__(self, correct: Mapping[str, np.ndarray], choices: Mapping[str, Sequence[str | None]],
                 observed: Mapping[str, np.ndarray] | None = None):
        """`observed` (per expert, per question) says which marks are known; unset: all. A
        question an expert did not answer has no choice either (None), so it adds to no cell."""
        cells = {n: _letter_cells(correct[n], choices[n]) for n in correct if n in choices}
        overall = {n: _accuracy(correct[n], (observed or {}).get(n)) for n in cells}
        self.smoothing = _fit_smoothing(cells, overall)
        self._offsets = {
            (n, c): _logit((hits + self.smoothing * overall[n]) / (total + self.smoothing)) - _logit(overall[n])
            for n, by_letter in cells.items()
            for c, (hits, total) in by_letter.items()
        }

    def offset(self, expert: str, choice: str) -> float:
        return self._offsets.get((expert, choice), 0.0)


def _accuracy(marks: np.ndarray, observed: np.ndarray | None) -> float:
    seen = np.ones(len(marks), dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    return float(np.mean(np.asarray(marks, dtype=bool)[seen])) if seen.any() else 0.0


def _letter_cells(marks: np.ndarray, choices: Sequence[str | None]) -> dict[str, tuple[int, int]]:
    """letter → (times right, times picked). Counted in C (`Counter` over pairs): the router is
    rebuilt with this for every batch that teaches it something, over every profiling answer."""
    pairs = Counter(zip(choices, np.asarray(marks, dtype=bool).tolist(), strict=True))
    cells: dict[str, tuple[int, int]] = {}
    for (c, ok), n in pairs.items():
        if c is not None:
            hits, total = cells.get(c, (0, 0))
            cells[c] = (hits + n * ok, total + n)
    return cells


def _fit_smoothing(cells: Mapping[str, Mapping[str, tuple[int, int]]], overall: Mapping[str, float]) -> float:
    """The shrinkage with the lowest leave-one-out log-loss of acc_i|c over every profiling answer."""

    def loss(s: float) -> float:
        total = 0.0
        for n, by_letter in cells.items():
            for hits, picked in by_letter.values():
                right = (hits - 1 + s * overall[n]) / (picked - 1 + s)  # each answer left out of its cell
                wrong = (hits + s * overall[n]) / (picked - 1 + s)
                total -= hits * math.log(max(right, P_CLIP)) + (picked - hits) * math.log(max(1 - wrong, P_CLIP))
        return total

    return min(SMOOTHING_GRID, key=loss)


