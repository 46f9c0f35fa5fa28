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


def test_a_pending_query_that_fails_at_recovery_fails_alone_and_the_rest_are_answered(container) -> None:  # type: ignore[no-untyped-def]
    good, unreadable, orphaned = container.admission.admit(
        [Ask(text=f"What is {n}*7?", k=1, mode="topk", seed=n) for n in (2, 3, 4)])
    with container.db.session() as s:
        s.get(Query, unreadable.query_id).request = {"k": "many"}  # a row a newer release cannot read back
        row = s.get(Query, orphaned.query_id)
        row.decision.record = {**row.decision.record, "recruited": ["omega"]}  # an expert since removed
    assert container.queries.recover() == 3
    done, bad, gone = container.queries.get_many([good.query_id, unreadable.query_id, orphaned.query_id])
    assert done.status == "done" and done.answer and len(done.generations) == 1
    assert bad.status == "failed" and "could not be read back" in bad.error and "k" in bad.error
    assert gone.status == "failed" and "no longer in the pool" in gone.error
    assert not bad.generations and not gone.generations


def test_recovery_takes_only_what_was_pending_up_to_its_mark_and_reports_what_is_left(container) -> None:  # type: ignore[no-untyped-def]
    asks = [Ask(text=f"What is {n}+1?", k=1, mode="topk", seed=n) for n in range(5)]
    left_by_crash = container.admission.admit(asks[:3])
    mark = container.queries.watermark()
    live = container.admission.admit(asks[3:])  # admitted after the start: the window has it, not recovery
    container.queries.window.max_batch = 2  # so the three come back in two chunks
    heard: list[int] = []
    assert container.queries.pending_count(mark) == 3
    assert container.queries.recover(mark, heard.append) == 3
    assert heard == [3, 1, 0]
    rows = container.queries.get_many([a.query_id for a in left_by_crash + live])
    assert [r.status for r in rows] == ["done"] * 3 + ["accepted"] * 2
