"""The OpenAI chat-completions protocol as skillroute speaks it: the request, the reply, the
stream's chunks and the model list, field for field as the published schema
(openai/openai-openapi: CreateChatCompletionRequest/Response, CreateChatCompletionStreamResponse,
ListModelsResponse) has them. Where the schema says a field is present but nullable (a message's
`refusal`, a choice's `logprobs`, a chunk's `finish_reason`) it is sent as null; where it says
optional (`system_fingerprint`) it is left out rather than sent as null. `skillroute`, the
query's stored decision record, is the one extra field (OpenAI clients keep it in
`model_extra`).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from experts.types import check_stops
from orchestrator.api.errors import UNSUPPORTED_PARAMETER, UNSUPPORTED_VALUE, error_body, openai_type
from orchestrator.api.schemas import BudgetFields, NameText, RecruitModeField, StorableText
from orchestrator.domain import AUTO, Ask, Decision
from orchestrator.services.budgets import BudgetService
from orchestrator.services.chat import ChatResult, conversation_text
from orchestrator.services.errors import ServiceError

FinishReason = Literal["stop", "length"]
_CHOICE_OF = {"tools": "tool_choice", "functions": "function_call"}  # what says whether tools may be called


class UnsupportedParameter(ServiceError):
    """A parameter the service takes, refused beside another (`k` with a named expert): a 400
    with OpenAI's code for a parameter not done, as the body checks give."""

    code = UNSUPPORTED_PARAMETER


class TextPart(BaseModel):
    type: Literal["text"]
    text: StorableText = Field(max_length=32_000)


class RefusalPart(BaseModel):
    """An earlier assistant turn's refusal, as OpenAI replays it: read as that turn's text."""

    type: Literal["refusal"]
    refusal: StorableText = Field(max_length=32_000)


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StorableText | list[TextPart | RefusalPart] | None = Field(
        default=None, description="Text, or text (or an assistant's refusal) parts; images are refused.")
    name: NameText | None = Field(default=None)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text if isinstance(p, TextPart) else p.refusal for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = Field(default=False, description="A last chunk, before [DONE], with the usage.")


def _sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    """OpenAI's `stop` (one string, a list, or none) as the sequences it names."""
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


class Unimplemented(BaseModel):
    """OpenAI parameters asking for what no expert here gives: tool calls, JSON output, log
    probabilities. Ignored, they handed the client a reply it could not use as it asked (a
    parse() of prose, no tool call); so they are refused, a 400 naming the parameter, as vLLM
    refuses what it was not started to do. Their settings that ask for nothing pass."""

    tool_choice: str | dict[str, Any] | None = Field(default=None, description="Only `none`, or `auto` without tools.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Only with `tool_choice: none`: no expert "
                                                                        "calls tools.")
    function_call: str | dict[str, Any] | None = Field(default=None, description="Deprecated `tool_choice`: the same.")
    functions: list[dict[str, Any]] | None = Field(default=None, description="Deprecated `tools`: the same.")
    response_format: dict[str, Any] | None = Field(default=None, description='Only `{"type": "text"}`.')
    logprobs: bool | None = Field(default=None, description="Only false: no log probabilities are reported.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="Only 0.")
    modalities: list[str] | None = Field(default=None, max_length=4, description='Only `["text"]`: no audio.')
    audio: dict[str, Any] | None = Field(default=None, description="Only null: no expert speaks.")

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_call(cls, choice: str | dict[str, Any] | None, info: ValidationInfo) -> str | dict[str, Any] | None:
        if choice in (None, "none", "auto"):
            return choice
        asked = f"{choice!r}" if isinstance(choice, str) else "a named function"
        raise PydanticCustomError(UNSUPPORTED_VALUE, f"{asked} asks for a tool call, and no expert here calls "
                                                     "tools: only 'none' (or 'auto' without tools) is taken")

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, tools: list[dict[str, Any]] | None, info: ValidationInfo) -> list[dict[str, Any]] | None:
        choice = _CHOICE_OF[str(info.field_name)]
        if not tools or info.data.get(choice) == "none":  # the client expects no call: the tools change nothing
            return tools
        raise PydanticCustomError(UNSUPPORTED_PARAMETER, f"no expert here calls tools: they are taken only with "
                                                         f"{choice} 'none'")

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, fmt: dict[str, Any] | None) -> dict[str, Any] | None:
        if fmt is None or fmt.get("type") == "text":
            return fmt
        raise PydanticCustomError(UNSUPPORTED_VALUE, "replies are plain text: only {'type': 'text'} is taken "
                                                     "(no JSON mode, no schema)")

    @field_validator("modalities")
    @classmethod
    def _text_out(cls, modalities: list[str] | None) -> list[str] | None:
        if not modalities or set(modalities) == {"text"}:
            return modalities
        raise PydanticCustomError(UNSUPPORTED_VALUE, "replies are text: only ['text'] is taken (no audio)")

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, audio: dict[str, Any] | None) -> dict[str, Any] | None:
        if audio is None:
            return audio
        raise PydanticCustomError(UNSUPPORTED_PARAMETER, "no expert here speaks: replies are text")

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, asked: bool | int | None) -> bool | int | None:
        if not asked:
            return asked
        raise PydanticCustomError(UNSUPPORTED_PARAMETER, "no log probabilities are reported")


class ChatCompletionRequest(BudgetFields, Unimplemented):
    # other OpenAI parameters are accepted and ignored, as vLLM does, where ignoring them keeps
    # the reply one the client can use (user, top_p, presence_penalty, …); `Unimplemented` refuses the rest
    model_config = ConfigDict(extra="ignore")
    transport_fields: ClassVar[set[str]] = {"stream", "stream_options"}  # not the query (idempotency.fingerprint)

    model: str = Field(min_length=1, max_length=64, description="`auto` routes; an expert's name asks it alone.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    stream: bool = Field(default=False, description="The reply as server-sent events, token by token (null: false).")
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, strict=True,
                             description="Makes the routing draw and each generation's sample reproducible; any "
                                         "64-bit integer, folded into 0..2^31-1 (what every backend takes).")
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is produced (null: 1).")
    temperature: float | None = Field(default=None, ge=0, le=2,
                                      description="Every generation of the query samples at it.")
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                   description="Caps every generation of the query, below the pool's own limits.")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                              description="The same as `max_tokens` (wins where both are given).")
    stop: StorableText | list[StorableText] | None = Field(default=None,
                                                         description="Up to 4 sequences that end a generation.")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, description="Accepted and not applied.")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, description="Accepted and not applied.")
    k: int | None = Field(default=None, ge=1, le=8, strict=True,
                          description="skillroute: experts to recruit (auto only).")
    mode: RecruitModeField | None = Field(default=None, description="skillroute: recruit mode.")

    @field_validator("stream", "n", mode="before")
    @classmethod
    def _null_is_default(cls, value: object, info: ValidationInfo) -> object:
        """OpenAI's schema has `stream` and `n` nullable, null meaning their default (false, 1)."""
        return cls.model_fields[str(info.field_name)].default if value is None else value

    @field_validator("seed")
    @classmethod
    def _folded(cls, seed: int | None) -> int | None:
        """OpenAI takes any int64 (clients send 64-bit random seeds); the backends take 31 bits.
        Folded, a seed still reproduces, and the reply's `skillroute.seed` says which was used."""
        return None if seed is None else seed % 2**31

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        check_stops(_sequences(stop))
        return stop

    @field_validator("stream_options")
    @classmethod
    def _streamed(cls, options: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if options is None or info.data.get("stream"):
            return options
        raise PydanticCustomError(UNSUPPORTED_PARAMETER, "stream_options apply to a stream: set stream to true")

    @model_validator(mode="after")
    def _one_spelling(self) -> ChatCompletionRequest:
        """A request spelled two ways is one request (`idempotency.fingerprint`): `max_tokens`
        is read as `max_completion_tokens`, which wins where both are given, and a lone stop
        string as a list of one (a retry spelling them the other way was a 422 "different body")."""
        if self.max_completion_tokens is None:
            self.max_completion_tokens = self.max_tokens
        self.max_tokens = None
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        return self

    def stop_sequences(self) -> tuple[str, ...]:
        return _sequences(self.stop)

    def to_ask(self, default_k: int, budgets: BudgetService) -> Ask:
        """`auto` routes; another model names the expert that answers alone. A request's budgets
        (`latency_ms`, `energy_j` as extra body fields) route `auto` only; the key's defaults
        hold for a named expert too, which answers only if it fits them (they were skipped)."""
        text = conversation_text([(m.role, m.text()) for m in self.messages])
        sampling: dict[str, Any] = {"max_tokens": self.max_completion_tokens,
                                    "temperature": self.temperature, "stop": self.stop_sequences()}
        if self.model != AUTO:
            routing = [f for f in ("latency_ms", "energy_j", "k", "mode") if getattr(self, f) is not None]
            if routing:  # the named expert answers alone: nothing is chosen by them
                raise UnsupportedParameter(f"{' and '.join(routing)} choose experts, so they need model 'auto'",
                                           routing[0])
            return Ask(text=text, k=1, mode="topk", seed=self.seed, expert=self.model,
                       budget=budgets.resolve(None, None), **sampling)
        budget = budgets.resolve(self.latency_ms, self.energy_j)
        return Ask(text=text, k=self.k or default_k, mode=self.mode, seed=self.seed, budget=budget,
                   **sampling)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = Field(default=None, description="Always null: no expert refuses by policy here.")


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: FinishReason = "stop"
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


def usage_of(r: ChatResult) -> Usage:
    prompt, done = r.usage
    return Usage(prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done)


def completion(r: ChatResult, info: SkillrouteInfo) -> ChatCompletion:
    return ChatCompletion(id=completion_id(r.query.id), created=int(r.query.created_at.timestamp()), model=r.model,
                          choices=[Choice(message=ChatMessageOut(content=r.content), finish_reason=r.finish_reason)],
                          usage=usage_of(r), skillroute=info)


def completion_id(query_id: int) -> str:
    return f"chatcmpl-{query_id}"


def decision_headers(query_id: int, decision: Decision) -> dict[str, str]:
    """The decision as `x-skillroute-*` headers. Header values must be latin-1: anything else in
    a skill name is escaped, not dropped."""
    raw = {"query-id": str(query_id), "experts": ",".join(decision.recruited), "aggregator": decision.aggregator or "",
           "skills": ",".join(dict.fromkeys(s.skill for s in decision.skills)), "router": decision.router or "",
           "seed": str(decision.seed)}
    return {f"x-skillroute-{k}": v.encode("ascii", "backslashreplace").decode() for k, v in raw.items()}


class ChunkWriter:
    """The `chat.completion.chunk` events of one streamed reply, as `data: …` SSE lines: every
    chunk carries the same id, created and model; `usage` is null on each until the last
    (empty-choices) chunk when the client asked for it, and absent otherwise. The model is
    named by the first chunk (`begin`), once it is known who writes the reply."""

    def __init__(self, query_id: int, created: int, include_usage: bool):
        self.head: dict[str, Any] = {"id": completion_id(query_id), "object": "chat.completion.chunk",
                                     "created": created, "model": None}
        self.include_usage = include_usage

    @property
    def begun(self) -> bool:
        return self.head["model"] is not None

    def begin(self, model: str) -> str:
        """The first chunk, the role's, naming the model every chunk will carry."""
        self.head["model"] = model
        return self.delta({"role": "assistant", "content": ""})

    def delta(self, delta: dict[str, Any], finish: FinishReason | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._event({**self.head, "choices": [choice], **self._usage(None), **extra})

    def usage(self, usage: Usage) -> str:
        return self._event({**self.head, "choices": [], "usage": usage.model_dump()})

    def _usage(self, usage: None) -> dict[str, None]:
        return {"usage": usage} if self.include_usage else {}

    @staticmethod
    def _event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body)}\n\n"


def sse_error(error: ServiceError) -> str:
    """An error after the stream began (its headers are sent): OpenAI's shape as one event, the
    body a plain request's failure has (its `type` OpenAI's category, not the code twice)."""
    return _error_event(error.message, openai_type(error), error.param, error.code)


def sse_internal_error(exc: Exception, query_id: int) -> str:
    """An unexpected failure after the stream began, as OpenAI's server error: only the
    exception's type is named, since its message may hold SQL, paths or a backend's words (the
    log has it all); the stored query may still be read."""
    message = f"the reply could not be sent ({type(exc).__name__}); GET /v1/queries/{query_id} has the query"
    return _error_event(message, "server_error", None, "internal_error")


def _error_event(message: str, type_: str, param: str | None, code: str) -> str:
    return f"data: {json.dumps(error_body(message, type_, param, code))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
