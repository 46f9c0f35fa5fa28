"""The deployment as the services see it: its workers, and where each expert runs on them.

Placement is planned over every stored expert that has not failed (`scheduling.placement`), so
an expert being profiled already has its worker, and planned again whenever the pool changes:
an expert registered, profiled or removed. Each plan starts from the last one kept (the pool
stores it: every replica, and a restart, start from where the models are loaded), an expert
staying where it runs while it still fits there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence

from experts.backend import ModelSourceError
from experts.catalog import PACKAGE_PREFIX
from experts.devices import DeviceProfile
from experts.types import BaseModelSpec, ExpertSpec
from experts.workers import WorkerSpec, memory_bytes
from orchestrator.budgets.planner import device_name
from orchestrator.scheduling.placement import PlacementError, Slot, plan_placement
from orchestrator.services.errors import Unprocessable
from orchestrator.store.db import Database
from orchestrator.store.repositories.experts import ExpertRepository

log = logging.getLogger(__name__)
UNKNOWN_SIZE = 2**30  # what a model whose size cannot be read here is planned as


class Deployment:
    def __init__(self, workers: Sequence[WorkerSpec], profiles: Mapping[str, DeviceProfile],
                 memory: Callable[[BaseModelSpec], int]):
        self.workers = {w.name: w for w in workers}
        self.profiles, self._memory = dict(profiles), memory
        self.slots = [Slot(w.name, w.device, memory_bytes(w, profiles), w.gpus) for w in workers]
        # base model key → size: read once, as reading may wait on a worker busy generating
        # (its lock), and placement is planned on every read of the experts
        self._sizes: dict[str, int] = {}
        self._sizes_lock = threading.Lock()

    def plan(self, experts: Mapping[str, ExpertSpec], now: Mapping[str, str] | None = None) -> dict[str, str]:
        """Expert name → worker name (stored experts that name an unknown worker were refused);
        `now`: the plan kept last (each expert stays where it runs while it still fits there)."""
        placed = plan_placement(experts, self.slots, self._size, now)
        self._keep_sizes({s.base.key for s in experts.values()})
        return placed

    def _keep_sizes(self, keys: set[str]) -> None:
        """Forget the sizes of bases no planned expert runs on: experts come and go, and one
        back later is read again."""
        with self._sizes_lock:
            self._sizes = {k: v for k, v in self._sizes.items() if k in keys}

    def check(self, spec: ExpertSpec) -> None:
        """A 422 naming the problem when the expert is placed where nothing can run or cost it."""
        worker = spec.placement.worker
        if worker is not None and worker not in self.workers:
            raise Unprocessable(f"expert {spec.name!r} is placed on unknown worker {worker!r}; the deployment has "
                                f"{', '.join(sorted(self.workers))}", "placement.worker")
        device = device_name(spec, self.workers.get(worker or ""))
        if device not in self.profiles:
            raise Unprocessable(f"expert {spec.name!r} is placed on unknown device {device!r}; "
                                f"known: {', '.join(sorted(self.profiles))}", "placement.device")

    def _size(self, base: BaseModelSpec) -> int:
        if (known := self._sizes.get(base.key)) is not None:
            return known
        try:
            size = max(int(self._memory(base)), 0)
        except Exception as exc:  # a model this process cannot read (a file on another node)
            log.info("planning %s at %d bytes: %s", base.key, UNKNOWN_SIZE, exc)
            return UNKNOWN_SIZE
        with self._sizes_lock:
            self._sizes[base.key] = size
        return size


def fail_misplaced(db: Database, deployment: Deployment, spared: Collection[str]) -> list[str]:
    """Fail the stored experts placed on a worker or device this deployment lacks (it changed
    since they were registered), naming why: one such expert stopped every start, and the API
    that could move it never came up. A pool file's (`spared`) still fails the start, as the
    file is what to fix. The names failed."""
    failed = []
    with db.session() as s:
        repo = ExpertRepository(s)
        for row in repo.list():
            if row.status in ("failed", "removed") or row.name in spared:
                continue
            try:
                deployment.check(ExpertSpec.model_validate(row.spec))
            except Unprocessable as exc:
                _fail(repo, row.id, f"{exc}: PATCH its placement with enabled true, or remove it")
                failed.append(row.name)
    if failed:
        log.warning("experts placed where this deployment has nothing to run them failed: %s", ", ".join(failed))
    return failed


def fail_unreadable(db: Database, validate: Callable[[ExpertSpec], None], spared: Collection[str]) -> list[str]:
    """Fail the stored experts whose model file is gone or unreadable since they were registered
    (`validate`: its header, read where the expert runs), naming it: such an expert stayed ready,
    routing left it out unseen, and a query naming it got a 422 on its messages. Files only: a
    packaged model is assembled again when needed, a server may come back. A pool file's is
    spared, as above. The names failed."""
    failed = []
    with db.session() as s:
        repo = ExpertRepository(s)
        for row in repo.list(profiles=False):
            if row.status in ("failed", "removed") or row.name in spared:
                continue
            spec = ExpertSpec.model_validate(row.spec)
            try:
                if _a_file(spec):
                    validate(spec)
            except ModelSourceError as exc:
                _fail(repo, row.id, f"{exc}: put the file back and PATCH it with enabled true, or remove it")
                failed.append(row.name)
            except Exception as exc:  # its worker unreachable now (a remote one): no verdict on the file
                log.warning("could not read %s's model file on its worker: %s", row.name, exc)
    if failed:
        log.warning("experts whose model file cannot be read failed: %s", ", ".join(failed))
    return failed


def _a_file(spec: ExpertSpec) -> bool:
    return spec.base.kind == "llamacpp" and not spec.base.source.startswith(PACKAGE_PREFIX)


def _fail(repo: ExpertRepository, expert_id: int, error: str) -> None:
    """Failed whatever its status, a disabled one too: `set_status` keeps a user's disable, but a
    disabled expert is still placed (an unknown worker stopped the start all the same) and
    enabling it brought it back on a device nothing can cost, failing the queries it joined."""
    repo.set_lifecycle(expert_id, "failed")  # the user's act, overruled: nothing can run it here
    repo.set_status(expert_id, "failed", error)  # and why, which a lifecycle change clears


__all__ = ["Deployment", "PlacementError", "fail_misplaced", "fail_unreadable"]
