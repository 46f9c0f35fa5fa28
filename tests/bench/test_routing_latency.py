"""bench/routing_latency.py over a mock pool: each phase measured, keys present and sane."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool


def test_routing_latency_measures_single_batched_embedding_and_http(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, embedder: Embedder
) -> None:
    bench = load_bench("routing_latency")
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    c = SkillRoute(quiet_settings(tmp_path), pool, factory=mock_or_real, embedder=embedder)
    c.start()
    texts = [f"What is {i} times {i + 3}?" for i in range(90)]
    res = bench.in_process(c, texts)
    with live_server(create_app(c)) as url:
        http = bench.over_http(url, texts[:20])
    c.close()
    assert 0 < res["p50_ms"] <= res["p99_ms"] and res["embed_p50_ms"] > 0 and res["batched_qps"] > 0
    assert 0 < http["http_p50_ms"] <= http["http_p99_ms"]
