"""Aggregation: the aggregator LLM's prompt, or a weighted vote where no LLM aggregates.

The prompt is adapted from Symbolic-MoE's aggregator prompt (itself from Mixture-of-Agents),
with the final line asked in a fixed form so the answer can be graded and shown. A pool of
replay experts has no model that can read other answers, so it aggregates by `vote_answer`:
the recruited experts' option letters, each weighted by the router's weight for that expert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from orchestrator.routing.recruit import ExpertScore
from orchestrator.routing.voting import AnswerReliability, VoteResult, vote_by_scores
from skills.grading import LETTERS, extract_choice

AggregationMode = Literal["llm", "vote"]

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


def vote_answer(
    answers: Sequence[tuple[str, str]], scores: Sequence[ExpertScore], reliability: AnswerReliability | None = None
) -> VoteResult:
    """The weighted vote over (expert, reply text) pairs: each reply's option letter, if any."""
    letters = [(expert, extract_choice(text, len(LETTERS))) for expert, text in answers]
    return vote_by_scores(letters, scores, reliability)
