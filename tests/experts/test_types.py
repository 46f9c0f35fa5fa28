"""An expert's own sampling limits hold in every request made for it."""

from __future__ import annotations

from experts.types import BaseModelSpec, ExpertSpec, SamplingParams


def terse(max_tokens: int) -> ExpertSpec:
    return ExpertSpec(name="terse", base=BaseModelSpec(kind="mock", source="m1"),
                      sampling=SamplingParams(max_tokens=max_tokens, temperature=0.3))


def test_a_caller_s_limit_caps_the_expert_s_own_and_never_raises_it() -> None:
    assert terse(4).request("r", "2+2?", max_tokens=96).sampling.max_tokens == 4  # the expert's is lower
    assert terse(128).request("r", "2+2?", max_tokens=8).sampling.max_tokens == 8  # the task's is lower
    assert terse(4).request("r", "2+2?").sampling.max_tokens == 4
    assert terse(4).request("r", "2+2?", max_tokens=96).sampling.temperature == 0.3  # the rest is the expert's
