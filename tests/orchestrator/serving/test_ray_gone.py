"""A worker proxy asked after this process's Ray was shut down (a test's teardown, a replica
closing while a claims beat still runs): the call started a Ray of its own (Ray's auto-init),
which the next `ray.init` in the process then refused ("called ray.init twice"). So did a call under
way at the shutdown, cut short by its actor's death, looking up the actor's name."""

from __future__ import annotations

import shutil
import tempfile

import pytest
import ray
from ray.exceptions import ActorDiedError

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from experts.workers import WorkerSpec
from orchestrator.scheduling.worker import claims
from orchestrator.serving.remote_worker import RemoteWorker, WorkerLost, WorkerUnavailable
from orchestrator.serving.worker_actor import spawn

pytestmark = pytest.mark.slow
SPEC = WorkerSpec(name="gone", device="local-cpu")


def mock(spec: BaseModelSpec) -> MockBackend:
    return MockBackend(spec.key)


def test_a_proxy_asked_after_ray_shut_down_starts_no_ray_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's temporary folder, this test's own
    monkeypatch.setenv("RAY_TMPDIR", folder)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        proxy = RemoteWorker(spawn(SPEC, 2**30, mock), SPEC, 2**30)
        assert proxy.resident() == set()
    finally:
        ray.shutdown()
    try:
        with pytest.raises(WorkerUnavailable, match="Ray is not running"):
            proxy.resident()
        with claims(proxy).claim(["mock:m1"]) as held:  # its tells fail quietly
            held.stage("mock:m1")
        lost = WorkerLost("a call under way when Ray shut down, cut short by its actor's death")
        lost.__cause__ = ActorDiedError()
        assert not proxy._gone_for_good(lost, proxy.actor)  # the lookup of its name started a Ray
        assert not ray.is_initialized()
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
