"""Server-sent events kept alive (`api.sse`): a comment while the next event is slow, never
in place of one; and the official OpenAI client reads a stream that carries them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import httpx
import openai
import pytest

from experts.mock import MockBackend
from orchestrator.api import openai_compat
from orchestrator.api.app import create_app
from orchestrator.api.sse import KEEP_ALIVE, kept_alive
from orchestrator.container import SkillRoute
from tests.orchestrator.conftest import mock_expert, quiet_settings, small_pool


def test_a_slow_event_is_preceded_by_keep_alives_and_none_is_lost() -> None:
    gate = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        yield "data: 1\n\n"
        await gate.wait()  # let out only once a keep-alive went: the wait is the stream's, not a clock's
        yield "data: 2\n\n"

    async def read() -> list[str]:
        out: list[str] = []
        async for event in kept_alive(slow(), every_s=0.01):
            out.append(event)
            if event == KEEP_ALIVE:
                gate.set()
        return out

    out = asyncio.run(read())
    assert out[0] == "data: 1\n\n" and out[-1] == "data: 2\n\n" and set(out[1:-1]) == {KEEP_ALIVE}


def test_an_error_of_the_stream_reaches_its_reader() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "data: 1\n\n"
        raise RuntimeError("the store went away")

    async def read() -> list[str]:
        return [e async for e in kept_alive(broken(), every_s=60)]

    with pytest.raises(RuntimeError, match="the store went away"):
        asyncio.run(read())


def test_the_openai_client_reads_a_stream_kept_alive(tmp_path, embedder, serve, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Experts slower than the keep-alive: the stream carries comments before its first token."""
    monkeypatch.setattr(openai_compat, "kept_alive", partial(kept_alive, every_s=0.05))
    pool = small_pool([mock_expert("alpha", "m1")])
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder,
                   factory=lambda spec: MockBackend(spec.key, delay_s=0.3))
    c.bootstrap()
    try:
        with serve(create_app(c)) as url:
            with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
                chunks = list(client.chat.completions.create(model="auto", messages=[
                    {"role": "user", "content": "What is 12*12?"}], stream=True))
            body = {"model": "auto", "messages": [{"role": "user", "content": "What is 13*13?"}], "stream": True}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
                lines = list(r.iter_lines())
    finally:
        c.close()
    assert chunks[-1].choices[0].finish_reason == "stop" and "".join(c.choices[0].delta.content or "" for c in chunks)
    events = [ln for ln in lines if ln]
    assert events[0] == KEEP_ALIVE.strip() and events[-1] == "data: [DONE]"  # comments while the experts answer


def test_a_reader_that_leaves_closes_the_stream_it_read() -> None:
    """A client gone mid-stream: the source's own clean-up runs then, not whenever it is collected."""
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "data: x\n\n"
        finally:
            closed.set()

    async def leave_after_one() -> bool:
        events = kept_alive(endless(), every_s=60)
        await anext(events)
        await events.aclose()  # as the server closes the response of a client that left
        return closed.is_set()

    assert asyncio.run(leave_after_one())
