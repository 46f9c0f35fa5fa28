"""A question-level router: how did each expert do on the profiling questions most like this one?

Symbolic-MoE scores an expert by ±1 sums over a handful of coarse skills. With every expert's
graded answer to every profiling question on record, we can ask directly: among the profiling
questions nearest to the query (cosine of all-MiniLM-L6-v2 embeddings), how often was each
expert right? That estimate is shrunk towards the expert's overall accuracy (few or distant
neighbours say little), so it is a calibrated probability p̂_i(q), not a score:

    p̂_i(q) = (Σ_j a_j·c_ij + α·acc_i) / (Σ_j a_j + α),   a_j = exp((sim_j − 1)/τ)

over the K nearest profiling questions j. The kernel is absolute: a neighbour counts as one
observation only when it is the same question (sim = 1), so α reads as "worth α duplicates",
and a query with only distant neighbours stays near the expert's overall accuracy.

Experts are ranked by p̂ and weighted by the log-odds of p̂ (`voting.log_odds_weight`), which is
both the recruitment weight (top-k, or dynamic k by cumulative share) and the vote weight when
the recruited answers are aggregated by voting. The log-odds are against the query's own chance
level, 1/m for its m lettered options: an expert no better than guessing adds no weight, so
dynamic recruitment stops before it. On the embedded pool's 4-option MMLU the 0.5B (3 of 16
profiling questions right) was recruited beside the 1.5B on every question while the weights
assumed MMLU-Pro's 10 options; on MMLU-Pro itself the per-question count changes nothing
measurable (open pool, seeds 0-4: +4.89 against +4.91 points over the best single model, on
the split before repeated questions were kept on one side).
Free text has no options of its own: it is weighed against the profiling questions'
(`RoutingEvidence.options`), the chance level p̂ was measured at, since an expert at chance
there showed no knowledge. On 60 arithmetic questions the embedded pool then asks the 1.5B
alone, 90% in 185 s, where weighing against 10 options added the 0.5B and the aggregator: 85%
in 501 s.

The prior acc_i is the expert's overall accuracy, or, when the profiling questions carry topic
labels (MMLU subjects, MMLU-Pro categories), its accuracy on the query's likely topic:
acc_i(q) = Σ_c P(c|q)·acc_i(c), P(c|q) being the share of label c among the query's K_c nearest
profiling questions. Two levels of evidence, then: a few close neighbours for this very kind of
question, shrunk towards a few hundred questions of its topic rather than towards everything.
On the MMLU-Pro replay corpus (seed 0) it moved the open ≤13B pool's k=3 accuracy from 48.6% to
49.2%; the vote's per-letter reliability (`voting.AnswerReliability`, exposed as `reliability`)
took it to 50.0%. The vote starts from the evidence's option prior (`option_prior`, how the
profiling questions' options were written), over the five seeds +4.85 → +5.28 points.

K, τ, α and K_c (0: no topic prior) are fitted on the profiling questions alone by
leave-one-out log-loss of p̂ (each question's estimate from its neighbours and its topic's
accuracy, itself excluded), so the test split is never seen.

The memory grows with traffic (`routing.learning`): a competition adds a query every expert
answered, feedback one that only the answering experts did. An expert's mark on a question it
did not answer is unobserved, not wrong: every sum above runs over observed marks only
(`observed`, n × experts), so an expert seen on few neighbours leans on its prior, as one seen on
none leans on it entirely. With every mark observed (profiling alone) nothing changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.aggregation.reliability import AnswerReliability
from orchestrator.aggregation.vote import DEFAULT_OPTIONS, log_odds_weight
from orchestrator.domain import ExpertScore, RecruitMode
from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.recruit import score

NEIGHBOURS_GRID = (10, 25, 50, 100, 200, 400)
TEMPERATURE_GRID = (0.01, 0.02, 0.05, 0.1, 0.3, 1.0)
PRIOR_GRID = (1.0, 3.0, 10.0, 30.0)
LABEL_NEIGHBOURS_GRID = (0, 25, 50, 100, 200)  # 0: the prior is the overall accuracy
LABEL_SMOOTHING = 2.0  # a small topic leans on the expert's overall accuracy (pseudo-questions)
UNSEEN_ACCURACY = 0.5  # the prior of an expert with no observed mark at all (a new one)


@dataclass(frozen=True)
class KnnParams:
    neighbours: int = 50
    temperature: float = 0.05
    prior_strength: float = 3.0
    label_neighbours: int = 0


class EvidenceError(ValueError):
    """The routing evidence lacks what a learned router needs (embeddings, per-question marks)."""


@dataclass(frozen=True)
class Memory:
    """The evidence as matrices: names, embeddings (n × d), marks and observed (n × experts)."""

    names: list[str]
    emb: np.ndarray
    marks: np.ndarray
    observed: np.ndarray

    @property
    def overall(self) -> np.ndarray:
        """Each expert's accuracy over its observed marks."""
        seen = self.observed.sum(axis=0)
        return np.where(seen > 0, (self.marks * self.observed).sum(axis=0) / np.maximum(seen, 1), UNSEEN_ACCURACY)

    def overall_without(self, rows: np.ndarray) -> np.ndarray:
        """rows × experts: `overall` with each row's own mark left out (the leave-one-out fit's
        prior: with its own mark in, a small pool's fit favoured priors that echo the answer)."""
        seen = self.observed.sum(axis=0) - self.observed[rows]
        hits = (self.marks * self.observed).sum(axis=0) - self.marks[rows] * self.observed[rows]
        return np.where(seen > 0, hits / np.maximum(seen, 1), UNSEEN_ACCURACY)


def _memory(evidence: RoutingEvidence) -> Memory:
    if evidence.question_embeddings is None or not evidence.correct:
        raise EvidenceError("the k-NN router needs question embeddings and per-question correctness")
    names = sorted(evidence.correct)
    emb = np.asarray(evidence.question_embeddings, dtype=np.float32)
    marks = np.stack([np.asarray(evidence.correct[n], dtype=np.float32) for n in names], axis=1)
    seen = evidence.observed or {}
    observed = np.stack([np.asarray(seen[n], dtype=np.float32) if n in seen else np.ones(len(emb), np.float32)
                         for n in names], axis=1)
    if marks.shape[0] != emb.shape[0] or emb.shape[0] == 0:
        raise EvidenceError(f"{emb.shape[0]} embeddings but {marks.shape[0]} marks per expert")
    return Memory(names, emb, marks * observed, observed)


def estimate(sims: np.ndarray, marks: np.ndarray, observed: np.ndarray, prior: np.ndarray,
             params: KnnParams) -> np.ndarray:
    """p̂ for queries × experts from their top-K similarities (queries × K) and the marks and
    observed masks of those neighbours (queries × K × experts)."""
    weights = np.exp((sims - 1.0) / params.temperature)
    hits = np.einsum("qk,qke->qe", weights, marks)
    mass = np.einsum("qk,qke->qe", weights, observed)
    return (hits + params.prior_strength * prior) / (mass + params.prior_strength)


def _top(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest similarities per row, best first."""
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


class LabelPrior:
    """Each expert's accuracy per topic label, and P(label | query) from the labels of the
    query's nearest profiling questions: the topic-level prior of p̂ (see module doc)."""

    def __init__(self, labels: Sequence[str], memory: Memory):
        names = sorted(set(labels))
        self.codes = np.array([names.index(x) for x in labels]) if labels else np.zeros(0, dtype=int)
        self.onehot = np.eye(len(names), dtype=np.float32)[self.codes]
        self.marks, self.observed, self.overall = memory.marks, memory.observed, memory.overall
        self.counts, self.sizes = self.onehot.T @ self.marks, self.onehot.T @ self.observed
        self.accuracy = (self.counts + LABEL_SMOOTHING * self.overall) / (self.sizes + LABEL_SMOOTHING)

    def prior(self, idx: np.ndarray, k: int) -> np.ndarray:
        """queries × experts: topic accuracy under the label shares of the k nearest questions."""
        if k <= 0:
            return np.broadcast_to(self.overall, (len(idx), len(self.overall)))
        return self.onehot[idx[:, :k]].mean(axis=1) @ self.accuracy

    def loo_prior(self, rows: np.ndarray, idx: np.ndarray, k: int, overall: np.ndarray) -> np.ndarray:
        """`prior` for profiling questions `rows`, each one's own answer left out: of its topic,
        and of the overall accuracy every topic is smoothed towards (`overall`, rows × experts,
        Memory.overall_without). `idx` must not hold the row itself."""
        if k <= 0:
            return overall
        share = self.onehot[idx[:, :k]].mean(axis=1)
        smoothed = self.sizes + LABEL_SMOOTHING  # topics × experts
        accuracy = share @ (self.counts / smoothed) + LABEL_SMOOTHING * overall * (share @ (1 / smoothed))
        own = self.codes[rows]
        acc_own = (self.counts[own] + LABEL_SMOOTHING * overall) / smoothed[own]
        acc_without = (self.counts[own] - self.marks[rows] + LABEL_SMOOTHING * overall) / (
            smoothed[own] - self.observed[rows]
        )
        own_share = share[np.arange(len(rows)), own][:, None]
        return accuracy + own_share * (acc_without - acc_own)


def _log_loss(p: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> float:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    losses = -(truth * np.log(p) + (1 - truth) * np.log(1 - p))
    return float((losses * observed).sum() / max(float(observed.sum()), 1.0))


def fit_params(memory: Memory, labels: Sequence[str] | None = None, max_questions: int = 4000,
               seed: int = 0) -> KnnParams:
    """The grid point with the lowest leave-one-out log-loss of p̂ over the observed marks."""
    emb, marks, observed = memory.emb, memory.marks, memory.observed
    rows = np.arange(len(emb))
    if len(rows) > max_questions:  # bound the n × n similarity block; a sample ranks as well
        rows = np.random.default_rng(seed).choice(rows, max_questions, replace=False)
    sims = emb[rows] @ emb.T
    sims[np.arange(len(rows)), rows] = -np.inf  # leave the question itself out: of the neighbours
    idx, vals = _top(sims, max(1, min(max(*NEIGHBOURS_GRID, *LABEL_NEIGHBOURS_GRID), len(emb) - 1)))
    topic = LabelPrior(labels, memory) if labels else None
    label_grid = LABEL_NEIGHBOURS_GRID if topic else (0,)
    overall = memory.overall_without(rows)  # and of the priors
    priors = {kc: (topic.loo_prior(rows, idx, kc, overall) if topic else overall) for kc in label_grid}
    truth, seen, near, near_seen = marks[rows], observed[rows], marks[idx], observed[idx]
    best: tuple[float, KnnParams] | None = None
    for k, tau in itertools.product(NEIGHBOURS_GRID, TEMPERATURE_GRID):
        weights = np.exp((vals[:, :k] - 1.0) / tau)
        hits = np.einsum("qk,qke->qe", weights, near[:, :k])
        mass = np.einsum("qk,qke->qe", weights, near_seen[:, :k])
        for (kc, prior), alpha in itertools.product(priors.items(), PRIOR_GRID):  # cheap: sums are made
            loss = _log_loss((hits + alpha * prior) / (mass + alpha), truth, seen)
            if best is None or loss < best[0]:
                best = (loss, KnnParams(k, tau, alpha, kc))
    assert best is not None
    return best[1]


class KnnRouter:
    """Ranks experts by their accuracy on the nearest profiling questions (see module doc).

    Each `ExpertScore` carries suitability = p̂ for this query, competence = the expert's overall
    profiling accuracy, weight = log-odds of p̂ (what `voting.vote_by_scores` weighs votes by).
    `params` given (a router rebuilt as its memory grows) skip the leave-one-out fit.
    """

    name = "knn"
    preferred_mode: RecruitMode = "topk"  # p̂ is a ranking; sampling would discard its order
    calibrated = True  # suitability is p̂, a probability the budget solver can use as quality

    def __init__(self, evidence: RoutingEvidence, params: KnnParams | None = None):
        self.evidence = evidence
        self.memory = _memory(evidence)
        self.experts = self.memory.names
        labels = evidence.labels if evidence.labels and len(evidence.labels) == len(self.memory.emb) else None
        self.params = params or fit_params(self.memory, labels)
        self.n_options = evidence.options or DEFAULT_OPTIONS  # free text's chance level (see `_scores`)
        self._prior = self.memory.overall
        self._topic = LabelPrior(labels, self.memory) if labels else None
        choices, seen = evidence.choices, evidence.observed
        self.reliability = AnswerReliability(evidence.correct or {}, choices, seen) if choices else None
        self.option_prior = evidence.option_prior

    def estimate(self, query_embeddings: np.ndarray) -> np.ndarray:
        """p̂ for each query (rows) and expert (columns, in `self.experts` order)."""
        q = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))
        k, kc = self.params.neighbours, self.params.label_neighbours if self._topic else 0
        idx, vals = _top(q @ self.memory.emb.T, max(k, kc))
        prior = self._topic.prior(idx, kc) if self._topic else self._prior
        near = idx[:, :k]
        return estimate(vals[:, :k], self.memory.marks[near], self.memory.observed[near], prior, self.params)

    def score(self, skills: Sequence[str], query_embedding: np.ndarray | None = None, n_options: int = 0
              ) -> list[ExpertScore]:
        """Every expert, best first; without an embedding, by overall profiling accuracy.

        `skills` are not used: the query's own embedding locates it more finely than its skills."""
        p = self._prior if query_embedding is None else self.estimate(query_embedding)[0]
        return self._scores(p, n_options)

    def score_batch(self, skills: Sequence[Sequence[str]], query_embeddings: np.ndarray,
                    n_options: Sequence[int] | None = None) -> list[list[ExpertScore]]:
        """`score` for many queries at once (one matrix product instead of one per query)."""
        counts = n_options or [0] * len(query_embeddings)
        return [self._scores(row, m) for row, m in zip(self.estimate(query_embeddings), counts, strict=True)]

    def among(self, scores: Sequence[ExpertScore], skills: Sequence[str], ready: Collection[str]
              ) -> list[ExpertScore]:
        """`scores` as they are: a k-NN estimate is the expert's own, whoever else can be recruited."""
        return list(scores)

    def _scores(self, p: np.ndarray, n_options: int) -> list[ExpertScore]:
        """Weighted by log-odds against the query's own chance level: an expert no better than
        guessing among its options adds no weight. Free text (`n_options` < 2) has none of its own
        and is weighed against the evidence's questions' (`self.n_options`), the chance level its
        p̂ was measured at: an expert at chance there shows no knowledge to bring to free text."""
        m = n_options if n_options >= 2 else self.n_options
        scores = [
            score(n, float(pi), float(self._prior[i]), log_odds_weight(float(pi), m))
            for i, (n, pi) in enumerate(zip(self.experts, p, strict=True))
        ]
        return sorted(scores, key=lambda x: (-x.suitability, x.name))
