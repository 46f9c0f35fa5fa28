"""Expert-worker actors: one Ray actor per device, holding that device's models resident.

The actor wraps the same DeviceWorker the inline runtime uses, so residency, eviction and load
counting behave identically; only the process boundary moves. Actors are named and detached,
so every Serve replica (and the `skillroute serve` driver that profiles the pool) reaches the
same device, and a replica restart does not drop the loaded weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, cast

import ray
from ray.actor import ActorHandle
from ray.experimental import internal_kv
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from experts.devices import DeviceProfile
from experts.factory import make_backend
from experts.options import BackendOptions
from experts.types import BaseModelSpec, Generation, GenerationRequest, StreamEvent
from experts.workers import LOCAL_GPU_PROFILE, WorkerSpec, local_workers, memory_bytes
from orchestrator.observability.loads import LoadTimes, Snapshot
from orchestrator.scheduling.claims import View
from orchestrator.scheduling.worker import BackendFactory, DeviceWorker, claims

log = logging.getLogger(__name__)
NAMESPACE = "skillroute"
RESPAWN_TIMEOUT_S = 30.0  # for the name of a killed stale actor to be free again
RESOURCE_SHARE = 0.01  # of a node's custom resource per worker: up to 100 workers on one node
# Calls run on threads so /health (resident) answers while a long generate holds the device;
# the DeviceWorker's lock still lets only one call touch the backends at a time.
MAX_CONCURRENCY = 16
# Claims, status reads and the probe run on threads of their own: generations and waits parked
# on the device must not keep a batch from renewing its claims (they would lapse, and its models
# be evicted), nor a new proxy's probe or /health from being answered
CONTROL_GROUP, CONTROL_THREADS = "control", 4
# The calls an actor answers, recorded with its settings: raised when a release adds calls (2:
# the claims; 3: unload_if_free), so an actor a previous release made is made anew rather than refuse them.
ACTOR_PROTOCOL = 4
# Backend members a remote proxy may reach; everything else stays inside the actor.
BACKEND_MEMBERS = frozenset({"validate", "is_loaded", "loads", "memory_bytes"})


def actor_name(device: str) -> str:
    return f"skillroute-worker-{device}"


def cluster_workers(declared: Sequence[WorkerSpec], memory_gb: float, cpu_reservation: float) -> list[WorkerSpec]:
    """The deployment's workers under Ray: those the devices file declares, else this machine's
    CPU (reserving `cpu_reservation` cores for llama.cpp) and one worker per GPU the cluster has,
    on whichever node it is (`spawn` lets Ray place a GPU worker where a GPU is free: under
    KubeRay the GPUs are a worker group's, never the head's). A GPU worker reserves its GPU and
    no CPU, so the CPU worker can reserve every core. The CPU worker comes first: the first is
    the fleet's default worker (it sizes the models, and takes an expert not placed yet), and a
    CPU-only backend there computes on the cores it reserves."""
    if declared:
        return list(declared)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return local_workers(memory_gb, cpu_reservation) + [
        WorkerSpec(name=f"gpu{i}", device=LOCAL_GPU_PROFILE, gpus=1.0) for i in range(gpus)]


def local_cores() -> int:
    """Cores this process may use: llama.cpp's thread count and the CPU actor's reservation."""
    return max(1, len(os.sched_getaffinity(0)))


class WorkerActor:
    """A DeviceWorker behind a Ray actor. Plain class; `spawn` makes it remote."""

    def __init__(self, device: str, memory_budget_bytes: int, factory: BackendFactory = make_backend):
        # the loads happen in this process, away from the replica's metrics: their durations are
        # kept here and read by the replica at scrape time (`load_seconds`), as the counts are
        self.load_times = LoadTimes()
        self.worker = DeviceWorker(device, memory_budget_bytes, factory, self.load_times)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def resident(self) -> set[str]:
        return self.worker.resident()

    def size_of(self, base: BaseModelSpec) -> int:
        """Not a control call: a first read may assemble or export a packaged model (minutes)."""
        return self.worker.size_of(base)

    def generate(self, base: BaseModelSpec, requests: Sequence[GenerationRequest],
                 protect: Collection[str] = ()) -> list[Generation]:
        return self.worker.generate(base, requests, protect)

    def stream(self, base: BaseModelSpec, request: GenerationRequest,
               protect: Collection[str] = ()) -> Iterator[StreamEvent]:
        """A Ray streaming generator: each piece leaves the actor as it is generated (the
        caller asks with `num_returns="streaming"`), the Generation last."""
        yield from self.worker.stream(base, request, protect)

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

    @ray.method(concurrency_group=CONTROL_GROUP)
    def hold_claims(self, owner: str, version: int, views: Sequence[View], lease_s: float) -> None:
        """A process's running batches' claims here (serving.remote_claims): its loads and every
        other process's spare what they still need."""
        claims(self.worker).hold(owner, version, views, lease_s)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def claims_needed(self) -> set[str]:
        return claims(self.worker).needed()

    def wait_unneeded(self, key: str, timeout: float) -> bool:
        return claims(self.worker).wait_unneeded(key, timeout)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def unload_if_free(self, key: str) -> bool:
        return self.worker.unload_if_free(key)  # never waits for the device: a control call

    def unload(self, key: str) -> None:
        self.worker.unload(key)

    def forget(self, key: str) -> None:
        self.worker.forget(key)

    def shutdown(self) -> None:
        self.worker.shutdown()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def total_loads(self) -> int:
        return self.worker.total_loads()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def loads_by_model(self) -> dict[str, int]:
        return self.worker.loads_by_model()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def timeline(self) -> list[tuple[float, str, str]]:
        return self.worker.timeline()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def residency_counts(self) -> dict[str, tuple[int, int]]:
        return self.worker.residency_counts()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def load_seconds(self) -> Snapshot:
        """Each model's load durations since the actor started, as histogram buckets."""
        return self.load_times.snapshot()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def info(self) -> dict[str, Any]:
        return {"device": self.worker.name, "memory_budget": self.worker.memory_budget, "pid": os.getpid()}


def spawn(worker: WorkerSpec, memory_budget_bytes: int, factory: BackendFactory = make_backend,
          home: str | None = None) -> ActorHandle[WorkerActor]:
    """Get the worker's actor, creating it if no one has yet (idempotent across replicas).

    Ray places it where what it reserves is free: a worker with a `resource` on a node that
    advertises it (a small share of it, so several workers can live on one node), a GPU worker
    on a node with a free GPU, the CPU worker where its CPUs are. Only the CPU worker given a
    `home` (a Ray node id) is pinned there, hard: see `pinned`. Restarted by Ray if its process
    dies: the next call finds a fresh actor that reloads its models on demand. A call in flight
    when it died is not retried by Ray (RemoteWorker reruns the greedy ones). `factory` travels
    to the actor by value (tests pass one that builds mock backends).

    An actor found under the name but made for other settings (an earlier deploy's budget,
    pinning or backend options) is killed and made anew, with a warning: reusing it kept them.
    """
    node = pinned(worker, home)
    wanted = configuration(worker, memory_budget_bytes, factory, node)
    made = _spawn(worker, memory_budget_bytes, factory, node)
    if (recorded := _recorded(worker.name)) not in (None, wanted):
        log.warning("worker %s's actor was made for other settings (differing: %s); making it anew for %s",
                    worker.name, ", ".join(_changed(recorded, wanted)), wanted)
        made = _respawn(made, worker, memory_budget_bytes, factory, node)
    _record(worker.name, wanted)
    return made


def pinned(worker: WorkerSpec, home: str | None) -> str | None:
    """The node the worker must run on: `home` for the CPU worker (no `resource`, no GPU) when
    `skillroute serve` gives it (its own node, where its data dir of GGUF files is and whose
    cores it reserves); else none. Without a home (a replica under KubeRay or `serve deploy`,
    whose head offers no CPUs) the replica's node is no better than any other. A GPU worker is
    never pinned: there is one per GPU of the whole cluster (cluster_workers)."""
    return home if home is not None and not worker.resource and not worker.gpus else None


def _spawn(worker: WorkerSpec, memory_budget_bytes: int, factory: BackendFactory,
           node: str | None) -> ActorHandle[WorkerActor]:
    """`node`: the node id the worker must run on (see `pinned`). Not soft: elsewhere it would
    have neither the driver's data dir nor the cores it is costed as, so a node that cannot fit
    it leaves it pending (the autoscaler logs it infeasible) and RemoteWorker says so."""
    resources = {worker.resource: RESOURCE_SHARE} if worker.resource else {}
    placement: dict[str, Any] = {}
    if node is not None:
        placement["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    remote = cast(Any, ray.remote)  # typed without the concurrency_groups it takes
    handle = remote(concurrency_groups={CONTROL_GROUP: CONTROL_THREADS})(WorkerActor).options(
        name=actor_name(worker.name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=worker.cpus, num_gpus=worker.gpus, resources=resources, max_concurrency=MAX_CONCURRENCY,
        max_restarts=-1, max_task_retries=0, **placement,
    ).remote(worker.name, memory_budget_bytes, factory)
    # Ray types `.remote()` as "a handle or the class itself"; at runtime it is always a handle.
    return cast("ActorHandle[WorkerActor]", handle)


def _respawn(stale: ActorHandle[WorkerActor], worker: WorkerSpec, memory_budget_bytes: int,
             factory: BackendFactory, node: str | None) -> ActorHandle[WorkerActor]:
    """Kill the stale actor and make the worker's anew, once its name is free again."""
    ray.kill(stale, no_restart=True)
    deadline = time.monotonic() + RESPAWN_TIMEOUT_S
    while _named(worker.name) and time.monotonic() < deadline:
        time.sleep(0.05)  # the poll interval while the GCS releases the dead actor's name
    return _spawn(worker, memory_budget_bytes, factory, node)


def _named(name: str) -> bool:
    try:
        ray.get_actor(actor_name(name), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def configuration(worker: WorkerSpec, memory_budget_bytes: int, factory: BackendFactory,
                  node: str | None = None) -> str:
    """What an actor is made with, as text stable across processes (no object addresses).

    A pinned worker's node is part of it: an actor made on another node (by a release that did
    not pin it, or for a service that ran elsewhere) is made anew on this one. A worker Ray
    places records no node, so replicas on different nodes read its settings alike."""
    made = {"worker": worker.model_dump(), "memory_budget": memory_budget_bytes, "backends": _described(factory),
            "protocol": ACTOR_PROTOCOL}
    if node is not None:
        made["node"] = node
    return json.dumps(made, sort_keys=True, default=str)


def _described(factory: Any) -> str:
    if isinstance(factory, functools.partial):
        given = [*map(_argument, factory.args), *(f"{k}={_argument(v)}" for k, v in factory.keywords.items())]
        return f"{_described(factory.func)}({', '.join(given)})"
    if hasattr(factory, "__qualname__"):  # a function
        return f"{factory.__module__}.{factory.__qualname__}"
    return f"{type(factory).__module__}.{type(factory).__qualname__}({getattr(factory, '__dict__', {})!r})"


def _argument(value: Any) -> str:
    """An argument's repr and, for each dataclass field kept out of it (a secret, such as
    BackendOptions.openai_api_key), a short hash: a rotated key still reads as other settings,
    while the key itself never reaches the key-value store or the log."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return repr(value)
    hidden = [f"{f.name}#{_digest(getattr(value, f.name))}" for f in dataclasses.fields(value) if not f.repr]
    return f"{value!r}[{', '.join(hidden)}]" if hidden else repr(value)


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:12]


def _changed(recorded: str, wanted: str) -> list[str]:
    """Which of an actor's settings differ, by name only: a record left by an earlier release
    may hold a secret in plain text, which must not reach the log."""
    try:
        before = json.loads(recorded)
    except ValueError:
        before = None
    if not isinstance(before, dict):
        return ["all"]
    after = json.loads(wanted)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)) or ["all"]


# What each worker's actor was made with, kept in the cluster's key-value store beside it: read
# without a call to the actor, which would wait forever for one whose node has not joined.
def _recorded(name: str) -> str | None:
    value = internal_kv._internal_kv_get(actor_name(name), namespace=NAMESPACE)
    return value.decode() if value is not None else None


def _record(name: str, wanted: str) -> None:
    internal_kv._internal_kv_put(actor_name(name), wanted.encode(), overwrite=True, namespace=NAMESPACE)


def spawn_all(workers: Sequence[WorkerSpec], profiles: Mapping[str, DeviceProfile],
              options: BackendOptions | None = None, home: str | None = None
              ) -> dict[str, ActorHandle[WorkerActor]]:
    """One actor per worker, by worker name; its backends are built with the service's options.
    `home`: the node the CPU worker is pinned to (see `pinned`). A worker's actor left from an
    earlier deploy that no longer declares it is killed: detached, it would hold its node's
    resources and its models forever."""
    factory = backends(options)
    made = {w.name: spawn(w, memory_bytes(w, profiles), factory, home) for w in workers}
    retire_undeclared({actor_name(w.name) for w in workers})
    return made


def backends(options: BackendOptions | None = None) -> BackendFactory:
    """What a worker's actor builds its backends with: `make_backend` and the service's options."""
    return functools.partial(make_backend, options=options or BackendOptions())


def spawner(worker: WorkerSpec, memory_budget_bytes: int, options: BackendOptions | None = None,
            home: str | None = None) -> Callable[[], ActorHandle[WorkerActor]]:
    """`spawn` for this worker as its start called it, to call again: what a proxy makes the
    worker's actor anew with once the actor is gone for good (RemoteWorker's `renew`)."""
    return functools.partial(spawn, worker, memory_budget_bytes, backends(options), home)


def retire_undeclared(declared: Collection[str]) -> list[str]:
    """Kill this namespace's worker actors whose names are not in `declared`, and forget their
    recorded settings; returns the names killed. Read from the GCS, so no dashboard is needed."""
    named = ray.util.list_named_actors(all_namespaces=True)
    stale = sorted(a["name"] for a in named if a["namespace"] == NAMESPACE
                   and a["name"].startswith(actor_name("")) and a["name"] not in declared)
    for name in stale:
        log.warning("worker actor %s is no longer declared; killing it to free its resources and models", name)
        with contextlib.suppress(ValueError):  # gone meanwhile
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        internal_kv._internal_kv_del(name, namespace=NAMESPACE)
    return stale
