"""The dashboard's recent decisions: a stored record that no longer reads fails its row alone."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from orchestrator.container import SkillRoute
from orchestrator.store.models import RoutingDecision


def test_an_unreadable_decision_record_is_shown_with_why_and_the_rest_as_stored(
        container: SkillRoute, client: TestClient) -> None:
    ids = [client.post("/v1/queries", json={"query": f"What is {i}*7?", "k": 2, "seed": i}).json()["id"]
           for i in range(2)]
    with container.db.session() as s:  # another release's record: a field renamed, one missing
        s.execute(update(RoutingDecision).where(RoutingDecision.query_id == ids[0])
                  .values(record={"router": "symbolic", "mode": "sample"}))
    r = client.get("/dashboard/api/state")
    assert r.status_code == 200
    rows = {d["id"]: d for d in r.json()["decisions"]}
    bad, good = rows[ids[0]], rows[ids[1]]
    assert bad["status"] == "done" and bad["recruited"] == [] and bad["router"] is None
    assert "could not be read" in bad["decision_error"] and bad["error"] == bad["decision_error"]
    assert len(good["recruited"]) == 2 and good["decision_error"] is None and good["error"] is None


def test_records_that_do_not_read_as_decisions_leave_the_recruitment_share_to_the_rest(
        container: SkillRoute, client: TestClient) -> None:
    """The recruitment share read the records raw: names stored as objects, a null record or a
    list took the whole state endpoint down (500)."""
    ids = [client.post("/v1/queries", json={"query": f"What is {i}*7?", "k": 2, "seed": i}).json()["id"]
           for i in range(2)]
    for odd in ({"recruited": [{"name": "alpha"}]}, None, ["x"], {"recruited": "alpha"}):
        with container.db.session() as s:
            s.execute(update(RoutingDecision).where(RoutingDecision.query_id == ids[0]).values(record=odd))
        r = client.get("/dashboard/api/state")
        assert r.status_code == 200, (odd, r.text)
        share = r.json()["recruitment"]
        assert share["experts"] and all(sum(v) > 0 for v in share["shares"].values()), (odd, share)
