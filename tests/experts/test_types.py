"""An expert's own sampling limits hold in every request made for it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from experts.types import BaseModelSpec, ExpertSpec, Generation, SamplingParams, storable


def terse(max_tokens: int) -> ExpertSpec:
    return ExpertSpec(name="terse", base=BaseModelSpec(kind="mock", source="m1"),
                      sampling=SamplingParams(max_tokens=max_tokens, temperature=0.3))


def test_a_caller_s_limit_caps_the_expert_s_own_and_never_raises_it() -> None:
    assert terse(4).request("r", "2+2?", max_tokens=96).sampling.max_tokens == 4  # the expert's is lower
    assert terse(128).request("r", "2+2?", max_tokens=8).sampling.max_tokens == 8  # the task's is lower
    assert terse(4).request("r", "2+2?").sampling.max_tokens == 4
    assert terse(4).request("r", "2+2?", max_tokens=96).sampling.temperature == 0.3  # the rest is the expert's


@pytest.mark.parametrize("stop", [[""], ["Paris", ""], ["a", "b", "c", "d", "e"], ["x" * 257]])
def test_an_expert_s_stop_sequences_follow_the_api_s_rule(stop: list[str]) -> None:
    """An empty stop matched at once: llama.cpp answered "" as a success and vLLM refused the batch."""
    with pytest.raises(ValidationError, match="up to 4 non-empty sequences of at most 256 characters"):
        SamplingParams(stop=stop)


def test_stop_sequences_within_the_rule_are_kept() -> None:
    assert SamplingParams(stop=["\n", "Answer:", " (", "x" * 256]).stop == ["\n", "Answer:", " (", "x" * 256]
    assert SamplingParams().stop == []


def test_a_reply_is_stored_without_nul_or_lone_surrogates() -> None:
    """A remote server's JSON may hold "\\ud83d", half an emoji: no UTF-8 store takes it, and one
    reply holding it failed every query stored beside it."""
    assert storable("a\x00b \ud83d c\udc00") == "a\ufffdb \ufffd c\ufffd"
    assert storable("whole: \U0001f600, plain") == "whole: \U0001f600, plain"
    assert Generation(request_id="r", text="half \ud83d").text == "half \ufffd"
    assert Generation.failed("r", "bad \udc00").error == "bad \ufffd"
