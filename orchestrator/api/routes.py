"""/v1/routes: the routing decision alone — skills, scores, recruits, aggregator — for dry runs.

It runs the very routing step the answering path runs, so with the same query and seed it
returns the decision that /v1/queries and /v1/chat/completions make.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.api.deps import Budgets
from orchestrator.api.openai_compat import Chat, ChatMessageIn
from orchestrator.api.schemas import BudgetFields, BudgetOut, ExpertScoreOut, SkillOut
from orchestrator.pipeline import Decision
from orchestrator.services.chat import conversation_text

router = APIRouter(prefix="/v1/routes", tags=["routes"])


class RouteRequest(BudgetFields):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(default=None, min_length=1, max_length=8000, description="The question, or…")
    messages: list[ChatMessageIn] | None = Field(default=None, min_length=1, max_length=256,
                                                 description="…a chat, read as /v1/chat/completions reads it.")
    k: int = Field(default=3, ge=1, le=8)
    mode: Literal["sample", "topk", "dynamic"] | None = None  # None: the router's preferred mode
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Unset: one is drawn and returned.")

    @model_validator(mode="after")
    def _one_source(self) -> RouteRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of `query` and `messages`")
        return self

    def text(self) -> str:
        turns = [("user", self.query or "")] if self.messages is None else [(m.role, m.text()) for m in self.messages]
        return conversation_text(turns)


class RouteResponse(BaseModel):
    recruited: list[str] = Field(description="Who would answer, repeats included (k draws).")
    aggregator: str | None = Field(description="Who would aggregate; none when one answer needs no aggregation.")
    skills: list[SkillOut]
    experts: list[ExpertScoreOut]
    router: str
    mode: str
    seed: int = Field(description="The seed used: send it back to get this decision again.")
    budget: BudgetOut | None = Field(default=None, description="With a budget: the subset and its predicted cost.")

    @classmethod
    def from_decision(cls, d: Decision) -> RouteResponse:
        scores = [ExpertScoreOut(name=s.name, suitability=s.suitability, competence=s.competence, weight=s.weight,
                                 recruited=d.recruited.count(s.name)) for s in d.scores]
        return cls(recruited=list(d.recruited), aggregator=d.aggregator, router=d.router, mode=d.mode, seed=d.seed,
                   skills=[SkillOut(keyword=m.keyword, skill=m.skill, similarity=m.similarity) for m in d.skills],
                   experts=scores, budget=BudgetOut.model_validate(d.plan.record()) if d.plan else None)


@router.post("", response_model=RouteResponse)
def create_route(chat: Chat, budgets: Budgets, body: RouteRequest) -> RouteResponse:
    """Route a query without answering it (under a budget: the experts and their predicted cost)."""
    budget = budgets.resolve(body.latency_ms, body.energy_j)
    return RouteResponse.from_decision(chat.route(body.text(), body.k, body.mode, body.seed, budget))
