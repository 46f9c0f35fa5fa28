"""The k-NN router, on evidence whose right answer is known by construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from orchestrator.aggregation.vote import log_odds_weight, vote_by_scores
from orchestrator.routing.evidence import RoutingEvidence
from orchestrator.routing.knn_router import (
    LABEL_NEIGHBOURS_GRID,
    NEIGHBOURS_GRID,
    PRIOR_GRID,
    TEMPERATURE_GRID,
    EvidenceError,
    KnnParams,
    KnnRouter,
    LabelPrior,
    Memory,
    _log_loss,
    _top,
    estimate,
    fit_params,
)
from orchestrator.routing.recruit import recruit
from orchestrator.routing.router import Router


def memory(emb: np.ndarray, marks: np.ndarray) -> Memory:
    """Every mark observed, as profiling gives them."""
    return Memory([f"e{i}" for i in range(marks.shape[1])], emb.astype(np.float32), marks, np.ones_like(marks))


def _two_topics(n: int = 200, seed: int = 0) -> tuple[RoutingEvidence, np.ndarray, np.ndarray]:
    """Questions on two topics (directions in embedding space): "maths" is right on topic 0 90%
    of the time and 20% on topic 1, "law" the reverse, "mid" 50% everywhere."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, n)
    centres = np.eye(8)[:2]
    emb = centres[topic] + 0.25 * rng.standard_normal((n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    p = {"maths": np.where(topic == 0, 0.9, 0.2), "law": np.where(topic == 0, 0.2, 0.9), "mid": np.full(n, 0.5)}
    correct = {name: rng.random(n) < probs for name, probs in p.items()}
    return RoutingEvidence({name: {} for name in p}, emb.astype(np.float32), correct), centres, topic


def test_ranks_the_expert_that_was_right_on_similar_questions() -> None:
    evidence, centres, _ = _two_topics()
    router: Router = KnnRouter(evidence)  # mypy checks it satisfies the service's protocol
    assert [s.name for s in router.score([], centres[0])][0] == "maths"
    assert [s.name for s in router.score([], centres[1])][0] == "law"
    assert recruit(router.score([], centres[1]), 2, KnnRouter.preferred_mode) == ["law", "mid"]


def test_estimates_are_calibrated_probabilities() -> None:
    evidence, centres, _ = _two_topics(n=600)
    p = dict(zip(KnnRouter(evidence).experts, KnnRouter(evidence).estimate(centres[0])[0], strict=True))
    assert p["maths"] == pytest.approx(0.9, abs=0.08)
    assert p["law"] == pytest.approx(0.2, abs=0.08)
    assert p["mid"] == pytest.approx(0.5, abs=0.1)


def test_scores_carry_estimate_overall_accuracy_and_log_odds_weight() -> None:
    evidence, centres, _ = _two_topics()
    router = KnnRouter(evidence)
    scores = router.score(["anything"], centres[0])
    assert [s.weight for s in scores] == sorted((s.weight for s in scores), reverse=True)
    for s in scores:
        assert s.competence == pytest.approx(float(np.mean(evidence.correct[s.name])))  # type: ignore[index]
        assert s.weight == pytest.approx(log_odds_weight(s.suitability))
    assert router.score_batch([[]], np.stack([centres[0]]))[0] == scores


def test_weights_are_log_odds_against_the_querys_own_chance_level() -> None:
    """Among 4 options an expert right 20% of the time is guessing: its vote weighs nothing and
    dynamic recruitment stops before it. Among 10 (or free text, against evidence that does
    not say its questions' option count: 10) it is above chance. The ranking is the same
    either way. (Every question alike: p̂ is each accuracy.)"""
    emb = np.tile(np.eye(8, dtype=np.float32)[0], (100, 1))
    correct = {n: np.arange(100) % 20 < 20 * p for n, p in (("good", 0.6), ("fair", 0.45), ("guess", 0.2))}
    router = KnnRouter(RoutingEvidence({n: {} for n in correct}, emb, correct))
    four, ten, free = (router.score_batch([[]], emb[:1], [m])[0] for m in (4, 10, 0))
    assert [s.name for s in four] == [s.name for s in ten] == [s.name for s in free] == ["good", "fair", "guess"]
    assert [s.suitability for s in four] == pytest.approx([0.6, 0.45, 0.2])
    assert four[2].weight == pytest.approx(0.0, abs=1e-5) and ten[2].weight == pytest.approx(np.log(0.2 * 9 / 0.8))
    assert [s.weight for s in free] == [s.weight for s in ten] == [s.weight for s in router.score([], emb[0])]
    assert [s.weight for s in four] == [log_odds_weight(s.suitability, 4) for s in four]
    assert recruit(four, 3, "dynamic", p=0.95) == ["good", "fair"]
    assert recruit(ten, 3, "dynamic", p=0.95) == ["good", "fair", "guess"]


def test_free_text_is_weighed_against_the_chance_level_of_the_evidences_questions() -> None:
    """Free text has no options of its own: an expert at chance on the 4-option questions its
    p̂ was measured on (20% right) adds no weight, as among 4 options; evidence that does not
    say how many options its questions had is weighed as 10."""
    emb = np.tile(np.eye(8, dtype=np.float32)[0], (100, 1))
    correct = {n: np.arange(100) % 20 < 20 * p for n, p in (("good", 0.6), ("guess", 0.2))}
    four = KnnRouter(RoutingEvidence({n: {} for n in correct}, emb, correct, options=4))
    unknown = KnnRouter(RoutingEvidence({n: {} for n in correct}, emb, correct))
    free, lettered = (four.score_batch([[]], emb[:1], [m])[0] for m in (0, 10))
    assert [s.weight for s in free] == [s.weight for s in four.score([], emb[0], 4)]
    assert free[1].name == "guess" and free[1].weight == pytest.approx(0.0, abs=1e-5)
    assert recruit(free, 3, "dynamic", p=0.95) == ["good"]
    assert lettered[1].weight == pytest.approx(np.log(0.2 * 9 / 0.8))  # a 10-option query: its own
    assert unknown.score([], emb[0])[1].weight == pytest.approx(np.log(0.2 * 9 / 0.8))


def test_without_an_embedding_ranks_by_overall_accuracy() -> None:
    evidence, _, _ = _two_topics()
    overall = {n: float(np.mean(c)) for n, c in (evidence.correct or {}).items()}
    scores = KnnRouter(evidence).score(["law"], None)
    assert [s.name for s in scores] == sorted(overall, key=lambda n: -overall[n])


def test_leave_one_out_fit_prefers_local_evidence_when_topics_matter() -> None:
    evidence, _, _ = _two_topics(n=300)
    correct = evidence.correct or {}
    marks = np.stack([correct[n] for n in sorted(correct)], axis=1).astype(np.float32)
    params = fit_params(memory(np.asarray(evidence.question_embeddings), marks))
    assert isinstance(params, KnnParams)
    assert params.neighbours <= 100  # a topic holds ~150 questions: more neighbours would mix them


def test_a_duplicate_question_weighs_more_than_a_distant_one() -> None:
    emb = np.eye(3, dtype=np.float32)
    marks = {"a": np.array([1, 0, 0], bool), "b": np.array([0, 1, 1], bool)}
    evidence = RoutingEvidence({"a": {}, "b": {}}, emb, marks)
    router = KnnRouter(evidence, KnnParams(neighbours=3, temperature=0.1, prior_strength=1.0))
    assert [s.name for s in router.score([], emb[0])][0] == "a"  # one exact twin beats two strangers


def test_needs_embeddings_and_marks() -> None:
    with pytest.raises(EvidenceError, match="embeddings"):
        KnnRouter(RoutingEvidence({"a": {}}))
    with pytest.raises(EvidenceError, match="3 embeddings but 2 marks"):
        KnnRouter(RoutingEvidence({"a": {}}, np.eye(3, dtype=np.float32), {"a": np.array([True, False])}))


def test_topic_prior_leave_one_out_equals_refitting_without_the_question() -> None:
    """Its own mark was left out of its topic, not of the overall accuracy every topic is
    smoothed towards (weighing 1/n: 6% on the embedded pool's 16 questions)."""
    rng = np.random.default_rng(3)
    labels = [str(x) for x in rng.integers(0, 3, 40)]
    marks = (rng.random((40, 2)) < 0.5).astype(np.float32)
    idx = np.array([rng.permutation(np.delete(np.arange(40), j))[:6] for j in range(40)])  # never itself
    rows, mem = np.arange(40), memory(np.zeros((40, 2)), marks)
    loo = LabelPrior(labels, mem).loo_prior(rows, idx, 6, mem.overall_without(rows))
    for j in (0, 7, 21):
        keep = rows != j
        kept = LabelPrior([lb for i, lb in enumerate(labels) if i != j], memory(np.zeros((39, 2)), marks[keep]))
        names = sorted(set(labels))
        assert sorted({lb for i, lb in enumerate(labels) if i != j}) == names  # same columns both ways
        share = np.eye(len(names))[[names.index(labels[i]) for i in idx[j]]].mean(axis=0)
        assert loo[j] == pytest.approx(share @ kept.accuracy)


def exact_loo_losses(mem: Memory, labels: list[str]) -> dict[KnnParams, float]:
    """Every grid point's log-loss, each question's p̂ made by a router whose memory lacks it."""
    n, losses = len(mem.emb), {}
    for j in range(n):
        keep = np.arange(n) != j
        sub = Memory(mem.names, mem.emb[keep], mem.marks[keep], mem.observed[keep])
        topic = LabelPrior([lb for i, lb in enumerate(labels) if i != j], sub)
        idx, vals = _top((sub.emb @ mem.emb[j])[None, :], n)
        for k, tau, alpha, kc in itertools.product(NEIGHBOURS_GRID, TEMPERATURE_GRID, PRIOR_GRID,
                                                   LABEL_NEIGHBOURS_GRID):
            params = KnnParams(k, tau, alpha, kc)
            prior = topic.prior(idx, kc) if kc else sub.overall
            p = estimate(vals[:, :k], sub.marks[idx[:, :k]], sub.observed[idx[:, :k]], prior, params)
            losses[params] = losses.get(params, 0.0) + _log_loss(p, mem.marks[j:j + 1], mem.observed[j:j + 1]) / n
    return losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_small_pool_s_fit_is_the_best_by_an_exact_leave_one_out(seed: int) -> None:
    """Each question's own mark stayed in its prior (in the overall accuracy, and its own topic
    label among its 'neighbours' where the pool is smaller than the widest grid): on marks with
    no per-question signal the fit chose a sharp kernel that leaves the prior alone, echoing it."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((30, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    marks = (rng.random((30, 3)) < np.array([0.3, 0.5, 0.7])).astype(np.float32)
    mem, labels = Memory(["a", "b", "c"], emb, marks, np.ones_like(marks)), [f"t{i % 4}" for i in range(30)]
    losses = exact_loo_losses(mem, labels)
    assert losses[fit_params(mem, labels)] == pytest.approx(min(losses.values()), rel=1e-6)

def test_topic_labels_sharpen_estimates_when_few_neighbours_are_close() -> None:
    """Two topics, each expert right on one only; with labels the fitted router uses the topic."""
    evidence, centres, topic = _two_topics(n=400, seed=4)
    evidence.labels = ["maths" if t == 0 else "law" for t in topic]
    router = KnnRouter(evidence)
    assert router.params.label_neighbours > 0  # the leave-one-out fit found the topic useful
    p = dict(zip(router.experts, router.estimate(centres[0])[0], strict=True))
    assert p["maths"] > 0.8 and p["law"] < 0.35


def test_vote_by_scores_uses_the_router_weights() -> None:
    evidence, centres, _ = _two_topics()
    scores = KnnRouter(evidence).score([], centres[0])
    assert vote_by_scores([("maths", "A"), ("law", "B"), ("mid", "B")], scores).answer == "A"
