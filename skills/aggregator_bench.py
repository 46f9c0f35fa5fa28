"""Symbolic-MoE's aggregator choice: the synthetic tasks and the pick.

Every candidate aggregator is given tasks built from profiling: a question, one reasoning chain
that answered it correctly and two that did not, shuffled. A good aggregator must recognise the
right chain among wrong ones, which is exactly the job it does at inference; the candidate that
synthesises the gold answer most often is chosen.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from skills.datasets import LabelledQuestion
from skills.grading import grade

N_WRONG = 2


@dataclass
class SyntheticTask:
    question: LabelledQuestion
    responses: list[str]
    correct_index: int


def build_synthetic_tasks(
    questions: Sequence[LabelledQuestion],
    chains: Mapping[str, Sequence[tuple[str, bool]]],
    n_tasks: int,
    seed: int = 0,
) -> list[SyntheticTask]:
    """Up to `n_tasks` tasks, one per question that has ≥ 1 correct and ≥ 2 wrong chains.

    Questions are visited in a seeded shuffle, so a fixed seed gives the same tasks and a small
    `n_tasks` still spreads over subjects rather than taking the first subject in the list.
    """
    rng = random.Random(seed)
    order = list(questions)
    rng.shuffle(order)
    tasks: list[SyntheticTask] = []
    for q in order:
        if len(tasks) >= n_tasks:
            break
        task = _task_for(q, chains.get(q.id, ()), rng)
        if task is not None:
            tasks.append(task)
    return tasks


def _task_for(
    q: LabelledQuestion, chains: Sequence[tuple[str, bool]], rng: random.Random
) -> SyntheticTask | None:
    right = [text for text, ok in chains if ok]
    wrong = [text for text, ok in chains if not ok]
    if not right or len(wrong) < N_WRONG:
        return None
    picked = [rng.choice(right), *rng.sample(wrong, N_WRONG)]
    order = list(range(len(picked)))
    rng.shuffle(order)
    return SyntheticTask(q, [picked[i] for i in order], order.index(0))


def synthetic_accuracy(tasks: Sequence[SyntheticTask], outputs: Sequence[str]) -> float:
    """Share of tasks whose aggregator output (aligned with `tasks`) has the gold answer."""
    if len(tasks) != len(outputs):
        raise ValueError(f"{len(tasks)} tasks but {len(outputs)} outputs")
    if not tasks:
        return 0.0
    hits = sum(
        grade(out, t.question.answer, t.question.kind, max(len(t.question.options), 1))
        for t, out in zip(tasks, outputs, strict=True)
    )
    return hits / len(tasks)


def pick_aggregator(accuracy: Mapping[str, float], competence: Mapping[str, float]) -> str:
    """The most accurate synthesiser; ties go to higher global competence, then to the name."""
    if not accuracy:
        raise ValueError("no aggregator candidates")
    return min(accuracy, key=lambda n: (-accuracy[n], -competence.get(n, 0.0), n))
