"""OpenAI-compatible /v1/chat/completions (plain and streamed) and /v1/models.

`model="auto"` routes; an expert's name asks that expert alone. The reply's `model` is who wrote
the final answer (the aggregator when there was one); the decision travels in `x-skillroute-*`
headers and in the extra `skillroute` field, which OpenAI clients ignore. The shapes live in
`openai_protocol`; the work in `services.chat`.

Streamed, the headers go as soon as the query is admitted and routed, then the final
generation's tokens as they are generated (the role's chunk with the first), then a chunk with
its `finish_reason` and the stored decision record, the usage on request
(`stream_options.include_usage`), and `[DONE]`. The chunks' `model` is the plain reply's. A
failure once the headers are sent is the last event before `[DONE]`, in OpenAI's error shape.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import StreamingResponse

from orchestrator.api.deps import Budgets, Container, Idempotent, settled
from orchestrator.api.errors import OPENAI_TAG
from orchestrator.api.openai_protocol import (
    SSE_DONE,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageIn,
    ChunkWriter,
    ModelCard,
    ModelList,
    completion,
    decision_headers,
    skillroute_info,
    sse_error,
    sse_internal_error,
    usage_of,
)
from orchestrator.api.openapi_errors import ADMITTING
from orchestrator.api.sse import kept_alive
from orchestrator.domain import Ask
from orchestrator.services.admission import ModelNotFound
from orchestrator.services.chat import ChatResult, ChatStream
from orchestrator.services.errors import NotReady, ServiceError
from orchestrator.services.idempotency import Prior

log = logging.getLogger(__name__)
__all__ = ["ChatMessageIn", "router"]  # ChatMessageIn: /v1/routes reads chats as this module does

router = APIRouter(prefix="/v1", tags=[OPENAI_TAG])  # the tag makes a bad request a 400, as OpenAI's


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A completion, or with stream=true its chunks as server-sent events."},
                        404: {"description": "No model of that name (GET /v1/models lists them)."}, **ADMITTING})
async def chat_completions(c: Container, budgets: Budgets, once: Idempotent, body: ChatCompletionRequest,
                           response: Response) -> Any:
    """Answer a chat: routed to k experts and aggregated (`auto`), or one named expert."""
    ask = body.to_ask(c.settings.default_k, budgets)
    with _messages_named():
        return await _answer(c, once, ask, body, response)


async def _answer(c: Container, once: Idempotent, ask: Ask, body: ChatCompletionRequest, response: Response) -> Any:
    if body.stream:
        stream = await _stream(c, once, ask, body)
        writer = ChunkWriter(stream.query_id, int(time.time()),
                             bool(body.stream_options and body.stream_options.include_usage))
        return StreamingResponse(sse_events(stream, writer), media_type="text/event-stream",
                                 headers={**decision_headers(stream.query_id, stream.decision),
                                          "Cache-Control": "no-cache"})
    (row,) = await once.answered([ask], body)  # an Idempotency-Key seen before: the first request's query
    result = c.chat.result_of(row)
    response.headers.update(decision_headers(row.id, result.decision))
    return completion(result, skillroute_info(result))


@contextlib.contextmanager
def _messages_named() -> Iterator[None]:
    """A refusal of the query's text names `messages`: the service's own name for it, `query`
    (the REST field), is not a field of a chat request."""
    try:
        yield
    except ServiceError as exc:
        exc.param = "messages" if exc.param == "query" else exc.param
        raise


async def _stream(c: Container, once: Idempotent, ask: Ask, body: ChatCompletionRequest) -> ChatStream:
    """The chat admitted with a live channel; a retry under a known Idempotency-Key streams the
    first request's query once it is answered."""
    started = await c.chat.stream(once.stamped([ask])[0], once.claim(body), c.idempotency)
    if not isinstance(started, Prior):
        return started
    await settled(c.queries, started.query_ids, c.settings.idempotency.retry_wait_s)
    return await c.chat.replay(started.query_ids[0])


async def sse_events(stream: ChatStream, w: ChunkWriter) -> AsyncIterator[str]:
    """The reply as standard chat.completion.chunk events, token by token, ending in `[DONE]`,
    even when it fails once the headers are sent: then an error event is the last before it."""
    try:
        async for event in kept_alive(_events(stream, w)):  # a comment while experts answer: no proxy cuts it
            yield event
    except ServiceError as exc:  # the headers are sent: the error is the stream's last event
        yield sse_error(exc)
    except Exception as exc:  # a store error, a bug: the client still gets an end it can read
        log.exception("streamed query %s failed after its response began", stream.query_id)
        yield sse_internal_error(exc, stream.query_id)
    yield SSE_DONE


async def _events(stream: ChatStream, w: ChunkWriter) -> AsyncIterator[str]:
    """The first chunk waits for the first piece, or for the stored reply when none streamed (a
    vote, answers all alike, an aggregator that failed): only then is its writer known, and
    every chunk names the model a plain request's reply names."""
    async for piece in stream.pieces():
        if not w.begun:
            yield w.begin(stream.writer)  # pieces come only from the reply's routed final step
        yield w.delta({"content": piece})
    result = await stream.result()
    rest = stream.rest(result)
    if rest is None:
        raise NotReady(f"the reply's generation failed after it began streaming, and {result.model} wrote "
                       f"the answer instead: GET /v1/queries/{stream.query_id} has it")
    async for event in _ending(result, rest, w):
        yield event


async def _ending(result: ChatResult, rest: str, w: ChunkWriter) -> AsyncIterator[str]:
    """What of the stored reply the pieces did not carry, its finish and usage."""
    if not w.begun:
        yield w.begin(result.model)
    if rest:
        yield w.delta({"content": rest})
    yield w.delta({}, result.finish_reason, skillroute=skillroute_info(result).model_dump(mode="json"))
    if w.include_usage:
        yield w.usage(usage_of(result))


@router.get("/models", response_model=ModelList)
async def list_models(c: Container) -> ModelList:
    """`auto` (routed) and every ready expert, as OpenAI model cards."""
    return ModelList(data=[ModelCard(id=m) for m in c.chat.models()])


@router.get("/models/{model}", response_model=ModelCard)
async def get_model(c: Container, model: Annotated[str, Path(max_length=64)]) -> ModelCard:
    if model not in c.chat.models():
        raise ModelNotFound(f"the model {model!r} does not exist; GET /v1/models lists them", "model")
    return ModelCard(id=model)
