"""MoE^2 budget selection: is the branch and bound exact, and is it fast enough per query?

    python bench/budgets.py [--json] [--instances N] [--seed S] [--replay DIR | --no-replay]

(a) Agreement with brute force on random instances with N <= 16 (noisy-or, weighted vote, and
    a non-symmetric monotone coverage quality given as a plain callable and again declared
    submodular; k_max from 1 to N; budgets loose, tight or infeasible; one instance in five
    puts experts on shared devices, where latencies add). Agreement: equal
    optimal value within 1e-9, or both infeasible naming the same cheapest options.
(b) Solve time p50/p99 at N = 16, 32, 64 with the default k_max = 5 (wall clock and process
    CPU time: this machine's 2 cores are shared, CPU time is the steadier number), brute force
    beside it at N = 16 on the same instances and the ratio of the two, measured in this run.
    Rows with k_max = N show the no-limit case (a 0/1 knapsack at heart: slower). The "hard"
    family (cost rising with quality, energy budget 5-40 % of the pool) is the stress case.
(c) Replay pool accuracy against energy and latency budgets for edge-only, server-only and
    mixed placements: the exact solver against greedy-by-ratio and budget-blind top-3
    (`bench/budgets_replay.py`, which says how each is defined).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.budgets_replay import replay_accuracy_vs_budget  # noqa: E402
from bench.budgets_replay import report as report_replay  # noqa: E402
from orchestrator.budgets.solver import (  # noqa: E402
    AggregationCost,
    Budget,
    BudgetDecision,
    Candidate,
    InfeasibleBudget,
    QualityName,
    QualitySpec,
    brute_force,
    monotone,
    solve,
)

Instance = tuple[list[Candidate], Budget, AggregationCost]
Solver = Callable[..., BudgetDecision]


def make_instance(rng: random.Random, n: int, k_max: int) -> Instance:
    """Costs independent of quality, or rising with it (the hard, knapsack-like case);
    latency and energy budgets each absent, loose, tight, or below every expert."""
    correlated = rng.random() < 0.5
    cands = []
    for i in range(n):
        q = rng.uniform(0.05, 0.95)
        scale = q / (1 - q) if correlated else rng.uniform(0.2, 5.0)
        latency = 0.05 + scale * rng.uniform(0.3, 1.5)  # seconds
        cands.append(Candidate(f"x{i}", q, latency, scale * rng.uniform(2.0, 40.0)))
    lat = sorted(c.latency_s for c in cands)
    en = sorted(c.energy_j for c in cands)
    agg = AggregationCost(rng.uniform(0, 0.3), rng.uniform(0, 0.05), rng.uniform(0, 5),
                          rng.uniform(0, 1))
    return cands, Budget(_pick(rng, lat, lat[-1]), _pick(rng, en, sum(en)), k_max), agg


def make_hard_instance(rng: random.Random, n: int, k_max: int) -> Instance:
    """The hard family: cost rises with quality (strongly correlated, as knapsack solvers
    dread), energy budget 5-40 % of the pool's total, latency budget 50-100 % of the slowest."""
    cands = []
    for i in range(n):
        q = rng.uniform(0.2, 0.9)
        odds = q / (1 - q)
        cands.append(Candidate(f"x{i}", q, 0.2 + odds * rng.uniform(0.5, 1.5),
                               10 * odds * rng.uniform(0.7, 1.3)))
    energy = sum(c.energy_j for c in cands) * rng.uniform(0.05, 0.4)
    latency = max(c.latency_s for c in cands) * rng.uniform(0.5, 1.0)
    return cands, Budget(latency, energy, k_max), AggregationCost(0.1, 0.01, 1.0, 0.1)


def _pick(rng: random.Random, costs: Sequence[float], loose: float) -> float | None:
    kind = rng.choices(["none", "loose", "tight", "infeasible"], [2, 2, 5, 1])[0]
    if kind == "none":
        return None
    if kind == "loose":
        return loose * 1.5
    if kind == "infeasible":
        return costs[0] * rng.uniform(0.3, 0.99)
    return rng.uniform(costs[0], costs[len(costs) // 2] * 3)


def on_shared_devices(rng: random.Random, cands: list[Candidate]) -> list[Candidate]:
    """Some experts share a device (one after another there), the rest have their own."""
    return [dataclasses.replace(c, device=rng.choice(["cpu", "gpu", None])) for c in cands]


def coverage(n: int, rng: random.Random) -> Callable[[Sequence[int]], float]:
    """Monotone, not symmetric: expected share of four weighted skills that someone covers."""
    skills = [(rng.random(), [rng.random() * rng.random() for _ in range(n)]) for _ in range(4)]
    total = sum(w for w, _ in skills) or 1.0

    def value(members: Sequence[int]) -> float:
        return sum(w * (1 - math.prod(1 - p[i] for i in members)) for w, p in skills) / total

    return value


def _outcome(solver: Solver, inst: Instance, quality: QualitySpec) -> tuple[str, float]:
    cands, budget, agg = inst
    try:
        return "ok", solver(cands, budget, quality, agg).quality
    except InfeasibleBudget as exc:
        return f"infeasible:{exc.fastest}:{exc.least_energy}", math.nan


def agreement(rng: random.Random, count: int) -> dict[str, object]:
    """(a): the fraction of instances where solve and brute force give the same optimum."""
    agree, kinds = 0, {"ok": 0, "infeasible": 0}
    for i in range(count):
        n = rng.randint(1, 16)
        k_max = rng.choice([1, 2, 3, 5, 5, n if n <= 12 else 5])
        inst = make_instance(rng, n, k_max)
        if i % 5 == 4:
            inst = (on_shared_devices(rng, inst[0]), *inst[1:])
        cover = coverage(n, rng)
        quality: QualitySpec = ("noisy_or", "weighted_vote", cover, monotone(cover, True))[i % 4]
        got, want = _outcome(solve, inst, quality), _outcome(brute_force, inst, quality)
        same = got[0] == want[0] and (got[0] != "ok" or abs(got[1] - want[1]) <= 1e-9)
        agree += same
        kinds["ok" if want[0] == "ok" else "infeasible"] += 1
    return {"instances": count, "agree": agree, "fraction": agree / count, **kinds}


def _time(solver: Solver, inst: Instance, quality: QualitySpec) -> tuple[float, float, int]:
    cands, budget, agg = inst
    wall, cpu = time.perf_counter(), time.process_time()
    decision = solver(cands, budget, quality, agg)
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3, decision.nodes


def _feasible_instances(
    rng: random.Random, n: int, k_max: int, count: int, family: str
) -> list[Instance]:
    make = make_hard_instance if family == "hard" else make_instance
    out: list[Instance] = []
    while len(out) < count:
        inst = make(rng, n, k_max)
        try:
            solve(*inst[:2], "noisy_or", inst[2])
        except InfeasibleBudget:
            continue
        out.append(inst)
    return out


def _quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50": statistics.median(xs), "p99": xs[min(len(xs) - 1, int(0.99 * len(xs)))],
            "max": xs[-1]}


def timing(
    rng: random.Random, n: int, k_max: int, count: int, brute: bool, family: str = "mixed",
    quality: QualityName | Literal["submodular"] = "noisy_or",
) -> dict[str, object]:
    """(b): solve (and optionally brute-force) time on `count` feasible instances."""
    insts = _feasible_instances(rng, n, k_max, count, family)
    specs: list[QualitySpec] = [
        monotone(coverage(n, rng), submodular=True) if quality == "submodular" else quality
        for _ in insts
    ]
    runs = [_time(solve, inst, q) for inst, q in zip(insts, specs, strict=True)]
    row: dict[str, object] = {
        "family": family, "quality": quality, "n": n, "k_max": k_max, "instances": count,
        "wall_ms": _quantiles([r[0] for r in runs]), "cpu_ms": _quantiles([r[1] for r in runs]),
        "nodes": _quantiles([float(r[2]) for r in runs]),
    }
    if brute:
        bf = [_time(brute_force, inst, q) for inst, q in zip(insts, specs, strict=True)]
        row["brute_force_wall_ms"] = _quantiles([r[0] for r in bf])
        row["brute_force_cpu_ms"] = _quantiles([r[1] for r in bf])
        row["brute_over_solve_p50"] = row["brute_force_cpu_ms"]["p50"] / row["cpu_ms"]["p50"]  # type: ignore[index]
    return row


REPLAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmlu_pro_replay"
EMBEDDING_CACHE = Path.home() / ".cache" / "skillroute" / "embeddings"


def run(count: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    result: dict[str, object] = {"load_average_1m": os.getloadavg()[0]}
    a = agreement(rng, count)
    result.update(instances=a["instances"], agree_with_brute_force=a["fraction"], agreement=a)
    rows = [timing(rng, n, 5, 200, brute=n == 16) for n in (16, 32, 64)]
    rows += [timing(rng, n, 5, 100, brute=False, quality="weighted_vote") for n in (16, 32, 64)]
    rows += [timing(rng, n, 5, 30, brute=False, quality="submodular") for n in (16, 32, 64)]
    rows += [timing(rng, n, n, 40, brute=False) for n in (16, 32, 64)]
    rows += [timing(rng, n, 5, 100, brute=n == 16, family="hard") for n in (16, 32, 64)]
    rows += [timing(rng, n, n, 20, brute=False, family="hard") for n in (16, 32, 64)]
    result["timing"] = rows
    default = {str(r["n"]): r for r in rows
               if r["k_max"] == 5 and r["family"] == "mixed" and r["quality"] == "noisy_or"}
    for key, field in (("solve_ms", "wall_ms"), ("solve_cpu_ms", "cpu_ms")):
        for q in ("p50", "p99"):
            result[f"{key}_{q}"] = {n: r[field][q] for n, r in default.items()}  # type: ignore[index]
    result["brute_force_ms_p50"] = {"16": default["16"]["brute_force_wall_ms"]["p50"]}  # type: ignore[index]
    result["brute_over_solve_p50"] = {"16": default["16"]["brute_over_solve_p50"]}
    return result


def report(r: dict[str, object]) -> None:
    a = r["agreement"]
    print(f"(a) agreement with brute force: {a['agree']}/{a['instances']} = "  # type: ignore[index]
          f"{a['fraction']:.4f}  ({a['ok']} feasible, {a['infeasible']} infeasible)")  # type: ignore[index]
    print(f"(b) solve time (load average {r['load_average_1m']:.1f} on {os.cpu_count()} cores)")
    print("  family quality        N  k_max   wall p50 / p99 ms    cpu p50 / p99 ms"
          "   nodes p50 / max   brute cpu p50")
    for row in r["timing"]:  # type: ignore[attr-defined]
        w, c, nd = row["wall_ms"], row["cpu_ms"], row["nodes"]
        brute = row.get("brute_force_cpu_ms")
        extra = f"{brute['p50']:9.2f} ms ({row['brute_over_solve_p50']:.0f}x)" if brute else ""
        print(f"   {row['family']:5s} {row['quality']:13s} {row['n']:2d}  {row['k_max']:5d}  "
              f"{w['p50']:8.2f} / {w['p99']:8.2f}  {c['p50']:8.2f} / {c['p99']:8.2f}  "
              f"{nd['p50']:7.0f} / {nd['max']:6.0f}   {extra}")
    if r.get("replay_accuracy_vs_budget"):
        report_replay(r["replay_accuracy_vs_budget"])  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--instances", type=int, default=1200, help="instances for (a)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", type=Path, default=REPLAY, help="replay folder for (c)")
    ap.add_argument("--no-replay", action="store_true", help="skip (c)")
    ap.add_argument("--questions", type=int, default=1000, help="held-out questions for (c)")
    ap.add_argument("--cache-dir", type=Path, default=EMBEDDING_CACHE, help="question embeddings for (c)")
    args = ap.parse_args(argv)
    result = run(args.instances, args.seed)
    if not args.no_replay:
        result["replay_accuracy_vs_budget"] = replay_accuracy_vs_budget(
            args.replay, args.questions, args.seed, args.cache_dir)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
