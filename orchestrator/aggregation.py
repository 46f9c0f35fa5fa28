"""The aggregation prompt: the aggregator reads the experts' answers and writes one answer.

Adapted from Symbolic-MoE's aggregator prompt (itself from Mixture-of-Agents), with the final
line asked in a fixed form so the answer can be graded and shown.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def final_answer(text: str) -> str:
    """The answer line of a reply when it has one, else the whole reply trimmed."""
    for line in text.strip().splitlines():
        if line.strip().lower().startswith("answer:"):
            return line.strip()[len("answer:"):].strip() or text.strip()
    return text.strip()
