"""How long one routing decision takes: inside the service, batched, and over HTTP, in one run.

    python bench/routing_latency.py [--pool replay:../shared/data/mmlu_pro_replay] [--queries 200]
                                    [--data-dir DIR] [--no-http] [--json]

The service is built here on the pool (profiled first unless `--data-dir` holds a profiled
store; the same directory then serves the HTTP phase, which only loads it). Every phase routes
questions no other phase saw, so no embedding comes from a cache (4 x --queries questions, 3 x
with --no-http, must fit in the replay test split: at most 751, or 1,001, of its 3,005):

- in process, one query at a time: `Admission.route` (embedding, skills read from that one
  embedding, k-NN estimate, recruitment, the prompt checks), p50/p99 in ms, and beside it the
  embedding alone for the same number of questions (its share of a decision);
- batched: groups of 64 through the same call, queries/s;
- over HTTP: `POST /v1/routes` one at a time to `skillroute serve --runtime inline`, p50/p99,
  and its p50 over the in-process one.

JSON keys: `p50_ms`, `p99_ms` (in process), `batched_qps`, `embed_p50_ms`, `http_p50_ms`,
`http_p99_ms`, `http_over_in_process`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.load import DEFAULT_POOL, questions, questions_held  # noqa: E402
from bench.served import serve  # noqa: E402
from orchestrator.container import SkillRoute  # noqa: E402
from orchestrator.domain import Ask  # noqa: E402
from orchestrator.pools.loader import load_pool_config  # noqa: E402
from orchestrator.settings import LearningSettings, Settings  # noqa: E402
from skills.question_text import question_part  # noqa: E402

BATCH = 64


def percentiles_ms(seconds: Sequence[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return round(cuts[49] * 1000, 2), round(cuts[98] * 1000, 2)


def timed(calls: Sequence[Callable[[], object]]) -> list[float]:
    out = []
    for call in calls:
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def in_process(c: SkillRoute, texts: Sequence[str]) -> dict[str, float]:
    """Single decisions, the embedding alone and batched decisions, each over its own texts."""
    n = len(texts) // 3
    route = c.queries.admission.route
    single = timed([lambda t=t: route([Ask(text=t, k=3, seed=1)]) for t in texts[:n]])
    embed = timed([lambda t=t: c.embedder.encode([question_part(t)]) for t in texts[n:2 * n]])
    rest = texts[2 * n:]
    started = time.perf_counter()
    for at in range(0, len(rest), BATCH):
        route([Ask(text=t, k=3, seed=1) for t in rest[at:at + BATCH]])
    p50, p99 = percentiles_ms(single)
    return {"p50_ms": p50, "p99_ms": p99, "embed_p50_ms": percentiles_ms(embed)[0],
            "batched_qps": round(len(rest) / (time.perf_counter() - started), 1)}


def over_http(url: str, texts: Sequence[str]) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=60) as http:
        def post(t: str) -> None:
            r = http.post("/v1/routes", json={"query": t, "k": 3, "seed": 1})
            r.raise_for_status()

        p50, p99 = percentiles_ms(timed([lambda t=t: post(t) for t in texts]))
    return {"http_p50_ms": p50, "http_p99_ms": p99}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default=DEFAULT_POOL)
    ap.add_argument("--queries", type=at_least_two, default=200, help="per phase")
    ap.add_argument("--data-dir", help="a store to reuse (profiled once, then only loaded)")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if problem := too_many(args.pool, args.queries, http=not args.no_http):
        ap.error(problem)
    with tempfile.TemporaryDirectory() as scratch:
        res = measure(args.pool, args.queries, args.data_dir or scratch, http=not args.no_http)
    print(json.dumps(res) if args.json else "\n".join(f"{k:>22}: {v}" for k, v in res.items()))


def at_least_two(text: str) -> int:
    """argparse type for --queries: a percentile needs two timings."""
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def phases(http: bool) -> int:
    """How many phases each route their own --queries questions (single, embedding, batched, HTTP)."""
    return 4 if http else 3


def too_many(pool: str, n: int, http: bool) -> str | None:
    """Why the pool cannot give every phase its own questions (a shared one would time the embedding
    cache), naming the largest allowed --queries; None when it can."""
    held, need = questions_held(pool), n * phases(http)
    if held is None or need <= held:
        return None
    return (f"--queries {n}{'' if http else ' with --no-http'} needs {need} different questions and the replay "
            f"test split holds {held}: the largest allowed --queries is {held // phases(http)}"
            + (f" ({held // 3} with --no-http)" if http else ""))


def measure(pool: str, n: int, data_dir: str, http: bool = True) -> dict[str, object]:
    texts = questions(pool, phases(http) * n)
    quiet = LearningSettings(competition_rate=0.0, explore_rate=0.0)  # a decision, not a competition's
    c = SkillRoute(Settings(data_dir=Path(data_dir), learning=quiet), load_pool_config(pool))
    try:
        c.start()
        c.embedder.encode(["warm the embedding model up"])
        res: dict[str, object] = {"pool": pool, "queries": n, **in_process(c, texts[:3 * n])}
    finally:
        c.close()
    if http:
        with serve(pool, "inline", data_dir=data_dir) as served:
            res.update(over_http(served.url, texts[3 * n:]))
        res["http_over_in_process"] = round(float(res["http_p50_ms"]) / max(float(res["p50_ms"]), 1e-9), 2)  # type: ignore[arg-type]
    return res


if __name__ == "__main__":
    main()
