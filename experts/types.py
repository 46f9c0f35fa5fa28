"""Plain data that crosses the experts/ boundary: what to generate, what came back."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant"]
# OpenAI's limits on `stop`: a query's (`openai_protocol`) and an expert's own (`check_stops`)
MAX_STOPS, MAX_STOP_CHARS = 4, 256
# Why a generation ended, as OpenAI and vLLM say it: "stop" (an end-of-sequence token or a stop
# string) or "length" (its max_tokens cut it).
FinishReason = Literal["stop", "length"]
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: no character, and no UTF-8 store takes it


class ChatMessage(BaseModel):
    role: Role
    content: str


class Strict(BaseModel):
    """A shape a user writes (a pool file, a registration): an unknown field is an error."""

    model_config = ConfigDict(extra="forbid")


def check_storable(text: str) -> str:
    """Text a user gives that is stored as given (a persona, a stop sequence, a model's source) is
    refused with what `storable` replaces in a reply: PostgreSQL's text columns refuse NUL (the
    insert failed as a 500, after the checks), and no UTF-8 store or JSON reply takes a lone
    surrogate (JSON's "\\ud800" escape decodes to one)."""
    if "\x00" in text:
        raise ValueError("must not contain the NUL character (U+0000)")
    if not text.isascii() and _SURROGATE.search(text):
        raise ValueError("must be valid Unicode: a lone surrogate (U+D800 to U+DFFF) is not a character")
    return text


def check_shown(base: BaseModelSpec) -> BaseModelSpec:
    """A model's source is shown to every reader (`GET /v1/experts`, the dashboard, /metrics
    labels, a failed generation's error): a server URL carrying credentials (user:password@, or
    a key in its query) is refused where it is given, a registration or a pool file, rather than
    published. Not a field validator: a row stored before the check still reads."""
    if base.kind != "openai":
        return base
    url = urlsplit(base.source)
    if url.username or url.password or _holds_secret(url.query) or _holds_secret(url.fragment):
        raise ValueError("source: the server URL carries credentials, and it is shown to every reader of the "
                         "experts, the dashboard and /metrics; give the key as SKILLROUTE_OPENAI_API_KEY instead "
                         "(sent as the Authorization header)")
    return base


# words of a query parameter's name that mark its value a credential ("apiKey", "access_token",
# "X-Api-Key", an Azure SAS "sig"); whole words, so "author" or "keyword" are not refused
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "sig", "signature",
                           "auth", "authorization", "credential", "credentials"})
_BARE_SECRET_CHARS = 16  # a nameless item this long ("?sk-…") reads as a key


def _holds_secret(part: str) -> bool:
    """Whether a URL's query (or fragment) carries a credential: a parameter named by one of
    `_SECRET_WORDS`, or a long nameless item."""
    for item in re.split(r"[&;]", part):
        name, named, _ = item.partition("=")
        words = {w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)}
        if (named and words & _SECRET_WORDS) or (not named and len(item) >= _BARE_SECRET_CHARS):
            return True
    return False


class SamplingParams(Strict):
    """Sampling for one generation; temperature 0 is greedy and reproducible."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=1, le=4096, description="An expert's most tokens an answer; the "
                            "pool's `generation.*_max_tokens` and a query's own may only lower it.")
    # the seeds every backend takes (llama.cpp's are 32-bit, OpenAI servers' vary): a profiling
    # run passes it as it is, so 2**70 was registered and failed the expert at its first reply
    seed: int | None = Field(default=0, ge=0, le=2**31 - 1)
    # stored with the expert's spec: a NUL or a lone surrogate was stored (SQLite), then every
    # reply listing the expert failed to encode it, a 500 on GET /v1/experts for every client
    stop: list[Annotated[str, AfterValidator(check_storable)]] = Field(default_factory=list)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: list[str]) -> list[str]:
        """An empty sequence matches at once: llama.cpp then answers "" as a success, vLLM refuses
        the whole batch. So an expert's own stops follow the rule a query's `stop` does."""
        check_stops(stop)
        return stop


def check_stops(stops: Sequence[str]) -> None:
    """OpenAI's rule for stop sequences, a query's (`openai_protocol`) and an expert's alike."""
    if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"`stop` takes up to {MAX_STOPS} non-empty sequences of at most {MAX_STOP_CHARS} characters")


class GenerationRequest(BaseModel):
    """One chat completion to run; `request_id` ties the reply back to its caller. `timeout_s`
    bounds this one request: a backend that cannot finish it in time answers it with an error
    (llama.cpp, OpenAI HTTP, replay; vLLM's engine runs a batch to its end and cannot)."""

    request_id: str
    messages: list[ChatMessage]
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    timeout_s: float | None = None


def storable(text: str) -> str:
    """Text as a reply is stored: NUL and lone surrogates become U+FFFD. PostgreSQL's text columns
    refuse NUL, no UTF-8 store takes a surrogate (a remote server's JSON may hold "\\ud83d", half an
    emoji), and a batch's answers are stored in one statement, so one model emitting either would
    fail every query beside it. A streamed piece goes through this too, so the pieces join into the
    stored text."""
    text = text.replace("\x00", "\ufffd")
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


class Generation(BaseModel):
    """One request's reply, or (`error` set, `text` empty) why this request alone failed; a
    backend that fails as a whole (a dead engine, a lost worker) raises instead."""

    request_id: str
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    # None: the backend cannot tell (a chat reply then guesses from its tokens and its limit)
    finish_reason: FinishReason | None = None

    @field_validator("text", "error")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return None if value is None else storable(value)

    @classmethod
    def failed(cls, request_id: str, error: str, latency_s: float = 0.0) -> Generation:
        return cls(request_id=request_id, text="", latency_s=latency_s, error=error)

    @classmethod
    def timed_out(cls, request: GenerationRequest, latency_s: float) -> Generation:
        """The reply of a request that ran past its `timeout_s`, as every backend words it."""
        return cls.failed(request.request_id, f"timed out after {request.timeout_s:g} s", latency_s)


def finish_reason_of(reported: object) -> FinishReason | None:
    """A backend's own finish reason as a Generation holds it: one it does not name "stop" or
    "length" (vLLM's "abort", a server's "content_filter", none at all) is unknown."""
    return "stop" if reported == "stop" else "length" if reported == "length" else None


# What a token stream yields: text pieces as they are generated, then the whole reply once
# (`experts.streaming`).
StreamEvent = str | Generation


BackendKind = Literal["llamacpp", "openai", "replay", "vllm", "mock"]
SOURCE_MAX_CHARS, MODEL_MAX_CHARS = 400, 100  # with the kind and separators, within 512
PACKAGE_PREFIX = "package:"  # a llamacpp or vllm source naming a packaged model (experts.catalog)


class BaseModelSpec(Strict):
    """Where a base model's weights (or server) are. Experts over one spec share one load.

    `source` is read per kind: llamacpp -> a GGUF path or `package:<catalog name>`;
    openai -> the server's base URL (with `model` naming the served model); vllm -> an HF folder;
    replay -> the recording folder (with `model` naming the recorded model); mock -> anything.
    """

    kind: BackendKind
    # the key (kind:source#model) is stored in a 512-character column: bounded here, a longer one
    # is a 422 naming the field instead of PostgreSQL refusing the insert with a 500
    source: str = Field(min_length=1, max_length=SOURCE_MAX_CHARS)
    model: str | None = Field(default=None, max_length=MODEL_MAX_CHARS)
    n_ctx: int = Field(default=2048, ge=128, le=131072)

    @field_validator("source", "model")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        """After the length bounds (a 422 that counts characters), as `check_storable` says."""
        return None if value is None else check_storable(value)

    @model_validator(mode="after")
    def _one_spelling(self) -> BaseModelSpec:
        """A model file's source spelled one way: `package: smollm2…` or `/m/./smol.gguf` beside
        `package:smollm2…` and `/m/smol.gguf` were other keys for the same weights, each loaded
        again (1.1 GB a copy of the 1.5B) and never batched together. Lexical: nothing is looked up."""
        if self.kind in ("llamacpp", "vllm"):
            self.source = one_spelling(self.source)
        return self

    @property
    def key(self) -> str:
        """The batching key: two experts with equal keys are the same weights."""
        return f"{self.kind}:{self.source}" + (f"#{self.model}" if self.model else "")


def one_spelling(source: str) -> str:
    if source.startswith(PACKAGE_PREFIX):
        return PACKAGE_PREFIX + source[len(PACKAGE_PREFIX):].strip()
    return os.path.normpath(source) if source.strip() else source


class ExpertPlacement(Strict):
    """Where an expert runs: a worker of the deployment (`workers:` in the devices file, or this
    machine's `cpu`), and the device profile its latency and energy are predicted on.

    `worker` names the worker; unset, the placement planner picks one (personas over one base
    share it; what must stay resident fits). `device` names a profile of `experts/devices.yaml`;
    unset, the worker's own (or, for a replay expert off any named worker, H100 servers of its
    own, where its recorded model's replies are costed). Experts on one device (and `instance`,
    where a kind of device has several copies) run one after another on it.
    """

    worker: str | None = Field(default=None, min_length=1, max_length=64)
    device: str | None = Field(default=None, min_length=1, max_length=64)
    instance: str | None = Field(default=None, min_length=1, max_length=64)
    params_b: float | None = Field(default=None, gt=0, le=10_000,
                                   description="Billions of parameters per token; unset: read from the model's name.")


class ExpertSpec(Strict):
    """An expert is a base model plus an optional persona and its sampling parameters."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    base: BaseModelSpec
    system_prompt: str | None = Field(default=None, max_length=4000)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    placement: ExpertPlacement = Field(default_factory=ExpertPlacement)
    timeout_s: float | None = Field(default=None, gt=0, le=3600,
                                    description="How long one of its generations may take; unset: no limit.")

    def request(self, request_id: str, user_text: str, max_tokens: int | None = None) -> GenerationRequest:
        """A request that speaks to this expert: its persona first, then the user's text. A caller's
        `max_tokens` (the pool's limit for the task) caps the expert's own, never raises it: an
        expert registered to answer tersely does so everywhere, profiling included."""
        messages = [ChatMessage(role="system", content=self.system_prompt)] if self.system_prompt else []
        messages.append(ChatMessage(role="user", content=user_text))
        sampling = self.sampling
        if max_tokens is not None:
            sampling = sampling.model_copy(update={"max_tokens": min(max_tokens, sampling.max_tokens)})
        return GenerationRequest(request_id=request_id, messages=messages, sampling=sampling,
                                 timeout_s=self.timeout_s)
