"""A worker pinned to a node that leaves: Ray keeps its actor restarting with nowhere to place
it and answers each call with ActorUnavailableError. Its calls said "lost mid-call … Ray
restarts it" (never) and waited 10 s for that restart each; they fail as unavailable, naming the
resource, and its batches' claims are not told call by call meanwhile."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
import ray
from ray.cluster_utils import Cluster

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest, SamplingParams
from experts.workers import WorkerSpec
from orchestrator.scheduling.worker import claims
from orchestrator.serving.remote_worker import RemoteWorker, WorkerUnavailable
from orchestrator.serving.worker_actor import NAMESPACE, spawn

pytestmark = pytest.mark.slow
M1 = BaseModelSpec(kind="mock", source="m1")
SPEC = WorkerSpec(name="edge-2", device="jetson-agx-orin", resource="edge-2")
WAIT_S = 60.0


def mock(spec: BaseModelSpec) -> MockBackend:
    return MockBackend(spec.key)


def request(rid: str) -> GenerationRequest:
    return GenerationRequest(request_id=rid, messages=[ChatMessage(role="user", content=rid)],
                             sampling=SamplingParams(temperature=0))


@pytest.fixture
def left(monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteWorker]:
    """The worker, once answered on its node, after the node has left (and the cluster knows).
    Ray's temporary folder is the test's own: the simulated cluster rewrites its address file."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are bounded
    monkeypatch.setenv("RAY_TMPDIR", folder)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    edge = cluster.add_node(num_cpus=1, resources={SPEC.resource: 1})
    ray.init(address=cluster.address, namespace=NAMESPACE)
    try:
        worker = RemoteWorker(spawn(SPEC, 2**30, mock), SPEC, 2**30)
        assert worker.generate(M1, [request("before")])[0].error is None
        cluster.remove_node(edge, allow_graceful=False)
        deadline = time.monotonic() + WAIT_S
        while any(n["Alive"] and n["Resources"].get(SPEC.resource) for n in ray.nodes()):
            assert time.monotonic() < deadline, "the cluster never marked the node dead"
            time.sleep(0.2)  # polling the cluster's view of its nodes
        yield worker
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_worker_whose_node_left_is_unavailable_naming_its_resource_without_waiting_for_a_restart(
        left: RemoteWorker) -> None:
    for call in (lambda: left.generate(M1, [request("g")]), lambda: left.ensure_loaded(M1),
                 lambda: list(left.stream(M1, request("s")))):
        started = time.monotonic()
        with pytest.raises(WorkerUnavailable, match="resource 'edge-2'"):
            call()
        assert time.monotonic() - started < 8.0  # Ray's own answer (~2 s), not a 10 s wait for a restart
    asked = 0
    ask = left.ask

    def counted(method: str, *args: object, timeout: float | None = None) -> object:
        nonlocal asked
        asked += method == "hold_claims"
        return ask(method, *args, timeout=timeout)

    left.ask = counted  # type: ignore[method-assign]
    with claims(left).claim([M1.key]) as held:
        held.stage(M1.key)
    assert asked == 1  # the first tell failed: the rest wait for the beat
