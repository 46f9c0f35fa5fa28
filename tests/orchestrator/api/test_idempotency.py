"""`Idempotency-Key` on POST /v1/queries, /v1/batches and /v1/chat/completions: a retry returns
the first request's queries or batch (same ids, same body once finished) and creates nothing;
the key with another body or endpoint is a 422; keys are scoped per client key; old keys are
purged. On SQLite and Postgres both (the unique constraint decides a race on either)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import func, select, update

from orchestrator.api.app import create_app
from orchestrator.api.openai_protocol import ChatCompletionRequest
from orchestrator.container import SkillRoute
from orchestrator.services.idempotency import fingerprint
from orchestrator.services.keys import KeyService
from orchestrator.settings import AuthSettings
from orchestrator.store.models import Batch, IdempotencyKey, Query

pytestmark = pytest.mark.both_databases

QUERY = {"query": "What is 6*7?", "k": 2, "seed": 3}
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "What is 6*7?"}], "seed": 3}
BATCH = {"queries": [{"query": f"What is {n}+{n}?", "k": 1, "seed": n, "custom_id": f"q{n}"} for n in range(3)]}


def key(k: str) -> dict[str, str]:
    return {"Idempotency-Key": k}


def count(c: SkillRoute, table: Any) -> int:
    with c.db.session() as s:
        return s.scalar(select(func.count()).select_from(table)) or 0


def test_a_query_sent_again_with_its_key_returns_the_first_and_asks_nothing_new(client, container) -> None:  # type: ignore[no-untyped-def]
    first = client.post("/v1/queries", json=QUERY, headers=key("order-1"))
    again = client.post("/v1/queries", json=QUERY, headers=key("order-1"))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["status"] == "done"
    assert count(container, Query) == 1 and count(container, IdempotencyKey) == 1
    other = client.post("/v1/queries", json=QUERY, headers=key("order-2"))  # a new key is a new request
    plain = client.post("/v1/queries", json=QUERY)  # and no key, as before
    assert len({first.json()["id"], other.json()["id"], plain.json()["id"]}) == 3
    listed = [client.post("/v1/queries", json=[QUERY, QUERY], headers=key("list")).json() for _ in range(2)]
    assert listed[0] == listed[1] and len({q["id"] for q in listed[0]}) == 2
    assert count(container, Query) == 5


def test_a_batch_and_a_chat_sent_again_return_the_first(client, container) -> None:  # type: ignore[no-untyped-def]
    batches = [client.post("/v1/batches", json=BATCH, headers=key("nightly")) for _ in range(2)]
    assert [r.status_code for r in batches] == [202, 202]
    assert batches[0].json()["id"] == batches[1].json()["id"]
    assert batches[1].headers["location"] == f"/v1/batches/{batches[0].json()['id']}"
    assert count(container, Batch) == 1 and count(container, Query) == 3
    chats = [client.post("/v1/chat/completions", json=CHAT, headers=key("chat-1")) for _ in range(2)]
    assert chats[0].status_code == 200 and chats[0].json() == chats[1].json()
    assert chats[0].headers["x-skillroute-query-id"] == chats[1].headers["x-skillroute-query-id"]
    assert count(container, Query) == 4
    # a stream that broke, retried unstreamed (or the other way): how the reply travels is not the query
    streaming = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    streamed = client.post("/v1/chat/completions", json=streaming, headers=key("chat-2"))
    plain = client.post("/v1/chat/completions", json=CHAT, headers=key("chat-2"))
    assert streamed.status_code == plain.status_code == 200, plain.text
    assert streamed.headers["x-skillroute-query-id"] == plain.headers["x-skillroute-query-id"]
    assert count(container, Query) == 5


def test_the_key_with_another_body_or_endpoint_is_a_422_naming_it_and_stores_nothing(client, container) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/v1/queries", json=QUERY, headers=key("k1")).status_code == 200
    before = count(container, Query), count(container, Batch)
    cases = [("/v1/queries", {**QUERY, "seed": 4}, "different body"), ("/v1/batches", BATCH, "/v1/queries"),
             ("/v1/chat/completions", CHAT, "/v1/queries")]
    for path, body, named in cases:
        r = client.post(path, json=body, headers=key("k1"))
        error = r.json()["error"]
        assert r.status_code == 422 and error["code"] == "idempotency_key_reused", r.text
        assert error["param"] == "Idempotency-Key" and "'k1'" in error["message"] and named in error["message"]
    assert (count(container, Query), count(container, Batch)) == before


def test_a_malformed_key_is_a_422_naming_the_header(client, container) -> None:  # type: ignore[no-untyped-def]
    for bad in ("", "x" * 256, "has space", "caf\u00e9".encode()):
        r = client.post("/v1/queries", json=QUERY, headers={"Idempotency-Key": bad})  # type: ignore[dict-item]
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["error"]["message"], (bad, r.text)
    assert count(container, Query) == 0


def test_keys_are_scoped_to_the_client_key_that_sent_them(container) -> None:  # type: ignore[no-untyped-def]
    container.settings = container.settings.model_copy(update={"auth": AuthSettings(require_client_keys=True)})
    (_, mine), (_, theirs) = (KeyService(container.db).create(n, "client") for n in ("mine", "theirs"))
    with TestClient(create_app(container)) as client:
        ids = [client.post("/v1/queries", json=QUERY, headers={**key("same"), "Authorization": f"Bearer {k}"})
               .json()["id"] for k in (mine, theirs, mine)]
    assert ids[0] == ids[2] != ids[1]


def test_first_requests_racing_on_one_key_create_one_query(container, serve) -> None:  # type: ignore[no-untyped-def]
    start = threading.Barrier(6)

    def send(url: str) -> httpx.Response:
        start.wait(timeout=30)
        return httpx.post(f"{url}/v1/queries", json=QUERY, headers=key("race"), timeout=120)

    with serve(create_app(container)) as url, ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(send, [url] * 6))
    assert [r.status_code for r in replies] == [200] * 6, [r.text for r in replies]
    assert len({r.json()["id"] for r in replies}) == 1
    assert count(container, Query) == 1 and count(container, IdempotencyKey) == 1


def test_keys_past_the_retention_window_are_purged_and_free_again(client, container) -> None:  # type: ignore[no-untyped-def]
    first = client.post("/v1/queries", json=QUERY, headers=key("old")).json()["id"]
    client.post("/v1/queries", json=QUERY, headers=key("recent"))
    assert container.idempotency.purge() == 0
    past = datetime.now(UTC) - timedelta(hours=container.settings.idempotency.retention_hours, minutes=1)
    with container.db.session() as s:
        s.execute(update(IdempotencyKey).where(IdempotencyKey.key == "old").values(created_at=past))
    again = client.post("/v1/queries", json={**QUERY, "seed": 9}, headers=key("old"))  # expired: no conflict
    assert again.status_code == 200 and again.json()["id"] != first
    with container.db.session() as s:
        s.execute(update(IdempotencyKey).values(created_at=past))
    assert container.idempotency.purge() == 2 and count(container, IdempotencyKey) == 0



class Before(BaseModel):
    query: str
    k: int = 3


class After(Before):  # a later version: optional fields added
    temperature: float | None = None
    stream: bool = False


def test_a_field_a_later_version_adds_at_its_default_keeps_a_retry_the_same_request() -> None:
    """A retry that spans an upgrade adding an optional request field (this one added several to
    chat) was a 422 'different body': the whole model, defaults and all, was fingerprinted."""
    assert fingerprint(Before(query="q")) == fingerprint(After(query="q"))
    assert fingerprint(Before(query="q", k=4)) == fingerprint(After(query="q", k=4, stream=False))
    assert fingerprint(Before(query="q")) != fingerprint(After(query="q", stream=True))


def test_a_list_body_retried_across_such_an_upgrade_is_the_same_request_too() -> None:
    """POST /v1/queries takes a list: its items were dumped defaults and all (only a single body
    left them out), so a list retried across the upgrade was a 422 idempotency_key_reused."""
    assert fingerprint([Before(query="q"), Before(query="r", k=4)]) == fingerprint(
        [After(query="q"), After(query="r", k=4, stream=False)])
    assert fingerprint([Before(query="q")]) != fingerprint([After(query="q", stream=True)])
    assert fingerprint([Before(query="q")]) != fingerprint(Before(query="q"))  # a list of one is answered as a list


def test_two_spellings_of_one_chat_are_one_request() -> None:
    """`max_tokens` and `max_completion_tokens` are one parameter to the chat (the latter wins),
    and a lone stop string is a list of one: a retry that spelled them the other way was a 422
    idempotency_key_reused 'different body' for the very request it first sent."""
    def chat(**fields: object) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({"model": "auto", "messages": [{"role": "user", "content": "q"}],
                                                     **fields})

    assert fingerprint(chat(max_tokens=5)) == fingerprint(chat(max_completion_tokens=5))
    assert fingerprint(chat(max_tokens=9, max_completion_tokens=5)) == fingerprint(chat(max_completion_tokens=5))
    assert fingerprint(chat(stop="x")) == fingerprint(chat(stop=["x"]))
    assert fingerprint(chat(max_tokens=5)) != fingerprint(chat(max_tokens=6))
