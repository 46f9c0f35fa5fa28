"""Answering admitted queries: the batching window, storing outcomes, recovery, reading back.

Concurrent requests share one window, so their generation is batched by model too. A query is
answered exactly as it was admitted: its stored request and decision are what runs, here and
after a crash (`recover`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future

from orchestrator.domain import Ask, QueryError
from orchestrator.pipeline import Pipeline
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.routing.learning import Lesson
from orchestrator.scheduling.window import BatchingWindow
from orchestrator.services.admission import Admission, Admitted
from orchestrator.services.errors import NotFound
from orchestrator.services.pool import PoolState
from orchestrator.store.db import Database
from orchestrator.store.models import Query
from orchestrator.store.repositories.queries import QueryRepository, ask_of, decision_of

log = logging.getLogger(__name__)


class QueryService:
    def __init__(self, db: Database, pool: PoolState, pipeline: Pipeline, admission: Admission,
                 max_batch: int = 32, max_wait_s: float = 0.05, probe: Probe = NULL_PROBE):
        self.db, self.pool, self.pipeline, self.admission, self.probe = db, pool, pipeline, admission, probe
        self.window: BatchingWindow[Admitted, int] = BatchingWindow(self._run_items, max_batch, max_wait_s,
                                                                    probe=probe)

    def submit(self, asks: Sequence[Ask]) -> Future[list[int]]:
        """Admit the queries (a 4xx, nothing stored, if one cannot be taken) and queue them; the
        future resolves to their ids once they are answered or failed."""
        return self.window.submit(self.admission.admit(asks))

    def ask(self, asks: Sequence[Ask]) -> list[int]:
        """`submit` and wait: the CLI's and the tests' way in."""
        return self.submit(asks).result()

    def _run_items(self, items: list[Admitted]) -> list[int]:
        self.run(items)
        return [i.query_id for i in items]

    def run(self, items: Sequence[Admitted]) -> None:
        """Answer one batch as admitted, storing everything it produced."""
        snapshot = self.pool.snapshot
        runnable = [i for i in items if set(i.decision.recruited) <= snapshot.experts.keys()]
        gone = [i.query_id for i in items if not set(i.decision.recruited) <= snapshot.experts.keys()]
        if gone:  # recovered after its expert left the pool: it fails alone
            self._fail(gone, "an expert this query was routed to is no longer in the pool")
        if not runnable:
            return
        taught: list[tuple[int | None, Lesson]] = []
        try:
            outcomes = self.pipeline.answer(snapshot, [i.ask for i in runnable], [i.decision for i in runnable],
                                            [i.embedding for i in runnable],
                                            learn=lambda at, lesson: taught.append((runnable[at].query_id, lesson)))
        except Exception as exc:
            self._fail([i.query_id for i in runnable], f"{type(exc).__name__}: {exc}")
            raise
        with self.db.session() as s:
            for item, out in zip(runnable, outcomes, strict=True):
                QueryRepository(s).finish(item.query_id, out)
        if taught:
            self.pool.learn(taught)
            self.probe.learned([lesson.source for _, lesson in taught])
        failed = sum(o.error is not None for o in outcomes)
        self.probe.queries_finished("done", len(runnable) - failed)
        if failed:
            self.probe.queries_finished("failed", failed)

    def _fail(self, ids: Sequence[int], error: str) -> None:
        with self.db.session() as s:
            for qid in ids:
                QueryRepository(s).fail(qid, error)
        self.probe.queries_finished("failed", len(ids))

    def get(self, query_id: int) -> Query:
        with self.db.session() as s:
            row = QueryRepository(s).get(query_id)
        if row is None:
            raise NotFound(f"no query with id {query_id}", "id")
        return row

    def get_many(self, ids: Sequence[int]) -> list[Query]:
        with self.db.session() as s:
            return QueryRepository(s).get_many(ids)

    def recover(self) -> int:
        """Answer queries that were accepted but never finished (a crash mid-batch), each as it
        was admitted: its stored request and decision (rows from before decisions were stored
        at admission are routed again, with their stored seed)."""
        with self.db.session() as s:
            pending = [(q.id, ask_of(q), decision_of(q)) for q in QueryRepository(s).pending()]
        items = [Admitted(qid, ask, d) if d is not None else self._reroute(qid, ask) for qid, ask, d in pending]
        ready = [i for i in items if i is not None]
        if ready and (error := self.window.submit(ready).exception()) is not None:
            log.warning("recovered queries failed: %s", error)  # each is stored as failed
        return len(pending)

    def _reroute(self, query_id: int, ask: Ask) -> Admitted | None:
        try:
            return Admitted(query_id, ask, self.pipeline.route(self.pool.snapshot, [ask])[0])
        except QueryError as exc:
            self._fail([query_id], exc.message)
            return None
