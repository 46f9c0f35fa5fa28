"""Answering queries: accept (stored first), route, generate, store the decision and answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from orchestrator.observability.probe import NULL_PROBE, Probe
from orchestrator.pipeline import NoExpertsError, NotRecorded, Outcome, Pipeline, QueryInput
from orchestrator.pool import PoolState
from orchestrator.routing.budget_plan import QueryBudget
from orchestrator.routing.budgets import InfeasibleBudget
from orchestrator.scheduling.window import BatchingWindow
from orchestrator.services.budgets import infeasible
from orchestrator.services.errors import NotFound, NotReady, Unprocessable
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
        """Answer queries; returns the stored ids (failed ones are stored as failed).

        A budget no expert fits, or a question a replay pool has no recording of, is refused
        (422) before anything is stored."""
        self.check_recorded(inputs)
        self.check_budgets(inputs)
        with self.db.session() as s:
            ids = [QueryRepository(s).accept(q.text, q.k, request_record(q)).id for q in inputs]
        return self.window.submit(list(zip(ids, inputs, strict=True))).result()

    def check_recorded(self, inputs: Sequence[QueryInput]) -> None:
        try:
            self.pipeline.check_recorded(self.pool.snapshot, inputs)
        except NotRecorded as exc:
            where = f"query {exc.index}: " if len(inputs) > 1 else ""
            raise Unprocessable(f"{where}{exc}", "query") from exc

    def check_budgets(self, inputs: Sequence[QueryInput]) -> None:
        """Route each budgeted query once ahead (routing is cheap next to generating)."""
        snapshot = self.pool.snapshot
        for i, q in enumerate(inputs):
            try:
                self.pipeline.check_budgets(snapshot, [q])
            except InfeasibleBudget as exc:
                raise infeasible(exc, q.budget, f"query {i}: " if len(inputs) > 1 else "") from exc
            except NoExpertsError:
                return  # stored as failed and answered 503 like any query to an empty pool

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
            pending = [(q.id, input_from_record(q.text, q.k, q.request)) for q in QueryRepository(s).pending()]
        if pending:
            self.window.submit(pending).result()
        return len(pending)


def request_record(q: QueryInput) -> dict[str, Any]:
    """What `input_from_record` needs, besides the text and k, to ask a query again."""
    budget = asdict(q.budget) if q.budget else None
    return {"mode": q.mode, "seed": q.seed, "budget": budget}


def input_from_record(text: str, k: int, record: dict[str, Any] | None) -> QueryInput:
    r = record or {}
    b = r.get("budget")
    budget = QueryBudget(b["latency_s"], b["energy_j"], tuple(b.get("from_key") or ())) if b else None
    return QueryInput(text, k, r.get("mode"), r.get("seed"), budget)


def store_outcome(repo: QueryRepository, qid: int, out: Outcome) -> None:
    """Write a finished query's decision, generations and answer (routed or direct)."""
    d = out.decision
    repo.save_decision(
        qid, router=d.router, mode=d.mode, seed=d.seed, aggregator=d.aggregator if len(d.recruited) > 1 else None,
        skills=[asdict(m) for m in d.skills], experts=[asdict(x) for x in d.scores], recruited=list(d.recruited),
        budget=d.plan.record(out.stages_s) if d.plan else None,
    )
    repo.add_generations(qid, [
        {"expert": a.expert, "role": a.role, "text": a.generation.text, "latency_s": a.generation.latency_s,
         "prompt_tokens": a.generation.prompt_tokens, "completion_tokens": a.generation.completion_tokens}
        for a in out.answers
    ])
    repo.finish(qid, out.answer, out.latency_s)
