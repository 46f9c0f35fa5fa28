"""The `skillroute` command where things go wrong or are ambiguous: all-digit expert names,
failed queries and profiles, unreachable servers, and bad settings. Over the mock pool, in-process
and with --url against a running service."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.api.app import create_app
from orchestrator.cli import app
from orchestrator.container import SkillRoute
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert

runner = CliRunner()


@pytest.fixture
def here(container: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> SkillRoute:
    """In-process commands run on the mock pool's container (bootstrapped already)."""
    monkeypatch.setattr(cli, "console", Console(width=250))  # tables unwrapped, whatever the terminal
    monkeypatch.setattr(cli, "_container", lambda pool: container)
    monkeypatch.setattr(cli, "_bootstrapped", lambda pool: container)
    return container


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "url"])
def test_remove_by_an_all_digit_name_removes_that_expert_not_the_id(here: SkillRoute, remote: bool) -> None:
    alpha = here.experts.find("alpha")
    named = here.experts.register(mock_expert(str(alpha.id), "m2"), profile=False)
    with live_server(create_app(here)) as url:
        r = runner.invoke(app, ["experts", "remove", str(alpha.id), *(["--url", url] if remote else [])])
    assert r.exit_code == 0, r.output
    assert here.experts.get(named.id).status == "removed"
    assert here.experts.get(alpha.id).status == "ready"  # the expert whose id the name spells is untouched
