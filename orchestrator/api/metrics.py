"""/metrics: the container's Prometheus metrics in the text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.observability.http import MetricsMiddleware
from orchestrator.observability.metrics import Metrics

router = APIRouter(tags=["observability"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, metrics: Metrics) -> None:
    """Serve the container's registry (its parts were given these metrics when built) and count
    every HTTP request into it."""
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
