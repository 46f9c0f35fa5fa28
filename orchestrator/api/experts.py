"""/v1/experts: register an expert (checked, stored, profiled in the background), read, change
and remove them. Writes need the admin key once one exists (api/auth.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from experts.types import ExpertSpec
from orchestrator.api.deps import Container, RowId
from orchestrator.api.schemas import ExpertCreate, ExpertOut, ExpertUpdate
from orchestrator.container import SkillRoute
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.store.models import Expert

router = APIRouter(prefix="/v1/experts", tags=["experts"])
ADMIN_ONLY: dict[int | str, dict[str, str]] = {403: {"description": "A client key: only admins change the pool."}}
ERRORS: dict[int | str, dict[str, str]] = {
    **ADMIN_ONLY,
    404: {"description": "No expert with that id."},
    409: {"description": "The expert was removed, or its profiling run is under way."},
    422: {"description": "A field that cannot change, or a value the expert cannot take; nothing changed."}}


def shown(c: SkillRoute, row: Expert, with_profile: bool = False) -> ExpertOut:
    return ExpertOut.from_row(row, with_profile=with_profile, worker=c.pool.placement().get(row.name))


@router.post("", response_model=ExpertOut, status_code=202, responses=ADMIN_ONLY)
def create_expert(c: Container, body: ExpertCreate, response: Response) -> ExpertOut:
    """202: the model loaded (on the worker it will run on) and is stored; profiling runs now —
    poll GET /v1/experts/{id}."""
    row = c.experts.register(spec_of(body))
    response.headers["Location"] = f"/v1/experts/{row.id}"
    return shown(c, c.experts.get(row.id))


def spec_of(body: ExpertCreate) -> ExpertSpec:
    """The expert a registration describes (the CLI's in-process `experts add` reads it too)."""
    return ExpertSpec(name=body.name, base=body.model, system_prompt=body.system_prompt, sampling=body.sampling,
                      placement=body.placement, timeout_s=body.timeout_s)


@router.get("", response_model=list[ExpertOut])
def list_experts(c: Container, with_profile: bool = False) -> list[ExpertOut]:
    """Every expert ever registered, removed ones included (status `removed`); with
    `?with_profile=true` each with its profile, as GET /v1/experts/{id} shows it (one request,
    where one per expert could run into a key's rate limit)."""
    where = c.pool.placement()
    rows = c.experts.all(profiles=with_profile)
    return [ExpertOut.from_row(e, with_profile=with_profile, worker=where.get(e.name)) for e in rows]


@router.get("/{expert_id}", response_model=ExpertOut)
def get_expert(c: Container, expert_id: RowId) -> ExpertOut:
    return shown(c, c.experts.get(expert_id), with_profile=True)


@router.patch("/{expert_id}", response_model=ExpertOut, responses={202: {"description": "Re-profiling."}, **ERRORS})
def update_expert(c: Container, expert_id: RowId, body: ExpertUpdate, response: Response) -> ExpertOut:
    """200: changed, routing follows at once. 202: its persona (system prompt or sampling)
    changed and it is being profiled again — explored, not recruited, until `ready`."""
    row, profiling = c.experts.update(expert_id, ExpertChange(body.spec_changes(), body.enabled))
    if profiling:
        response.status_code = 202
        response.headers["Location"] = f"/v1/experts/{row.id}"
    return shown(c, row)


@router.delete("/{expert_id}", response_model=ExpertOut, responses=ERRORS)
def remove_expert(c: Container, expert_id: RowId) -> ExpertOut:
    """Never routed to again, its model unloaded where nothing else uses it; the expert and
    everything that names it stay readable (status `removed`). Removing it again changes nothing."""
    return shown(c, c.experts.remove(expert_id))
