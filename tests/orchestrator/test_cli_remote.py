"""`--url` shows what the in-process verbs show, and its exit codes say whose fault a failure
is: 2 for a --url that names no HTTP server (the argument), 1 for a server that failed (a 5xx)."""

from __future__ import annotations

import json
import socket
from contextlib import AbstractContextManager, contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from orchestrator import cli, cli_remote
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
    monkeypatch.setattr(cli_remote, "POLL_S", 0.05)  # a mock profiles at once: 2 s polls only slow the test
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


@pytest.mark.parametrize("key", ["sk-sr-s3cret\r", "sk-sr-s3\tcret", "sk-sr-\x1bs3cret", "sk-sr-s3cret\x7f"],
                         ids=["crlf-file", "tab", "escape", "del"])
def test_a_key_with_a_control_character_is_refused_naming_key_exit_2(key: str) -> None:
    """A key read from a CRLF file keeps its \\r: it was "cannot reach …: Illegal header value", exit 1,
    as if the server were down. The key itself is not echoed."""
    with socket.socket() as s:  # a port nothing listens on: the key is refused before anything is sent
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = runner.invoke(app, ["experts", "update", "alpha", "--disable", "--url", url, "--key", key])
    assert r.exit_code == 2 and "--key" in r.output and "cannot reach" not in r.output, r.output
    assert "s3" not in r.output and "cret" not in r.output and len(r.output.splitlines()) == 1, r.output


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "url"])
def test_the_profiling_bar_ends_at_its_total(here: SkillRoute, remote: bool) -> None:
    """Over --url the bar stayed at the last poll that still said profiling (0/14) once the expert was ready."""
    with live_server(create_app(here)) as url:
        r = runner.invoke(app, ["experts", "add", "p9", "--kind", "mock", "--source", "m9",
                                *(["--url", url] if remote else [])])
    total = here.experts.find("p9").progress_total
    assert r.exit_code == 0 and total and "profiling p9" in r.output and f"{total}/{total}" in r.output, r.output


def expert(status: str, done: int) -> dict[str, Any]:
    """An expert as GET /v1/experts/{id} answers it, 14 validation questions in all."""
    return {"id": 7, "name": "chem", "status": status, "progress": {"done": done, "total": 14}, "accuracy": 0.5,
            "profile": {"college chemistry": 0.9} if status == "ready" else None, "base_model_key": "mock:m9",
            "error": None}


LIMITED = (429, {"error": {"message": "key 'ops' is limited to 10 requests per minute"}})


def scripted(replies: dict[str, list[tuple[int, Any]]]) -> type[BaseHTTPRequestHandler]:
    """A handler answering "METHOD /path" with its replies in turn (the last again once they run
    out); a 429 asks for Retry-After: 3, as the service's rate limit does."""
    class Scripted(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            queue = replies[f"{self.command} {self.path}"]
            status, body = queue.pop(0) if len(queue) > 1 else queue[0]
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in ([("Retry-After", "3")] if status == 429 else []) + [
                    ("Content-Type", "application/json"), ("Content-Length", str(len(data)))]:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _reply  # noqa: N815 (the handler's protocol names them)

        def log_message(self, *args: object) -> None:
            pass

    return Scripted


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits following asks for, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(cli_remote, "pause", waited.append)
    return waited


def test_following_waits_out_a_429_and_goes_on_polling(waits: list[float]) -> None:
    """A key limited below the poll pace got a 429 mid-profiling: "refused (429)", exit 2, although
    the expert was registered and went on profiling."""
    replies = {"POST /v1/experts": [(202, expert("profiling", 0))],
               "GET /v1/experts/7": [(200, expert("profiling", 5)), LIMITED, (200, expert("ready", 14))]}
    with contextmanager(serving)(scripted(replies)) as url:
        r = runner.invoke(app, ["experts", "add", "chem", "--kind", "mock", "--source", "m9", "--url", url])
    assert r.exit_code == 0 and "ready" in r.output and "14/14" in r.output, r.output
    assert waits == [cli_remote.POLL_S, cli_remote.POLL_S, 3.0] and 60 / cli_remote.POLL_S <= 30  # was 120 a minute


@pytest.mark.parametrize(("verb", "said"), [
    (["experts", "add", "chem", "--kind", "mock", "--source", "m9"], "registered"),
    (["experts", "update", "chem", "--top-p", "0.5"], "changed"),
])
def test_following_that_gives_up_names_the_accepted_expert_exit_1(waits: list[float], verb: list[str],
                                                                  said: str) -> None:
    """Every poll limited: the command still ran (exit 1, naming the expert), it was not refused (2)."""
    profiling = (202, expert("profiling", 0))
    replies = {"POST /v1/experts": [profiling], "PATCH /v1/experts/7": [profiling], "GET /v1/experts/7": [LIMITED],
               "GET /v1/experts": [(200, [expert("ready", 14)])]}
    with contextmanager(serving)(scripted(replies)) as url:
        r = runner.invoke(app, [*verb, "--url", url])
    assert r.exit_code == 1 and f"'chem' (id 7) was {said}" in r.output and "429" in r.output, r.output
    assert waits[1:] == [3.0] * cli_remote.LIMITED_TRIES and max(waits) <= cli_remote.RETRY_AFTER_CAP_S


def test_reading_back_a_change_that_does_not_profile_waits_out_a_429_too(waits: list[float]) -> None:
    """`update --timeout-s` (no profiling): the PATCH is applied, then the read-back of its profile
    met a 429 and said "refused (429)", exit 2, as if the change had not been made."""
    unprofiled = {**expert("ready", 14), "profile": None}  # a PATCH replies without the profile
    replies = {"GET /v1/experts": [(200, [expert("ready", 14)])], "PATCH /v1/experts/7": [(200, unprofiled)],
               "GET /v1/experts/7": [LIMITED, (200, expert("ready", 14))]}
    with contextmanager(serving)(scripted(replies)) as url:
        r = runner.invoke(app, ["experts", "update", "chem", "--timeout-s", "30", "--url", url])
    assert r.exit_code == 0 and "college chemistry" in r.output and waits == [3.0], r.output
    replies["GET /v1/experts/7"] = [LIMITED]
    with contextmanager(serving)(scripted(replies)) as url:
        r = runner.invoke(app, ["experts", "update", "chem", "--timeout-s", "30", "--url", url])
    assert r.exit_code == 1 and "'chem' (id 7) was changed on the server; reading it back stopped" in r.output


@pytest.mark.parametrize(("verb", "reply"), [
    (["experts", "list"], {"accuracy": "high"}),  # `:.2f` of a str: ValueError
    (["experts", "remove", "a"], {"id": "x/.."}),  # int("x/.."): ValueError
], ids=["accuracy-not-a-number", "id-not-a-number"])
def test_json_of_another_shape_is_not_skillroute_one_line_and_exit_1(verb: list[str], reply: dict[str, Any]) -> None:
    """Both ended in a ValueError traceback."""
    with answering(200, json.dumps([{**expert("ready", 14), "name": "a", **reply}])) as url:
        r = runner.invoke(app, [*verb, "--url", url])
    assert r.exit_code == 1 and f"{url} did not answer as skillroute does" in r.output, r.output
    assert len(r.output.splitlines()) == 1, r.output


def test_a_redirect_is_named_with_where_it_points_exit_1() -> None:
    """It said "did not answer as skillroute does: ''" (the redirect's empty body)."""
    class Moved(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the handler's protocol names it)
            self.send_response(301)
            self.send_header("Location", "https://skillroute.example/v1/experts")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with contextmanager(serving)(Moved) as url:
        r = runner.invoke(app, ["experts", "list", "--url", url])
    assert r.exit_code == 1 and "redirect (301) to https://skillroute.example/v1/experts" in r.output, r.output
    assert "''" not in r.output and len(r.output.splitlines()) == 1, r.output
