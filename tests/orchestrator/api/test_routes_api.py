"""/v1/routes: route only, and the very decision the answering paths make for the same query and seed."""

QUESTION = "Which gas do plants absorb for photosynthesis?"


def route(client, **body):  # type: ignore[no-untyped-def]
    r = client.post("/v1/routes", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_route_equals_the_full_paths_decision_for_the_same_seed(client):
    for seed in (1, 7, 12345):
        dry = route(client, query=QUESTION, k=3, seed=seed)
        full = client.post("/v1/queries", json={"query": QUESTION, "k": 3, "seed": seed}).json()
        assert (dry["recruited"], dry["aggregator"], dry["seed"]) == (full["recruited"], full["aggregator"], seed)
        assert dry["skills"] == full["skills"] and dry["experts"] == full["experts"]
        chat = client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": QUESTION}], "k": 3, "seed": seed}).json()
        assert chat["skillroute"]["recruited"] == dry["recruited"] and chat["model"] == dry["aggregator"]


def test_route_of_messages_matches_the_chat_of_those_messages(client):
    msgs = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": QUESTION}]
    dry = route(client, messages=msgs, k=2, seed=3)
    chat = client.post("/v1/chat/completions", json={"model": "auto", "messages": msgs, "k": 2, "seed": 3}).json()
    assert chat["skillroute"]["recruited"] == dry["recruited"]
    assert [s["skill"] for s in chat["skillroute"]["skills"]] == [s["skill"] for s in dry["skills"]]


def test_route_generates_nothing_and_stores_nothing(client, container):
    before = container.fleet["cpu"].total_loads()
    container.fleet["cpu"].shutdown()
    dry = route(client, query=QUESTION, k=3)
    assert container.fleet["cpu"].resident() == set() and container.fleet["cpu"].total_loads() == before
    assert isinstance(dry["seed"], int) and route(client, query=QUESTION, k=3, seed=dry["seed"]) == dry


def test_topk_and_k1(client):
    top = route(client, query=QUESTION, k=2, mode="topk")
    assert len(set(top["recruited"])) == 2 and top["aggregator"] is not None
    one = route(client, query=QUESTION, k=1, seed=0)
    assert len(one["recruited"]) == 1 and one["aggregator"] is None


def test_bad_routes_are_422(client):
    for body in ({}, {"query": QUESTION, "messages": [{"role": "user", "content": "x"}]}, {"query": ""},
                 {"query": QUESTION, "k": 0}, {"query": QUESTION, "mode": "best"}):
        r = client.post("/v1/routes", json=body)
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error", body


def test_route_on_an_empty_pool_is_503(empty_container):
    from fastapi.testclient import TestClient

    from orchestrator.api.app import create_app

    with TestClient(create_app(empty_container)) as tc:
        assert tc.post("/v1/routes", json={"query": QUESTION}).status_code == 503


def test_route_takes_max_tokens_as_the_query_does(client):
    """A query's max_tokens decides what a budget costs: without it /v1/routes refused a budget
    that /v1/queries, given the same max_tokens, answered within."""
    loose = route(client, query=QUESTION, latency_ms=3_600_000, seed=1)["budget"]["candidates"]
    tight = min(c["latency_s"] for c in loose) * 1000 * 0.5  # too little at the pool's own token limits
    refused = client.post("/v1/routes", json={"query": QUESTION, "latency_ms": tight, "seed": 1})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "infeasible_budget"
    dry = route(client, query=QUESTION, latency_ms=tight, seed=1, max_tokens=1)
    full = client.post("/v1/queries", json={"query": QUESTION, "latency_ms": tight, "seed": 1, "max_tokens": 1}).json()
    planned = {k: v for k, v in full["budget"].items() if not k.startswith("measured_")}  # the answer's own
    assert dry["recruited"] == full["recruited"] and planned == {k: v for k, v in dry["budget"].items() if k in planned}


def test_route_takes_any_max_tokens_a_chat_takes(client):
    """A chat takes max_tokens to 2^31-1 (the pool's limits cap it); the dry run refused past 4096."""
    chat = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}], "seed": 1, "max_tokens": 5000}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    dry = route(client, messages=chat["messages"], seed=1, max_tokens=5000)
    assert dry["recruited"] == route(client, messages=chat["messages"], seed=1)["recruited"]
