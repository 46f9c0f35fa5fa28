"""OpenAI-compatible /v1/chat/completions (plain and streamed) and /v1/models.

`model="auto"` routes; an expert's name asks that expert alone. The reply's `model` is who wrote
the final answer (the aggregator when there was one); the decision travels in `x-skillroute-*`
headers and in the extra `skillroute` field, which OpenAI clients ignore.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from orchestrator.api.deps import Budgets, Container, answered
from orchestrator.api.schemas import BudgetFields, RecruitModeField
from orchestrator.domain import Ask, Decision, RecruitMode
from orchestrator.services.admission import ModelNotFound
from orchestrator.services.budgets import BudgetService
from orchestrator.services.chat import AUTO, ChatResult, conversation_text, text_chunks
from orchestrator.services.errors import ServiceError

router = APIRouter(prefix="/v1", tags=["openai"])


class TextPart(BaseModel):
    type: Literal["text"]
    text: str = Field(max_length=32_000)


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(default=None, description="Text, or text parts; images are refused.")
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BudgetFields):
    # unknown OpenAI parameters (logprobs, tools, …) are accepted and ignored, as vLLM does
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=64, description="`auto` routes; an expert's name asks it alone.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Makes the routing draw reproducible.")
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is produced.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Accepted; experts keep their own.")
    max_tokens: int | None = Field(default=None, ge=1, description="Accepted; the pool's limits apply.")
    k: int | None = Field(default=None, ge=1, le=8, description="skillroute: experts to recruit (auto only).")
    mode: RecruitModeField | None = Field(default=None, description="skillroute: recruit mode.")

    def to_ask(self, default_k: int, default_mode: RecruitMode | None, budgets: BudgetService) -> Ask:
        """`auto` routes; another model names the expert that answers alone. Budgets
        (`latency_ms`, `energy_j` as extra body fields, or the key's) route `auto` only."""
        text = conversation_text([(m.role, m.text()) for m in self.messages])
        if self.model != AUTO:
            if self.latency_ms is not None or self.energy_j is not None:
                raise ServiceError("latency_ms and energy_j choose experts, so they need model 'auto'",
                                   "latency_ms" if self.latency_ms is not None else "energy_j")
            return Ask(text=text, k=1, mode="topk", seed=self.seed if self.seed is not None else 0, expert=self.model)
        budget = budgets.resolve(self.latency_ms, self.energy_j)
        return Ask(text=text, k=self.k or default_k, mode=self.mode or default_mode, seed=self.seed, budget=budget)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class SkillrouteInfo(Decision):
    """The stored decision record of the query that answered this chat, with its id and answer."""

    query_id: int
    answer: str | None = Field(description="The reply's final answer line.")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    skillroute: SkillrouteInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "skillroute"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def skillroute_info(r: ChatResult) -> SkillrouteInfo:
    return SkillrouteInfo(**r.decision.model_dump(), query_id=r.query.id, answer=r.query.answer)


def decision_headers(info: SkillrouteInfo) -> dict[str, str]:
    """Header values must be latin-1: anything else in a skill name is escaped, not dropped."""
    raw = {"query-id": str(info.query_id), "experts": ",".join(info.recruited), "aggregator": info.aggregator or "",
           "skills": ",".join(dict.fromkeys(s.skill for s in info.skills)), "router": info.router or "",
           "seed": "" if info.seed is None else str(info.seed)}
    return {f"x-skillroute-{k}": v.encode("ascii", "backslashreplace").decode() for k, v in raw.items()}


def completion(r: ChatResult, info: SkillrouteInfo) -> ChatCompletion:
    prompt, done = r.usage
    return ChatCompletion(id=f"chatcmpl-{r.query.id}", created=int(r.query.created_at.timestamp()), model=r.model,
                          choices=[Choice(message=ChatMessageOut(content=r.content))],
                          usage=Usage(prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done),
                          skillroute=info)


def sse_events(c: ChatCompletion, include_usage: bool) -> Iterator[str]:
    """The reply as standard chat.completion.chunk events, ending in `data: [DONE]`."""
    head = {"id": c.id, "object": "chat.completion.chunk", "created": c.created, "model": c.model}

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps({**head, 'choices': [choice], **extra})}\n\n"

    yield event({"role": "assistant", "content": ""}, skillroute=c.skillroute.model_dump(mode="json"))
    for piece in text_chunks(c.choices[0].message.content):
        yield event({"content": piece})
    yield event({}, "stop")
    if include_usage:
        yield f"data: {json.dumps({**head, 'choices': [], 'usage': c.usage.model_dump()})}\n\n"
    yield "data: [DONE]\n\n"


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A completion, or with stream=true its chunks as server-sent events."}})
async def chat_completions(c: Container, budgets: Budgets, body: ChatCompletionRequest, response: Response) -> Any:
    """Answer a chat: routed to k experts and aggregated (`auto`), or one named expert."""
    ask = body.to_ask(c.settings.default_k, c.settings.recruit_mode, budgets)
    (query_id,) = await answered(c.queries, [ask])
    result = await run_in_threadpool(c.chat.result, query_id)
    info = skillroute_info(result)
    reply, headers = completion(result, info), decision_headers(info)
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse_events(reply, include), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    response.headers.update(headers)
    return reply


@router.get("/models", response_model=ModelList)
async def list_models(c: Container) -> ModelList:
    """`auto` (routed) and every ready expert, as OpenAI model cards."""
    return ModelList(data=[ModelCard(id=m) for m in c.chat.models()])


@router.get("/models/{model}", response_model=ModelCard)
async def get_model(c: Container, model: Annotated[str, Path(max_length=64)]) -> ModelCard:
    if model not in c.chat.models():
        raise ModelNotFound(f"the model {model!r} does not exist", "model")
    return ModelCard(id=model)

