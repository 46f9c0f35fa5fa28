"""Workers whose actor is not there, or not theirs: a declared worker whose node has not joined,
an actor that died for good, one whose process dies mid-call and is restarted by Ray, one left
by an earlier deploy with other settings. Ray runs in this process (one CPU, mock weights); a
node that never joins is a custom resource no node has."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from prometheus_client import CollectorRegistry, generate_latest

from experts.backend import ExpertBackend
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest, SamplingParams
from experts.workers import WorkerSpec
from orchestrator.observability.metrics import ResidencyCollector
from orchestrator.scheduling.fleet import Fleet
from orchestrator.serving import remote_worker
from orchestrator.serving.app import device_workers
from orchestrator.serving.remote_worker import RemoteWorker
from orchestrator.serving.worker_actor import NAMESPACE, actor_name, spawn
from orchestrator.settings import BudgetSettings, Settings

pytestmark = pytest.mark.slow  # only because it starts Ray (~40 s for the module)

PACKAGED = Path(__file__).resolve().parents[3] / "experts" / "devices.yaml"
M1 = BaseModelSpec(kind="mock", source="m1")
REACH_S = 3.0  # the grace an unplaced actor gets here (the service's is longer)


class DiesOnce:
    """Mock backends whose first generate kills the actor's process (an OOM kill, a segfault);
    the restarted process finds the marker file and answers. Travels to the actor by value."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __call__(self, spec: BaseModelSpec) -> ExpertBackend:
        return MockBackend(spec.key, delay_s=self._die_once)

    def _die_once(self, _request: GenerationRequest) -> float:
        if not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return 0.0


def request(rid: str, temperature: float = 0.0) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=[ChatMessage(role="user", content=f"q{rid}")],
                             sampling=SamplingParams(temperature=temperature))


def finishes(work: object, within_s: float) -> bool:
    """Whether `work()` returns within `within_s` (run on a daemon thread: a hang fails the test)."""
    thread = threading.Thread(target=work, daemon=True)  # type: ignore[arg-type]
    thread.start()
    thread.join(within_s)
    return not thread.is_alive()


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_worker, "REACH_TIMEOUT_S", REACH_S, raising=False)


@pytest.fixture
def declared(local_ray: None, short_grace: None, tmp_path: Path) -> Iterator[dict[str, RemoteWorker]]:
    """The replica's workers from a devices file declaring `edge-9`, whose node never joins."""
    devices = tmp_path / "devices.yaml"
    devices.write_text(PACKAGED.read_text() + "\nworkers:\n  - {name: cpu-t, device: local-cpu}\n"
                       "  - {name: edge-9, device: jetson-agx-orin, resource: edge-9}\n")
    settings = Settings(data_dir=tmp_path / "data", budgets=BudgetSettings(devices_file=str(devices)))
    built: dict[str, dict[str, RemoteWorker]] = {}
    assert finishes(lambda: built.setdefault("w", device_workers(settings, 0)), within_s=60), \
        "building the workers waited for a node that has not joined"
    yield built["w"]
    for w in built["w"].values():
        ray.kill(w.actor, no_restart=True)  # detached: they outlive the test otherwise


def test_a_worker_whose_node_has_not_joined_fails_its_own_calls_naming_the_resource(declared) -> None:  # type: ignore[no-untyped-def]
    edge, cpu = declared["edge-9"], declared["cpu-t"]
    assert (edge.name, cpu.name) == ("edge-9", "cpu-t")
    started = time.monotonic()
    with pytest.raises(remote_worker.WorkerUnavailable, match="resource 'edge-9'"):
        edge.generate(M1, [request("a")])
    assert time.monotonic() - started < REACH_S + 5  # the grace, not forever
    started = time.monotonic()
    with pytest.raises(remote_worker.WorkerUnavailable):
        edge.ensure_loaded(M1)
    assert time.monotonic() - started < 1.0  # past the grace: at once
    assert cpu.resident() == set() and cpu.total_loads() == 0  # the other worker answers


def test_status_reads_name_an_unreachable_worker_instead_of_failing(declared) -> None:  # type: ignore[no-untyped-def]
    edge, cpu = declared["edge-9"], declared["cpu-t"]
    lost = RemoteWorker(spawn(WorkerSpec(name="lost-t", device="local-cpu"), 2**30))  # answers: it is up
    assert lost.resident() == set()
    ray.kill(lost.actor, no_restart=True)  # its process gone for good: Ray answers at once that it died
    fleet = Fleet({"cpu-t": cpu, "edge-9": edge, "lost-t": lost})
    answers, unavailable = fleet.each(lambda w: w.resident())
    assert answers == {"cpu-t": set()} and set(unavailable) == {"edge-9", "lost-t"}
    assert "gone for good" in unavailable["lost-t"] and "edge-9" in unavailable["edge-9"]
    registry = CollectorRegistry()
    registry.register(ResidencyCollector({n: w.residency_counts for n, w in fleet.workers.items()}))
    text = generate_latest(registry).decode()
    assert 'skillroute_worker_available{worker="cpu-t"} 1.0' in text
    assert 'skillroute_worker_available{worker="edge-9"} 0.0' in text
    assert 'skillroute_worker_available{worker="lost-t"} 0.0' in text
    fleet.shutdown()  # an unreachable worker does not stop the others' shutdown


def test_a_greedy_call_cut_short_by_the_actors_death_runs_again_once_it_is_back(local_ray: None,
                                                                               tmp_path: Path) -> None:
    worker = RemoteWorker(spawn(WorkerSpec(name="dies-t", device="local-cpu"), 2**30, DiesOnce(tmp_path / "died")))
    try:
        pid = ray.get(worker.actor.info.remote())["pid"]
        gens = worker.generate(M1, [request("g1"), request("s1", temperature=0.7), request("g2")])
        assert (tmp_path / "died").exists() and ray.get(worker.actor.info.remote())["pid"] != pid
        assert [g.request_id for g in gens] == ["g1", "s1", "g2"]
        assert gens[0].error is None and gens[2].error is None and gens[0].text
        assert gens[1].error is not None and "WorkerLost" in gens[1].error  # a sample is not rerun
    finally:
        ray.kill(worker.actor, no_restart=True)


def test_an_actor_made_for_other_settings_is_made_anew_and_one_made_alike_is_kept(local_ray: None) -> None:
    spec = WorkerSpec(name="stale-t", device="local-cpu")
    old = spawn(spec, 2**30)
    try:
        assert ray.get(old.info.remote(), timeout=60)["memory_budget"] == 2**30
        new = spawn(spec, 4 * 2**30)  # a redeploy with a larger budget
        info = ray.get(new.info.remote(), timeout=60)
        assert info["memory_budget"] == 4 * 2**30
        assert ray.get(spawn(spec, 4 * 2**30).info.remote(), timeout=60)["pid"] == info["pid"]  # alike: kept
    finally:
        ray.kill(ray.get_actor(actor_name("stale-t"), namespace=NAMESPACE), no_restart=True)
