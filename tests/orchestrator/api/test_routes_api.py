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
