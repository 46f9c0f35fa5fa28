"""The store: migrations match the models, writes are whole or nothing, profiles replace."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.store.db import Database, migrate
from orchestrator.store.models import Base
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.queries import QueryRepository
from orchestrator.store.repositories.state import StateRepository


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    migrate(url)
    database = Database(url)
    yield database
    database.engine.dispose()


def spec(name: str = "e1") -> ExpertSpec:
    return ExpertSpec(name=name, base=BaseModelSpec(kind="llamacpp", source="/m.gguf"))


def test_migrations_produce_exactly_the_models_schema(db):
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_migrate_is_idempotent(db):
    migrate(db.url)


def test_failed_unit_of_work_writes_nothing(db):
    with pytest.raises(RuntimeError), db.session() as s:
        QueryRepository(s).accept("lost?", 3)
        raise RuntimeError("boom")
    with db.session() as s:
        assert QueryRepository(s).recent() == []


def test_query_lifecycle_and_pending(db):
    with db.session() as s:
        qid = QueryRepository(s).accept("What is 2+2?", 3).id
    with db.session() as s:
        assert [q.id for q in QueryRepository(s).pending()] == [qid]
        QueryRepository(s).save_decision(qid, router="symbolic", mode="sample", seed=1, skills=[], experts=[],
                                         recruited=["e1"], aggregator=None)
        QueryRepository(s).add_generations(qid, [{"expert": "e1", "role": "expert", "text": "4"}])
        QueryRepository(s).finish(qid, "4", 0.5)
    with db.session() as s:
        q = QueryRepository(s).get(qid)
        assert (q.status, q.answer, q.decision.recruited, q.generations[0].text) == ("done", "4", ["e1"], "4")
        assert QueryRepository(s).pending() == []


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


def test_duplicate_expert_name_is_refused_by_the_schema(db):
    from sqlalchemy.exc import IntegrityError

    with db.session() as s:
        ExpertRepository(s).add(spec("dup"))
    with pytest.raises(IntegrityError), db.session() as s:
        ExpertRepository(s).add(spec("dup"))


def test_state_put_get_replace(db):
    with db.session() as s:
        StateRepository(s).put("aggregator", {"name": "a"})
    with db.session() as s:
        StateRepository(s).put("aggregator", {"name": "b"})
    with db.session() as s:
        assert StateRepository(s).get("aggregator") == {"name": "b"}
