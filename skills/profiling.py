"""Symbolic-MoE skill profiles: per-skill +1/-1 sums and the global competence γ.

P_i[s] = Σ over validation questions tagged with skill s of (+1 if expert i was right, else −1).
γ_i    = the expert's total profile score, shifted positive and square-normalised (T = 0.5),
         exactly as `normalize_to_probability` in the paper's recruit_agents.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class SkillProfile:
    expert: str
    scores: dict[str, float] = field(default_factory=dict)
    n_answered: int = 0
    n_correct: int = 0

    @property
    def total(self) -> float:
        return float(sum(self.scores.values()))

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_answered if self.n_answered else 0.0

    def add(self, skills: Sequence[str], correct: bool) -> None:
        """Count one graded validation answer towards every skill the question needs."""
        self.n_answered += 1
        self.n_correct += int(correct)
        for skill in skills:
            self.scores[skill] = self.scores.get(skill, 0.0) + (1.0 if correct else -1.0)


def build_profile(expert: str, graded: Iterable[tuple[Sequence[str], bool]]) -> SkillProfile:
    """Profile from (skills of the question, was the expert right) pairs."""
    profile = SkillProfile(expert)
    for skills, correct in graded:
        profile.add(skills, correct)
    return profile


def global_competence(totals: Mapping[str, float], temperature: float = 0.5) -> dict[str, float]:
    """γ: shift totals positive (x − min + 1 when any is negative), raise to 1/T, normalise."""
    if not totals:
        return {}
    low = min(totals.values())
    shifted = {k: (v - low + 1.0 if low < 0 else v) for k, v in totals.items()}
    scaled = {k: v ** (1.0 / temperature) for k, v in shifted.items()}
    norm = sum(scaled.values())
    if norm <= 0:  # every expert scored exactly zero: no evidence, so equal competence
        return {k: 1.0 / len(totals) for k in totals}
    return {k: v / norm for k, v in scaled.items()}
