"""The planner's token count: a bound on what real tokenizers make of a text in any script."""

from __future__ import annotations

import pytest

from orchestrator.budgets.planner import text_tokens

TEXTS = {
    "english": "Which of the following best explains why the sky appears blue on a clear day? " * 8,
    "options": "Compute 22 / 2 + 9.\nA. 24\nB. 23\nC. 21\nD. 22\nE. 10\nF. 25\nG. 2\nH. 20\nI. 19\nJ. 11",
    "complex": "(i + 1)(5 – 5i)(5 + 5i) =\nA. 50 – 50i\nB. 75 - 75i\nC. 50 + 50i\nD. 25 + 25i",
    "code": "def f(x):\n    return [i**2 for i in range(x) if i % 3 == 0]\n" * 10,
    "chinese": "下列哪一项最能解释为什么晴天时天空呈现蓝色？请给出理由。" * 20,
    "emoji": "🙂🚀🌍🎉🐍🔥" * 40,
    "russian": "Какой из следующих вариантов лучше всего объясняет, почему небо голубое? " * 8,
}


def test_words_letters_digits_symbols_and_bytes_past_ascii_each_count() -> None:
    assert text_tokens("") == 0
    assert text_tokens("abcdef") == 1 + 2  # a word, and one more every 4 letters
    assert text_tokens("A. 24") == 1 + 1 + 1 + 1 + 2  # the word, its letter, ".", " " before a digit, 2 digits
    assert text_tokens("a\nB b") == (1 + 1) + 1 + (1 + 1)  # a newline counts before a word too
    assert text_tokens("天空") == 6 and text_tokens("🙂") == 4 and text_tokens("é") == 2


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TEXTS))
def test_the_count_bounds_real_tokenizers(script: str) -> None:
    """At 3 characters a token, a Chinese query's plan said 396 tokens where SmolLM2 made 2,310,
    and a question with ten numeric options 26 where both made 70."""
    from experts.llamacpp_tokens import count_tokens

    for source in ("package:smollm2-135m-instruct", "package:qwen2.5-coder-0.5b-instruct"):
        real = count_tokens(source, [TEXTS[script]])
        assert real <= text_tokens(TEXTS[script]), (source, real)
