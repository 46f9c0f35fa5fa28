"""One device vs three: the same batch of replay generations, run where its experts are placed.

    python bench/devices.py [DATA_DIR] [--queries 30] [--k 3] [--scale 0.05] [--json]

Nine open models of the replay corpus (7-13B) are experts whose replies take their simulated
H100 latency (experts/cost_model.py) times --scale, spent for real, so a device is busy as the
real one would be, only shorter. The same batch (k distinct experts drawn uniformly per query, seeded,
so the work is the same in both runs) runs on one H100 worker, where the nine do not fit at once
(about 166 GB with their KV cache against its 72 GB: it swaps, and its loads are printed against
the floor), then on three H100 workers over which the placement planner spreads them. Predicted wall time is the busiest
device's summed predicted latency (MoE^2: a max over devices, a sum within one) times --scale;
measured is the batch's wall clock. Prints both per run, the measured and predicted speedups,
and per device its loads against the floor (the distinct models its jobs need).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.replay_profiles import devices_file, replay_service_pool, split_test_prompts  # noqa: E402
from experts.factory import make_backend  # noqa: E402
from experts.options import BackendOptions  # noqa: E402
from orchestrator.container import SkillRoute  # noqa: E402
from orchestrator.domain import Ask, Decision, Outcome  # noqa: E402
from orchestrator.pools.schema import PoolConfig  # noqa: E402
from orchestrator.settings import BudgetSettings, Settings  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/mmlu_pro_replay"
MODELS = ["Llama-2-7b-hf", "Llama-2-13b-hf", "Meta-Llama-3-8B", "Meta-Llama-3_1-8B-Instruct", "Mistral-7B-v0.1",
          "Mistral-7B-Instruct-v0.2", "gemma-7b", "mathstral-7B", "Phi-3-mini-4k-instruct"]


def pool(folder: str) -> PoolConfig:
    return replay_service_pool(folder, MODELS, "devices-bench")


def service(folder: str, data: Path, workers: int, scale: float) -> SkillRoute:
    servers = [{"name": f"server-{i}", "device": "h100-server"} for i in range(workers)]
    path = devices_file(data / f"devices-{workers}.yaml", servers)
    settings = Settings(data_dir=data, budgets=BudgetSettings(devices_file=path))
    factory = functools.partial(make_backend, options=BackendOptions(replay_time_scale=scale))
    c = SkillRoute(settings, pool(folder), factory=factory)
    c.start()
    return c


def batch(folder: str, c: SkillRoute, n: int, k: int) -> tuple[list[Ask], list[Decision]]:
    """Test-split questions, each with k distinct experts drawn uniformly (seeded by the query)."""
    asks = [Ask(text=t, k=k, seed=i) for i, t in enumerate(split_test_prompts(folder, n))]
    names = sorted(c.pool.snapshot.experts)
    decisions = [d.model_copy(update={"recruited": random.Random(d.seed).sample(names, k)})
                 for d in c.pipeline.route(c.pool.snapshot, asks)]
    return asks, decisions


def run(c: SkillRoute, asks: list[Ask], decisions: list[Decision], scale: float) -> dict[str, object]:
    c.fleet.shutdown()  # every device starts cold
    before = {n: w.total_loads() for n, w in c.fleet.workers.items()}
    started = time.perf_counter()
    outcomes = c.pipeline.answer(c.pool.snapshot, asks, decisions)
    wall = time.perf_counter() - started
    predicted = _predicted(outcomes)
    placement = c.pool.snapshot.placement
    floors = {n: len({c.pool.snapshot.experts[e].base.key for d in decisions for e in d.recruited
                      if placement[e] == n}) for n in c.fleet.workers}
    devices = {n: {"loads": w.total_loads() - before[n], "loads_floor": floors[n],
                   "predicted_s": round(predicted.get(n, 0.0) * scale, 3)} for n, w in c.fleet.workers.items()}
    predicted_wall = max(predicted.values()) * scale
    return {"measured_wall_s": round(wall, 3), "predicted_wall_s": round(predicted_wall, 3),
            "measured_over_predicted": round(wall / predicted_wall, 3), "devices": devices,
            "failed": sum(o.error is not None for o in outcomes)}


def _predicted(outcomes: list[Outcome]) -> dict[str, float]:
    """Each device's predicted busy time for the batch (every query of it reports the same)."""
    return {d.worker: d.predicted_s for o in outcomes for d in o.decision.devices}


def bench(folder: str, n: int, k: int, scale: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        profiler = SkillRoute(Settings(data_dir=data), pool(folder))
        profiler.start()  # profile once, at full speed; the runs below reuse the stored profiles
        profiler.close()
        results = {}
        for workers in (1, 3):
            c = service(folder, data, workers, scale)
            asks, decisions = batch(folder, c, n, k)
            results[workers] = run(c, asks, decisions, scale)
            c.close()
    one, three = results[1], results[3]
    return {"queries": n, "k": k, "scale": scale, "one_device": one, "three_devices": three,
            "speedup": round(float(one["measured_wall_s"]) / float(three["measured_wall_s"]), 2),  # type: ignore[arg-type]
            "predicted_speedup": round(float(one["predicted_wall_s"]) / float(three["predicted_wall_s"]), 2),  # type: ignore[arg-type]
            "devices": {**{f"one/{d}": v for d, v in one["devices"].items()},  # type: ignore[attr-defined]
                        **{f"three/{d}": v for d, v in three["devices"].items()}}}  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.05, help="real seconds per simulated second")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = bench(args.data_dir, args.queries, args.k, args.scale)
    if args.json:
        print(json.dumps(res))
        return
    for name in ("one_device", "three_devices"):
        r = res[name]
        print(f"{name:>14}: measured {r['measured_wall_s']} s, predicted {r['predicted_wall_s']} s "  # type: ignore[index]
              f"(x{r['measured_over_predicted']})")  # type: ignore[index]
    print(f"speedup {res['speedup']}x measured, {res['predicted_speedup']}x predicted")
    for device, d in res["devices"].items():  # type: ignore[attr-defined]
        print(f"{device:>18}: loads {d['loads']} (floor {d['loads_floor']}), predicted {d['predicted_s']} s")


if __name__ == "__main__":
    main()
