"""LlamaCppBackend at an n_ctx llama.cpp rounds up (to a multiple of 256): prompts are still held
to the spec's window, and one that overflows it fails alone (the real SmolLM2-135M, marked slow)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from experts.llamacpp import LlamaCppBackend
from experts.streaming import collect
from tests.experts.test_llamacpp import SMOL, ask, loaded

WINDOW = 200  # llama.cpp holds 256 positions for it


@pytest.fixture(scope="module")
def smol_200() -> Iterator[LlamaCppBackend]:
    yield from loaded(SMOL, n_ctx=WINDOW)


def words(n: int) -> str:
    return " ".join(["one"] * n)  # SmolLM2's template and default persona add 30 tokens


@pytest.mark.slow
def test_a_prompt_over_the_spec_s_window_fails_alone_naming_it(smol_200: LlamaCppBackend) -> None:
    """llama-cpp-python held 200 tokens while llama.cpp had 256 positions: a 220-token prompt
    failed with numpy's broadcast error, a 280-token one named a window of 256."""
    over, far_over, fine = smol_200.generate([ask("over", words(190), max_tokens=4),
                                              ask("far", words(250), max_tokens=4),
                                              ask("fine", "What is the capital of France?", max_tokens=4)])
    streamed = collect(smol_200.stream(ask("streamed", words(190), max_tokens=4)))
    for reply, used in ((over, 220), (far_over, 280), (streamed, 220)):
        expected = f"{smol_200.base_model_key}: Requested tokens ({used}) exceed context window of {WINDOW}"
        assert (reply.error, reply.text) == (expected, ""), reply.error
    assert fine.error is None and fine.text and fine.completion_tokens == 4


@pytest.mark.slow
def test_a_reply_is_cut_at_the_spec_s_window_not_llama_cpp_s(smol_200: LlamaCppBackend) -> None:
    """A prompt that fits is answered in at most the tokens left of the window (200 - 190), as at
    any other n_ctx: llama.cpp's 256 let it run on past llama-cpp-python's buffer of 200."""
    reply = smol_200.generate([ask("tail", words(160), max_tokens=64, temperature=1.0, seed=1)])[0]
    assert (reply.error, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (None, 190, 10, "length")
