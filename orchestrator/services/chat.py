"""Chat completions over the pool: `auto` routes (k experts + aggregator), an expert's name calls it alone.

Both are admitted like every query (`admission.Admission`): a direct call is stored with the
expert it named, so a recovery after a crash asks that same expert. They share the batching
window with every other query. A streamed chat is the same query with a live client: once it is
admitted (its id and decision known, for the headers) the final generation's text reaches the
client as it is generated (`pipeline.stream`), and when the query is stored the client gets the
stored reply's end, the same reply a plain call would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

from experts.types import finish_reason_of
from orchestrator.domain import AUTO, Ask, Decision, FinishReason
from orchestrator.pipeline import GenerationLimits
from orchestrator.pipeline.stream import StreamHub, TooManyStreams
from orchestrator.services.admission import Admitted
from orchestrator.services.errors import Busy, NotReady, ServiceError
from orchestrator.services.idempotency import Claim, IdempotencyService, Prior
from orchestrator.services.pool import PoolState
from orchestrator.services.queries import QueryService
from orchestrator.store.models import GenerationRow, Query
from orchestrator.store.repositories.queries import ask_of, decision_of

MAX_PROMPT_CHARS = 32_000
MAX_PIECES = 8192  # pieces one stream buffers; beyond them the rest comes from the stored reply

Started = tuple[Admitted, Future[list[Query]]]  # the admitted query, and its answer to come


@dataclass(frozen=True)
class ChatResult:
    query: Query  # the stored query, with its decision and generations
    decision: Decision
    content: str  # the final reply: the aggregator's (or the lone expert's) whole text
    model: str  # who wrote `content`
    finish_reason: FinishReason = "stop"  # "length": the reply was cut at its token limit

    @property
    def usage(self) -> tuple[int, int]:
        """The tokens of the generations the reply was made of, as `replies` has them, each run
        once: an expert drawn twice at temperature 0 runs once (`executor.coalesce`) and its reply
        is stored under each draw, so a chat of three such draws reported three times its tokens."""
        gens = {_run_of(g): g for g in replies(self.query)}.values()
        return sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens)


def _run_of(g: GenerationRow) -> tuple[object, ...]:
    """What tells one run from another within a query: a shared reply is stored whole under each
    draw, its measured time too, which no second run of its own repeats to the last digit."""
    return g.expert, g.role, g.text, g.prompt_tokens, g.completion_tokens, g.latency_s


def replies(row: Query) -> list[GenerationRow]:
    """The generations the client's reply was made of: the recruited experts' (stand-ins
    included) and the aggregator's. Competitors, and the new experts explored beside a query
    (stored as competitors too), are only scored for the router: the client never asked for
    them, so neither the reply nor its usage counts them."""
    return [g for g in row.generations if g.role != "competitor"]


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


def finish_reason(reply: GenerationRow, ask: Ask, limits: GenerationLimits) -> FinishReason:
    """Why the reply ended, as its backend said: "stop" (an end-of-sequence token or a stop
    string), "length" (its max_tokens cut it). Unknown (a row stored before reasons were, a
    backend that cannot tell): `guessed_finish`."""
    return finish_reason_of(reply.finish_reason) or guessed_finish(reply, ask, limits)


def guessed_finish(reply: GenerationRow, ask: Ask, limits: GenerationLimits) -> FinishReason:
    """"length" when the reply used every token it was allowed (the pool's limit for its role,
    lowered by the ask's `max_tokens`); else "stop". Only a guess: a reply that ended on its own
    exactly at the limit reads as cut, and one cut by its expert's own lower `max_tokens` as not."""
    limit = limits.aggregator_max_tokens if reply.role == "aggregator" else limits.expert_max_tokens
    if ask.max_tokens is not None:
        limit = min(limit, ask.max_tokens)
    return "length" if reply.completion_tokens >= limit else "stop"


def _writer(replies: Sequence[GenerationRow], content: str) -> GenerationRow | None:
    """The generation that wrote the final reply: the aggregator's, else the first-ranked expert
    whose reply it is (a lettered vote answers with its heaviest voter's reply)."""
    return next((g for g in sorted(replies, key=lambda g: g.role != "aggregator") if g.text == content), None)


class ChatService:
    def __init__(self, pool: PoolState, queries: QueryService):
        self.pool, self.queries = pool, queries
        self.hub: StreamHub = queries.pipeline.streams

    def models(self) -> list[str]:
        """What `model` may name: auto, then every ready expert."""
        return [AUTO, *sorted(self.pool.snapshot.experts)]

    def result(self, query_id: int) -> ChatResult:
        """The answered query as a chat reply; a failed one is a 503 with its error."""
        return self.result_of(self.queries.get(query_id))

    def result_of(self, row: Query) -> ChatResult:
        """`result` of a stored row already at hand."""
        decision = decision_of(row)
        made_of = replies(row)
        if row.status != "done" or not made_of or decision is None:
            raise NotReady(row.error or "the query was not answered")
        content = made_of[-1].text if row.reply is None else row.reply  # None: stored before replies were
        writer = _writer(made_of, content)
        if writer is None:  # a vote's own reply ("Answer: B"): no one generation wrote it
            return ChatResult(row, decision, content, AUTO)
        return ChatResult(row, decision, content, writer.expert,
                          finish_reason(writer, ask_of(row), self.queries.pipeline.limits))

    async def stream(self, ask: Ask, claim: Claim | None = None,
                     idempotency: IdempotencyService | None = None) -> ChatStream | Prior:
        """Admit the chat (a 4xx, nothing stored, if it cannot be taken) with a channel open for
        its reply's pieces; the stream knows its query id and decision at once. Under an
        idempotency key seen before: the first request's query (`Prior`), not a new one."""
        channel = TokenChannel(asyncio.get_running_loop())
        stream_id = uuid.uuid4().hex
        try:
            self.hub.open(stream_id, channel.push)
        except TooManyStreams as exc:
            raise Busy(str(exc)) from exc  # the overload any client may retry: 503 with Retry-After
        ask = ask.model_copy(update={"stream_to": stream_id})
        try:
            started = await asyncio.to_thread(self._start_once, ask, claim, idempotency)
        except BaseException:
            self.hub.close(stream_id)
            raise
        if isinstance(started, Prior):
            self.hub.close(stream_id)
            return started
        item, future = started
        future.add_done_callback(lambda _: self._ended(stream_id, channel))
        return ChatStream(self, item, channel, stream_id)

    def _ended(self, stream_id: str, channel: TokenChannel) -> None:
        """The query is stored: nothing more will be generated for its client. Its sink goes
        now even if the response never began (a client gone before its headers)."""
        self.hub.close(stream_id)
        channel.end()

    def _start_once(self, ask: Ask, claim: Claim | None, idempotency: IdempotencyService | None) -> Started | Prior:
        if idempotency is None:
            return self._start(ask, claim)
        return idempotency.once(claim, partial(self._start, ask))

    def _start(self, ask: Ask, claim: Claim | None) -> Started:
        """`QueryService.start`, keeping the admitted query (its id and decision)."""
        items, done = self.queries.start([ask], claim)
        return items[0], done

    async def replay(self, query_id: int) -> ChatStream:
        """A stored chat as a stream with nothing left to generate (a retried request's). A query
        that failed (or is still unanswered) raises the error a plain retry gets, before any
        response begins: a 200 stream whose one event is the error hid it from the status."""
        row = await asyncio.to_thread(self.queries.get, query_id)
        result = self.result_of(row)
        channel = TokenChannel(asyncio.get_running_loop())
        channel.end()
        return ChatStream(self, Admitted(query_id, ask_of(row), result.decision), channel, "")


class TokenChannel:
    """Pieces from a device thread to the event loop of the response that sends them, in order,
    ending with None once the query is stored. Bounded: past `limit` pieces it drops the rest,
    which then comes from the stored reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = MAX_PIECES):
        self._loop, self._queue = loop, asyncio.Queue[str | None]()
        self._left, self._lock = limit, threading.Lock()
        self.writer: str | None = None  # who wrote the first piece (set before it is queued)

    def push(self, writer: str, piece: str) -> None:
        """Queue a piece of the first writer's; another's (a stand-in for a lone expert that broke
        part way) is dropped, never spliced onto the broken pieces: the stored reply is then told
        apart (ChatStream.rest) and the stream ends in an error naming who wrote it."""
        with self._lock:
            if self._left <= 0 or self.writer not in (None, writer):
                return
            self._left -= 1
            self.writer = writer
        self._put(piece)

    def end(self) -> None:
        self._put(None)

    def _put(self, item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: no one is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> str | None:
        return await self._queue.get()


class ChatStream:
    """One streamed chat: its query id and decision, its reply's pieces as they are generated,
    then the stored reply (and what of it the pieces did not carry)."""

    def __init__(self, service: ChatService, item: Admitted, channel: TokenChannel, stream_id: str):
        self.query_id, self.decision = item.query_id, item.decision
        self._service, self._channel, self._stream_id = service, channel, stream_id
        self._sent: list[str] = []

    @property
    def writer(self) -> str:
        """Who wrote the pieces that stream, as the pipeline told with the first: a stand-in for
        a lone expert that failed before writing streams too, and the routed decision names the
        failed one. Before any piece: the aggregator, else the lone expert (a reply that streams
        no piece is written as its stored result says)."""
        return self._channel.writer or self.decision.aggregator or next(iter(self.decision.recruited), AUTO)

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's text as it is generated, until the query is stored."""
        try:
            while (piece := await self._channel.get()) is not None:
                self._sent.append(piece)
                yield piece
        finally:
            self._service.hub.close(self._stream_id)

    async def result(self) -> ChatResult:
        return await asyncio.to_thread(self._service.result, self.query_id)

    def rest(self, result: ChatResult) -> str | None:
        """What of the stored reply the pieces have not carried; None when they carried another
        generation's text (the streamed one failed part way and another wrote the reply): text
        the reply does not begin with, or text by another writer, though the reply begins alike
        (spliced on, the chunks would name the writer of the pieces, not of the reply)."""
        sent = "".join(self._sent)
        if self._sent and self._channel.writer != result.model:
            return None
        return result.content[len(sent):] if result.content.startswith(sent) else None
