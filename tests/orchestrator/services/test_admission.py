"""One admission path: every way a query comes in is routed once (its text embedded once), stored
with its whole request and decision, and answered (or recovered after a crash) as admitted."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.api.app import create_app
from orchestrator.api.openai_compat import ChatCompletionRequest
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, Decision
from orchestrator.services.admission import ModelNotFound
from orchestrator.services.budgets import BudgetService
from orchestrator.services.keys import Caller
from orchestrator.store.models import Batch, Query
from orchestrator.store.repositories.queries import QueryRepository, decision_of
from skills.embedder import Embedder
from tests.orchestrator.conftest import CountingEmbedder, mock_or_real

GENEROUS = {"latency_ms": 3_600_000, "energy_j": 1e8}


@pytest.fixture
def counted(container: SkillRoute, embedder: Embedder) -> Iterator[tuple[TestClient, CountingEmbedder]]:
    """The mock pool's service with its embedder counting, started before counting begins."""
    counting = CountingEmbedder(embedder)
    c = SkillRoute(container.settings, container.pool_config, factory=mock_or_real, embedder=counting)
    with TestClient(create_app(c, owns_container=True)) as client:
        counting.texts.clear()  # what starting embedded (the profiling questions) is not a query's
        yield client, counting


def stored(c: SkillRoute) -> tuple[int, int]:
    """How many queries and batches the store holds."""
    with c.db.session() as s:
        queries, batches = (s.scalar(select(func.count()).select_from(t)) or 0 for t in (Query, Batch))
    return queries, batches


def post(client: TestClient, path: str, body: Any) -> Any:
    r = client.post(path, json=body)
    assert r.status_code in (200, 202), r.text
    return r.json()


def test_each_query_text_is_embedded_once_whichever_way_it_came(counted) -> None:  # type: ignore[no-untyped-def]
    client, counting = counted
    post(client, "/v1/queries", {"query": "plain query", "k": 2, "seed": 1})
    post(client, "/v1/queries", {"query": "budgeted query", "k": 2, "seed": 1, **GENEROUS})
    post(client, "/v1/queries", [{"query": "listed one", "seed": 2}, {"query": "listed two", "seed": 3}])
    post(client, "/v1/chat/completions", {"model": "auto", "seed": 1,
                                          "messages": [{"role": "user", "content": "chat query"}]})
    post(client, "/v1/chat/completions", {"model": "auto", "seed": 1, **GENEROUS,
                                          "messages": [{"role": "user", "content": "budgeted chat"}]})
    post(client, "/v1/routes", {"query": "dry run", "seed": 1, **GENEROUS})
    texts = ["plain query", "budgeted query", "listed one", "listed two", "chat query", "budgeted chat", "dry run"]
    assert {t: counting.texts[t] for t in texts} == dict.fromkeys(texts, 1)
    assert set(counting.texts) == set(texts)  # and nothing else was embedded for them


def test_a_direct_chat_embeds_nothing(counted) -> None:  # type: ignore[no-untyped-def]
    client, counting = counted
    post(client, "/v1/chat/completions", {"model": "gamma", "messages": [{"role": "user", "content": "direct"}]})
    assert counting.texts == Counter()  # a named expert is not routed


def test_the_replies_carry_the_one_stored_decision_record(client) -> None:  # type: ignore[no-untyped-def]
    question, seed = "Which gas do plants absorb for photosynthesis?", 7
    fields = list(Decision.model_fields)
    dry = post(client, "/v1/routes", {"query": question, "k": 3, "seed": seed})
    full = post(client, "/v1/queries", {"query": question, "k": 3, "seed": seed})
    chat = post(client, "/v1/chat/completions", {"model": "auto", "k": 3, "seed": seed,
                                                 "messages": [{"role": "user", "content": question}]})
    rows = {r["id"]: r for r in client.get("/dashboard/api/state").json()["decisions"]}
    records = [dry, full, chat["skillroute"], rows[full["id"]], rows[chat["skillroute"]["query_id"]]]
    routed = Decision.model_validate(dry)
    assert all(Decision.model_validate({f: r[f] for f in fields}).as_routed() == routed for r in records)
    assert all(r["devices"] for r in records[1:])  # and the answered ones say where they ran
    assert dry["recruited"] and dry["experts"] and dry["skills"]  # a real decision, not an empty one


def test_a_direct_chat_interrupted_before_it_ran_is_answered_by_its_expert_on_restart(
    container: SkillRoute, embedder: Embedder
) -> None:
    body = ChatCompletionRequest(model="gamma", messages=[{"role": "user", "content": "What is 9*9?"}])
    ask = body.to_ask(3, BudgetService(container.keys, Caller(None)))  # what the endpoint admits
    (admitted,) = container.admission.admit([ask])  # stored; then the process dies before the window ran it
    container.close()
    restarted = SkillRoute(container.settings, container.pool_config, factory=mock_or_real, embedder=embedder)
    assert restarted.start() == 1
    row = restarted.queries.get(admitted.query_id)
    restarted.close()
    assert row.status == "done" and [(g.expert, g.role) for g in row.generations] == [("gamma", "expert")]
    assert row.decision is not None and row.decision.record["router"] == "direct"
    assert row.request is not None and row.request["expert"] == "gamma"


def test_a_query_no_expert_can_take_stores_nothing_and_names_it(client, container) -> None:  # type: ignore[no-untyped-def]
    before = stored(container)
    r = client.post("/v1/chat/completions", json={"model": "nobody", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" and "nobody" in r.text
    r = client.post("/v1/batches", json={"queries": [{"query": "fine", **GENEROUS},
                                                     {"query": "too tight", "latency_ms": 1e-6}]})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("query 1: infeasible budget")
    assert stored(container) == before


def test_requests_admitted_together_are_stored_together_and_a_refusal_stays_with_its_own(container) -> None:  # type: ignore[no-untyped-def]
    before = stored(container)
    calls = [[Ask(text="What is 2+2?", k=2, seed=1)], [Ask(text="who?", expert="nobody")],
             [Ask(text="What is 3+3?", k=2, seed=2), Ask(text="What is 4+4?", k=1, seed=3)]]
    first, refused, last = container.admission._admit_group(calls)
    assert isinstance(refused, ModelNotFound) and "nobody" in refused.message
    assert [a.ask.text for a in first + last] == ["What is 2+2?", "What is 3+3?", "What is 4+4?"]
    assert stored(container) == (before[0] + 3, before[1])
    rows = container.queries.get_many([a.query_id for a in first + last])
    assert [decision_of(r) for r in rows] == [a.decision for a in first + last]


def invalid(path: str) -> int:
    """A request's validation status: 400 on the OpenAI-compatible chat, as OpenAI's; 422 elsewhere."""
    return 400 if path == "/v1/chat/completions" else 422


def test_text_the_store_cannot_hold_is_refused_before_anything_is_stored(client, container) -> None:  # type: ignore[no-untyped-def]
    before = stored(container)
    chat = [{"role": "user", "content": [{"type": "text", "text": "2+2?\u0000"}]}]
    for path, body, field in [("/v1/queries", {"query": "2+2?\u0000"}, "query"),
                              ("/v1/routes", {"query": "2+2?\u0000"}, "query"),
                              ("/v1/chat/completions", {"model": "auto", "messages": chat}, "text"),
                              ("/v1/batches", {"queries": [{"query": "fine", "custom_id": "a\u0000"}]}, "custom_id")]:
        r = client.post(path, json=body)
        message = r.json()["error"]["message"]
        assert r.status_code == invalid(path) and field in message and "NUL" in message, (path, r.text)
    assert stored(container) == before


def test_a_lone_surrogate_is_refused_before_anything_is_stored(client, container) -> None:  # type: ignore[no-untyped-def]
    """JSON's "\\ud800" escape is no character: the embedder's tokenizer failed on it, and with
    it every request embedded in the same group. Sent as escapes (json.dumps), as a client would."""
    before = stored(container)
    chat = [{"role": "user", "content": "2+2? \ud800"}]
    for path, body, field in [("/v1/chat/completions", {"model": "auto", "messages": chat}, "content"),
                              ("/v1/chat/completions", {"model": "auto", "stop": ["\udfff"],
                                                        "messages": [{"role": "user", "content": "2+2?"}]}, "stop"),
                              ("/v1/routes", {"messages": chat}, "content")]:
        r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        message = r.json()["error"]["message"]
        assert r.status_code == invalid(path) and field in message and "surrogate" in message, (path, r.text)
    assert stored(container) == before


def test_a_write_that_fails_stays_with_the_request_it_came_from(container) -> None:  # type: ignore[no-untyped-def]
    before = stored(container)
    nul = Ask(text="What is 3+3?\x00", k=2, seed=2)  # past the API's check: PostgreSQL refuses to store it
    fine, other = container.admission._admit_group([[Ask(text="What is 2+2?", k=2, seed=1)], [nul]])
    assert [a.ask.text for a in fine] == ["What is 2+2?"]
    if container.db.engine.dialect.name == "postgresql":
        assert isinstance(other, SQLAlchemyError) and stored(container) == (before[0] + 1, before[1])
    else:  # SQLite stores it: both are admitted
        assert [a.ask for a in other] == [nul] and stored(container) == (before[0] + 2, before[1])


def test_routing_that_raises_on_one_request_s_query_fails_that_request_alone(container, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Only a refusal (a ServiceError) split the group: any other error routing one query (a
    keyword LLM's reply, a bug) failed every request routed beside it."""
    route = container.pipeline.decider.route_embedded

    def fragile(pool, asks, dry_run=False):  # type: ignore[no-untyped-def]
        if any("fragile" in a.text for a in asks):
            raise RuntimeError("the keyword expert's reply could not be read")
        return route(pool, asks, dry_run)

    monkeypatch.setattr(container.pipeline.decider, "route_embedded", fragile)
    fine, failed = container.admission._admit_group([[Ask(text="What is 2+2?", k=2, seed=1)],
                                                      [Ask(text="fragile: what is 3+3?", k=2, seed=2)]])
    assert [a.ask.text for a in fine] == ["What is 2+2?"]
    assert isinstance(failed, RuntimeError)


def test_a_driver_error_storing_one_request_fails_that_request_alone(container, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The driver raises its own errors (OverflowError, UnicodeEncodeError), not SQLAlchemy's: one
    failed every request stored beside it, and kept the competition slots its decisions took."""
    accept = QueryRepository.accept_many

    def fragile(self, asks, decisions, owner=None):  # type: ignore[no-untyped-def]
        if any("fragile" in a.text for a in asks):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return accept(self, asks, decisions, owner)

    released: list[Decision] = []
    monkeypatch.setattr(QueryRepository, "accept_many", fragile)
    monkeypatch.setattr(container.pipeline.decider, "release", released.extend)
    fine, failed = container.admission._admit_group([[Ask(text="What is 2+2?", k=2, seed=1)],
                                                      [Ask(text="fragile: what is 3+3?", k=2, seed=2)]])
    assert [a.ask.text for a in fine] == ["What is 2+2?"] and isinstance(failed, OverflowError)
    assert len(released) == 1 and stored(container)[0] >= 1
