"""Server-sent events kept alive: a comment line while the next event is slow to come.

A streamed chat sends nothing between its headers and its first token while its experts answer
(k experts, then the aggregator: tens of seconds on a CPU), and a proxy that cuts an idle
connection (nginx's proxy_read_timeout, 60 s by default; a load balancer's idle timeout) cut
the stream before its first token. SSE comments (lines starting with ":") are ignored by every
client the spec governs, the openai library's among them (`_streaming.SSEDecoder`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

KEEP_ALIVE = ": keep-alive\n\n"
KEEP_ALIVE_S = 15.0  # well under common idle timeouts (nginx 60 s, AWS ALB 60 s)


async def kept_alive(events: AsyncIterator[str], every_s: float = KEEP_ALIVE_S) -> AsyncIterator[str]:
    """`events` as they come, with KEEP_ALIVE whenever `every_s` passed without one. The next
    event is awaited on a task of its own, so a keep-alive never cancels it half way; a stream the
    client left is closed with it cancelled."""
    source = aiter(events)
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield KEEP_ALIVE
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield event
    finally:  # the client left (or the stream ended): the source is closed here, not whenever it is collected
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if (close := getattr(source, "aclose", None)) is not None:
            with contextlib.suppress(BaseException):
                await close()
