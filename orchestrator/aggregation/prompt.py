"""The aggregator LLM's prompt.

Adapted from Symbolic-MoE's aggregator prompt (itself from Mixture-of-Agents), with the final
line asked in a fixed form so the answer can be graded and shown (`domain.final_answer`). A pool
whose experts cannot read other answers (replay) aggregates by `vote.vote_answer` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

AggregationMode = Literal["llm", "vote", "auto"]

AGGREGATION_INSTRUCTIONS = (
    "You have been provided with a set of responses from various expert models to the question "
    "below. Synthesize them into a single, high-quality answer. Critically evaluate the responses: "
    "some may be biased or incorrect. Do not simply copy one; give the answer you judge correct."
)


def aggregation_prompt(question: str, responses: Sequence[str]) -> str:
    numbered = "\n\n".join(f"Response {i}:\n{r.strip()}" for i, r in enumerate(responses, 1))
    return (
        f"{AGGREGATION_INSTRUCTIONS}\n\nQuestion:\n{question.strip()}\n\n{numbered}\n\n"
        "Give your final answer on the first line as 'Answer: <answer>', then one short sentence why."
    )
