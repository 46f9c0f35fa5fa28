"""The deployment as the services see it: where experts run on its workers."""

from __future__ import annotations

from pathlib import Path

from experts.devices import load_devices
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec
from experts.workers import WorkerSpec
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.services.deployment import Deployment
from orchestrator.services.expert_changes import ExpertChange
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool


def test_personas_over_one_base_pinned_to_two_workers_each_run_where_named() -> None:
    """README: an expert runs on the worker its pool entry names; a persona over the same base
    pinned to another worker moved it there instead."""
    base = BaseModelSpec(kind="mock", source="qwen-1.5b")
    experts = {name: ExpertSpec(name=name, base=base, system_prompt=name, placement=ExpertPlacement(worker=worker))
               for name, worker in (("chemist", "server"), ("lawyer", "edge-1"))}
    workers = [WorkerSpec(name="server", device="h100-server", gpus=1),
               WorkerSpec(name="edge-1", device="jetson-agx-orin")]
    deployment = Deployment(workers, load_devices(), lambda b: 2**30)
    for spec in experts.values():
        deployment.check(spec)
    assert deployment.plan(experts) == {"chemist": "server", "lawyer": "edge-1"}


def test_model_sizes_are_kept_only_for_the_experts_planned() -> None:
    """Each base's size was kept forever as experts came and went; planned without them, it goes."""
    read: list[str] = []

    def memory(base: BaseModelSpec) -> int:
        read.append(base.source)
        return 2**30

    deployment = Deployment([WorkerSpec(name="cpu", device="local-cpu")], load_devices(), memory)
    for i in range(5):
        spec = ExpertSpec(name=f"e{i}", base=BaseModelSpec(kind="mock", source=f"m{i}"))
        deployment.plan({spec.name: spec})
        deployment.plan({spec.name: spec})  # planned again: read once
    assert read == [f"m{i}" for i in range(5)] and set(deployment._sizes) == {"mock:m4"}


def test_an_api_expert_on_a_worker_the_deployment_lost_fails_and_the_rest_start(tmp_path: Path,
                                                                                 embedder: Embedder) -> None:
    """Registered on `gpu0`, restarted where only `cpu` is: the start failed with a placement
    error naming no expert, and the API that could move it never came up."""
    def service(names: tuple[str, ...]) -> SkillRoute:
        workers = {n: DeviceWorker(n, 8 * 2**30, mock_or_real) for n in names}
        return SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]), embedder=embedder,
                          workers=workers)

    c = service(("cpu", "gpu0"))
    c.bootstrap()
    c.experts.register(mock_expert("g", "g1").model_copy(update={"placement": ExpertPlacement(worker="gpu0")}))
    c.experts.queue.join()
    c.close()
    c = service(("cpu",))
    try:
        c.bootstrap()
        rows = {e.name: e for e in c.experts.all()}
        assert rows["alpha"].status == "ready" and rows["g"].status == "failed"
        assert "'g'" in (rows["g"].error or "") and "gpu0" in (rows["g"].error or "")
        row, profiling = c.experts.update(rows["g"].id, ExpertChange({"placement": {"worker": "cpu"}}, enabled=True))
        assert profiling and c.pool.placement()["g"] == "cpu"
    finally:
        c.close()


def test_registering_an_expert_leaves_the_others_where_their_models_are(tmp_path: Path, embedder: Embedder) -> None:
    """Placement was planned afresh on each refresh: registering beta (3 GB) moved untouched
    alpha (1 GB) from cpu to edge, and its next query loaded m1 there too, never released on cpu."""
    sizes = {"mock:m1": 2**30, "mock:m2": 3 * 2**30}
    workers = {n: DeviceWorker(n, 8 * 2**30, lambda b: MockBackend(b.key, memory=sizes[b.key]))
               for n in ("cpu", "edge")}
    c = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]), embedder=embedder,
                   workers=workers)
    c.bootstrap()
    try:
        assert c.pool.snapshot.placement["alpha"] == "cpu"
        c.experts.register(mock_expert("beta", "m2"), profile=False)
        c.pool.refresh()
        assert c.pool.snapshot.placement == {"alpha": "cpu", "beta": "edge"}
        c.queries.ask([Ask(text="What is 2+2?", expert="alpha")])
        assert [n for n, w in workers.items() if "mock:m1" in w.resident()] == ["cpu"]
    finally:
        c.close()
    again = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]), embedder=embedder,
                       workers=workers)  # a restart (or another replica) plans from the kept plan
    again.bootstrap()
    try:
        assert again.pool.placement() == {"alpha": "cpu", "beta": "edge"}
    finally:
        again.close()


def test_a_plan_keeps_bases_where_they_run_until_they_no_longer_fit() -> None:
    workers = [WorkerSpec(name=n, device="local-cpu", memory_gb=4) for n in ("a", "b")]
    deployment = Deployment(workers, load_devices(), lambda b: 3 * 2**30)
    x = ExpertSpec(name="x", base=BaseModelSpec(kind="mock", source="m"))
    pin = ExpertSpec(name="p", base=BaseModelSpec(kind="mock", source="n"), placement=ExpertPlacement(worker="a"))
    before = deployment.plan({"x": x})
    after = deployment.plan({"x": x, "p": pin}, before)
    assert before == {"x": "a"} and after == {"x": "b", "p": "a"}  # p took its room
    assert deployment.plan({"x": x}, after) == {"x": "b"}  # p gone: x stays where it runs now
