"""The routing-quality benchmark's statistics and output: the JSON report, the tables, the
sample SD over seeds and each seed's paired bootstrap interval (bench/routing_quality.py runs it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the bench imports this module: its types only, no cycle at run time
    from bench.routing_quality import Corpus, PoolResult

K_MAX = 5
BOOTSTRAP = 2000  # resamples of a seed's test questions for its gain's 95% interval


def paired_bootstrap(diff: np.ndarray, seed: int) -> tuple[float, float]:
    """95% interval, in points, of the mean per-question difference: the questions are resampled
    with both methods' answers kept together, so what they share (a question every model gets
    wrong) cancels, as it does in the gain itself."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(axis=1)
    low, high = np.percentile(100 * means, [2.5, 97.5])
    return round(float(low), 2), round(float(high), 2)


def sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n-1): the spread of a few splits drawn from many; 0 for one."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# -- output -------------------------------------------------------------------------------------
HEADLINE = [
    ("best_single", "best single expert (chosen on profiling)"),
    ("random_k3", "random k=3"),
    ("symbolic_moe_k3", "Symbolic-MoE as published (sample k=3)"),
    ("category_k3", "per-category experts k=3 (uses the category label)"),
    ("router_k3", "k-NN router k=3 (the service's router)"),
    ("oracle", "oracle (any expert right)"),
]


def as_json(runs: dict[int, tuple[Corpus, dict[str, PoolResult]]]) -> dict[str, object]:
    """`pools`: each method's mean accuracy over the seeds; `spread`: its SD over the seeds (n-1);
    `per_seed`: every seed's own pools and details."""
    per_seed = {str(seed): _seed_json(results, corpus) for seed, (corpus, results) in runs.items()}
    names = next(iter(runs.values()))[1].keys()
    pools: dict[str, object] = {}
    spread: dict[str, object] = {}
    for name in names:
        values = [results[name].accuracy for _, results in runs.values()]
        pools[name] = {k: round(float(np.mean([v[k] for v in values])), 4) for k in values[0]}
        pools[name]["n_test"] = len(next(iter(runs.values()))[0].test)  # type: ignore[index]
        spread[name] = {k: round(sd([v[k] for v in values]), 4) for k in values[0]}
    return {"seeds": list(runs), "pools": pools, "spread": spread, "gain_router_k3": _gains(runs), "per_seed": per_seed}


def _gains(runs: dict[int, tuple[Corpus, dict[str, PoolResult]]]) -> dict[str, dict[str, object]]:
    """Router k=3 minus the best single expert, in points: each seed's (with its paired bootstrap
    95% interval), their mean and their sample SD over the seeds (`std`)."""
    out: dict[str, dict[str, object]] = {}
    for name, each in _gain_points(runs).items():
        out[name] = {"per_seed": [round(g, 2) for g in each], "mean": round(float(np.mean(each)), 2),
                     "std": round(sd(each), 2), "std_over": "seeds, n-1",
                     "per_seed_ci95": [list(r[name].gain_ci) for _, r in runs.values()]}
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
        print(f"{'method':58s} " + " ".join(f"{'s' + str(s):>6s}" for s in runs) + f" {'mean':>6s} {'sd*':>5s}")
        for key, label in HEADLINE:
            each = [100 * r[name].accuracy[key] for _, r in runs.values()]
            cells = " ".join(f"{v:6.1f}" for v in each)
            print(f"{label:58s} {cells} {np.mean(each):6.1f} {sd(each):5.1f}")
        g = gains[name]
        cells = " ".join(f"{v:+6.1f}" for v in g)
        print(f"{'router k=3 minus best single (points)':58s} {cells} {np.mean(g):+6.1f} {sd(g):5.1f}")
        print(f"{'  its paired bootstrap 95% interval per seed':58s} "
              + " ".join(f"[{r[name].gain_ci[0]:+.1f}, {r[name].gain_ci[1]:+.1f}]" for _, r in runs.values()))
        print("* sd: the sample standard deviation over the seeds (splits), n-1")
