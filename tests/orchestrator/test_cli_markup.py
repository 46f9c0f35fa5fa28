"""What the CLI prints of a user's text (a model path, a name, a refusal quoting either, a log
line) is printed as it is, never read as rich markup: "[/x]" in one raised MarkupError (a
traceback, exit 1) and "[bold]" or "[q4_k_m]" vanished from it."""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.api.app import create_app
from orchestrator.cli import app
from orchestrator.container import SkillRoute
from orchestrator.settings import get_settings
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

runner = CliRunner()
PATHS = ["/models/qwen[q4_k_m].gguf", "/models/[/x]/a.gguf", "/models/[bold]b.gguf"]


@pytest.fixture
def bracketed(tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkillRoute]:
    """A profiled pool whose models' paths hold brackets, the in-process verbs working on it."""
    experts = [mock_expert(f"e{i}", path) for i, path in enumerate(PATHS)]
    c = SkillRoute(quiet_settings(tmp_path), small_pool(experts), factory=mock_or_real, embedder=embedder)
    c.bootstrap()
    monkeypatch.setattr(cli, "console", Console(width=250))  # tables unwrapped, whatever the terminal
    monkeypatch.setattr(cli, "_container", lambda pool: c)
    yield c
    c.close()


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "url"])
def test_the_expert_table_shows_model_paths_as_they_are(bracketed: SkillRoute, remote: bool) -> None:
    with live_server(create_app(bracketed)) as url:
        r = runner.invoke(app, ["experts", "list", *(["--url", url] if remote else [])])
    assert r.exit_code == 0, r.output
    assert all(f"mock:{path}" in r.output for path in PATHS), r.output


@pytest.mark.parametrize(("args", "said"), [
    (["add", "zz", "--kind", "llamacpp", "--source", "/tmp/[/x].gguf"], "no such file: /tmp/[/x].gguf"),
    (["add", "zz", "--kind", "llamacpp", "--source", "/tmp/[bold]x.gguf"], "no such file: /tmp/[bold]x.gguf"),
    (["update", "[/x]", "--disable"], "no expert named '[/x]'"),
])
def test_a_refusal_quoting_the_users_text_is_exit_2_and_quotes_it_as_given(
        container: SkillRoute, monkeypatch: pytest.MonkeyPatch, args: list[str], said: str) -> None:
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "_container", lambda pool: container)
    r = runner.invoke(app, ["experts", *args])
    assert r.exit_code == 2 and f"refused: {said}" in r.output, r.output


def test_a_progress_label_is_text(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=200))
    with cli.progress_bar("profiling [/x]") as report:
        report(1, 2)
    assert "profiling [/x]" in out.getvalue()


def test_serve_logs_its_lines_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray runtime's log (stood in for: no cluster started) names paths and errors."""
    lines = ["profiling the recordings here failed (OSError: /data/[/x].jsonl)", "worker actor [bold]gpu0"]
    fake = types.ModuleType("orchestrator.serving.app")
    fake.run_serve = lambda *args, log, **kw: [log(line) for line in lines]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "orchestrator.serving.app", fake)
    monkeypatch.setattr(cli, "_check_ray_port", lambda *args: None)  # the port is not what is tested here
    monkeypatch.setattr(cli, "console", Console(width=80))  # narrower than a line: each stays one line
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["serve"])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0 and r.output.splitlines() == lines, r.output
