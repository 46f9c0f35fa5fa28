"""PATCH and DELETE /v1/experts/{id} over HTTP on the mock pool (alpha and beta share base m1,
gamma has m2 to itself): routing follows at once, history stays, models are unloaded only when
nothing else runs on them, and every refused request changes nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from experts.mock import MockBackend
from experts.types import GenerationRequest
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.store.repositories.validation import ValidationRepository
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool

ALL = {"query": "What is 6*7?", "k": 3, "mode": "topk"}  # three experts, top-k: every one of them


def ids(client: TestClient) -> dict[str, int]:
    return {e["name"]: e["id"] for e in client.get("/v1/experts").json()}


def routed(client: TestClient, **body: Any) -> set[str]:
    """Who /v1/routes recruits and lists for a query that wants every expert."""
    r = client.post("/v1/routes", json={**ALL, **body})
    assert r.status_code == 200, r.text
    return set(r.json()["recruited"]) | {e["name"] for e in r.json()["experts"]}


def resident(container: SkillRoute) -> set[str]:
    return container.fleet["cpu"].resident()


def answers_of(container: SkillRoute, expert_id: int) -> list[str]:
    with container.db.session() as s:
        return [a.text for a in ValidationRepository(s).answers([expert_id])]


@pytest.fixture
def gate() -> threading.Event:
    """Open: generation runs. Closed: every generation waits (a profiling run under way)."""
    opened = threading.Event()
    opened.set()
    return opened


@pytest.fixture
def gated(tmp_path, embedder, gate):  # type: ignore[no-untyped-def]
    """The mock pool whose generations wait while `gate` is closed."""
    def wait(_: GenerationRequest) -> float:
        assert gate.wait(30), "the test never opened the gate"
        return 0.0

    experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
               mock_expert("gamma", "m2")]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(experts), embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, delay_s=wait))
    c.bootstrap()
    with TestClient(create_app(c)) as tc:
        yield c, tc
    gate.set()
    c.close()


def test_a_changed_persona_is_profiled_again_and_explored_not_recruited_meanwhile(gated, gate):
    container, client = gated
    alpha = ids(client)["alpha"]
    before = answers_of(container, alpha)
    gate.clear()  # the profiling run will wait, so the test sees the expert mid-profile
    r = client.patch(f"/v1/experts/{alpha}", json={"system_prompt": "You are a chemist."})
    assert r.status_code == 202 and r.headers["location"] == f"/v1/experts/{alpha}", r.text
    assert r.json()["system_prompt"] == "You are a chemist." and r.json()["status"] == "profiling"
    assert answers_of(container, alpha) == [] and client.get(f"/v1/experts/{alpha}").json()["profile"] == {}
    snap = container.pool.snapshot
    assert "alpha" in snap.uncertain and container.pool.evidence_counts()["alpha"] == 0
    assert "alpha" not in client.post("/v1/routes", json=ALL).json()["recruited"]
    gate.set()
    container.experts.queue.join()
    e = client.get(f"/v1/experts/{alpha}").json()
    assert e["status"] == "ready", e["error"]
    assert e["profile"] and e["progress"]["done"] == e["progress"]["total"] > 0
    after = answers_of(container, alpha)
    assert len(after) == len(before) and after != before  # graded anew: the persona is in every prompt
    body = client.post("/v1/queries", json=ALL).json()
    assert "alpha" in body["recruited"] and body["status"] == "done"
    assert container.pool.snapshot.experts["alpha"].system_prompt == "You are a chemist."


def test_sampling_changes_only_the_keys_given_and_is_profiled_again(client, container):
    beta = ids(client)["beta"]
    r = client.patch(f"/v1/experts/{beta}", json={"sampling": {"temperature": 0.7}})
    assert r.status_code == 202, r.text
    assert r.json()["sampling"] == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 128, "seed": 0, "stop": []}
    container.experts.queue.join()
    assert client.get(f"/v1/experts/{beta}").json()["status"] == "ready"
    assert container.pool.snapshot.experts["beta"].sampling.temperature == 0.7


def test_timeout_and_placement_change_without_profiling_again(client, container):
    gamma = ids(client)["gamma"]
    r = client.patch(f"/v1/experts/{gamma}", json={"timeout_s": 4.5, "placement": {"device": "jetson-agx-orin"}})
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert r.json()["timeout_s"] == 4.5 and r.json()["placement"]["device"] == "jetson-agx-orin"
    snap = container.pool.snapshot
    assert snap.experts["gamma"].timeout_s == 4.5 and snap.sites()["gamma"].device == "jetson-agx-orin"
    r = client.patch(f"/v1/experts/{gamma}", json={"timeout_s": None, "placement": {"device": None}})
    assert r.status_code == 200 and r.json()["timeout_s"] is None and r.json()["placement"]["device"] is None
    assert container.pool.snapshot.sites()["gamma"].device != "jetson-agx-orin"


def test_disabled_is_never_routed_to_but_stays_loaded_and_comes_back(client, container):
    gamma = ids(client)["gamma"]
    client.post("/v1/queries", json=ALL)
    assert "mock:m2" in resident(container)
    r = client.patch(f"/v1/experts/{gamma}", json={"enabled": False})
    assert r.status_code == 200 and r.json()["status"] == "disabled" and r.json()["enabled"] is False
    assert r.json()["worker"] == "cpu" and "mock:m2" in resident(container)
    assert "gamma" not in routed(client) and "gamma" not in client.post("/v1/queries", json=ALL).json()["recruited"]
    assert "gamma" not in [m["id"] for m in client.get("/v1/models").json()["data"]]
    direct = client.post("/v1/chat/completions", json={"model": "gamma", "messages": [{"role": "user",
                                                                                      "content": "hi"}]})
    assert direct.status_code == 404 and "gamma" in direct.json()["error"]["message"], direct.text
    r = client.patch(f"/v1/experts/{gamma}", json={"enabled": True})
    assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["enabled"] is True
    assert "gamma" in client.post("/v1/queries", json=ALL).json()["recruited"]


def test_removed_is_never_recruited_keeps_its_history_and_frees_an_unshared_model(client, container):
    gamma = ids(client)["gamma"]
    asked = client.post("/v1/queries", json=ALL).json()
    assert "gamma" in asked["recruited"] and "mock:m2" in resident(container)
    r = client.delete(f"/v1/experts/{gamma}")
    assert r.status_code == 200 and r.json()["status"] == "removed" and r.json()["enabled"] is False, r.text
    assert r.json()["worker"] is None and "mock:m2" not in resident(container)
    assert "gamma" not in container.pool.snapshot.experts and "gamma" not in routed(client)
    for i in range(4):
        assert "gamma" not in client.post("/v1/queries", json={**ALL, "mode": "sample", "seed": i}).json()["recruited"]
    history = client.get(f"/v1/queries/{asked['id']}").json()
    assert "gamma" in history["recruited"] and "gamma" in {g["expert"] for g in history["generations"]}
    listed = {e["name"]: e["status"] for e in client.get("/v1/experts").json()}
    assert listed["gamma"] == "removed" and client.get(f"/v1/experts/{gamma}").json()["status"] == "removed"
    again = client.delete(f"/v1/experts/{gamma}")
    assert again.status_code == 200 and again.json()["status"] == "removed"
    assert client.patch(f"/v1/experts/{gamma}", json={"enabled": True}).status_code == 409


def test_a_model_another_expert_shares_stays_loaded_until_the_last_one_goes(client, container):
    client.post("/v1/queries", json=ALL)
    known = ids(client)
    assert client.delete(f"/v1/experts/{known['alpha']}").status_code == 200
    assert "mock:m1" in resident(container) and "beta" in routed(client)  # beta runs on m1 still
    assert client.delete(f"/v1/experts/{known['beta']}").status_code == 200
    assert "mock:m1" not in resident(container) and resident(container) == {"mock:m2"}


def test_a_removed_experts_name_is_not_given_to_a_new_one(client):
    gamma = ids(client)["gamma"]
    client.delete(f"/v1/experts/{gamma}")
    r = client.post("/v1/experts", json={"name": "gamma", "model": {"kind": "mock", "source": "m2"}})
    assert r.status_code == 409 and f"expert {gamma}, removed" in r.json()["error"]["message"], r.text


BAD_BODIES = [
    ({"name": "renamed"}, "name"), ({"model": {"kind": "mock", "source": "m9"}}, "model"), ({"colour": 1}, "colour"),
    ({}, "nothing to change"), ({"sampling": {"temperature": 9}}, "temperature"), ({"sampling": {"beam": 2}}, "beam"),
    ({"enabled": None}, "enabled"), ({"timeout_s": -1}, "timeout_s"), ({"system_prompt": "x" * 5000}, "system_prompt"),
    ({"placement": {"worker": "edge-9"}}, "unknown worker 'edge-9'"),
    ({"placement": {"device": "quantum-box"}}, "unknown device 'quantum-box'"),
    # lax types were taken: "on" enabled, 0 disabled, `true` was a 1 s timeout and "12" one of 12 s
    ({"enabled": "on"}, "enabled"), ({"enabled": "false"}, "enabled"), ({"enabled": 0}, "enabled"),
    ({"timeout_s": True}, "timeout_s"), ({"timeout_s": "12"}, "timeout_s"),
    ({"sampling": {"stop": ["x\x00"]}}, "NUL"),
]


def test_bad_ids_and_bodies_are_refused_and_change_nothing(client, container):
    rows, snap = client.get("/v1/experts").json(), container.pool.snapshot
    alpha = ids(client)["alpha"]
    for body, named in BAD_BODIES:
        r = client.patch(f"/v1/experts/{alpha}", json=body)
        assert r.status_code == 422 and named in r.json()["error"]["message"], (body, r.text)
    for method in ("PATCH", "DELETE"):
        r = client.request(method, "/v1/experts/4242", json={"enabled": False})
        assert r.status_code == 404 and "4242" in r.json()["error"]["message"], r.text
        assert client.request(method, "/v1/experts/0", json={"enabled": False}).status_code == 422
    assert client.get("/v1/experts").json() == rows and container.pool.snapshot is snap


def test_without_the_admin_key_changes_are_401_and_change_nothing(client, container):
    _, admin = container.keys.create("ops", "admin")
    _, user = container.keys.create("app", "client")
    rows, snap = client.get("/v1/experts").json(), container.pool.snapshot
    gamma = ids(client)["gamma"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert client.patch(f"/v1/experts/{gamma}", json={"enabled": False}, headers=headers).status_code == 401
        assert client.delete(f"/v1/experts/{gamma}", headers=headers).status_code == 401
        assert client.patch("/v1/experts/4242", json={"nope": 1}, headers=headers).status_code == 401  # before all
    client_key = {"Authorization": f"Bearer {user}"}
    assert client.delete(f"/v1/experts/{gamma}", headers=client_key).status_code == 403
    assert client.get("/v1/experts").json() == rows and container.pool.snapshot is snap
    r = client.delete(f"/v1/experts/{gamma}", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["status"] == "removed"
