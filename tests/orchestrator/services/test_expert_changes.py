"""A change to an expert: the spec it makes, only the keys given, and the status it leaves."""

from __future__ import annotations

import pytest

from experts.types import BaseModelSpec, ExpertPlacement, ExpertSpec
from orchestrator.services.errors import Unprocessable
from orchestrator.services.expert_changes import merged, next_status


@pytest.mark.parametrize(("current", "profiled", "enabled", "persona", "expected"), [
    ("ready", True, None, False, ("ready", False)), ("ready", True, None, True, ("profiling", True)),
    ("ready", True, False, False, ("disabled", False)), ("ready", True, False, True, ("disabled", True)),
    ("disabled", True, True, False, ("ready", False)), ("disabled", False, True, False, ("profiling", True)),
    ("disabled", True, None, True, ("disabled", True)), ("failed", False, None, True, ("profiling", True)),
    ("profiling", False, True, False, ("profiling", False)),
    ("failed", False, True, False, ("profiling", True)), ("failed", True, True, False, ("profiling", True)),
])
def test_next_status(current: str, profiled: bool, enabled: bool | None, persona: bool,
                     expected: tuple[str, bool]) -> None:
    assert next_status(current, profiled, enabled, persona) == expected


def test_merged_changes_only_the_keys_given_and_names_what_is_wrong() -> None:
    old = ExpertSpec(name="a", base=BaseModelSpec(kind="mock", source="m1"), system_prompt="p",
                     placement=ExpertPlacement(device="h100-server", params_b=7.0))
    new = merged(old, {"sampling": {"top_p": 0.5}, "placement": {"device": None}})
    assert new.sampling.top_p == 0.5 and new.sampling.max_tokens == old.sampling.max_tokens
    assert new.placement == ExpertPlacement(params_b=7.0) and new.system_prompt == "p"
    with pytest.raises(Unprocessable, match="cannot change base, name"):
        merged(old, {"name": "b", "base": {}})
    with pytest.raises(Unprocessable, match="sampling.temperature"):
        merged(old, {"sampling": {"temperature": 7}})
