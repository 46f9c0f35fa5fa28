"""The DeviceWorker interface over a worker actor, so the pipeline runs unchanged against Ray.

`RemoteWorker` subclasses DeviceWorker only for its interface: mypy then checks every override
against the real signatures, and the container, pipeline, profiler and services accept it as is.
None of the parent's state is used; each call is one remote call to the device's actor.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError

from experts.backend import BackendError, ExpertBackend
from experts.types import BaseModelSpec, Generation, GenerationRequest, StreamEvent
from orchestrator.scheduling.worker import DeviceWorker


class WorkerLost(BackendError):
    """The worker's actor died during a call (its process crashed or was killed)."""


def call(ref: Any) -> Any:
    """Wait for a remote call; an error raised in the actor is re-raised as itself.

    The services catch BackendError and turn its message into a 422, so callers must see the
    original exception (and its plain message), not Ray's wrapper; the wrapper, with the
    remote traceback, stays chained as the cause.
    """
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from exc
        raise


class RemoteBackend:
    """An ExpertBackend answered by the device's actor, which keeps the real one resident.

    `load` and `generate` go through the device worker, so its memory budget and residency
    order stay right no matter who calls.
    """

    def __init__(self, actor: ActorHandle[Any], base: BaseModelSpec):
        self._actor, self._base = actor, base
        self.base_model_key = base.key

    @property
    def loads(self) -> int:
        return int(self._member("loads"))

    @loads.setter
    def loads(self, value: int) -> None:
        raise AttributeError("load counts are kept by the device's actor")

    @property
    def is_loaded(self) -> bool:
        return bool(self._member("is_loaded"))

    def load(self) -> None:
        call(self._actor.ensure_loaded.remote(self._base))

    def unload(self) -> None:
        call(self._actor.unload.remote(self._base.key))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return list(call(self._actor.generate.remote(self._base, list(requests))))

    def memory_bytes(self) -> int:
        return int(self._member("memory_bytes"))

    def validate(self) -> None:
        self._member("validate")

    def _member(self, name: str) -> Any:
        return call(self._actor.backend_member.remote(self._base, name))


class RemoteWorker(DeviceWorker):
    """A device worker whose device lives in a Ray actor (see worker_actor.WorkerActor)."""

    actor: ActorHandle[Any]

    def __init__(self, actor: ActorHandle[Any]):
        info = call(actor.info.remote())
        self.actor = actor
        self.name, self.memory_budget = str(info["device"]), int(info["memory_budget"])
        self.lock = threading.RLock()  # only for callers that expect one; the actor serialises the device

    def timeline(self) -> list[tuple[float, str, str]]:
        """The actor's residency timeline (a copy)."""
        return [(float(t), str(kind), str(key)) for t, kind, key in call(self.actor.timeline.remote())]

    def residency_counts(self) -> dict[str, tuple[int, int]]:
        return {k: (int(a), int(b)) for k, (a, b) in call(self.actor.residency_counts.remote()).items()}

    def backend(self, base: BaseModelSpec) -> ExpertBackend:
        return RemoteBackend(self.actor, base)

    def resident(self) -> set[str]:
        return set(call(self.actor.resident.remote()))

    def total_loads(self) -> int:
        return int(call(self.actor.total_loads.remote()))

    def loads_by_model(self) -> dict[str, int]:
        return dict(call(self.actor.loads_by_model.remote()))

    def generate(self, base: BaseModelSpec, requests: Sequence[GenerationRequest],
                 protect: Collection[str] = ()) -> list[Generation]:
        try:
            return list(call(self.actor.generate.remote(base, list(requests), set(protect))))
        except RayActorError as exc:  # the executor fails these requests alone; Ray restarts the actor
            raise self._lost(exc) from exc

    def _lost(self, exc: RayActorError) -> WorkerLost:
        return WorkerLost(f"worker {self.name} was lost mid-generation ({type(exc).__name__}); "
                          "Ray restarts it and it reloads its models on demand")

    def stream(self, base: BaseModelSpec, request: GenerationRequest,
               protect: Collection[str] = ()) -> Iterator[StreamEvent]:
        """The actor's stream, piece by piece as each leaves the actor (a Ray streaming generator)."""
        refs: Any = self.actor.stream.options(num_returns="streaming").remote(base, request, set(protect))
        try:
            for ref in refs:
                yield call(ref)
        except RayActorError as exc:
            raise self._lost(exc) from exc

    def ensure_loaded(self, base: BaseModelSpec, protect: Collection[str] = ()) -> ExpertBackend:
        call(self.actor.ensure_loaded.remote(base, set(protect)))
        return RemoteBackend(self.actor, base)

    def prefetch(self, base: BaseModelSpec, protect: Collection[str] = ()) -> bool:
        return bool(call(self.actor.prefetch.remote(base, set(protect))))

    def unload(self, key: str) -> None:
        call(self.actor.unload.remote(key))

    def forget(self, key: str) -> None:
        call(self.actor.forget.remote(key))

    def shutdown(self) -> None:
        """Unload everything on the device (the actor itself keeps running)."""
        call(self.actor.shutdown.remote())
