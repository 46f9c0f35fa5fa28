"""/health: the process is up and how much of the pool is ready."""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.deps import Container

router = APIRouter(tags=["health"])


@router.get("/health")
def health(c: Container) -> dict[str, object]:
    snap = c.pool.snapshot
    return {"status": "ok", "experts_ready": len(snap.experts), "aggregator": snap.aggregator,
            "resident_models": sorted(c.worker.resident())}
