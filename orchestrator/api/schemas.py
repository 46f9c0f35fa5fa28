"""Request and response bodies of the REST API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from experts.types import BaseModelSpec, ExpertPlacement, SamplingParams
from orchestrator.store.models import Expert, Query


class BudgetFields(BaseModel):
    """Optional per-query budgets (MoE^2): the chosen experts must fit them, as predicted from
    where each expert runs; unset ones fall back to the API key's defaults."""

    latency_ms: float | None = Field(default=None, gt=0, le=3_600_000,
                                     description="Latency budget in ms: experts plus aggregation.")
    energy_j: float | None = Field(default=None, gt=0, le=1e9, description="Energy budget in joules.")


class QueryRequest(BudgetFields):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=8000, description="The question to answer.")
    k: int = Field(default=3, ge=1, le=8, description="How many experts to recruit (under a budget: at most).")
    mode: Literal["sample", "topk", "dynamic"] | None = Field(
        default=None, description="sample: k draws ∝ weight (paper); topk: deterministic; dynamic: until share p; "
                                  "unset: the router's own (sample for Symbolic-MoE, topk for k-NN).")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Makes sampling reproducible.")


class SkillOut(BaseModel):
    keyword: str
    skill: str
    similarity: float


class ExpertScoreOut(BaseModel):
    name: str
    suitability: float
    competence: float
    weight: float
    recruited: int = Field(description="How many of the k draws picked this expert.")


class GenerationOut(BaseModel):
    expert: str
    role: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class BudgetCandidateOut(BaseModel):
    expert: str
    quality: float = Field(description="The router's estimate that this expert answers right.")
    latency_s: float = Field(description="Predicted on its device, alone.")
    energy_j: float
    device: str | None = Field(description="The device it runs on (experts on one device run in turn).")


class BudgetOut(BaseModel):
    latency_ms: float | None
    energy_j: float | None
    k_max: int
    from_key: list[str] = Field(description="Limits taken from the API key's defaults.")
    chosen: list[str] = Field(description="The exact best subset within the budget.")
    predicted_quality: float
    predicted_latency_s: float
    predicted_energy_j: float
    measured_latency_s: float | None = Field(
        default=None, description="Wall time of the expert and aggregation stages (of the query's batch).")
    measured_energy_j: float | None = None
    measured_energy_basis: str | None = None
    solver_nodes: int
    local_slowdown: float | None = Field(
        default=None, description="How much slower this shared CPU ran than its profile lately (applied).")
    candidates: list[BudgetCandidateOut]


class QueryResponse(BaseModel):
    id: int
    status: str
    query: str
    k: int
    answer: str | None
    error: str | None
    latency_s: float | None
    skills: list[SkillOut] = []
    experts: list[ExpertScoreOut] = []
    recruited: list[str] = []
    aggregator: str | None = None
    router: str | None = None
    seed: int | None = None
    budget: BudgetOut | None = None
    generations: list[GenerationOut] = []

    @classmethod
    def from_row(cls, q: Query) -> QueryResponse:
        d = q.decision
        picks = list(d.recruited) if d else []
        scores = [ExpertScoreOut(**x, recruited=picks.count(x["name"])) for x in (d.experts if d else [])]
        return cls(
            id=q.id, status=q.status, query=q.text, k=q.k, answer=q.answer, error=q.error, latency_s=q.latency_s,
            skills=[SkillOut(**m) for m in (d.skills if d else [])], experts=scores, recruited=picks,
            aggregator=d.aggregator if d else None, router=d.router if d else None, seed=d.seed if d else None,
            budget=BudgetOut.model_validate(d.budget) if d and d.budget else None,
            generations=[GenerationOut.model_validate(g, from_attributes=True) for g in q.generations],
        )


class ExpertCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    model: BaseModelSpec = Field(description="kind llamacpp: source is a GGUF path or package:<name>; "
                                             "kind openai: source is the server's /v1 URL and model its model name.")
    system_prompt: str | None = Field(default=None, max_length=4000)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    placement: ExpertPlacement = Field(default_factory=ExpertPlacement,
                                       description="Where it runs, for budgets (default: this machine's CPU).")


class Progress(BaseModel):
    done: int
    total: int


class ExpertOut(BaseModel):
    id: int
    name: str
    status: str
    base_model_key: str
    system_prompt: str | None
    model: dict[str, Any]
    progress: Progress
    accuracy: float | None
    error: str | None
    placement: ExpertPlacement
    profile: dict[str, float] | None = None

    @classmethod
    def from_row(cls, e: Expert, with_profile: bool = False) -> ExpertOut:
        profile = {s.skill: s.score for s in sorted(e.skills, key=lambda s: -s.score)} if with_profile else None
        return cls(id=e.id, name=e.name, status=e.status, base_model_key=e.base_model_key,
                   system_prompt=e.spec.get("system_prompt"), model=e.spec["base"],
                   progress=Progress(done=e.progress_done, total=e.progress_total),
                   accuracy=e.accuracy, error=e.error, profile=profile,
                   placement=ExpertPlacement.model_validate(e.spec.get("placement") or {}))
