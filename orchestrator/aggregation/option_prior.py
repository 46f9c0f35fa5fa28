"""A prior over a question's options from how they are written: the vote's starting point.

The log-odds vote (`vote.weighted_vote`) adds each voter's log likelihood ratio for its letter
and so assumes every option equally likely before anyone answers. Question writers leave traces:
in MMLU-Pro the gold answer is the longest option on 21% of questions against 11% by chance
(its distractors run shorter), and it shares fewer words with the question. A
conditional logit over a few features of each option, fitted on the profiling questions' gold
letters, gives log(m·P(option)), the log prior ratio against 1/m; added to the votes' support it
makes the vote the posterior choice (Bayes: prior ratio times the voters' likelihood ratios).
Only options someone voted for can win: the vote still picks among its experts' answers.

Measured on the MMLU-Pro replay corpus (bench/routing_quality.py, open ≤13B pool, router k=3,
seeds 0-4): +5.28 ± 0.34 points over the best single model with the prior, +4.85 ± 0.63 without;
seeds 5-9 +5.00 ± 0.85 against +4.65 ± 0.61. It helps any log-odds vote as much (the per-category
rule +4.43 → +5.09): a better vote, not better routing. A set whose options carry no such trace
fits weights near zero: the vote is as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from skills.grading import LETTERS

MIN_QUESTIONS = 50  # fewer lettered profiling questions than this fit nothing (the vote stays flat)
L2 = 1e-2  # ridge on the weights, per question: with a few features it barely bites at ~3,000
NEWTON_STEPS = 25
_WORD = re.compile(r"\w+")


class OptionPrior:
    """Weights of the option features (see module doc); `log_ratios` is what a vote adds."""

    def __init__(self, weights: np.ndarray):
        self.weights = np.asarray(weights, dtype=float)

    @classmethod
    def fit(cls, questions: Iterable[tuple[str, Sequence[str], str]]) -> OptionPrior | None:
        """From (question, options, gold letter) of the profiling questions; None with too few
        lettered ones."""
        rows = [(option_features(q, opts), LETTERS.index(gold)) for q, opts, gold in questions
                if len(opts) >= 2 and gold in tuple(LETTERS[: len(opts)])]  # a letter: "" is in every string
        if len(rows) < MIN_QUESTIONS:
            return None
        return cls(_newton([x for x, _ in rows], np.array([y for _, y in rows])))

    def log_ratios(self, question: str, options: Sequence[str]) -> dict[str, float]:
        """letter → log(m·P(letter)) for these options of the question ({} for fewer than two)."""
        if len(options) < 2:
            return {}
        s = option_features(question, options) @ self.weights
        shifted = s - s.max()
        log_p = shifted - np.log(np.exp(shifted).sum())
        return {LETTERS[i]: float(v + np.log(len(options))) for i, v in enumerate(log_p)}


Keyed = tuple[tuple[str, tuple[str, ...], str], ...]  # (question, options, gold letter) each


@lru_cache(maxsize=4)  # the pool's evidence is read again at each refresh: the same set, fitted once
def fitted(questions: Keyed) -> OptionPrior | None:
    """`OptionPrior.fit`, kept for the last few sets it was fitted on (a fit takes ~0.7 s at 3,000)."""
    return OptionPrior.fit(questions)


def option_features(question: str, options: Sequence[str]) -> np.ndarray:
    """One row per option: its length against the others' (z-score, longest, shortest, rank),
    the share of its words found in the question, and how alike it is to the other options (mean
    Jaccard of words as a z-score, and the max). Relative within the question: any count fits."""
    lengths = np.array([len(o) for o in options], dtype=float)
    m = len(options)
    words = [set(_WORD.findall(o.lower())) for o in options]
    asked = set(_WORD.findall(question.lower()))
    in_question = np.array([len(w & asked) / len(w) if w else 0.0 for w in words])
    jac = np.array([[_jaccard(a, b) for b in words] for a in words])
    np.fill_diagonal(jac, np.nan)
    mean_jac, max_jac = np.nanmean(jac, axis=1), np.nanmax(jac, axis=1)
    rank = np.argsort(np.argsort(lengths, kind="stable"), kind="stable") / (m - 1)
    return np.column_stack([_z(lengths), lengths == lengths.max(), lengths == lengths.min(), rank,
                            in_question, _z(mean_jac), max_jac]).astype(float)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def _z(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def _newton(features: list[np.ndarray], gold: np.ndarray) -> np.ndarray:
    """The conditional logit's ridge-penalised maximum likelihood (Newton's method: the loss is
    convex and there are seven weights). Questions are padded to the most options, padding masked."""
    n, width, d = len(features), max(len(x) for x in features), features[0].shape[1]
    x, mask = np.zeros((n, width, d)), np.zeros((n, width), dtype=bool)
    for i, f in enumerate(features):
        x[i, : len(f)], mask[i, : len(f)] = f, True
    w = np.zeros(d)
    for _ in range(NEWTON_STEPS):
        s = np.where(mask, x @ w, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mean = np.einsum("nm,nmd->nd", p, x)
        grad = (mean - x[np.arange(n), gold]).sum(axis=0) / n + L2 * w
        centred = x - mean[:, None, :]
        hess = np.einsum("nm,nmd,nme->de", p, centred, centred) / n + L2 * np.eye(d)
        w -= np.linalg.solve(hess, grad)
    return w
