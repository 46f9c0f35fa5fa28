"""Tables: experts and their profiles, validation records, queries, decisions, generations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates
from sqlalchemy.types import TypeDecorator

# The largest value an INTEGER column (every id, counts, rates) holds on PostgreSQL; SQLite's are
# 64-bit, so this is the bound a value must meet to be stored on both.
INTEGER_MAX = 2**31 - 1


def spelled_id(ref: str) -> int | None:
    """The row id `ref` spells (ASCII digits, within INTEGER), else None: "²" is a digit to
    `str.isdigit` but not to `int`, and a number past the column's range fails the database."""
    return int(ref) if ref.isascii() and ref.isdigit() and 0 < int(ref) <= INTEGER_MAX else None
KEY_NAME_CHARS = 64  # an API key's name (KeyService.create refuses a longer one before the insert)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A moment stored as UTC and read back aware, on every database. SQLite keeps no zone: it
    drops a bound value's offset unconverted and hands back naive datetimes, which Python then
    takes for local time; PostgreSQL converts both ways itself. Same DDL as DateTime(timezone=True)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        # a naive value is taken as UTC already, as the store has always written them
        return value.astimezone(UTC) if value is not None and value.tzinfo is not None else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        # a PostgreSQL value comes in the session's zone: one zone (UTC) for every reader
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Expert(Base):
    __tablename__ = "experts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # ExpertSpec as JSON
    base_model_key: Mapped[str] = mapped_column(String(512), index=True)
    # registered → profiling → ready | failed; only `ready` experts are recruited
    status: Mapped[str] = mapped_column(String(16), default="registered")
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    profile_total: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # when its persona last changed (None: never): feedback on a query from before then judges
    # answers of a persona it no longer has, and teaches nothing about it (services/feedback.py)
    persona_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    skills: Mapped[list[SkillScore]] = relationship(back_populates="expert", cascade="all, delete-orphan")

    @validates("spec")
    def _date_persona(self, _key: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Date a change of persona, what services/experts.py profiles again for: its system
        prompt or sampling. Here, so every way a spec is stored (a PATCH, the pool file) dates it."""
        old = self.spec if inspect(self).persistent else None
        if old is not None and _persona(old) != _persona(spec):
            self.persona_changed_at = utcnow()
        return spec


def _persona(spec: dict[str, Any]) -> tuple[Any, Any]:
    return spec.get("system_prompt"), spec.get("sampling")


class SkillScore(Base):
    __tablename__ = "skill_scores"
    __table_args__ = (UniqueConstraint("expert_id", "skill"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    expert_id: Mapped[int] = mapped_column(ForeignKey("experts.id", ondelete="CASCADE"), index=True)
    skill: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)

    expert: Mapped[Expert] = relationship(back_populates="skills")


class ValidationQuestion(Base):
    """A labelled question of the profiling set, with the skills it was read as needing."""

    __tablename__ = "validation_questions"
    __table_args__ = (UniqueConstraint("dataset", "qid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset: Mapped[str] = mapped_column(String(128), index=True)
    qid: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # LabelledQuestion fields
    skills: Mapped[list[Any]] = mapped_column(JSON)
    # the question's float32 embedding (skills/embedder.py), read back at every start instead of
    # embedding thousands of questions again; None until first computed (a row from before 0008)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, default=None)


class ValidationAnswer(Base):
    """One expert's graded answer to one validation question: the profile's raw evidence."""

    __tablename__ = "validation_answers"
    __table_args__ = (UniqueConstraint("expert_id", "question_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    expert_id: Mapped[int] = mapped_column(ForeignKey("experts.id", ondelete="CASCADE"), index=True)
    question_id: Mapped[int] = mapped_column(ForeignKey("validation_questions.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    correct: Mapped[bool] = mapped_column()
    # what the reply took (None: a failed reply, or a row from before 0009): a restart reads the
    # local ones back, so the budgets cost each model by its own runs before its first query
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    latency_s: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)


class AppState(Base):
    """Small key/value facts about the pool (the chosen aggregator, say)."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)


class Query(Base):
    __tablename__ = "queries"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    k: Mapped[int] = mapped_column(Integer)
    # accepted → done | failed: the row is written before any work so nothing accepted is lost
    status: Mapped[str] = mapped_column(String(16), default="accepted", index=True)
    answer: Mapped[str | None] = mapped_column(Text, default=None)
    # the final reply whole, whichever way it was reached (an aggregator, a vote, a lone expert)
    reply: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    latency_s: Mapped[float | None] = mapped_column(Float, default=None)
    # the whole request (`domain.Ask`): a query recovered after a crash is asked the same way
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # the running service (`instances.id`) that answers it while accepted; none: from before owners
    owner: Mapped[str | None] = mapped_column(String(32), default=None)

    decision: Mapped[RoutingDecision | None] = relationship(back_populates="query", cascade="all, delete-orphan")
    generations: Mapped[list[GenerationRow]] = relationship(
        back_populates="query", cascade="all, delete-orphan", order_by="GenerationRow.id"
    )


class RoutingDecision(Base):
    """A query's routing decision, stored as the record it is (`domain.Decision` as JSON)."""

    __tablename__ = "routing_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id", ondelete="CASCADE"), unique=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)

    query: Mapped[Query] = relationship(back_populates="decision")


class GenerationRow(Base):
    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id", ondelete="CASCADE"), index=True)
    expert: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # expert | aggregator
    text: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    # stop | length, as the backend said (a chat reply's finish_reason); None: it could not tell,
    # or the row is from before it was stored
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)

    query: Mapped[Query] = relationship(back_populates="generations")


class Instance(Base):
    """A running service (one Serve replica, one `skillroute serve`) and its last heartbeat: how
    replicas on one database tell a live owner of accepted queries from a dead one."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key: a salted scrypt hash of it, never the key itself (shown once, at creation)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(KEY_NAME_CHARS))
    role: Mapped[str] = mapped_column(String(16))  # admin | client
    # the key's public lookup part, so a request costs one indexed read and one hash, not a scan
    prefix: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(128))
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    # budgets for the key's queries that name none themselves (a request's own value wins)
    default_latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    default_energy_j: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class Batch(Base):
    """Queries submitted together and answered in the background; status derives from its queries."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    items: Mapped[list[BatchItem]] = relationship(
        back_populates="batch", cascade="all, delete-orphan", order_by="BatchItem.position"
    )


class BatchItem(Base):
    __tablename__ = "batch_items"
    __table_args__ = (UniqueConstraint("batch_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(64), default=None)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id", ondelete="CASCADE"))

    batch: Mapped[Batch] = relationship(back_populates="items")
    query: Mapped[Query] = relationship()


class LessonRow(Base):
    """What one query taught the router (`routing.learning.Lesson`): its embedding and skills,
    and each answering expert's mark and choice. One of each source per query: feedback given
    again replaces the first, so it counts once."""

    __tablename__ = "lessons"
    __table_args__ = (UniqueConstraint("query_id", "source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int | None] = mapped_column(ForeignKey("queries.id", ondelete="CASCADE"), default=None)
    source: Mapped[str] = mapped_column(String(16), index=True)  # competition | explore | feedback
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian
    skills: Mapped[list[Any]] = mapped_column(JSON)
    marks: Mapped[dict[str, Any]] = mapped_column(JSON)
    choices: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IdempotencyKey(Base):
    """An `Idempotency-Key` a client sent with a POST, and what that first request created: its
    queries or its batch. Unique per scope (the client's API key, or anonymous), so a retry
    finds the first request's result; written in the same transaction as what it points to."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(32))  # "key:<api key id>" | "anonymous"
    key: Mapped[str] = mapped_column(String(255))
    endpoint: Mapped[str] = mapped_column(String(32))  # the path it was sent to
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical request body
    query_ids: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class RateLimitHit(Base):
    """One request a key's rate limit counted (services/keys.py RateLimiter). Kept in the store so
    every Serve replica counts against the same limit; a hit older than the window is deleted when
    the key is next counted, so a key holds at most its limit of rows."""

    __tablename__ = "rate_limit_hits"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    # unix time in seconds: replicas share the wall clock, never one process's monotonic clock
    at: Mapped[float] = mapped_column(Float)
