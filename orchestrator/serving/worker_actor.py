"""Expert-worker actors: one Ray actor per device, holding that device's models resident.

The actor wraps the same DeviceWorker the inline runtime uses, so residency, eviction and load
counting behave identically; only the process boundary moves. Actors are named and detached,
so every Serve replica (and the `skillroute serve` driver that profiles the pool) reaches the
same device, and a replica restart does not drop the loaded weights.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray.actor import ActorHandle

from experts.factory import make_backend
from experts.options import BackendOptions
from experts.types import BaseModelSpec, Generation, GenerationRequest
from orchestrator.scheduling.worker import BackendFactory, DeviceWorker

NAMESPACE = "skillroute"
# Calls run on threads so /health (resident) answers while a long generate holds the device;
# the DeviceWorker's lock still lets only one call touch the backends at a time.
MAX_CONCURRENCY = 16
# Backend members a remote proxy may reach; everything else stays inside the actor.
BACKEND_MEMBERS = frozenset({"validate", "is_loaded", "loads", "memory_bytes"})


def actor_name(device: str) -> str:
    return f"skillroute-worker-{device}"


@dataclass(frozen=True)
class Device:
    """One device and what its actor reserves from Ray's scheduler."""

    name: str
    num_cpus: float
    num_gpus: float = 0.0


def cluster_devices(cpu_reservation: float) -> list[Device]:
    """The CPU plus one device per GPU the cluster reports; GPUs come first, as the preferred device.

    A GPU actor reserves its GPU but no CPU, so the CPU actor can reserve every core without
    leaving a GPU actor unschedulable.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return [Device(f"gpu{i}", 0.0, 1.0) for i in range(gpus)] + [Device("cpu", cpu_reservation)]


def local_cores() -> int:
    """Cores this process may use: llama.cpp's thread count and the CPU actor's reservation."""
    return max(1, len(os.sched_getaffinity(0)))


class WorkerActor:
    """A DeviceWorker behind a Ray actor. Plain class; `spawn` makes it remote."""

    def __init__(self, device: str, memory_budget_bytes: int, factory: BackendFactory = make_backend):
        self.worker = DeviceWorker(device, memory_budget_bytes, factory)

    def resident(self) -> set[str]:
        return self.worker.resident()

    def generate(self, base: BaseModelSpec, requests: Sequence[GenerationRequest],
                 protect: Collection[str] = ()) -> list[Generation]:
        return self.worker.generate(base, requests, protect)

    def ensure_loaded(self, base: BaseModelSpec, protect: Collection[str] = ()) -> None:
        self.worker.ensure_loaded(base, protect)  # the backend itself cannot leave the process

    def prefetch(self, base: BaseModelSpec, protect: Collection[str] = ()) -> bool:
        return self.worker.prefetch(base, protect)

    def backend_member(self, base: BaseModelSpec, member: str) -> Any:
        """Call a backend method (or read a property) by name: what the proxy's RemoteBackend needs."""
        if member not in BACKEND_MEMBERS:
            raise AttributeError(f"backend member {member!r} is not reachable remotely")
        value = getattr(self.worker.backend(base), member)
        return value() if callable(value) else value

    def unload(self, key: str) -> None:
        self.worker.unload(key)

    def forget(self, key: str) -> None:
        self.worker.forget(key)

    def shutdown(self) -> None:
        self.worker.shutdown()

    def total_loads(self) -> int:
        return self.worker.total_loads()

    def loads_by_model(self) -> dict[str, int]:
        return self.worker.loads_by_model()

    def timeline(self) -> list[tuple[float, str, str]]:
        return self.worker.timeline()

    def residency_counts(self) -> dict[str, tuple[int, int]]:
        return self.worker.residency_counts()

    def info(self) -> dict[str, Any]:
        return {"device": self.worker.name, "memory_budget": self.worker.memory_budget, "pid": os.getpid()}


def spawn(device: Device, memory_budget_bytes: int, factory: BackendFactory = make_backend
          ) -> ActorHandle[WorkerActor]:
    """Get the device's actor, creating it if no one has yet (idempotent across replicas).

    `factory` travels to the actor by value (tests pass one that builds mock backends).
    """
    handle = ray.remote(WorkerActor).options(
        name=actor_name(device.name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=device.num_cpus, num_gpus=device.num_gpus, max_concurrency=MAX_CONCURRENCY,
    ).remote(device.name, memory_budget_bytes, factory)
    # Ray types `.remote()` as "a handle or the class itself"; at runtime it is always a handle.
    return cast("ActorHandle[WorkerActor]", handle)


def spawn_all(memory_budget_bytes: int, cpu_reservation: float,
              options: BackendOptions | None = None) -> dict[str, ActorHandle[WorkerActor]]:
    """One actor per device of the cluster, keyed by device name, preferred device first; its
    backends are built with the service's backend options."""
    factory = functools.partial(make_backend, options=options or BackendOptions())
    return {d.name: spawn(d, memory_budget_bytes, factory) for d in cluster_devices(cpu_reservation)}
