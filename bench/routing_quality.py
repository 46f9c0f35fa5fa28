"""Routing quality on real recorded answers: does routing beat the best single model?

    python bench/routing_quality.py DATA_DIR [--json] [--seeds 0 1 2 3 4] [--test-size F]
                                    [--embedding static|transformer|both]

DATA_DIR is any folder of the replay format (questions.jsonl.gz, predictions.csv.gz). Questions
are split, stratified by category and seeded, into a profiling part and a test part. Experts are
profiled on the profiling part only: Symbolic-MoE profiles over skills from the embedding fast
path (nearest seed skills, no keyword LLM at this scale; read with the embedding the service
reads skills with under the symbolic router) plus the question's category, and the k-NN
router's per-question evidence (questions embedded as the service embeds them for the k-NN
router); --embedding forces one kind on both, as the service's setting does. Every choice
(best single expert, per-category experts, the router's fitted parameters) is made there. Each
test number below touches the test part once.
Every figure is reported per seed (split) and as the mean and sample standard deviation over the
seeds (0-4 unless told): a change that helps one split and not the mean is not a gain. Each
seed's router-minus-best-single gain also gets a paired bootstrap 95% interval over its test
questions (the noise of one split's questions; the SD over seeds adds the noise of the split).

No aggregator LLM can read thousands of answers here, so every multi-expert method aggregates by
profile-weighted voting: each recruited expert's letter votes with its router weight (S_i·γ_i for
Symbolic-MoE, log-odds of the estimated accuracy for the k-NN router and the per-category and
random baselines). The log-odds votes start from the prior over the question's options fitted on
the profiling questions (`orchestrator/aggregation/option_prior.py`), the router's and the
baselines' alike, so those differ in routing alone; Symbolic-MoE's S_i·γ_i are no likelihood
ratios to add a prior to (as published). Cost per query is simulated from the recorded models' sizes (experts/
cost_model.py): energy sums over the calls, latency is the slowest call (they run in parallel).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.replay_profiles import (  # noqa: E402
    is_open_small,
    nearest_skills,
    replay_evidence,
    routing_embedder,
    routing_text,
    skill_vocabulary,
    vote_prior,
)
from bench.routing_quality_report import K_MAX, as_json, paired_bootstrap, print_pool, print_seeds  # noqa: E402
from experts.cost_model import model_cost  # noqa: E402
from experts.replay import Recording, load_recording  # noqa: E402
from orchestrator.aggregation.reliability import AnswerReliability  # noqa: E402
from orchestrator.aggregation.vote import log_odds_weight, weighted_vote  # noqa: E402
from orchestrator.domain import ExpertScore, RecruitMode  # noqa: E402
from orchestrator.pools.loader import expert_name, split_questions  # noqa: E402
from orchestrator.routing.knn_router import KnnRouter  # noqa: E402
from orchestrator.routing.recruit import recruit  # noqa: E402
from orchestrator.routing.router import Router, SymbolicRouter  # noqa: E402
from orchestrator.settings import embedding_kind  # noqa: E402
from skills.embedder import Embedder, EmbeddingKind, get_embedder  # noqa: E402

COT_TOKENS = 256  # the chain of thought a recorded model wrote before its letter (cost only)

# A panel: for one test question, the recruited experts, the weight of each one's vote, the
# router's per-letter reliability offsets (None: plain weighted vote) and its prior over the
# question's options (log ratios; {}: flat).
Panel = tuple[list[str], dict[str, float], AnswerReliability | None, dict[str, float]]


@dataclass
class Corpus:
    """The split, its embeddings and skills, shared by every pool."""

    recording: Recording
    profiling: list[str]
    test: list[str]
    emb_profiling: np.ndarray
    emb_test: np.ndarray
    skills_profiling: list[list[str]]
    skills_test: list[list[str]]
    seed: int


@dataclass
class PoolResult:
    models: list[str]
    accuracy: dict[str, float] = field(default_factory=dict)
    energy_kj: dict[str, float] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    gain_ci: tuple[float, float] = (0.0, 0.0)  # router k=3 minus best single, points, paired bootstrap


def embed(embedder: Embedder, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    """Embeddings of the texts, kept on disk by content (in sorted order, so every seed's split
    of the same corpus shares one file) so a second run skips the model."""
    unique = sorted(set(texts))
    key = hashlib.sha256("\x00".join([embedder.model_path, embedder.kind, *unique]).encode()).hexdigest()[:24]
    path = cache_dir / f"{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        vectors = np.load(path)
    else:
        vectors = embedder.encode(unique)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, vectors)
    row = {t: i for i, t in enumerate(unique)}
    return vectors[[row[t] for t in texts]]


def build_corpus(folder: str, test_size: float, seed: int, cache_dir: Path | None, embedder: Embedder | None = None,
                 skill_embedder: Embedder | None = None) -> Corpus:
    """The split, embedded by `embedder` (the k-NN router's), with skills read by `skill_embedder`
    (only Symbolic-MoE uses them; `embedder` when not given)."""
    recording = load_recording(folder)
    profiling, test = split_questions(recording, test_size, seed)
    texts = [routing_text(recording.questions[q]) for q in profiling + test]
    embedder = embedder or routing_embedder()
    vectors = embed(embedder, texts, cache_dir)
    skill_embedder = skill_embedder or embedder
    skill_vectors = vectors if skill_embedder.kind == embedder.kind else embed(skill_embedder, texts, cache_dir)
    skills = nearest_skills(skill_vocabulary(recording, skill_embedder), skill_vectors)
    n = len(profiling)
    return Corpus(recording, profiling, test, vectors[:n], vectors[n:], skills[:n], skills[n:], seed)


class PoolBench:
    """Every method on one pool of recorded models."""

    def __init__(self, corpus: Corpus, models: list[str]):
        self.c, self.models = corpus, models
        rec, test = corpus.recording, corpus.test
        self.names = [expert_name(m) for m in models]
        self.model_of = dict(zip(self.names, models, strict=True))
        self.gold = [rec.questions[q].answer for q in test]
        self.choices = {expert_name(m): [rec.answer(m, q) for q in test] for m in models}
        self.profile = replay_evidence(rec, corpus.profiling, corpus.emb_profiling, corpus.skills_profiling, models)
        marks = self.profile.evidence.correct or {}
        self.prof_accuracy = {n: float(np.mean(marks[n])) for n in self.names}
        self.tokens = [_prompt_tokens(rec, q) for q in test]
        self.n_options = [len(rec.questions[q].options) for q in test]  # each question's chance level
        # the prior over each question's options a log-odds vote starts from (the router's, fitted on
        # the profiling questions): the baselines with log-odds votes get it too, so they differ in routing
        self.priors = [vote_prior(self.profile.evidence.option_prior, rec.questions[q]) for q in test]
        self._scored: dict[str, list[list[ExpertScore]]] = {}
        self._costs = {n: model_cost(m) for n, m in self.model_of.items()}

    # -- scoring -----------------------------------------------------------------------------
    def right(self, panels: Sequence[Panel]) -> np.ndarray:
        """Whether each test question's vote is right (1.0) or not (0.0)."""
        return np.array([
            weighted_vote([(e, self.choices[e][i]) for e in experts], weights, reliability, prior).answer
            == self.gold[i]
            for i, (experts, weights, reliability, prior) in enumerate(panels)
        ], dtype=float)

    def cost(self, panels: Sequence[Panel]) -> tuple[float, float]:
        """Mean energy (kJ) and mean latency (s) per query of these panels."""
        energy = latency = 0.0
        for i, (experts, *_) in enumerate(panels):
            costs = [self._costs[e].estimate(self.tokens[i], COT_TOKENS) for e in experts]
            energy += sum(x.energy_j for x in costs) / 1e3
            latency += max((x.latency_s for x in costs), default=0.0)
        return energy / len(panels), latency / len(panels)

    # -- methods -----------------------------------------------------------------------------
    def best_single(self) -> tuple[str, list[Panel]]:
        best = max(self.names, key=lambda n: (self.prof_accuracy[n], n))
        return best, [([best], {best: 1.0}, None, {})] * len(self.gold)

    def random_k(self, k: int) -> list[Panel]:
        rng = random.Random(f"random:{self.c.seed}:{k}")
        weights = {n: log_odds_weight(a) for n, a in self.prof_accuracy.items()}
        return [(rng.sample(self.names, min(k, len(self.names))), weights, None, prior) for prior in self.priors]

    def routed(self, router: Router, k: int, mode: RecruitMode) -> list[Panel]:
        """The service's path: router.score → recruit → vote with the router's weights."""
        panels: list[Panel] = []
        for i, scores in enumerate(self._scores(router)):
            chosen = recruit(scores, k, mode, random.Random(f"{self.c.seed}:{i}"))
            prior = self.priors[i] if router.option_prior else {}
            panels.append((chosen, {s.name: s.weight for s in scores}, router.reliability, prior))
        return panels

    def _scores(self, router: Router) -> list[list[ExpertScore]]:
        """Each test question's scores, once per router (k only changes what is recruited)."""
        if router.name not in self._scored:
            self._scored[router.name] = [
                router.score(skills, self.c.emb_test[i], self.n_options[i])
                for i, skills in enumerate(self.c.skills_test)
            ]
        return self._scored[router.name]

    def per_category(self, k: int) -> list[Panel]:
        """The k experts most accurate on the test question's category in profiling."""
        rec, marks = self.c.recording, self.profile.evidence.correct or {}
        rows: dict[str, list[int]] = defaultdict(list)
        for j, q in enumerate(self.c.profiling):
            rows[rec.questions[q].category].append(j)
        panels: list[Panel] = []
        for q, prior in zip(self.c.test, self.priors, strict=True):
            idx = rows.get(rec.questions[q].category, [])
            acc = {n: (float(np.sum(marks[n][idx])) + 1) / (len(idx) + 2) for n in self.names}
            top = sorted(self.names, key=lambda n: (-acc[n], n))[:k]
            panels.append((top, {n: log_odds_weight(acc[n]) for n in top}, None, prior))
        return panels

    def oracle(self) -> float:
        return float(np.mean([any(self.choices[n][i] == g for n in self.names) for i, g in enumerate(self.gold)]))


def _prompt_tokens(rec: Recording, qid: str) -> int:
    q = rec.questions[qid]
    return round(len(" ".join([q.question, *q.options]).split()) * 4 / 3) + 20


def run_pool(corpus: Corpus, models: list[str]) -> PoolResult:
    bench = PoolBench(corpus, models)
    symbolic = SymbolicRouter(bench.profile.evidence)
    knn = KnnRouter(bench.profile.evidence)
    best, single = bench.best_single()
    out = PoolResult(models, notes={"best_single": best, "router": f"knn {knn.params}"})
    methods: dict[str, Callable[[], list[Panel]]] = {
        "best_single": lambda: single,
        "category_k3": partial(bench.per_category, 3),
    }
    for k in range(1, K_MAX + 1):
        methods[f"random_k{k}"] = partial(bench.random_k, k)
        methods[f"symbolic_moe_k{k}"] = partial(bench.routed, symbolic, k, "sample")
        methods[f"router_k{k}"] = partial(bench.routed, knn, k, knn.preferred_mode)
    right: dict[str, np.ndarray] = {}
    for name, make in methods.items():  # each method meets the test split once
        panels = make()
        right[name] = bench.right(panels)
        out.accuracy[name] = float(right[name].mean())
        out.energy_kj[name], out.latency_s[name] = bench.cost(panels)
    out.accuracy["oracle"] = bench.oracle()
    out.gain_ci = paired_bootstrap(right["router_k3"] - right["best_single"], corpus.seed)
    return out


def pools_of(recording: Recording) -> dict[str, list[str]]:
    return {"all": list(recording.models), "open_le_13b": [m for m in recording.models if is_open_small(m)]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("data_dir", help="a replay folder: questions.jsonl.gz + predictions.csv.gz")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="the splits to run and average")
    ap.add_argument("--seed", type=int, help="one split only (the same as --seeds S)")
    ap.add_argument("--test-size", type=float, default=0.5, help="share of questions held out for test")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "skillroute" / "embeddings",
        help="where question embeddings are kept between runs",
    )
    ap.add_argument("--no-cache", action="store_true", help="embed afresh and keep nothing")
    ap.add_argument("--embedding", choices=["static", "transformer", "both"],
                    help="embed questions and read skills with this kind (default: as the service does, static "
                         "for the k-NN router, transformer for Symbolic-MoE's skills)")
    args = ap.parse_args(argv)
    if args.seed is not None:
        args.seeds = [args.seed]
    return args


def skill_kind(forced: EmbeddingKind | None) -> EmbeddingKind:
    """The kind the service reads skills with under the symbolic router (static reads a skill's
    name much worse, README "Load"), unless --embedding forces one."""
    return forced or embedding_kind("auto", "symbolic")


def main(argv: Sequence[str] | None = None, embedder: Embedder | None = None,
         skill_embedder: Embedder | None = None) -> int:
    """Run the benchmark; `embedder` and `skill_embedder` let a caller share loaded models."""
    args = parse_args(argv)
    started = time.perf_counter()
    cache_dir = None if args.no_cache else args.cache_dir
    embedder = embedder or routing_embedder(args.embedding)
    skill_embedder = skill_embedder or get_embedder(skill_kind(args.embedding))
    runs: dict[int, tuple[Corpus, dict[str, PoolResult]]] = {}
    for seed in dict.fromkeys(args.seeds):
        corpus = build_corpus(args.data_dir, args.test_size, seed, cache_dir, embedder, skill_embedder)
        runs[seed] = corpus, {name: run_pool(corpus, models) for name, models in pools_of(corpus.recording).items()
                              if models}
    if args.json:
        print(json.dumps(as_json(runs), indent=2))
        return 0
    corpus = next(iter(runs.values()))[0]
    print(f"# routing quality on {corpus.recording.folder}")
    print(
        f"seeds {', '.join(map(str, runs))}; each split stratified by category: {len(corpus.profiling)} profiling, "
        f"{len(corpus.test)} test questions (test share {args.test_size})"
    )
    print(
        f"questions embedded {embedder.kind}; skills (Symbolic-MoE): embedding fast path ({skill_embedder.kind}, "
        "3 nearest seed skills) + the category; "
        "aggregation: profile-weighted voting, no aggregator LLM"
    )
    for seed, (_, results) in runs.items():
        print(f"\n# seed {seed}")
        for name, r in results.items():
            print_pool(name, r)
    print_seeds(runs)
    print(f"\nwall time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
