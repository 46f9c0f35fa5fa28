"""bench/load.py against a live service over a mock pool: what it reports, keys and counts."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from tests.live_server import live_server


def test_load_reports_latency_throughput_and_errors_per_endpoint(
    load_bench: Callable[[str], ModuleType], mock_service: SkillRoute
) -> None:
    bench = load_bench("load")
    with live_server(create_app(mock_service)) as url:
        res = bench.run(url, "mock pool", clients=20, requests=60, rounds=2)
        mixed = bench.mixed(url, "mock pool", clients=8, requests=24)
    for part in (res, res["routes"]):
        assert part["requests"] == 60 and part["errors"] == 0 and part["errors_by_status"] == {}
        assert 0 < part["p50_s"] <= part["p99_s"] and part["qps"] > 0
    assert res["path"] == "/v1/queries" and res["routes"]["path"] == "/v1/routes"
    assert res["p50_ratio_queries_over_routes"] > 0
    assert len(res["rounds"]) == 2 and res["rounds"][-1]["p50_s"] == res["p50_s"]
    assert res["rss_mib"] == []  # a service this bench did not start: its memory is not read
    for name in ("short_alone", "short_with_long", "long"):
        assert mixed[name]["requests"] == 24 and mixed[name]["errors"] == 0, mixed[name]
    assert mixed["short_p50_ratio_with_over_without"] > 0
