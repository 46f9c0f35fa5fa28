"""Time to first token against time to the full answer, on a streamed chat over real HTTP.

    python bench/streaming.py [--mock] [--model NAME] [--runs 3] [--max-tokens N] [--data-dir DIR] [--json]

Starts the service in this process over the embedded llama.cpp pool (orchestrator/pools/
default.yaml; its profiles are stored in the data directory, by default where `make serve` keeps
them, so only a first run profiles) or, with --mock, over one mock expert that writes 100 words
at 20 ms a word; serves it on a local port and streams chats to one expert (`--model`, default
the pool's first; `auto` routes and streams the aggregator, after the experts) with the OpenAI
wire format. Each run measures from sending the request to the first content chunk (ttft_s)
and to the last (total_s); the first run only warms the model. Prints the medians and their
ratio (`ratio` = ttft_s / total_s: under 0.5 means the client reads the answer while the
model is still writing it). `--max-tokens` caps the answer: by default 96 on llama.cpp, and on
the mock its whole 100 words.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from experts.mock import MockBackend  # noqa: E402
from experts.types import BaseModelSpec, ExpertSpec, GenerationRequest  # noqa: E402
from orchestrator.api.app import create_app  # noqa: E402
from orchestrator.container import SkillRoute  # noqa: E402
from orchestrator.pools.loader import load_pool_config  # noqa: E402
from orchestrator.pools.schema import ArithmeticSource, GenerationBudget, PoolConfig, ValidationConfig  # noqa: E402
from orchestrator.settings import DEFAULT_POOL, Settings  # noqa: E402
from tests.live_server import live_server  # noqa: E402

MOCK_WORDS, MOCK_PACE_S = 100, 0.02
MAX_TOKENS = 96  # llama.cpp's default cap; the mock writes all MOCK_WORDS, as the help says
QUESTION = "Explain step by step how to compute 17*23, then give the answer."


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    total_s: float
    pieces: int


def paced(request: GenerationRequest, i: int) -> None:
    time.sleep(MOCK_PACE_S)  # the mock model's pace of writing


def mock_pool() -> PoolConfig:
    expert = ExpertSpec(name="writer", base=BaseModelSpec(kind="mock", source="writer"))
    budget = GenerationBudget(profiling_max_tokens=2, expert_max_tokens=128, aggregator_max_tokens=128)
    return PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=2)]), generation=budget,
                      experts=[expert])


def mock_backend(spec: BaseModelSpec) -> MockBackend:
    return MockBackend(spec.key, answer=" ".join(f"word{i}" for i in range(MOCK_WORDS)), gate=paced)


@contextmanager
def service(mock: bool, data_dir: str | None) -> Iterator[tuple[str, list[str]]]:
    """The service on a local port, and its experts' names."""
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(scratch) if mock else data_dir
        settings = Settings(data_dir=where) if where else Settings()
        pool = mock_pool() if mock else load_pool_config(DEFAULT_POOL)
        c = SkillRoute(settings, pool, factory=mock_backend if mock else None)
        c.start()
        try:
            with live_server(create_app(c)) as url:
                yield url, [e.name for e in pool.experts]
        finally:
            c.close()


def stream_once(url: str, model: str, max_tokens: int) -> Sample:
    """One streamed chat: seconds to its first content chunk and to its end."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": QUESTION}]}
    started, first, pieces = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line.removeprefix("data: "))["choices"]
            if choices and choices[0]["delta"].get("content"):
                first = first if first is not None else time.perf_counter() - started
                pieces += 1
    total = time.perf_counter() - started
    return Sample(first if first is not None else total, total, pieces)


def bench(mock: bool = False, model: str | None = None, runs: int = 3, max_tokens: int | None = None,
          data_dir: str | None = None) -> dict[str, object]:
    """`max_tokens` None: the default cap (see MAX_TOKENS)."""
    max_tokens = max_tokens or (MOCK_WORDS if mock else MAX_TOKENS)
    with service(mock, data_dir) as (url, names):
        model = model or names[0]
        samples = [stream_once(url, model, max_tokens) for _ in range(runs + 1)][1:]  # the first warms the model
    ttft, total = statistics.median(s.ttft_s for s in samples), statistics.median(s.total_s for s in samples)
    return {"backend": "mock" if mock else "llamacpp", "model": model, "runs": runs,
            "pieces": statistics.median(s.pieces for s in samples), "ttft_s": round(ttft, 4),
            "total_s": round(total, 4), "ratio": round(ttft / total, 4) if total else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mock", action="store_true", help="a mock expert writing 100 words at 20 ms a word")
    p.add_argument("--model", default=None, help="the expert to stream from (`auto` routes); default: the first")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"the answer's cap (default: {MAX_TOKENS}; with --mock, all {MOCK_WORDS} words)")
    p.add_argument("--data-dir", default=None, help="where the embedded pool's profiles are kept")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    result = bench(a.mock, a.model, a.runs, a.max_tokens, a.data_dir)
    if a.json:
        print(json.dumps(result))
        return
    print(f"{result['backend']} · {result['model']} · {result['pieces']} pieces, median of {result['runs']} runs")
    print(f"time to first token {result['ttft_s']:.3f} s · full answer {result['total_s']:.3f} s · "
          f"ratio {result['ratio']}")


if __name__ == "__main__":
    main()
