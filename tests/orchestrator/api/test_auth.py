"""API keys: admin writes need the admin key once one exists; client keys, hashing, revocation, limits."""

import base64

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from orchestrator.api.app import create_app
from orchestrator.services.keys import KeyService
from orchestrator.settings import Settings
from orchestrator.store.models import ApiKey

NEW_EXPERT = {"name": "delta", "model": {"kind": "mock", "source": "m2"}}
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}], "seed": 1}
ADMIN_ENV = "env-admin-secret"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def app_with(container, monkeypatch):  # type: ignore[no-untyped-def]
    """An app built after the env is set, as a deployment would start it: the settings are read
    from the environment (the flat names the README documents) and handed to the app."""
    def build(**env: str) -> TestClient:
        for name, value in env.items():
            monkeypatch.setenv(f"SKILLROUTE_{name.upper()}", value)
        container.settings = Settings(data_dir=container.settings.data_dir, database=container.settings.database)
        return TestClient(create_app(container))
    return build


def expert_names(container) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.name for e in container.experts.all()]


def test_admin_writes_without_the_admin_key_are_401_and_change_nothing(app_with, container, keys):
    client = app_with(admin_key=ADMIN_ENV)
    _, client_key = keys.create("client", "client")
    before = expert_names(container)
    for headers in ({}, bearer("wrong"), bearer("sk-sr-000000000000.nope")):
        r = client.post("/v1/experts", json=NEW_EXPERT, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert client.post("/v1/experts", json=NEW_EXPERT, headers=bearer(client_key)).status_code == 403
    assert expert_names(container) == before and "delta" not in container.pool.snapshot.experts
    assert client.post("/v1/experts", json=NEW_EXPERT, headers=bearer(ADMIN_ENV)).status_code == 202
    assert "delta" in expert_names(container)


def test_a_stored_admin_key_turns_protection_on(app_with, container, keys):
    client = app_with()
    row, admin = keys.create("ops", "admin")
    assert client.post("/v1/experts", json=NEW_EXPERT).status_code == 401
    assert client.post("/v1/experts", json={**NEW_EXPERT, "name": "x!"}).status_code == 401  # before validation
    assert client.post("/v1/experts", json=NEW_EXPERT, headers=bearer(admin)).status_code == 202
    client.app.state.access.keys.revoke(row.id)
    # revoking the only stored admin key (with no env key) reopens the service: local use as before;
    # the revoked key itself is refused all the same, as any key that is not (or no longer) one
    assert client.post("/v1/experts", json={**NEW_EXPERT, "name": "eps"}, headers=bearer(admin)).status_code == 401
    assert client.post("/v1/experts", json={**NEW_EXPERT, "name": "eps"}).status_code == 202
    assert client.post("/v1/experts", json={**NEW_EXPERT, "name": "zeta"}, headers=bearer("unused")).status_code == 202


def test_reads_and_queries_stay_open_without_required_client_keys(app_with):
    client = app_with(admin_key=ADMIN_ENV)
    assert client.get("/v1/experts").status_code == 200 and client.post("/v1/chat/completions", json=CHAT).is_success
    assert client.get("/health").status_code == 200 and client.get("/openapi.json").status_code == 200


def test_required_client_keys_guard_queries_and_revocation_works(app_with, container, keys):
    client = app_with(require_client_keys="true")
    _, key = keys.create("client", "client")
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    assert client.post("/v1/routes", json={"query": "x"}).status_code == 401
    assert client.get("/v1/models").status_code == 401 and client.get("/health").status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
    row = client.app.state.access.keys.verify(key)
    client.app.state.access.keys.revoke(row.id)
    assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code == 401


def test_with_client_keys_required_the_pool_is_not_open_to_anyone(app_with, keys):
    """No admin key yet left registering, changing and removing experts open to callers with no
    key at all, while reads and queries asked for one."""
    client = app_with(require_client_keys="true")
    _, key = keys.create("client", "client")
    for headers, status in (({}, 401), (bearer("unused"), 401), (bearer(key), 403)):
        r = client.post("/v1/experts", json={**NEW_EXPERT, "name": "eps"}, headers=headers)
        assert r.status_code == status and "admin API key" in r.json()["error"]["message"], (headers, r.text)
        assert client.delete("/v1/experts/1", headers=headers).status_code == status
    _, admin = keys.create("ops", "admin")
    assert client.post("/v1/experts", json={**NEW_EXPERT, "name": "eps"}, headers=bearer(admin)).status_code == 202


def test_keys_are_stored_as_salted_hashes_only(container, keys):
    (a, key_a), (b, key_b) = (keys.create("client", "client") for _ in range(2))
    with container.db.session() as s:
        rows = s.scalars(select(ApiKey)).all()
    for row in rows:
        assert row.digest not in (key_a, key_b) and key_a.split(".")[1] not in row.digest
    assert len({r.salt for r in rows}) == len(rows)


def test_per_key_limit_is_429_in_openai_shape(app_with, container, keys):
    client = app_with()
    row, key = keys.create("tiny", "client", requests_per_minute=2)
    for _ in range(2):
        assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    r = client.get("/v1/models", headers=bearer(key))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert client.get("/v1/models").status_code == 200  # other callers are not affected


def test_batches_are_visible_only_to_the_key_that_sent_them(app_with, container, keys):
    client = app_with(require_client_keys="true")
    (_, mine), (_, theirs) = keys.create("client", "client"), keys.create("client", "client")
    batch = {"queries": [{"query": "What is 3+3?", "k": 1, "seed": 0}]}
    bid = client.post("/v1/batches", json=batch, headers=bearer(mine)).json()["id"]
    assert client.get(f"/v1/batches/{bid}", headers=bearer(mine)).status_code == 200
    assert client.get(f"/v1/batches/{bid}", headers=bearer(theirs)).status_code == 404


def test_a_client_key_reads_and_judges_only_its_own_queries(app_with, container, keys):
    """Queries, chats, batches' queries and streams a key sent are its own: another client key
    gets the 404 an unknown id gets (ids are sequential: no probing), for reading and feedback."""
    client = app_with(require_client_keys="true")
    (_, mine), (_, theirs) = keys.create("client", "client"), keys.create("client", "client")
    _, admin = keys.create("ops", "admin")
    asked = client.post("/v1/queries", json={"query": "What is 3+3?", "k": 1, "seed": 0}, headers=bearer(mine))
    chat = client.post("/v1/chat/completions", json=CHAT, headers=bearer(mine))
    batch = client.post("/v1/batches", json={"queries": [{"query": "What is 4+4?", "k": 1, "seed": 0}]},
                        headers=bearer(mine))
    ids = [asked.json()["id"], chat.json()["skillroute"]["query_id"], batch.json()["results"][0]["query_id"]]
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(mine)) as r:
        ids.append(int(r.headers["x-skillroute-query-id"]))
        r.read()
    for qid in ids:
        assert client.get(f"/v1/queries/{qid}", headers=bearer(mine)).status_code == 200
        assert client.get(f"/v1/queries/{qid}", headers=bearer(admin)).status_code == 200
        other = client.get(f"/v1/queries/{qid}", headers=bearer(theirs))
        assert other.status_code == 404 and f"no query with id {qid}" in other.json()["error"]["message"]
    feedback = f"/v1/queries/{ids[0]}/feedback"
    assert client.post(feedback, json={"correct": True}, headers=bearer(theirs)).status_code == 404
    assert client.post(feedback, json={"correct": True}, headers=bearer(mine)).status_code == 200


@pytest.fixture
def keys(container):  # type: ignore[no-untyped-def]
    """Keys made in the same store the app's access control reads."""
    return KeyService(container.db)


@pytest.mark.parametrize("required", ["false", "true"])
def test_a_key_sent_that_is_no_active_key_is_401_in_either_mode(app_with, container, keys, required):
    """Served as anonymous, a mistyped or revoked key slipped past its revocation and rate limit:
    refused in every mode, as an admin write refuses it. A token that is not one of ours is the
    placeholder an OpenAI client must send: served as no key where none is required."""
    client = app_with(admin_key=ADMIN_ENV, require_client_keys=required)
    row, key = keys.create("alice", "client", requests_per_minute=1)
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    assert client.get("/v1/models", headers=bearer(key)).status_code == 429
    keys.revoke(row.id)
    prefix = key.partition(".")[0]
    for token in (f"{prefix}.wrong-secret", key, "sk-sr-not-a-key"):
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/queries", {"query": "What is 2+2?"}),
                                   ("GET", "/metrics", None), ("POST", "/v1/experts", NEW_EXPERT)):
            r = client.request(method, path, json=body, headers=bearer(token))
            assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key", (token, path)
    placeholder = client.get("/v1/models", headers=bearer("unused-unless-keys-are-on"))
    assert placeholder.status_code == (401 if required == "true" else 200)
    assert client.get("/v1/models").status_code == (401 if required == "true" else 200)


def test_without_a_key_only_anonymous_queries_and_batches_are_read(app_with, container, keys):
    """Client keys issued, not required: a caller with no key reads and judges only what no key
    asked (a 404, as an unknown id, for a key's); a key reads its own and anonymous ones; admins all."""
    client = app_with(admin_key=ADMIN_ENV)
    (_, alice), (_, ops) = keys.create("alice", "client"), keys.create("ops", "admin")
    ask = {"query": "What is 2+2?", "k": 1, "seed": 0}
    theirs = [client.post("/v1/queries", json=ask, headers=bearer(k)).json()["id"] for k in (alice, ops)]
    batch = client.post("/v1/batches", json={"queries": [ask]}, headers=bearer(alice)).json()["id"]
    anonymous = client.post("/v1/queries", json=ask).json()["id"]
    for qid in theirs:
        assert client.get(f"/v1/queries/{qid}").status_code == 404
        assert client.post(f"/v1/queries/{qid}/feedback", json={"correct": True}).status_code == 404
    assert client.get(f"/v1/batches/{batch}").status_code == 404
    assert client.get(f"/v1/queries/{anonymous}").status_code == 200
    assert client.post(f"/v1/queries/{anonymous}/feedback", json={"correct": True}).status_code == 200
    assert client.get(f"/v1/queries/{anonymous}", headers=bearer(alice)).status_code == 200
    assert client.get(f"/v1/queries/{theirs[1]}", headers=bearer(alice)).status_code == 404
    for admin in (ops, ADMIN_ENV):
        assert all(client.get(f"/v1/queries/{q}", headers=bearer(admin)).status_code == 200 for q in theirs)
        assert client.get(f"/v1/batches/{batch}", headers=bearer(admin)).status_code == 200


def basic(password: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(b"user:" + password).decode()}


def test_a_token_that_cannot_be_a_key_is_401_before_the_store_reads_it(app_with, container, keys):
    """A NUL in the Basic password reached the prefix lookup, a 500 on PostgreSQL (it cannot store
    NUL); any token not shaped as `create` issues them is refused unread."""
    client = app_with(admin_key=ADMIN_ENV, require_client_keys="true")
    _, key = keys.create("client", "client")
    prefix, _, secret = key.partition(".")
    for password in (b"sk-sr-\x00abc.def", f"{prefix}.{secret}\x00".encode(), b"sk-sr-zz.secret",
                     b"sk-sr-" + b"a" * 6000 + b".b", f"{prefix}.s\xe9cret".encode()):
        for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/experts"), ("GET", "/metrics")):
            r = client.request(method, path, json=CHAT, headers=basic(password))
            assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key", (password, path)
    assert keys.verify(f"{prefix}\x00.{secret}") is None and keys.verify(key) is not None
    assert client.post("/v1/chat/completions", json=CHAT, headers=basic(key.encode())).status_code == 200


def test_basic_credentials_that_hold_no_key_are_401_not_anonymous(app_with, container):
    client = app_with(admin_key=ADMIN_ENV)  # client keys optional: no key at all is served
    for value in ("!!!", base64.b64encode(b"no-colon").decode(), base64.b64encode(b"me:\xff\xfe").decode()):
        r = client.get("/v1/models", headers={"Authorization": f"Basic {value}"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key", value
        assert client.get("/health", headers={"Authorization": f"Basic {value}"}).status_code == 200  # unchecked
    assert client.get("/v1/models").status_code == 200


def test_the_env_admin_key_s_queries_and_batches_are_its_own_not_anonymous(app_with, container, keys):
    """The env admin key (SKILLROUTE_AUTH__ADMIN_KEY) is no stored key: its batch was stored as
    anonymous, so every client key and every caller without one read it and its queries, and an
    anonymous retry of its Idempotency-Key got its batch. Now only admins read them."""
    client = app_with(admin_key=ADMIN_ENV)
    (_, alice), (_, ops) = keys.create("alice", "client"), keys.create("ops", "admin")
    batch = {"queries": [{"query": "What is 2+2?", "k": 1, "seed": 0}]}
    sent = client.post("/v1/batches", json=batch, headers={**bearer(ADMIN_ENV), "Idempotency-Key": "nightly"})
    bid, qid = sent.json()["id"], sent.json()["results"][0]["query_id"]
    asked = client.post("/v1/queries", json=batch["queries"][0], headers=bearer(ADMIN_ENV)).json()["id"]
    for headers in ({}, bearer(alice)):
        assert client.get(f"/v1/batches/{bid}", headers=headers).status_code == 404
        assert [client.get(f"/v1/queries/{q}", headers=headers).status_code for q in (qid, asked)] == [404, 404]
        assert client.post(f"/v1/queries/{asked}/feedback", json={"correct": True}, headers=headers).status_code == 404
    for admin in (ADMIN_ENV, ops):
        assert client.get(f"/v1/batches/{bid}", headers=bearer(admin)).status_code == 200
        assert client.get(f"/v1/queries/{qid}", headers=bearer(admin)).status_code == 200
    anonymous = client.post("/v1/batches", json=batch, headers={"Idempotency-Key": "nightly"}).json()["id"]
    assert anonymous != bid  # another caller's key space: a new batch, not the admin's
    again = client.post("/v1/batches", json=batch, headers={**bearer(ADMIN_ENV), "Idempotency-Key": "nightly"})
    assert again.json()["id"] == bid
