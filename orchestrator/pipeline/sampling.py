"""What a query asked of its generations: OpenAI's `max_tokens`, `temperature` and `stop`.

They reach every generation of the query, the recruited experts' and the aggregator's:
`temperature` and `stop` replace the expert's own, and `max_tokens` lowers the pool's limit
(`generation.*_max_tokens`, which context checks and budget predictions rely on) but never
raises it. The query's seed (its own, or the one drawn for it and stored with its decision)
seeds each generation's sample too, so two asks at a temperature above 0 sample differently and
the same seed samples the same again (a recovery too); an expert's own `sampling.seed` shifts it.
"""

from __future__ import annotations

from typing import Any

from experts.types import GenerationRequest
from orchestrator.domain import Ask

SEED_SPACE = 2**31  # the seeds every backend takes (llama.cpp's is 32-bit)
DRAW_SLOTS = 64  # one query's draws (k ≤ 8, each tried by stand-ins) stay below the next seed's


def sample_seed(expert_seed: int | None, query_seed: int, draw: int) -> int:
    """The seed of one generation: the expert's own, moved by the query's seed and the draw (an
    expert drawn twice answers twice, each its own sample)."""
    return ((expert_seed or 0) + query_seed * DRAW_SLOTS + draw) % SEED_SPACE


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
