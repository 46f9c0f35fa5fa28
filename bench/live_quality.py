"""Live quality of a pool: routed answers against each expert alone, on questions profiling never saw.

The pool (the embedded `orchestrator/pools/default.yaml` unless `--pool` names another file) is
profiled once, or its stored profiles are reused from `--data-dir` (by default where `make serve`
keeps them). Then N questions of the packaged MMLU's test split are asked; that split is disjoint
from the validation split profiling draws from (`skills/datasets.py`), and the N are drawn evenly
over its 57 subjects by `--seed`. Every question is asked routed (k experts recruited the way the
service does by default, seeded per question, then aggregated) and to each expert alone (an
`Ask` naming the expert, as `model=<expert>` does over HTTP), all through the service's pipeline.
Each arm prints its accuracy with a Wilson 95 % interval and its wall time. The service learns
nothing meanwhile (no competitions, no explorations: `bench_settings`), so the routed arm's time
is its recruited work's and its router the same from the first question to the last.

`--questions arithmetic` asks free text instead ("What is 17*23?", graded by the number): no
options, so the vote cannot decide and what is measured is whom the router recruits for free
text and what the aggregator makes of it. They are drawn by `--seed` and none is a question the
pool profiles on.

    python bench/live_quality.py [--n 100] [--k 3] [--seed 0] [--questions mmlu|arithmetic]
                                 [--pool FILE] [--data-dir DIR] [--json]

The single expert the router is measured against is chosen as a user without these answers
would choose it: by its profiling accuracy (on the validation questions, as the service stores it
and /v1/experts shows it), not by its accuracy on the questions it is then scored on, which
would favour it by its luck on them. The best expert on those questions is printed beside it as
the oracle, a bound no choice made beforehand reaches.

JSON keys: `n`, `k`, `seed`, `questions`, `routed` and `experts` (name → `accuracy`, `low`, `high`,
`hits`, `wall_s`: on the held-out questions), `profiled_accuracy` (name → accuracy on the
profiling questions), `best_single` (the expert with the best profiling accuracy),
`routed_minus_best` (points: routed accuracy minus best_single's, both held out), `oracle_single`
(the best expert on the held-out questions) and `routed_minus_oracle` (points).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.keywords import interval  # noqa: E402
from orchestrator.container import SkillRoute  # noqa: E402
from orchestrator.domain import Ask  # noqa: E402
from orchestrator.pools.loader import load_pool_config  # noqa: E402
from orchestrator.pools.schema import PoolConfig  # noqa: E402
from orchestrator.scheduling.worker import BackendFactory  # noqa: E402
from orchestrator.services.profiling import load_source  # noqa: E402
from orchestrator.settings import DEFAULT_POOL, LearningSettings, Settings  # noqa: E402
from orchestrator.store.repositories.experts import ExpertRepository  # noqa: E402
from skills.datasets import LabelledQuestion, arithmetic_questions, format_prompt, load_mmlu  # noqa: E402
from skills.embedder import Embedder  # noqa: E402
from skills.grading import grade  # noqa: E402

SUBJECTS = 57


def held_out(n: int, seed: int) -> list[LabelledQuestion]:
    """n test-split questions, about n/57 from each subject, in a seeded order."""
    pool = load_mmlu("test", per_subject=math.ceil(n / SUBJECTS), seed=seed)
    return random.Random(seed).sample(pool, n)


def held_out_arithmetic(n: int, seed: int, pool: PoolConfig) -> list[LabelledQuestion]:
    """n distinct computed problems drawn by `seed`, none the same text as one the pool profiles
    on (the profiling draw uses the pool's validation seed, which a bench seed may equal)."""
    v = pool.validation
    profiled = {q.question for s in v.sources if s.kind == "arithmetic" for q in load_source(s, v.seed)}
    fresh = {q.question: q for q in arithmetic_questions(2 * n + len(profiled), seed) if q.question not in profiled}
    return list(fresh.values())[:n]


def ask_all(c: SkillRoute, asks: list[Ask], questions: list[LabelledQuestion]) -> dict[str, float]:
    """Route and answer the asks as one batch (as the service batches); accuracy and interval."""
    start = time.perf_counter()
    snapshot = c.pool.snapshot
    outcomes = c.pipeline.answer(snapshot, asks, c.pipeline.route(snapshot, asks))
    wall = time.perf_counter() - start
    hits = sum(grade(o.text, q.answer, q.kind, n_options=len(q.options)) for o, q in zip(outcomes, questions,
                                                                                        strict=True))
    low, high = interval(hits, len(questions))
    return {"accuracy": round(hits / len(questions), 4), "low": round(low, 4), "high": round(high, 4),
            "hits": hits, "wall_s": round(wall, 1)}


def profiled_accuracy(c: SkillRoute) -> dict[str, float]:
    """Each profiled expert's accuracy on the pool's validation questions, as profiling stored it."""
    with c.db.session() as s:
        return {e.name: e.accuracy for e in ExpertRepository(s).list() if e.accuracy is not None}


def best_by(accuracy: dict[str, float], among: list[str]) -> str:
    """The expert of `among` with the highest accuracy; a tie goes to the first name in order."""
    ranked = [e for e in sorted(among) if e in accuracy]
    if not ranked:
        raise ValueError(f"none of {among} has an accuracy to choose by")
    return max(ranked, key=lambda e: accuracy[e])


def baselines(routed: dict[str, float], alone: dict[str, dict[str, float]], profiled: dict[str, float]
              ) -> dict[str, object]:
    """The single expert chosen beforehand (by profiling accuracy) and the oracle (best held out),
    and the routed arm's margin over each, in points."""
    held = {e: arm["accuracy"] for e, arm in alone.items()}
    best, oracle = best_by(profiled, list(alone)), best_by(held, list(alone))
    return {"profiled_accuracy": {e: round(profiled[e], 4) for e in sorted(alone) if e in profiled},
            "best_single": best, "routed_minus_best": round(100 * (routed["accuracy"] - held[best]), 2),
            "oracle_single": oracle, "routed_minus_oracle": round(100 * (routed["accuracy"] - held[oracle]), 2)}


def say(msg: str) -> None:
    print(f"[live_quality] {msg}", file=sys.stderr, flush=True)


def run(n: int, k: int, seed: int, pool: PoolConfig, settings: Settings, factory: BackendFactory | None = None,
        embedder: Embedder | None = None, kind: str = "mmlu") -> dict[str, object]:
    """Both arms over `pool` on `kind` questions; `factory` and `embedder` are for tests (mock weights)."""
    c = SkillRoute(settings, pool, factory=factory, embedder=embedder)
    say(f"profiling the pool into {settings.data_dir} (stored profiles are reused)")
    c.bootstrap(lambda done, total: say(f"profiled {done}/{total}") if done == total or done % 20 == 0 else None)
    questions = held_out(n, seed) if kind == "mmlu" else held_out_arithmetic(n, seed, pool)
    prompts = [format_prompt(q) for q in questions]
    say(f"{n} held-out {kind} questions, routed (k={k})")
    routed = ask_all(c, [Ask(text=p, k=k, seed=i) for i, p in enumerate(prompts)], questions)
    say(f"routed: {routed}")
    alone: dict[str, dict[str, float]] = {}
    for name in sorted(c.pool.snapshot.experts):
        alone[name] = ask_all(c, [Ask(text=p, expert=name) for p in prompts], questions)
        say(f"{name} alone: {alone[name]}")
    profiled = profiled_accuracy(c)
    c.close()
    return {"n": n, "k": k, "seed": seed, "questions": kind, "routed": routed, "experts": alone,
            **baselines(routed, alone, profiled)}


def bench_settings(data_dir: Path | None) -> Settings:
    """The service's settings, quiet: a competition (5 % of routed queries by default) or an
    exploration runs every expert beside the recruited ones, adding to the routed arm's wall
    time, and moves the router between one question and the next."""
    quiet = LearningSettings(competition_rate=0.0, explore_rate=0.0)
    return Settings(data_dir=data_dir, learning=quiet) if data_dir else Settings(learning=quiet)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", choices=["mmlu", "arithmetic"], default="mmlu",
                    help="held-out MMLU (lettered) or computed arithmetic (free text)")
    ap.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: the service's data directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.n, args.k, args.seed, load_pool_config(args.pool), bench_settings(args.data_dir),
              kind=args.questions)
    if args.json:
        print(json.dumps(res))
        return
    profiled = cast(dict[str, float], res["profiled_accuracy"])
    arms = cast(dict[str, dict[str, float]], {"routed": res["routed"], **cast(dict, res["experts"])})
    for name, arm in arms.items():
        before = f"  (profiling {100 * profiled[name]:.1f} %)" if name in profiled else ""
        print(f"{name:>12}: {100 * arm['accuracy']:.1f} % [{100 * arm['low']:.1f}, {100 * arm['high']:.1f}]"
              f"  {arm['wall_s']} s{before}")
    print(f"routed − best single by profiling ({res['best_single']}): {res['routed_minus_best']:+.1f} points")
    print(f"routed − oracle, the best single on these questions ({res['oracle_single']}): "
          f"{res['routed_minus_oracle']:+.1f} points")


if __name__ == "__main__":
    main()
