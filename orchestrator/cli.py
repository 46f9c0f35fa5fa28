"""The `skillroute` command: serve, profile, ask, and manage experts.

Commands run in-process on the configured database unless `--url` points them at a running
service over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from orchestrator.cli_failures import CliFailure, Commands, check_bindable
from orchestrator.cli_remote import accepted, client, follow, read_back, remote_id
from orchestrator.settings import Settings, get_settings

if TYPE_CHECKING:
    import httpx
    from pydantic import BaseModel

    from experts.types import ExpertSpec
    from orchestrator.container import SkillRoute
    from orchestrator.services.keys import KeyService
    from orchestrator.store.models import Expert

console = Console()
M = TypeVar("M", bound="BaseModel")

app = typer.Typer(cls=Commands, help="Answer each query with the right few expert LLMs.", no_args_is_help=True)
experts_app = typer.Typer(help="Register, list, change and remove experts.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")

PoolOpt = Annotated[Path | None, typer.Option(help="Pool YAML, or replay:FOLDER (every model recorded there); "
                                                   "default: SKILLROUTE_POOL, else the packaged pool.")]
UrlOpt = Annotated[str | None, typer.Option(help="Talk to a running service instead of working in-process.")]
KeyOpt = Annotated[str | None, typer.Option(help="API key for --url (the admin key, to change experts).")]


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    cols = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=console) as bar:
        task = bar.add_task(escape(label), total=None)  # the column reads it as markup: a name is text
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
def serve(host: Annotated[str | None, typer.Option()] = None,
          port: Annotated[int | None, typer.Option(min=0, max=65535, help="0: a free port (inline runtime).")] = None,
          pool: PoolOpt = None,
          runtime: Annotated[Runtime, typer.Option(help="ray: Ray Serve + a worker actor per device (embedded "
                                                        "Ray unless RAY_ADDRESS is set); inline: one process.")]
          = Runtime.ray,
          dashboard: Annotated[bool, typer.Option(help="Ray dashboard + state API (ray runtime; ~1 GB).")] = True,
          ) -> None:
    """Serve the REST API at once; loading or profiling the pool and answering the queries a crash
    left run behind it (GET /ready is 503 naming what still runs, 200 when done)."""
    settings: Settings = get_settings()
    # `is None`, not `or`: --port 0 (a free port) is a port asked for
    host = settings.host if host is None else host
    given_as, port = ("SKILLROUTE_PORT=", settings.port) if port is None else ("--port ", port)
    if runtime is Runtime.ray:
        from orchestrator.serving.app import run_serve

        _check_ray_port(settings, host, port, given_as)
        run_serve(settings, pool or Path(settings.pool), host, port, dashboard=dashboard, log=_log_line)
        return
    import uvicorn

    from orchestrator.api.app import create_app

    app = create_app(_container(pool), owns_container=True, background_start=True)
    # keep-alive past the default 5 s: under load a starved loop could close a connection a
    # client is already reusing (seen as ReadErrors at 200 concurrent clients)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=75)


def _check_ray_port(settings: Settings, host: str, port: int, given_as: str) -> None:
    """Refuse, before Ray starts, a port (`given_as` names its source) Ray Serve fails on only later: one
    taken, or 0 (its proxy took a free port of its own, never said which, and /ready was polled on 0)."""
    from orchestrator.serving.app import url_of

    if port == 0:
        raise CliFailure(f"{given_as}{port} (a free port) needs --runtime inline: Ray Serve's proxy does not report "
                         "the port it would pick", 2)
    if not settings.ray.address:  # a joined cluster's proxy binds on its head, maybe serving already
        check_bindable(host, port, url_of(host, port).removeprefix("http://"))


def _log_line(line: str) -> None:
    """One line of `serve`'s log, soft-wrapped so it stays one line to grep; Text, not markup: a
    line names paths and errors, and a "[/x]" in one raised MarkupError and stopped the server."""
    console.print(Text(line), soft_wrap=True)


@app.command()
def profile(pool: PoolOpt = None) -> None:
    """Profile every unprofiled expert of the pool (with a progress bar) and show the profiles."""
    c = _bootstrapped(pool)
    _print_experts([_expert_dict(e) for e in c.experts.all()])


KOpt = Annotated[int | None, typer.Option(min=1, max=8, help="Experts to recruit (default: the service's default_k).")]


@app.command()
def ask(query: str, k: KOpt = None, pool: PoolOpt = None, url: UrlOpt = None, key: KeyOpt = None,
        seed: int | None = None) -> None:
    """Answer one query and show who answered it; exit 1 if it failed."""
    if url:
        with client(url, key) as http:
            body = accepted(http.post("/v1/queries", json=_given(query=query, k=k, seed=seed), timeout=600))
    else:
        body = _ask_here(_given(query=query, k=k, seed=seed), pool)
    console.print_json(json.dumps(body))
    if not all(isinstance(q, dict) and q.get("status") == "done" for q in (body if isinstance(body, list) else [body])):
        raise typer.Exit(1)  # a script must see that no answer came (failed, or not skillroute's reply)


def _ask_here(fields: dict[str, Any], pool: Path | None) -> dict[str, Any]:
    """The query answered in-process, read as POST /v1/queries reads it (an empty query is
    refused, exit 2) and a refusal printed as over HTTP."""
    from orchestrator.api.schemas import QueryRequest, QueryResponse

    request = _validated(QueryRequest, fields)
    c = _bootstrapped(pool)
    try:
        with _refusals():
            (row,) = c.queries.ask([request.to_ask(None, c.settings.default_k)])
        return QueryResponse.from_row(row).model_dump(mode="json")
    finally:
        c.close()


@experts_app.command("list")
def experts_list(pool: PoolOpt = None, url: UrlOpt = None, key: KeyOpt = None) -> None:
    if url:
        with client(url, key) as http:
            _print_experts(accepted(http.get("/v1/experts", params={"with_profile": "true"})))
        return
    _print_experts([_expert_dict(e) for e in _container(pool).experts.all()])


@experts_app.command("add")
def experts_add(
    name: str,
    source: Annotated[str, typer.Option(help="llamacpp: GGUF path or package:<catalog name>; openai: a /v1 URL; "
                                             "vllm: an HF folder; replay: a recording folder.")],
    kind: Annotated[str, typer.Option(help="llamacpp | openai | vllm | replay")] = "llamacpp",
    model: Annotated[str | None, typer.Option(help="Served model name (openai), recorded model (replay).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="The expert's persona.")] = None,
    pool: PoolOpt = None, url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Register an expert; it is checked, stored and profiled (progress shown)."""
    body = {"name": name, "model": {"kind": kind, "source": source, "model": model}, "system_prompt": system_prompt}
    if url:
        with client(url, key) as http:
            _show_changed(_follow(http, accepted(http.post("/v1/experts", json=body)), "registered"))
        return
    spec = _new_expert(body)
    c = _container(pool)
    with _refusals():
        row = c.experts.register(spec, profile=False)
    with progress_bar(f"profiling {name}") as report:
        c.profiler.profile([(row.id, spec)], report)
    c.profiler.choose_aggregator()
    _show_changed(_expert_dict(c.experts.get(row.id)))


def _new_expert(body: dict[str, Any]) -> ExpertSpec:
    """The expert as POST /v1/experts reads it."""
    from orchestrator.api.experts import spec_of
    from orchestrator.api.schemas import ExpertCreate

    return spec_of(_validated(ExpertCreate, body))


def _validated(model: type[M], body: dict[str, Any]) -> M:
    """`body` read as the API reads it: what it refuses is refused naming the field (exit 2, as
    the 422 over HTTP is), before anything is opened."""
    from pydantic import ValidationError

    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise typer.BadParameter(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


def _follow(http: httpx.Client, e: dict[str, Any], was: str) -> dict[str, Any]:
    """The expert `was` ("registered", "changed") once a remote server has profiled it, with its
    progress shown meanwhile (a bar only while it profiles: an empty "0/?" one read as profiling
    that never ran)."""
    if e["status"] == "profiling":
        with progress_bar(f"profiling {e['name']}") as report:
            e = follow(http, e, report, was)
    return read_back(http, e, was)  # with its profile: the table's "top skills", as in-process


@experts_app.command("update")
def experts_update(
    ref: Annotated[str, typer.Argument(metavar="NAME_OR_ID")],
    system_prompt: Annotated[str | None, typer.Option(help="A new persona ('' clears it); profiled again.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature; profiled again.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling; profiled again.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Its answers' token limit; profiled again.")] = None,
    worker: Annotated[str | None, typer.Option(help="Run it on this worker of the deployment.")] = None,
    device: Annotated[str | None, typer.Option(help="Cost it on this device profile.")] = None,
    timeout_s: Annotated[float | None, typer.Option(help="How long one of its generations may take.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable", help="Route to it, or keep it loaded "
                                                                             "but never route to it.")] = None,
    pool: PoolOpt = None, url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Change an expert; a changed persona (prompt or sampling) is profiled again (progress shown)."""
    body = _given(sampling=_given(temperature=temperature, top_p=top_p, max_tokens=max_tokens) or None,
                  placement=_given(worker=worker, device=device) or None, timeout_s=timeout_s, enabled=enabled)
    if system_prompt is not None:
        body["system_prompt"] = system_prompt or None
    if url:
        with client(url, key) as http:
            r = http.patch(f"/v1/experts/{remote_id(http, ref)}", json=body)
            _show_changed(_follow(http, accepted(r), "changed"))
        return
    _update_here(ref, body, pool)


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _update_here(ref: str, body: dict[str, Any], pool: Path | None) -> None:
    from orchestrator.api.schemas import ExpertUpdate
    from orchestrator.services.expert_changes import ExpertChange

    change = _validated(ExpertUpdate, body)
    c = _container(pool)
    with _refusals():
        row, profiling = c.experts.update(c.experts.find(ref).id, ExpertChange(change.spec_changes(), change.enabled),
                                          background=False)
    if profiling:
        with progress_bar(f"profiling {row.name}") as report:
            c.experts.profile_now([row.id], report)
    _show_changed(_expert_dict(c.experts.get(row.id)))


@experts_app.command("remove")
def experts_remove(ref: Annotated[str, typer.Argument(metavar="NAME_OR_ID")], pool: PoolOpt = None,
                   url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Stop routing to an expert and unload its model where nothing else uses it; its history stays."""
    if url:
        with client(url, key) as http:
            _print_experts([read_back(http, accepted(http.delete(f"/v1/experts/{remote_id(http, ref)}")), "removed")])
        return
    c = _container(pool)
    with _refusals():
        row = c.experts.remove(c.experts.find(ref).id)
    _print_experts([_expert_dict(row)])


@contextmanager
def _refusals() -> Iterator[None]:
    """A service's refusal (a 4xx over HTTP) printed, and exit code 2."""
    from orchestrator.services.errors import ServiceError

    try:
        yield
    except ServiceError as exc:
        _line(f"[red]refused:[/red] {escape(exc.message)}")  # it quotes the user's names and paths
        raise typer.Exit(2) from exc


def _line(markup: str) -> None:
    """A message as one line, however narrow the terminal (soft wrap), so it can be grepped."""
    console.print(markup, soft_wrap=True, highlight=False)


def _expert_dict(e: Expert) -> dict[str, Any]:
    from orchestrator.api.schemas import ExpertOut

    return ExpertOut.from_row(e, with_profile=True).model_dump(mode="json")


def _print_experts(rows: list[dict[str, Any]]) -> None:
    table = Table("id", "name", "status", "accuracy", "top skills", "model")
    for e in rows:
        top = ", ".join(list((e.get("profile") or {}).keys())[:3])
        acc = f"{e['accuracy']:.2f}" if e.get("accuracy") is not None else "-"
        table.add_row(*_cells(e["id"], e["name"], e["status"], acc, top, e["base_model_key"]))
    console.print(table)
    for e in rows:  # the table has no room for why
        if e["status"] == "failed" and e.get("error"):
            _line(f"[red]{escape(e['name'])} failed:[/red] {escape(e['error'])}")


def _cells(*values: object) -> list[Text]:
    """A table row as plain text: a cell given as a str is read as markup, and a name or a model
    path holding "[/x]" raised MarkupError, "[q4_k_m]" vanished."""
    return [Text(str(v)) for v in values]


def _show_changed(e: dict[str, Any]) -> None:
    """The expert just added or updated; exit 1 where its profiling failed, so a script sees it."""
    _print_experts([e])
    if e["status"] == "failed":
        raise typer.Exit(1)


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
        row, key = _key_service().create(name, "admin" if admin else "client", rpm, budget)
    except ServiceError as exc:
        raise typer.BadParameter(exc.message, param_hint=f"--{(exc.param or '').replace('_', '-')}") from exc
    _line(f"created {row.role} key {row.id} ({escape(row.name)}); store it now, it is not shown again:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    table = Table("id", "name", "role", "prefix", "requests/min", "latency ms", "energy J", "created", "revoked")
    for k in _key_service().list():
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
        table.add_row(*_cells(k.id, k.name, k.role, k.prefix, k.requests_per_minute or "-", k.default_latency_ms or "-",
                              k.default_energy_j or "-", f"{k.created_at:%Y-%m-%d %H:%M}", revoked))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    from orchestrator.services.errors import ServiceError

    try:
        _key_service().revoke(key_id)
    except ServiceError as exc:
        raise CliFailure(exc.message, 2) from exc  # printed as one line, as every failure is
    _line(f"revoked key {key_id}")


if __name__ == "__main__":
    app()
