"""Wires one app's metrics into a SkillRoute: the probes, and what is read at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.observability.metrics import Metrics

if TYPE_CHECKING:
    from orchestrator.container import SkillRoute


def instrument(container: SkillRoute) -> Metrics:
    """Give the container's parts a fresh `Metrics` as their probe and return it."""
    metrics = Metrics()
    worker, window = container.worker, container.queries.window
    for part in (worker, window, container.pipeline, container.queries):
        part.probe = metrics
    # a RemoteWorker's `events` is a remote call; reading it per scrape keeps Ray and inline alike
    metrics.watch(worker.name, lambda: worker.events, window.depth, lambda: len(container.pool.snapshot.experts))
    return metrics
