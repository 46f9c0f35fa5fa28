"""A dry run (/v1/routes) is a preview: it is not counted as routed queries or recruitments."""

from __future__ import annotations

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask


def total(container: SkillRoute, name: str) -> float:
    """The sample's value summed over every label."""
    return sum(s.value for family in container.metrics.registry.collect() for s in family.samples if s.name == name)


def counted(container: SkillRoute) -> tuple[float, float]:
    """Queries routed, and recruitments."""
    return total(container, "skillroute_routing_decisions_total"), total(container, "skillroute_recruitments_total")


def test_a_dry_run_is_not_reported_and_a_real_route_is(container: SkillRoute) -> None:
    asks = [Ask(text="Who wrote the Analects?", k=3, seed=i) for i in range(4)]
    assert all(d.recruited for d in container.pipeline.route(container.pool.snapshot, asks, dry_run=True))
    assert counted(container) == (0, 0)
    container.pipeline.route(container.pool.snapshot, asks)
    assert counted(container) == (4, 12)
