"""`skillroute serve` with the Ray runtime refuses, in a line and before Ray starts, what Ray
would only fail on later (port 0, a port taken), and reaches the service it started at an IPv6
host. No Ray is started here: `init_ray` records and raises if a test ever gets that far."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

import orchestrator.serving.app as serving
from orchestrator.cli import app
from orchestrator.settings import get_settings

runner = CliRunner()


@pytest.fixture
def ray_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Each time Ray would have started (embedded: no RAY_ADDRESS); none does."""
    started: list[bool] = []

    def init_ray(*args: object, **kw: object) -> str:
        started.append(True)
        raise RuntimeError("the test would have started Ray")

    monkeypatch.setattr(serving, "init_ray", init_ray)
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path))
    for name in ("RAY_ADDRESS", "SKILLROUTE_RAY__ADDRESS", "SKILLROUTE_PORT"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield started
    get_settings.cache_clear()


@pytest.mark.parametrize("env", [{}, {"SKILLROUTE_PORT": "0"}], ids=["flag", "setting"])
def test_port_0_under_ray_is_refused_before_ray_starts(ray_started: list[bool], monkeypatch: pytest.MonkeyPatch,
                                                       env: dict[str, str]) -> None:
    """Serve's proxy took a port of its own while the driver polled port 0 forever."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    r = runner.invoke(app, ["serve", "--no-dashboard", *([] if env else ["--port", "0"])])
    named = "SKILLROUTE_PORT=0" if env else "--port 0"
    assert r.exit_code == 2 and named in r.output and "--runtime inline" in r.output, r.output
    assert len(r.output.splitlines()) == 1 and ray_started == [], r.output


@pytest.mark.parametrize(("family", "host", "shown"), [(socket.AF_INET, "127.0.0.1", "127.0.0.1"),
                                                       (socket.AF_INET6, "::1", "[::1]")], ids=["ipv4", "ipv6"])
def test_a_port_taken_is_one_line_and_exit_1_before_ray_starts(ray_started: list[bool], family: socket.AddressFamily,
                                                                host: str, shown: str) -> None:
    """It ended in Ray's long traceback ("Failed to bind to address"), once Ray had started."""
    with socket.socket(family) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(app, ["serve", "--host", host, "--port", str(port), "--no-dashboard"])
    assert r.exit_code == 1 and ray_started == [], r.output
    assert r.output.splitlines() == [f"cannot bind {shown}:{port}: address already in use"], r.output


def test_a_served_url_brackets_an_ipv6_host_and_polls_a_wildcard_on_loopback() -> None:
    """`serving on http://::1:8123`, and httpx read its port as ':1:8123' (InvalidURL)."""
    assert serving.url_of("::1", 8123) == "http://[::1]:8123"
    assert serving.url_of("127.0.0.1", 8123) == "http://127.0.0.1:8123"
    assert serving.local_url("::", 8123) == "http://[::1]:8123"
    assert serving.local_url("0.0.0.0", 8123) == "http://127.0.0.1:8123"
    assert serving.local_url("::1", 8123) == "http://[::1]:8123"


class IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def test_the_start_is_watched_on_an_ipv6_host() -> None:
    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the handler's protocol names it)
            data = json.dumps({"experts_ready": 3, "aggregator": "alpha"}).encode()
            self.send_response(200 if self.path == "/ready" else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = IPv6Server(("::1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    logged: list[str] = []
    try:
        serving.watch_start(serving.local_url("::1", server.server_address[1]), logged.append)
    finally:
        server.shutdown()
        thread.join()
    assert logged == ["ready: 3 experts, aggregator alpha"]
