"""/v1/batches: 202 at once, answered in the background through the live batching window."""

import time
from datetime import datetime, timedelta


def wait_done(client, batch_id: int, headers=None, within_s: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll the batch until it completes (status polling, bounded by a deadline)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/batches/{batch_id}", headers=headers).json()
        if body["status"] == "completed":
            return body
        time.sleep(0.02)
    raise TimeoutError(f"batch {batch_id} never completed")


def test_batch_is_accepted_then_answered_through_the_shared_window(client, container):
    windows_before = len(container.queries.window.batch_sizes)
    qs = [{"query": f"What is {i} + {i}?", "k": 2, "seed": i, "custom_id": f"q{i}"} for i in range(5)]
    r = client.post("/v1/batches", json={"queries": qs})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/batches/{r.json()['id']}"
    assert r.json()["request_counts"]["total"] == 5
    body = wait_done(client, r.json()["id"])
    assert body["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert [x["custom_id"] for x in body["results"]] == [f"q{i}" for i in range(5)]
    assert all(x["answer"] and len(x["recruited"]) == 2 for x in body["results"])
    assert sum(list(container.queries.window.batch_sizes)[windows_before:]) == 5  # the live window ran them
    single = client.get(f"/v1/queries/{body['results'][0]['query_id']}").json()
    assert single["answer"] == body["results"][0]["answer"]


def test_batch_results_equal_live_answers_for_the_same_seed(client):
    r = client.post("/v1/batches", json={"queries": [{"query": "Who wrote Hamlet?", "seed": 9}]})
    batch = wait_done(client, r.json()["id"])
    live = client.post("/v1/queries", json={"query": "Who wrote Hamlet?", "seed": 9}).json()
    assert batch["results"][0]["recruited"] == live["recruited"] and batch["results"][0]["answer"] == live["answer"]


def test_large_batches_are_fed_in_window_sized_chunks(client, container):
    size = container.queries.window.max_batch
    qs = [{"query": f"Name the capital of country {i}", "k": 1, "seed": i} for i in range(size + 3)]
    batch = wait_done(client, client.post("/v1/batches", json={"queries": qs}).json()["id"])
    assert batch["request_counts"]["completed"] == size + 3
    assert max(container.queries.window.batch_sizes) <= size


def test_bad_batches_are_4xx(client):
    for body in ({"queries": []}, {"queries": [{"query": ""}]}, {}, {"queries": [{"query": "x", "k": 42}]}):
        r = client.post("/v1/batches", json=body)
        assert r.status_code == 422 and "error" in r.json(), body
    assert client.get("/v1/batches/424242").status_code == 404
    assert client.get("/v1/batches/0").status_code == 422


def test_a_custom_id_over_64_characters_is_422_naming_characters(client):
    r = client.post("/v1/batches", json={"queries": [{"query": "x", "custom_id": "c" * 65}]})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "queries.0.custom_id: String should have at most 64 characters"
    r = client.post("/v1/batches", json={"queries": [{"query": "What is 2 + 3?", "custom_id": "c" * 64}]})
    assert r.status_code == 202 and r.json()["results"][0]["custom_id"] == "c" * 64


def test_a_custom_id_given_twice_is_422_naming_both_and_stores_nothing(client):
    """Results are found by custom_id: two queries under one could be told apart only by position."""
    queries = [{"query": "What is 2 + 3?", "custom_id": c} for c in ("a", None, "b", None, "a")]
    r = client.post("/v1/batches", json={"queries": queries})
    assert r.status_code == 422, r.text
    assert "queries.4.custom_id: 'a' is already the custom_id of queries.0" in r.json()["error"]["message"]
    assert client.get("/v1/batches/1").status_code == 404
    r = client.post("/v1/batches", json={"queries": queries[:4]})  # unnamed ones may be many
    assert r.status_code == 202 and [x["custom_id"] for x in r.json()["results"]] == ["a", None, "b", None]


def test_a_batch_s_created_at_reads_back_in_utc_whatever_the_server_s_zone(client, tokyo_time):
    """SQLite keeps no zone: the stored UTC moment came back naive (no offset in the JSON, where
    PostgreSQL's carried one), and a client reads naive as its own local time."""
    batch_id = client.post("/v1/batches", json={"queries": [{"query": "What is 2 + 3?"}]}).json()["id"]
    created = datetime.fromisoformat(client.get(f"/v1/batches/{batch_id}").json()["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(created.timestamp() - time.time()) < 30
