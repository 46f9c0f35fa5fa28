"""Counting a vLLM model's prompt tokens from its HF folder's tokenizer alone (no engine), with
its chat template, as the context check needs them (`traits.prompt_tokens`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from experts.options import BackendOptions
from experts.vllm_backend import resolve_folder


@cache
def _tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def count_tokens(source: str, texts: Sequence[str], options: BackendOptions | None = None) -> int:
    """Tokens the model's own tokenizer (from its HF folder) makes of these texts."""
    tokenizer = _tokenizer(str(resolve_folder(source, options)))
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def count_prompt(source: str, system: str | None, text: str, options: BackendOptions | None = None) -> int | None:
    """Tokens of the prompt as the model's chat template lays out a system prompt (none: the
    template's default persona) and a user turn, as the worker counts it before generating
    (`vllm_worker._too_long`); None for a tokenizer without a template. A fixed allowance beside
    the texts undercounted SmolLM2's by 7 (its default persona)."""
    tokenizer = _tokenizer(str(resolve_folder(source, options)))
    if not tokenizer.chat_template:
        return None
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    # return_dict=False: transformers 5 returns a BatchEncoding by default
    return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))
