"""Where a worker without a `resource` runs, on a simulated two-node Ray cluster. Given a home
(`skillroute serve`'s node) the CPU worker runs there, never on another node with more room,
which would have neither its data dir nor the CPU it is costed as. Without one (a replica under
KubeRay, whose head offers no CPUs) it goes where its CPUs are, and a GPU worker goes where a
GPU is, home or not: one is made per GPU of the whole cluster. And a worker the devices file no
longer declares loses its detached actor on the next spawn."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest
import ray
from ray.cluster_utils import Cluster

from experts.mock import MockBackend
from experts.types import BaseModelSpec
from experts.workers import WorkerSpec
from orchestrator.serving.worker_actor import NAMESPACE, actor_name, cluster_workers, spawn, spawn_all

pytestmark = pytest.mark.slow  # only because it starts a Ray cluster (~15 s)


def mocks(spec: BaseModelSpec) -> MockBackend:
    return MockBackend(spec.key)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, str]]:
    """The driver's (head) node with one CPU, and another node with four and the cluster's one
    GPU: Ray's own choice would put actors on the roomier one."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    other = made.add_node(num_cpus=4, num_gpus=1)
    try:
        ray.init(address=made.address, namespace=NAMESPACE)
        made.wait_for_nodes()
        yield ray.get_runtime_context().get_node_id(), other.node_id
    finally:
        ray.shutdown()
        made.shutdown()


def node_of(handle: object) -> str:
    return str(ray.get(handle.__ray_call__.remote(  # type: ignore[attr-defined]
        lambda _self: ray.get_runtime_context().get_node_id()), timeout=30))


def kill(*names: str) -> None:
    for name in names:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(actor_name(name), namespace=NAMESPACE), no_restart=True)


def test_a_cpu_worker_given_a_home_runs_there_though_another_node_has_more_room(cluster: tuple[str, str]) -> None:
    head, _ = cluster
    names = [f"local{i}" for i in range(4)]
    try:
        handles = [spawn(WorkerSpec(name=name, device="local-cpu", cpus=1.0 if i == 0 else 0.0), 2**30, mocks, head)
                   for i, name in enumerate(names)]
        assert [node_of(h) for h in handles] == [head] * len(names)
    finally:
        kill(*names)


def test_an_actor_made_on_another_home_is_made_anew_on_this_one(cluster: tuple[str, str]) -> None:
    head, other = cluster
    spec = WorkerSpec(name="moved", device="local-cpu")
    try:
        assert node_of(spawn(spec, 2**30, mocks, home=other)) == other  # e.g. a service that ran there
        assert node_of(spawn(spec, 2**30, mocks, home=head)) == head
    finally:
        kill("moved")


def test_without_a_home_the_cpu_worker_goes_where_its_cpus_are(cluster: tuple[str, str]) -> None:
    """The spawning process's node (here the head, as a replica's can be under KubeRay) has
    too few CPUs for it: pinned there, it would never run."""
    _, other = cluster
    try:
        assert node_of(spawn(WorkerSpec(name="roomy", device="local-cpu", cpus=2.0), 2**30, mocks)) == other
    finally:
        kill("roomy")


def test_a_gpu_worker_goes_where_the_gpu_is_whatever_its_home(cluster: tuple[str, str]) -> None:
    head, other = cluster
    gpus = [w for w in cluster_workers([], memory_gb=1, cpu_reservation=1) if w.gpus]
    assert [w.name for w in gpus] == ["gpu0"]  # the cluster's GPU, though its home has none
    try:
        assert node_of(spawn(gpus[0], 2**30, mocks, home=head)) == other
    finally:
        kill("gpu0")


def test_a_worker_no_longer_declared_loses_its_actor(cluster: tuple[str, str]) -> None:
    kept, dropped = (WorkerSpec(name=n, device="local-cpu", memory_gb=1.0) for n in ("kept", "dropped"))
    try:
        spawn_all([kept, dropped], {})
        assert {actor_name("kept"), actor_name("dropped")} <= names_in_namespace()
        spawn_all([kept], {})
        deadline = time.monotonic() + 10
        while actor_name("dropped") in names_in_namespace() and time.monotonic() < deadline:
            time.sleep(0.05)  # the GCS frees a killed actor's name shortly after
        assert actor_name("dropped") not in names_in_namespace()
        assert actor_name("kept") in names_in_namespace()
    finally:
        kill("kept", "dropped")


def names_in_namespace() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE}
