"""What the budgets learned of this machine's speed, read back at a start.

The planner scales the local device profile by each model's recent runs (`BudgetPlanner.record`,
`experts.calibration.Slowdown`): the replies of its profiling and of the queries since. Those
runs live in the store already (each graded validation answer and each generation keeps its
tokens and wall time), so a restart feeds the planner each local model's last runs in the order
they ran, profiling first. Without this, the first budgeted queries after a restart were
costed by the uncorrected profile, which on a loaded shared CPU under-predicts. The aggregator
benchmark's replies teach the running planner too but are not stored (their prompts are
synthetic tasks, not kept), so a restart lacks those few.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from sqlalchemy.orm import Session

from experts.types import ExpertSpec
from experts.workers import WorkerSpec
from orchestrator.budgets.planner import BudgetPlanner, Site, Timed, site
from orchestrator.store.db import Database
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.queries import QueryRepository
from orchestrator.store.repositories.validation import ValidationRepository

Placed = tuple[int, ExpertSpec, Site]  # an expert's row id, spec and site


def restore_timings(db: Database, planner: BudgetPlanner, placement: Mapping[str, str],
                    workers: Mapping[str, WorkerSpec]) -> int:
    """Feed a planner that has timed nothing yet the stored runs of every local expert in
    `placement` (name → worker): per base model, the last `window` profiling runs, then the last
    `window` generations. Returns how many runs it fed (0 when the planner had timed some)."""
    if not planner.slowdown.empty:
        return 0  # its own runs are newer: older ones appended after them would displace them
    by_base = _local_by_base(db, planner, placement, workers)
    runs: list[tuple[ExpertSpec, Site, Timed]] = []
    with db.session() as s:
        for placed in by_base.values():
            runs += _stored_runs(s, placed, planner.slowdown.window)
    planner.record(runs)
    return len(runs)


def _local_by_base(db: Database, planner: BudgetPlanner, placement: Mapping[str, str],
                   workers: Mapping[str, WorkerSpec]) -> dict[str, list[Placed]]:
    """The placed experts whose replies teach the planner, at their sites, grouped by base
    model: the planner's correction is per base model, so its window spans that model's experts."""
    with db.session() as s:
        stored = ExpertRepository(s).list(profiles=False)
        rows = [(r.id, ExpertSpec.model_validate(r.spec)) for r in stored if r.name in placement]
    by_base = defaultdict[str, list[Placed]](list)
    for row_id, spec in rows:
        where = site(spec, workers.get(placement[spec.name]))
        if planner.learns_from(spec, where):
            by_base[spec.base.key].append((row_id, spec, where))
    return by_base


def _stored_runs(session: Session, placed: list[Placed], window: int) -> list[tuple[ExpertSpec, Site, Timed]]:
    by_id = {row_id: (spec, where) for row_id, spec, where in placed}
    by_name = {spec.name: (spec, where) for _, spec, where in placed}
    profiling = ValidationRepository(session).timings(list(by_id), window)
    queries = QueryRepository(session).timings(list(by_name), window)
    return [(*by_id[r.expert_id], r) for r in profiling] + [(*by_name[r.expert], r) for r in queries]
