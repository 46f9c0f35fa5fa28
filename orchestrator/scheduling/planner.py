"""Group a batch's generation by base model so every base model is loaded at most once.

Order matters for swaps: models already resident run first (no load), then the rest, and the
model the next phase needs (the aggregator's) runs last so it is still resident afterwards.
Within a group, requests keep their submission order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from experts.types import BaseModelSpec, GenerationRequest


@dataclass(frozen=True)
class Job:
    """One generation for one expert; `job_id` is unique within the batch."""

    job_id: str
    base: BaseModelSpec
    request: GenerationRequest


@dataclass
class Stage:
    base: BaseModelSpec
    jobs: list[Job] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.base.key


def plan_stages(jobs: Sequence[Job], resident: Collection[str] = (), keep_last: str | None = None) -> list[Stage]:
    """One stage per base model: resident first, then the others, `keep_last` at the end."""
    stages: dict[str, Stage] = {}
    for job in jobs:
        stages.setdefault(job.base.key, Stage(job.base)).jobs.append(job)
    return sorted(stages.values(), key=lambda s: _rank(s.key, resident, keep_last))


def _rank(key: str, resident: Collection[str], keep_last: str | None) -> tuple[int, int]:
    if key == keep_last:
        return (2, 0)
    return (0 if key in resident else 1, 0)


def loads_floor(jobs: Sequence[Job], resident: Collection[str]) -> int:
    """The fewest loads any schedule can do: needed base models not already resident."""
    return len({j.base.key for j in jobs} - set(resident))
