"""Request and response bodies of the REST API (queries, experts); the OpenAI ones live in
`openai_compat`. Every reply that shows a routing decision is the stored `domain.Decision`
record itself, its fields at the top level of the reply, so they read alike everywhere."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

from experts.types import BaseModelSpec, ExpertPlacement, SamplingParams, check_shown, check_storable
from orchestrator.domain import Answer, Ask, Decision, DecisionMode, QueryBudget, not_reserved
from orchestrator.store.models import Expert, Query
from orchestrator.store.repositories.queries import answers_of, decision_of

RecruitModeField = Literal["sample", "topk", "dynamic"]


def _filled(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a character other than whitespace")
    return value


# Text a request may carry into the store. PostgreSQL's text columns refuse NUL, so a query
# holding one was routed, then failed its insert (a 500) and with it every request admitted
# beside it, while SQLite took it: it is refused at the door instead, a 422 on either database.
# A lone surrogate (JSON's "\ud800" escape) is no character either: the embedder's tokenizer
# refused it, failing every request embedded in the same group, so it is refused here too. The rule
# is `experts.types.check_storable`, which an expert's stops and model source follow as well.
StorableText = Annotated[str, AfterValidator(check_storable)]
# A length bound goes before the checks: put after them (or on `… | None`), pydantic checks it as
# any sequence's, and the 422 counted "items" where the client sent characters.
NameText = Annotated[str, Field(max_length=64), AfterValidator(check_storable)]
# A question or a gold answer of only whitespace is refused as well: a blank query was routed,
# answered and stored, and a blank gold answer was kept as feedback that could teach nothing.
AnswerText = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(check_storable),
                       AfterValidator(_filled)]
PromptText = Annotated[str, Field(max_length=4000), AfterValidator(check_storable)]
QueryText = Annotated[str, Field(min_length=1, max_length=8000), AfterValidator(check_storable),
                      AfterValidator(_filled)]
# a query's own cap on every generation: it decides which experts can take the prompt and what a
# budget costs, so /v1/routes takes it as /v1/queries does
MaxTokens = Annotated[int | None, Field(
    ge=1, le=2**31 - 1, description="The most each expert and the aggregator write; only lowers the pool's limits (and "
                               "the query's predicted work in the window).")]


class BudgetFields(BaseModel):
    """Optional per-query budgets (MoE^2): the chosen experts must fit them, as predicted from
    where each expert runs; unset ones fall back to the API key's defaults."""

    # strict: `true` was taken as 1 ms; finite: NaN was refused as out of range
    latency_ms: float | None = Field(default=None, gt=0, le=3_600_000, strict=True, allow_inf_nan=False,
                                     description="Latency budget in ms: experts plus aggregation.")
    energy_j: float | None = Field(default=None, gt=0, le=1e9, strict=True, allow_inf_nan=False,
                                   description="Energy budget in joules.")


class QueryRequest(BudgetFields):
    model_config = ConfigDict(extra="forbid")

    query: QueryText = Field(description="The question to answer.")
    k: int | None = Field(default=None, ge=1, le=8, strict=True,  # strict: `true` was read as 1
                          description="How many experts to recruit (under a budget: at most); unset: the "
                                      "service's `default_k` (3).")
    mode: RecruitModeField | None = Field(
        default=None, description="sample: k draws ∝ weight (paper); topk: deterministic; dynamic: until share p; "
                                  "unset: the router's own (sample for Symbolic-MoE, topk for k-NN).")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, strict=True,
                             description="Makes the routing draw and each generation's sample reproducible.")
    max_tokens: MaxTokens = None

    def to_ask(self, budget: QueryBudget | None, default_k: int) -> Ask:
        return Ask(text=self.query, k=self.k or default_k, mode=self.mode, seed=self.seed, budget=budget,
                   max_tokens=self.max_tokens)


class QueryResponse(Decision):
    """A stored query: its decision record's fields, its status, answer and every generation."""

    id: int
    status: str
    query: str
    k: int
    answer: str | None
    error: str | None
    latency_s: float | None
    generations: list[Answer] = []
    # None only for a query a release before 0004 stored without ever routing it
    router: str | None = None  # type: ignore[assignment]
    mode: DecisionMode | None = None  # type: ignore[assignment]
    seed: int | None = None  # type: ignore[assignment]

    @classmethod
    def from_row(cls, q: Query) -> QueryResponse:
        d = decision_of(q)
        return cls(**(d.model_dump() if d else {}), id=q.id, status=q.status, query=q.text, k=q.k, answer=q.answer,
                   error=q.error, latency_s=q.latency_s, generations=answers_of(q))


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # strict: "yes", 1 or "false" read as verdicts (pydantic's lax bool) taught what was not said
    correct: StrictBool | None = Field(default=None, description="Was the service's answer right?")
    answer: AnswerText | None = Field(default=None, description="…or the right answer.")

    @model_validator(mode="after")
    def _one(self) -> FeedbackRequest:
        if (self.correct is None) == (self.answer is None):
            raise ValueError("give exactly one of `correct` and `answer`")
        return self


class FeedbackOut(BaseModel):
    query_id: int
    experts: dict[str, bool] = Field(description="Each answering expert as marked (right or wrong).")
    replaced: bool = Field(description="The query had feedback already: this one now counts instead.")


class ExpertCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, AfterValidator(not_reserved)] = Field(min_length=1, max_length=64,
                                                              pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    model: Annotated[BaseModelSpec, AfterValidator(check_shown)] = Field(
        description="kind llamacpp: source is a GGUF path or package:<name>; kind openai: source is the "
                    "server's /v1 URL (no credentials in it: it is shown to readers) and model its model name.")
    system_prompt: PromptText | None = Field(default=None)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    placement: ExpertPlacement = Field(default_factory=ExpertPlacement,
                                       description="Its worker and device profile (default: planned).")
    # strict, as BudgetFields: `true` was taken as 1 s and "12" as 12
    timeout_s: float | None = Field(default=None, gt=0, le=3600, strict=True, allow_inf_nan=False,
                                    description="How long one generation may take.")


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
    worker: str | None = Field(default=None, description="The worker it runs on (planned unless placed); "
                                                         "none while it is failed, and once removed.")
    timeout_s: float | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    enabled: bool = Field(default=True, description="False while disabled or removed: never routed to.")
    profile: dict[str, float] | None = None

    @classmethod
    def from_row(cls, e: Expert, with_profile: bool = False, worker: str | None = None) -> ExpertOut:
        profile = {s.skill: s.score for s in sorted(e.skills, key=lambda s: -s.score)} if with_profile else None
        return cls(id=e.id, name=e.name, status=e.status, base_model_key=e.base_model_key,
                   system_prompt=e.spec.get("system_prompt"), model=e.spec["base"],
                   progress=Progress(done=e.progress_done, total=e.progress_total),
                   accuracy=e.accuracy, error=e.error, profile=profile, worker=worker,
                   timeout_s=e.spec.get("timeout_s"), enabled=e.status not in ("disabled", "removed"),
                   sampling=SamplingParams.model_validate(e.spec.get("sampling") or {}),
                   placement=ExpertPlacement.model_validate(e.spec.get("placement") or {}))


class ExpertUpdate(BaseModel):
    """PATCH /v1/experts/{id}: only what is given changes; `sampling` and `placement` change only
    the keys they give. A null `system_prompt`, `timeout_s` or placement key clears it."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: PromptText | None = Field(default=None, description="Its persona (re-profiled).")
    sampling: SamplingParams | None = Field(default=None, description="Sampling keys to change (re-profiled).")
    placement: ExpertPlacement | None = Field(default=None, description="Placement keys to change (re-planned).")
    # strict, as BudgetFields: `true` was taken as 1 s and "12" as 12
    timeout_s: float | None = Field(default=None, gt=0, le=3600, strict=True, allow_inf_nan=False,
                                    description="How long one generation may take.")
    # strict, as FeedbackRequest.correct: "on" enabled the expert, "no" or 0 disabled it
    enabled: StrictBool | None = Field(default=None, description="false: kept and loaded, never routed to; true: back.")

    @model_validator(mode="after")
    def _something_to_change(self) -> ExpertUpdate:
        given = self.model_fields_set
        if not given:
            raise ValueError(f"nothing to change: give one of {', '.join(type(self).model_fields)}")
        nulls = [f for f in ("sampling", "placement", "enabled") if f in given and getattr(self, f) is None]
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return self

    def spec_changes(self) -> dict[str, Any]:
        """The given fields of the expert's spec (of sampling and placement, the keys given)."""
        return self.model_dump(mode="json", exclude_unset=True, exclude={"enabled"})
