"""Model swaps: per-query load → generate → unload against our scheduler, in one run.

Both runs go through the same pipeline with the same routing decisions (fixed seeds) and
temperature 0; only the executor differs. Prints loads (ours, the floor, naive), wall times,
their ratio, and whether every generation came out identical.

    python bench/swaps.py [--queries 30] [--k 3] [--max-tokens 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.container import SkillRoute
from orchestrator.pipeline import Decision, Outcome, Pipeline, QueryInput
from orchestrator.pool_config import (
    ArithmeticSource,
    GenerationBudget,
    MMLUSource,
    PoolConfig,
    ValidationConfig,
    ValidationSource,
)
from orchestrator.scheduling.executor import execute_naive
from orchestrator.settings import Settings
from skills.datasets import format_prompt, load_mmlu

BASES = {
    "smollm2": "package:smollm2-135m-instruct",
    "qwen-0.5b": "package:qwen2.5-coder-0.5b-instruct",
    "qwen-1.5b": "package:qwen2.5-coder-1.5b-instruct",
}


def bench_pool(max_tokens: int) -> PoolConfig:
    experts = [ExpertSpec(name=n, base=BaseModelSpec(kind="llamacpp", source=s)) for n, s in BASES.items()]
    subjects = ["high school mathematics", "world religions", "college biology", "jurisprudence"]
    sources: list[ValidationSource] = [ArithmeticSource(n=4), MMLUSource(per_subject=1, subjects=subjects)]
    budget = GenerationBudget(profiling_max_tokens=8, expert_max_tokens=max_tokens, aggregator_max_tokens=max_tokens)
    return PoolConfig(validation=ValidationConfig(sources=sources), generation=budget, experts=experts)


def timed_run(
    c: SkillRoute, pipeline: Pipeline, inputs: list[QueryInput], decisions: list[Decision]
) -> tuple[list[Outcome], float, int]:
    c.worker.shutdown()  # both runs start cold
    loads, start = c.worker.total_loads(), time.perf_counter()
    outcomes = pipeline.answer(c.pool.snapshot, inputs, decisions)
    return outcomes, time.perf_counter() - start, c.worker.total_loads() - loads


def texts(outcomes: list[Outcome]) -> list[list[str]]:
    return [[a.generation.text for a in o.answers] for o in outcomes]


def say(msg: str) -> None:
    print(f"[swaps] {msg}", file=sys.stderr, flush=True)


def run(n: int, k: int, max_tokens: int, data_dir: Path) -> dict[str, object]:
    c = SkillRoute(Settings(data_dir=data_dir), bench_pool(max_tokens))
    say("profiling the bench pool (once)")
    c.bootstrap(lambda done, total: say(f"profiled {done}/{total}") if done == total or done % 16 == 0 else None)
    questions = load_mmlu("test", per_subject=1, seed=1)[:n]
    inputs = [QueryInput(format_prompt(q), k=k, mode="sample", seed=i) for i, q in enumerate(questions)]
    decisions = c.pipeline.route(c.pool.snapshot, inputs)
    naive = Pipeline(c.worker, c.embedder, c.pipeline.limits, executor=execute_naive)
    say("ours: batched by base model")
    ours_out, ours_s, ours_loads = timed_run(c, c.pipeline, inputs, decisions)
    say(f"ours took {ours_s:.1f} s; naive: load → generate → unload per call")
    naive_out, naive_s, naive_loads = timed_run(c, naive, inputs, decisions)
    needed = {c.pool.snapshot.experts[n].base.key for d in decisions for n in d.recruited}
    needed |= {c.pool.snapshot.experts[c.pool.snapshot.aggregator].base.key} if c.pool.snapshot.aggregator else set()
    c.close()
    return {"queries": n, "k": k, "max_tokens": max_tokens, "base_models": len(needed),
            "expert_calls": sum(len(d.recruited) for d in decisions),
            "loads_ours": ours_loads, "loads_floor": len(needed), "loads_naive": naive_loads,
            "wall_ours_s": round(ours_s, 2), "wall_naive_s": round(naive_s, 2),
            "wall_ratio_naive_over_ours": round(naive_s / ours_s, 2),
            "identical_answers": texts(ours_out) == texts(naive_out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.queries, args.k, args.max_tokens, Path(tmp))
    if args.json:
        print(json.dumps(res))
        return
    for key, val in res.items():
        print(f"{key:>28}: {val}")


if __name__ == "__main__":
    main()
