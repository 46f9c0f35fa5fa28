"""The DeviceWorker interface over a worker actor, so the pipeline runs unchanged against Ray.

`RemoteWorker` subclasses DeviceWorker only for its interface: mypy then checks every override
against the real signatures, and the container, pipeline, profiler and services accept it as is.
None of the parent's state is used; each call is one remote call to the device's actor.

An actor Ray cannot place (its node has not joined, or left) takes calls and never answers
them, so no call is sent until the actor has answered a probe, and status reads wait a bounded
time: an absent worker is one unavailable worker whose jobs fail with WorkerUnavailable, never
a start, a /health or a scrape that hangs.

An actor gone for good (killed without a restart, or made anew by another replica's start) is
not left behind: the call that finds it so moves the proxy to the actor now under the worker's
name, or makes one anew with the worker's own spawn, once per call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

from experts.backend import BackendError, ExpertBackend
from experts.types import BaseModelSpec, Generation, GenerationRequest, StreamEvent
from experts.workers import WorkerSpec
from orchestrator.observability.loads import Snapshot
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.serving.remote_claims import RemoteClaims
from orchestrator.serving.worker_actor import NAMESPACE, actor_name

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_TIMEOUT_S = 2.0  # a status read (/health, /metrics, the dashboard) waits no longer for one worker
REACH_TIMEOUT_S = 10.0  # the first call waits this long for an actor still booting or not yet placed
RESTART_TIMEOUT_S = 10.0  # a retry waits this long for Ray to restart a lost actor
RESTART_POLL_S = 0.2  # between asks while Ray restarts it (a restarting actor refuses calls at once)


class WorkerLost(BackendError):
    """The worker's actor died during a call (its process crashed or was killed)."""


class WorkerUnavailable(WorkerLost):
    """The worker's actor is not running: its node has not joined (or left), or it did not answer."""


def call(ref: Any, timeout: float | None = None) -> Any:
    """Wait for a remote call; an error raised in the actor is re-raised as itself.

    The services catch BackendError and turn its message into a 422, so callers must see the
    original exception (and its plain message), not Ray's wrapper; the wrapper, with the
    remote traceback, stays chained as the cause.
    """
    try:
        return ray.get(ref, timeout=timeout)
    except RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from exc
        raise


def greedy(request: GenerationRequest) -> bool:
    """A greedy request's reply is the same however often it runs: safe to run again."""
    return request.sampling.temperature == 0


class RemoteBackend:
    """An ExpertBackend answered by the device's actor, which keeps the real one resident.

    `load` and `generate` go through the device worker, so its memory budget and residency
    order stay right no matter who calls; every call goes through the worker's guard.
    """

    def __init__(self, worker: RemoteWorker, base: BaseModelSpec):
        self._worker, self._base = worker, base
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
        self._worker.ensure_loaded(self._base)

    def unload(self) -> None:
        self._worker.unload(self._base.key)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return self._worker.generate(self._base, requests)

    def memory_bytes(self) -> int:
        return int(self._member("memory_bytes"))

    def validate(self) -> None:
        self._member("validate")

    def _member(self, name: str) -> Any:
        return self._worker.ask("backend_member", self._base, name)


class RemoteWorker(DeviceWorker):
    """A device worker whose device lives in a Ray actor (see worker_actor.WorkerActor).

    Its name and budget come from the worker's spec, so building one asks the actor nothing
    (the replica's constructor must not wait for a node that has not joined). Without a spec
    (tests, benches) they are read from the actor, waiting at most RESTART_TIMEOUT_S.
    `renew` makes the worker's actor anew (worker_actor.spawner), for when it is gone for good."""

    actor: ActorHandle[Any]

    def __init__(self, actor: ActorHandle[Any], spec: WorkerSpec | None = None, memory_budget: int | None = None,
                 renew: Callable[[], ActorHandle[Any]] | None = None):
        self.actor, self.lock = actor, threading.RLock()  # the lock only for callers that expect one
        self.resource = spec.resource if spec else None
        self._renew, self._moving = renew, threading.Lock()  # one move to another actor at a time
        self._probe: ObjectRef[Any] | None = None  # the one unanswered probe while the actor is not up
        self._probe_at, self._probe_lock = 0.0, threading.Lock()
        self._answered, self._warned = False, False
        self._gone = False  # a restart was waited for in vain: losses fail at once until it answers
        self._claims = RemoteClaims(self)  # told to the actor, whose worker spares them
        if spec is not None and memory_budget is not None:
            self.name, self.memory_budget = spec.name, memory_budget
        else:
            self.name = spec.name if spec else "?"
            info = self._get(actor.info.remote(), RESTART_TIMEOUT_S)
            self.name, self.memory_budget = str(info["device"]), int(info["memory_budget"])

    def ask(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """One call to the actor, once it has answered a probe; a lost or unplaced actor (or,
        with `timeout`, a late answer) raises WorkerLost / WorkerUnavailable, never Ray's error."""
        if not ray.is_initialized():  # a call would start a Ray of its own here (Ray's auto-init)
            raise WorkerUnavailable(f"worker {self.name} is unavailable: Ray is not running in this process")
        with self._moving_on():
            self._reach(REACH_TIMEOUT_S if timeout is None else timeout)
            answer = self._get(getattr(self.actor, method).remote(*args), timeout)
        return answer

    def _get(self, ref: Any, timeout: float | None) -> Any:
        try:
            answer = call(ref, timeout)
        except GetTimeoutError as exc:
            raise WorkerUnavailable(f"worker {self.name} did not answer within {timeout:g} s "
                                    "(busy, or its node unreachable)") from exc
        except ActorUnschedulableError as exc:  # e.g. pinned to a node that has left
            raise self._unplaced() from exc
        except RayActorError as exc:
            raise self._lost(exc) from exc
        self._gone = False
        return answer

    def _lost(self, exc: RayActorError, during: str = "call") -> WorkerLost:
        """The actor's loss as the caller should read it: unavailable where Ray is restarting it
        with no node to place it on (its node left: Ray answers each call with ActorUnavailable-
        Error after ~2 s, never a restart, so a wait for one was 10 s in vain), else lost."""
        if isinstance(exc, ActorUnavailableError) and ray.is_initialized() and self._node_gone():
            return self._unplaced()
        return WorkerLost(f"worker {self.name} was lost mid-{during} ({type(exc).__name__}); "
                          "Ray restarts it and it reloads its models on demand")

    def _node_gone(self) -> bool:
        """Whether no live node advertises the worker's resource (unpinned: unknown, False)."""
        if not self.resource:
            return False
        return not any(n.get("Alive") and n.get("Resources", {}).get(self.resource) for n in ray.nodes())

    @contextlib.contextmanager
    def _moving_on(self) -> Iterator[None]:
        """Around one call: the loss of an actor gone for good moves the proxy on (`_gone_for_good`)
        and fails the call saying so; any other loss passes as it is."""
        actor = self.actor
        try:
            yield
        except WorkerLost as lost:
            if not self._gone_for_good(lost, actor):
                raise
            raise WorkerLost(f"worker {self.name}'s actor is gone for good (killed, or made anew by another "
                             "start), and this call with it; its calls now go to the actor under its name, "
                             "which loads its models on demand") from lost

    def _gone_for_good(self, lost: WorkerLost, actor: ActorHandle[Any]) -> bool:
        """Whether `actor`, whose death `lost` reports, is gone for good: its name is free or
        another actor's (while it is still the dead one's, Ray is restarting it). Then the first
        call to find it so moves the proxy to the actor under the name, or to one made anew."""
        if not ray.is_initialized():  # shut down since the call was sent: a lookup would start a Ray
            return False
        if not isinstance(lost.__cause__, ActorDiedError) or (named := self._named()) == actor:
            return False
        with self._moving:
            if self.actor == actor:  # not moved yet by another call that lost it too
                self._move_to(named or self._renewed())
        return True

    def _named(self) -> ActorHandle[Any] | None:
        try:
            return ray.get_actor(actor_name(self.name), namespace=NAMESPACE)
        except ValueError:  # no actor under the name
            return None

    def _renewed(self) -> ActorHandle[Any]:
        """The worker's actor made anew: one try, by the call that found it gone."""
        if self._renew is None:
            raise WorkerUnavailable(f"worker {self.name}'s actor is gone for good and none runs under its "
                                    "name; the service's next start makes it anew")
        try:
            return self._renew()
        except Exception as exc:  # noqa: BLE001 - whatever stops it, the worker is unavailable, the caller unharmed
            raise WorkerUnavailable(f"worker {self.name}'s actor is gone for good and could not be made "
                                    f"anew ({type(exc).__name__}: {exc})") from exc

    def _move_to(self, actor: ActorHandle[Any]) -> None:
        """Send the calls to `actor` from now on, probed afresh like a new proxy's."""
        log.warning("worker %s's actor is gone for good; its calls now go to the one now under its name "
                    "(found there, or made anew)", self.name)
        with self._probe_lock:
            self.actor, self._probe = actor, None
            self._answered = self._warned = self._gone = False

    def _reach(self, wait_s: float) -> None:
        """Return once the actor has answered a probe. One probe is out at a time; a call waits
        for it at most `wait_s`, and only within REACH_TIMEOUT_S of its sending (the grace an
        actor gets to boot): past that, calls fail at once while it stays unanswered."""
        if self._answered:  # a placed actor that dies is refused at once by Ray, never hangs
            return
        with self._probe_lock:
            if self._probe is None:
                self._probe, self._probe_at = self.actor.info.remote(), time.monotonic()
            probe, grace = self._probe, self._probe_at + REACH_TIMEOUT_S - time.monotonic()
        if not ray.wait([probe], timeout=max(0.0, min(wait_s, grace)))[0]:
            if grace <= wait_s and not self._warned:
                self._warned = True
                log.warning("worker %s is unavailable: %s", self.name, self._missing())
            raise self._unplaced()
        with self._probe_lock:
            self._probe = None if self._probe is probe else self._probe
        self._get(probe, None)
        if self._warned:
            log.warning("worker %s is available again", self.name)
        self._answered, self._warned = True, False

    def _unplaced(self) -> WorkerUnavailable:
        return WorkerUnavailable(f"worker {self.name} is unavailable: {self._missing()}")

    def _missing(self) -> str:
        if self.resource:
            return (f"its actor is not running; it is pinned to a node advertising the resource "
                    f"{self.resource!r}, and none that has joined the cluster does")
        return ("its actor is not running; has a node of the cluster room for the CPUs and GPUs it reserves "
                "(and is up, if `skillroute serve` pinned it to its own node)?")

    def _restarted(self) -> bool:
        """Whether Ray has the lost actor back within RESTART_TIMEOUT_S (polled: a restarting
        actor refuses calls at once, a restarted one answers)."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._get(self.actor.info.remote(), left)
                return True
            except WorkerUnavailable:
                return False
            except WorkerLost:
                time.sleep(RESTART_POLL_S)  # the poll interval while Ray restarts it
        return False

    def _once_more(self, work: Callable[[], T], lost: WorkerLost) -> T:
        """`work` again once the lost actor is back; only for work whose rerun changes nothing."""
        if isinstance(lost, WorkerUnavailable) or self._gone or not ray.is_initialized() or not self._restarted():
            self._gone = True
            raise lost
        log.warning("worker %s was lost mid-call and is back; running the call again", self.name)
        return work()

    def timeline(self) -> list[tuple[float, str, str]]:
        """The actor's residency timeline (a copy)."""
        events = self.ask("timeline", timeout=READ_TIMEOUT_S)
        return [(float(t), str(kind), str(key)) for t, kind, key in events]

    def residency_counts(self) -> dict[str, tuple[int, int]]:
        counts = self.ask("residency_counts", timeout=READ_TIMEOUT_S)
        return {k: (int(a), int(b)) for k, (a, b) in counts.items()}

    def load_seconds(self) -> Snapshot:
        """The actor's load durations (WorkerActor.load_seconds), read at scrape time."""
        return dict(self.ask("load_seconds", timeout=READ_TIMEOUT_S))

    def backend(self, base: BaseModelSpec) -> ExpertBackend:
        return RemoteBackend(self, base)

    def resident(self) -> set[str]:
        return set(self.ask("resident", timeout=READ_TIMEOUT_S))

    def size_of(self, base: BaseModelSpec) -> int:
        return int(self.ask("size_of", base))  # as long as it takes, as the backend's own read did

    def total_loads(self) -> int:
        return int(self.ask("total_loads", timeout=READ_TIMEOUT_S))

    def loads_by_model(self) -> dict[str, int]:
        return dict(self.ask("loads_by_model", timeout=READ_TIMEOUT_S))

    def generate(self, base: BaseModelSpec, requests: Sequence[GenerationRequest],
                 protect: Collection[str] = ()) -> list[Generation]:
        """The actor's replies. A call the actor's death cut short runs once more, after Ray
        restarted it, for its greedy requests (a rerun gives the very reply the lost call
        would have); its sampled ones fail with the loss. The executor fails what still raises."""
        try:
            return list(self.ask("generate", base, list(requests), set(protect)))
        except WorkerLost as lost:
            rerun = [r for r in requests if greedy(r)]
            if not rerun:
                raise
            again = self._once_more(lambda: self.ask("generate", base, rerun, set(protect)), lost)
            return _merged(requests, again, f"{type(lost).__name__}: {lost}")

    def stream(self, base: BaseModelSpec, request: GenerationRequest,
               protect: Collection[str] = ()) -> Iterator[StreamEvent]:
        """The actor's stream, piece by piece as each leaves the actor (a Ray streaming generator).
        Never rerun: its pieces may already be with the client."""
        with self._moving_on():
            self._reach(REACH_TIMEOUT_S)
            refs: Any = self.actor.stream.options(num_returns="streaming").remote(base, request, set(protect))
            try:
                for ref in refs:
                    yield call(ref)
            except ActorUnschedulableError as exc:
                raise self._unplaced() from exc
            except RayActorError as exc:
                raise self._lost(exc, "generation") from exc

    def ensure_loaded(self, base: BaseModelSpec, protect: Collection[str] = ()) -> ExpertBackend:
        """Loaded on the actor; a load the actor's death cut short is tried once more (loading twice is harmless)."""
        try:
            self.ask("ensure_loaded", base, set(protect))
        except WorkerLost as lost:
            self._once_more(lambda: self.ask("ensure_loaded", base, set(protect)), lost)
        return RemoteBackend(self, base)

    def prefetch(self, base: BaseModelSpec, protect: Collection[str] = ()) -> bool:
        return bool(self.ask("prefetch", base, set(protect)))

    def unload_if_free(self, key: str) -> bool:
        """The actor's own answer: it alone knows whether its device is free."""
        return bool(self.ask("unload_if_free", key))

    def unload(self, key: str) -> None:
        self.ask("unload", key)

    def forget(self, key: str) -> None:
        self.ask("forget", key)

    def shutdown(self) -> None:
        """Unload everything on the device (the actor itself keeps running)."""
        self.ask("shutdown")


def _merged(requests: Sequence[GenerationRequest], again: Sequence[Generation], error: str) -> list[Generation]:
    """Each request's reply from the rerun, in order; a request not rerun fails with `error`."""
    by_id = {g.request_id: g for g in again}
    return [by_id.get(r.request_id) or Generation.failed(r.request_id, error) for r in requests]
