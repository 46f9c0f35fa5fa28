"""The `skillroute` command: serve, profile, ask, and manage experts.

Commands run in-process on the configured database unless `--url` points them at a running
service over HTTP.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    from orchestrator.container import SkillRoute
    from orchestrator.services.keys import KeyService
    from orchestrator.store.models import Expert

app = typer.Typer(help="Answer each query with the right few expert LLMs.", no_args_is_help=True)
experts_app = typer.Typer(help="Register and list experts.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")
console = Console()

PoolOpt = Annotated[Path | None, typer.Option(help="Pool YAML (default: the packaged embedded pool).")]
UrlOpt = Annotated[str | None, typer.Option(help="Talk to a running service instead of working in-process.")]


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    cols = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _container(pool: Path | None) -> SkillRoute:
    from orchestrator.container import SkillRoute
    from orchestrator.pools.loader import load_pool_config
    from orchestrator.store.db import migrate

    settings = get_settings()
    path = pool or Path(settings.pool)
    migrate(settings.db_url)  # commands that only read or register still need the schema
    return SkillRoute(settings, load_pool_config(path))


def _bootstrapped(pool: Path | None) -> SkillRoute:
    c = _container(pool)
    with progress_bar("profiling experts") as report:
        c.bootstrap(report)
    return c


class Runtime(StrEnum):
    ray = "ray"
    inline = "inline"


@app.command()
def serve(host: Annotated[str | None, typer.Option()] = None, port: Annotated[int | None, typer.Option()] = None,
          pool: PoolOpt = None,
          runtime: Annotated[Runtime, typer.Option(help="ray: Ray Serve + a worker actor per device (embedded "
                                                        "Ray unless RAY_ADDRESS is set); inline: one process.")]
          = Runtime.ray,
          dashboard: Annotated[bool, typer.Option(help="Ray dashboard + state API (ray runtime; ~1 GB).")] = True,
          ) -> None:
    """Profile what is unprofiled, then serve the REST API."""
    settings: Settings = get_settings()
    host, port = host or settings.host, port or settings.port
    if runtime is Runtime.ray:
        from orchestrator.serving.app import run_serve

        log = functools.partial(console.print, soft_wrap=True, highlight=False)  # one line each: easy to grep
        run_serve(settings, pool or Path(settings.pool), host, port, _prepare, dashboard=dashboard, log=log)
        return
    import uvicorn

    from orchestrator.api.app import create_app

    c = _container(pool)
    _prepare(c)
    uvicorn.run(create_app(c, owns_container=True), host=host, port=port, log_level="info")


def _prepare(c: SkillRoute) -> None:
    """Start the service (progress shown): profile what is unprofiled, answer what a crash left."""
    with progress_bar("profiling experts") as report:
        recovered = c.start(report)
    if recovered:
        console.print(f"answered {recovered} queries left unfinished by the last run")
    console.print(f"pool ready: {len(c.pool.snapshot.experts)} experts, aggregator {c.pool.snapshot.aggregator}")


@app.command()
def profile(pool: PoolOpt = None) -> None:
    """Profile every unprofiled expert of the pool (with a progress bar) and show the profiles."""
    c = _bootstrapped(pool)
    _print_experts([_expert_dict(e) for e in c.experts.all()])


@app.command()
def ask(query: str, k: Annotated[int, typer.Option(min=1, max=8)] = 3, pool: PoolOpt = None,
        url: UrlOpt = None, seed: int | None = None) -> None:
    """Answer one query and show who answered it."""
    if url:
        import httpx

        body = httpx.post(f"{url}/v1/queries", json={"query": query, "k": k, "seed": seed}, timeout=600).json()
    else:
        from orchestrator.api.schemas import QueryResponse
        from orchestrator.domain import Ask

        c = _bootstrapped(pool)
        qid = c.queries.ask([Ask(text=query, k=k, seed=seed)])[0]
        body = QueryResponse.from_row(c.queries.get(qid)).model_dump(mode="json")
        c.close()
    console.print_json(json.dumps(body))


@experts_app.command("list")
def experts_list(pool: PoolOpt = None, url: UrlOpt = None) -> None:
    if url:
        import httpx

        _print_experts(httpx.get(f"{url}/v1/experts", timeout=30).json())
        return
    _print_experts([_expert_dict(e) for e in _container(pool).experts.all()])


@experts_app.command("add")
def experts_add(
    name: str,
    source: Annotated[str, typer.Option(help="GGUF path, package:<catalog name>, or an OpenAI-compatible /v1 URL.")],
    kind: Annotated[str, typer.Option(help="llamacpp | openai")] = "llamacpp",
    model: Annotated[str | None, typer.Option(help="Served model name (openai kind).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="The expert's persona.")] = None,
    pool: PoolOpt = None, url: UrlOpt = None,
) -> None:
    """Register an expert; it is checked, stored and profiled (progress shown)."""
    body = {"name": name, "model": {"kind": kind, "source": source, "model": model}, "system_prompt": system_prompt}
    if url:
        _add_remote(url, body)
        return
    from experts.types import ExpertSpec
    from orchestrator.services.errors import ServiceError

    c = _container(pool)
    spec = ExpertSpec(name=name, base=body["model"], system_prompt=system_prompt)  # type: ignore[arg-type]
    try:
        row = c.experts.register(spec, profile=False)
    except ServiceError as exc:
        console.print(f"[red]refused:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    with progress_bar(f"profiling {name}") as report:
        c.profiler.profile([(row.id, spec)], report)
    c.profiler.choose_aggregator()
    _print_experts([_expert_dict(c.experts.get(row.id))])


def _add_remote(url: str, body: dict[str, Any]) -> None:
    import time

    import httpx

    r = httpx.post(f"{url}/v1/experts", json=body, timeout=120)
    if r.status_code >= 400:
        console.print(f"[red]refused ({r.status_code}):[/red] {r.json()['error']['message']}")
        raise typer.Exit(2)
    eid = r.json()["id"]
    with progress_bar(f"profiling {body['name']}") as report:
        while (e := httpx.get(f"{url}/v1/experts/{eid}", timeout=30).json())["status"] == "profiling":
            report(e["progress"]["done"], e["progress"]["total"] or 1)
            time.sleep(0.5)  # polling a remote server's progress, not waiting for readiness
    _print_experts([e])


def _expert_dict(e: Expert) -> dict[str, Any]:
    from orchestrator.api.schemas import ExpertOut

    return ExpertOut.from_row(e, with_profile=True).model_dump(mode="json")


def _print_experts(rows: list[dict[str, Any]]) -> None:
    table = Table("id", "name", "status", "accuracy", "top skills", "model")
    for e in rows:
        top = ", ".join(list((e.get("profile") or {}).keys())[:3])
        acc = f"{e['accuracy']:.2f}" if e.get("accuracy") is not None else "-"
        table.add_row(str(e["id"]), e["name"], e["status"], acc, top, e["base_model_key"])
    console.print(table)


keys_app = typer.Typer(help="Create, list and revoke API keys (admin: change the pool; client: ask).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _key_service() -> KeyService:
    from orchestrator.services.keys import KeyService
    from orchestrator.store.db import Database, migrate

    url = get_settings().db_url
    migrate(url)  # keys need no pool or models: only the store
    return KeyService(Database(url))


@keys_app.command("create")
def keys_create(
    admin: Annotated[bool, typer.Option("--admin/--client", help="An admin key, or a client key.")] = False,
    name: Annotated[str, typer.Option(help="Who or what holds the key.")] = "default",
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute (default: the service's).")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Default latency budget of its queries (ms).")] = None,
    energy_j: Annotated[float | None, typer.Option(help="Default energy budget of its queries (J).")] = None,
) -> None:
    """Create a key and print it — the only time it is shown; only its salted hash is stored.
    A query sent with the key gets its default budgets unless it names its own."""
    from orchestrator.services.errors import ServiceError
    from orchestrator.services.keys import KeyBudget

    try:
        budget = KeyBudget(latency_ms=latency_ms, energy_j=energy_j).checked()
    except ServiceError as exc:
        raise typer.BadParameter(exc.message, param_hint=f"--{(exc.param or '').replace('_', '-')}") from exc
    row, key = _key_service().create(name, "admin" if admin else "client", rpm, budget)
    console.print(f"created {row.role} key {row.id} ({row.name}); store it now, it is not shown again:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    table = Table("id", "name", "role", "prefix", "requests/min", "latency ms", "energy J", "created", "revoked")
    for k in _key_service().list():
        table.add_row(str(k.id), k.name, k.role, k.prefix, str(k.requests_per_minute or "-"),
                      str(k.default_latency_ms or "-"), str(k.default_energy_j or "-"),
                      f"{k.created_at:%Y-%m-%d %H:%M}", f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    from orchestrator.services.errors import ServiceError

    try:
        _key_service().revoke(key_id)
    except ServiceError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"revoked key {key_id}")


if __name__ == "__main__":
    app()
