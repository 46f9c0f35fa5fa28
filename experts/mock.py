"""A deterministic in-process backend for fast tests of batching and scheduling.

Its answers are a pure function of the prompt, so tests can check which request got which
reply; real generation is covered by the llama.cpp and vLLM tests marked slow.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

from experts.types import Generation, GenerationRequest

Fault = Callable[[GenerationRequest], str | None]  # a request's error, or None: it is answered


class MockBackend:
    """`fault` makes chosen requests fail alone, as a real backend's per-request errors do;
    `delay_s` makes requests take that long (one figure, or one per request); beyond a request's
    timeout the request times out."""

    def __init__(self, base_model_key: str, memory: int = 100 * 2**20, answer: str | None = None,
                 fault: Fault | None = None, delay_s: float | Callable[[GenerationRequest], float] = 0.0):
        self.base_model_key = base_model_key
        self.loads = 0
        self.generate_calls = 0
        self._memory = memory
        self._answer = answer
        self._fault, self._delay_s = fault, delay_s
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
        if not self._loaded:
            raise RuntimeError(f"{self.base_model_key} generate() before load()")
        self.generate_calls += 1
        return [self._reply(r) for r in requests]

    def _reply(self, request: GenerationRequest) -> Generation:
        timeout = request.timeout_s
        delay = self._delay_s(request) if callable(self._delay_s) else self._delay_s
        if delay:
            time.sleep(delay if timeout is None else min(delay, timeout))
        if timeout is not None and delay > timeout:
            return Generation.failed(request.request_id, f"timed out after {timeout:g} s", timeout)
        if self._fault is not None and (error := self._fault(request)) is not None:
            return Generation.failed(request.request_id, error)
        prompt = "\n".join(m.content for m in request.messages)
        digest = hashlib.sha256(f"{self.base_model_key}|{prompt}".encode()).hexdigest()
        text = self._answer or f"Answer: {'ABCD'[int(digest, 16) % 4]} ({digest[:8]})"
        return Generation(
            request_id=request.request_id,
            text=text,
            prompt_tokens=len(prompt.split()),
            completion_tokens=len(text.split()),
        )
