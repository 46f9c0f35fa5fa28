"""Durability, proven from outside: `skillroute serve` (embedded Ray, a Serve replica, the worker
actor) is SIGKILLed — its whole process group, Ray's daemons included — while a batch and live
queries are in flight, then restarted on the same store. /health must answer within 30 s of the
restart while the recovery runs behind it; every accepted query is answered exactly once; the
batch completes; clients that lost their connection retry with their Idempotency-Key and get the
ids of the queries the first run accepted.

The replay pool (4 recorded models) is profiled in-process first, so both starts time serving
and recovery, not profiling; its replies take their simulated latency x TIME_SCALE for real, so
work is truly in flight at the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from experts.replay import load_recording
from orchestrator.container import SkillRoute
from orchestrator.pools.loader import load_pool_config, split_questions
from orchestrator.settings import Settings
from orchestrator.store.db import Database
from orchestrator.store.models import IdempotencyKey, Query
from orchestrator.store.repositories.queries import decision_of
from skills.datasets import LabelledQuestion, format_prompt
from skills.embedder import Embedder
from tests.conftest import SliceRecording
from tests.orchestrator.serving.test_ray_serve import Server, free_port

pytestmark = pytest.mark.slow

MODELS = ["Llama-2-7b-hf", "Mistral-7B-v0.1", "gemma-7b", "Meta-Llama-3_1-8B-Instruct"]
PER_CATEGORY = 10  # 140 questions: 70 to profile on, 70 to ask
TIME_SCALE = 0.05  # a 7B reply's ~2 s of simulated latency takes ~0.1 s for real
BATCH, SINGLES, ANSWERED_BEFORE = 120, 20, 5
RESTART_HEALTH_S = 30.0
STARTUP_S, WORK_S = 300.0, 300.0


def prompts(folder: Path) -> list[str]:
    rec = load_recording(folder)
    _, test = split_questions(rec, 0.5, seed=0)
    return [format_prompt(LabelledQuestion(q.question_id, q.question, q.options, q.answer, q.category))
            for q in (rec.questions[i] for i in test)]


def launch(folder: Path, data: Path, port: int) -> Server:
    """`skillroute serve` as a user runs it, in its own session so the kill reaches all of it."""
    env = {**os.environ, "SKILLROUTE_DATA_DIR": str(data), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "COLUMNS": "200", "SKILLROUTE_BACKENDS__REPLAY_TIME_SCALE": str(TIME_SCALE),
           "SKILLROUTE_LEARNING__COMPETITION_RATE": "0", "SKILLROUTE_LEARNING__EXPLORE_RATE": "0"}
    env.pop("RAY_ADDRESS", None)  # an embedded cluster of its own
    cmd = [str(Path(sys.executable).with_name("skillroute")), "serve", "--pool", f"replay:{folder}",
           "--port", str(port), "--no-dashboard"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}")
    threading.Thread(target=timed_pump, args=(server, time.monotonic()), daemon=True).start()
    return server


def timed_pump(server: Server, started: float) -> None:
    """The server's output, each line stamped with the seconds since its launch (the tail of a
    failure then says where a start spent its time)."""
    assert server.proc.stdout is not None
    for line in server.proc.stdout:
        server.lines.append(f"{time.monotonic() - started:6.1f}s {line.rstrip()}")


def session(sid: int) -> dict[int, str]:
    """Every live process of the server's session (it leads it): pid → command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session …
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # it exited while we looked
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(stat.parent.name)] = command
    return found


def kill_all(server: Server) -> None:
    """SIGKILL the process group, then anything else of the session, and wait until none is left."""
    sid = server.proc.pid
    with_group = session(sid)
    os.killpg(sid, signal.SIGKILL)
    for pid in session(sid):  # started under another group of the session: ours all the same
        os.kill(pid, signal.SIGKILL)
    server.proc.wait(timeout=30)
    until(lambda: not session(sid), 30, lambda: f"still alive: {session(sid)} (of {with_group})")


def until(condition: Callable[[], Any], within_s: float, why: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + within_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {within_s:g}s: {why()}"
        time.sleep(0.2)  # between polls of the condition
    return value


def get(server: Server, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"{server.url}{path}", timeout=10)
    except httpx.TransportError:
        return None


def alive_get(server: Server, path: str) -> httpx.Response | None:
    assert server.proc.poll() is None, f"server exited:\n{server.tail()}"
    return get(server, path)


def ask(server: Server, n: int, prompt: str) -> dict[str, Any] | None:
    """One client's query with its own key; None when the connection was lost (the kill). A 503
    (the restarted service still loading its pool) is retried, as a client would, until WORK_S."""
    deadline = time.monotonic() + WORK_S
    while True:
        try:
            r = httpx.post(f"{server.url}/v1/queries", json={"query": prompt, "k": 3, "seed": n},
                           headers={"Idempotency-Key": f"client-{n}"}, timeout=WORK_S)
        except httpx.TransportError:
            return None
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # a client's back-off before it sends the request again
    assert r.status_code == 200, r.text
    return dict(r.json())


def stored(db: Database) -> list[Query]:
    """Every query in the store, with its decision and generations (read as the server runs: WAL)."""
    with db.session() as s:
        opts = [selectinload(Query.decision), selectinload(Query.generations)]
        return list(s.scalars(select(Query).order_by(Query.id).options(*opts)))


def stored_count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Query)) or 0)


@pytest.fixture
def replay_store(tmp_path: Path, slice_recording: SliceRecording, embedder: Embedder) -> Iterator[tuple[Path, Path]]:
    folder = slice_recording(tmp_path / "rec", MODELS, PER_CATEGORY)
    data = tmp_path / "data"
    c = SkillRoute(Settings(data_dir=data), load_pool_config(f"replay:{folder}"), embedder=embedder)
    c.bootstrap()  # profiled once, here: the server's starts find the profiles in the store
    c.close()
    yield folder, data


def test_sigkill_mid_work_then_restart_answers_every_accepted_query_exactly_once(replay_store) -> None:  # type: ignore[no-untyped-def]
    folder, data = replay_store
    questions, port = prompts(folder), free_port()
    db = Database(Settings(data_dir=data).db_url)
    batch_body = {"queries": [{"query": questions[i % len(questions)], "k": 3, "seed": 1000 + i,
                               "custom_id": f"b{i}"} for i in range(BATCH)]}
    singles = {n: questions[n % len(questions)] for n in range(SINGLES)}
    first = launch(folder, data, port)
    servers = [first]
    try:
        until(lambda: (r := alive_get(first, "/ready")) is not None and r.status_code == 200, STARTUP_S, first.tail)
        ray_daemons = [c for c in session(first.proc.pid).values() if "raylet" in c or "gcs_server" in c]
        assert len(ray_daemons) >= 2, session(first.proc.pid)  # the kill below reaches Ray's own daemons
        with ThreadPoolExecutor(SINGLES) as pool:
            before = {n: pool.submit(ask, first, n, singles[n]) for n in range(ANSWERED_BEFORE)}
            answered = {n: f.result() for n, f in before.items()}
            assert all(answered.values())
            r = httpx.post(f"{first.url}/v1/batches", json=batch_body, headers={"Idempotency-Key": "batch-1"},
                           timeout=120)
            assert r.status_code == 202, r.text
            batch_id = r.json()["id"]
            lost: dict[int, Future[dict[str, Any] | None]] = {
                n: pool.submit(ask, first, n, singles[n]) for n in range(ANSWERED_BEFORE, SINGLES)}
            accepted = until(lambda: stored_count(db) == BATCH + SINGLES, WORK_S, first.tail)
            progress = until(lambda: _completed(first, batch_id), WORK_S, first.tail)
            assert accepted and progress < BATCH, "the batch finished before the kill: make the pool slower"
            kill_all(first)
            assert all(f.result() is None for f in lost.values())  # those clients lost their connection
        before_kill = [(q.id, q.status) for q in stored(db)]
        unanswered = sum(status == "accepted" for _, status in before_kill)
        print(f"killed with {unanswered} of {len(before_kill)} accepted queries unanswered")
        assert unanswered >= SINGLES - ANSWERED_BEFORE

        restarted_at = time.monotonic()
        second = launch(folder, data, port)
        servers.append(second)
        health = until(lambda: (r := alive_get(second, "/health")) is not None and r.status_code == 200 and r,
                       RESTART_HEALTH_S, second.tail)
        up_s = time.monotonic() - restarted_at
        print(f"/health answered {up_s:.1f}s after the restart: {health.json()}")
        assert health.json()["startup"] != "ready"  # served while the recovery still runs behind it

        with ThreadPoolExecutor(SINGLES) as pool:  # every client sends its request again, same key
            retried = dict(zip(singles, pool.map(lambda n: ask(second, n, singles[n]), singles), strict=True))
        r = httpx.post(f"{second.url}/v1/batches", json=batch_body, headers={"Idempotency-Key": "batch-1"},
                       timeout=120)
        assert r.status_code == 202 and r.json()["id"] == batch_id, r.text
        until(lambda: _completed(second, batch_id) == BATCH, WORK_S, second.tail)
        until(lambda: (r := alive_get(second, "/ready")) is not None and r.status_code == 200, WORK_S, second.tail)

        assert all(retried[n] == answered[n] for n in answered)  # same id, same body
        rows = stored(db)
        ids = {q.id for q in rows}
        assert ids == {i for i, _ in before_kill}  # nothing new: no retry created a query, none was lost
        assert {r["id"] for r in retried.values() if r} <= ids and len({r["id"] for r in retried.values() if r}) == 20
        assert all(q.status == "done" and q.answer for q in rows), [(q.id, q.status, q.error) for q in rows
                                                                    if q.status != "done"]
        twice = [q.id for q in rows if len(q.generations) != len(decision_of(q).recruited)]  # type: ignore[union-attr]
        assert twice == []  # each recruited expert answered each query once: nothing ran twice
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == SINGLES + 1
    finally:
        for server in servers:
            if server.proc.poll() is None or session(server.proc.pid):
                kill_all(server)
        db.engine.dispose()


def _completed(server: Server, batch_id: int) -> int:
    r = alive_get(server, f"/v1/batches/{batch_id}")
    return int(r.json()["request_counts"]["completed"]) if r is not None and r.status_code == 200 else 0
