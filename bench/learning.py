"""Does the router learn from its traffic? Competitions and feedback on a stream of recorded queries.

    python bench/learning.py DATA_DIR [--seed-questions 300] [--segments 6] [--seed 0] [--json]

The k-NN router is profiled on a small seed set (about 300 questions, stratified by category),
then the remaining questions of the replay folder arrive in a seeded order as live traffic. Each
is routed (top k=3 of the experts the router is sure of) and answered by the weighted vote of
the recruited experts' recorded letters, as the service does. The variants differ only in what
the router learns while the stream runs (orchestrator/routing/learning.py, the service's code):

- static: nothing (profiled once);
- competition 5% / 20%: that share of queries is a competition: every expert answers, each answer
  is marked against the reliability-weighted consensus of all of them (no gold), and the query
  joins the router's memory;
- feedback 10%: that share of queries is marked by a user against gold: the recruited experts'
  marks only;
- profiled on everything: a reference, fitted on the seed set and the whole stream with gold.

One open model (--withheld) is unknown at the start and registered after the first third of the
stream: the learning variants explore it (it answers as an extra on a capped share of queries)
until it has enough evidence, then recruit it where it does well; the static router (and the
reference) know it from the start. Prints accuracy per stream segment of each variant on each
pool, the withheld model's share of recruitment per segment and where it is recruited most, and
`last_segment_gain_open`: the best learning variant's last segment minus the static router's,
on the open <=13B pool, in points.
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
)
from bench.routing_quality import embed  # noqa: E402
from experts.replay import Recording, load_recording  # noqa: E402
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
    lessons: list[Lesson] = field(default_factory=list)


class Run:
    """One variant over the stream: route, vote, learn; accuracy and recruitment per segment."""

    def __init__(self, s: Stream, models: list[str], variant: Variant, segments: int):
        self.s, self.v, self.segments = s, variant, segments
        self.names = [expert_name(m) for m in models]
        self.model_of = dict(zip(self.names, models, strict=True))
        base = replay_evidence(s.recording, s.seed_ids, s.emb_seed, s.skills_seed, models).evidence
        self.known = [n for n in self.names if n != variant.withheld]
        self.base = _only(base, self.known)
        self.withheld_evidence = base
        self.router = KnnRouter(self.base)

    def run(self) -> dict[str, object]:
        n, per = len(self.s.stream_ids), -(-len(self.s.stream_ids) // self.segments)
        right, share = [0] * self.segments, [Counter[str]() for _ in range(self.segments)]
        joined = n // 3
        for i, qid in enumerate(self.s.stream_ids):
            if i == joined and self.v.withheld:
                self.known.append(self.v.withheld)
                self._rebuild(refit=False)
            seg = i // per
            chosen, weights = self._recruit(i)
            share[seg].update(chosen)
            letters = {e: self.s.recording.answer(self.model_of[e], qid) for e in chosen}
            voted = weighted_vote(list(letters.items()), weights, self.router.reliability).answer
            right[seg] += voted == self._gold(qid)
            self._learn(i, qid, chosen, weights)
        sizes = [min(per, n - k * per) for k in range(self.segments)]
        return {"accuracy": [r / z for r, z in zip(right, sizes, strict=True)],
                "withheld_share": [c[self.v.withheld] / max(c.total(), 1) for c in share] if self.v.withheld else None,
                "lessons": len(self.v.lessons)}

    def _recruit(self, i: int) -> tuple[list[str], dict[str, float]]:
        scores = [x for x in self.router.score([], self.s.emb_stream[i]) if x.name in self.known]
        counts = observed_counts(self.router.evidence)
        certain = [x for x in scores if counts.get(x.name, 0) >= CERTAIN_AFTER]
        return recruit(certain, K, "topk"), {x.name: x.weight for x in scores}

    def _gold(self, qid: str) -> str:
        return self.s.recording.questions[qid].answer

    def _learn(self, i: int, qid: str, chosen: list[str], weights: dict[str, float]) -> None:
        if not self.v.learns:
            return
        rng = random.Random(f"{self.v.name}:{i}")
        draw = rng.random()
        if draw < self.v.compete:
            self._lesson(i, qid, self.known, weights, gold=None, source="competition")
        elif draw < self.v.compete + self.v.feedback:
            self._lesson(i, qid, chosen, weights, gold=self._gold(qid), source="feedback")
        elif (explore := self._uncertain()) and rng.random() < EXPLORE_RATE:
            self._lesson(i, qid, [*chosen, *explore], weights, gold=None, source="explore")

    def _uncertain(self) -> list[str]:
        counts = observed_counts(self.router.evidence)
        return [n for n in self.known if counts.get(n, 0) < CERTAIN_AFTER]

    def _lesson(self, i: int, qid: str, experts: Sequence[str], weights: dict[str, float], gold: str | None,
                source: str) -> None:
        texts = {e: f"Answer: {self.s.recording.answer(self.model_of[e], qid) or ''}" for e in experts}
        marks, letters, _ = scored(texts, weights, self.router.reliability, gold)
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
    return RoutingEvidence(profiles, evidence.question_embeddings, correct, evidence.labels, choices, observed=observed)


def reference(s: Stream, models: list[str], segments: int) -> dict[str, object]:
    """The router profiled on the seed set and the whole stream, with gold (an upper reference)."""
    ids = s.seed_ids + s.stream_ids
    emb = np.vstack([s.emb_seed, s.emb_stream])
    evidence = replay_evidence(s.recording, ids, emb, s.skills_seed + s.skills_stream, models).evidence
    run = Run(s, models, Variant("everything", learns=False), segments)
    run.router = KnnRouter(evidence)
    return run.run()


def bench(folder: str, n_seed: int, segments: int, seed: int, withheld: str,
          cache_dir: Path | None) -> dict[str, object]:
    started = time.perf_counter()
    s = build_stream(folder, n_seed, seed, cache_dir, Embedder())
    pools = {"open_le_13b": [m for m in s.recording.models if is_open_small(m)], "all": list(s.recording.models)}
    out: dict[str, object] = {"seed": seed, "n_seed": len(s.seed_ids), "n_stream": len(s.stream_ids),
                              "segments": {}, "withheld": withheld}
    for pool, models in pools.items():
        hold = expert_name(withheld) if withheld in models else None
        variants = [Variant("static", learns=False), Variant("competition_5", compete=0.05, withheld=hold),
                    Variant("competition_20", compete=0.20, withheld=hold),
                    Variant("feedback_10", feedback=0.10, withheld=hold)]
        results = {v.name: Run(s, models, v, segments).run() for v in variants}
        results["profiled_on_everything"] = reference(s, models, segments)
        out["segments"][pool] = results  # type: ignore[index]
    open_results = out["segments"]["open_le_13b"]  # type: ignore[index]
    static_last = open_results["static"]["accuracy"][-1]
    best = max(open_results[v]["accuracy"][-1] for v in ("competition_5", "competition_20", "feedback_10"))
    out["last_segment_gain_open"] = round(100 * (best - static_last), 2)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--seed-questions", type=int, default=300)
    ap.add_argument("--segments", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--withheld", default="mathstral-7B", help="a model registered only after a third of the stream")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "skillroute" / "embeddings")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = bench(args.data_dir, args.seed_questions, args.segments, args.seed, args.withheld, args.cache_dir)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"# learning from traffic: {res['n_seed']} seed questions, a stream of {res['n_stream']}, seed {res['seed']}")
    for pool, results in res["segments"].items():  # type: ignore[attr-defined]
        print(f"\n## pool {pool}: accuracy per stream segment")
        for name, r in results.items():
            accs = " ".join(f"{100 * a:5.1f}" for a in r["accuracy"])
            print(f"{name:24s} {accs}   ({r['lessons']} lessons)")
        for name, r in results.items():
            if r.get("withheld_share"):
                shares = " ".join(f"{100 * x:5.1f}" for x in r["withheld_share"])
                print(f"{res['withheld']} share of recruitment ({name}): {shares}")
    gain = res["last_segment_gain_open"]
    print(f"\nlast segment, best learning variant minus static, open <=13B: {gain:+.2f} points")
    print(f"wall time {res['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
