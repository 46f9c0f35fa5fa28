"""Counts every HTTP request by route template and status, as plain ASGI middleware.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: it sees the status of streamed responses
and of unhandled exceptions alike. The route *template* (/v1/queries/{query_id}) is the label,
never the raw path, so ids cannot blow up the number of series; likewise a method outside HTTP's
own is counted as OTHER (an HTTP parser may pass any token through as the method).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.observability.metrics import Metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500  # stays 500 if the app raises before responding

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.observe_request(method, endpoint(scope), status, time.perf_counter() - started)


def endpoint(scope: Scope) -> str:
    """The matched route's path template; static files and unknown paths are grouped."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "/dashboard/static" if scope.get("path", "").startswith("/dashboard/static/") else "unmatched"
