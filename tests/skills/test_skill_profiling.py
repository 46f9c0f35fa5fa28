"""The paper's formulas on numbers small enough to check by hand."""

from __future__ import annotations

import pytest

from skills.profiling import build_profile, global_competence


def test_profile_sums_plus_one_minus_one_per_skill() -> None:
    graded = [(["algebra", "logic"], True), (["algebra"], False), (["algebra"], True)]
    profile = build_profile("m1", graded)
    assert profile.scores == {"algebra": 1.0, "logic": 1.0}  # +1 −1 +1, and +1
    assert profile.total == 2.0
    assert (profile.n_answered, profile.n_correct) == (3, 2)
    assert profile.accuracy == pytest.approx(2 / 3)


def test_competence_shifts_negative_totals_then_squares() -> None:
    # min −1 → shift x − (−1) + 1: {5, 1, 3}; T = 0.5 squares: {25, 1, 9}; sum 35.
    gamma = global_competence({"a": 3, "b": -1, "c": 1})
    assert gamma == pytest.approx({"a": 25 / 35, "b": 1 / 35, "c": 9 / 35})


def test_competence_without_negatives_is_not_shifted() -> None:
    # {2, 1} → {4, 1} / 5
    assert global_competence({"a": 2, "b": 1}) == pytest.approx({"a": 0.8, "b": 0.2})


def test_competence_edge_cases() -> None:
    assert global_competence({}) == {}
    assert global_competence({"a": 0, "b": 0}) == {"a": 0.5, "b": 0.5}
    # T = 1 keeps the shifted totals linear: {5, 1, 3} / 9
    assert global_competence({"a": 3, "b": -1, "c": 1}, temperature=1.0) == pytest.approx(
        {"a": 5 / 9, "b": 1 / 9, "c": 3 / 9}
    )
