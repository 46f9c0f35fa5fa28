"""A query accepted but never finished (a crash mid-batch) is answered on the next start, asked
the same way: its mode, seed and budget were stored with it."""

from __future__ import annotations

from orchestrator.pipeline import QueryInput
from orchestrator.routing.budget_plan import QueryBudget
from orchestrator.services.queries import input_from_record, request_record
from orchestrator.store.repositories.queries import QueryRepository


def test_request_record_round_trips_mode_seed_and_budget() -> None:
    q = QueryInput("What is 2+2?", 2, "topk", 7, QueryBudget(1.5, 30.0, ("energy_j",)))
    assert input_from_record(q.text, q.k, request_record(q)) == q
    assert input_from_record("x", 3, None) == QueryInput("x", 3)  # rows from before the column


def test_recover_answers_what_a_crash_left_accepted_with_its_mode_and_seed(container) -> None:  # type: ignore[no-untyped-def]
    asked = QueryInput("What is 6*7?", 2, "topk", 11)
    with container.db.session() as s:  # accepted, then the process died before the batch ran
        qid = QueryRepository(s).accept(asked.text, asked.k, request_record(asked)).id
    assert container.queries.recover() == 1
    row = container.queries.get(qid)
    assert row.status == "done" and row.answer
    assert row.decision is not None and (row.decision.mode, row.decision.seed) == ("topk", 11)
    assert len(set(row.decision.recruited)) == 2  # top-k: two distinct experts
    assert container.queries.recover() == 0
