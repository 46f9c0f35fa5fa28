"""/dashboard: the web dashboard's page, its static files, and the JSON state it polls."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from orchestrator.api.auth import CurrentCaller
from orchestrator.api.deps import Container, reader_of
from orchestrator.observability.dashboard import DashboardService
from orchestrator.services.errors import NotFound

# dashboards/web of the source checkout, else of the working directory (an installed package has
# no repository around it: the compose file mounts dashboards/ into the service's working directory)
SOURCE_WEB_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "web"
WEB_DIR = SOURCE_WEB_DIR if SOURCE_WEB_DIR.is_dir() else Path.cwd() / "dashboards" / "web"

router = APIRouter(prefix="/dashboard", tags=["dashboard"])


@router.get("", include_in_schema=False)
def page() -> FileResponse:
    index = WEB_DIR / "index.html"
    if not index.is_file():
        raise NotFound(f"dashboard files not found at {WEB_DIR}", "path")
    return FileResponse(index, headers={"Cache-Control": "no-cache"})


@router.get("/api/state")
def state(c: Container, caller: CurrentCaller,
          limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    """Pool profiles, recent decisions, recruitment share, residency timeline, queue, budgets;
    the decisions and recruitments only of the queries the caller may read."""
    service = DashboardService(c.db, c.pool, c.fleet, c.queries.window, c.queries.waiting)
    return service.state(limit, reader_of(caller))


def install(app: FastAPI) -> None:
    """The page's scripts, styles and vendored chart library; check_dir off so the API starts without them."""
    app.mount("/dashboard/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="dashboard-static")
