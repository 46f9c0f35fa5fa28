"""Routing quality on real recorded answers: does routing beat the best single model?

    python bench/routing_quality.py DATA_DIR [--json] [--seeds 0 1 2 3 4] [--test-size F]
                                    [--embedding static|transformer|both]

DATA_DIR is any folder of the replay format (questions.jsonl.gz, predictions.csv.gz). Questions
are split, stratified by category and seeded, into a profiling part and a test part. Experts are
profiled on the profiling part only: Symbolic-MoE profiles over skills from the embedding fast
path (nearest seed skills, no keyword LLM at this scale) plus the question's category, and the
k-NN router's per-question evidence (questions embedded as the service embeds them for the
k-NN router unless --embedding says otherwise); every choice (best single expert, per-category
experts, the router's fitted parameters) is made there. Each test number below touches the test part once.
Every figure is reported per seed (split) and as the mean and spread over the seeds (0-4 unless
told): a change that helps one split and not the mean is not a gain.

No aggregator LLM can read thousands of answers here, so every multi-expert method aggregates by
profile-weighted voting: each recruited expert's letter votes with its router weight (S_i·γ_i for
Symbolic-MoE, log-odds of the estimated accuracy for the k-NN router and the per-category and
random baselines). Cost per query is simulated from the recorded models' sizes (experts/
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
)
from experts.cost_model import model_cost  # noqa: E402
from experts.replay import Recording, load_recording  # noqa: E402
from orchestrator.aggregation.reliability import AnswerReliability  # noqa: E402
from orchestrator.aggregation.vote import log_odds_weight, weighted_vote  # noqa: E402
from orchestrator.domain import ExpertScore, RecruitMode  # noqa: E402
from orchestrator.pools.loader import expert_name, split_questions  # noqa: E402
from orchestrator.routing.knn_router import KnnRouter  # noqa: E402
from orchestrator.routing.recruit import recruit  # noqa: E402
from orchestrator.routing.router import Router, SymbolicRouter  # noqa: E402
from skills.embedder import Embedder  # noqa: E402

K_MAX = 5
COT_TOKENS = 256  # the chain of thought a recorded model wrote before its letter (cost only)

# A panel: for one test question, the recruited experts, the weight of each one's vote and the
# router's per-letter reliability offsets (None: plain weighted vote).
Panel = tuple[list[str], dict[str, float], AnswerReliability | None]


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


def build_corpus(
    folder: str, test_size: float, seed: int, cache_dir: Path | None, embedder: Embedder | None = None
) -> Corpus:
    recording = load_recording(folder)
    profiling, test = split_questions(recording, test_size, seed)
    texts = [routing_text(recording.questions[q]) for q in profiling + test]
    embedder = embedder or routing_embedder()
    vectors = embed(embedder, texts, cache_dir)
    skills = nearest_skills(skill_vocabulary(recording, embedder), vectors)
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
        self._scored: dict[str, list[list[ExpertScore]]] = {}
        self._costs = {n: model_cost(m) for n, m in self.model_of.items()}

    # -- scoring -----------------------------------------------------------------------------
    def score(self, panels: Sequence[Panel]) -> float:
        right = 0
        for i, (experts, weights, reliability) in enumerate(panels):
            result = weighted_vote([(e, self.choices[e][i]) for e in experts], weights, reliability)
            right += result.answer == self.gold[i]
        return right / len(self.gold)

    def cost(self, panels: Sequence[Panel]) -> tuple[float, float]:
        """Mean energy (kJ) and mean latency (s) per query of these panels."""
        energy = latency = 0.0
        for i, (experts, _, _) in enumerate(panels):
            costs = [self._costs[e].estimate(self.tokens[i], COT_TOKENS) for e in experts]
            energy += sum(x.energy_j for x in costs) / 1e3
            latency += max((x.latency_s for x in costs), default=0.0)
        return energy / len(panels), latency / len(panels)

    # -- methods -----------------------------------------------------------------------------
    def best_single(self) -> tuple[str, list[Panel]]:
        best = max(self.names, key=lambda n: (self.prof_accuracy[n], n))
        return best, [([best], {best: 1.0}, None)] * len(self.gold)

    def random_k(self, k: int) -> list[Panel]:
        rng = random.Random(f"random:{self.c.seed}:{k}")
        weights = {n: log_odds_weight(a) for n, a in self.prof_accuracy.items()}
        return [(rng.sample(self.names, min(k, len(self.names))), weights, None) for _ in self.gold]

    def routed(self, router: Router, k: int, mode: RecruitMode) -> list[Panel]:
        """The service's path: router.score → recruit → vote with the router's weights."""
        panels: list[Panel] = []
        for i, scores in enumerate(self._scores(router)):
            chosen = recruit(scores, k, mode, random.Random(f"{self.c.seed}:{i}"))
            panels.append((chosen, {s.name: s.weight for s in scores}, router.reliability))
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
        for q in self.c.test:
            idx = rows.get(rec.questions[q].category, [])
            acc = {n: (float(np.sum(marks[n][idx])) + 1) / (len(idx) + 2) for n in self.names}
            top = sorted(self.names, key=lambda n: (-acc[n], n))[:k]
            panels.append((top, {n: log_odds_weight(acc[n]) for n in top}, None))
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
    for name, make in methods.items():  # each method meets the test split once
        panels = make()
        out.accuracy[name] = bench.score(panels)
        out.energy_kj[name], out.latency_s[name] = bench.cost(panels)
    out.accuracy["oracle"] = bench.oracle()
    return out


# -- output -------------------------------------------------------------------------------------
HEADLINE = [
    ("best_single", "best single expert (chosen on profiling)"),
    ("random_k3", "random k=3"),
    ("symbolic_moe_k3", "Symbolic-MoE as published (sample k=3)"),
    ("category_k3", "per-category experts k=3 (uses the category label)"),
    ("router_k3", "k-NN router k=3 (the service's router)"),
    ("oracle", "oracle (any expert right)"),
]


def pools_of(recording: Recording) -> dict[str, list[str]]:
    return {"all": list(recording.models), "open_le_13b": [m for m in recording.models if is_open_small(m)]}


def as_json(runs: dict[int, tuple[Corpus, dict[str, PoolResult]]]) -> dict[str, object]:
    """`pools`: each method's mean accuracy over the seeds; `spread`: its standard deviation;
    `per_seed`: every seed's own pools and details."""
    per_seed = {str(seed): _seed_json(results, corpus) for seed, (corpus, results) in runs.items()}
    names = next(iter(runs.values()))[1].keys()
    pools: dict[str, object] = {}
    spread: dict[str, object] = {}
    for name in names:
        values = [results[name].accuracy for _, results in runs.values()]
        pools[name] = {k: round(float(np.mean([v[k] for v in values])), 4) for k in values[0]}
        pools[name]["n_test"] = len(next(iter(runs.values()))[0].test)  # type: ignore[index]
        spread[name] = {k: round(float(np.std([v[k] for v in values])), 4) for k in values[0]}
    return {"seeds": list(runs), "pools": pools, "spread": spread, "gain_router_k3": _gains(runs), "per_seed": per_seed}


def _gains(runs: dict[int, tuple[Corpus, dict[str, PoolResult]]]) -> dict[str, dict[str, object]]:
    """Router k=3 minus the best single expert, in points: each seed's and their mean."""
    out: dict[str, dict[str, object]] = {}
    for name, each in _gain_points(runs).items():
        out[name] = {"per_seed": [round(g, 2) for g in each], "mean": round(float(np.mean(each)), 2),
                     "std": round(float(np.std(each)), 2)}
    return out


def _gain_points(runs: dict[int, tuple[Corpus, dict[str, PoolResult]]]) -> dict[str, list[float]]:
    names = next(iter(runs.values()))[1]
    return {n: [100 * (r[n].accuracy["router_k3"] - r[n].accuracy["best_single"]) for _, r in runs.values()]
            for n in names}


def _seed_json(results: dict[str, PoolResult], corpus: Corpus) -> dict[str, object]:
    pools: dict[str, object] = {}
    for name, r in results.items():
        accuracy = {k: round(v, 4) for k, v in r.accuracy.items()}
        pools[name] = {**accuracy, "n_test": len(corpus.test), "seed": corpus.seed}
    details = {
        name: {
            "models": r.models,
            **r.notes,
            "energy_kj_per_query": _rounded(r.energy_kj),
            "latency_s_per_query": _rounded(r.latency_s),
        }
        for name, r in results.items()
    }
    return {"pools": pools, "details": details, "n_profiling": len(corpus.profiling), "n_test": len(corpus.test)}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in values.items()}


def print_pool(name: str, r: PoolResult) -> None:
    acc = r.accuracy
    print(f"\n## pool {name}: {len(r.models)} experts: {', '.join(r.models)}")
    print(f"best single expert on profiling: {r.notes['best_single']}; router: {r.notes['router']}")
    print(f"{'method':58s} {'test acc':>8s} {'vs best':>8s} {'kJ/query':>9s} {'s/query':>8s}")
    for key, label in HEADLINE:
        delta = 100 * (acc[key] - acc["best_single"])
        energy = f"{r.energy_kj[key]:9.1f}" if key in r.energy_kj else f"{'-':>9s}"
        latency = f"{r.latency_s[key]:8.2f}" if key in r.latency_s else f"{'-':>8s}"
        print(f"{label:58s} {100 * acc[key]:7.1f}% {delta:+7.1f} {energy} {latency}")
    print(f"\naccuracy vs expert calls k (pool {name}); every k>1 aggregated by weighted voting")
    print(f"{'k':>3s} {'random':>8s} {'Symbolic-MoE':>13s} {'router':>8s} {'router kJ/q':>12s} {'router s/q':>11s}")
    for k in range(1, K_MAX + 1):
        rk = f"router_k{k}"
        print(
            f"{k:3d} {100 * acc[f'random_k{k}']:7.1f}% {100 * acc[f'symbolic_moe_k{k}']:12.1f}% "
            f"{100 * acc[rk]:7.1f}% {r.energy_kj[rk]:12.1f} {r.latency_s[rk]:11.2f}"
        )
    print(f"\naccuracy vs cost (pool {name}), cheapest first (simulated energy per query)")
    for key in sorted(r.energy_kj, key=lambda x: (r.energy_kj[x], x)):
        if key.startswith(("router_k", "symbolic_moe_k", "best_single", "category")):
            print(f"  {key:18s} {r.energy_kj[key]:8.1f} kJ  {100 * acc[key]:5.1f}%")


def print_seeds(runs: dict[int, tuple[Corpus, dict[str, PoolResult]]]) -> None:
    """Each seed's headline figures, then their mean and spread."""
    gains = _gain_points(runs)
    for name in next(iter(runs.values()))[1]:
        print(f"\n## pool {name} over seeds {', '.join(map(str, runs))} (test accuracy, %)")
        print(f"{'method':58s} " + " ".join(f"{'s' + str(s):>6s}" for s in runs) + f" {'mean':>6s} {'sd':>5s}")
        for key, label in HEADLINE:
            each = [100 * r[name].accuracy[key] for _, r in runs.values()]
            cells = " ".join(f"{v:6.1f}" for v in each)
            print(f"{label:58s} {cells} {np.mean(each):6.1f} {np.std(each):5.1f}")
        g = gains[name]
        cells = " ".join(f"{v:+6.1f}" for v in g)
        print(f"{'router k=3 minus best single (points)':58s} {cells} {np.mean(g):+6.1f} {np.std(g):5.1f}")


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
                    help="embed questions with this kind (default: the service's, for the k-NN router)")
    args = ap.parse_args(argv)
    if args.seed is not None:
        args.seeds = [args.seed]
    return args


def main(argv: Sequence[str] | None = None, embedder: Embedder | None = None) -> int:
    """Run the benchmark; `embedder` lets a caller share an already loaded model."""
    args = parse_args(argv)
    started = time.perf_counter()
    cache_dir = None if args.no_cache else args.cache_dir
    embedder = embedder or routing_embedder(args.embedding)
    runs: dict[int, tuple[Corpus, dict[str, PoolResult]]] = {}
    for seed in dict.fromkeys(args.seeds):
        corpus = build_corpus(args.data_dir, args.test_size, seed, cache_dir, embedder)
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
        f"questions embedded {embedder.kind}; skills: embedding fast path (3 nearest seed skills) + the category; "
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
