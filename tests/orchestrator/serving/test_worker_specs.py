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


def test_an_api_key_is_kept_out_of_an_actors_settings_but_its_rotation_is_not() -> None:
    spec = WorkerSpec(name="cpu", device="local-cpu")
    made = [worker_actor.configuration(spec, 2**30, worker_actor.backends(BackendOptions(openai_api_key=key)))
            for key in ("sk-OLD-SECRET-1111", "sk-NEW-SECRET-2222", "sk-NEW-SECRET-2222")]
    assert made[0] != made[1] == made[2]  # a rotated key makes the actor anew; the same one keeps it
    assert not any("SECRET" in m for m in made)
    assert "SECRET" not in repr(BackendOptions(openai_api_key="sk-OLD-SECRET-1111"))
