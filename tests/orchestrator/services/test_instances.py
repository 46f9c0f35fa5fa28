"""Services sharing one database: each answers its own accepted queries, a start takes over only
what dead services left, and a running one adopts a service's queries once it is dead (its row
gone, silent too long, or its process gone from this host). Two containers in this process on
one store stand for two replicas."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.instances import Instance
from orchestrator.settings import RecoverySettings
from orchestrator.store.repositories.instances import InstanceRepository
from orchestrator.store.repositories.queries import QueryRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_or_real

WAIT_S = 60  # a chunk not answered by then means the order under test did not happen


@pytest.fixture
def other(container: SkillRoute, embedder: Embedder) -> Iterator[SkillRoute]:
    """A second service on the first one's store and pool."""
    c = SkillRoute(container.settings, container.pool_config, factory=mock_or_real, embedder=embedder)
    c.bootstrap()
    yield c
    c.close()


def owned_by(c: SkillRoute, instance: str, text: str) -> int:
    with c.db.session() as s:
        return QueryRepository(s).accept(Ask(text=text, k=1, mode="topk", seed=1), owner=instance).id


def test_a_live_service_s_queries_are_its_own_until_it_closes(container: SkillRoute, other: SkillRoute) -> None:
    (mine,) = container.admission.admit([Ask(text="What is 2+2?", k=1, mode="topk", seed=1)])
    assert other.queries.pending_count() == 0 and container.queries.pending_count() == 1
    assert other.queries.recover() == 0 and other.queries.adopt() == []
    assert container.queries.get(mine.query_id).status == "accepted"  # the first service's to answer
    container.instance.close()  # it stopped with the query unanswered
    assert other.queries.pending_count() == 1  # what a start of `other` would now say it recovers
    for done in other.queries.adopt():
        done.result(WAIT_S)
    row = other.queries.get(mine.query_id)
    assert (row.status, row.owner) == ("done", other.instance.id) and row.answer


def test_a_service_silent_too_long_or_whose_process_is_gone_is_dead(container: SkillRoute) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(ended.stdout)  # a process of this host that has exited
    now, me = datetime.now(UTC), container.instance
    with container.db.session() as s:
        InstanceRepository(s).beat("elsewhere", "another-host", 1, now)
        InstanceRepository(s).beat("silent", "another-host", 1, now - timedelta(seconds=me.settings.dead_after_s + 5))
        InstanceRepository(s).beat("crashed", me.host, gone_pid, now)
    assert me.live() == {me.id, "elsewhere"}
    queries = {o: owned_by(container, o, f"asked of {o}") for o in ("elsewhere", "silent", "crashed")}
    for done in container.queries.adopt():
        done.result(WAIT_S)
    rows = dict(zip(queries, container.queries.get_many(list(queries.values())), strict=True))
    assert {o: r.status for o, r in rows.items()} == {"elsewhere": "accepted", "silent": "done", "crashed": "done"}


def test_a_start_recovers_what_a_crashed_service_of_this_host_left(container: SkillRoute) -> None:
    """A restart after a crash here answers its leftovers at once: the dead process is seen at
    once, not after `dead_after_s` of silence."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with container.db.session() as s:
        InstanceRepository(s).beat("before-the-crash", container.instance.host, int(ended.stdout), datetime.now(UTC))
    left = owned_by(container, "before-the-crash", "What is 9+9?")
    assert container.queries.recover(container.queries.watermark()) == 1
    assert container.queries.get(left).status == "done"


def test_a_start_recovers_what_an_earlier_run_of_the_same_process_id_left(container: SkillRoute) -> None:
    """An earlier process of this host and pid namespace that had this process id (ids are
    reused): its row counted as alive, so nothing was recovered until `dead_after_s` had passed."""
    with container.db.session() as s:
        InstanceRepository(s).beat("same-pid-before", container.instance.host, container.instance.pid,
                                   datetime.now(UTC))
    left = owned_by(container, "same-pid-before", "What is 8+8?")
    assert container.queries.recover(container.queries.watermark()) == 1
    assert container.queries.get(left).status == "done"


def test_a_take_over_that_fails_after_its_claim_leaves_the_queries_to_the_next(
        container: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read after the claim failed (a dropped connection): the queries stayed claimed by this
    live service, which adopts only dead ones', so no one answered them until it died."""
    left = owned_by(container, "gone-service", "What is 7+7?")
    real = container.queries.get_many

    def dropped(ids: list[int]) -> object:
        monkeypatch.setattr(container.queries, "get_many", real)
        raise ConnectionError("server closed the connection unexpectedly")

    monkeypatch.setattr(container.queries, "get_many", dropped)
    with pytest.raises(ConnectionError):
        container.queries.adopt()
    for done in container.queries.adopt():
        done.result(WAIT_S)
    assert container.queries.get(left).status == "done"


def test_a_service_of_this_hostname_in_another_pid_namespace_is_alive_while_it_beats(container: SkillRoute) -> None:
    """Containers sharing a hostname (host networking) all run as pid 1, each in a pid namespace
    of its own: by (hostname, pid) each took the others for crashed predecessors and took over
    their live queries (96 accepted queries answered by two services)."""
    me = container.instance
    neighbour = socket.gethostname()  # what each wrote; now its namespace too, which is not ours
    with container.db.session() as s:
        InstanceRepository(s).beat("neighbour", neighbour, me.pid, datetime.now(UTC))
    assert "neighbour" in me.live()
    live = owned_by(container, "neighbour", "What is 6+6?")
    assert container.queries.adopt() == [] and container.queries.get(live).status == "accepted"


def test_a_closing_service_beats_until_its_row_is_gone_and_takes_nothing_over(container: SkillRoute) -> None:
    """A close waits out its last batch (up to 90 s); its heartbeat stopped first, and a service
    silent past `dead_after_s` meanwhile was taken for dead, its running queries answered twice."""
    instance = Instance(container.db, RecoverySettings(heartbeat_s=0.01))
    took_over = threading.Event()
    instance.keep_beating(took_over.set)
    assert took_over.wait(WAIT_S)
    instance.stop()  # as SkillRoute.close begins
    took_over.clear()
    seen = seen_at(container, instance.id)
    deadline = time.monotonic() + WAIT_S
    while seen_at(container, instance.id) == seen:  # beats on while the close waits
        assert time.monotonic() < deadline, "the closing service stopped beating"
    instance.close()
    assert not took_over.is_set() and seen_at(container, instance.id) is None


def seen_at(c: SkillRoute, instance: str) -> datetime | None:
    with c.db.session() as s:
        return next((r.seen_at for r in InstanceRepository(s).all() if r.id == instance), None)
