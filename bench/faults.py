"""Faults under load: a batch of replay queries while generations fail and a worker dies.

    python bench/faults.py [DATA_DIR] [--queries 200] [--errors 0.1] [--timeouts 0.05] [--json]

Six open replay models run on three worker actors of a local Ray cluster (each pinned by its
own custom resource). Every backend is wrapped so a set share of generations fails (an injected
error) or outlasts its expert's timeout, chosen by a hash of the request so a run can be
repeated. The batch goes in through the batch service; once a fifth of it is answered, one
worker actor is killed. Ray restarts it; the generations it held fail, and next-ranked experts
stand in. Prints how many queries were submitted, answered, failed cleanly (stored as failed,
with the reason) and lost (neither, once the batch is over), whether any failed query still had
an expert that answered, and whether the killed worker came back.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.replay_profiles import devices_file, replay_service_pool, split_test_prompts  # noqa: E402
from experts.backend import ExpertBackend  # noqa: E402
from experts.factory import make_backend  # noqa: E402
from experts.options import BackendOptions  # noqa: E402
from experts.types import BaseModelSpec, Generation, GenerationRequest  # noqa: E402
from experts.workers import WorkerSpec  # noqa: E402
from orchestrator.container import SkillRoute  # noqa: E402
from orchestrator.domain import Ask  # noqa: E402
from orchestrator.pools.schema import PoolConfig  # noqa: E402
from orchestrator.services.batches import BatchEntry  # noqa: E402
from orchestrator.serving.remote_worker import RemoteWorker  # noqa: E402
from orchestrator.serving.worker_actor import NAMESPACE, actor_name, spawn  # noqa: E402
from orchestrator.settings import BudgetSettings, Settings  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/mmlu_pro_replay"
MODELS = ["Llama-2-7b-hf", "Meta-Llama-3-8B", "Mistral-7B-v0.1", "gemma-7b", "mathstral-7B", "Phi-3-mini-4k-instruct"]
WORKERS = ["w1", "w2", "w3"]
TIMEOUT_S = 1.0  # each expert's timeout; an injected slow generation outlasts it
SCALE = 0.01  # replay replies take their simulated latency x this, so the batch takes a while


class Chaotic:
    """A backend whose requests fail (an error, or past their timeout) at set rates."""

    def __init__(self, inner: ExpertBackend, errors: float, timeouts: float):
        self.inner, self.errors, self.timeouts = inner, errors, timeouts
        self.base_model_key = inner.base_model_key

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        fates = [_fate(r, self.errors, self.timeouts) for r in requests]
        kept = self.inner.generate([r for r, f in zip(requests, fates, strict=True) if f is None])
        out, answered = [], iter(kept)
        for r, fate in zip(requests, fates, strict=True):
            if fate == "slow":
                time.sleep(r.timeout_s or 0)
                out.append(Generation.failed(r.request_id, f"timed out after {r.timeout_s:g} s"))
            else:
                out.append(Generation.failed(r.request_id, "injected failure") if fate else next(answered))
        return out


def _fate(r: GenerationRequest, errors: float, timeouts: float) -> str | None:
    text = r.request_id + "".join(m.content for m in r.messages)
    u = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32
    return "error" if u < errors else "slow" if u < errors + timeouts else None


def chaotic_backend(spec: BaseModelSpec, errors: float, timeouts: float) -> Chaotic:
    return Chaotic(make_backend(spec, BackendOptions(replay_time_scale=SCALE)), errors, timeouts)


def pool(folder: str) -> PoolConfig:
    return replay_service_pool(folder, MODELS, "faults-bench", timeout_s=TIMEOUT_S)


def settings(data: Path) -> Settings:
    workers = [{"name": w, "device": "h100-server", "resource": w} for w in WORKERS]
    return Settings(data_dir=data, budgets=BudgetSettings(devices_file=devices_file(data / "devices.yaml", workers)))


def asks(folder: str, n: int, k: int) -> list[Ask]:
    return [Ask(text=t, k=k, mode="topk") for t in split_test_prompts(folder, n)]


def statuses(c: SkillRoute, ids: Sequence[int]) -> dict[str, int]:
    rows = c.queries.get_many(ids)
    return {s: sum(r.status == s for r in rows) for s in ("done", "failed", "accepted")}


def run(folder: str, data: Path, n: int, errors: float, timeouts: float) -> dict[str, object]:
    cfg = settings(data)
    factory = functools.partial(chaotic_backend, errors=errors, timeouts=timeouts)
    actors = {w: spawn(WorkerSpec(name=w, device="h100-server", resource=w), 72 * 2**30, factory) for w in WORKERS}
    c = SkillRoute(cfg, pool(folder), workers={w: RemoteWorker(a) for w, a in actors.items()})
    c.start()
    batch_id = c.batches.submit([BatchEntry(a) for a in asks(folder, n, 3)])
    ids = [item.query_id for item in c.batches.get(batch_id).items]
    killed = _kill_when_a_fifth_is_done(c, ids, actors["w2"])
    outcome = _wait_for(c, ids)
    back = RemoteWorker(ray.get_actor(actor_name("w2"), namespace=NAMESPACE)).resident() is not None
    survivors, failures = _failed_with_a_survivor(c, ids), _failures(c, ids)
    c.close()
    return {"submitted": len(ids), "answered": outcome["done"], "failed_cleanly": outcome["failed"],
            "lost": len(ids) - outcome["done"] - outcome["failed"], "failed_with_a_surviving_expert": survivors,
            "worker_killed": killed, "killed_worker_back": back, "error_rate": errors, "timeout_rate": timeouts,
            "failed_generations": failures}


def _kill_when_a_fifth_is_done(c: SkillRoute, ids: Sequence[int], actor: object, within_s: float = 600) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        s = statuses(c, ids)
        if s["done"] + s["failed"] >= len(ids) // 5:
            ray.kill(actor, no_restart=False)  # type: ignore[arg-type]
            return s["accepted"] > 0  # mid-batch: some of it still to run
        time.sleep(0.05)  # polling the store while the batch runs
    return False


def _wait_for(c: SkillRoute, ids: Sequence[int], within_s: float = 900) -> dict[str, int]:
    deadline = time.monotonic() + within_s
    while (s := statuses(c, ids))["accepted"] and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the store until every query is answered or failed
    return s


def _failures(c: SkillRoute, ids: Sequence[int]) -> dict[str, int]:
    """The batch's failed generations by cause, and the stand-ins recruited for them."""
    causes: Counter[str] = Counter()
    stand_ins = 0
    for row in c.queries.get_many(ids):
        record = row.decision.record if row.decision is not None else {}
        stand_ins += len(record.get("fallbacks", []))
        causes.update(_cause(f["error"]) for f in record.get("failures", []))
    return {**causes, "stand_ins": stand_ins}


def _cause(error: str) -> str:
    if error == "injected failure":
        return "injected_errors"
    return "timeouts" if error.startswith("timed out") else "worker_lost"


def _failed_with_a_survivor(c: SkillRoute, ids: Sequence[int]) -> int:
    """Failed queries that had an expert which did not fail: there should be none."""
    count = 0
    for row in c.queries.get_many(ids):
        if row.status == "failed" and row.decision is not None:
            record = row.decision.record
            failed = {f["expert"] for f in record.get("failures", [])}
            count += bool((set(record["recruited"]) | set(record.get("fallbacks", []))) - failed)
    return count


def start_ray(settings: Settings) -> None:
    """A local cluster for the workers, under the project's Ray auth setting: with RAY_AUTH_MODE
    unset, Ray 2.60 writes a token into ~/.ray (the service sets it the same way, serving/app.py).
    One already in the environment is kept: the settings read RAY_AUTH_MODE (FLAT_NAMES)."""
    os.environ["RAY_AUTH_MODE"] = settings.ray.auth_mode
    ray.init(address="local", num_cpus=2, resources=dict.fromkeys(WORKERS, 1), namespace=NAMESPACE,
             include_dashboard=False)


def bench(folder: str, n: int, errors: float, timeouts: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        scaled = functools.partial(make_backend, options=BackendOptions(replay_time_scale=SCALE))
        settings = Settings(data_dir=data)
        profiler = SkillRoute(settings, pool(folder), factory=scaled)
        profiler.start()  # profiles without faults (at the run's time scale: timeouts mean the same); reused
        profiler.close()
        if __name__ != "__main__":  # loaded by a test: the actors cannot import this module by name
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        start_ray(settings)
        try:
            return run(folder, data, n, errors, timeouts)
        finally:
            ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--errors", type=float, default=0.1, help="share of generations that fail")
    ap.add_argument("--timeouts", type=float, default=0.05, help="share that outlast their timeout")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = bench(args.data_dir, args.queries, args.errors, args.timeouts)
    if args.json:
        print(json.dumps(res))
        return
    for key, value in res.items():
        print(f"{key:>32}: {value}")


if __name__ == "__main__":
    main()
