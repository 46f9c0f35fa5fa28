"""Does the router learn from its traffic? Competitions and feedback on a stream of recorded queries.

    python bench/learning.py DATA_DIR [--seed-questions 300] [--segments 6] [--seeds 0 1 2 3 4] [--draws 3] [--json]

The k-NN router is profiled on a small seed set (about 300 questions, stratified by category),
then the remaining questions of the replay folder arrive in a seeded order as live traffic. Each
is routed (top k=3 of the experts the router is sure of) and answered by the weighted vote of
the recruited experts' recorded letters, as the service does. The variants differ only in what
the router learns while the stream runs (orchestrator/routing/learning.py, the service's code):

- static: nothing (profiled once);
- competition 5% / 20%: that share of queries is a competition: every expert answers, each answer
  is marked against the reliability-weighted consensus of all of them (no gold), and the query
  joins the router's memory;
- feedback 10%: that share of queries is marked by a user against gold: the marks of the experts
  that answered it only;
- profiled on everything: a reference with gold on the seed set and the whole stream, cross-
  fitted (each half routed by a router that never saw that half, nor a copy of its questions).

One open model (--withheld) is registered after the first third of the stream with no profile
(as if its profiling had not run): every variant sees the same registration, and only a router
that learns can use it (the learners explore it, answering as an extra on a capped share of
queries, until it has enough evidence, then recruit it where it does well; the static router
never does). `static_all_profiled` is the static router that knew it from the start (profiled on
the seed set with the others), the stronger baseline.

Which queries compete, get feedback or explore is a random draw (one seed's last segment of
feedback_10 moved by up to 1.6 points between draws), so each learner's accuracy is the mean of `--draws` (3).

Prints accuracy per stream segment of each variant on each pool (mean over the seeds, and each
seed's), the withheld model's share of recruitment per segment (beside the learners', that of
the routers that knew it from the start) and, once registered, on the categories it leads (is
the pool's most accurate model on) against elsewhere, and `last_segment_gain_open`: the best learner's last
segment minus the static router's on the open <=13B pool, in points, mean over seeds (each seed's too);
`last_segment_gain_open_vs_all_profiled` against the stronger one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.replay_profiles import (  # noqa: E402
    is_open_small,
    nearest_skills,
    replay_evidence,
    routing_text,
    skill_vocabulary,
    vote_prior,
)
from bench.routing_quality import embed, routing_embedder  # noqa: E402
from experts.replay import Recording, load_recording, normalise_text  # noqa: E402
from orchestrator.aggregation.vote import weighted_vote  # noqa: E402
from orchestrator.pools.loader import expert_name  # noqa: E402
from orchestrator.routing.evidence import RoutingEvidence  # noqa: E402
from orchestrator.routing.knn_router import KnnRouter  # noqa: E402
from orchestrator.routing.learning import CERTAIN_AFTER, Lesson, learned, observed_counts, scored  # noqa: E402
from orchestrator.routing.recruit import recruit  # noqa: E402
from skills.embedder import Embedder  # noqa: E402

K = 3
UPDATE_EVERY = 25  # lessons between rebuilding the router's memory (same parameters)
REFIT_EVERY = 200  # lessons between refitting its parameters (leave-one-out)
EXPLORE_RATE = 0.1  # share of queries on which an uncertain expert answers as an extra


@dataclass(frozen=True)
class Stream:
    recording: Recording
    seed_ids: list[str]
    stream_ids: list[str]
    emb_seed: np.ndarray
    emb_stream: np.ndarray
    skills_seed: list[list[str]]
    skills_stream: list[list[str]]


def build_stream(folder: str, n_seed: int, seed: int, cache_dir: Path | None, embedder: Embedder) -> Stream:
    rec = load_recording(folder)
    ids = [q for q in rec.questions if all(rec.recorded(m, q) for m in rec.models)]
    random.Random(seed).shuffle(ids)
    seed_ids = _stratified(rec, ids, n_seed)
    chosen = set(seed_ids)
    stream_ids = [q for q in ids if q not in chosen]
    vectors = embed(embedder, [routing_text(rec.questions[q]) for q in seed_ids + stream_ids], cache_dir)
    skills = nearest_skills(skill_vocabulary(rec, embedder), vectors)
    n = len(seed_ids)
    return Stream(rec, seed_ids, stream_ids, vectors[:n], vectors[n:], skills[:n], skills[n:])


def _stratified(rec: Recording, ids: Sequence[str], n: int) -> list[str]:
    """About n questions, each category in its share of the corpus (ids are already shuffled)."""
    by_category = Counter(rec.questions[q].category for q in ids)
    quota = {c: max(1, round(n * k / len(ids))) for c, k in by_category.items()}
    picked: list[str] = []
    for q in ids:
        c = rec.questions[q].category
        if quota[c] > 0:
            quota[c] -= 1
            picked.append(q)
    return picked


@dataclass
class Variant:
    name: str
    compete: float = 0.0
    feedback: float = 0.0
    learns: bool = True
    withheld: str | None = None
    draw: int = 0  # which draw of the queries that compete, get feedback or explore
    lessons: list[Lesson] = field(default_factory=list)


@dataclass(frozen=True)
class Watch:
    """The withheld model's share of recruitment: per segment, and once registered on the
    categories it leads (is the pool's most accurate model on) against elsewhere."""

    name: str
    led: frozenset[str]

    def shares(self, per_segment: Sequence[Counter[str]], where: dict[bool, Counter[str]]) -> dict[str, object]:
        return {"withheld_share": [c[self.name] / max(c.total(), 1) for c in per_segment],
                "withheld_share_led": [where[x][self.name] / max(where[x].total(), 1) for x in (True, False)]
                if self.led else None}


class Run:
    """One variant over the stream: route, vote, learn; accuracy and recruitment per segment."""

    def __init__(self, s: Stream, models: list[str], variant: Variant, segments: int, watch: Watch | None = None):
        self.s, self.v, self.segments, self.watch = s, variant, segments, watch
        self.names = [expert_name(m) for m in models]
        self.model_of = dict(zip(self.names, models, strict=True))
        base = replay_evidence(s.recording, s.seed_ids, s.emb_seed, s.skills_seed, models).evidence
        self.known = [n for n in self.names if n != variant.withheld]
        self.base, self.withheld_evidence = _only(base, self.known), base
        self.router = KnnRouter(self.base)

    def run(self) -> dict[str, object]:
        n, per = len(self.s.stream_ids), -(-len(self.s.stream_ids) // self.segments)
        right, share = [0] * self.segments, [Counter[str]() for _ in range(self.segments)]
        joined, where = n // 3, {True: Counter[str](), False: Counter[str]()}
        for i, qid in enumerate(self.s.stream_ids):
            if i == joined and self.v.withheld:
                self.known.append(self.v.withheld)
                self._rebuild(refit=False)
            seg, (chosen, weights), q = i // per, self._recruit(i), self.s.recording.questions[qid]
            share[seg].update(chosen)
            if i >= joined and self.watch:
                where[q.category in self.watch.led].update(chosen)
            letters = [(e, self.s.recording.answer(self.model_of[e], qid)) for e in chosen]
            router = self.router
            voted = weighted_vote(letters, weights, router.reliability, vote_prior(router.option_prior, q)).answer
            right[seg] += voted == self._gold(qid)
            self._learn(i, qid, chosen, weights)
        sizes = [min(per, n - k * per) for k in range(self.segments)]
        return {"accuracy": [r / z for r, z in zip(right, sizes, strict=True)],
                **(self.watch.shares(share, where) if self.watch else {}), "lessons": len(self.v.lessons)}

    def _recruit(self, i: int) -> tuple[list[str], dict[str, float]]:
        options = len(self.s.recording.questions[self.s.stream_ids[i]].options)  # the vote's chance level
        scores = [x for x in self.router.score([], self.s.emb_stream[i], options) if x.name in self.known]
        counts = observed_counts(self.router.evidence)
        certain = [x for x in scores if counts.get(x.name, 0) >= CERTAIN_AFTER]
        return recruit(certain, K, "topk"), {x.name: x.weight for x in scores}

    def _gold(self, qid: str) -> str:
        return self.s.recording.questions[qid].answer

    def _learn(self, i: int, qid: str, chosen: list[str], weights: dict[str, float]) -> None:
        """What this query teaches. An explorer answers beside the recruited experts whatever
        else happens, so feedback on its query marks it too, as the service's feedback marks
        every expert that answered."""
        if not self.v.learns:
            return
        rng = random.Random(f"{self.v.name}:{self.v.draw}:{i}")
        draw = rng.random()
        explore = self._uncertain() if rng.random() < EXPLORE_RATE else []
        if draw < self.v.compete:
            self._lesson(i, qid, self.known, weights, gold=None, source="competition")
        elif draw < self.v.compete + self.v.feedback:
            self._lesson(i, qid, [*chosen, *explore], weights, gold=self._gold(qid), source="feedback")
        elif explore:
            self._lesson(i, qid, [*chosen, *explore], weights, gold=None, source="explore")

    def _uncertain(self) -> list[str]:
        counts = observed_counts(self.router.evidence)
        return [n for n in self.known if counts.get(n, 0) < CERTAIN_AFTER]

    def _lesson(self, i: int, qid: str, experts: Sequence[str], weights: dict[str, float], gold: str | None,
                source: str) -> None:
        texts = {e: f"Answer: {self.s.recording.answer(self.model_of[e], qid) or ''}" for e in experts}
        marks, letters, _ = scored(texts, weights, self.router.reliability, gold, explored=set(self._uncertain()))
        self.v.lessons.append(Lesson(self.s.emb_stream[i], tuple(self.s.skills_stream[i]), marks, letters, source))
        if len(self.v.lessons) % UPDATE_EVERY == 0:
            self._rebuild(refit=len(self.v.lessons) % REFIT_EVERY == 0)

    def _rebuild(self, refit: bool) -> None:
        evidence = learned(_only(self.withheld_evidence, self.known, blank=self.v.withheld), self.v.lessons)
        self.router = KnnRouter(evidence, None if refit else self.router.params)


def _only(evidence: RoutingEvidence, names: Sequence[str], blank: str | None = None) -> RoutingEvidence:
    """The evidence of these experts; `blank`'s seed-set marks unobserved (it was not profiled)."""
    keep = [n for n in sorted(evidence.correct or {}) if n in names]
    correct = {n: (evidence.correct or {})[n] for n in keep}
    n_rows = len(evidence.question_embeddings) if evidence.question_embeddings is not None else 0
    observed = {n: np.full(n_rows, n != blank) for n in keep}
    choices = {n: [None if n == blank else c for c in (evidence.choices or {})[n]] for n in keep}
    profiles = {n: ({} if n == blank else evidence.profiles[n]) for n in keep}
    return RoutingEvidence(profiles, evidence.question_embeddings, correct, evidence.labels, choices,
                           observed=observed, options=evidence.options, option_prior=evidence.option_prior)


class CrossFitted(Run):
    """Routes each half of the stream with a router profiled on the seed set and the other half."""

    def __init__(self, s: Stream, models: list[str], segments: int, watch: Watch | None = None):
        super().__init__(s, models, Variant("profiled_on_everything", learns=False), segments, watch)
        self.half = len(s.stream_ids) // 2
        first, second = np.arange(self.half), np.arange(self.half, len(s.stream_ids))
        self.routers = [self._router_without(first, second, models), self._router_without(second, first, models)]

    def _router_without(self, held: np.ndarray, used: np.ndarray, models: list[str]) -> KnnRouter:
        """On the seed set and `used`, less copies of `held` questions (44-60 a half)."""
        s = self.s
        text = [normalise_text(s.recording.questions[q].question) for q in s.stream_ids]
        routed = {text[h] for h in held}
        used = np.array([j for j in used if text[j] not in routed], dtype=int)
        ids = s.seed_ids + [s.stream_ids[j] for j in used]
        emb = np.vstack([s.emb_seed, s.emb_stream[used]])
        skills = s.skills_seed + [s.skills_stream[j] for j in used]
        return KnnRouter(replay_evidence(s.recording, ids, emb, skills, models).evidence)

    def _recruit(self, i: int) -> tuple[list[str], dict[str, float]]:
        self.router = self.routers[int(i >= self.half)]
        return super()._recruit(i)


# each learner: (share of queries that compete, share that get feedback)
LEARNERS = {"competition_5": (0.05, 0.0), "competition_20": (0.20, 0.0), "feedback_10": (0.0, 0.10)}
POOLS = ("open_le_13b", "all")
DRAWS = 3


def one_seed(s: Stream, pools: dict[str, list[str]], segments: int, withheld: str, draws: int = DRAWS
             ) -> dict[str, object]:
    """Every variant on every pool over one seed's stream; each learner over `draws` draws."""
    out: dict[str, object] = {}
    for pool, models in pools.items():
        hold = expert_name(withheld) if withheld in models else None
        watch = Watch(hold, led_by(s.recording, models, withheld)) if hold else None
        results = {"static": Run(s, models, Variant("static", learns=False, withheld=hold), segments, watch).run(),
                   "static_all_profiled": Run(s, models, Variant("static_all_profiled", learns=False), segments,
                                              watch).run()}
        for name, (compete, feedback) in LEARNERS.items():
            runs = [Run(s, models, Variant(name, compete, feedback, withheld=hold, draw=d), segments, watch).run()
                    for d in range(draws)]
            results[name] = _over_draws(runs)
        results["profiled_on_everything"] = CrossFitted(s, models, segments, watch).run()
        out[pool] = results
    return out


def led_by(rec: Recording, models: Sequence[str], model: str) -> frozenset[str]:
    """The categories on which `model` is the most accurate of `models` over the recording."""
    if model not in models:
        return frozenset()
    by_category: dict[str, list[str]] = {}
    for q, x in rec.questions.items():
        by_category.setdefault(x.category, []).append(q)

    def accuracy(m: str, ids: list[str]) -> float:
        return sum(rec.answer(m, q) == rec.questions[q].answer for q in ids) / len(ids)

    return frozenset(c for c, ids in by_category.items() if max(models, key=lambda m: accuracy(m, ids)) == model)


def _over_draws(runs: list[dict[str, object]]) -> dict[str, object]:
    """A learner's mean over its draws (which queries competed, got feedback or explored)."""
    shares = [r.get("withheld_share") for r in runs]
    return {"accuracy": _mean([r["accuracy"] for r in runs]),  # type: ignore[misc]
            "accuracy_per_draw": [r["accuracy"] for r in runs],
            "withheld_share": _mean_or_none(shares),
            "withheld_share_led": _mean_or_none([r.get("withheld_share_led") for r in runs]),
            "lessons": float(np.mean([r["lessons"] for r in runs]))}  # type: ignore[misc]


def summary(per_seed: dict[int, dict[str, object]]) -> dict[str, object]:
    """Mean accuracy per segment over the seeds, and the last-segment gains (mean and each seed's)."""
    runs = list(per_seed.values())
    segments = {pool: {name: {"accuracy": _mean([r[pool][name]["accuracy"] for r in runs]),  # type: ignore[index]
                              "withheld_share": _mean_or_none([r[pool][name].get("withheld_share") for r in runs]),  # type: ignore[index]
                              "withheld_share_led": _mean_or_none([r[pool][name].get("withheld_share_led")  # type: ignore[index]
                                                                   for r in runs])}
                       for name in runs[0][pool]}  # type: ignore[attr-defined]
                for pool in runs[0]}
    return {"segments": segments, **_gains(per_seed, "static", ""), **_gains(per_seed, "static_all_profiled",
                                                                              "_vs_all_profiled")}


def _gains(per_seed: dict[int, dict[str, object]], baseline: str, suffix: str) -> dict[str, object]:
    """The learner with the best mean last-segment gain over `baseline` on the open pool."""
    def gain(r: dict[str, object], v: str) -> float:
        pool = r["open_le_13b"]
        return 100 * (pool[v]["accuracy"][-1] - pool[baseline]["accuracy"][-1])  # type: ignore[index]
    ddof = min(1, len(per_seed) - 1)  # `std`: the sample SD over the seeds (a few splits of many); 0 for one
    each = {v: [gain(r, v) for r in per_seed.values()] for v in LEARNERS}
    best = max(LEARNERS, key=lambda v: float(np.mean(each[v])))
    return {f"last_segment_gain_open{suffix}": round(float(np.mean(each[best])), 2),
            f"last_segment_gain_open{suffix}_detail": {v: {"per_seed": [round(g, 2) for g in each[v]],
                                                           "mean": round(float(np.mean(each[v])), 2),
                                                           "std": round(float(np.std(each[v], ddof=ddof)), 2)}
                                                       for v in LEARNERS},
            f"best_learner{suffix}": best}


def _mean(rows: list[list[float]]) -> list[float]:
    return [round(float(x), 4) for x in np.mean(np.asarray(rows), axis=0)]


def _mean_or_none(rows: list[object]) -> list[float] | None:
    return None if rows[0] is None else _mean(rows)  # type: ignore[arg-type]


def bench(folder: str, n_seed: int, segments: int, seeds: Sequence[int], withheld: str, cache_dir: Path | None,
          embedder: Embedder | None = None, pools: Sequence[str] = POOLS, draws: int = DRAWS) -> dict[str, object]:
    started, embedder = time.perf_counter(), embedder or routing_embedder()
    per_seed: dict[int, dict[str, object]] = {}
    for seed in seeds:
        s = build_stream(folder, n_seed, seed, cache_dir, embedder)
        members = {"open_le_13b": [m for m in s.recording.models if is_open_small(m)], "all": list(s.recording.models)}
        per_seed[seed] = one_seed(s, {p: members[p] for p in pools}, segments, withheld, draws)
    return {"seeds": list(seeds), "draws": draws, "n_seed": len(s.seed_ids), "n_stream": len(s.stream_ids),
            "withheld": withheld, **summary(per_seed), "per_seed": {str(k): v for k, v in per_seed.items()},
            "wall_s": round(time.perf_counter() - started, 1)}


def main(argv: Sequence[str] | None = None, embedder: Embedder | None = None) -> int:
    """Run the benchmark; `embedder` lets a caller share an already loaded model."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--seed-questions", type=int, default=300)
    ap.add_argument("--segments", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--draws", type=int, default=DRAWS, help="draws of the learning queries per learner and seed")
    ap.add_argument("--withheld", default="mathstral-7B", help="a model registered only after a third of the stream")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "skillroute" / "embeddings")
    ap.add_argument("--no-cache", action="store_true", help="embed afresh and keep nothing")
    ap.add_argument("--pools", nargs="+", choices=POOLS, default=list(POOLS), help="open_le_13b is always run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    pools = ["open_le_13b", *(p for p in args.pools if p != "open_le_13b")]  # the gains are read from it
    res = bench(args.data_dir, args.seed_questions, args.segments, args.seeds, args.withheld,
                None if args.no_cache else args.cache_dir, embedder, pools, args.draws)
    if args.json:
        print(json.dumps(res))
        return 0
    show(res)
    return 0


def show(res: dict[str, object]) -> None:
    print(f"# learning from traffic: {res['n_seed']} seed questions, a stream of {res['n_stream']}, "
          f"seeds {', '.join(map(str, res['seeds']))}, each learner the mean of {res['draws']} draws")  # type: ignore[call-overload]
    for pool, results in res["segments"].items():  # type: ignore[attr-defined]
        print(f"\n## pool {pool}: accuracy per stream segment (mean over seeds)")
        for name, r in results.items():
            print(f"{name:24s} " + " ".join(f"{100 * a:5.1f}" for a in r["accuracy"]))
        for name, r in results.items():
            if r.get("withheld_share") and name != "static":
                shares = " ".join(f"{100 * x:5.1f}" for x in r["withheld_share"])
                print(f"{res['withheld']} share of recruitment ({name}): {shares}")
                if r.get("withheld_share_led"):
                    led, rest = r["withheld_share_led"]
                    print(f"  once registered: {100 * led:.1f} on the categories it leads, {100 * rest:.1f} elsewhere")
    for suffix, label in (("", "static"), ("_vs_all_profiled", "static_all_profiled")):
        print(f"\nlast segment minus {label}, open <=13B, points, per seed (mean ± sample sd over seeds):")
        for v, d in res[f"last_segment_gain_open{suffix}_detail"].items():  # type: ignore[attr-defined]
            each = " ".join(f"{g:+5.1f}" for g in d["per_seed"])
            print(f"  {v:16s} {each}   {d['mean']:+.2f} ± {d['std']:.2f}")
        print(f"  best learner ({res[f'best_learner{suffix}']}): {res[f'last_segment_gain_open{suffix}']:+.2f}")
    print(f"wall time {res['wall_s']} s")


if __name__ == "__main__":
    raise SystemExit(main())
