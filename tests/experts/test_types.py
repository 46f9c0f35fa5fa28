"""An expert's own sampling limits hold in every request made for it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from experts.types import BaseModelSpec, ExpertSpec, Generation, SamplingParams, check_storable, storable


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


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "half \udc00"])
def test_an_expert_s_stops_and_model_source_refuse_nul_and_lone_surrogates(text: str) -> None:
    """Stored as given, with no reply's `storable` in between: a stop holding a lone surrogate was
    stored, then every GET /v1/experts failed to encode it (a 500 for every client), and a NUL in
    the model's source or name failed PostgreSQL's insert (a 500, the model left loaded)."""
    makers = {("stop", 0): lambda: SamplingParams(stop=["ok", text][1:]),
              ("source",): lambda: BaseModelSpec(kind="mock", source=text),
              ("model",): lambda: BaseModelSpec(kind="mock", source="m1", model=text)}
    for loc, make in makers.items():
        with pytest.raises(ValidationError) as caught:
            make()
        assert [e["loc"] for e in caught.value.errors()] == [loc], (loc, caught.value)
    with pytest.raises(ValueError, match="NUL|lone surrogate"):
        check_storable(text)
    assert check_storable("plain, \U0001f600 whole") == "plain, \U0001f600 whole"


def test_one_model_file_spelled_two_ways_is_one_key() -> None:
    """`package: smollm2…` and `/m/./smol.gguf` were keys of their own: the same weights loaded
    once per spelling, and never batched together."""
    def key(kind: str, source: str) -> str:
        return BaseModelSpec(kind=kind, source=source).key  # type: ignore[arg-type]

    assert key("llamacpp", "package: smollm2-135m-instruct") == key("llamacpp", "package:smollm2-135m-instruct")
    assert key("llamacpp", "/m/./a/../smol.gguf") == key("llamacpp", "/m/smol.gguf")
    assert key("vllm", "/hf/qwen/") == key("vllm", "/hf/qwen")
    assert key("openai", "http://h/./v1") == "openai:http://h/./v1"  # a URL is the server's to read
