"""The `skillroute` command where things go wrong or are ambiguous: all-digit expert names,
failed queries and profiles, unreachable servers, and bad settings. Over the mock pool, in-process
and with --url against a running service."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator import cli, cli_remote
from orchestrator.api.app import create_app
from orchestrator.cli import app
from orchestrator.container import SkillRoute
from orchestrator.settings import get_settings
from orchestrator.store.models import Query
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

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


def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """The URL of a local server answering with `handler`, until the generator is closed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture
def not_skillroute() -> Iterator[str]:
    """A web server that is not skillroute: an HTML page for GET, a proxy's 502 page for POST."""
    class Html(BaseHTTPRequestHandler):
        def _page(self, status: int, text: str) -> None:
            body = f"<html><body>{text}</body></html>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (the handler's protocol names it)
            self._page(200, "It works!")

        def do_POST(self) -> None:  # noqa: N802
            self._page(502, "Bad Gateway")

        def log_message(self, *args: object) -> None:
            pass

    yield from serving(Html)


def test_a_server_not_running_is_one_line_and_exit_1(here: SkillRoute) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    for verb in (["experts", "list"], ["ask", "What is 2+2?"], ["experts", "remove", "alpha"]):
        r = runner.invoke(app, [*verb, "--url", url])
        assert r.exit_code == 1 and f"cannot reach {url}" in r.output, (verb, r.output)
        assert "Traceback" not in r.output and len(r.output.splitlines()) == 1, r.output


def test_a_server_that_is_not_skillroute_is_named_not_a_traceback(here: SkillRoute, not_skillroute: str) -> None:
    r = runner.invoke(app, ["experts", "list", "--url", not_skillroute])
    assert r.exit_code == 1 and "did not answer as skillroute does" in r.output and "It works!" in r.output, r.output
    r = runner.invoke(app, ["ask", "What is 2+2?", "--url", not_skillroute])
    # a 502 is the server (here a proxy) failing, not the user's input refused: exit 1, not 2
    assert r.exit_code == 1 and "server error (502)" in r.output and "Bad Gateway" in r.output, r.output
    assert "Traceback" not in r.output


def cli_on(c: SkillRoute, entry: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkillRoute]:
    """The CLI's in-process verbs on `c` (through `entry`, the cli function that builds one),
    printing wide enough to read whole; `c` closed after the test."""
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, entry, lambda pool: c)
    monkeypatch.setattr(cli_remote, "POLL_S", 0.05)  # a mock profiles at once: 2 s polls only slow the test
    yield c
    c.close()


@pytest.fixture
def failing(tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkillRoute]:
    """A profiled pool whose every generation then errors: each query fails."""
    broken = {"on": False}

    def backend(spec: BaseModelSpec) -> MockBackend:
        return MockBackend(spec.key, fault=lambda req: "boom: backend down" if broken["on"] else None)

    c = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1"), mock_expert("gamma", "m2")]),
                   factory=backend, embedder=embedder)
    c.bootstrap()
    broken["on"] = True
    yield from cli_on(c, "_bootstrapped", monkeypatch)


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "url"])
def test_ask_exits_1_when_the_query_failed(failing: SkillRoute, remote: bool) -> None:
    with live_server(create_app(failing)) as url:
        r = runner.invoke(app, ["ask", "What is 2+2?", "--k", "2", *(["--url", url] if remote else [])])
    assert '"status": "failed"' in r.output and r.exit_code == 1, r.output


def test_ask_in_process_refuses_as_the_api_does_and_closes_the_container(here: SkillRoute,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []
    monkeypatch.setattr(here, "close", lambda: closed.append(True))
    empty = runner.invoke(app, ["ask", ""])
    assert empty.exit_code == 2 and "query: String should have at least 1 character" in empty.output, empty.output
    with here.db.session() as s:
        assert s.query(Query).count() == 0  # refused before anything is stored
    for e in here.experts.all():  # a pool with no expert left refuses every query
        here.experts.remove(e.id)
    r = runner.invoke(app, ["ask", "What is 2+2?"])
    assert r.exit_code == 2 and "refused:" in r.output and "Traceback" not in r.output, r.output
    assert closed == [True]


@pytest.fixture
def flaky(tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> Iterator[SkillRoute]:
    """A pool on which an expert over a `bad…` model fails every generation, so its profiling fails."""
    def backend(spec: BaseModelSpec) -> MockBackend:
        down = spec.source.startswith("bad")
        return MockBackend(spec.key, fault=lambda req: "boom: backend down" if down else None)

    c = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]), factory=backend,
                   embedder=embedder)
    c.bootstrap()
    yield from cli_on(c, "_container", monkeypatch)


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "url"])
def test_add_and_update_exit_1_showing_why_when_profiling_failed(flaky: SkillRoute, remote: bool) -> None:
    with live_server(create_app(flaky)) as url:
        where = ["--url", url] if remote else []
        r = runner.invoke(app, ["experts", "add", "delta", "--kind", "mock", "--source", "bad1", *where])
        assert flaky.experts.find("delta").status == "failed"
        assert r.exit_code == 1 and "delta failed:" in r.output and "boom: backend down" in r.output, r.output
        r = runner.invoke(app, ["experts", "update", "delta", "--system-prompt", "Try again.", *where])
        assert r.exit_code == 1 and "boom: backend down" in r.output, r.output
        r = runner.invoke(app, ["experts", "add", "omega", "--kind", "mock", "--source", "m2", *where])
        assert r.exit_code == 0 and "ready" in r.output and "failed" not in r.output, r.output


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, object]]:
    """`serve --runtime inline` up to uvicorn.run, which records what it was asked to bind."""
    import uvicorn

    import orchestrator.api.app

    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SKILLROUTE_HOST", "10.0.0.1")
    monkeypatch.setenv("SKILLROUTE_PORT", "9000")
    get_settings.cache_clear()
    monkeypatch.setattr(cli, "_container", lambda pool: None)
    monkeypatch.setattr(orchestrator.api.app, "create_app", lambda *a, **kw: None)
    bound: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: bound.update(host=host, port=port))
    yield bound
    get_settings.cache_clear()


def test_serve_binds_what_its_flags_say_port_0_and_an_empty_host_too(served: dict[str, object]) -> None:
    r = runner.invoke(app, ["serve", "--runtime", "inline"])
    assert r.exit_code == 0 and served == {"host": "10.0.0.1", "port": 9000}, r.output  # the settings'
    r = runner.invoke(app, ["serve", "--runtime", "inline", "--port", "0", "--host", ""])
    assert r.exit_code == 0 and served == {"host": "", "port": 0}, r.output  # was the settings' 9000
    r = runner.invoke(app, ["serve", "--runtime", "inline", "--port", "70000"])
    assert r.exit_code == 2 and "65535" in r.output, r.output


@pytest.mark.parametrize(("env", "said"), [
    ({"SKILLROUTE_DEFAULT_K": "0"}, "invalid settings (SKILLROUTE_* variables): default_k: Input should be greater"),
    ({"SKILLROUTE_ADMIN_KEY": ""}, "auth.admin_key: Value error, is set but empty"),
    ({"SKILLROUTE_POOL": "/nowhere/pool.yaml"}, "pool file not found: /nowhere/pool.yaml"),
    ({"SKILLROUTE_DATABASE__URL": "nonsense"}, "database.url: Could not parse SQLAlchemy URL"),  # was a traceback
])
def test_a_bad_setting_or_pool_file_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           env: dict[str, str], said: str) -> None:
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["experts", "list"])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 2 and said in r.output and len(r.output.splitlines()) == 1, r.output


def test_add_names_every_kind_it_takes() -> None:
    r = runner.invoke(app, ["experts", "add", "--help"], env={"COLUMNS": "250"})
    assert all(kind in r.output for kind in ("llamacpp", "openai", "vllm", "replay")), r.output


@pytest.mark.parametrize(("then", "said"), [
    ([mock_expert("alpha", "m2")], "the pool file's expert 'alpha' has another base than the one stored"),
    ([mock_expert("alpha", "m1"), ExpertSpec(name="beta", base=BaseModelSpec(kind="mock", source="m1", n_ctx=512))],
     "the pool file's expert 'beta' was refused: expert 'beta' runs on the weights of 'alpha'"),
], ids=["base-changed", "service-refusal"])
def test_a_pool_file_the_store_refuses_is_one_line_and_exit_2(tmp_path: Path, embedder: Embedder,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              then: list[ExpertSpec], said: str) -> None:
    """A start's sync refusing the file (PoolFileConflict, or the service's 409/422 for one of
    its experts) ended an in-process verb with a 94-line traceback and exit 1."""
    first = SkillRoute(quiet_settings(tmp_path), small_pool([mock_expert("alpha", "m1")]), mock_or_real, embedder)
    first.bootstrap()
    first.close()
    again = SkillRoute(quiet_settings(tmp_path), small_pool(then), mock_or_real, embedder)
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "_container", lambda pool: again)
    try:
        r = runner.invoke(app, ["profile"])
    finally:
        again.close()
    assert r.exit_code == 2 and said in r.output and "Traceback" not in r.output, r.output


def test_a_database_that_does_not_answer_is_one_line_and_exit_1(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """It ended in SQLAlchemy's traceback."""
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SKILLROUTE_DATABASE__URL", f"postgresql+psycopg://nobody@127.0.0.1:{port}/skillroute")
    get_settings.cache_clear()
    try:
        r = runner.invoke(app, ["experts", "list"])
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 1 and "the database did not answer" in r.output and len(r.output.splitlines()) == 1, r.output


def test_refs_urls_and_keys_that_cannot_be_what_they_name_are_one_line_and_exit_2(here: SkillRoute) -> None:
    """An id past the column's range and "²" (a digit to str.isdigit, not to int) ended in a
    traceback in-process, "²" over --url too; so did a malformed --url and a non-ASCII --key."""
    with live_server(create_app(here)) as url:
        verbs = [["experts", "remove", "9" * 23], ["experts", "update", "9" * 23, "--disable"],
                 ["experts", "remove", "²"], ["experts", "remove", "²", "--url", url],
                 ["experts", "list", "--url", "http://[::1"], ["experts", "list", "--url", url, "--key", "clé"]]
        for verb in verbs:
            r = runner.invoke(app, verb)
            assert r.exit_code == 2 and len(r.output.splitlines()) == 1, (verb, r.output)
    assert all(e.status == "ready" for e in here.experts.all())


def replying(status: int, body: str) -> type[BaseHTTPRequestHandler]:
    """A handler answering every request with `status` and `body` (JSON where it reads as such)."""
    class Reply(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _reply  # noqa: N815 (the handler's protocol names them)

        def log_message(self, *args: object) -> None:
            pass

    return Reply


@pytest.fixture
def json_not_skillroute() -> Iterator[str]:
    """A JSON service that is not skillroute: `{"status": "ok"}` to everything."""
    yield from serving(replying(200, '{"status": "ok"}'))


def test_a_json_service_that_is_not_skillroute_fails_each_verb(json_not_skillroute: str) -> None:
    """`ask` printed its reply and exited 0 (no answer came); the others ended in tracebacks."""
    for verb in (["ask", "What is 2+2?"], ["experts", "list"], ["experts", "remove", "alpha"]):
        r = runner.invoke(app, [*verb, "--url", json_not_skillroute])
        assert r.exit_code == 1 and "Traceback" not in r.output, (verb, r.output)
