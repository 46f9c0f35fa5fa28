"""The window bounds a batch by the predicted work of its queries (prompt and output tokens)."""

from __future__ import annotations

from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.services.queries import predicted_tokens


def test_a_query_weighs_its_prompt_and_output_once_per_answering_expert(container: SkillRoute) -> None:
    short, long = container.queries.admission.admit([
        Ask(text="What is 2 + 2?", k=1, max_tokens=16),
        Ask(text="Read all of this first. " * 400 + "What is 2 + 2?", k=2)])
    most = container.pipeline.limits.expert_max_tokens
    assert predicted_tokens(short, most) == (5 * 4 / 3 + 16) * 1
    assert predicted_tokens(long, most) > 2 * 2000  # two experts, each reading ~2,000 prompt tokens
    window = container.queries.window
    assert window.max_work == container.settings.batching.max_batch_tokens
    assert window.weigh is not None and window.weigh(long) == predicted_tokens(long, most)
    container.queries.run([short, long])  # admitted queries are answered, not left pending
