"""Engine and sessions; the schema is created by Alembic migrations, never by create_all."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = _engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return _engine(url, pool_pre_ping=True)


def _engine(url: str, **options: Any) -> Engine:
    """create_engine, a URL whose driver is not installed (mysql:// without mysqlclient) refused as
    a URL SQLAlchemy cannot read (ArgumentError): its ModuleNotFoundError read as a bug."""
    try:
        return create_engine(url, **options)
    except ImportError as exc:
        raise ArgumentError(f"its driver {exc.name or exc} (for {make_url(url).drivername}://) is not installed: "
                            "install it, or name a driver that is") from exc


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the dashboard read while a batch writes; foreign keys make cascades real.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def alembic_config(url: str) -> Config:
    """Alembic's view of this project's migrations on the database at `url`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # alembic reads main options through configparser, where a literal % (a quoted password) must be doubled
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database to the newest schema, or to `revision` (idempotent). Replicas starting
    together on one database take turns, so the first migrates and the others find it done (two at
    once would both create the first table, and all but one fail); alembic's context is global to
    the process, so its threads take turns too."""
    with _IN_PROCESS, _across_processes(url, MIGRATION_LOCK, "migrate"):
        _check_known(url)
        command.upgrade(alembic_config(url), revision)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer skillroute: this one does not know its schema."""


def _check_known(url: str) -> None:
    """Refuse, in a line, a database at a revision these migrations lack: alembic's own error
    ("Can't locate revision") came as a long traceback that never said a newer version wrote it."""
    script = ScriptDirectory.from_config(alembic_config(url))
    engine = _engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_heads()
    finally:
        engine.dispose()
    known = {s.revision for s in script.walk_revisions()}
    if unknown := [r for r in current if r not in known]:
        raise SchemaTooNew(f"the database at {make_url(url).render_as_string(hide_password=True)} is at schema "
                           f"revision {', '.join(unknown)}, newer than this skillroute's ({script.get_current_head()}):"
                           " a newer skillroute wrote it; run that one, or start on another SKILLROUTE_DATA_DIR")


@contextmanager
def preparing(url: str) -> Iterator[None]:
    """Held while a start prepares the pool (pool-file sync, validation set, profiling, the
    aggregator): replicas starting together take turns, so the first does the work and the
    others find it done (two at once both stored the validation set, and one failed on its
    unique key). A lock of its own, not the migration's: a replica waiting here has migrated
    and serves HTTP (/health) meanwhile. Threads of one process take turns too (each holds its
    own connection or file descriptor)."""
    with _across_processes(url, PREPARE_LOCK, "prepare"):
        yield


_IN_PROCESS = threading.Lock()
MIGRATION_LOCK = 7_241_302_166  # the Postgres advisory lock id every skillroute migration takes
PREPARE_LOCK = 7_241_302_167  # the one a start's prepare step takes


@contextmanager
def _across_processes(url: str, lock_id: int, name: str) -> Iterator[None]:
    """Postgres: a session advisory lock, released when its connection closes. SQLite: an flock
    on a file beside the database (the database file itself carries SQLite's own locks).

    The lock's connection autocommits: it held a transaction open (SQLAlchemy begins one at the
    first statement) for the whole step, minutes of profiling, and a server's
    idle_in_transaction_session_timeout ended it, lock and all, letting the next replica in."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        engine = _engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
                yield
        finally:
            engine.dispose()
    elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        with open(f"{parsed.database}.{name}-lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield
    else:
        yield


class Database:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back (writing nothing) on error."""
        with self._sessions() as session, session.begin():
            yield session
