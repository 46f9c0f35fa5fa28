"""A deterministic in-process backend for fast tests of batching, scheduling and streaming.

Its answers are a pure function of the prompt (and, when it samples, of the seed), so tests can
check which request got which reply; real generation is covered by the llama.cpp and vLLM tests
marked slow. Like a real model it writes word by word: `max_tokens` cuts the reply (one word a
token), a stop string ends it, and `stream` hands each word on as it is written.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from experts.streaming import collect, word_pieces
from experts.types import FinishReason, Generation, GenerationRequest, StreamEvent

Fault = Callable[[GenerationRequest], str | None]  # a request's error, or None: it is answered
Gate = Callable[[GenerationRequest, int], None]  # called before word i is written; may block
RECENT_REQUESTS = 256  # the requests a test can read back (`requests`), newest last


class MockBackend:
    """`fault` makes chosen requests fail alone, as a real backend's per-request errors do;
    `delay_s` makes requests take that long (one figure, or one per request); beyond a request's
    timeout the request times out. `token_delay_s` is the pace of each word, and `gate` lets a
    test hold a generation before a given word until it has seen what came before."""

    def __init__(self, base_model_key: str, memory: int = 100 * 2**20, answer: str | None = None,
                 fault: Fault | None = None, delay_s: float | Callable[[GenerationRequest], float] = 0.0,
                 token_delay_s: float = 0.0, gate: Gate | None = None):
        self.base_model_key = base_model_key
        self.loads = 0
        self.generate_calls = 0
        self.stream_calls = 0
        self.requests: deque[GenerationRequest] = deque(maxlen=RECENT_REQUESTS)
        self._memory = memory
        self._answer = answer
        self._fault, self._delay_s = fault, delay_s
        self._token_delay_s, self._gate = token_delay_s, gate
        self._loaded = False

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        if not self._loaded:
            self.loads += 1
            self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    def memory_bytes(self) -> int:
        return self._memory

    def validate(self) -> None:
        return None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self._check_loaded()
        self.generate_calls += 1
        return [collect(self._write(r)) for r in requests]

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        self._check_loaded()
        self.stream_calls += 1
        return self._write(request)

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError(f"{self.base_model_key} generate() before load()")

    def _write(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        self.requests.append(request)
        timeout = request.timeout_s
        delay = self._delay_s(request) if callable(self._delay_s) else self._delay_s
        if delay:
            time.sleep(delay if timeout is None else min(delay, timeout))
        if timeout is not None and delay > timeout:
            yield Generation.timed_out(request, timeout)
            return
        if self._fault is not None and (error := self._fault(request)) is not None:
            yield Generation.failed(request.request_id, error)
            return
        words, finish = self._words(request)
        for i, word in enumerate(words):
            if self._gate is not None:
                self._gate(request, i)
            if self._token_delay_s:
                time.sleep(self._token_delay_s)  # the simulated pace of generation
            yield word
        prompt = "\n".join(m.content for m in request.messages)
        yield Generation(request_id=request.request_id, text="".join(words), prompt_tokens=len(prompt.split()),
                         completion_tokens=len(words), latency_s=self._token_delay_s * len(words),
                         finish_reason=finish)

    def _words(self, request: GenerationRequest) -> tuple[list[str], FinishReason]:
        """The reply's words: the answer cut at the first stop string, at most max_tokens words;
        "length" whenever they are max_tokens words, as llama.cpp, vLLM and OpenAI report a reply
        that used every token it was allowed (a model ending exactly there needed one more, its
        end-of-sequence or stop string's token, which the limit left ungenerated)."""
        s = request.sampling
        prompt = "\n".join(m.content for m in request.messages)
        sampled = f"|{s.seed}|{s.temperature}" if s.temperature > 0 else ""  # greedy ignores the seed
        digest = hashlib.sha256(f"{self.base_model_key}|{prompt}{sampled}".encode()).hexdigest()
        text = self._answer or f"Answer: {'ABCD'[int(digest, 16) % 4]} ({digest[:8]})"
        for stop in s.stop:
            text = text.split(stop, 1)[0] if stop else text
        words = word_pieces(text)
        return words[:s.max_tokens], "length" if len(words) >= s.max_tokens else "stop"
