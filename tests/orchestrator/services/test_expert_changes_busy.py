"""An expert change never waits for a generation on a worker it does not touch: placing one
read the model's size through the default worker's device lock (held through a whole chunk),
under the service's lock, so a DELETE waited behind it too."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from experts.types import ExpertPlacement, ExpertSpec
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.store.repositories.experts import ExpertRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, quiet_settings
from tests.orchestrator.services.test_query_lanes import WAIT_S, Gates, voted


def pinned(name: str, base: str, worker: str) -> ExpertSpec:
    return mock_expert(name, base).model_copy(update={"placement": ExpertPlacement(worker=worker)})


@pytest.fixture
def busy(tmp_path: Path, embedder: Embedder) -> Iterator[SkillRoute]:
    """Two workers; w1 (the default) generating until the test ends."""
    gates = Gates()
    workers = {n: DeviceWorker(n, 8 * 2**30, gates.factory) for n in ("w1", "w2")}
    pool = voted([pinned("a", "m1", "w1"), pinned("b", "m2", "w2"), pinned("f", "m3", "w2")])
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=gates.factory, workers=workers)
    c.bootstrap()
    c.queries.submit([Ask(text="HOLD1 a long answer", expert="a")])
    assert gates.entered[1].wait(WAIT_S)
    try:
        yield c
    finally:
        gates.release[1].set()
        c.close()


def done_while_w1_generates(change: Callable[[], object]) -> bool:
    thread = threading.Thread(target=change, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    return not thread.is_alive()


def expert_id(c: SkillRoute, name: str) -> int:
    return next(e.id for e in c.experts.all(profiles=False) if e.name == name)


def test_enabling_a_failed_expert_on_an_idle_worker(busy: SkillRoute) -> None:
    f = expert_id(busy, "f")
    with busy.db.session() as s:  # failed: its model's size is no longer kept for placement
        ExpertRepository(s).set_lifecycle(f, "failed")
        ExpertRepository(s).set_status(f, "failed", "its server was down")
    busy.pool.refresh()
    assert done_while_w1_generates(lambda: busy.experts.update(f, ExpertChange(enabled=True)))


def test_registering_on_an_idle_worker(busy: SkillRoute) -> None:
    assert done_while_w1_generates(lambda: busy.experts.register(pinned("n", "m9", "w2"), profile=False))
