"""Fixtures every test package shares: one real MiniLM embedder, the real MMLU-Pro replay corpus
and slices of it, tiny HF-format model folders for the vLLM backend, and the database a test runs
on (SQLite, and Postgres too for the modules of BOTH_DATABASES)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.engine import make_url

from experts.replay import Recording, load_recording, write_recording
from orchestrator.settings import DatabaseSettings
from skills.embedder import Embedder, get_embedder

REPLAY = Path(__file__).resolve().parents[1].parent / "shared/data/mmlu_pro_replay"
SliceRecording = Callable[[Path, Sequence[str], int], Path]
MakeHFFolder = Callable[[Path, dict[str, object]], Path]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """One real MiniLM for every test: loading it once keeps the suite quick."""
    return get_embedder()


@pytest.fixture(scope="session")
def real_recording() -> Recording:
    if not REPLAY.is_dir():
        pytest.skip(f"the replay corpus is not at {REPLAY}")
    return load_recording(REPLAY)


@pytest.fixture(scope="session")
def slice_recording(real_recording: Recording) -> SliceRecording:
    """`slice_recording(folder, models, per_category)`: the first `per_category` questions of
    every category of the real corpus, answered by `models`, written as a recording folder."""

    def make(folder: Path, models: Sequence[str], per_category: int) -> Path:
        seen: Counter[str] = Counter()
        ids = []
        for qid, q in real_recording.questions.items():
            if seen[q.category] < per_category:
                seen[q.category] += 1
                ids.append(qid)
        answers = {m: {q: real_recording.answer(m, q) for q in ids} for m in models}
        return write_recording(folder, [real_recording.questions[q] for q in ids], answers)

    return make


@pytest.fixture(scope="session")
def make_hf_folder() -> MakeHFFolder:
    """Writes what vLLM reads from a model folder: the given config.json, a tiny, well-formed
    model.safetensors (header only) and a chat template (chat_template.jinja)."""

    def make(folder: Path, config: dict[str, object]) -> Path:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
        header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
        (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
        return folder

    return make


# The store, its migrations and a representative set of service and API tests run on SQLite and on
# Postgres: every test here that uses `database_url` (directly, or through `database`, `container`,
# `client`) is run once per database, ids `[sqlite]` and `[postgres]`. Elsewhere a test may opt in
# with @pytest.mark.both_databases; unmarked tests elsewhere keep SQLite alone.
BOTH_DATABASES = ("orchestrator/store/", "orchestrator/services/test_admission.py",
                  "orchestrator/services/test_query_recovery.py", "orchestrator/services/test_learning.py",
                  "orchestrator/services/test_rate_limits.py", "orchestrator/services/test_pool.py",
                  "orchestrator/services/test_instances.py",
                  "orchestrator/api/test_queries_api.py",
                  "orchestrator/api/test_batches_api.py", "orchestrator/api/test_auth.py")
TESTS = Path(__file__).resolve().parent
POSTGRES_SCRIPT = TESTS.parent / "scripts" / "postgres.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_databases: run the test on SQLite and on Postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames and _on_both(metafunc):
        metafunc.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


def _on_both(metafunc: pytest.Metafunc) -> bool:
    where = Path(metafunc.definition.path).resolve().relative_to(TESTS).as_posix()
    marked = metafunc.definition.get_closest_marker("both_databases") is not None
    return marked or where.startswith(BOTH_DATABASES)


def _postgres_missing(reason: str) -> NoReturn:
    """CI installs and starts PostgreSQL (.ci/run), so there a missing server fails; locally it skips."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server's URL (its `postgres` maintenance database): the one CI started
    (SKILLROUTE_TEST_POSTGRES_URL, from scripts/postgres.sh), else a private one this session
    starts with that script and stops at the end."""
    if url := os.environ.get("SKILLROUTE_TEST_POSTGRES_URL"):
        yield url
        return
    if not (glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") or shutil.which("pg_ctl")):
        _postgres_missing("PostgreSQL is not installed (apt-get install postgresql): the [postgres] tests need it")
    folder = tempfile.mkdtemp(prefix="skillroute-pg-")  # under /tmp: the postgres user must reach it as root
    started = subprocess.run([str(POSTGRES_SCRIPT), "start", folder], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"scripts/postgres.sh could not start PostgreSQL: {started.stderr.strip()}")
    try:
        yield started.stdout.strip().partition("=")[2]
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop", folder], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The test's own empty database: SQLite in its tmp dir (the file Settings(data_dir=tmp_path)
    uses), or, under the `postgres` parameter, a fresh database on `postgres_server`, dropped after."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'skillroute.db'}"
        return
    server = make_url(request.getfixturevalue("postgres_server"))
    name = f"skillroute_test_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(user=server.username or "postgres", password=server.password, host=server.host or "",
                         port=server.port or 5432, dbname=name):
        yield server.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def database(database_url: str) -> DatabaseSettings:
    """The settings' `database` section for `database_url`; SQLite stays the default under the data dir."""
    return DatabaseSettings() if database_url.startswith("sqlite") else DatabaseSettings(url=database_url)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many tests ran on each database, so the output shows both (with -q too)."""
    ran = {db: {outcome: sum(f"[{db}" in getattr(r, "nodeid", "") for r in terminalreporter.stats.get(outcome, [])
                             if getattr(r, "when", "call") == "call")
                for outcome in ("passed", "failed", "skipped")} for db in ("sqlite", "postgres")}
    if any(sum(counts.values()) for counts in ran.values()):
        terminalreporter.write_line("databases: " + "; ".join(
            f"[{db}] " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
            for db, counts in ran.items()))
