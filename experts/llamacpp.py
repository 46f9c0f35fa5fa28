"""Runs a GGUF model on the CPU with llama-cpp-python (the embedded default backend).

One `llama_cpp.Llama` per base model; requests in a batch run one after another on it. That
is still the right shape on a CPU: every core already works on each token, and llama.cpp keeps
the KV cache of the previous prompt, so requests that share a prefix (one expert's persona, a
profiling run's instructions) only evaluate what differs.

Greedy answers must not depend on what ran before (profiles and replays compare them), and
plain llama-cpp-python prefix reuse breaks that: on Qwen2.5-0.5B Q4_K_M a cached prompt gave
first-token logits up to 0.33 away from a fresh evaluation, and different greedy text. So the
prompt cache is reused only in chunks cut where the prompt alone decides (`_align_prompt`),
which is bit-exact.

Weights are read into process memory (`use_mmap=False`), not mapped: a load then costs what
moving weights onto a device costs (SmolLM2 0.27 s, Qwen2.5-0.5B 1.2 s, Qwen2.5-1.5B 2.1 s here,
against 0.19, 0.8 and 1.6 s mapped), an unload really frees them, and the worker's memory budget
counts memory the process holds rather than page cache the kernel may or may not keep.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from experts.backend import BackendError, ModelSourceError
from experts.catalog import resolve_source
from experts.gguf import GGUFInfo, check_gguf
from experts.streaming import collect
from experts.types import BaseModelSpec, Generation, GenerationRequest, StreamEvent, finish_reason_of

# Resident memory beyond the weights and the KV cache: tokenizer tables and the touched part of
# the compute buffers. Fitted to RSS growth after load + generation at n_ctx=2048 without mmap
# (SmolLM2 164 MiB, Qwen2.5-0.5B 547 MiB, Qwen2.5-1.5B 1181 MiB; estimates 161, 547, 1175). The
# x86 backend repacks Q4_0/Q4_K tensors while reading them, into the memory that holds them: with
# mmap the mapped original stayed resident beside the copy (+596 MiB on Qwen2.5-1.5B), without it
# there is one copy.
_BASE_OVERHEAD = 8 * 2**20
_PER_VOCAB_ENTRY = 320
# Prompt tokens before the last message are evaluated in chunks ending at fixed absolute
# positions, 8, 16, then every ALIGN_TOKENS, and at the last message's start (`_chunk_ends`); the
# rest in one pass. Small chunks first, so a persona that differs after the template's first
# tokens still reuses them; 32 after, so a long prompt is batched well and a long shared persona
# is reused to within 32 tokens. Measured on Qwen2.5-0.5B, 2 cores, against plain
# llama-cpp-python reusing any prefix: 32-token chunks from the start cost +45% on 12 short
# questions (the template was evaluated again every time) and +16% on 300-word prompts; 8-token
# chunks +3% and +63%; fixed ends alone, with the last prompt token evaluated on its own, cost
# +23% on short questions (three passes where plain reuse makes one).
ALIGN_TOKENS = 32
_FIRST_ENDS = (8, 16)
# llama.cpp rounds a context up to a multiple of this (n_ctx 1000 holds 1024 positions), while
# llama-cpp-python sizes its token buffer by the n_ctx it is given: opened with the rounded one,
# both agree, and prompts are still held to the spec's n_ctx (`_open`).
CTX_PADDING = 256


def allocated_ctx(n_ctx: int) -> int:
    """The context, and KV cache, llama.cpp allocates for a spec's n_ctx."""
    return -(-n_ctx // CTX_PADDING) * CTX_PADDING


def default_threads() -> int:
    """All cores this process may use (llama-cpp-python's own default is half). On a CPU shared
    with other busy processes set fewer (`backends.llama_threads`): llama.cpp's OpenMP threads
    spin at barriers, and 2 threads on 2 oversubscribed cores ran 5x slower than 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LlamaCppBackend:
    """ExpertBackend over llama-cpp-python. `spec.source` is a GGUF path or `package:<name>`."""

    def __init__(self, spec: BaseModelSpec, n_threads: int | None = None, models_dir: Path | None = None):
        self.spec = spec
        self.models_dir = models_dir  # where packaged models are assembled (None: the default)
        self.base_model_key = spec.key
        self.loads = 0
        self.n_threads = n_threads or default_threads()
        self._llm: Any = None
        self._path: Path | None = None
        self._info: GGUFInfo | None = None
        # The protocol says one worker drives a backend; the lock turns a violation of that
        # into waiting instead of a crash inside native code.
        self._lock = threading.RLock()

    @property
    def is_loaded(self) -> bool:
        return self._llm is not None

    @property
    def llama(self) -> Any:
        """The loaded `llama_cpp.Llama` (None before load), for tokenising or inspection."""
        return self._llm

    def validate(self) -> None:
        """Find the file (assembling a packaged model once) and check its header; no weights."""
        self._path = resolve_source(self.spec.source, self.models_dir)
        self._info = check_gguf(self._path)

    def _ensure_validated(self) -> tuple[Path, GGUFInfo]:
        if self._path is None or self._info is None:
            self.validate()
        assert self._path is not None and self._info is not None
        return self._path, self._info

    def load(self) -> None:
        with self._lock:
            if self._llm is not None:
                return
            path, _ = self._ensure_validated()
            self._llm = self._open(path)
            self.loads += 1

    def _open(self, path: Path) -> Any:
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendError("llama-cpp-python is not installed: pip install llama-cpp-python") from exc
        try:
            # n_threads_batch too: llama-cpp-python gives prompt evaluation every core otherwise.
            llm = _aligned_llama_class(llama_cpp.Llama)(
                model_path=str(path), n_ctx=allocated_ctx(self.spec.n_ctx), n_threads=self.n_threads,
                n_threads_batch=self.n_threads, use_mmap=False, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelSourceError(f"llama.cpp could not load {path}: {exc}") from exc
        llm._n_ctx = self.spec.n_ctx  # what llama-cpp-python refuses prompts and caps max_tokens by
        return llm

    def unload(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
            if llm is None:
                return
            llm.close()  # frees the model and context now rather than whenever GC runs
            del llm
            gc.collect()

    def memory_bytes(self) -> int:
        """Weights (the file) + f16 KV cache for the context llama.cpp allocates + overhead, from
        the header alone."""
        _, info = self._ensure_validated()
        kv = info.kv_cache_bytes(allocated_ctx(self.spec.n_ctx)) or 0
        vocab = info.array_lengths.get("tokenizer.ggml.tokens", 0)
        overhead = _BASE_OVERHEAD + _PER_VOCAB_ENTRY * vocab
        return info.size_bytes + kv + overhead

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        with self._lock:
            if self._llm is None:
                raise BackendError(f"{self.base_model_key}: generate() before load()")
            return [self._one(self._llm, r) for r in requests]

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """The reply's text as llama.cpp samples it, then the whole reply: the same sampling as
        `generate`, so the same greedy text, and the same per-request errors and time limit.
        The model stays locked to this stream until it ends: iterate it to the end (or close it)."""
        with self._lock:
            if self._llm is None:
                raise BackendError(f"{self.base_model_key}: generate() before load()")
            yield from self._tokens(self._llm, request, time.perf_counter())

    def _one(self, llm: Any, request: GenerationRequest) -> Generation:
        """One request; a request that cannot be answered (its prompt does not fit n_ctx, its
        time ran out) is answered with its error, and the batch goes on."""
        started = time.perf_counter()
        if request.timeout_s is not None:  # streamed, so generation stops once the time is up
            return collect(self._tokens(llm, request, started))
        try:
            out = llm.create_chat_completion(**_arguments(request))
        except ValueError as exc:  # e.g. the prompt does not fit in n_ctx
            return self._refused(request, exc, started)
        return _to_generation(request.request_id, out, time.perf_counter() - started)

    def _refused(self, request: GenerationRequest, exc: ValueError, started: float) -> Generation:
        """The request's error. llama-cpp-python names the context llama.cpp allocated as the
        window a prompt overflowed; prompts are held to the spec's n_ctx, so that is named."""
        reason = re.sub(r"context window of \d+", f"context window of {self.spec.n_ctx}", str(exc))
        return Generation.failed(request.request_id, f"{self.base_model_key}: {reason}", time.perf_counter() - started)

    def _tokens(self, llm: Any, request: GenerationRequest, started: float) -> Iterator[StreamEvent]:
        """Each piece llama.cpp writes, then the reply; past the request's time limit generation
        stops (the stream is closed) and the reply is its timeout."""
        deadline = None if request.timeout_s is None else started + request.timeout_s
        pieces: list[str] = []
        stream, finish = None, None
        llm.deadline = deadline  # checked between the prompt's chunks too
        try:  # a prompt that does not fit n_ctx raises before any token, eagerly or at the first
            stream = llm.create_chat_completion(stream=True, **_arguments(request))
            for chunk in stream:
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason") or finish  # the last chunk's, with no text
                if piece := choice["delta"].get("content") or "":
                    pieces.append(piece)
                    yield piece
                if deadline is not None and time.perf_counter() > deadline:
                    yield Generation.timed_out(request, time.perf_counter() - started)
                    return
        except ValueError as exc:
            yield self._refused(request, exc, started)
            return
        except PastDeadline:
            yield Generation.timed_out(request, time.perf_counter() - started)
            return
        finally:
            llm.deadline = None
            if stream is not None:
                stream.close()  # stops llama.cpp generating (a timeout, or a caller that left)
        # Counted as generate()'s usage counts them: a text piece is not a token (a multi-byte
        # character takes several, llama-cpp-python may merge several into one piece).
        yield Generation(request_id=request.request_id, text="".join(pieces), prompt_tokens=llm.prompt_count,
                         completion_tokens=llm.completion_count(),
                         latency_s=time.perf_counter() - started, finish_reason=finish_reason_of(finish))


def _arguments(request: GenerationRequest) -> dict[str, Any]:
    """llama-cpp-python's arguments for a request's sampling."""
    s = request.sampling
    return {
        "messages": [m.model_dump() for m in request.messages],
        "temperature": s.temperature,
        "top_p": s.top_p,
        # OpenAI semantics, as the HTTP and vLLM backends sample: llama-cpp-python
        # would otherwise add top_k=40 and min_p=0.05 to every sampled request.
        "top_k": 0,
        "min_p": 0.0,
        "max_tokens": s.max_tokens,
        "seed": s.seed,
        "stop": s.stop or None,
    }


def _to_generation(request_id: str, out: dict[str, Any], latency_s: float) -> Generation:
    usage = out.get("usage") or {}
    return Generation(
        request_id=request_id,
        text=out["choices"][0]["message"].get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        latency_s=latency_s,
        finish_reason=finish_reason_of(out["choices"][0].get("finish_reason")),
    )


def _common_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    n = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        n += 1
    return n


def _content_start(llm: Any, tokens: Sequence[int], content: str) -> int:
    """Where the last message's text begins among the prompt's tokens (0 when it is not found):
    everything before it is the template, the persona and the earlier turns. Its first and last
    tokens are left out of the search, since they may have merged with what surrounds them."""
    whole = llm.tokenize(content.encode("utf-8"), add_bos=False, special=False) if content else []
    body = whole[1:-1] if len(whole) > 2 else whole[1:]
    if not body:
        return 0
    first = body[0]
    for i in range(len(tokens) - len(body), 0, -1):
        if tokens[i] == first and list(tokens[i : i + len(body)]) == body:
            return i - 1
    return 0


def _chunk_ends(n: int, anchor: int) -> tuple[int, ...]:
    """Where a prompt of n tokens is cut before its tail: the fixed ends (8, 16, 32, 64, …)
    below `last`, then `last` itself, the start of the tail that generate() evaluates in one
    pass. `last` is the last message's start (`anchor`), or, under a long last message, the
    fixed end at least 32 tokens before the prompt's end, so its shared head is reused too."""
    last = max(min(anchor, n - 1), _boundary_at_most(max(n - 1 - ALIGN_TOKENS, 0)), 0)
    ends, end = [], _next_boundary(0)
    while end < last:
        ends.append(end)
        end = _next_boundary(end)
    return (*ends, last) if last > 0 else ()


class PastDeadline(Exception):  # noqa: N818  # not an error: the request's time ran out
    """Raised between a prompt's chunks once its request's time is up (see `_align_prompt`)."""


def _align_prompt(llm: Any, tokens: list[int], anchor: int, deadline: float | None = None) -> None:
    """Put the KV cache in the state a fresh context would reach for this prompt.

    llama.cpp's numbers depend on how tokens are batched (a row computed in a batch of 37 is
    not bit-equal to the same row alone), and llama-cpp-python reuses whatever prefix is
    cached, so the batching, and with it a greedy answer, would depend on the previous request.
    Here the prompt is cut at ends that depend on the prompt alone (`_chunk_ends`): each chunk
    is evaluated in one pass, a cached chunk is reused only where it ended at the same place,
    and generate() evaluates the tail from the last end in one pass. The first logits are then
    a function of the prompt alone; the template and a persona shared with the previous request
    are not evaluated again, and a short question costs one pass, as with plain reuse.

    The request's `deadline` is checked before each chunk (PastDeadline): llama.cpp cannot be
    stopped inside an eval, so a timeout bounds prompt evaluation to within one chunk (32
    tokens) of the time, plus the tail generate() evaluates (under 64 tokens) before the first
    token, where the stream checks it again.
    """
    ends = _chunk_ends(len(tokens), anchor)
    cached = set(llm.aligned_ends)
    same = _common_prefix(llm.input_ids[: min(llm.n_tokens, max(cached, default=0))].tolist(), tokens)
    keep = max((e for e in ends if e in cached and e <= same), default=0)
    llm.n_tokens = keep  # eval() drops the KV cache beyond n_tokens
    llm.aligned_ends = ()  # until every chunk is in: an eval that fails leaves nothing to reuse
    for end in (e for e in ends if e > keep):
        if deadline is not None and time.perf_counter() > deadline:
            raise PastDeadline
        llm.eval(tokens[llm.n_tokens : end])
    llm.aligned_ends = ends


def _next_boundary(position: int) -> int:
    """The first fixed end (8, 16, 32, 64, 96, …) after `position`."""
    return next((e for e in _FIRST_ENDS if e > position), (position // ALIGN_TOKENS + 1) * ALIGN_TOKENS)


def _boundary_at_most(n: int) -> int:
    """The last fixed end (0, 8, 16, 32, 64, 96, …) at or below `n`."""
    if n >= ALIGN_TOKENS:
        return n // ALIGN_TOKENS * ALIGN_TOKENS
    return max((e for e in _FIRST_ENDS if e <= n), default=0)


@functools.cache
def _aligned_llama_class(base: type) -> type:
    """llama_cpp.Llama whose generate() aligns the prompt cache first (imported lazily).
    `content` is the last message's text of the chat completion being made (`_content_start`)."""

    class AlignedLlama(base):
        aligned_ends: tuple[int, ...] = ()
        content = ""
        deadline: float | None = None  # the streamed request's, while it runs (`_tokens`)
        # The last completion's prompt length and sampled tokens: a stream has no usage, so
        # these count it as llama-cpp-python's usage counts a completion that is not streamed.
        prompt_count = 0
        sampled: Sequence[int] = ()

        def create_chat_completion(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> Any:
            text = messages[-1].get("content") if messages else None
            self.content = text if isinstance(text, str) else ""
            return super().create_chat_completion(messages=messages, **kwargs)

        def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
            tokens = list(tokens)
            if kwargs.get("reset", True):
                _align_prompt(self, tokens, _content_start(self, tokens, self.content), self.deadline)
            sampled: list[int] = []  # filled as the tokens come
            self.prompt_count, self.sampled = len(tokens), sampled
            return _recorded(super().generate(tokens, *args, **kwargs), sampled)

        def completion_count(self) -> int:
            """Tokens sampled, less an end-of-generation token that ended the reply: llama-cpp-python
            stops there without counting it, while a stop string or max_tokens counts the last."""
            import llama_cpp

            eog = bool(self.sampled) and llama_cpp.llama_vocab_is_eog(self._model.vocab, self.sampled[-1])
            return len(self.sampled) - int(eog)

    return AlignedLlama


def _recorded(tokens: Iterator[int], sampled: list[int]) -> Iterator[int]:
    """generate()'s tokens, each noted in `sampled` as it is handed on. Values sent into the
    generator are not passed on: llama-cpp-python's completions only iterate it."""
    for token in tokens:
        sampled.append(token)
        yield token
