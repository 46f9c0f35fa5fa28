"""Bodies over a set size are refused with 413 before anything parses them.

A pure ASGI middleware, ahead of FastAPI's body reading: a declared `Content-Length` over the
limit is refused before a byte of the body is read; a chunked body is counted as it arrives and
refused the moment it passes the limit (the app never holds more than the limit of it).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_body


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await refuse(send, self.max_bytes)
            return
        await _Counted(self, receive, send).run(scope)


class _Counted:
    """One request whose body is counted as it arrives. Past the limit the 413 is sent from
    here and the app is told the client left; whatever it answers after that is dropped (the
    app would otherwise turn the cut-off body into its own 400)."""

    def __init__(self, limit: BodyLimit, receive: Receive, send: Send):
        self.limit, self._receive, self._send = limit, receive, send
        self.seen, self.refused, self.started = 0, False, False

    async def run(self, scope: Scope) -> None:
        await self.limit.app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        self.seen += len(message.get("body", b""))
        if self.seen > self.limit.max_bytes and not self.started:
            self.refused = True
            await refuse(self._send, self.limit.max_bytes)
            return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


async def refuse(send: Send, max_bytes: int) -> None:
    text = (f"the request body is over the limit of {max_bytes} bytes; send fewer queries per request "
            "(POST /v1/batches in several parts) or raise SKILLROUTE_HTTP__MAX_BODY_BYTES")
    body = json.dumps(error_body(text, "invalid_request_error", "body", "request_too_large")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server refuses a malformed length itself
    return 0
