"""/metrics: the app's Prometheus metrics in the text exposition format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.observability.http import MetricsMiddleware
from orchestrator.observability.instrument import instrument

if TYPE_CHECKING:
    from orchestrator.container import SkillRoute

router = APIRouter(tags=["observability"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, container: SkillRoute) -> None:
    """This app's own metrics registry, fed by the container's probes and every HTTP request."""
    app.state.metrics = instrument(container)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
