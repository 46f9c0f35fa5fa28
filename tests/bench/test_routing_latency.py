"""bench/routing_latency.py over a mock pool: each phase measured, keys present and sane."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from tests.live_server import live_server


def test_routing_latency_measures_single_batched_embedding_and_http(
    load_bench: Callable[[str], ModuleType], mock_service: SkillRoute
) -> None:
    bench = load_bench("routing_latency")
    texts = [f"What is {i} times {i + 3}?" for i in range(90)]
    res = bench.in_process(mock_service, texts)
    with live_server(create_app(mock_service)) as url:
        http = bench.over_http(url, texts[:20])
    assert 0 < res["p50_ms"] <= res["p99_ms"] and res["embed_p50_ms"] > 0 and res["batched_qps"] > 0
    assert 0 < http["http_p50_ms"] <= http["http_p99_ms"]
