"""Which actors a deployment asks Ray for, and what makes an actor's settings differ; no Ray started."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from experts.factory import make_backend
from experts.options import BackendOptions
from experts.workers import WorkerSpec
from orchestrator.serving import worker_actor
from orchestrator.serving.worker_actor import cluster_workers


def test_on_a_gpu_machine_the_cpu_worker_comes_first_and_so_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_actor.ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    workers = cluster_workers([], memory_gb=4, cpu_reservation=2)
    assert [(w.name, w.cpus, w.gpus) for w in workers] == [("cpu", 2, 0), ("gpu0", 0, 1)]


def test_an_actors_settings_are_its_spec_budget_and_backend_options() -> None:
    configuration = worker_actor.configuration
    spec = WorkerSpec(name="cpu", device="local-cpu")
    backends = functools.partial(make_backend, options=BackendOptions(data_dir=Path("/a")))
    same = configuration(spec, 2**30, functools.partial(make_backend, options=BackendOptions(data_dir=Path("/a"))))
    assert configuration(spec, 2**30, backends) == same and "0x" not in same  # no addresses: alike across processes
    assert configuration(spec, 2 * 2**30, backends) != same
    assert configuration(spec.model_copy(update={"resource": "edge-1"}), 2**30, backends) != same
    other = functools.partial(make_backend, options=BackendOptions(data_dir=Path("/b")))
    assert configuration(spec, 2**30, other) != same
