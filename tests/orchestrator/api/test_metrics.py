"""/metrics over a mock pool: what a few real requests leave in each metric, and /dashboard/api/state."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from tests.orchestrator.conftest import mock_or_real, quiet_settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_queries_fill_routing_generation_and_scheduling_metrics(client, container):
    container.fleet["cpu"].shutdown()  # cold start, so this test's query must load its models
    bodies = [client.post("/v1/queries", json={"query": f"What is {i}*7?", "k": 3, "seed": i}).json()
              for i in range(2)]
    m = scrape(client)
    assert value(m, "skillroute_http_requests_total", endpoint="/v1/queries", method="POST", status="200") == 2
    assert value(m, "skillroute_queries_total", status="done") == 2
    assert value(m, "skillroute_routing_latency_seconds_count") == 2
    assert value(m, "skillroute_routing_decisions_total", router="symbolic", mode="sample") == 2
    for name in {n for b in bodies for n in b["recruited"]}:
        picks = sum(b["recruited"].count(name) for b in bodies)
        assert value(m, "skillroute_recruitments_total", expert=name) == picks
    completion = sum(g["completion_tokens"] for b in bodies for g in b["generations"])
    assert value(m, "skillroute_tokens_generated_total") == completion > 0
    assert value(m, "skillroute_tokens_generated_total", role="aggregator") > 0
    assert value(m, "skillroute_batch_size_count") == 2 and value(m, "skillroute_batch_size_sum") == 2
    assert value(m, "skillroute_query_latency_seconds_count") == 2
    assert value(m, "skillroute_query_budgeted_latency_seconds_count") == 0  # neither had a budget
    assert ("skillroute_queue_depth", frozenset()) in m
    assert ("skillroute_batches_running", frozenset()) in m


def test_loads_unloads_and_residency_follow_the_worker(client, container):
    container.fleet["cpu"].shutdown()
    before = value(scrape(client), "skillroute_model_load_seconds_count")
    client.post("/v1/queries", json={"query": "Who wrote the Analects?", "k": 3, "seed": 2})
    m = scrape(client)
    counts = container.fleet["cpu"].residency_counts()
    for key, (loads, unloads) in counts.items():
        assert value(m, "skillroute_model_loads_total", worker="cpu", model=key) == loads
        assert value(m, "skillroute_model_unloads_total", worker="cpu", model=key) == unloads
    resident = container.fleet["cpu"].resident()
    assert {dict(ls)["model"] for (n, ls), v in m.items() if n == "skillroute_model_resident" and v == 1} == resident
    assert value(m, "skillroute_model_load_seconds_count") - before == len(resident)  # once each since shutdown


def test_errors_are_counted_by_route_template(client):
    client.get("/v1/queries/123456")
    client.post("/v1/queries", json={"query": ""})
    m = scrape(client)
    assert value(m, "skillroute_http_errors_total", endpoint="/v1/queries/{query_id}", status="404") == 1
    assert value(m, "skillroute_http_errors_total", endpoint="/v1/queries", status="422") == 1
    assert value(m, "skillroute_http_requests_total", endpoint="/v1/queries/{query_id}") == 1  # ids never a label


def test_routes_outside_the_api_and_refused_bodies_are_labelled_by_their_route(client, container):
    """FastAPI's own pages and a 413 sent before routing name the route the path matches; only a
    path no route matches (a real 404) is "unmatched", never the raw path."""
    client.get("/docs")
    client.get("/openapi.json")
    client.get("/dashboard/static/dashboard.js")
    too_big = b"x" * (container.settings.http.max_body_bytes + 1)
    assert client.post("/v1/queries", content=too_big, headers={"content-type": "application/json"}).status_code == 413
    client.get("/no/such/path-123")
    m = scrape(client)
    assert value(m, "skillroute_http_requests_total", endpoint="/docs", status="200") == 1
    assert value(m, "skillroute_http_requests_total", endpoint="/openapi.json", status="200") == 1
    assert value(m, "skillroute_http_requests_total", endpoint="/dashboard/static", status="200") == 1  # the mount
    assert value(m, "skillroute_http_errors_total", endpoint="/v1/queries", status="413") == 1
    assert value(m, "skillroute_http_errors_total", endpoint="unmatched", status="404") == 1
    assert not any("path-123" in dict(ls).get("endpoint", "") for _, ls in m)


def test_a_method_outside_http_s_own_is_counted_as_other(client):
    for method in ("BREW", "X-1", "GET"):
        client.request(method, "/health")
    m = scrape(client)
    assert value(m, "skillroute_http_requests_total", method="OTHER", endpoint="/health") == 2
    assert {dict(ls)["method"] for (n, ls) in m if n == "skillroute_http_requests_total"} <= {"GET", "OTHER", "POST"}


def test_budget_metrics_are_exported_before_budgets_land(client):
    m = scrape(client)
    for name in ("skillroute_query_predicted_latency_seconds_count", "skillroute_query_predicted_energy_joules_count",
                 "skillroute_query_energy_joules_count", "skillroute_query_latency_budget_seconds_count"):
        assert (name, frozenset()) in m
    assert value(m, "skillroute_budget_exceeded_total", resource="latency") == 0


def test_each_container_has_its_own_registry(container, tmp_path, embedder):
    """Metrics belong to the service (its parts were given them when built): two apps over one
    container share them, and a second service in the process never hits "duplicated timeseries"."""
    other = SkillRoute(quiet_settings(tmp_path / "other"), container.pool_config, factory=mock_or_real,
                       embedder=embedder)
    with TestClient(create_app(container)) as a, TestClient(create_app(container)) as b, \
            TestClient(create_app(other, owns_container=True)) as c:
        a.get("/health")
        assert value(scrape(a), "skillroute_http_requests_total", endpoint="/health") == 1
        assert value(scrape(b), "skillroute_http_requests_total", endpoint="/health") == 1
        assert value(scrape(c), "skillroute_http_requests_total", endpoint="/health") == 0


def test_dashboard_state_shows_the_queries(client, container):
    body = client.post("/v1/queries", json={"query": "Balance H2 + O2 -> H2O", "k": 2, "seed": 4}).json()
    state = client.get("/dashboard/api/state").json()
    row = state["decisions"][0]
    assert row["id"] == body["id"] and row["query"] == body["query"] and row["answer"] == body["answer"]
    assert row["recruited"] == body["recruited"] and row["aggregator"] == body["aggregator"]
    heat = state["heatmap"]
    assert set(heat["experts"]) == {"alpha", "beta", "gamma"}
    assert {s["skill"] for s in body["skills"]} <= set(heat["matched"]) <= set(heat["skills"])
    assert {m for s in state["timeline"]["segments"] for m in [s["model"]]} >= container.fleet["cpu"].resident()
    assert set(state["recruitment"]["experts"]) >= set(body["recruited"])
    assert state["learning"]["evidence"] == container.pool.evidence_counts() and state["learning"]["lessons"] == {
        "competition": 0, "explore": 0, "feedback": 0}
    assert state["scheduling"]["batches_running"] in (0, 1)  # the query's batch may not have let go of it yet
    assert client.get("/dashboard").status_code == 200


BUDGETED = {"query": "What is 12*12?", "k": 2, "seed": 3, "latency_ms": 3_600_000, "energy_j": 1e8}


def test_a_budgeted_query_records_its_predicted_and_measured_energy(client):
    before = scrape(client)
    assert value(before, "skillroute_query_energy_joules_count") == 0
    body = client.post("/v1/queries", json=BUDGETED).json()
    budget = body["budget"]
    assert body["status"] == "done" and budget["measured_energy_j"] > 0, body
    m = scrape(client)
    assert value(m, "skillroute_query_energy_joules_count") == 1
    assert value(m, "skillroute_query_energy_joules_sum") == pytest.approx(budget["measured_energy_j"])
    assert value(m, "skillroute_query_budgeted_latency_seconds_sum") == pytest.approx(budget["measured_latency_s"])
    assert value(m, "skillroute_query_predicted_energy_joules_sum") == pytest.approx(budget["predicted_energy_j"])
    assert value(m, "skillroute_query_energy_budget_joules_sum") == pytest.approx(1e8)
    assert value(m, "skillroute_query_predicted_latency_seconds_sum") == pytest.approx(budget["predicted_latency_s"])
    client.post("/v1/queries", json={"query": "What is 2+2?", "k": 2, "seed": 1})  # no budget: no energy sample
    assert value(scrape(client), "skillroute_query_energy_joules_count") == 1


def test_the_dashboard_budget_panel_shows_predicted_and_measured_latency_and_energy(client):
    client.post("/v1/queries", json={"query": "What is 2+2?", "k": 2, "seed": 1})
    asked = [client.post("/v1/queries", json={**BUDGETED, "seed": i}).json() for i in range(2)]
    rows = client.get("/dashboard/api/state").json()["budgets"]["queries"]
    assert [r["id"] for r in rows] == [b["id"] for b in asked]  # budgeted ones only, oldest first
    for row, body in zip(rows, asked, strict=True):
        b = body["budget"]
        assert row == {"id": body["id"], "latency_budget_s": 3600.0, "energy_budget_j": 1e8,
                       "predicted_latency_s": b["predicted_latency_s"], "measured_latency_s": b["measured_latency_s"],
                       "predicted_energy_j": b["predicted_energy_j"], "measured_energy_j": b["measured_energy_j"]}
        assert row["measured_energy_j"] > 0 and row["predicted_energy_j"] > 0


def test_a_removed_expert_s_series_are_dropped_with_it(client):
    """Series labelled by expert (recruitments, aggregations, tokens, generation latency) go when the
    expert is removed: otherwise every expert ever registered keeps ~25 series for good."""
    answered = client.post("/v1/queries", json={"query": "What is 17*23?", "k": 3, "seed": 1}).json()
    gone = answered["recruited"][0]

    def by_expert(samples: Samples) -> dict[str, set[tuple[str, frozenset[tuple[str, str]]]]]:
        out: dict[str, set[tuple[str, frozenset[tuple[str, str]]]]] = {}
        for name, labels in samples:
            if expert := dict(labels).get("expert"):
                out.setdefault(expert, set()).add((name, labels))
        return out

    before = by_expert(scrape(client))
    assert {"skillroute_recruitments_total", "skillroute_tokens_generated_total",
            "skillroute_generation_latency_seconds_count"} <= {n for n, _ in before[gone]}
    ids = {e["name"]: e["id"] for e in client.get("/v1/experts").json()}
    assert client.delete(f"/v1/experts/{ids[gone]}").status_code == 200
    after = by_expert(scrape(client))
    assert gone not in after and after == {e: s for e, s in before.items() if e != gone}
