"""An API expert whose worker or device a later deployment drops: a disabled one stayed disabled
and silently placed there (the start's check failed only routable ones), enabling it answered
200 ready, and then every budgeted query was a 500 and a plain one failed whole (its peers never
ran) on the planner's KeyError for the unknown device. A disabled one on a dropped worker stopped
the start on a PlacementError, as the API that could move it never came up."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experts.types import ExpertPlacement
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask, QueryBudget
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.services.errors import Unprocessable
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.services.pool_file import PoolFileConflict
from orchestrator.settings import BudgetSettings, DatabaseSettings
from orchestrator.store.repositories.experts import ExpertRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

pytestmark = pytest.mark.both_databases
DEVICES = Path(__file__).resolve().parents[3] / "experts" / "devices.yaml"
EDGE = mock_expert("edge", "m3").model_copy(update={"placement": ExpertPlacement(device="jetson-agx-orin")})


def _devices(folder: Path, dropped: str | None) -> str:
    """The packaged devices file, less `dropped`."""
    doc = yaml.safe_load(DEVICES.read_text())
    doc["devices"] = [d for d in doc["devices"] if d["name"] != dropped]
    path = folder / f"devices-{dropped}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _start(tmp: Path, database: DatabaseSettings, embedder: Embedder, dropped: str | None = None) -> SkillRoute:
    settings = quiet_settings(tmp / "data", database=database,
                              budgets=BudgetSettings(devices_file=_devices(tmp, dropped)))
    c = SkillRoute(settings, small_pool([mock_expert("alpha", "m1"), mock_expert("gamma", "m2")]),
                   factory=mock_or_real, embedder=embedder)
    c.bootstrap()
    return c


def _disabled_edge(tmp: Path, database: DatabaseSettings, embedder: Embedder) -> int:
    """Registered on the Jetson, profiled and disabled; the service closed."""
    c = _start(tmp, database, embedder)
    try:
        row = c.experts.register(EDGE)
        c.experts.queue.join()
        c.experts.update(row.id, ExpertChange(enabled=False))
        return row.id
    finally:
        c.close()


def test_a_disabled_expert_on_a_dropped_device_fails_at_the_start_and_enabling_it_is_a_422(
        tmp_path: Path, database: DatabaseSettings, embedder: Embedder) -> None:
    edge = _disabled_edge(tmp_path, database, embedder)
    c = _start(tmp_path, database, embedder, dropped="jetson-agx-orin")
    try:
        row = c.experts.get(edge)
        assert row.status == "failed" and "jetson-agx-orin" in (row.error or "")
        for change in (ExpertChange(enabled=True), ExpertChange({"system_prompt": "terse"})):
            with pytest.raises(Unprocessable, match="unknown device 'jetson-agx-orin'") as refused:
                c.experts.update(edge, change)
            assert refused.value.param == "placement.device" and c.experts.get(edge).status == "failed"
        budgeted = Ask(text="What is 2+2?", k=3, budget=QueryBudget(latency_s=1e7, energy_j=None))
        asked = c.queries.ask([budgeted, Ask(text="What is 2+2?", k=3, mode="topk")])
        assert [q.status for q in asked] == ["done", "done"] and all(q.decision is not None for q in asked)
        assert [sorted(q.decision.record["recruited"]) for q in asked if q.decision][1] == ["alpha", "gamma"]
        moved = ExpertChange({"placement": {"device": "local-cpu"}}, enabled=True)
        assert c.experts.update(edge, moved, background=False)[1]  # back, profiled on where it runs now
    finally:
        c.close()


def test_enabling_a_disabled_expert_placed_on_an_unknown_device_is_a_422_leaving_it_disabled(
        tmp_path: Path, database: DatabaseSettings, embedder: Embedder) -> None:
    """However it came to be stored there (a store from before the start failed such experts)."""
    c = _start(tmp_path, database, embedder, dropped="jetson-agx-orin")
    try:
        row = c.experts.register(mock_expert("edge", "m3"))
        c.experts.queue.join()
        c.experts.update(row.id, ExpertChange(enabled=False))
        with c.db.session() as s:
            ExpertRepository(s).set_spec(row.id, EDGE)
        with pytest.raises(Unprocessable, match="expert 'edge' is placed on unknown device 'jetson-agx-orin'"):
            c.experts.update(row.id, ExpertChange(enabled=True))
        assert c.experts.get(row.id).status == "disabled" and "edge" not in c.pool.snapshot.experts
    finally:
        c.close()


def test_a_disabled_expert_on_a_dropped_worker_fails_and_the_rest_start(tmp_path: Path, database: DatabaseSettings,
                                                                         embedder: Embedder) -> None:
    def start(names: tuple[str, ...]) -> SkillRoute:
        workers = {n: DeviceWorker(n, 8 * 2**30, mock_or_real) for n in names}
        return SkillRoute(quiet_settings(tmp_path, database=database), small_pool([mock_expert("alpha", "m1")]),
                          embedder=embedder, workers=workers)

    c = start(("cpu", "gpu0"))
    c.bootstrap()
    row = c.experts.register(mock_expert("g", "g1").model_copy(update={"placement": ExpertPlacement(worker="gpu0")}))
    c.experts.queue.join()
    c.experts.update(row.id, ExpertChange(enabled=False))
    c.close()
    c = start(("cpu",))
    try:
        c.bootstrap()
        failed = c.experts.get(row.id)
        assert failed.status == "failed" and "gpu0" in (failed.error or "")
        with pytest.raises(Unprocessable, match="unknown worker 'gpu0'"):
            c.experts.update(row.id, ExpertChange(enabled=True))
        assert c.pool.placement() == {"alpha": "cpu"}
    finally:
        c.close()


def test_a_pool_file_s_expert_on_a_dropped_device_stops_the_start_naming_it(
        tmp_path: Path, database: DatabaseSettings, embedder: Embedder) -> None:
    """Unchanged in the file, it was neither registered nor changed, so nothing checked it: the
    start served it ready on a device nothing can cost, and the queries it joined failed whole."""
    pool = small_pool([mock_expert("alpha", "m1"), EDGE])
    for dropped in (None, "jetson-agx-orin"):
        settings = quiet_settings(tmp_path / "data", database=database,
                                  budgets=BudgetSettings(devices_file=_devices(tmp_path, dropped)))
        c = SkillRoute(settings, pool, factory=mock_or_real, embedder=embedder)
        try:
            if dropped is None:
                c.bootstrap()
                continue
            with pytest.raises(PoolFileConflict, match="'edge' was refused: .*unknown device 'jetson-agx-orin'"):
                c.bootstrap()
        finally:
            c.close()
