"""The storer stores queries as they finish, committing whatever came since its last commit as one
group; a group the store refuses is stored query by query (the refused one stored failed, naming
why), and each query is released with its row as it stands."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.storing import Answered, Early, EarlyStore
from orchestrator.store.models import Query

WAIT_S = 30  # an event not set by then means the order under test did not happen


def answered(c: SkillRoute, n: int) -> list[Answered]:
    """`n` admitted queries answered by the pipeline, not stored yet."""
    items = c.queries.admission.admit([Ask(text=f"What is {i}+{i}?", k=1, seed=1) for i in range(n)])
    outcomes = c.pipeline.answer(c.pool.snapshot, [i.ask for i in items], [i.decision for i in items])
    return [(i.query_id, i.ask, out) for i, out in zip(items, outcomes, strict=True)]


class Gated:
    """The service's own store, recording each group; the `at`-th group (the first) waits for `open`."""

    def __init__(self, c: SkillRoute, at: int = 1) -> None:
        self.store, self.groups, self.at = c.queries._store, list[list[int]](), at
        self.entered, self.open = threading.Event(), threading.Event()

    def __call__(self, group: Sequence[Answered]) -> dict[int, Query]:
        self.groups.append([qid for qid, _, _ in group])
        if len(self.groups) == self.at:
            self.entered.set()
            assert self.open.wait(WAIT_S)
        return self.store(group)


@contextmanager
def refusing(c: SkillRoute, poisoned: int) -> Iterator[None]:
    """The database refuses the poisoned query's generations (at the driver's door)."""
    def refuse(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("INSERT INTO generations") and any(
                row.get("query_id") == poisoned for row in context.compiled_parameters):
            raise OperationalError(statement, {}, Exception("the store refused this row"))

    event.listen(c.db.engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(c.db.engine, "before_cursor_execute", refuse)


def test_queries_finished_during_a_commit_are_stored_as_one_group_and_a_refused_one_alone(container) -> None:  # type: ignore[no-untyped-def]
    first, second, third = answered(container, 3)
    gated, released = Gated(container), list[tuple[int, str]]()
    storer = EarlyStore(gated, container.queries.get_many)
    early = Early(lambda place, row: released.append((place, row.status)))
    storer.put(first, early, 0)
    assert gated.entered.wait(WAIT_S)  # the first commit is under way: the next two wait for it
    storer.put(second, early, 1)
    storer.put(third, early, 2)
    with refusing(container, second[0]):
        gated.open.set()
        storer.drain(early)
    storer.close()
    assert gated.groups == [[first[0]], [second[0], third[0]]]  # two commits, the second of both
    assert sorted(released) == [(0, "done"), (1, "failed"), (2, "done")]
    assert early.rows.keys() == {first[0], third[0]} and early.settled == {first[0], second[0], third[0]}
    (lost,) = container.queries.get_many([second[0]])
    assert lost.error is not None and lost.error.startswith("its answer could not be stored: OperationalError")


def test_a_group_that_cannot_be_stored_at_all_is_left_to_its_batch_s_end(container, caplog) -> None:  # type: ignore[no-untyped-def]
    (one,) = answered(container, 1)

    def gone(group: Sequence[Answered]) -> dict[int, Query]:
        raise OperationalError("UPDATE queries", {}, Exception("the store went away"))

    storer, released = EarlyStore(gone, container.queries.get_many), list[int]()
    early = Early(lambda place, row: released.append(place))
    with caplog.at_level(logging.ERROR):
        storer.put(one, early, 0)
        storer.drain(early)
    storer.close()
    assert released == [] and not early.settled and "their batch stores them at its end" in caplog.text
    assert container.queries.get(one[0]).status == "accepted"


def test_a_batch_drains_its_own_queries_not_those_of_a_batch_beside_it(container) -> None:  # type: ignore[no-untyped-def]
    """Batches on different devices run at once: one waiting in `drain` for another's stores (a
    commit that waits, or a stream of them) would be held by a batch it never shared a device with."""
    mine, theirs = answered(container, 2)
    gated, stored = Gated(container, at=2), threading.Event()
    storer = EarlyStore(gated, container.queries.get_many)
    own, beside = Early(lambda place, row: stored.set()), Early()
    storer.put(mine, own, 0)
    assert stored.wait(WAIT_S)
    storer.put(theirs, beside, 0)
    assert gated.entered.wait(WAIT_S)  # the other batch's commit is under way, and stays so
    drained = threading.Event()
    threading.Thread(target=lambda: (storer.drain(own), drained.set()), daemon=True).start()
    held = not drained.wait(WAIT_S / 3)
    gated.open.set()
    storer.close()
    assert not held and own.settled == {mine[0]} and beside.settled == {theirs[0]}
