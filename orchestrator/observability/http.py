"""Counts every HTTP request by route template and status, as plain ASGI middleware.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: it sees the status of streamed responses
and of unhandled exceptions alike. The route *template* (/v1/queries/{query_id}) is the label,
never the raw path, so ids cannot blow up the number of series; likewise a method outside HTTP's
own is counted as OTHER (an HTTP parser may pass any token through as the method).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from starlette.routing import BaseRoute, Match
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
        asked = dict(scope)  # as it came: routing moves a mount's prefix into root_path as it goes

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.observe_request(method, endpoint(scope, asked), status, time.perf_counter() - started)


def endpoint(scope: Scope, asked: Scope) -> str:
    """The path template of the route the request matched; else of the route its path matches,
    for requests routing never labelled (FastAPI's /docs and /openapi.json, the static mount) or
    never reached (a body refused with 413 first); "unmatched" where no route matches (a 404).
    `asked`: the request's scope as it reached the middleware, the one routing matched."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else _matching(asked)


def _matching(scope: Scope) -> str:
    """The first of the app's routes the request matches, as routing tries them: a template, so
    the label stays bounded whatever path was asked for."""
    for route in _flat(getattr(getattr(scope.get("app"), "router", None), "routes", ())):
        path = getattr(route, "path", None)
        if isinstance(path, str) and route.matches(scope)[0] is not Match.NONE:
            return path
    return "unmatched"


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes, each included router's own in its place: FastAPI (0.16x) wraps a router given
    to include_router in a route of its own with no path, its routes (prefix applied) inside."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _flat(inner.routes) if inner is not None else (route,)
