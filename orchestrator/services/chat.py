"""Chat completions over the pool: `auto` routes (k experts + aggregator), an expert's name calls it alone.

Routed chats go through QueryService, so they share the batching window with every other
query and are stored the same way; `route` is the same routing step without generation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from orchestrator.pipeline import Decision, NoExpertsError, Pipeline, QueryInput
from orchestrator.pool import PoolState
from orchestrator.routing.budget_plan import QueryBudget
from orchestrator.routing.budgets import InfeasibleBudget
from orchestrator.routing.recruit import RecruitMode
from orchestrator.services.budgets import infeasible
from orchestrator.services.errors import NotFound, NotReady, ServiceError
from orchestrator.services.queries import QueryService, store_outcome
from orchestrator.store.db import Database
from orchestrator.store.models import Query
from orchestrator.store.repositories.queries import QueryRepository

AUTO = "auto"
MAX_PROMPT_CHARS = 32_000


class ModelNotFound(NotFound):
    code = "model_not_found"


@dataclass(frozen=True)
class ChatQuery:
    text: str
    model: str = AUTO
    k: int = 3
    mode: RecruitMode | None = None  # None: the router's preferred mode
    seed: int | None = None
    budget: QueryBudget | None = None  # routed (`auto`) chats only: a named expert answers alone


@dataclass(frozen=True)
class ChatResult:
    query: Query  # the stored query, with its decision and generations
    content: str  # the final reply: the aggregator's (or the lone expert's) whole text
    model: str  # who wrote `content`

    @property
    def usage(self) -> tuple[int, int]:
        gens = self.query.generations
        return sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens)


def conversation_text(messages: Sequence[tuple[str, str]]) -> str:
    """One query text from (role, content) turns: a lone user turn is itself, else a transcript."""
    turns = [(r, c.strip()) for r, c in messages if c.strip()]
    if not turns:
        raise ServiceError("the messages hold no text", "messages")
    text = turns[0][1] if len(turns) == 1 else "\n\n".join(f"{r.capitalize()}: {c}" for r, c in turns)
    if len(text) > MAX_PROMPT_CHARS:
        raise ServiceError(f"the conversation is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}",
                           "messages")
    return text


def text_chunks(text: str) -> Iterator[str]:
    """The reply in word-sized pieces (each keeps its trailing space), for streaming."""
    yield from re.findall(r"\s*\S+\s*", text) or [text]


class ChatService:
    def __init__(self, db: Database, pool: PoolState, pipeline: Pipeline, queries: QueryService):
        self.db, self.pool, self.pipeline, self.queries = db, pool, pipeline, queries

    def models(self) -> list[str]:
        """What `model` may name: auto, then every ready expert."""
        return [AUTO, *sorted(self.pool.snapshot.experts)]

    def complete(self, q: ChatQuery) -> ChatResult:
        qid = self._routed(q) if q.model == AUTO else self._direct(q)
        row = self.queries.get(qid)
        if row.status != "done" or not row.generations:
            raise NotReady(row.error or "the query was not answered")
        last = row.generations[-1]
        return ChatResult(row, last.text, last.expert)

    def route(self, text: str, k: int, mode: RecruitMode | None, seed: int | None,
              budget: QueryBudget | None = None) -> Decision:
        """The decision the full path would make for this query and seed, without generating."""
        try:
            decision = self.pipeline.route(self.pool.snapshot, [QueryInput(text, k, mode, seed, budget)])[0]
        except NoExpertsError as exc:
            raise NotReady(str(exc)) from exc
        except InfeasibleBudget as exc:
            raise infeasible(exc, budget) from exc
        if len(decision.recruited) < 2:  # as stored: one answer needs no aggregator
            decision.aggregator = None
        return decision

    def _routed(self, q: ChatQuery) -> int:
        return self.queries.ask([QueryInput(q.text, q.k, q.mode, q.seed, q.budget)])[0]

    def _direct(self, q: ChatQuery) -> int:
        """Ask one named expert alone: a fixed decision, no routing, no aggregation."""
        snap = self.pool.snapshot
        if q.model not in snap.experts:
            raise ModelNotFound(f"the model {q.model!r} does not exist; GET /v1/models lists them", "model")
        seed = q.seed if q.seed is not None else 0
        decision = Decision([], [], [q.model], None, "direct", "topk", seed)
        with self.db.session() as s:
            qid = QueryRepository(s).accept(q.text, 1).id
        try:
            outcome = self.pipeline.answer(snap, [QueryInput(q.text, 1, "topk", seed)], [decision])[0]
        except Exception as exc:
            with self.db.session() as s:
                QueryRepository(s).fail(qid, f"{type(exc).__name__}: {exc}")
            raise
        with self.db.session() as s:
            store_outcome(QueryRepository(s), qid, outcome)
        return qid
