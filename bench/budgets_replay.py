"""Part (c) of `bench/budgets.py`: accuracy against budget on the replay pool (real recorded answers).

The corpus, split, embeddings (disk cache) and profiling are the routing-quality bench's own
(`bench/routing_quality.py`); the router is its k-NN router, whose p̂_i(q) is each candidate's
quality, and answers are aggregated by weighted voting with the router's log-odds weights (no
aggregator LLM, so aggregation costs nothing). Costs: each recorded model's size on a device
profile (`experts/cost_model.py`: 256 chain-of-thought tokens after the question's prompt), one
device (or tensor-parallel group) per model, so the MoE^2 latency is the slowest member's.

Placements:
- edge-only: the open models of at most 13B (`is_open_small`), each on its own Jetson AGX Orin;
  the larger and closed models cannot run on an edge box, so they are not in this pool;
- server-only: every model on H100 servers (as many as its weights need);
- mixed: open <= 13B models on Jetsons, every other model on H100 servers.

Methods at each budget (k_max = 5 experts):
- exact: `budgets.solve` with the weighted-vote quality, the best subset within the budget;
- greedy: add experts by p̂ per unit of budgeted cost (Σ over limited resources of cost/limit),
  best ratio first, while the subset stays within the budget;
- top-3: the three best p̂, blind to the budget; we report how often it breaks the budget.
A question no expert can answer within the budget gets no answer and counts as wrong.

"predicted" is the weighted-vote quality the solver maximises (mean over questions; no answer
counts 0): exact is never below greedy there. Realised accuracy need not follow it: the quality
model treats members' errors as independent and two wrong answers as never agreeing, so it
over-rates a panel of many weak models whose wrong answers agree in practice.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.replay_profiles import is_open_small
from bench.routing_quality import COT_TOKENS, PoolBench, build_corpus
from experts.cost_model import model_cost
from experts.devices import CostEstimate, DeviceProfile, load_devices
from orchestrator.aggregation.vote import weighted_vote
from orchestrator.budgets.solver import (
    Budget,
    Candidate,
    InfeasibleBudget,
    solve,
    subset_cost,
    weighted_vote_profile,
)
from orchestrator.domain import ExpertScore
from orchestrator.routing.knn_router import KnnRouter
from skills.embedder import Embedder

EDGE, SERVER = "jetson-agx-orin", "h100-server"
PLACEMENTS = ("edge", "server", "mixed")
ENERGY_LEVELS_J = (400.0, 1000.0, 2500.0, 6000.0, 15000.0, 40000.0)
LATENCY_LEVELS_S = (2.0, 4.0, 8.0, 16.0)
LATENCY_SWEEP_ENERGY_J = 6000.0  # the latency sweep's energy cap, so both limits are in play
K_MAX, TOP_K = 5, 3

Chooser = Callable[[list[Candidate], Budget], list[int] | None]


@dataclass
class Query:
    """One test question as the methods see it: candidates (p̂, cost), vote weights, choices."""

    candidates: list[Candidate]
    weights: dict[str, float]
    choices: dict[str, str | None]
    gold: str


def device_of(model: str, placement: str) -> str:
    return EDGE if placement == "edge" or (placement == "mixed" and is_open_small(model)) else SERVER


def pool_models(models: Sequence[str], placement: str) -> list[str]:
    return [m for m in models if is_open_small(m)] if placement == "edge" else list(models)


def queries(bench: PoolBench, scored: Sequence[list[ExpertScore]], rows: Sequence[int], placement: str,
            devices: dict[str, DeviceProfile]) -> list[Query]:
    """The test rows with their candidates costed where `placement` puts each model."""
    costs = {n: model_cost(m, devices[device_of(m, placement)]) for n, m in bench.model_of.items()}
    out = []
    for i, scores in zip(rows, scored, strict=True):
        cands = [_candidate(s, costs[s.name].estimate(bench.tokens[i], COT_TOKENS)) for s in scores]
        choices = {n: bench.choices[n][i] for n in bench.names}
        out.append(Query(cands, {s.name: s.weight for s in scores}, choices, bench.gold[i]))
    return out


def _candidate(s: ExpertScore, cost: CostEstimate) -> Candidate:
    return Candidate(s.name, min(max(s.suitability, 0.0), 1.0), cost.latency_s, cost.energy_j)


def exact(cands: list[Candidate], budget: Budget) -> list[int] | None:
    try:
        return list(solve(cands, budget, "weighted_vote").indices)
    except InfeasibleBudget:
        return None


def greedy(cands: list[Candidate], budget: Budget) -> list[int] | None:
    """Best p̂ per unit of budgeted cost first; keep each expert the budget still allows (here a
    device per model and no aggregation cost: latency is the running max, energy the sum)."""
    chosen: list[int] = []
    latency = energy = 0.0
    max_l, max_e = budget.latency_s or math.inf, budget.energy_j or math.inf
    for i in sorted(range(len(cands)), key=lambda i: -cands[i].quality / _unit_cost(cands[i], budget)):
        lat, en = max(latency, cands[i].latency_s), energy + cands[i].energy_j
        if len(chosen) < budget.k_max and lat <= max_l and en <= max_e:
            chosen.append(i)
            latency, energy = lat, en
    return chosen or None


def top_k(cands: list[Candidate], budget: Budget) -> list[int] | None:
    return sorted(range(len(cands)), key=lambda i: -cands[i].quality)[:TOP_K]


def _unit_cost(c: Candidate, b: Budget) -> float:
    parts = [c.latency_s / b.latency_s if b.latency_s else 0.0, c.energy_j / b.energy_j if b.energy_j else 0.0]
    return max(sum(parts), 1e-12)


def _fits(cands: list[Candidate], members: Sequence[int], b: Budget) -> bool:
    latency, energy = subset_cost(cands, members)
    return latency <= (b.latency_s or float("inf")) and energy <= (b.energy_j or float("inf"))


METHODS: dict[str, Chooser] = {"exact": exact, "greedy": greedy, "top3": top_k}


def evaluate(qs: Sequence[Query], budget: Budget, choose: Chooser) -> dict[str, float]:
    """Accuracy, answered share, budget violations and mean predicted quality and cost."""
    right = answered = violations = 0
    quality = energy = latency = 0.0
    for q in qs:
        members = choose(q.candidates, budget)
        if members is None:
            continue
        answered += 1
        names = [q.candidates[i].name for i in members]
        right += weighted_vote([(n, q.choices[n]) for n in names], q.weights).answer == q.gold
        lat, en = subset_cost(q.candidates, members)
        violations += not _fits(q.candidates, members, budget)
        quality += weighted_vote_profile([q.candidates[i].quality for i in members])
        energy, latency = energy + en, latency + lat
    n = len(qs)
    return {"accuracy": right / n, "answered": answered / n, "violations": violations / n,
            "predicted_quality": quality / n, "energy_j": energy / max(answered, 1),
            "latency_s": latency / max(answered, 1)}


def sweep(qs: Sequence[Query]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Every method at every energy level (no latency limit) and latency level (energy capped)."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {"energy": {}, "latency": {}}
    for e in ENERGY_LEVELS_J:
        out["energy"][f"{e:g}"] = {m: evaluate(qs, Budget(None, e, K_MAX), f) for m, f in METHODS.items()}
    for lat in LATENCY_LEVELS_S:
        b = Budget(lat, LATENCY_SWEEP_ENERGY_J, K_MAX)
        out["latency"][f"{lat:g}"] = {m: evaluate(qs, b, f) for m, f in METHODS.items()}
    return out


def replay_accuracy_vs_budget(folder: str | Path, questions: int, seed: int, cache_dir: Path | None,
                              embedder: Embedder | None = None, test_size: float = 0.5) -> dict[str, object]:
    """(c): the three placements' accuracy-vs-budget curves, for every method."""
    started = time.perf_counter()
    corpus = build_corpus(str(folder), test_size, seed, cache_dir, embedder)
    rows = sorted(random.Random(seed).sample(range(len(corpus.test)), min(questions, len(corpus.test))))
    devices = load_devices()
    result: dict[str, object] = {"questions": len(rows), "seed": seed, "k_max": K_MAX, "top_k": TOP_K,
                                 "energy_levels_j": list(ENERGY_LEVELS_J), "latency_levels_s": list(LATENCY_LEVELS_S),
                                 "latency_sweep_energy_j": LATENCY_SWEEP_ENERGY_J, "placements": {}}
    pools: dict[tuple[str, ...], tuple[PoolBench, list[list[ExpertScore]]]] = {}
    for placement in PLACEMENTS:
        models = tuple(pool_models(corpus.recording.models, placement))
        if models not in pools:  # server and mixed share one pool and its router: only costs differ
            bench = PoolBench(corpus, list(models))
            router = KnnRouter(bench.profile.evidence)
            pools[models] = bench, router.score_batch([[]] * len(rows), corpus.emb_test[rows],
                                                      [bench.n_options[r] for r in rows])
        curves = sweep(queries(*pools[models], rows, placement, devices))
        result["placements"][placement] = {  # type: ignore[index]
            "models": {m: device_of(m, placement) for m in models}, **curves}
    result["seconds"] = time.perf_counter() - started
    return result


def report(r: dict[str, object]) -> None:
    print(f"(c) replay pool: accuracy vs budget on {r['questions']} held-out MMLU-Pro questions "
          f"(seed {r['seed']}), k_max {r['k_max']}, weighted voting; 'ans' = share with any expert in budget")
    for name, p in r["placements"].items():  # type: ignore[attr-defined]
        on = sorted(set(p["models"].values()))
        print(f"\n  placement {name}: {len(p['models'])} models on {', '.join(on)}")
        _table(p["energy"], "energy J (no latency limit)")
        _table(p["latency"], f"latency s (energy <= {r['latency_sweep_energy_j']:g} J)")
    print(f"\n  (c) took {r['seconds']:.0f} s")


def _table(curve: dict[str, dict[str, dict[str, float]]], label: str) -> None:
    print(f"    {label:28s} {'exact acc (ans)':>16s} {'greedy acc (ans)':>17s} {'top-3 acc (breaks)':>19s}"
          f" {'predicted: exact greedy':>24s} {'exact J/q':>10s} {'exact s/q':>9s}")
    for level, row in curve.items():
        ex, gr, tk = row["exact"], row["greedy"], row["top3"]
        print(f"    {level:>28s} {100 * ex['accuracy']:7.1f}% ({100 * ex['answered']:3.0f}%) "
              f"{100 * gr['accuracy']:7.1f}% ({100 * gr['answered']:3.0f}%) "
              f"{100 * tk['accuracy']:8.1f}% ({100 * tk['violations']:4.0f}%) "
              f"{100 * ex['predicted_quality']:16.1f}% {100 * gr['predicted_quality']:6.1f}% "
              f"{ex['energy_j']:10.0f} {ex['latency_s']:9.2f}")
