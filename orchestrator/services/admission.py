"""The one way a query comes in, whichever endpoint it came through.

`/v1/queries`, `/v1/batches` and `/v1/chat/completions` (routed or to a named expert) admit
their queries here: each is checked and routed once (its text embedded once), then stored with
its whole request and the decision made for it, in one transaction, before any generation. A
query that cannot be taken — an empty pool, a question no expert can answer, an unknown expert,
a budget no expert fits — is refused with a 4xx naming it, and nothing of its request is stored.
`/v1/routes` runs the same checks and routing and stores nothing. Recovery after a crash reads
back exactly what was admitted (`queries.QueryService.recover`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from orchestrator.budgets.solver import InfeasibleBudget
from orchestrator.domain import Ask, Decision, ExpertUnusable, NoExperts, QueryError, UnknownExpert
from orchestrator.pipeline import Pipeline
from orchestrator.scheduling.combiner import Combiner
from orchestrator.services.budgets import infeasible
from orchestrator.services.errors import ModelUnavailable, NotFound, NotReady, ServiceError, Unprocessable
from orchestrator.services.idempotency import Claim
from orchestrator.services.pool import PoolState
from orchestrator.store.db import Database
from orchestrator.store.repositories.batches import BatchRepository
from orchestrator.store.repositories.idempotency import IdempotencyRepository
from orchestrator.store.repositories.queries import QueryRepository


@dataclass(frozen=True)
class Admitted:
    """A stored query and what it will run: the request as asked and the decision made for it
    (and, not stored, the query's embedding, which a competition's lesson needs)."""

    query_id: int
    ask: Ask
    decision: Decision
    embedding: np.ndarray | None = field(default=None, compare=False)


Routed = tuple[list[Decision], list[np.ndarray | None]]  # decisions and embeddings, one per query


class ModelNotFound(NotFound):
    code = "model_not_found"


class Admission:
    def __init__(self, db: Database, pool: PoolState, pipeline: Pipeline, owner: str | None = None):
        self.db, self.pool, self.pipeline = db, pool, pipeline
        self.owner = owner  # the running service that answers what it admits (services/instances.py)
        self._together: Combiner[list[Ask], list[Admitted]] = Combiner(self._admit_group)

    def route(self, asks: Sequence[Ask]) -> list[Decision]:
        """The decisions for these queries (a dry run: nothing will run them), or the 4xx of the
        first one that cannot be taken."""
        return self._routed(asks, dry_run=True)[0]

    def _routed(self, asks: Sequence[Ask], dry_run: bool = False) -> Routed:
        try:
            return self.pipeline.decider.route_embedded(self.pool.snapshot, asks, dry_run)
        except QueryError as exc:
            raise refusal(exc, len(asks), asks[exc.index]) from exc

    def admit(self, asks: Sequence[Ask], claim: Claim | None = None) -> list[Admitted]:
        """Route, then store every query with its request and decision (all or none), and the
        request's idempotency key with them (a key stored first raises KeyTaken, storing nothing).
        Requests without a key that arrive together are routed and stored together (`Combiner`:
        one matrix product, one commit); a refusal still stays with the request it names."""
        if claim is None:
            return self._together.call(list(asks))
        decisions, embeddings = self._routed(asks)
        with self._or_released(decisions), self.db.session() as s:
            ids = QueryRepository(s).accept_many(asks, decisions, self.owner)
            IdempotencyRepository(s).add(claim.row(query_ids=ids))
        return _admitted(ids, asks, decisions, embeddings)

    def _admit_group(self, calls: list[list[Ask]]) -> list[list[Admitted] | BaseException]:
        """Route the calls together and store them in one commit; if that commit fails, each
        call is stored on its own, so a failure stays with the request it came from."""
        routed = self._route_group(calls)
        taken = [(asks, r) for asks, r in zip(calls, routed, strict=True) if not isinstance(r, BaseException)]
        try:
            stored: list[list[Admitted] | BaseException] = list(self._store(taken))
        except Exception:  # not only SQLAlchemyError: the driver raises its own (OverflowError, UnicodeEncodeError)
            stored = [self._store_alone(asks, r) for asks, r in taken]
        admitted = iter(stored)
        return [r if isinstance(r, BaseException) else next(admitted) for r in routed]

    def _store(self, taken: Sequence[tuple[list[Ask], Routed]]) -> list[list[Admitted]]:
        with self.db.session() as s:
            ids = iter(QueryRepository(s).accept_many([a for asks, _ in taken for a in asks],
                                                       [d for _, (decisions, _) in taken for d in decisions],
                                                       self.owner))
        return [_admitted([next(ids) for _ in asks], asks, *r) for asks, r in taken]

    def _store_alone(self, asks: list[Ask], routed: Routed) -> list[Admitted] | BaseException:
        try:
            return self._store([(asks, routed)])[0]
        except Exception as exc:
            self.pipeline.decider.release(routed[0])  # not stored: they will not run
            return exc

    def _route_group(self, calls: list[list[Ask]]) -> list[Routed | BaseException]:
        """Every call's decisions from one routing pass; if some query cannot be taken (a
        refusal, or any error routing it), each call is routed on its own, so the failure goes to
        its request alone."""
        flat = [a for asks in calls for a in asks]
        try:
            decisions, embeddings = self._routed(flat)
        except Exception as exc:
            if len(calls) == 1:
                return [exc]
            return [self._route_alone(asks) for asks in calls]
        cuts = list(itertools.accumulate(len(asks) for asks in calls))
        return [(decisions[a:b], embeddings[a:b]) for a, b in itertools.pairwise([0, *cuts])]

    def _route_alone(self, asks: Sequence[Ask]) -> Routed | BaseException:
        try:
            return self._routed(asks)
        except Exception as exc:  # its request's to answer (a 500 for what is no refusal)
            return exc

    def admit_batch(self, asks: Sequence[Ask], custom_ids: Sequence[str | None],
                    key_id: int | None = None, claim: Claim | None = None) -> tuple[int, list[Admitted]]:
        """`admit` for a batch: its queries, the batch that lists them and its idempotency key
        are one transaction."""
        decisions, embeddings = self._routed(asks)
        with self._or_released(decisions), self.db.session() as s:
            ids = QueryRepository(s).accept_many(asks, decisions, self.owner)
            batch_id = BatchRepository(s).add(list(zip(ids, custom_ids, strict=True)), key_id).id
            if claim is not None:
                IdempotencyRepository(s).add(claim.row(batch_id=batch_id))
        return batch_id, _admitted(ids, asks, decisions, embeddings)

    @contextmanager
    def _or_released(self, decisions: Sequence[Decision]) -> Iterator[None]:
        """Store the routed queries; if that fails (a key taken first, a lost race) they will not
        run, so the slots of the per-minute cap their competitions took go back."""
        try:
            yield
        except BaseException:
            self.pipeline.decider.release(decisions)
            raise


def _admitted(ids: Sequence[int], asks: Sequence[Ask], decisions: Sequence[Decision],
              embeddings: Sequence[np.ndarray | None]) -> list[Admitted]:
    return [Admitted(i, a, d, e) for i, a, d, e in zip(ids, asks, decisions, embeddings, strict=True)]


def refusal(exc: QueryError, count: int, ask: Ask) -> ServiceError:
    """The reply a query that cannot be taken gets; a list names which query it was."""
    where = f"query {exc.index}: " if count > 1 else ""
    if isinstance(exc, NoExperts):
        return NotReady(exc.message)
    if isinstance(exc, UnknownExpert):
        return ModelNotFound(exc.message, exc.param)
    if isinstance(exc, ExpertUnusable):
        return ModelUnavailable(f"{where}{exc.message}", exc.param)
    if isinstance(exc, InfeasibleBudget):
        return infeasible(exc, ask.budget, where)
    return Unprocessable(f"{where}{exc.message}", exc.param)
