"""Every Grafana panel queries metrics that /metrics really exports once the service has worked.

Metric names are parsed out of each PromQL expression (label matchers, ranges, grouping
clauses and function calls removed), then looked up among the sample names of a real scrape
taken after a few queries over the mock pool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
DATASOURCES = ROOT / "infra" / "compose" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"

GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENT = re.compile(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(?!\s*\()")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = GROUPING.sub("", bare)
    return {m for m in IDENT.findall(bare) if m not in KEYWORDS}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))  # collapsed rows nest their panels


def queried(dashboard: Path) -> Iterator[tuple[str, str]]:
    """(panel title, expression) for every target of every non-row panel."""
    for p in panels(json.loads(dashboard.read_text())["panels"]):
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"{dashboard.name}: panel {p['title']!r} queries nothing"
        for t in p["targets"]:
            yield p["title"], t["expr"]


def test_metric_name_parser() -> None:
    expr = ('sum by (expert) (rate(skillroute_recruitments_total{expert!="x"}[$__rate_interval])) / ignoring(expert)'
            " group_left sum(rate(skillroute_recruitments_total[5m])) > bool 1e-9")
    assert metric_names(expr) == {"skillroute_recruitments_total"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(a_bucket[1m])))") == {"a_bucket"}


@pytest.fixture
def exported(client) -> set[str]:
    """Sample names of a scrape taken after a batch, a cold reload and an error."""
    client.app.state.skillroute.fleet["cpu"].shutdown()  # so loads, unloads and load times are recorded
    client.post("/v1/queries", json=[{"query": f"What is {i} + {i}?", "k": 3, "seed": i} for i in range(3)])
    client.get("/v1/queries/424242")
    text = client.get("/metrics").text
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_there_are_dashboards() -> None:
    assert len(DASHBOARDS) >= 2


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_queries_exported_metrics(dashboard: Path, exported: set[str]) -> None:
    for title, expr in queried(dashboard):
        names = metric_names(expr)
        assert names, f"{dashboard.name}: {title!r} has no metric in {expr!r}"
        assert names <= exported, f"{dashboard.name}: {title!r} reads {sorted(names - exported)}, not exported"


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_panels_use_the_provisioned_datasource(dashboard: Path) -> None:
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    for p in panels(json.loads(dashboard.read_text())["panels"]):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in p["targets"])


@pytest.fixture
def healthy(client) -> set[str]:
    """Sample names of a scrape of a service that has answered queries and never failed one."""
    client.post("/v1/queries", json={"query": "What is 2 + 2?", "k": 3, "seed": 1})
    text = client.get("/metrics").text
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_a_ratio_reads_a_counter_with_no_series_yet_as_zero(dashboard: Path, healthy: set[str]) -> None:
    """A labelled counter has no series until its first increment (the errors one, until the
    first error), and a ratio over a missing series shows No data, not 0, on a healthy service."""
    for title, expr in queried(dashboard):
        for name in sorted(metric_names(expr) - healthy) if "/" in expr else []:
            guarded = rf"\(sum\(rate\({name}\[[^\]]*\]\)\) or vector\(0\)\)"
            assert re.search(guarded, expr), f"{dashboard.name}: {title!r} reads {name}, absent until it counts"
