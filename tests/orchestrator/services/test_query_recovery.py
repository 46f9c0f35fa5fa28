"""A query accepted but never finished (a crash mid-batch) is answered on the next start, asked
the same way: its whole request and the decision made at admission were stored with it."""

from __future__ import annotations

from orchestrator.domain import Ask, QueryBudget
from orchestrator.store.models import Query
from orchestrator.store.repositories.queries import QueryRepository, ask_of


def test_the_stored_request_round_trips_and_older_rows_still_read() -> None:
    ask = Ask(text="What is 2+2?", k=2, mode="topk", seed=7, budget=QueryBudget(latency_s=1.5, energy_j=30.0,
                                                                                from_key=("energy_j",)))
    assert ask_of(Query(text=ask.text, k=ask.k, request=ask.model_dump(mode="json"))) == ask
    assert ask_of(Query(text="x", k=3, request=None)) == Ask(text="x", k=3)  # rows from before the column
    old = {"mode": "topk", "seed": 7, "budget": {"latency_s": 1.5, "energy_j": 30.0, "from_key": ["energy_j"]}}
    assert ask_of(Query(text=ask.text, k=2, request=old)) == ask  # rows from before the whole request


def test_recover_answers_what_a_crash_left_accepted_with_its_decision(container) -> None:  # type: ignore[no-untyped-def]
    asked = Ask(text="What is 6*7?", k=2, mode="topk", seed=11)
    admitted = container.admission.admit([asked])[0]  # accepted, then the process died before the batch ran
    assert container.queries.get(admitted.query_id).status == "accepted"
    assert container.queries.recover() == 1
    row = container.queries.get(admitted.query_id)
    assert row.status == "done" and row.answer
    assert row.decision.record["recruited"] == admitted.decision.recruited  # what was admitted, not re-routed
    assert (row.decision.record["mode"], row.decision.record["seed"]) == ("topk", 11)
    assert len(set(admitted.decision.recruited)) == 2  # top-k: two distinct experts
    assert container.queries.recover() == 0


def test_a_row_stored_before_decisions_were_kept_at_admission_is_routed_with_its_seed(container) -> None:  # type: ignore[no-untyped-def]
    asked = Ask(text="What is 6*7?", k=2, mode="topk", seed=11)
    with container.db.session() as s:
        qid = QueryRepository(s).accept(asked).id  # no decision: an older release's row
    assert container.queries.recover() == 1
    row = container.queries.get(qid)
    assert row.status == "done" and row.decision.record["seed"] == 11
