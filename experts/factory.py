"""Builds the backend for a base-model spec; heavy imports stay lazy.

The mock backend is deliberately absent: tests inject it through the worker's factory, so a
user can never register a fake expert.
"""

from __future__ import annotations

from experts.backend import BackendError, ExpertBackend
from experts.options import BackendOptions
from experts.types import BaseModelSpec


def make_backend(spec: BaseModelSpec, options: BackendOptions | None = None) -> ExpertBackend:
    opts = options or BackendOptions()
    if spec.kind == "llamacpp":
        from experts.llamacpp import LlamaCppBackend

        return LlamaCppBackend(spec, n_threads=opts.llama_threads, models_dir=opts.models_dir)
    if spec.kind == "openai":
        from experts.openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(spec, api_key=opts.openai_api_key)
    if spec.kind == "vllm":
        from experts.vllm_backend import VLLMBackend

        return VLLMBackend(spec, options=opts)
    if spec.kind == "replay":
        from experts.replay import ReplayBackend

        return ReplayBackend.from_spec(spec, opts.replay_time_scale)
    raise BackendError(f"backend kind {spec.kind!r} is not available in this build")
