"""How long one routing decision takes: inside the service, batched, and over HTTP, in one run.

    python bench/routing_latency.py [--pool replay:../shared/data/mmlu_pro_replay] [--queries 200]
                                    [--data-dir DIR] [--no-http] [--embedding static,both] [--json]

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

`--embedding` measures the named embedding kinds (static, transformer, both; comma-separated)
one after the other in the same run, each in a service of its own (its own store: under
--data-dir, a folder per kind when there are two or more) over the same questions, so each kind
embeds them once; unset, the kind the settings give (SKILLROUTE_EMBEDDING__KIND, default auto:
static on a replay pool). It prints one row per kind and each kind's numbers over the first's.

JSON keys: `p50_ms`, `p99_ms` (in process), `batched_qps`, `embed_p50_ms`, `http_p50_ms`,
`http_p99_ms`, `http_over_in_process`, `embedding` (the kind measured), `load_average_1m` (before
and after the in-process phases: on shared cores the numbers move with it; with two kinds or more
these are the first's), and with two kinds or more `by_embedding` (each kind's keys above) and
`embedding_over_first` (per later kind: `over`, and its p50, p99, embedding p50, batched queries/s
and HTTP p50 over the first's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from bench.load import DEFAULT_POOL, questions, questions_held  # noqa: E402
from bench.replay_profiles import embedding_kinds  # noqa: E402
from bench.served import serve  # noqa: E402
from orchestrator.container import SkillRoute  # noqa: E402
from orchestrator.domain import Ask  # noqa: E402
from orchestrator.pools.loader import load_pool_config  # noqa: E402
from orchestrator.settings import LearningSettings, Settings  # noqa: E402
from skills.embedder import EmbeddingKind  # noqa: E402
from skills.question_text import question_part  # noqa: E402

BATCH = 64
RATIOS = ("p50_ms", "p99_ms", "embed_p50_ms", "batched_qps", "http_p50_ms")  # compared across kinds
Result = dict[str, object]


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
    ap.add_argument("--embedding", type=embedding_kinds, help="kinds, comma-separated (unset: the settings')")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if problem := too_many(args.pool, args.queries, http=not args.no_http):
        ap.error(problem)
    kinds: list[EmbeddingKind | None] = args.embedding or [None]
    with tempfile.TemporaryDirectory() as scratch:
        runs = [measure(args.pool, args.queries, store(args.data_dir or scratch, kind, len(kinds)),
                        http=not args.no_http, kind=kind) for kind in kinds]
    res = compared(runs)
    print(json.dumps(res) if args.json else shown(res))


def store(data_dir: str, kind: EmbeddingKind | None, kinds: int) -> str:
    """Where a kind's service keeps its store: its own folder beside the others' when several are
    compared (one store's vectors are of one kind; another kind's start would embed them again)."""
    if kinds == 1 or kind is None:
        return data_dir
    (Path(data_dir) / kind).mkdir(parents=True, exist_ok=True)
    return str(Path(data_dir) / kind)


def compared(runs: Sequence[Result]) -> Result:
    """One kind's result as it is; several: the first's at the top level (its keys kept), every
    kind's under `by_embedding`, and each later kind's numbers over the first's."""
    if len(runs) == 1:
        return dict(runs[0])
    first = runs[0]
    over = {str(r["embedding"]): {"over": first["embedding"],
                                  **{k: ratio(r[k], first[k]) for k in RATIOS if k in r}} for r in runs[1:]}
    return {**first, "by_embedding": {str(r["embedding"]): r for r in runs}, "embedding_over_first": over}


def ratio(a: object, b: object) -> float:
    """a / b to 3 significant digits (queries/s ratios run far below 0.01)."""
    return float(f"{float(a) / max(float(b), 1e-9):.3g}")  # type: ignore[arg-type]


def shown(res: Result) -> str:
    """The lines printed: every key, or with several kinds one row per kind and the ratios."""
    if "by_embedding" not in res:
        return "\n".join(f"{k:>22}: {v}" for k, v in res.items())
    lines = [f"{res['queries']} queries per phase on {res['pool']}"]
    for kind, r in res["by_embedding"].items():  # type: ignore[attr-defined]
        http = f", HTTP p50 {r['http_p50_ms']} ms p99 {r['http_p99_ms']} ms" if "http_p50_ms" in r else ""
        lines.append(f"{kind:>12}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, embedding p50 {r['embed_p50_ms']} ms, "
                     f"batched {r['batched_qps']} queries/s{http} (load average {r['load_average_1m']})")
    for kind, o in res["embedding_over_first"].items():  # type: ignore[attr-defined]
        lines.append(f"{kind} / {o['over']}: " + ", ".join(f"{k} {v}x" for k, v in o.items() if k != "over"))
    return "\n".join(lines)


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


def settings(data_dir: str, kind: EmbeddingKind | None) -> Settings:
    """The service's settings, quiet (a decision, not a competition's), embedding with `kind`
    where given (else as SKILLROUTE_EMBEDDING__KIND says)."""
    quiet = LearningSettings(competition_rate=0.0, explore_rate=0.0)
    s = Settings(data_dir=Path(data_dir), learning=quiet)
    return s if kind is None else s.model_copy(update={"embedding": s.embedding.model_copy(update={"kind": kind})})


def measure(pool: str, n: int, data_dir: str, http: bool = True, kind: EmbeddingKind | None = None) -> Result:
    texts = questions(pool, phases(http) * n)
    c = SkillRoute(settings(data_dir, kind), load_pool_config(pool))
    try:
        c.start()
        c.embedder.encode(["warm the embedding model up"])
        load = os.getloadavg()[0]  # on two shared cores the transformer slows several-fold under others' load
        res: Result = {"pool": pool, "queries": n, "embedding": c.embedder.kind, **in_process(c, texts[:3 * n])}
        res["load_average_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    finally:
        c.close()
    if http:
        env = {"SKILLROUTE_EMBEDDING__KIND": kind} if kind else {}
        with serve(pool, "inline", data_dir=data_dir, env=env) as served:
            res.update(over_http(served.url, texts[3 * n:]))
        res["http_over_in_process"] = round(float(res["http_p50_ms"]) / max(float(res["p50_ms"]), 1e-9), 2)  # type: ignore[arg-type]
    return res


if __name__ == "__main__":
    main()
