"""Every migration runs both ways, on SQLite and on Postgres: up to head, down to nothing, up again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from experts.types import ExpertSpec
from orchestrator.cli_failures import config_error
from orchestrator.store.db import Database, SchemaTooNew, alembic_config, migrate, preparing
from orchestrator.store.models import Base
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.validation import ValidationRepository
from tests.orchestrator.conftest import small_pool


def tables(url: str) -> set[str]:
    db = Database(url)
    try:
        return set(inspect(db.engine).get_table_names()) - {"alembic_version"}
    finally:
        db.engine.dispose()


def schema_drift(url: str) -> list[object]:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        db.engine.dispose()


def test_upgrade_to_head_then_downgrade_to_base_then_up_again(database_url: str) -> None:
    migrate(database_url)
    assert tables(database_url) == set(Base.metadata.tables)
    command.downgrade(alembic_config(database_url), "base")  # every downgrade() runs, newest first
    assert tables(database_url) == set()
    migrate(database_url)
    assert schema_drift(database_url) == []


def test_0011_keeps_earlier_generations_with_their_finish_reason_unknown(database_url: str) -> None:
    """A generation stored before finish reasons were reads back with none (a chat reply then
    guesses, as it did); down again, the column goes and the generation stays."""
    migrate(database_url, "0010")
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO queries (id, text, k, status, created_at) "
                              "VALUES (1, 'q', 1, 'done', '2026-01-01 00:00:00')"))
            conn.execute(text("INSERT INTO generations (query_id, expert, role, text, prompt_tokens, "
                              "completion_tokens, latency_s) VALUES (1, 'e1', 'expert', 'Answer: 4', 3, 96, 0.5)"))
        migrate(database_url)
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT text, finish_reason FROM generations")).all() == [("Answer: 4", None)]
        command.downgrade(alembic_config(database_url), "0010")
        assert "finish_reason" not in {c["name"] for c in inspect(db.engine).get_columns("generations")}
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT text, completion_tokens FROM generations")).all() == [("Answer: 4", 96)]
    finally:
        db.engine.dispose()


def test_a_url_with_percent_escapes_migrates(database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A password with @ or % is percent-encoded in the URL, which alembic's config must not read as
    interpolation (Postgres trusts local connections here, so any password reaches the server)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        url = url.set(database=str(tmp_path / "100%.db"))
    else:
        url = url.set(password="p%w@rd")
    odd = url.render_as_string(hide_password=False)
    assert "%" in odd
    migrate(odd)
    assert tables(odd) == set(Base.metadata.tables)


def test_replicas_starting_together_migrate_once_and_all_start(database_url: str) -> None:
    """Three processes (replicas) migrate one fresh database at the same moment: without the lock
    in `migrate`, all but one fail creating a table the first one made."""
    code = f"from orchestrator.store.db import migrate; migrate({database_url!r})"
    root = Path(__file__).resolve().parents[3]
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    assert schema_drift(database_url) == []


REPLICA = """
import sys, time
from pathlib import Path
from orchestrator.container import SkillRoute
from orchestrator.settings import DatabaseSettings
from skills.embedder import get_embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

url, data, gate, replicas = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
experts = [mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1", "law persona"),
           mock_expert("gamma", "m2")]
c = SkillRoute(quiet_settings(data, database=DatabaseSettings(url=url)), small_pool(experts),
               factory=mock_or_real, embedder=get_embedder())
(gate / data.name).touch()  # built: start when every replica is (the moment a rollout starts them)
deadline = time.monotonic() + 120
while len(list(gate.iterdir())) < replicas and time.monotonic() < deadline:
    time.sleep(0.005)
try:
    c.start()
finally:
    c.close()
"""


def test_replicas_starting_together_on_an_empty_store_all_start(database_url: str, tmp_path: Path) -> None:
    """Two replicas start at the same moment on one empty database: each found no validation set
    (and no experts) and stored its own, and one failed on the other's unique key. They take
    turns at preparing the pool: the second finds it done, and every expert is profiled once."""
    root, gate = Path(__file__).resolve().parents[3], tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", REPLICA, database_url, str(tmp_path / f"r{i}"), str(gate), "2"],
                              cwd=root, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()[-2000:] if p.stderr else "") for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    db = Database(database_url)
    try:
        with db.session() as s:
            experts = ExpertRepository(s).list()
            assert sorted((r.name, r.status) for r in experts) == [("alpha", "ready"), ("beta", "ready"),
                                                                    ("gamma", "ready")]
            questions = ValidationRepository(s).questions(small_pool([]).validation.dataset_key())
            assert len(ValidationRepository(s).answers([r.id for r in experts])) == 3 * len(questions)
    finally:
        db.engine.dispose()


def test_0013_fits_stored_expert_specs_to_today_s_rules(database_url: str) -> None:
    """A spec stored under looser rules (a seed past 2^31-1, an empty stop) no longer validated,
    and one such expert stopped every start."""
    migrate(database_url, "0012")
    sampling = {"temperature": 0.0, "max_tokens": 8, "seed": 3_000_000_000, "stop": ["", "x" * 300, *"abcde"]}
    spec = {"name": "old", "base": {"kind": "mock", "source": "m1"}, "sampling": sampling}
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO experts (id, name, spec, base_model_key, status, progress_done, "
                              "progress_total, created_at) VALUES (1, 'old', :spec, 'mock:m1', 'ready', 0, 0, "
                              "'2026-01-01 00:00:00')"), {"spec": json.dumps(spec)})
        migrate(database_url)
        with db.session() as s:
            fitted = ExpertSpec.model_validate(ExpertRepository(s).by_name("old").spec)  # type: ignore[union-attr]
        assert (fitted.sampling.seed, fitted.sampling.stop) == (3_000_000_000 % 2**31, ["a", "b", "c", "d"])
        assert fitted.sampling.max_tokens == 8 and fitted.base.source == "m1"
    finally:
        db.engine.dispose()


def test_0014_spells_a_stored_model_source_one_way_and_its_key_with_it(database_url: str) -> None:
    """Read back, `/m/./smol.gguf` is `/m/smol.gguf` (experts.types.one_spelling), but the stored
    key column kept the old spelling: the n_ctx check and the unload of a removed expert's model,
    which compare the two, missed the row."""
    migrate(database_url, "0013")
    rows = {1: ("old", {"kind": "llamacpp", "source": "/m/./a/../smol.gguf"}, "llamacpp:/m/./a/../smol.gguf"),
            2: ("pkg", {"kind": "llamacpp", "source": "package: smollm2-135m-instruct "},
                "llamacpp:package: smollm2-135m-instruct "),
            3: ("far", {"kind": "openai", "source": "http://h/./v1", "model": "m"}, "openai:http://h/./v1#m")}
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            for i, (name, base, key) in rows.items():
                conn.execute(text("INSERT INTO experts (id, name, spec, base_model_key, status, progress_done, "
                                  "progress_total, created_at) VALUES (:id, :name, :spec, :key, 'ready', 0, 0, "
                                  "'2026-01-01 00:00:00')"),
                             {"id": i, "name": name, "spec": json.dumps({"name": name, "base": base}), "key": key})
        migrate(database_url)
        with db.session() as s:
            stored = {r.name: (r.base_model_key, ExpertSpec.model_validate(r.spec).base.key)
                      for r in ExpertRepository(s).list(profiles=False)}
        assert stored == {"old": ("llamacpp:/m/smol.gguf",) * 2,
                          "pkg": ("llamacpp:package:smollm2-135m-instruct",) * 2,
                          "far": ("openai:http://h/./v1#m",) * 2}
    finally:
        db.engine.dispose()


def test_a_start_s_lock_holds_no_transaction_open_while_held(database_url: str) -> None:
    """Postgres ends a session idle in a transaction past idle_in_transaction_session_timeout
    (a common production setting), and its advisory lock with it: the lock's connection held one
    open for the whole prepare step, minutes of profiling, and the next replica walked in."""
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("an advisory lock is Postgres's; SQLite's is a file lock")
    migrate(database_url)
    db = Database(database_url)
    try:
        with preparing(database_url), db.engine.connect() as conn:
            states = conn.execute(text("SELECT state FROM pg_stat_activity WHERE query LIKE 'SELECT pg_advisory_lock%'"
                                       " AND pid <> pg_backend_pid()")).scalars().all()
        assert states == ["idle"]
    finally:
        db.engine.dispose()


def test_a_database_a_newer_skillroute_migrated_is_refused_in_a_line(database_url: str) -> None:
    """Alembic's "Can't locate revision" came as a long traceback never saying a newer version
    wrote the database; the CLI prints this one line (exit 2)."""
    migrate(database_url)
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        newer = rf"at schema revision 0099, newer than this skillroute's \({head}\)"
        with pytest.raises(SchemaTooNew, match=newer) as err:
            migrate(database_url)
        assert config_error(err.value) == str(err.value) and "\n" not in str(err.value)
    finally:
        db.engine.dispose()
