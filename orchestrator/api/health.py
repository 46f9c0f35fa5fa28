"""/health: the process is up, how far its start has come and how much of the pool is ready;
/ready: whether it can answer (503 naming what still runs: profiling, recovering N queries)."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import RawContainer
from orchestrator.services.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/health")
def health(c: RawContainer) -> dict[str, object]:
    """Answers as soon as HTTP is served, whatever the start is still doing."""
    status = c.startup.status
    snap = c.pool.snapshot if status.serving else None  # not while a start is still loading it
    answers, unavailable = c.fleet.each(lambda w: w.resident())  # an unreachable worker is named, not a 500
    resident = {name: sorted(keys) for name, keys in answers.items()}
    return {"status": "ok", "pool": c.pool_config.name, "startup": status.phase,
            "recovering": status.recovering, "experts_ready": len(snap.ready) if snap else 0,
            "aggregator": snap.aggregator if snap else None,
            "resident_models": sorted({k for keys in resident.values() for k in keys}), "workers": resident,
            "unavailable_workers": unavailable}


@router.get("/ready", responses={503: {"description": "Still starting (loading or profiling the pool, recovering "
                                                      "the queries a crash left), or no expert is ready."}})
def ready(c: RawContainer) -> dict[str, object]:
    """200 only when the start is done and the pool has a ready expert to route to (a readiness
    probe), else 503 naming what is still running."""
    status = c.startup.status
    if status.phase not in ("idle", "ready"):
        raise NotReady(status.describe())
    snap = c.pool.snapshot
    if not snap.ready:  # experts still profiling are only explored: every query would be a 503
        profiling = f" ({len(snap.uncertain)} being profiled)" if snap.uncertain else ""
        raise NotReady(f"no expert in the pool is ready yet{profiling}")
    return {"status": "ready", "experts_ready": len(snap.ready), "aggregator": snap.aggregator}
