"""What a query asked of its generations: OpenAI's `max_tokens`, `temperature` and `stop`.

They reach every generation of the query, the recruited experts' and the aggregator's:
`temperature` and `stop` replace the expert's own, and `max_tokens` lowers the pool's limit
(`generation.*_max_tokens`, which context checks and budget predictions rely on) but never
raises it.
"""

from __future__ import annotations

from typing import Any

from experts.types import GenerationRequest
from orchestrator.domain import Ask


def asked(request: GenerationRequest, ask: Ask) -> GenerationRequest:
    """The request with the query's own sampling asks applied."""
    update: dict[str, Any] = {}
    if ask.max_tokens is not None:
        update["max_tokens"] = min(ask.max_tokens, request.sampling.max_tokens)
    if ask.temperature is not None:
        update["temperature"] = ask.temperature
    if ask.stop:
        update["stop"] = list(ask.stop)
    if not update:
        return request
    return request.model_copy(update={"sampling": request.sampling.model_copy(update=update)})
