"""Experts on three machines: a simulated Ray cluster (a head, a server node and two edge nodes,
each advertising its custom resource as `ray start --resources` would), the service deployed on
it through Ray Serve, a batch answered over HTTP, and Ray's own state API showing that every
generation ran on the node of the worker its expert is placed on."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from experts.replay import RecordedQuestion, load_recording
from orchestrator.pools.loader import split_questions
from orchestrator.serving.app import build_app
from orchestrator.serving.worker_actor import NAMESPACE, actor_name
from orchestrator.settings import BudgetSettings, Settings
from skills.datasets import LabelledQuestion, format_prompt

pytestmark = pytest.mark.slow

PACKAGED = Path(__file__).resolve().parents[3] / "experts" / "devices.yaml"
NODES = {"server": "h100-server", "edge-1": "jetson-agx-orin", "edge-2": "jetson-agx-orin"}
MODELS = {"server": "Meta-Llama-3_1-8B-Instruct", "edge-1": "Mistral-7B-v0.1", "edge-2": "gemma-7b"}
SliceRecording = Callable[[Path, Sequence[str], int], Path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prompt(q: RecordedQuestion) -> str:
    return format_prompt(LabelledQuestion(q.question_id, q.question, q.options, q.answer, q.category))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, slice_recording: SliceRecording,
             monkeypatch_module: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("multinode")
    folder = slice_recording(root / "rec", list(MODELS.values()), 4)
    devices = root / "devices.yaml"
    devices.write_text(PACKAGED.read_text() + "\nworkers:\n" + "".join(
        f"  - {{name: {n}, device: {d}, resource: {n}}}\n" for n, d in NODES.items()))
    pool = root / "pool.yaml"
    pool.write_text(yaml.safe_dump({
        "name": "three-machines", "router": "knn", "aggregator": {"mode": "vote"},
        "validation": {"sources": [{"kind": "mmlu_pro", "path": str(folder), "split": "profiling"}]},
        "generation": {"profiling_max_tokens": 8, "expert_max_tokens": 8, "aggregator_max_tokens": 8},
        "experts": [{"name": m, "base": {"kind": "replay", "source": str(folder), "model": m},
                     "placement": {"worker": n}} for n, m in MODELS.items()]}))
    monkeypatch_module.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1"})
    for name in NODES:
        cluster.add_node(num_cpus=1, resources={name: 1})
    ray.init(address=cluster.address, namespace=NAMESPACE)
    port = free_port()
    try:
        settings = Settings(data_dir=root / "data", budgets=BudgetSettings(devices_file=str(devices)))
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings, pool, cpu_reservation=0), name="skillroute", route_prefix="/")
        wait_ready(f"http://127.0.0.1:{port}")  # the replica profiles the pool behind its HTTP
        yield f"http://127.0.0.1:{port}", folder
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def wait_ready(url: str, within_s: float = 300) -> None:
    deadline = time.monotonic() + within_s
    while httpx.get(f"{url}/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, f"not ready within {within_s}s"
        time.sleep(0.2)  # polling the replica's readiness


def wait_done(url: str, batch_id: int, within_s: float = 300) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        body: dict[str, object] = httpx.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()
        if body["status"] == "completed":
            return body
        time.sleep(0.2)  # polling a batch's status
    raise TimeoutError(f"batch {batch_id} never completed")


def finished_generations(workers: set[str], names: dict[str, str], within_s: float = 60) -> list[Any]:
    """The finished `WorkerActor.generate` tasks, once every worker has one on record: workers
    report task events to the state API in the background (about once a second), so a task
    that has just finished may not be listed yet. Replies are looked up 1,024 to a call, so
    each worker runs only a few generate tasks, and the last may still be unreported."""
    deadline = time.monotonic() + within_s
    while True:
        tasks = [t for t in list_tasks(filters=[("name", "=", "WorkerActor.generate")], limit=10_000)
                 if t.state == "FINISHED"]
        if {names.get(t.actor_id) for t in tasks} >= workers or time.monotonic() > deadline:
            return tasks
        time.sleep(0.5)  # polling the state API, which has no way to wait for an event


def test_each_generation_runs_on_its_placements_node(deployed: tuple[str, Path]) -> None:
    url, folder = deployed
    experts = {e["name"]: e["worker"] for e in httpx.get(f"{url}/v1/experts", timeout=30).json()}
    assert experts == {m: n for n, m in MODELS.items()}  # placed as the pool says, shown by the API
    rec = load_recording(folder)
    _, test = split_questions(rec, 0.5, 0)
    queries = [{"query": prompt(rec.questions[q]), "k": 3, "mode": "topk"} for q in test[:12]]
    r = httpx.post(f"{url}/v1/batches", json={"queries": queries}, timeout=120)
    assert r.status_code == 202, r.text
    done = wait_done(url, r.json()["id"])
    assert done["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    node_of = {n["NodeID"]: name for n in ray.nodes() if n["Alive"] for name in NODES if name in n["Resources"]}
    actor_node = {a.actor_id: node_of.get(a.node_id) for a in list_actors(filters=[("class_name", "=", "WorkerActor")])
                  if a.state == "ALIVE"}
    names = {a.actor_id: a.name for a in list_actors(filters=[("class_name", "=", "WorkerActor")])}
    tasks = finished_generations({actor_name(n) for n in NODES}, names)
    ran = Counter((names[t.actor_id], node_of.get(t.node_id)) for t in tasks)
    assert {w for w, _ in ran} == {actor_name(n) for n in NODES}  # every worker generated
    assert all(actor_name(node) == worker for worker, node in ran), ran  # and only on its own node
    assert all(actor_node[t.actor_id] == node_of.get(t.node_id) for t in tasks)
    one = httpx.get(f"{url}/v1/queries/{done['results'][0]['query_id']}", timeout=30).json()  # type: ignore[index]
    assert sorted(d["worker"] for d in one["devices"]) == sorted(NODES)  # the decision says so too
