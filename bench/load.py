"""Load on a running service: N concurrent clients over real HTTP, routing alone vs answering.

    python bench/load.py [--url http://127.0.0.1:8000 | --pool replay:../shared/data/mmlu_pro_replay]
                         [--runtime inline|ray] [--clients 200] [--requests 600] [--rounds 1]
                         [--mixed] [--json]

Each client sends its next request as soon as its last one is answered, first to /v1/routes
(the decision alone) and then to /v1/queries (decision, generation, storage), each over its own
questions (no query's embedding is cached by the routing phase). Without --url the service is
started here as users start it (`skillroute serve --runtime …` in its own process, a throwaway
data directory) and stopped after. On a replay pool the questions are the recording's test
split, so every one can be answered; on any other pool they are arithmetic questions. No
question is sent twice: --requests x (1 + --rounds) (3 x --requests with --mixed) must fit in the
test split (3,005 questions in shared/data/mmlu_pro_replay), and more is refused up front.

Prints, per endpoint, errors by status, p50 and p99 latency and throughput (the JSON's top level
is /v1/queries: `errors`, `qps`, `p50_s`, `p99_s`). `--rounds N` repeats the /v1/queries phase
with new questions and prints the server's resident memory after each (`rss_mib`). `--mixed`
measures short queries (max_tokens 16) alone, then beside long ones (a long preamble and
max_tokens 512, a quarter of the clients), and prints the short queries' p50 both ways and
their ratio (`mixed`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.replay_profiles import split_test_prompts, split_test_size  # noqa: E402
from bench.served import Served, serve  # noqa: E402
from orchestrator.pools.loader import REPLAY_PREFIX  # noqa: E402

DEFAULT_POOL = f"{REPLAY_PREFIX}{Path(__file__).resolve().parents[2] / 'shared/data/mmlu_pro_replay'}"
PREAMBLE = "Read the whole context before you answer. " * 100  # ~800 words (a query holds 8,000 characters)
Body = dict[str, object]


def questions(pool: str, n: int) -> list[str]:
    """`n` questions the pool can answer: a replay pool's test split, else arithmetic."""
    if not pool.startswith(REPLAY_PREFIX):
        return [f"What is {i} times {i + 7}?" for i in range(n)]
    return split_test_prompts(pool[len(REPLAY_PREFIX):], n)


def questions_held(pool: str) -> int | None:
    """How many different questions `questions` can give: a replay pool's test split, None for
    made-up ones (no end). Benches check it up front: given fewer than asked, a phase would run
    short (and crash on its percentiles), and reusing a question would time the embedding cache."""
    return split_test_size(pool[len(REPLAY_PREFIX):]) if pool.startswith(REPLAY_PREFIX) else None


def positive(text: str) -> int:
    """argparse type: an int of at least 1 (no phase can be timed over zero requests)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


async def drive(url: str, path: str, bodies: Sequence[Body], clients: int) -> dict[str, object]:
    """`clients` concurrent senders through `bodies`; latency per request and the wall clock.

    Each sender is a client of its own (one connection, kept alive), as separate users are: one
    shared httpx pool of 200 connections scans all of them for every request, which cost more
    CPU on this machine's two cores than the server it was measuring."""
    pending, latencies, statuses = iter(bodies), [], Counter[str]()
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def client(http: httpx.AsyncClient) -> None:
        async with http:
            for body in pending:
                started = time.perf_counter()
                try:
                    status = str((await http.post(path, json=body)).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1

    senders = [httpx.AsyncClient(base_url=url, timeout=600, limits=one) for _ in range(clients)]
    started = time.perf_counter()
    await asyncio.gather(*(client(http) for http in senders))
    return summary(path, latencies, statuses, time.perf_counter() - started)


def summary(path: str, latencies: list[float], statuses: Counter[str], wall_s: float) -> dict[str, object]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    errors = {s: n for s, n in statuses.items() if s != "200"}
    return {"path": path, "requests": len(latencies), "errors": sum(errors.values()), "errors_by_status": errors,
            "p50_s": round(cuts[49], 4), "p99_s": round(cuts[98], 4), "qps": round(len(latencies) / wall_s, 1),
            "wall_s": round(wall_s, 2)}


def bodies_of(texts: Sequence[str], offset: int = 0, **extra: object) -> list[Body]:
    return [{"query": t, "k": 3, "seed": offset + i, **extra} for i, t in enumerate(texts)]


def run(url: str, pool: str, clients: int, requests: int, rounds: int = 1, served: Served | None = None
        ) -> dict[str, object]:
    """Routes over one set of questions, then `rounds` of queries over fresh ones each."""
    texts = questions(pool, requests * (1 + rounds))
    routes = asyncio.run(drive(url, "/v1/routes", bodies_of(texts[:requests]), clients))
    phases, rss = [], []
    for r in range(1, rounds + 1):
        chunk = texts[r * requests:(r + 1) * requests]
        phases.append(asyncio.run(drive(url, "/v1/queries", bodies_of(chunk, r * requests), clients)))
        if served is not None:
            rss.append(served.rss_mib())
    queries = phases[-1]
    ratio = float(queries["p50_s"]) / max(float(routes["p50_s"]), 1e-9)  # type: ignore[arg-type]
    return {**queries, "clients": clients, "pool": pool, "routes": routes, "rounds": phases, "rss_mib": rss,
            "p50_ratio_queries_over_routes": round(ratio, 2)}


def mixed(url: str, pool: str, clients: int, requests: int) -> dict[str, object]:
    """The short queries' p50 alone, then with long ones sent beside them by a quarter of the clients."""
    texts = questions(pool, 3 * requests)
    short = bodies_of(texts[:requests], 10_000, max_tokens=16)
    alone = asyncio.run(drive(url, "/v1/queries", short, clients))
    short_again = bodies_of(texts[requests:2 * requests], 20_000, max_tokens=16)
    long = [{**b, "query": PREAMBLE + str(b["query"])} for b in
            bodies_of(texts[2 * requests:], 30_000, max_tokens=512)]
    long_clients = max(1, clients // 4)

    async def both() -> tuple[dict[str, object], dict[str, object]]:
        return await asyncio.gather(drive(url, "/v1/queries", short_again, clients - long_clients),
                                    drive(url, "/v1/queries", long, long_clients))

    beside, longs = asyncio.run(both())
    ratio = float(beside["p50_s"]) / max(float(alone["p50_s"]), 1e-9)  # type: ignore[arg-type]
    return {"short_alone": alone, "short_with_long": beside, "long": longs,
            "short_p50_ratio_with_over_without": round(ratio, 2)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running service; unset: start one over --pool")
    ap.add_argument("--pool", default=DEFAULT_POOL, help="the questions' source (and the started service's pool)")
    ap.add_argument("--runtime", choices=["inline", "ray"], default="inline", help="how the started service runs")
    ap.add_argument("--clients", type=positive, default=200)
    ap.add_argument("--requests", type=positive, default=600, help="per endpoint (and per round)")
    ap.add_argument("--rounds", type=positive, default=1, help="query phases, each over new questions")
    ap.add_argument("--mixed", action="store_true", help="short queries alone vs beside long ones")
    ap.add_argument("--time-scale", type=float, default=0.0, help="started replay pool: simulated latency x this")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if problem := too_many(args.pool, args.requests, args.rounds, args.mixed):
        ap.error(problem)
    if args.url:
        res = measure(args, args.url, None)
    else:
        with serve(args.pool, args.runtime, args.time_scale) as served:
            res = measure(args, served.url, served)
    show(res, args.json)


def too_many(pool: str, requests: int, rounds: int, mixed: bool) -> str | None:
    """Why the pool cannot give every phase its own questions, naming the largest allowed
    --requests (and --rounds); None when it can."""
    held = questions_held(pool)
    phases = 3 if mixed else 1 + rounds  # routes, then each round (mixed: alone, beside, long)
    if held is None or requests * phases <= held:
        return None
    asked = "--mixed" if mixed else f"--rounds {rounds}"
    why = (f"--requests {requests} with {asked} needs {requests * phases} different questions and the replay "
           f"test split holds {held}: the largest allowed --requests is {held // phases} with {asked}")
    if not mixed and held // requests >= 2:
        why += f", or --rounds at most {held // requests - 1} with --requests {requests}"
    return why


def measure(args: argparse.Namespace, url: str, served: Served | None) -> dict[str, object]:
    if args.mixed:
        return {"clients": args.clients, "pool": args.pool, "mixed": mixed(url, args.pool, args.clients, args.requests)}
    return run(url, args.pool, args.clients, args.requests, args.rounds, served)


def show(res: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(res))
        return
    if "mixed" in res:
        m = res["mixed"]
        for name in ("short_alone", "short_with_long", "long"):
            print(_line(name, m[name]))  # type: ignore[index]
        print(f"short queries' p50 with long ones / without: {m['short_p50_ratio_with_over_without']}x")  # type: ignore[index]
        return
    print(_line("/v1/routes", res["routes"]))
    for i, phase in enumerate(res["rounds"], 1):  # type: ignore[attr-defined]
        print(_line(f"/v1/queries #{i}", phase))
    if res["rss_mib"]:
        print(f"server resident memory after each round (MiB): {res['rss_mib']}")
    print(f"answering / routing at p50: {res['p50_ratio_queries_over_routes']}x")


def _line(name: str, part: object) -> str:
    p = part  # a summary() dict
    return (f"{name:>16}: {p['requests']} requests, errors {p['errors_by_status'] or 0}, "  # type: ignore[index]
            f"p50 {p['p50_s']} s, p99 {p['p99_s']} s, {p['qps']} queries/s")  # type: ignore[index]


if __name__ == "__main__":
    main()
