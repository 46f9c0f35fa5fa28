"""The store: migrations match the models, writes are whole or nothing, profiles replace."""

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from experts.types import BaseModelSpec, ExpertSpec, Generation
from orchestrator.domain import Answer, Ask, Decision, Outcome
from orchestrator.routing.learning import Lesson
from orchestrator.store.db import Database, migrate
from orchestrator.store.models import Base, Instance
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.instances import InstanceRepository
from orchestrator.store.repositories.lessons import LessonRepository
from orchestrator.store.repositories.queries import QueryRepository, answers_of, decision_of
from orchestrator.store.repositories.state import StateRepository
from orchestrator.store.repositories.validation import Graded, ValidationRepository


def spec(name: str = "e1") -> ExpertSpec:
    return ExpertSpec(name=name, base=BaseModelSpec(kind="llamacpp", source="/m.gguf"))


def test_migrations_produce_exactly_the_models_schema(db):
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_migrate_is_idempotent(db):
    """Every start migrates: on a migrated store it changes neither the schema nor what is stored."""
    with db.session() as s:
        ExpertRepository(s).add(spec())
    migrate(db.url)
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    with db.session() as s:
        assert [e.name for e in ExpertRepository(s).list()] == ["e1"]


def test_failed_unit_of_work_writes_nothing(db):
    with pytest.raises(RuntimeError), db.session() as s:
        QueryRepository(s).accept(Ask(text="lost?"))
        raise RuntimeError("boom")
    with db.session() as s:
        assert QueryRepository(s).recent() == []


def test_query_lifecycle_and_pending(db):
    with db.session() as s:
        decision = Decision.made("symbolic", "sample", 1, [], [], ["e1"], None)
        qid = QueryRepository(s).accept(Ask(text="What is 2+2?"), decision).id
    with db.session() as s:
        assert [q.id for q in QueryRepository(s).pending()] == [qid]
        answer = Answer(expert="e1", role="expert", text="Answer: 4")
        QueryRepository(s).finish(qid, Outcome(decision=decision, answers=[answer], text=answer.text, latency_s=0.5))
    with db.session() as s:
        q = QueryRepository(s).get(qid)
        assert (q.status, q.answer, q.generations[0].text) == ("done", "4", "Answer: 4")
        assert decision_of(q) == decision and answers_of(q) == [answer]  # the records, as they were
        assert QueryRepository(s).pending() == []


def test_a_query_finished_already_keeps_its_first_outcome(db):
    """Two replicas that both recovered one query both answer it: the store keeps the first
    answer and its generations once, and a later failure does not overwrite it."""
    decision = Decision.made("symbolic", "sample", 1, [], [], ["e1"], None)
    with db.session() as s:
        qid = QueryRepository(s).accept(Ask(text="What is 2+2?"), decision).id
    first, second = (Answer(expert="e1", role="expert", text=t) for t in ("Answer: 4", "Answer: 5"))
    stored = []
    for answer in (first, second):
        with db.session() as s:
            stored.append([r.answer for r in QueryRepository(s).finish_many(
                [(qid, Ask(text="What is 2+2?"), Outcome(decision=decision, answers=[answer], text=answer.text))])])
    assert stored == [["4"], []]  # the second finds it finished: nothing written, nothing returned
    with db.session() as s:
        assert QueryRepository(s).fail(qid, "too late") is False  # it changed nothing: counted nowhere
    with db.session() as s:
        (row,) = QueryRepository(s).get_many([qid])
        assert (row.status, row.answer, row.error) == ("done", "4", None)
        assert [g.text for g in row.generations] == ["Answer: 4"]


def test_two_replicas_finishing_one_query_at_once_store_the_first_answer_alone(db):
    """Replica A has finished the query but not committed when B finishes it too: B must find it
    finished once A commits. SQLite ignored the FOR UPDATE that made B wait on PostgreSQL, and B
    had read the query as accepted before A committed: both finished it, generations twice."""
    decision = Decision.made("symbolic", "sample", 1, [], [], ["e1"], None)
    with db.session() as s:
        qid = QueryRepository(s).accept(Ask(text="What is 2+2?"), decision).id
    other, results = Database(db.url), []  # a second replica: its own engine on the same database

    def replica_b() -> None:
        with other.session() as s:
            results.append(QueryRepository(s).finish_many([_finished(qid, decision, "B")]))

    try:
        with db.session() as s:
            assert len(QueryRepository(s).finish_many([_finished(qid, decision, "A")])) == 1
            thread = threading.Thread(target=replica_b)
            thread.start()
            _wait_until_writing(db, other, thread)
        thread.join(30)
    finally:
        other.engine.dispose()
    assert results == [[]]
    with db.session() as s:
        row = QueryRepository(s).get(qid)
        assert (row.reply, [g.text for g in row.generations]) == ("by A", ["by A"])


def _finished(qid: int, decision: Decision, who: str) -> tuple[int, Ask, Outcome]:
    answer = Answer(expert="e1", role="expert", text=f"by {who}")
    return qid, Ask(text="What is 2+2?"), Outcome(decision=decision, answers=[answer], text=answer.text)


def _wait_until_writing(db: Database, other: Database, thread: threading.Thread) -> None:
    """Until B waits for A: on PostgreSQL, on a row lock; on SQLite, once B sends its first
    write (which waits for A's write lock), B having read whatever it reads before it."""
    writing = threading.Event()
    event.listen(other.engine, "before_cursor_execute",
                 lambda *a: writing.set() if a[2].lstrip().upper().startswith("UPDATE") else None)
    deadline = time.monotonic() + 30
    while not (_waiting_on_a_lock(db) if db.engine.dialect.name == "postgresql" else writing.is_set()):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)


def test_moments_read_back_in_utc_on_every_database(db):
    """A moment is stored as UTC whatever zone it was given in and read back aware, in UTC
    (SQLite kept the wall time of any zone and handed it back naive)."""
    moment = datetime(2024, 5, 1, 18, 30, tzinfo=timezone(timedelta(hours=9)))
    with db.session() as s:
        InstanceRepository(s).beat("i1", "host", 1, moment)
    with db.session() as s:
        seen = s.get(Instance, "i1").seen_at
    assert seen == moment and seen.tzinfo == UTC and seen.hour == 9


def test_a_start_claims_and_a_heartbeat_adopts_only_queries_no_live_service_owns(db):
    with db.session() as s:
        repo = QueryRepository(s)
        ids = {o: repo.accept(Ask(text=f"owned by {o}"), owner=o).id for o in ("live", "dead", None, "me")}
        late = [repo.accept(Ask(text=f"late {i}"), owner="gone").id for i in range(3)]
    live = {"me", "live"}
    with db.session() as s:
        QueryRepository(s).claim("me", live, through=ids["me"])
    with db.session() as s:
        owners = {o: row.owner for o, row in zip(ids, QueryRepository(s).get_many(list(ids.values())), strict=True)}
        assert owners == {"live": "live", "dead": "me", None: "me", "me": "me"}
        assert [q.id for q in QueryRepository(s).pending(owner="me")] == [ids["dead"], ids[None], ids["me"]]
    with db.session() as s:  # what "gone" owned, two at a time, oldest first; a live one's never
        taken = [QueryRepository(s).adopt("me", live, 2) for _ in range(3)]
    assert taken == [late[:2], late[2:], []]


def test_a_generation_holding_nul_is_stored_on_every_database(db):
    """A model that emits NUL (PostgreSQL's text columns refuse it) is stored with U+FFFD instead,
    so its query, and the others finished in the same statement, are not lost."""
    gen = Generation(request_id="r1", text="Answer: 4\x00")
    assert gen.text == "Answer: 4\ufffd" and Generation(request_id="r2", text="", error="x\x00").error == "x\ufffd"
    with db.session() as s:
        decision = Decision.made("symbolic", "sample", 1, [], [], ["e1"], None)
        qids = [QueryRepository(s).accept(Ask(text=t), decision).id for t in ("What is 2+2?", "What is 3+3?")]
    answers = [Answer(expert="e1", role="expert", text=t) for t in (gen.text, "Answer: 6")]
    with db.session() as s:
        QueryRepository(s).finish_many([(qid, Ask(text="q"), Outcome(decision=decision, answers=[a], text=a.text))
                                        for qid, a in zip(qids, answers, strict=True)])
    with db.session() as s:
        assert [QueryRepository(s).get(q).generations[0].text for q in qids] == ["Answer: 4\ufffd", "Answer: 6"]


def test_each_generation_keeps_its_finish_reason(db):
    """The backend's reason (a chat reply's finish_reason) is written with each generation by the
    finish path and read back, as the rows `finish_many` returns have it; unknown stays None."""
    decision = Decision.made("symbolic", "sample", 1, [], [], ["e1", "e2"], "e1")
    with db.session() as s:
        qid = QueryRepository(s).accept(Ask(text="What is 2+2?"), decision).id
    answers = [Answer(expert="e1", role="expert", text="Answer: 4", finish_reason="length"),
               Answer(expert="e2", role="expert", text="Answer: 4"),
               Answer(expert="e1", role="aggregator", text="Answer: 4", finish_reason="stop")]
    with db.session() as s:
        (written,) = QueryRepository(s).finish_many(
            [(qid, Ask(text="What is 2+2?"), Outcome(decision=decision, answers=answers, text="Answer: 4"))])
    with db.session() as s:
        stored = QueryRepository(s).get(qid)
        assert [g.finish_reason for g in stored.generations] == ["length", None, "stop"]
        assert answers_of(stored) == answers == answers_of(written)


def test_profile_is_replaced_whole(db):
    with db.session() as s:
        eid = ExpertRepository(s).add(spec()).id
        ExpertRepository(s).save_profile(eid, {"math": 2.0, "law": -1.0}, 0.6)
    with db.session() as s:
        ExpertRepository(s).save_profile(eid, {"physics": 1.0}, 0.7)
    with db.session() as s:
        e = ExpertRepository(s).get(eid)
        assert {k.skill: k.score for k in e.skills} == {"physics": 1.0}
        assert (e.accuracy, e.profile_total) == (0.7, 1.0)


def test_timings_read_back_each_expert_set_s_last_runs_oldest_first(db):
    """Profiling answers keep what their reply took (a failed one nothing); both stores give the
    last `limit` runs of the experts asked for, in the order they ran."""
    with db.session() as s:
        ids = [ExpertRepository(s).add(spec(n)).id for n in ("e1", "e2", "other")]
        for eid in ids:
            ValidationRepository(s).add_questions(f"d{eid}", [(f"q{eid}", {}, [], None)])
        qid = {eid: ValidationRepository(s).questions(f"d{eid}")[0].id for eid in ids}
        ValidationRepository(s).save_answers(ids[0], [Graded(qid[ids[0]], "A", True, 10, 2, 0.5)])
        ValidationRepository(s).save_answers(ids[1], [Graded(qid[ids[1]], "", False)])  # failed: untimed
        ValidationRepository(s).save_answers(ids[2], [Graded(qid[ids[2]], "B", False, 11, 3, 0.7)])
        decision = Decision.made("symbolic", "sample", 1, [], [], ["e1"], None)
        queries = [QueryRepository(s).accept(Ask(text=f"q{i}"), decision).id for i in range(3)]
    answers = [Answer(expert=e, role="expert", text="x", prompt_tokens=i, completion_tokens=1, latency_s=i / 10)
               for i, e in enumerate(("e1", "e2", "other"))]
    with db.session() as s:
        QueryRepository(s).finish_many([(q, Ask(text="q"), Outcome(decision=decision, answers=[a], text="x"))
                                        for q, a in zip(queries, answers, strict=True)])
    with db.session() as s:
        assert [tuple(r) for r in ValidationRepository(s).timings(ids[:2], 5)] == [(ids[0], 10, 2, 0.5)]
        assert [tuple(r) for r in ValidationRepository(s).timings(ids, 1)] == [(ids[2], 11, 3, 0.7)]
        assert [tuple(r) for r in QueryRepository(s).timings(["e1", "e2"], 5)] == [("e1", 0, 1, 0.0),
                                                                                   ("e2", 1, 1, 0.1)]
        assert [r.expert for r in QueryRepository(s).timings(["e1", "e2", "other"], 2)] == ["e2", "other"]


def lessons(s: Session, stale: dict[str, int] | None = None, embedded: int | None = None) -> list[Lesson]:
    return [x for _, x in LessonRepository(s).with_ids(stale, embedded)]


def test_lessons_past_the_newest_few_are_read_without_their_embedding(db):
    """A start needs only the newest lessons' vectors (the memory keeps those) and every lesson's
    marks (profiles are sums): older ones come with an empty embedding, marks and skills intact."""
    with db.session() as s:
        for i in range(5):
            LessonRepository(s).store(Lesson(np.full(4, i, dtype=np.float32), ("x",), {"e1": i % 2 == 0}))
    with db.session() as s:
        every, bounded = lessons(s), lessons(s, embedded=2)
        stale = lessons(s, {"e1": LessonRepository(s).last_id() - 1}, embedded=0)
    assert [len(x.embedding) for x in every] == [4] * 5 and [len(x.embedding) for x in bounded] == [0, 0, 0, 4, 4]
    assert [x.embedding[0] for x in bounded[3:]] == [3.0, 4.0]
    assert [(x.skills, dict(x.marks)) for x in bounded] == [(x.skills, dict(x.marks)) for x in every]
    assert [dict(x.marks) for x in stale] == [{}, {}, {}, {}, {"e1": True}] and not any(len(x.embedding) for x in stale)


def test_two_feedbacks_on_one_query_at_once_both_succeed_and_one_lesson_stays(db):
    """PostgreSQL: the second request's insert waits on the first's uncommitted row, then meets
    it; it replaces that row instead of failing (SQLite takes one writer at a time)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises the two writers whole")
    with db.session() as s:
        qid = QueryRepository(s).accept(Ask(text="What is 2+2?")).id
    lesson = Lesson(np.ones(4, dtype=np.float32), ("x",), {"e1": True}, source="feedback")
    results: list[bool | BaseException] = []

    def second() -> None:
        try:
            with db.session() as s:
                results.append(not LessonRepository(s).store(lesson, qid).replaced)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            results.append(exc)

    with db.session() as s:
        assert not LessonRepository(s).store(lesson, qid).replaced  # stored, not committed yet
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        while not _waiting_on_a_lock(db):  # polls PostgreSQL itself for the second's wait
            assert time.monotonic() < deadline and thread.is_alive(), results
            time.sleep(0.01)
    thread.join(30)
    assert results == [False]  # it replaced the first one's lesson
    with db.session() as s:
        assert len(LessonRepository(s).for_query(qid)) == 1


def _waiting_on_a_lock(db: Database) -> bool:
    with db.engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND datname = current_database()")).scalar())


def test_duplicate_expert_name_is_refused_by_the_schema(db):
    from orchestrator.store.repositories.experts import NameTaken

    with db.session() as s:
        ExpertRepository(s).add(spec("dup"))
    with pytest.raises(NameTaken), db.session() as s:  # the unique name decides a race, portably
        ExpertRepository(s).add(spec("dup"))


def test_state_put_get_replace(db):
    with db.session() as s:
        StateRepository(s).put("aggregator", {"name": "a"})
    with db.session() as s:
        StateRepository(s).put("aggregator", {"name": "b"})
    with db.session() as s:
        assert StateRepository(s).get("aggregator") == {"name": "b"}


def test_0004_folds_a_stored_decision_into_its_record(database_url):
    """Rows written field by field before 0004 read back as the same decision record."""
    import json

    from sqlalchemy import text

    url = database_url
    migrate(url, "0003")
    old = Database(url)
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO queries (id, text, k, status, created_at) VALUES (1, 'q', 2, 'done', "
                          "'2026-01-01 00:00:00')"))
        skills = json.dumps([{"keyword": "q", "skill": "math", "similarity": 0.5}])
        experts = json.dumps([{"name": "a", "suitability": 2.0, "competence": 0.5, "weight": 1.0}])
        conn.execute(text(
            "INSERT INTO routing_decisions (query_id, router, mode, seed, skills, experts, recruited, aggregator) "
            "VALUES (1, 'symbolic', 'sample', 5, :skills, :experts, '[\"a\", \"a\"]', 'a')"),
            {"skills": skills, "experts": experts})
    old.engine.dispose()
    migrate(url)
    db = Database(url)
    with db.session() as s:
        d = decision_of(QueryRepository(s).get(1))
    assert d is not None and (d.router, d.mode, d.seed, d.recruited, d.aggregator) == ("symbolic", "sample", 5,
                                                                                       ["a", "a"], "a")
    assert d.experts[0].name == "a" and d.experts[0].recruited == 2 and d.skills[0].skill == "math"
