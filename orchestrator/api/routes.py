"""/v1/routes: the routing decision alone — skills, scores, recruits, aggregator — for dry runs.

It runs the very checks and routing step that admitting a query runs, so with the same query
and seed it returns the decision that /v1/queries and /v1/chat/completions make and store.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from orchestrator.api.deps import Budgets, Container
from orchestrator.api.openai_compat import ChatMessageIn
from orchestrator.api.openapi_errors import ADMITTING
from orchestrator.api.schemas import BudgetFields, MaxTokens, QueryText, RecruitModeField
from orchestrator.domain import Ask, Decision
from orchestrator.services.chat import conversation_text

router = APIRouter(prefix="/v1/routes", tags=["routes"])


class RouteRequest(BudgetFields):
    model_config = ConfigDict(extra="forbid")

    query: QueryText | None = Field(default=None, description="The question, or…")
    messages: list[ChatMessageIn] | None = Field(default=None, min_length=1, max_length=256,
                                                 description="…a chat, read as /v1/chat/completions reads it.")
    k: int | None = Field(default=None, ge=1, le=8, description="Unset: the service's `default_k` (3).")
    mode: RecruitModeField | None = None  # None: the router's preferred mode
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Unset: one is drawn and returned.")
    max_tokens: MaxTokens = None  # the query's own: which experts can take the prompt, what a budget costs

    @model_validator(mode="after")
    def _one_source(self) -> RouteRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of `query` and `messages`")
        return self

    def text(self) -> str:
        """The text /v1/queries (a `query`, as it is) or /v1/chat/completions (`messages`) would
        route: a query read as a chat lost its outer blanks, and with them the prompt tokens a
        budget and a context window are checked at."""
        if self.messages is None:
            return self.query or ""
        return conversation_text([(m.role, m.text()) for m in self.messages])


@router.post("", response_model=Decision, responses=ADMITTING)
async def create_route(c: Container, budgets: Budgets, body: RouteRequest) -> Decision:
    """Route a query without answering it (under a budget: the experts and their predicted cost)."""
    budget = budgets.resolve(body.latency_ms, body.energy_j)
    ask = Ask(text=body.text(), k=body.k or c.settings.default_k, mode=body.mode, seed=body.seed, budget=budget,
              max_tokens=body.max_tokens)
    return (await run_in_threadpool(c.admission.route, [ask]))[0]
