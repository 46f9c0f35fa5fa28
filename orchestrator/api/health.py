"""/health: the process is up and how much of the pool is ready; /ready: whether it can answer."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import Container
from orchestrator.services.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/health")
def health(c: Container) -> dict[str, object]:
    snap = c.pool.snapshot
    resident = {name: sorted(keys) for name, keys in c.fleet.resident().items()}
    return {"status": "ok", "pool": c.pool_config.name, "experts_ready": len(snap.experts),
            "aggregator": snap.aggregator, "resident_models": sorted({k for keys in resident.values() for k in keys}),
            "workers": resident}


@router.get("/ready", responses={503: {"description": "No expert is profiled and ready yet."}})
def ready(c: Container) -> dict[str, object]:
    """200 only when the pool has a ready expert to route to (a readiness probe), else 503."""
    snap = c.pool.snapshot
    if not snap.experts:
        raise NotReady("no expert in the pool is ready yet")
    return {"status": "ready", "experts_ready": len(snap.experts), "aggregator": snap.aggregator}
