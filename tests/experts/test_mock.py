from __future__ import annotations

import pytest

from experts.backend import BackendError, ExpertBackend
from experts.factory import make_backend
from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertSpec


def test_mock_follows_the_protocol() -> None:
    b = MockBackend(BaseModelSpec(kind="mock", source="m1").key)
    assert isinstance(b, ExpertBackend)
    assert b.base_model_key == "mock:m1"


def test_factory_refuses_mock_specs() -> None:
    """Tests inject mocks through the worker's factory; a user can never register one."""
    with pytest.raises(BackendError, match="'mock' is not available"):
        make_backend(BaseModelSpec(kind="mock", source="m1"))


def test_loads_counted_once_until_unloaded() -> None:
    b = MockBackend("mock:a")
    b.load()
    b.load()
    assert (b.is_loaded, b.loads) == (True, 1)
    b.unload()
    b.load()
    assert b.loads == 2


def test_generate_needs_load() -> None:
    with pytest.raises(RuntimeError, match="before load"):
        MockBackend("mock:a").generate([])


def test_answers_are_a_function_of_model_and_prompt() -> None:
    expert = ExpertSpec(name="e1", base=BaseModelSpec(kind="mock", source="a"), system_prompt="You are a tutor.")
    a, b = MockBackend("mock:a"), MockBackend("mock:b")
    a.load()
    b.load()
    batch = [expert.request("q1", "2+2?"), expert.request("q2", "3+3?"), expert.request("q3", "2+2?")]
    first, again, other = a.generate(batch), a.generate(batch), b.generate(batch)
    assert [g.request_id for g in first] == ["q1", "q2", "q3"]
    assert first == again and first[0].text == first[2].text
    assert [g.text for g in first] != [g.text for g in other]
    assert a.generate_calls == 2


def test_fixed_answer_and_memory() -> None:
    b = MockBackend("mock:a", memory=123, answer="Answer: B")
    b.load()
    request = ExpertSpec(name="e", base=BaseModelSpec(kind="mock", source="a")).request("x", "q")
    assert b.generate([request])[0].text == "Answer: B"
    assert b.memory_bytes() == 123


def test_finish_reason_is_length_whenever_the_reply_used_every_token_allowed() -> None:
    """"length" where the reply used all its max_tokens, even one that would have ended right
    there, as llama.cpp, vLLM and OpenAI report it; "stop" where it ended (on its own or at a
    stop string) with tokens to spare."""
    b = MockBackend("mock:a", answer="Answer: B (why)")  # three words
    b.load()
    expert = ExpertSpec(name="e", base=BaseModelSpec(kind="mock", source="a"))
    asked = {"whole": {}, "at the cap": {"max_tokens": 3}, "cut": {"max_tokens": 2},
             "stopped": {"max_tokens": 3, "stop": [" ("]}, "stopped at the cap": {"max_tokens": 2, "stop": [" ("]}}
    requests = [expert.request(name, "q").model_copy(update={"sampling": expert.sampling.model_copy(update=s)})
                for name, s in asked.items()]
    replies = {g.request_id: (g.text, g.finish_reason) for g in b.generate(requests)}
    assert replies == {"whole": ("Answer: B (why)", "stop"), "at the cap": ("Answer: B (why)", "length"),
                       "cut": ("Answer: B ", "length"), "stopped": ("Answer: B", "stop"),
                       "stopped at the cap": ("Answer: B", "length")}
    streamed = [next(e for e in b.stream(r) if not isinstance(e, str)) for r in requests]
    assert [(g.text, g.finish_reason) for g in streamed] == list(replies.values())
