"""Model swaps: per-query load → generate → unload against our scheduler, in one run.

Both runs go through the same pipeline with the same routing decisions (fixed seeds) and
temperature 0; only the executor differs. Prints loads (ours, the floor, naive), wall times,
their ratio, the seconds spent loading, the ratio of this process's CPU times (steadier than
wall time when others share the CPU), and whether every generation came out identical.

This measures scheduling, not routing. With `--recruit uniform` (the default) each query's k
experts are drawn uniformly with replacement over the pool, seeded per query, after the
pipeline has routed it (skills, scores and aggregator are the service's own): the router's
S·γ draws follow profile quality, and on this pool never drew SmolLM2, so a third of the pool
would sit idle. `--recruit router` keeps the router's draws.

`--backend vllm` runs the same three models through vLLM (exported from the packaged GGUFs,
docs/vllm.md) instead of llama.cpp: there a load is an engine start, as on a GPU server, and the
worker's memory budget is raised to hold all three engines (float32 on a CPU without bf16).
Measured here (30 queries, k=3, quiet 2-core machine): llama.cpp 1.62x; vLLM 5.34x and 6.05x on
the code that runs greedy repeats once (4.95x and 5.78x before it), loads at the floor and identical
answers in all (docs/vllm.md).

    python bench/swaps.py [--queries 30] [--k 3] [--max-tokens 8] [--recruit uniform|router]
                          [--backend llamacpp|vllm] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from experts.factory import make_backend
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, Decision, Outcome
from orchestrator.pipeline import Pipeline
from orchestrator.pools.schema import (
    ArithmeticSource,
    GenerationBudget,
    MMLUSource,
    PoolConfig,
    ValidationConfig,
    ValidationSource,
)
from orchestrator.probe import Probe
from orchestrator.scheduling.executor import execute_naive
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.worker import BackendFactory
from orchestrator.settings import BackendSettings, LearningSettings, Settings
from skills.datasets import format_prompt, load_mmlu
from skills.embedder import Embedder

BASES = {
    "smollm2": "package:smollm2-135m-instruct",
    "qwen-0.5b": "package:qwen2.5-coder-0.5b-instruct",
    "qwen-1.5b": "package:qwen2.5-coder-1.5b-instruct",
}


# What the three engines need under vLLM on a CPU without bf16: float32 weights (0.5 + 2.4 +
# 6.8 GB) and 512 MiB of KV cache each; the default 8 GB would evict one to load another.
VLLM_MEMORY_BUDGET_GB = 16.0


def bench_pool(max_tokens: int, backend: str = "llamacpp") -> PoolConfig:
    experts = [ExpertSpec(name=n, base=BaseModelSpec(kind=backend, source=s)) for n, s in BASES.items()]
    subjects = ["high school mathematics", "world religions", "college biology", "jurisprudence"]
    sources: list[ValidationSource] = [ArithmeticSource(n=4), MMLUSource(per_subject=1, subjects=subjects)]
    budget = GenerationBudget(profiling_max_tokens=8, expert_max_tokens=max_tokens, aggregator_max_tokens=max_tokens)
    return PoolConfig(validation=ValidationConfig(sources=sources), generation=budget, experts=experts)


def uniform_recruits(decisions: Sequence[Decision], experts: Collection[str], k: int) -> list[Decision]:
    """The decisions with k recruits each drawn uniformly with replacement, seeded by the query."""
    names = sorted(experts)
    return [d.model_copy(update={"recruited": random.Random(d.seed).choices(names, k=k)}) for d in decisions]


class LoadClock(Probe):
    """Sums the worker's load times, to show how much of a run's wall time loading was."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def model_loaded(self, worker: str, model: str, seconds: float) -> None:
        self.seconds += seconds


@dataclass
class Run:
    outcomes: list[Outcome]
    wall_s: float
    cpu_s: float  # this process's CPU time: steadier than wall time on a CPU shared with others
    loads: int
    load_s: float


def timed_run(c: SkillRoute, pipeline: Pipeline, inputs: list[Ask], decisions: list[Decision]) -> Run:
    worker = c.fleet[c.fleet.default]
    worker.shutdown()  # both runs start cold
    clock = worker.probe = LoadClock()
    loads, start, cpu = worker.total_loads(), time.perf_counter(), time.process_time()
    outcomes = pipeline.answer(c.pool.snapshot, inputs, decisions)
    return Run(outcomes, time.perf_counter() - start, time.process_time() - cpu, worker.total_loads() - loads,
               clock.seconds)


def texts(outcomes: list[Outcome]) -> list[list[str]]:
    return [[a.text for a in o.answers] for o in outcomes]


def say(msg: str) -> None:
    print(f"[swaps] {msg}", file=sys.stderr, flush=True)


def bench_settings(data_dir: Path, backend: str) -> Settings:
    """No competitions or explorations: their extra generations are not the recruited calls both
    runs are counted against (a query drawn to compete added a load to the naive run's 18 + 6)."""
    quiet = LearningSettings(competition_rate=0.0, explore_rate=0.0)
    if backend == "vllm":
        return Settings(data_dir=data_dir, learning=quiet,
                        backends=BackendSettings(memory_budget_gb=VLLM_MEMORY_BUDGET_GB))
    return Settings(data_dir=data_dir, learning=quiet)


def run(n: int, k: int, max_tokens: int, data_dir: Path, recruitment: str = "uniform", backend: str = "llamacpp",
        factory: BackendFactory = make_backend, embedder: Embedder | None = None) -> dict[str, object]:
    """Both runs over the bench pool; `factory` and `embedder` are for tests (mock weights)."""
    c = SkillRoute(bench_settings(data_dir, backend), bench_pool(max_tokens, backend), factory=factory,
                   embedder=embedder)
    say("profiling the bench pool (once)")
    c.bootstrap(lambda done, total: say(f"profiled {done}/{total}") if done == total or done % 16 == 0 else None)
    questions = load_mmlu("test", per_subject=1, seed=1)[:n]
    inputs = [Ask(text=format_prompt(q), k=k, mode="sample", seed=i) for i, q in enumerate(questions)]
    pool = c.pool.snapshot
    decisions = c.pipeline.route(pool, inputs)
    if recruitment == "uniform":
        decisions = uniform_recruits(decisions, pool.experts, k)
    naive = Pipeline(Fleet(c.fleet.workers, executor=execute_naive), c.embedder, c.pipeline.planner, c.pipeline.limits)
    say("ours: batched by base model")
    ours = timed_run(c, c.pipeline, inputs, decisions)
    say(f"ours took {ours.wall_s:.1f} s; naive: load → generate → unload per call")
    base = timed_run(c, naive, inputs, decisions)
    calls = Counter(pool.experts[name].base.key for d in decisions for name in d.recruited)
    needed = set(calls) | ({pool.experts[pool.aggregator].base.key} if pool.aggregator else set())
    c.close()
    return {"queries": n, "k": k, "max_tokens": max_tokens, "recruitment": recruitment, "backend": backend,
            "base_models": len(needed), "expert_calls": sum(calls.values()),
            # ours runs an expert drawn twice for one query once (greedy: the same reply)
            "expert_generations_ours": len({(i, name) for i, d in enumerate(decisions) for name in d.recruited}),
            "expert_calls_by_base": dict(sorted(calls.items())),
            "aggregator": pool.experts[pool.aggregator].base.key if pool.aggregator else None,
            "loads_ours": ours.loads, "loads_floor": len(needed), "loads_naive": base.loads,
            "wall_ours_s": round(ours.wall_s, 2), "wall_naive_s": round(base.wall_s, 2),
            "load_s_ours": round(ours.load_s, 2), "load_s_naive": round(base.load_s, 2),
            "wall_ratio_naive_over_ours": round(base.wall_s / ours.wall_s, 2),
            "cpu_ratio_naive_over_ours": round(base.cpu_s / ours.cpu_s, 2),
            "identical_answers": texts(ours.outcomes) == texts(base.outcomes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--recruit", choices=["uniform", "router"], default="uniform")
    ap.add_argument("--backend", choices=["llamacpp", "vllm"], default="llamacpp")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.queries, args.k, args.max_tokens, Path(tmp), args.recruit, args.backend)
    if args.json:
        print(json.dumps(res))
        return
    for key, val in res.items():
        print(f"{key:>28}: {val}")


if __name__ == "__main__":
    main()
