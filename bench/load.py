"""Load on a running service: N concurrent clients over real HTTP, routing alone vs answering.

    python bench/load.py [--url http://127.0.0.1:8000 | --pool replay:../shared/data/mmlu_pro_replay]
                         [--clients 200] [--requests 600] [--json]

Each client sends its next request as soon as its last one is answered, first to /v1/routes
(the decision alone) and then to /v1/queries (decision, generation, storage). Without --url the
service starts here, inline (one process, uvicorn on a free port) over --pool with a throwaway
data directory. On a replay pool the questions are the recording's test split, so every one can
be answered; on any other pool they are arithmetic questions. Prints, per endpoint, errors by
status, p50 and p99 latency and throughput, and the ratio of answering to routing at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.replay_profiles import split_test_prompts  # noqa: E402
from orchestrator.pools.loader import REPLAY_PREFIX  # noqa: E402

DEFAULT_POOL = f"{REPLAY_PREFIX}{Path(__file__).resolve().parents[2] / 'shared/data/mmlu_pro_replay'}"


def questions(pool: str, n: int) -> list[str]:
    """`n` questions the pool can answer: a replay pool's test split, else arithmetic."""
    if not pool.startswith(REPLAY_PREFIX):
        return [f"What is {i} times {i + 7}?" for i in range(n)]
    return split_test_prompts(pool[len(REPLAY_PREFIX):], n)


async def drive(url: str, path: str, bodies: list[dict[str, object]], clients: int) -> dict[str, object]:
    """`clients` concurrent senders through `bodies`; latency per request and the wall clock."""
    pending, latencies, statuses = iter(bodies), [], Counter[str]()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        for body in pending:
            started = time.perf_counter()
            try:
                status = str((await http.post(path, json=body)).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return summary(path, latencies, statuses, time.perf_counter() - started)


def summary(path: str, latencies: list[float], statuses: Counter[str], wall_s: float) -> dict[str, object]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    errors = {s: n for s, n in statuses.items() if s != "200"}
    return {"path": path, "requests": len(latencies), "errors": sum(errors.values()), "errors_by_status": errors,
            "p50_s": round(cuts[49], 4), "p99_s": round(cuts[98], 4), "qps": round(len(latencies) / wall_s, 1),
            "wall_s": round(wall_s, 2)}


@contextmanager
def inline_service(pool: str) -> Iterator[str]:
    """The service as `skillroute serve --runtime inline` runs it, on a free port, until the block ends."""
    from orchestrator.api.app import create_app
    from orchestrator.container import SkillRoute
    from orchestrator.pools.loader import load_pool_config
    from orchestrator.settings import Settings
    from tests.live_server import live_server

    with tempfile.TemporaryDirectory() as data:
        c = SkillRoute(Settings(data_dir=Path(data)), load_pool_config(pool))
        print(f"[load] starting the service over {pool} (profiles once)", file=sys.stderr, flush=True)
        c.start()
        with live_server(create_app(c, owns_container=True), ready_within_s=120) as url:
            yield url
        c.close()


def run(url: str, pool: str, clients: int, requests: int) -> dict[str, object]:
    texts = questions(pool, requests)
    bodies: list[dict[str, object]] = [{"query": t, "k": 3, "seed": i} for i, t in enumerate(texts)]
    routes = asyncio.run(drive(url, "/v1/routes", bodies, clients))
    queries = asyncio.run(drive(url, "/v1/queries", bodies, clients))
    ratio = float(queries["p50_s"]) / max(float(routes["p50_s"]), 1e-9)  # type: ignore[arg-type]
    return {**queries, "clients": clients, "pool": pool, "routes": routes,
            "p50_ratio_queries_over_routes": round(ratio, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running service; unset: start one inline over --pool")
    ap.add_argument("--pool", default=DEFAULT_POOL, help="the questions' source (and the inline service's pool)")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=600, help="per endpoint")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.url:
        res = run(args.url, args.pool, args.clients, args.requests)
    else:
        with inline_service(args.pool) as url:
            res = run(url, args.pool, args.clients, args.requests)
    if args.json:
        print(json.dumps(res))
        return
    for part in (res["routes"], res):
        print(f"{part['path']:>12}: {part['requests']} requests, errors {part['errors_by_status'] or 0}, "  # type: ignore[index]
              f"p50 {part['p50_s']} s, p99 {part['p99_s']} s, {part['qps']} queries/s")  # type: ignore[index]
    print(f"answering / routing at p50: {res['p50_ratio_queries_over_routes']}x")


if __name__ == "__main__":
    main()
