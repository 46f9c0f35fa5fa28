"""/v1/experts: register an expert (checked, stored, profiled in the background) and read them."""

from __future__ import annotations

from fastapi import APIRouter, Response

from experts.types import ExpertSpec
from orchestrator.api.deps import Container, RowId
from orchestrator.api.schemas import ExpertCreate, ExpertOut

router = APIRouter(prefix="/v1/experts", tags=["experts"])


@router.post("", response_model=ExpertOut, status_code=202)
def create_expert(c: Container, body: ExpertCreate, response: Response) -> ExpertOut:
    """202: the model loaded (on the worker it will run on) and is stored; profiling runs now —
    poll GET /v1/experts/{id}."""
    spec = ExpertSpec(name=body.name, base=body.model, system_prompt=body.system_prompt, sampling=body.sampling,
                      placement=body.placement, timeout_s=body.timeout_s)
    row = c.experts.register(spec)
    response.headers["Location"] = f"/v1/experts/{row.id}"
    return ExpertOut.from_row(c.experts.get(row.id), worker=c.pool.placement().get(row.name))


@router.get("", response_model=list[ExpertOut])
def list_experts(c: Container) -> list[ExpertOut]:
    where = c.pool.placement()
    return [ExpertOut.from_row(e, worker=where.get(e.name)) for e in c.experts.all()]


@router.get("/{expert_id}", response_model=ExpertOut)
def get_expert(c: Container, expert_id: RowId) -> ExpertOut:
    e = c.experts.get(expert_id)
    return ExpertOut.from_row(e, with_profile=True, worker=c.pool.placement().get(e.name))
