"""POST/GET /v1/experts: a new expert joins without restart; bad models are refused whole."""

import json

import pytest
from sqlalchemy import event


def count(client) -> int:
    return len(client.get("/v1/experts").json())


def test_new_persona_is_profiled_and_recruitable_without_restart(client, container):
    body = {"name": "delta", "model": {"kind": "mock", "source": "m2"}, "system_prompt": "You love chemistry."}
    r = client.post("/v1/experts", json=body)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/experts/{r.json()['id']}"
    container.experts.queue.join()  # the background profiling run has drained
    e = client.get(f"/v1/experts/{r.json()['id']}").json()
    assert e["status"] == "ready" and e["profile"] and e["progress"]["done"] == e["progress"]["total"] > 0
    assert r.json()["progress"] == {"done": 0, "total": e["progress"]["total"]}  # the total shown from the start
    assert "delta" in container.pool.snapshot.experts
    names = {x["name"] for q in range(8) for x in client.post(
        "/v1/queries", json={"query": f"Chemistry question {q}", "k": 4, "mode": "topk"}).json()["experts"]}
    assert "delta" in names


def test_missing_file_is_422_and_stores_nothing(client):
    before = count(client)
    r = client.post("/v1/experts", json={"name": "ghost", "model": {"kind": "llamacpp", "source": "/nope/x.gguf"}})
    assert r.status_code == 422 and "no such file" in r.json()["error"]["message"]
    assert count(client) == before


def test_non_gguf_file_is_422_and_stores_nothing(client, tmp_path):
    fake = tmp_path / "notes.gguf"
    fake.write_text("this is not a model")
    before = count(client)
    r = client.post("/v1/experts", json={"name": "fake", "model": {"kind": "llamacpp", "source": str(fake)}})
    assert r.status_code == 422 and "not a GGUF" in r.json()["error"]["message"]
    assert count(client) == before


def test_unreachable_url_is_422_and_stores_nothing(client):
    before = count(client)
    model = {"kind": "openai", "source": "http://127.0.0.1:9/v1", "model": "m"}
    r = client.post("/v1/experts", json={"name": "remote", "model": model})
    assert r.status_code == 422 and "cannot reach" in r.json()["error"]["message"]
    assert count(client) == before


def test_duplicate_name_is_409(client):
    r = client.post("/v1/experts", json={"name": "alpha", "model": {"kind": "mock", "source": "m1"}})
    assert r.status_code == 409 and "alpha" in r.json()["error"]["message"]


def test_invalid_name_is_422(client):
    r = client.post("/v1/experts", json={"name": "../etc", "model": {"kind": "mock", "source": "m1"}})
    assert r.status_code == 422 and "name" in r.json()["error"]["message"]


def test_the_routing_model_id_is_no_expert_name(client):
    """An expert named `auto` could never be asked by name (`model: auto` routes), and
    /v1/models listed `auto` twice."""
    r = client.post("/v1/experts", json={"name": "auto", "model": {"kind": "mock", "source": "m1"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "name", r.text
    assert "model id that routes" in r.json()["error"]["message"]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]].count("auto") == 1


def test_get_expert_shows_profile_and_unknown_is_404(client):
    first = client.get("/v1/experts").json()[0]
    detail = client.get(f"/v1/experts/{first['id']}").json()
    assert detail["status"] == "ready" and isinstance(detail["profile"], dict) and detail["profile"]
    assert client.get("/v1/experts/4242").status_code == 404


def test_each_expert_shows_the_worker_it_runs_on(client):
    experts = client.get("/v1/experts").json()
    assert {e["worker"] for e in experts} == {"cpu"}  # no devices file: this machine's CPU worker
    assert client.get(f"/v1/experts/{experts[0]['id']}").json()["worker"] == "cpu"


def test_a_worker_or_device_the_deployment_lacks_is_422_and_stores_nothing(client):
    before = count(client)
    for placement, field in (({"worker": "edge-9"}, "unknown worker 'edge-9'"),
                             ({"device": "quantum-box"}, "unknown device 'quantum-box'")):
        r = client.post("/v1/experts", json={"name": "far", "model": {"kind": "mock", "source": "m1"},
                                             "placement": placement})
        assert r.status_code == 422 and field in r.json()["error"]["message"], r.text
    assert count(client) == before


def test_a_timeout_is_kept_with_the_expert(client, container):
    r = client.post("/v1/experts", json={"name": "quick", "model": {"kind": "mock", "source": "m2"}, "timeout_s": 2.5})
    assert r.status_code == 202 and r.json()["timeout_s"] == 2.5
    container.experts.queue.join()
    assert container.pool.snapshot.experts["quick"].timeout_s == 2.5


def test_a_second_expert_over_loaded_weights_must_share_their_context_window(client):
    """Experts over one model share its loaded instance: a different model.n_ctx was stored and
    shown, prompts were checked against it, and the model ran with the first one's."""
    before = count(client)
    r = client.post("/v1/experts", json={"name": "wide", "model": {"kind": "mock", "source": "m1", "n_ctx": 32768}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "model.n_ctx"
    assert "alpha" in r.json()["error"]["message"] and count(client) == before
    same = {"name": "same", "model": {"kind": "mock", "source": "m1"}, "system_prompt": "Terse."}
    assert client.post("/v1/experts", json=same).status_code == 202


@pytest.mark.both_databases
def test_a_model_source_or_name_too_long_to_store_is_422_naming_it_and_stores_nothing(client):
    """The base model's key (kind, source, model) is a 512-character column: PostgreSQL refused a
    longer one at insert, after the checks, as a 500."""
    before = count(client)
    for model, field in (({"kind": "mock", "source": "m" * 600}, "model.source"),
                         ({"kind": "mock", "source": "m1", "model": "x" * 200}, "model.model")):
        r = client.post("/v1/experts", json={"name": "long", "model": model})
        assert r.status_code == 422 and r.json()["error"]["param"] == field, r.text
    assert count(client) == before


def test_a_persona_change_shows_its_profiling_total_at_once(client, container):
    total = client.get("/v1/experts/1").json()["progress"]["total"]
    r = client.patch("/v1/experts/1", json={"system_prompt": "You answer tersely."})
    assert r.status_code == 202 and r.json()["status"] == "profiling"
    assert r.json()["progress"] == {"done": 0, "total": total} and total > 0
    container.experts.queue.join()


def test_a_sampling_seed_no_backend_takes_is_422_and_stores_nothing(client):
    """2**70 was taken and passed as it is to the profiling run's backend."""
    for seed in (2**70, -5):
        body = {"name": "seeded", "model": {"kind": "mock", "source": "m9"}, "sampling": {"seed": seed}}
        r = client.post("/v1/experts", json=body)
        assert r.status_code == 422 and r.json()["error"]["param"] == "sampling.seed", r.text
    assert "seeded" not in {e["name"] for e in client.get("/v1/experts").json()}


@pytest.mark.both_databases
def test_a_nul_or_lone_surrogate_in_a_stop_or_the_model_is_422_and_stores_nothing(client):
    """A lone surrogate in `sampling.stop` was stored (the POST or PATCH a 500), then every GET
    /v1/experts was a 500 for every client; a NUL in the model's source or name failed
    PostgreSQL's insert (a 500) and SQLite stored it."""
    rows = client.get("/v1/experts").json()
    alpha = rows[0]["id"]
    model, stop = {"kind": "mock", "source": "m9"}, "sampling.stop.0"
    cases = [("POST", "/v1/experts", {"name": "s1", "model": model, "sampling": {"stop": ["\ud800"]}}, stop),
             ("POST", "/v1/experts", {"name": "s2", "model": model, "sampling": {"stop": ["a\x00"]}}, stop),
             ("POST", "/v1/experts", {"name": "s3", "model": {**model, "source": "m\x009"}}, "model.source"),
             ("POST", "/v1/experts", {"name": "s4", "model": {**model, "model": "x\x00"}}, "model.model"),
             ("PATCH", f"/v1/experts/{alpha}", {"sampling": {"stop": ["\udc00"]}}, stop),
             ("PATCH", f"/v1/experts/{alpha}", {"sampling": {"stop": ["b\x00"]}}, stop)]
    for method, path, body, field in cases:
        raw = json.dumps(body).encode()  # escaped, as a client's JSON carries them
        r = client.request(method, path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["param"] == field, (body, r.text)
        assert "NUL" in r.text or "lone surrogate" in r.text, r.text
    assert client.get("/v1/experts").json() == rows
    assert client.get(f"/v1/experts/{alpha}").status_code == 200


def test_a_timeout_takes_only_a_number(client):
    """`true` was taken as 1 s and "12" as 12 s: strict, as BudgetFields' numbers are."""
    for timeout in (True, "12"):
        r = client.post("/v1/experts", json={"name": "lax", "model": {"kind": "mock", "source": "m9"},
                                             "timeout_s": timeout})
        assert r.status_code == 422 and r.json()["error"]["param"] == "timeout_s", r.text
    assert "lax" not in {e["name"] for e in client.get("/v1/experts").json()}


@pytest.mark.parametrize("source", ["http://alice:S3CRET@127.0.0.1:9/v1", "http://127.0.0.1:9/v1?api_key=S3CRET",
                                    "https://h.example/v1?x=1&Access_Token=S3CRET", "https://h.example/v1?sv=1&sig=S3CRET",
                                    "https://h.example/v1?a=1;token=S3CRET", "https://h.example/v1#apiKey=S3CRET",
                                    "https://h.example/v1?sk-S3CRET0123456789"])
def test_a_server_url_with_credentials_is_422_and_stores_nothing(client, source):
    """Its source is shown to every reader: the password was in GET /v1/experts, the dashboard,
    /metrics and every failed generation's error."""
    before = count(client)
    r = client.post("/v1/experts", json={"name": "remote", "model": {"kind": "openai", "source": source, "model": "m"}})
    error = r.json()["error"]
    assert r.status_code == 422 and "credentials" in error["message"]
    assert "SKILLROUTE_OPENAI_API_KEY" in error["message"]
    assert "S3CRET" not in r.text and count(client) == before


def test_listing_experts_reads_their_skill_rows_only_for_their_profiles(client, container):
    """Every skill row of every expert was loaded for every list (and every placement plan, and
    /ready): 5.9 s for 3,000 experts of 57 skills, against 0.3 s without them."""
    statements: list[str] = []

    def seen(conn, cursor, statement, *_) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(container.db.engine, "before_cursor_execute", seen)
    try:
        plain = client.get("/v1/experts").json()
        reads = len(statements)
        profiled = client.get("/v1/experts?with_profile=true").json()
    finally:
        event.remove(container.db.engine, "before_cursor_execute", seen)
    assert not any("skill_scores" in s for s in statements[:reads])
    assert any("skill_scores" in s for s in statements[reads:])
    assert all(e["profile"] is None for e in plain) and any(e["profile"] for e in profiled)


@pytest.mark.parametrize("query", ["author=me", "keyword=x", "monkey=1", "v=2"])
def test_a_server_url_whose_query_names_no_credential_is_taken_as_it_is(client, query):
    """Matched as substrings, "author" (auth) and "keyword" (key) were refused as credentials."""
    model = {"kind": "openai", "source": f"http://127.0.0.1:9/v1?{query}", "model": "m"}
    r = client.post("/v1/experts", json={"name": "remote", "model": model})
    assert r.status_code == 422 and "cannot reach" in r.json()["error"]["message"]  # checked, then unreachable
