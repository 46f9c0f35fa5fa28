"""Builds the backend for a base-model spec; heavy imports stay lazy.

The mock backend is deliberately absent: tests inject it through the worker's factory, so a
user can never register a fake expert.
"""

from __future__ import annotations

from experts.backend import BackendError, ExpertBackend
from experts.types import BaseModelSpec


def make_backend(spec: BaseModelSpec) -> ExpertBackend:
    if spec.kind == "llamacpp":
        from experts.llamacpp import LlamaCppBackend

        return LlamaCppBackend(spec)
    if spec.kind == "openai":
        from experts.openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(spec)
    if spec.kind == "vllm":
        from experts.vllm_backend import VLLMBackend

        return VLLMBackend(spec)
    if spec.kind == "replay":
        from experts.replay import ReplayBackend

        return ReplayBackend.from_spec(spec)
    raise BackendError(f"backend kind {spec.kind!r} is not available in this build")
