"""A deterministic in-process backend for fast tests of batching and scheduling.

Its answers are a pure function of the prompt, so tests can check which request got which
reply; real generation is covered by the llama.cpp and vLLM tests marked slow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from experts.types import Generation, GenerationRequest


class MockBackend:
    def __init__(self, base_model_key: str, memory: int = 100 * 2**20, answer: str | None = None):
        self.base_model_key = base_model_key
        self.loads = 0
        self.generate_calls = 0
        self._memory = memory
        self._answer = answer
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
        prompt = "\n".join(m.content for m in request.messages)
        digest = hashlib.sha256(f"{self.base_model_key}|{prompt}".encode()).hexdigest()
        text = self._answer or f"Answer: {'ABCD'[int(digest, 16) % 4]} ({digest[:8]})"
        return Generation(
            request_id=request.request_id,
            text=text,
            prompt_tokens=len(prompt.split()),
            completion_tokens=len(text.split()),
        )
