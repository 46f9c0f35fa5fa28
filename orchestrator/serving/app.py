"""The Ray Serve application: the REST API as a Serve ingress over the device worker actors.

Two ways in, one start: the replica's app lifespan migrates the schema and serves HTTP at
once, then loads (or first profiles) the pool through the worker actors and answers what a
crash left, on a thread behind it; /ready is 503 naming what still runs until it is done.
- `skillroute serve` calls `run_serve`: Ray starts embedded on this machine, the driver spawns
  the worker actors, Serve runs the ingress, and the driver logs the start's progress (read
  from /ready) and blocks until Ctrl-C or SIGTERM. The driver recovers nothing and profiles
  only a pool of recordings (`prepare_lookups`: its profiling is a lookup, done while Ray
  starts, before the replica is deployed, so nothing runs twice); the replica loads it.
- On a cluster, KubeRay's serveConfigV2 imports `orchestrator.serving.app:app` (built from
  SKILLROUTE_* environment variables); the replica spawns the actors and starts the same way.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import ray
from fastapi import FastAPI
from ray import serve
from ray.actor import ActorHandle
from ray.serve import Application

from experts.devices import DeviceProfile
from experts.traits import traits
from experts.workers import WorkerSpec, declared_workers, memory_bytes
from orchestrator.budgets.planner import device_table
from orchestrator.pools.loader import load_pool_config
from orchestrator.serving.remote_worker import RemoteWorker
from orchestrator.serving.worker_actor import NAMESPACE, WorkerActor, cluster_workers, local_cores, spawn_all, spawner
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.container import SkillRoute

APP_NAME = "skillroute"
Log = Callable[[str], None]


def planned_workers(settings: Settings, cpu_reservation: float) -> tuple[list[WorkerSpec], dict[str, DeviceProfile]]:
    """The deployment's workers and the device profiles their budgets come from."""
    profiles = device_table(settings.budgets.devices_file)
    declared = declared_workers(settings.budgets.devices_file, profiles)
    return cluster_workers(declared, settings.backends.memory_budget_gb, cpu_reservation), dict(profiles)


def spawn_workers(settings: Settings, cpu_reservation: float, home: str | None = None
                  ) -> dict[str, ActorHandle[WorkerActor]]:
    """Spawn (or find) every worker's actor, placed on its node, without waiting for it to run.
    `home`: the node the CPU worker is pinned to; none: wherever Ray finds its CPUs (see `pinned`)."""
    workers, profiles = planned_workers(settings, cpu_reservation)
    return spawn_all(workers, profiles, settings.backend_options(), home)


def device_workers(settings: Settings, cpu_reservation: float, home: str | None = None) -> dict[str, RemoteWorker]:
    """Every worker's actor as a device worker; each expert's generations run on the actor of
    the worker it is placed on. Nothing here waits for an actor to run: a worker whose node has
    not joined is built all the same, unavailable until it has (its jobs fail, logged). Each
    proxy can make its actor anew, as spawned here, should it be gone for good."""
    workers, profiles = planned_workers(settings, cpu_reservation)
    options, budgets = settings.backend_options(), {w.name: memory_bytes(w, profiles) for w in workers}
    actors = spawn_all(workers, profiles, options, home)
    return {w.name: RemoteWorker(actors[w.name], w, budgets[w.name], spawner(w, budgets[w.name], options, home))
            for w in workers}


class SkillRouteIngress:
    """One Serve replica: a SkillRoute whose worker is the device actor's proxy. Its app's
    lifespan starts it in the background (the one start, however the replica was deployed) and
    closes it."""

    def __init__(self, settings: Settings, pool_path: str, cpu_reservation: float = 1.0, home: str | None = None):
        # imported here, in the replica: the driver never builds the service, and a restart's
        # driver reaches Ray sooner without importing the whole of it
        from orchestrator.container import SkillRoute

        workers = device_workers(settings, cpu_reservation, home)
        self.container: SkillRoute = SkillRoute(settings, load_pool_config(pool_path), workers=workers)
        # the models load in the actors' processes: their durations are read from them at scrape time
        self.container.metrics.watch_load_times({n: w.load_seconds for n, w in workers.items()})

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this after __init__: the app needs the container the constructor built."""
        from orchestrator.api.app import create_app

        return create_app(self.container, owns_container=True, background_start=True)


# Applied as calls, not decorators, so mypy sees a Deployment. One replica: it owns profiling on a
# fresh cluster, and more would share the one device anyway. It reserves no CPU so the CPU worker
# actor can reserve every core for llama.cpp. max_ongoing_requests is high so concurrent queries
# reach the batching window together instead of queueing in Serve.
ingress = serve.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})(
    serve.ingress()(SkillRouteIngress)
)


def build_app(settings: Settings | None = None, pool_path: str | Path | None = None,
              cpu_reservation: float = 1.0, home: str | None = None) -> Application:
    """The bound Serve application; `cpu_reservation` is what the CPU worker actor reserves,
    `home` the node id the CPU worker is pinned to (none: Ray places it where its CPUs are)."""
    settings = settings or get_settings()
    return ingress.bind(settings, str(pool_path or settings.pool), cpu_reservation, home)


# What KubeRay's serveConfigV2 imports (import_path: orchestrator.serving.app:app).
app = build_app()


def init_ray(settings: Settings, dashboard: bool) -> str:
    """Join the cluster at `ray.address` ($RAY_ADDRESS), else start one embedded here; returns the
    dashboard URL.

    The dashboard process also serves Ray's state API (`ray list actors`) and Serve's REST API;
    without it only the core processes run (~1 GB less memory) and `ray.util.state` cannot answer.
    """
    os.environ["RAY_AUTH_MODE"] = settings.ray.auth_mode  # Ray reads it from the environment
    if settings.ray.address:
        ctx = ray.init(address=settings.ray.address, namespace=NAMESPACE)
    else:  # "local": a cluster of its own, even beside another on the machine (joining that one
        # failed: "num_cpus must not be provided"; and it is no deployment of ours)
        ctx = ray.init(address="local", num_cpus=local_cores(), namespace=NAMESPACE, include_dashboard=dashboard,
                       dashboard_host="127.0.0.1")
    return ctx.dashboard_url or ""


def prepare_lookups(settings: Settings, pool_path: Path, log: Log) -> threading.Thread | None:
    """A pool whose every expert is a recording (its replies are lookups, no model to place) is
    profiled here, in the driver, on a thread while Ray starts: 66,154 recorded answers then
    cost no trips to a worker actor. None for any other pool (the replica profiles it, on the
    workers the experts are placed on). A failure here is logged; the replica then profiles."""
    pool = load_pool_config(pool_path)
    if not pool.experts or not all(traits(e.base).lookup_chunk for e in pool.experts):
        return None

    def prepare() -> None:
        from orchestrator.container import SkillRoute

        container = SkillRoute(settings, pool)
        try:
            container.prepare(coarse_progress(log))
        except Exception as exc:  # noqa: BLE001 - the replica's start profiles what is left
            log(f"profiling the recordings here failed ({type(exc).__name__}: {exc}); the replica will")
        finally:
            container.close()

    thread = threading.Thread(target=prepare, name="prepare-lookups", daemon=True)
    thread.start()
    return thread


def coarse_progress(log: Log, steps: int = 10) -> Callable[[int, int], None]:
    """Log profiling progress in tenths, not per answer."""
    shown = -1

    def report(done: int, total: int) -> None:
        nonlocal shown
        step = done * steps // max(total, 1)
        if step != shown:
            shown = step
            log(f"profiling recordings: {done}/{total} answers")

    return report


def run_serve(settings: Settings, pool_path: Path, host: str, port: int, *, dashboard: bool = True,
              log: Log = print) -> None:
    """Run the service under Ray Serve until interrupted, then stop what was started."""
    embedded = not settings.ray.address
    preparing = prepare_lookups(settings, pool_path, log)
    dashboard_url = init_ray(settings, dashboard)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    # and Ctrl-C does, even started from a script in the background (`&`), whose shell leaves
    # SIGINT ignored and Python with it: signal.pause() slept through it until a kill -9
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cores = local_cores() if embedded else 1.0  # embedded: the CPU actor reserves the machine
        # The CPU worker runs on this driver's node: `skillroute serve` was started here, with
        # this machine's settings and data dir (GGUF files), and `cores` counts its CPUs. The
        # replica spawns the actors too, but reserves no CPU and may land on any node; it is
        # handed this node so both ask for the same placement (two homes would make each start
        # kill the other's actors as stale). Under KubeRay there is no driver and no home: Ray
        # places the CPU worker where its CPUs are (the head offers none). GPU workers, one per
        # GPU of the cluster, go wherever a GPU is free.
        home = ray.get_runtime_context().get_node_id()
        spawn_workers(settings, cores, home)  # not awaited: the actors boot while Serve starts
        log_cluster(dashboard_url, log)
        serve.start(http_options={"host": host, "port": port})
        if preparing is not None:
            preparing.join()  # before the replica exists: it must find the profiles stored
        serve.run(build_app(settings, pool_path, cores, home), name=APP_NAME, route_prefix="/")
        log(f"serving on {url_of(host, port)} (Ray Serve application {APP_NAME!r}); starting up behind it")
        watch_start(local_url(host, port), log)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        log("shutting down")
    finally:
        stop(embedded)


def watch_start(url: str, log: Log, every_s: float = 1.0) -> None:
    """Log the replica's start as /ready reports it (each change once) until it is ready."""
    said = ""
    with httpx.Client(timeout=10) as http:
        while True:
            try:
                r = http.get(f"{url}/ready")
                line, ready = _ready_line(r.status_code, r.json()), r.status_code == 200
            except (httpx.TransportError, ValueError):  # not up yet, or not our JSON yet
                line, ready = said, False
            if line != said:
                log(line)
                said = line
            if ready:
                return
            time.sleep(every_s)  # the interval between polls; Ctrl-C interrupts it


def _ready_line(status: int, body: Any) -> str:
    if status == 200:
        return f"ready: {body.get('experts_ready')} experts, aggregator {body.get('aggregator')}"
    return str(body.get("error", {}).get("message", body)) if isinstance(body, dict) else str(body)


def url_of(host: str, port: int) -> str:
    """The server at host:port as a URL: an IPv6 address in brackets ("http://::1:8123" is no
    URL; httpx read its port as ':1:8123' and the start's watch ended in InvalidURL)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to host:port: a wildcard is no address to
    connect to, so its own family's loopback stands in for it."""
    return url_of({"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host), port)


def log_cluster(dashboard_url: str, log: Log) -> None:
    address = ray.get_runtime_context().gcs_address
    log(f"ray cluster at {address} (namespace {NAMESPACE}, dashboard {dashboard_url or 'off'})")
    for name in worker_actor_names():
        log(f"worker actor {name}")


def worker_actor_names() -> list[str]:
    """The device actors of this cluster, read from the GCS (no dashboard needed)."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["namespace"] == NAMESPACE)


def stop(embedded: bool) -> None:
    """An embedded cluster goes down whole; on a shared cluster only our application is removed
    (the detached worker actors stay, with their models loaded, for the next deploy)."""
    if embedded:
        serve.shutdown()
    else:
        serve.delete(APP_NAME)
    ray.shutdown()
