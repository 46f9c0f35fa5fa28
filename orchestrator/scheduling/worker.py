"""A device worker: holds the backends resident on one device within its memory budget.

One worker per device (the CPU here, each GPU elsewhere). It is the only thing that touches
its backends, under one lock, because llama.cpp and vLLM engines are not safe to share.

The one exception is a prefetch: a backend that says `loads_in_background` (a vLLM engine on a
GPU: it loads in its own worker process, beside the GPU work) may load the next stage's model on
a background thread while the lock is held for another model's generation. It loads only into
free budget, never evicting a model a remaining stage needs.

Batches can share a worker (a profiling run beside a batch of queries, a registration's load
beside both), each calling it chunk by chunk. What each running batch still needs is claimed on
it (`claims(worker).claim`) so no other load switches it out mid-batch: see `_room_for`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from experts.backend import ExpertBackend
from experts.factory import make_backend
from experts.streaming import stream_of
from experts.traits import traits
from experts.types import BaseModelSpec, Generation, GenerationRequest, StreamEvent
from orchestrator.probe import NULL_PROBE, Probe
from orchestrator.scheduling.claims import Claims

log = logging.getLogger(__name__)
BackendFactory = Callable[[BaseModelSpec], ExpertBackend]
Event = tuple[float, str, str]  # (time, load | unload, base model key)
TIMELINE_EVENTS = 2000  # the residency timeline keeps the newest events; counts keep them all
# Models whose backend and counts are kept, resident or not: models come and go with
# registrations, and /metrics exports each one's counts on every scrape (as Slowdown bounds its own)
MAX_MODELS = 256
# a load waits this long at most for another batch's running stage (`_room_for`), then takes its room
STAGE_WAIT_S = 30.0


class DeviceWorker:
    _claims: Claims

    def __init__(self, name: str = "cpu", memory_budget_bytes: int = 8 * 2**30,
                 factory: BackendFactory = make_backend, probe: Probe = NULL_PROBE):
        self.name, self.probe = name, probe
        self.memory_budget = memory_budget_bytes
        self._factory = factory
        self._backends: dict[str, ExpertBackend] = {}
        self._specs: dict[str, BaseModelSpec] = {}  # what each backend was built from
        self._used_order: OrderedDict[str, None] = OrderedDict()  # built keys, least recently asked for first
        self._forgotten_loads = 0  # loads of backends dropped past MAX_MODELS: total_loads is a count, ever
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident keys, least recent first
        self.lock = threading.RLock()
        self.events: deque[Event] = deque(maxlen=TIMELINE_EVENTS)  # the residency timeline, newest last
        self.event_counts: Counter[tuple[str, str]] = Counter()  # (load | unload, key) → how many, ever
        # the residency records (`_lru`'s keys, `events`, `event_counts`), changed and copied under this
        # lock alone: status reads (/metrics, the dashboard, /health) run on other threads, and the
        # device lock is held through whole generations, which they must not wait out
        self._records = threading.Lock()
        self._loading: dict[str, Future[Loaded]] = {}  # prefetches under way, by key
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-prefetch")
        self._claims = Claims(self.lock)  # what the batches running here still need
        # replies under way without the device on models served elsewhere, and those of them
        # unloaded meanwhile (closed when their last reply ends), under `_records`
        self._users: Counter[str] = Counter()
        self._closing: dict[str, ExpertBackend] = {}

    def backend(self, base: BaseModelSpec) -> ExpertBackend:
        """The backend of `base`'s weights, built once. One built for another spec of the same
        weights (a removed expert's other `n_ctx`) is unloaded and built again, never handed on:
        loaded, it would run the new expert's prompts in the old window (experts over one model
        agree on it, the registration checks; only a removed one's model can differ)."""
        with self.lock:
            built = self._backends.get(base.key)
            if built is None or self._specs[base.key] != base:
                if built is not None:  # replaced: its process ends, its loads still count
                    self.unload(base.key)
                    self._retire(built)
                self._backends[base.key], self._specs[base.key] = self._factory(base), base
            self._used_order[base.key] = None
            self._used_order.move_to_end(base.key)
            self._bound(base.key)
            return self._backends[base.key]

    def _bound(self, asked: str) -> None:
        """Forget the least recently asked-for models past MAX_MODELS, never one resident or
        loading, nor `asked`, about to be used."""
        for key in list(self._used_order):
            if len(self._used_order) <= MAX_MODELS:
                return
            if key not in self._lru and key not in self._loading and key != asked:
                self._drop(key)

    def _drop(self, key: str) -> None:
        """Forget a model that is not resident: its backend (closed: a vLLM one keeps a process),
        its spec and its counts."""
        backend = self._discard(key)
        with self._records:
            for kind in ("load", "unload"):
                self.event_counts.pop((kind, key), None)
        if backend is not None:
            self._retire(backend)

    def _retire(self, backend: ExpertBackend) -> None:
        """Let go of a backend for good: closed (a vLLM one keeps a process, leaked otherwise),
        its loads kept in the total, which counts every load ever."""
        self._forgotten_loads += backend.loads
        _close(backend)

    def size_of(self, base: BaseModelSpec) -> int:
        """`base`'s resident size, read without the device lock (a generation holds it through a
        chunk; placing a registration reads this): its backend's, else an unbuilt one's (no load)."""
        built = self._backends.get(base.key)
        if built is None or self._specs.get(base.key) != base:
            built = self._factory(base)
        return built.memory_bytes()

    def resident(self) -> set[str]:
        with self._records:
            return set(self._lru)

    def total_loads(self) -> int:
        return self._forgotten_loads + sum(b.loads for b in self._backends.values())

    def loads_by_model(self) -> dict[str, int]:
        return {k: b.loads for k, b in self._backends.items()}

    def generate(self, base: BaseModelSpec, requests: Sequence[GenerationRequest],
                 protect: Collection[str] = ()) -> list[Generation]:
        """Run a batch on `base`, loading it (and evicting unprotected models) if needed."""
        with self._device_for(base, protect) as backend:
            return backend.generate(requests)

    def stream(self, base: BaseModelSpec, request: GenerationRequest,
               protect: Collection[str] = ()) -> Iterator[StreamEvent]:
        """One request's reply as it is generated (`experts.streaming`): text pieces, then its
        Generation. The device is held until the stream ends, as for a generate call, so the
        caller iterates it to the end (or closes it) on the thread that started it."""
        with self._device_for(base, protect) as backend:
            yield from stream_of(backend, request)

    @contextmanager
    def _device_for(self, base: BaseModelSpec, protect: Collection[str]) -> Iterator[ExpertBackend]:
        """`base` loaded, with the device held while the block runs, unless `base` is served
        elsewhere (`traits.served_elsewhere`): its server computes, and holding the device would
        make the worker's other stages wait out its replies (and it theirs). Such a reply is
        counted in use instead, so an unload meanwhile closes its client only once it ends."""
        backend = self._loaded_elsewhere(base, use=True)
        if backend is None:
            with self.lock:
                backend = self.ensure_loaded(base, protect)
                self._touch(base.key)
                if not traits(base).served_elsewhere:
                    yield backend
                    return
                with self._records:
                    self._users[base.key] += 1
        try:
            yield backend
        finally:
            self._done_with(base.key, backend)

    def _loaded_elsewhere(self, base: BaseModelSpec, use: bool = False) -> ExpertBackend | None:
        """`base`'s backend if it is served elsewhere and loaded, found without the device lock (a
        generation holds it for a whole chunk), marked most recently used and, with `use`,
        counted in use (`_done_with` ends it); else None."""
        backend = self._backends.get(base.key)
        if not traits(base).served_elsewhere or backend is None or self._specs.get(base.key) != base:
            return None
        with self._records:
            if base.key not in self._lru or not backend.is_loaded:
                return None
            self._lru.move_to_end(base.key)
            if use:
                self._users[base.key] += 1
        return backend

    def _done_with(self, key: str, backend: ExpertBackend) -> None:
        """A reply on a model served elsewhere ended; the last one after an unload (`_let_go`)
        unloads it, unless it was loaded again meanwhile (the very backend resident again)."""
        with self._records:
            self._users[key] -= 1
            if self._users[key] > 0:
                return
            del self._users[key]
            if self._closing.pop(key, None) is None:
                return
        with self.lock:
            if key not in self.resident() or self._backends.get(key) is not backend:
                _unload_quietly(backend, key, self.name)

    def ensure_loaded(self, base: BaseModelSpec, protect: Collection[str] = ()) -> ExpertBackend:
        loaded = self._loaded_elsewhere(base)
        if loaded is not None:
            return loaded
        with self.lock:
            deadline = time.monotonic() + STAGE_WAIT_S
            while True:  # again after a wait: meanwhile it may have been loaded, prefetched or rebuilt
                backend = self.backend(base)
                pending = self._loading.pop(base.key, None)
                if pending is not None:
                    self._adopt(base.key, pending.result())  # a failed prefetch raises its error here
                    return backend
                if backend.is_loaded and base.key in self._lru:
                    return backend
                # (loaded yet counted gone: its unload raised with the backend still saying it is
                # loaded; counted resident again: a load of a loaded backend does nothing)
                if not self._room_for(base.key, backend.memory_bytes(), protect, deadline):
                    self._adopt(base.key, _timed_load(backend))
                    return backend

    def _room_for(self, key: str, need: int, protect: Collection[str], deadline: float) -> bool:
        """Evict until `need` fits, sparing what running batches still need (`Claims`) and `protect`:
        evicted, a later stage's model would load twice in its batch. Where that is not enough and
        another batch's stage generates on a loaded model, wait (until `deadline`) for that stage to
        end: True, the caller looks again (switched out, that model would load again for its next
        chunk: two batches on one device traded it chunk by chunk). With none to wait for, or the
        wait over, the needed models' room is taken after all (they load again; waiting for later
        stages could wait on a batch that itself waits), and last only `key` is spared: a model
        reloaded costs time, one loaded past the budget fails on a GPU."""
        self._make_room(need, {key, *protect, *self._claims.needed()})
        if self._used() + need <= self.memory_budget:
            return False
        if self._claims.wait_while(partial(self._stage_runs, key), max(0.0, deadline - time.monotonic())):
            return True
        self._make_room(need, {key, *protect})
        self._make_room(need, {key})
        return False

    def _stage_runs(self, key: str, _needed: set[str], running: set[str]) -> bool:
        """Whether another batch's stage generates on a model that is in: one whose engine died
        (not loaded) ends no stage to wait for, and two batches waiting on such would wait for good."""
        return any(k != key and k in self._lru and (b := self._backends.get(k)) is not None and b.is_loaded
                   for k in running)

    def prefetch(self, base: BaseModelSpec, protect: Collection[str] = ()) -> bool:
        """Start loading `base` in the background if its backend loads outside this process and
        it fits beside `protect` (what is generating and what remains); True if a load started."""
        with self.lock:
            backend = self.backend(base)
            if not loads_in_background(backend) or backend.is_loaded or base.key in self._loading:
                return False
            need = backend.memory_bytes()
            self._make_room(need, {base.key, *protect, *self._claims.needed()})
            if self._used() + need > self.memory_budget:
                return False
            self._loading[base.key] = self._loader.submit(_timed_load, backend)
            return True

    def _adopt(self, key: str, loaded: Loaded) -> None:
        self.probe.model_loaded(self.name, key, loaded.seconds)
        self._record(loaded.at, "load", key)

    def _touch(self, key: str) -> None:
        """`key` is the most recently used resident model."""
        with self._records:
            self._lru.move_to_end(key)

    def _make_room(self, need: int, protect: set[str]) -> None:
        """Evict least-recently-used models outside `protect` until `need` fits. A load calls it
        twice: sparing what upcoming stages (and the kept aggregator) need, then, if that is not
        enough, sparing only itself: a model reloaded later costs time, one loaded past the
        memory budget fails on a GPU (out of memory)."""
        for key in list(self._lru):
            if self._used() + need <= self.memory_budget:
                return
            if key not in protect and self._backends[key].memory_bytes() > 0:  # unloaded, it frees nothing
                self.unload(key)

    def _used(self) -> int:
        return sum(self._backends[k].memory_bytes() for k in [*self._lru, *self._loading])

    def unload(self, key: str) -> None:
        with self.lock:
            self._settle(key)
            if key not in self._lru:
                return
            if not self._let_go(key):  # else the last reply under way on it unloads it (`_done_with`)
                _unload_quietly(self._backends[key], key, self.name)
            self._record(time.time(), "unload", key)

    def unload_if_free(self, key: str) -> bool:
        """Unload `key` now if the device is free and no running batch needs it; whether it did. A
        caller that must not wait (a request removing an expert) leaves a False to a thread."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if key in self._claims.needed():
                return False
            self.unload(key)
            return True
        finally:
            self.lock.release()

    def _let_go(self, key: str) -> bool:
        """Take `key` out of the resident models before its backend unloads, so no reply starts on
        it without the device meanwhile; True if replies under way on it (a model served elsewhere,
        generating without the device) leave the unload to the last of them (`_done_with`)."""
        with self._records:
            self._lru.pop(key, None)
            if self._users[key] <= 0:
                return False
            self._closing[key] = self._backends[key]
            return True

    def _record(self, at: float, kind: str, key: str) -> None:
        """A load or unload: the model resident or not, and its event counted, as one change to a status read."""
        with self._records:
            if kind == "load":
                self._lru[key] = None
            else:
                self._lru.pop(key, None)
            self.events.append((at, kind, key))
            self.event_counts[kind, key] += 1

    def timeline(self) -> list[Event]:
        with self._records:
            return list(self.events)

    def residency_counts(self) -> dict[str, tuple[int, int]]:
        """Base model key → (loads, unloads) ever; copied under `_records` (a load may run meanwhile)."""
        with self._records:
            counts = dict(self.event_counts)
        return {k: (counts.get(("load", k), 0), counts.get(("unload", k), 0)) for _, k in counts}

    def _settle(self, key: str) -> None:
        """Finish a prefetch of `key` before anything else touches it; its failure is dropped."""
        pending = self._loading.pop(key, None)
        if pending is not None and pending.exception() is None:
            self._adopt(key, pending.result())

    def forget(self, key: str) -> None:
        """Drop a backend that failed validation so a corrected spec starts fresh (closed, as
        `_drop` does: a refused vLLM model would otherwise leave its worker process behind)."""
        with self.lock:
            self.unload(key)
            self._drop(key)

    def _discard(self, key: str) -> ExpertBackend | None:
        """Take the model's backend out of every map that names it; the backend, if there was one."""
        self._specs.pop(key, None)
        self._used_order.pop(key, None)
        return self._backends.pop(key, None)

    def shutdown(self) -> None:
        """Unload every model, and end what a backend keeps beside (a vLLM one's warm process)."""
        with self.lock:
            for key in [*self._loading, *self._lru]:
                self.unload(key)
            for backend in self._backends.values():
                _close(backend)


def claims(worker: DeviceWorker) -> Claims:
    """The claims on `worker` of the batches running there. Not a method: serving's RemoteWorker
    proxies every DeviceWorker method to its actor, and its claims are told to the actor
    (serving.remote_claims)."""
    return worker._claims


@dataclass(frozen=True)
class Loaded:
    seconds: float
    at: float  # wall-clock time the model became resident


def _timed_load(backend: ExpertBackend) -> Loaded:
    started = time.perf_counter()
    backend.load()
    return Loaded(time.perf_counter() - started, time.time())


def _unload_quietly(backend: ExpertBackend, key: str, worker: str) -> None:
    """Unload a backend; a failure is logged and its memory counted free all the same (a dead
    engine: kept resident, its error would fail every load after it)."""
    try:
        backend.unload()
    except Exception:
        log.warning("unloading %s on %s failed; its memory is counted free", key, worker, exc_info=True)


def _close(backend: ExpertBackend) -> None:
    """End what a backend keeps beside its weights (an optional method: a vLLM backend's process)."""
    close = getattr(backend, "close", None)
    if callable(close):
        close()


def loads_in_background(backend: ExpertBackend) -> bool:
    """Whether a load can run beside another model's generation. An optional backend attribute:
    only a backend whose weights load outside this process (vLLM) sets it."""
    return bool(getattr(backend, "loads_in_background", False))
