"""Answering queries: accept (stored first), route, generate, store the decision and answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from orchestrator.observability.probe import NULL_PROBE, Probe
from orchestrator.pipeline import NoExpertsError, Outcome, Pipeline, QueryInput
from orchestrator.pool import PoolState
from orchestrator.scheduling.window import BatchingWindow
from orchestrator.services.errors import NotFound, NotReady
from orchestrator.store.db import Database
from orchestrator.store.models import Query
from orchestrator.store.repositories.queries import QueryRepository


class QueryService:
    probe: Probe = NULL_PROBE  # the app's metrics, once instrumented

    def __init__(self, db: Database, pool: PoolState, pipeline: Pipeline, max_batch: int = 32,
                 max_wait_s: float = 0.05):
        self.db, self.pool, self.pipeline = db, pool, pipeline
        # concurrent requests share one window, so their generation is batched by model too
        self.window: BatchingWindow[tuple[int, QueryInput], int] = BatchingWindow(
            self._run_items, max_batch, max_wait_s
        )

    def ask(self, inputs: Sequence[QueryInput]) -> list[int]:
        """Answer queries; returns the stored ids (failed ones are stored as failed)."""
        with self.db.session() as s:
            ids = [QueryRepository(s).accept(q.text, q.k).id for q in inputs]
        return self.window.submit(list(zip(ids, inputs, strict=True))).result()

    def _run_items(self, items: list[tuple[int, QueryInput]]) -> list[int]:
        self.run([i for i, _ in items], [q for _, q in items])
        return [i for i, _ in items]

    def run(self, ids: Sequence[int], inputs: Sequence[QueryInput]) -> None:
        """Route and answer one batch on the device, storing everything it produced."""
        try:
            outcomes = self.pipeline.answer(self.pool.snapshot, inputs)
        except NoExpertsError as exc:
            self._fail(ids, str(exc))
            raise NotReady(str(exc)) from exc
        except Exception as exc:
            self._fail(ids, f"{type(exc).__name__}: {exc}")
            raise
        with self.db.session() as s:
            for qid, out in zip(ids, outcomes, strict=True):
                store_outcome(QueryRepository(s), qid, out)
        self.probe.queries_finished("done", len(ids))

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

    def recover(self) -> int:
        """Answer queries that were accepted but never finished (a crash mid-batch)."""
        with self.db.session() as s:
            pending = [(q.id, QueryInput(q.text, q.k)) for q in QueryRepository(s).pending()]
        if pending:
            self.window.submit(pending).result()
        return len(pending)


def store_outcome(repo: QueryRepository, qid: int, out: Outcome) -> None:
    """Write a finished query's decision, generations and answer (routed or direct)."""
    d = out.decision
    repo.save_decision(
        qid, router=d.router, mode=d.mode, seed=d.seed, aggregator=d.aggregator if len(d.recruited) > 1 else None,
        skills=[asdict(m) for m in d.skills], experts=[asdict(x) for x in d.scores], recruited=list(d.recruited),
    )
    repo.add_generations(qid, [
        {"expert": a.expert, "role": a.role, "text": a.generation.text, "latency_s": a.generation.latency_s,
         "prompt_tokens": a.generation.prompt_tokens, "completion_tokens": a.generation.completion_tokens}
        for a in out.answers
    ])
    repo.finish(qid, out.answer, out.latency_s)
