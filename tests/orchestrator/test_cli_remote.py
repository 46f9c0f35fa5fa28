"""`--url` shows what the in-process verbs show, and its exit codes say whose fault a failure
is: 2 for a --url that names no HTTP server (the argument), 1 for a server that failed (a 5xx)."""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from orchestrator import cli
from orchestrator.api.app import create_app
from orchestrator.cli import app
from orchestrator.container import SkillRoute
from tests.live_server import live_server
from tests.orchestrator.test_cli_edges import replying, serving

runner = CliRunner()


@pytest.fixture
def here(container: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> SkillRoute:
    """In-process commands run on the mock pool's container (bootstrapped already)."""
    monkeypatch.setattr(cli, "console", Console(width=250))  # tables unwrapped, whatever the terminal
    monkeypatch.setattr(cli, "_container", lambda pool: container)
    return container


def top_skills(c: SkillRoute, name: str) -> str:
    profile = cli._expert_dict(c.experts.find(name))["profile"]
    return ", ".join(list(profile)[:3])


def test_url_verbs_show_the_top_skills_in_process_shows(here: SkillRoute) -> None:
    """The column was always empty over --url: neither the list nor PATCH/DELETE carried profiles."""
    with live_server(create_app(here)) as url:
        for verb in (["experts", "list"], ["experts", "update", "alpha", "--timeout-s", "5"]):
            local, remote = runner.invoke(app, verb), runner.invoke(app, [*verb, "--url", url])
            assert remote.exit_code == 0 and remote.output == local.output, (local.output, remote.output)
        r = runner.invoke(app, ["experts", "remove", "beta", "--url", url])
    assert top_skills(here, "beta") and top_skills(here, "alpha") in local.output
    assert r.exit_code == 0 and "removed" in r.output and top_skills(here, "beta") in r.output, r.output


def test_url_update_shows_a_progress_bar_only_while_the_expert_profiles(here: SkillRoute) -> None:
    with live_server(create_app(here)) as url:
        quiet = runner.invoke(app, ["experts", "update", "alpha", "--timeout-s", "5", "--url", url])
        again = runner.invoke(app, ["experts", "update", "beta", "--system-prompt", "You judge cases.", "--url", url])
    assert quiet.exit_code == 0 and "profiling" not in quiet.output, quiet.output  # was "profiling alpha … 0/?"
    assert again.exit_code == 0 and "profiling beta" in again.output and "ready" in again.output, again.output


def test_the_expert_list_carries_profiles_only_when_asked(client: TestClient) -> None:
    """`?with_profile=true` (what `experts list --url` sends); without it the reply is as it was."""
    plain = client.get("/v1/experts").json()
    full = client.get("/v1/experts", params={"with_profile": "true"}).json()
    assert plain and all(e["profile"] is None for e in plain)
    assert [e["profile"] for e in full] == [client.get(f"/v1/experts/{e['id']}").json()["profile"] for e in plain]
    assert all(e["profile"] for e in full)


@pytest.mark.parametrize("url", ["127.0.0.1:18413", "localhost:18413", "ftp://127.0.0.1:18413", "http://",
                                 "http://127.0.0.1:99999"])
def test_a_url_that_names_no_http_server_is_one_line_and_exit_2(url: str) -> None:
    """These were "cannot reach", exit 1, as if a server were down; the argument is what is wrong."""
    r = runner.invoke(app, ["experts", "list", "--url", url])
    assert r.exit_code == 2 and f"--url {url!r} is not a server's URL" in r.output, r.output
    assert len(r.output.splitlines()) == 1, r.output


def answering(status: int, body: str) -> AbstractContextManager[str]:
    """The URL of a local server that answers every request with `status` and `body`."""
    return contextmanager(serving)(replying(status, body))


@pytest.mark.parametrize(("status", "body", "said"), [
    (503, '{"error": {"message": "still starting: profiling 3 experts"}}', "still starting: profiling 3 experts"),
    (500, '{"error": {"message": "internal error"}}', "internal error"),
    (502, "<html><body>Bad Gateway</body></html>", "Bad Gateway"),
])
def test_a_server_error_is_the_server_failing_one_line_and_exit_1(status: int, body: str, said: str) -> None:
    """A 5xx was "refused (5xx)", exit 2, as if the user's input were refused."""
    with answering(status, body) as url:
        for verb in (["experts", "list"], ["ask", "What is 2+2?"], ["experts", "remove", "alpha"]):
            r = runner.invoke(app, [*verb, "--url", url])
            assert r.exit_code == 1 and f"server error ({status})" in r.output and said in r.output, (verb, r.output)
            assert "refused" not in r.output and len(r.output.splitlines()) == 1, r.output
