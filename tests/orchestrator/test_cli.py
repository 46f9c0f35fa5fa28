"""The `skillroute keys` commands against a real SQLite store in a temp data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.cli import app
from orchestrator.services.keys import KeyService
from orchestrator.settings import get_settings
from orchestrator.store.db import Database, migrate

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "console", Console(width=200))  # tables unwrapped, whatever the terminal
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_keys_create_stores_default_budgets_and_list_shows_them(data_dir: Path) -> None:
    made = runner.invoke(app, ["keys", "create", "--client", "--name", "edge-app", "--latency-ms", "800",
                               "--energy-j", "40"])
    assert made.exit_code == 0, made.output
    [key] = KeyService(Database(get_settings().db_url)).list()
    assert (key.name, key.default_latency_ms, key.default_energy_j) == ("edge-app", 800.0, 40.0)
    listed = runner.invoke(app, ["keys", "list"])
    assert "edge-app" in listed.output and "800.0" in listed.output and "40.0" in listed.output


def test_keys_create_refuses_a_non_positive_budget(data_dir: Path) -> None:
    bad = runner.invoke(app, ["keys", "create", "--latency-ms", "0"])
    assert bad.exit_code == 2 and "latency-ms" in bad.output
    migrate(get_settings().db_url)
    assert KeyService(Database(get_settings().db_url)).list() == []


@pytest.mark.both_databases
def test_keys_create_and_revoke_refuse_what_the_store_cannot_hold(data_dir: Path, database_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A name past the 64-character column, a rate or an id past PostgreSQL's INTEGER: exit 2
    naming the option there, as on SQLite (which stored the name), and nothing stored."""
    if not database_url.startswith("sqlite"):
        monkeypatch.setenv("SKILLROUTE_DATABASE__URL", database_url)
        get_settings.cache_clear()
    for args, option in ((["--name", "n" * 65], "--name"), (["--rpm", str(2**31)], "--rpm")):
        bad = runner.invoke(app, ["keys", "create", *args])
        assert bad.exit_code == 2 and option in bad.output, bad.output
    assert KeyService(Database(get_settings().db_url)).list() == []
    assert runner.invoke(app, ["keys", "create", "--name", "n" * 64]).exit_code == 0  # the widest it holds
    gone = runner.invoke(app, ["keys", "revoke", str(2**31)])
    assert gone.exit_code == 2 and "2147483647" in gone.output, gone.output


def test_a_key_name_is_shown_as_given_not_read_as_markup(data_dir: Path) -> None:
    """A name holding "[/x]" was stored, then `create` ended in MarkupError before the key was
    shown (it is shown only then) and every `keys list` after it did too."""
    made = runner.invoke(app, ["keys", "create", "--name", "[/x]"])
    assert made.exit_code == 0 and "([/x])" in made.output and "sk-sr-" in made.output, made.output
    assert runner.invoke(app, ["keys", "create", "--name", "[bold]ops"]).exit_code == 0
    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0 and "[/x]" in listed.output and "[bold]ops" in listed.output, listed.output
