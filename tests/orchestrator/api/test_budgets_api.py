"""Latency and energy budgets through the live app, over mock experts placed on three devices.

Every expected subset is derived from the candidates' predicted costs the service reports, so
the tests hold whatever the device profiles say; mock generation makes the measured cost ~0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec
from orchestrator.api.app import create_app
from orchestrator.budgets.planner import LOCAL_DEVICE, device_table
from orchestrator.container import SkillRoute
from orchestrator.domain import QueryBudget, milliseconds
from orchestrator.pools.schema import ArithmeticSource, MMLUSource, PoolConfig, ValidationConfig
from orchestrator.services.keys import KeyBudget, KeyService
from orchestrator.store.models import Query
from tests.orchestrator.conftest import quiet_settings

QUESTION = "What is 17*23?"
LOOSE: dict[str, Any] = {"latency_ms": 3_600_000, "energy_j": 1e8}


def placed(name: str, base: str, device: str, params_b: float) -> ExpertSpec:
    return ExpertSpec(name=name, base=BaseModelSpec(kind="mock", source=base),
                      placement=ExpertPlacement(device=device, params_b=params_b))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[TestClient]:
    experts = [placed("tiny", "m1", "local-cpu", 0.135), placed("edge", "m1", "jetson-agx-orin", 7.0),
               placed("server", "m2", "h100-server", 70.0)]
    mmlu = MMLUSource(per_subject=2, subjects=["world religions", "jurisprudence"])
    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=4), mmlu]), experts=experts)
    c = SkillRoute(quiet_settings(tmp_path_factory.mktemp("budgets")), pool,
                   factory=lambda spec: MockBackend(spec.key), embedder=embedder)
    c.bootstrap()
    with TestClient(create_app(c)) as tc:
        yield tc
    c.close()


def routed(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/routes", json={"query": QUESTION, "k": 3, **body})
    assert r.status_code == 200, r.text
    budget: dict[str, Any] = r.json()["budget"]
    return budget


def candidates(client: TestClient) -> dict[str, dict[str, Any]]:
    return {c["expert"]: c for c in routed(client, **LOOSE)["candidates"]}


def ask(client: TestClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post("/v1/queries", json={"query": QUESTION, "k": 3, **body}, headers=headers or {})


def query_rows(client: TestClient) -> int:
    with client.app.state.skillroute.db.session() as s:  # type: ignore[attr-defined]
        return s.scalar(select(func.count()).select_from(Query)) or 0


def test_tight_budget_yields_a_cheaper_subset_than_a_loose_one(client: TestClient) -> None:
    cands = candidates(client)
    fastest = min(cands.values(), key=lambda c: c["latency_s"])
    loose = ask(client, **LOOSE).json()["budget"]
    tight_ms = fastest["latency_s"] * 1e3 * 1.01
    r = ask(client, latency_ms=tight_ms)
    assert r.status_code == 200, r.text
    tight = r.json()["budget"]
    assert tight["chosen"] == [fastest["expert"]] and r.json()["recruited"] == tight["chosen"]
    assert len(loose["chosen"]) > len(tight["chosen"])
    assert tight["predicted_latency_s"] < loose["predicted_latency_s"]
    assert tight["predicted_energy_j"] < loose["predicted_energy_j"]
    assert tight["predicted_latency_s"] * 1e3 <= tight_ms
    assert [g["expert"] for g in r.json()["generations"]] == tight["chosen"]  # no aggregation for one


def test_decision_shows_budget_subset_and_predicted_then_measured_cost(client: TestClient) -> None:
    body = ask(client, energy_j=1e8).json()
    b = body["budget"]
    assert (b["energy_j"], b["latency_ms"], b["k_max"], b["from_key"]) == (1e8, None, 3, [])
    assert set(b["chosen"]) == set(body["recruited"]) and body["aggregator"]
    costs = {c["expert"]: c for c in b["candidates"]}
    assert b["predicted_energy_j"] > sum(costs[n]["energy_j"] for n in b["chosen"])  # plus aggregation
    assert b["measured_latency_s"] is not None and 0 <= b["measured_latency_s"] <= body["latency_s"]
    power = device_table()[LOCAL_DEVICE].power_w
    assert b["measured_energy_j"] == pytest.approx(power * b["measured_latency_s"])
    assert LOCAL_DEVICE in b["measured_energy_basis"]
    assert client.get(f"/v1/queries/{body['id']}").json()["budget"] == b


def test_infeasible_budget_is_422_naming_the_cheapest_option_and_stores_nothing(client: TestClient) -> None:
    cands = candidates(client)
    fastest = min(cands.values(), key=lambda c: c["latency_s"])
    frugal = min(cands.values(), key=lambda c: c["energy_j"])
    before = query_rows(client)
    r = ask(client, latency_ms=fastest["latency_s"] * 1e3 / 2)
    assert r.status_code == 422
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("infeasible_budget", "latency_ms")
    assert err["fastest"]["expert"] == fastest["expert"] and fastest["expert"] in err["message"]
    r = ask(client, energy_j=frugal["energy_j"] / 2)
    assert r.status_code == 422 and r.json()["error"]["param"] == "energy_j"
    assert r.json()["error"]["least_energy"]["expert"] == frugal["expert"]
    batch = [{"query": QUESTION, **LOOSE}, {"query": QUESTION, "energy_j": frugal["energy_j"] / 2}]
    r = client.post("/v1/queries", json=batch)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("query 1: ")
    r = client.post("/v1/batches", json={"queries": batch})
    assert r.status_code == 422 and r.json()["error"]["param"] == "energy_j"
    assert query_rows(client) == before


def test_key_defaults_apply_and_a_request_value_overrides_them(client: TestClient) -> None:
    cands = candidates(client)
    fastest = min(cands.values(), key=lambda c: c["latency_s"])
    tight_ms = fastest["latency_s"] * 1e3 * 1.01
    keys = KeyService(client.app.state.skillroute.db)  # type: ignore[attr-defined]
    _, key = keys.create("edge-app", "client", budget=KeyBudget(latency_ms=tight_ms))
    headers = {"Authorization": f"Bearer {key}"}
    by_key = ask(client, headers).json()["budget"]
    assert by_key["from_key"] == ["latency_ms"] and by_key["latency_ms"] == pytest.approx(tight_ms)
    assert by_key["chosen"] == [fastest["expert"]]
    mine = ask(client, headers, **LOOSE).json()["budget"]
    assert mine["from_key"] == [] and len(mine["chosen"]) > 1
    r = ask(client, headers, energy_j=1e8)  # the key's latency still applies beside the request's energy
    assert r.json()["budget"]["from_key"] == ["latency_ms"] and r.json()["budget"]["energy_j"] == 1e8
    r = ask(client, headers | {}, latency_ms=fastest["latency_s"] * 1e3 / 2)
    assert r.status_code == 422 and "key" not in r.json()["error"]["message"]


def test_an_infeasible_key_default_says_it_came_from_the_key(client: TestClient) -> None:
    keys = KeyService(client.app.state.skillroute.db)  # type: ignore[attr-defined]
    _, key = keys.create("too-tight", "client", budget=KeyBudget(energy_j=1e-6))
    r = ask(client, {"Authorization": f"Bearer {key}"})
    assert r.status_code == 422 and "the API key's default" in r.json()["error"]["message"]


def test_no_budget_routes_as_before(client: TestClient) -> None:
    body = ask(client, seed=1).json()
    assert body["budget"] is None and len(body["recruited"]) == 3


@pytest.mark.parametrize(("field", "value"), [("latency_ms", 0), ("latency_ms", -5), ("energy_j", 0),
                                              ("energy_j", "lots"), ("latency_ms", 1e12)])
def test_bad_budget_values_are_422_naming_the_field(client: TestClient, field: str, value: Any) -> None:
    before = query_rows(client)
    r = ask(client, **{field: value})
    assert r.status_code == 422 and field in r.json()["error"]["message"]
    assert query_rows(client) == before


def test_bad_key_defaults_are_refused() -> None:
    with pytest.raises(Exception, match="latency_ms must be a positive number"):
        KeyBudget(latency_ms=-1).checked()


def test_chat_completions_take_budgets_as_extra_body_fields(client: TestClient) -> None:
    fastest = min(candidates(client).values(), key=lambda c: c["latency_s"])
    chat = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}]}
    r = client.post("/v1/chat/completions", json={**chat, "latency_ms": fastest["latency_s"] * 1e3 * 1.01})
    assert r.status_code == 200, r.text
    assert r.json()["skillroute"]["budget"]["chosen"] == [fastest["expert"]]
    r = client.post("/v1/chat/completions", json={**chat, "latency_ms": fastest["latency_s"] * 1e3 / 2})
    assert r.status_code == 422 and r.json()["error"]["param"] == "latency_ms"
    r = client.post("/v1/chat/completions", json={**chat, "model": "tiny", "energy_j": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "energy_j"


def test_an_expert_on_an_unknown_device_is_refused(client: TestClient) -> None:
    body = {"name": "rover", "model": {"kind": "mock", "source": "m3"}, "placement": {"device": "mars-rover"}}
    r = client.post("/v1/experts", json=body)
    assert r.status_code == 422 and r.json()["error"]["param"] == "placement.device"
    assert "mars-rover" in r.json()["error"]["message"] and "local-cpu" in r.json()["error"]["message"]


def test_a_budget_reads_back_as_it_was_asked(client: TestClient) -> None:
    """Kept in seconds, 1001 ms came back as 1000.9999999999999."""
    fastest = min(c["latency_s"] for c in candidates(client).values())
    asked = 1001.0 * max(1, int(fastest * 1e3 / 1001) + 1)  # 1001 ms, or a multiple that fits
    assert routed(client, latency_ms=asked)["latency_ms"] == asked == milliseconds(asked / 1e3)


@pytest.mark.parametrize(("field", "value", "says"), [("latency_ms", True, "valid number"),
                                                     ("energy_j", True, "valid number"),
                                                     ("latency_ms", "NaN", "finite number")])
def test_a_budget_is_a_finite_number_not_a_boolean(client: TestClient, field: str, value: Any, says: str) -> None:
    """`true` was taken as 1 ms or 1 J; NaN was refused as over the range's top."""
    body = f'{{"query": "{QUESTION}", "{field}": {"true" if value is True else value}}}'
    r = client.post("/v1/queries", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == field
    assert says in r.json()["error"]["message"]


def test_routes_costs_the_query_s_text_as_queries_does(client: TestClient) -> None:
    """A query read as a chat lost its trailing blanks: the dry run costed a shorter prompt and
    took a budget /v1/queries refused."""
    padded = QUESTION + " " * 3000
    cost = {c["expert"]: c["latency_s"] for c in routed(client, query=padded, **LOOSE)["candidates"]}
    r = ask(client, query=padded, **LOOSE)
    assert r.status_code == 200 and {c["expert"]: c["latency_s"] for c in r.json()["budget"]["candidates"]} == cost


def test_a_list_s_bad_query_is_named_by_its_place(client: TestClient) -> None:
    """The list's failing item named no field, and a lone query's error said it should be a list."""
    r = client.post("/v1/queries", json=[{"query": QUESTION}, {"query": QUESTION, "latency_ms": 0}])
    assert r.status_code == 422 and r.json()["error"]["param"] == "1.latency_ms"
    r = client.post("/v1/queries", json={"query": QUESTION, "latency_ms": 0})
    assert r.json()["error"]["param"] == "latency_ms" and "list" not in r.json()["error"]["message"]


def test_a_key_s_defaults_hold_for_a_chat_naming_its_expert(client: TestClient) -> None:
    keys = KeyService(client.app.state.skillroute.db)  # type: ignore[attr-defined]
    _, key = keys.create("capped", "client", budget=KeyBudget(energy_j=1e-6))
    chat = {"model": "tiny", "messages": [{"role": "user", "content": QUESTION}]}
    r = client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 422 and "the API key's default" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "energy_j"


@pytest.mark.parametrize(("from_key", "says"), [(("latency_ms", "energy_j"), " (the API key's default)"),
                                                 (("energy_j",), " (energy_j: the API key's default)"),
                                                 ((), "")])
def test_limits_binding_together_say_which_the_key_gave(from_key: tuple[str, ...], says: str) -> None:
    """Each limit met alone by another expert, not both by one: the 422 named neither as the
    key's, whichever the key gave."""
    from orchestrator.budgets.solver import Budget, CheapOption, InfeasibleBudget
    from orchestrator.services.budgets import infeasible
    exc = InfeasibleBudget(Budget(2.0, 5.0), CheapOption("fast", 1.0, 9.0), CheapOption("frugal", 3.0, 1.0))
    error = infeasible(exc, QueryBudget(latency_s=2.0, energy_j=5.0, from_key=from_key))
    assert error.param == "latency_ms,energy_j"
    assert str(error).startswith(f"infeasible budget latency_ms,energy_j{says}:")
