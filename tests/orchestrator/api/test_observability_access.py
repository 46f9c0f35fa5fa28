"""/metrics and the dashboard follow the key policy: open while client keys are not required,
a client key (as a bearer token, or as a browser's HTTP Basic password) once they are."""

from __future__ import annotations

import base64
from unittest.mock import ANY

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.api.auth import basic_password
from orchestrator.settings import AuthSettings
from orchestrator.store.repositories.dashboard import DashboardRepository

SHOWN = ["/metrics", "/dashboard", "/dashboard/", "/dashboard/api/state"]


def basic(password: str, user: str = "me") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def keyed(container):  # type: ignore[no-untyped-def]
    """The app with client keys required, and a client key."""
    container.settings = container.settings.model_copy(update={"auth": AuthSettings(require_client_keys=True)})
    _, key = container.keys.create("viewer", "client")
    with TestClient(create_app(container)) as tc:
        yield tc, key


def test_without_required_client_keys_metrics_and_dashboard_stay_open(client):
    for path in SHOWN:
        assert client.get(path).status_code == 200, path


def test_required_client_keys_guard_metrics_and_the_dashboard(keyed):
    client, key = keyed
    for path in SHOWN:
        r = client.get(path)
        assert r.status_code == 401, path
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get(path, headers=basic("nope")).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == 200, path
        assert client.get(path, headers=basic(key)).status_code == 200, path
    assert client.get("/metrics").headers["www-authenticate"] == "Bearer"  # what Prometheus sends
    assert client.get("/dashboard").headers["www-authenticate"].startswith("Basic ")  # a browser prompts
    assert client.get("/health").status_code == 200  # probes stay open
    assert client.get("/dashboard/static/dashboard.js").status_code == 200  # code, no data


def test_basic_password_reads_only_well_formed_basic_credentials():
    assert basic_password(basic("sk-1")["Authorization"]) == "sk-1"
    assert basic_password(basic("a:b")["Authorization"]) == "a:b"  # the password may hold a colon
    for header in (None, "", "Bearer sk-1", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                   "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
        assert basic_password(header) is None, header


@pytest.mark.both_databases  # the filter reads the key out of a JSON column: SQL that differs by database
def test_the_dashboard_shows_a_client_key_only_the_queries_it_may_read(container):
    """As GET /v1/queries/{id}: a client key its own queries (and anonymous ones), an admin all."""
    container.settings = container.settings.model_copy(update={"auth": AuthSettings(require_client_keys=True)})
    (alice_row, alice), (_, bob), (_, admin) = (container.keys.create(n, r) for n, r in
                                              (("alice", "client"), ("bob", "client"), ("root", "admin")))
    with TestClient(create_app(container)) as client:
        asked = {key: client.post("/v1/queries", json={"query": f"{name}: what is 6*7?", "k": 1},
                                  headers={"Authorization": f"Bearer {key}"}).json()
                 for name, key in (("alice", alice), ("bob", bob))}
        shown = {key: client.get("/dashboard/api/state", headers={"Authorization": f"Bearer {key}"}).json()
                 for key in (alice, bob, admin)}
    assert [d["id"] for d in shown[alice]["decisions"]] == [asked[alice]["id"]]
    assert [d["id"] for d in shown[bob]["decisions"]] == [asked[bob]["id"]]
    assert {d["id"] for d in shown[admin]["decisions"]} == {q["id"] for q in asked.values()}
    assert set(shown[alice]["recruitment"]["experts"]) == set(asked[alice]["recruited"])
    with container.db.session() as s:  # the recruitment history is the readable queries' alone
        assert DashboardRepository(s).recruitments(reader=alice_row.id) == [(ANY, asked[alice]["recruited"])]
