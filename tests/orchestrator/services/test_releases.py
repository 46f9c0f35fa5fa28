"""A model no remaining expert runs on is unloaded, and stays so: a batch routed before the
change, or the start's connecting to servers, loaded it again after the unload, for good."""

from __future__ import annotations

from pathlib import Path

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.pools.schema import AggregatorConfig
from orchestrator.scheduling.worker import DeviceWorker
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool
from tests.orchestrator.scheduling.test_served_elsewhere import Gate
from tests.orchestrator.services.test_query_lanes import WAIT_S, Gates, voted
from tests.orchestrator.test_container import until


def expert_id(c: SkillRoute, name: str) -> int:
    return next(e.id for e in c.experts.all(profiles=False) if e.name == name)


def on(worker: str, spec: ExpertSpec) -> ExpertSpec:
    return spec.model_copy(update={"placement": ExpertPlacement(worker=worker, params_b=spec.placement.params_b)})


def test_an_aggregator_removed_before_its_stage_is_unloaded_after_the_batch(tmp_path: Path,
                                                                              embedder: Embedder) -> None:
    """Its worker had no claim on it until the experts' answers were in: unloaded at the DELETE,
    it was loaded again for the aggregation and kept."""
    gates = Gates()
    factory = lambda spec: MockBackend(spec.key, gate=None if spec.source == "mg" else gates)  # noqa: E731
    workers = {n: DeviceWorker(n, 8 * 2**30, factory) for n in ("w1", "w2")}
    experts = [on("w1", mock_expert("a", "m1", "math persona")), on("w1", mock_expert("b", "m2", "law persona")),
               on("w2", mock_expert("g", "mg"))]
    pool = small_pool(experts).model_copy(update={"aggregator": AggregatorConfig(mode="llm", fixed="g")})
    c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=factory, workers=workers)
    c.bootstrap()
    try:
        asked = c.queries.submit([Ask(text="HOLD1 What is the capital of France?", k=2, mode="topk")])
        assert gates.entered[1].wait(WAIT_S)
        c.experts.remove(expert_id(c, "g"))  # w2 is free, but the batch has its aggregation there to come
        gates.release[1].set()
        (row,) = asked.result(WAIT_S)
        assert ("g", "aggregator") in [(x.expert, x.role) for x in row.generations]
        until(lambda: "mock:mg" not in c.fleet["w2"].resident(), within_s=WAIT_S)
    finally:
        gates.release[1].set()
        c.close()


def test_an_expert_removed_while_the_start_connects_to_its_server_stays_unloaded(tmp_path: Path,
                                                                                 embedder: Embedder) -> None:
    server = Gate(holds="models")  # its model list, read by the start's connecting, waits for the test
    with live_server(server.app()) as url:
        far = ExpertSpec(name="there", base=BaseModelSpec(kind="openai", source=f"{url}/v1", model="m"),
                         placement=ExpertPlacement(params_b=7.0))
        pool = voted([mock_expert("here", "m1"), far])
        server.release.set()
        first = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=mock_or_real)
        first.bootstrap()  # profiled into the store
        first.close()
        server.release.clear()
        c = SkillRoute(quiet_settings(tmp_path), pool, embedder=embedder, factory=mock_or_real)  # a restart
        c.bootstrap()
        try:
            assert server.arrived.wait(WAIT_S)  # connecting
            c.experts.remove(expert_id(c, "there"))  # finds nothing loaded to unload
            server.release.set()
            worker = c.fleet[c.fleet.default]
            until(lambda: worker.residency_counts().get(far.base.key, (0, 0))[0] == 1, within_s=WAIT_S)
            until(lambda: far.base.key not in worker.resident(), within_s=WAIT_S)
        finally:
            server.release.set()
            c.close()


def test_a_model_no_worker_held_at_the_removal_is_unloaded_once_a_running_batch_loaded_it(
        container: SkillRoute) -> None:
    """Not resident anywhere at the DELETE, there was nothing to unload; a batch running then
    loaded it for a stage it still had (its aggregation), and it stayed."""
    c = container
    spec = c.pool.snapshot.experts["gamma"]
    worker = c.fleet[c.pool.snapshot.worker_of("gamma", c.fleet.default)]
    worker.unload(spec.base.key)
    running = c.queries.running.begin()  # a batch routed before the removal
    try:
        c.experts.remove(expert_id(c, "gamma"))
        worker.ensure_loaded(spec.base)  # its stage on the removed expert's model
    finally:
        c.queries.running.end(running)
    until(lambda: spec.base.key not in worker.resident(), within_s=WAIT_S)
