"""Counting a llama.cpp model's prompt tokens without loading its weights: its tokenizer alone
(a vocab-only load) and the chat template its GGUF carries, as the context check needs them."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experts.catalog import resolve_source


@functools.lru_cache(maxsize=8)
def _vocabulary(path: str) -> Any:
    """The model's tokenizer alone (llama.cpp reads no weights for it), to count prompt tokens."""
    import llama_cpp

    return llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)


_vocabulary_lock = threading.Lock()


def count_tokens(source: str, texts: Sequence[str], models_dir: Path | None = None) -> int:
    """Tokens the model's tokenizer makes of these texts (a chat template adds a few more)."""
    path = resolve_source(source, models_dir)
    with _vocabulary_lock:
        vocab = _vocabulary(str(path))
        return sum(len(vocab.tokenize(t.encode("utf-8"), add_bos=False, special=False)) for t in texts)


def count_prompt(source: str, system: str | None, text: str, models_dir: Path | None = None) -> int | None:
    """Tokens of the prompt as the model's own chat template lays out a system prompt (none: the
    template's default persona, which SmolLM2's and Qwen2.5's add) and a user turn; None for a
    model without a template. A fixed allowance beside the texts undercounted these by ~14."""
    path = str(resolve_source(source, models_dir))
    with _vocabulary_lock:
        vocab = _vocabulary(path)
        template = _formatter(path)
        if template is None:
            return None
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return len(vocab.tokenize(template(messages=messages).prompt.encode("utf-8"), add_bos=True, special=True))


@functools.lru_cache(maxsize=8)
def _formatter(path: str) -> Any:
    """The GGUF's chat template, as llama-cpp-python formats a chat with it (BOS is the tokenizer's)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = _vocabulary(path).metadata.get("tokenizer.chat_template")
    return Jinja2ChatFormatter(template=template, eos_token="", bos_token="") if template else None
