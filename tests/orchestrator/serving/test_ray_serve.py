"""`skillroute serve` under real Ray Serve: a subprocess, real SmolLM2 weights, real HTTP.

The server starts embedded Ray, a worker actor for the CPU, and serves the API from a Serve
replica, which profiles a tiny pool through the actor behind its HTTP. The test talks to it
only over HTTP and through Ray's state API, as an operator would. Teardown interrupts the server,
which shuts its own cluster down; if it hangs, its process group is killed (never `ray stop`, which would stop every Ray
on this machine, other people's included).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray.util.state import list_actors

from orchestrator.serving.worker_actor import NAMESPACE, actor_name

pytestmark = pytest.mark.slow

SMOL_KEY = "llamacpp:package:smollm2-135m-instruct"
POOL = """\
name: ray-serve-test
validation:
  sources: [{kind: arithmetic, n: 4}]
generation: {profiling_max_tokens: 8, expert_max_tokens: 16, aggregator_max_tokens: 16}
aggregator: {tasks: 1}
experts:
  - name: smol
    base: {kind: llamacpp, source: "package:smollm2-135m-instruct", n_ctx: 512}
    system_prompt: You are a helpful assistant. Answer briefly.
"""
STARTUP_S = 420  # Ray start, profiling 4 questions and a Serve deploy on 2 shared cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def pump(self) -> None:
        """Collect the server's output (it carries the Ray address, and explains failures)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def tail(self) -> str:
        return "\n".join(self.lines[-40:])

    def ray_address(self) -> str:
        found = [m.group(1) for ln in self.lines if (m := re.search(r"ray cluster at (\S+)", ln))]
        assert found, self.tail()
        return found[0]


def _as_from_a_script() -> None:
    """Started in the background by a script (`skillroute serve &`, CI running the suite in the
    background), a process inherits SIGINT ignored: the server slept through the teardown's
    Ctrl-C until killed. It must shut down cleanly all the same."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start(tmp_path: Path) -> Server:
    pool = tmp_path / "pool.yaml"
    pool.write_text(POOL)
    port = free_port()
    env = {**os.environ, "SKILLROUTE_DATA_DIR": str(tmp_path / "data"), "RAY_AUTH_MODE": "disabled",
           "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # always an embedded cluster of its own
    cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port), "--pool", str(pool)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,  # its own process group, so teardown can reach Ray's daemons
                            preexec_fn=_as_from_a_script)

    server = Server(proc, f"http://127.0.0.1:{port}")
    threading.Thread(target=server.pump, daemon=True).start()
    return server


def wait_ready(server: Server) -> None:
    """Poll /ready until the Serve replica has profiled the pool behind its HTTP (/health answers
    long before); fail at once if the server died."""
    deadline = time.monotonic() + STARTUP_S
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, f"server exited early:\n{server.tail()}"
            try:
                if http.get(f"{server.url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)  # polling interval of a readiness loop, not a fixed wait
    pytest.fail(f"not ready after {STARTUP_S}s:\n{server.tail()}")


def stop(server: Server) -> None:
    """Ctrl-C: the server shuts Serve and its embedded cluster down. Kill the group if it hangs."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
    try:
        server.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = time.monotonic()
    srv = start(tmp_path_factory.mktemp("ray-serve"))
    try:
        wait_ready(srv)
        print(f"skillroute serve (ray) ready in {time.monotonic() - started:.1f}s")
        yield srv
    finally:
        stop(srv)
    assert srv.proc.returncode == 0, f"unclean shutdown:\n{srv.tail()}"


@pytest.fixture(scope="module")
def cluster(server: Server) -> Iterator[str]:
    """This process joins the server's cluster as a second driver, to read its state."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the server's cluster runs without tokens
    ray.init(address=server.ray_address(), namespace=NAMESPACE)
    yield server.ray_address()
    ray.shutdown()  # disconnects; the cluster belongs to the server


def test_health_reports_the_profiled_pool(server: Server):
    body = httpx.get(f"{server.url}/health", timeout=10).json()
    assert body["status"] == "ok" and body["experts_ready"] == 1 and body["aggregator"] == "smol"
    assert body["resident_models"] == [SMOL_KEY]  # loaded by profiling, in the actor, still there


def test_query_is_answered_over_http_by_the_real_model(server: Server):
    r = httpx.post(f"{server.url}/v1/queries", json={"query": "What is 12+7? Reply with the number.", "k": 1},
                   timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done" and body["recruited"] == ["smol"]
    assert body["answer"].strip() and body["generations"][0]["completion_tokens"] > 0
    assert httpx.get(f"{server.url}/v1/queries/{body['id']}", timeout=10).json() == body


def test_a_model_that_cannot_load_is_refused_with_the_actors_error(server: Server):
    body = {"name": "ghost", "model": {"kind": "llamacpp", "source": "/nonexistent/ghost.gguf"}}
    r = httpx.post(f"{server.url}/v1/experts", json=body, timeout=60)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "ghost.gguf" in message and "Traceback" not in message  # the backend's words, not Ray's wrapper


def test_worker_actor_is_alive_in_rays_state_api(cluster: str):
    actors = list_actors(filters=[("name", "=", actor_name("cpu"))])
    assert [(a.state, a.ray_namespace, a.class_name) for a in actors] == [("ALIVE", NAMESPACE, "WorkerActor")]
    serve_actors = {a.class_name for a in list_actors(filters=[("state", "=", "ALIVE")])}
    assert {"ServeController", "ProxyActor"} <= serve_actors
    assert any(c.startswith("ServeReplica:skillroute:") for c in serve_actors), serve_actors


def smol_loads() -> int:
    """How often the worker actor has loaded SmolLM2, asked of the actor itself."""
    worker = ray.get_actor(actor_name("cpu"), namespace=NAMESPACE)
    ref: ray.ObjectRef[dict[str, int]] = worker.loads_by_model.remote()
    return ray.get(ref)[SMOL_KEY]


def test_models_stay_resident_across_requests(server: Server, cluster: str):
    before = smol_loads()
    for q in ("What is 3+4?", "What is 5+6?"):
        r = httpx.post(f"{server.url}/v1/queries", json={"query": q, "k": 1}, timeout=300)
        assert r.status_code == 200 and r.json()["status"] == "done", r.text
    assert smol_loads() == before  # no reload between requests: the actor kept it resident


def sample_total(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_metrics_export_the_load_durations_of_the_models_the_actor_loaded(server: Server):
    """The models load in the worker actor's process, away from the replica's metrics: the
    replica reads the actor's load durations at scrape time (profiling loaded SmolLM2 there)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    loads = sample_total(text, "skillroute_model_loads_total")
    assert loads > 0
    assert sample_total(text, "skillroute_model_load_seconds_count") == loads
    assert sample_total(text, "skillroute_model_load_seconds_sum") > 0
