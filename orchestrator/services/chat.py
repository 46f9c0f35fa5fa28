"""Chat completions over the pool: `auto` routes (k experts + aggregator), an expert's name calls it alone.

Both are admitted like every query (`admission.Admission`): a direct call is stored with the
expert it named, so a recovery after a crash asks that same expert. They share the batching
window with every other query.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from orchestrator.domain import Decision
from orchestrator.services.errors import NotReady, ServiceError
from orchestrator.services.pool import PoolState
from orchestrator.services.queries import QueryService
from orchestrator.store.models import Query
from orchestrator.store.repositories.queries import decision_of

AUTO = "auto"
MAX_PROMPT_CHARS = 32_000


@dataclass(frozen=True)
class ChatResult:
    query: Query  # the stored query, with its decision and generations
    decision: Decision
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
    def __init__(self, pool: PoolState, queries: QueryService):
        self.pool, self.queries = pool, queries

    def models(self) -> list[str]:
        """What `model` may name: auto, then every ready expert."""
        return [AUTO, *sorted(self.pool.snapshot.experts)]

    def result(self, query_id: int) -> ChatResult:
        """The answered query as a chat reply; a failed one is a 503 with its error."""
        row = self.queries.get(query_id)
        decision = decision_of(row)
        if row.status != "done" or not row.generations or decision is None:
            raise NotReady(row.error or "the query was not answered")
        last = row.generations[-1]
        return ChatResult(row, decision, last.text, last.expert)
