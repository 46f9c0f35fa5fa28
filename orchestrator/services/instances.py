"""Which running service answers each accepted query, so services sharing one database never
answer each other's live queries, and a dead one's are taken over without waiting for a restart.

Each service (one container: a Serve replica, a `skillroute serve`) is an instance: a random id,
its host and process id, and a heartbeat row in `instances` renewed every `heartbeat_s`. A query
names the instance that accepted it (`queries.owner`). An owner is dead when its row is gone (it
closed, or was silent long enough to be forgotten), when it has been silent for `dead_after_s`,
or when it ran on this host (its name and pid namespace: `host_identity`) and its process is
gone: a crash here is seen at once, so a restart answers what it left without waiting out the
silence. A start answers the accepted queries up to
its mark that were never owned or whose owner is dead (`QueryService.recover`); while it runs,
every heartbeat takes over up to ADOPT_AT_ONCE queries of owners that died since
(`QueryService.adopt`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from orchestrator.settings import RecoverySettings
from orchestrator.store.db import Database
from orchestrator.store.models import Instance as InstanceRow
from orchestrator.store.repositories.instances import InstanceRepository

log = logging.getLogger(__name__)
# the instances this process runs (two containers in one process stand for two replicas in
# tests): a row of this host and process id is alive only if it is one of them; another is an
# earlier process that had this id (ids are reused), and its row counted as alive until
# `dead_after_s` of silence, where a crash here is to be seen at once.
_HERE: set[str] = set()
_HERE_LOCK = threading.Lock()


class Instance:
    def __init__(self, db: Database, settings: RecoverySettings):
        self.db, self.settings = db, settings
        self.id, self.host, self.pid = uuid.uuid4().hex, host_identity(), os.getpid()
        self._stop, self._closed = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._row = False  # whether a beat wrote this service's row (a service never started has none)
        with _HERE_LOCK:
            _HERE.add(self.id)

    def beat(self) -> None:
        """Say this service is alive, and forget services silent for longer than a dead one is."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            InstanceRepository(s).beat(self.id, self.host, self.pid, now)
            InstanceRepository(s).forget_older_than(now - timedelta(seconds=self.settings.dead_after_s))
        self._row = True

    def live(self) -> set[str]:
        """The ids of the services alive now, this one among them."""
        with self.db.session() as s:
            rows = InstanceRepository(s).all()
        return {r.id for r in rows if self._alive(r)} | {self.id}

    def _alive(self, row: InstanceRow) -> bool:
        recent = datetime.now(UTC) - row.seen_at <= timedelta(seconds=self.settings.dead_after_s)
        if not recent or row.host != self.host:
            return recent
        if row.pid == self.pid:
            with _HERE_LOCK:
                return row.id in _HERE
        return _running(row.pid)

    def keep_beating(self, each: Callable[[], None]) -> None:
        """Beat every `heartbeat_s` on a thread of its own, then run `each` (taking over a dead
        service's queries); idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, args=(each,), name="skillroute-heartbeat", daemon=True)
            self._thread.start()

    def _loop(self, each: Callable[[], None]) -> None:
        while not self._closed.wait(self.settings.heartbeat_s):
            try:
                self.beat()
                if not self._stop.is_set():
                    each()
            except Exception:  # a store that is away now may be back at the next beat
                log.exception("heartbeat failed")

    def stop(self) -> None:
        """Stop taking over dead services' queries. The beats go on until `close`: a close waits
        out its last batch (the window's and the storer's waits, 90 s at most), and a service
        silent that long was taken for dead meanwhile, its running queries answered twice."""
        self._stop.set()

    def close(self) -> None:
        """Stop beating and remove this service's row: what it still owns is a dead one's now."""
        self.stop()
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with _HERE_LOCK:
            _HERE.discard(self.id)
        if self._row:
            with self.db.session() as s:
                InstanceRepository(s).remove(self.id)
            self._row = False


def host_identity() -> str:
    """This host as a process id is meaningful on it: its name and, on Linux, its pid namespace.
    Services in containers of one hostname (host networking: a Kubernetes hostNetwork pod has
    its node's name) all run as pid 1, each in a namespace of its own; by name alone each took
    the others for predecessors that had crashed and took over their live queries. A service of
    another namespace is dead only once silent (`dead_after_s`), as one on another host is."""
    try:
        namespace = f" pid-ns {os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: the name alone
        namespace = ""
    return socket.gethostname()[: 255 - len(namespace)] + namespace


def _running(pid: int) -> bool:
    """Whether a process of this id runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
