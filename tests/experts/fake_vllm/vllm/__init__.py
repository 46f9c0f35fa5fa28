"""A stand-in for vLLM with the slice the worker uses, to run experts/vllm_worker.py's protocol
in the fast suite (tests/experts/test_vllm_worker.py). Every LLM built is counted in a file the
test names, so a test can tell a new engine from a new process.

Tokens are words; the chat template adds one per message plus one for the generation prompt.
Like vLLM, chat() checks every prompt before running any and refuses the whole call for one
longer than max_model_len, with vLLM's own `VLLMValidationError` (no ValueError), as
SamplingParams refuses an empty stop string. The engine counts the word `<wide>` as 1000 tokens where its
tokenizer counts one: a stand-in for vLLM refusing a prompt the worker's own count let by.
The chat template, like SmolLM2's and Llama's, raises jinja2's TemplateError for two turns of one
role in a row; the engine's renderer also raises it for the word `<jinja>` (a template vLLM renders
differently from the tokenizer). `<die>` kills the engine core: that call and every later one
raise EngineDeadError, as vLLM's LLM does once its engine-core process is gone."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from vllm.exceptions import VLLMValidationError

__version__ = "0.0-fake"
_KEPT: list[bytes] = []  # what each engine leaves behind, as vLLM's engines do (FAKE_VLLM_LEAK_MB)


class TemplateError(Exception):
    """jinja2.TemplateError's name: the worker matches it by name, as vLLM does, not by import."""


class EngineDeadError(Exception):
    """vllm.v1.engine.exceptions.EngineDeadError's name, matched by the worker the same way."""


class SamplingParams:
    def __init__(self, max_tokens: int = 16, stop: list[str] | None = None, **_: Any) -> None:
        if stop and "" in stop:  # vLLM 0.32's own check, raised as its own error
            raise VLLMValidationError("stop cannot contain an empty string.")
        self.max_tokens = max_tokens


class LLM:
    def __init__(self, model: str, dtype: str = "auto", **kwargs: Any) -> None:
        if model.endswith("broken"):
            raise ValueError(f"cannot load {model}")
        with open(os.environ["FAKE_VLLM_LOG"], "a") as log:
            log.write(f"{os.getpid()} {model} {dtype} {sorted(kwargs)}\n")
        self.model = model
        self.max_model_len = int(kwargs.get("max_model_len") or 2048)
        _KEPT.append(b"\x01" * (int(os.environ.get("FAKE_VLLM_LEAK_MB", "0")) * 2**20))  # touched: resident
        self.dead = False
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(
            dtype=f"torch.{dtype}", max_model_len=self.max_model_len))

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def chat(self, conversations: list[list[dict[str, str]]], params: list[SamplingParams], use_tqdm: bool) -> Any:
        self.dead = self.dead or any("<die>" in _words(c) for c in conversations)
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue. See stack trace (above) for the root cause.")
        for conversation in conversations:
            if "<jinja>" in _words(conversation):
                raise TemplateError("the engine's renderer cannot render this conversation")
            n = len(_prompt_ids(conversation)) + 999 * _words(conversation).count("<wide>")
            if n > self.max_model_len:
                raise VLLMValidationError(f"The decoder prompt (length {n}) is longer than the maximum model length "
                                 f"of {self.max_model_len}. Make sure that `max_model_len` is no smaller ...")
        pairs = zip(conversations, params, strict=True)
        return [_result(self.model, c[-1]["content"], p.max_tokens) for c, p in pairs]

    def sleep(self, level: int = 1) -> None:
        raise RuntimeError("this platform cannot sleep")

    def wake_up(self) -> None:
        raise RuntimeError("this platform cannot sleep")


class Tokenizer:
    def apply_chat_template(self, conversation: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool,
                            return_dict: bool = True) -> list[int]:
        assert tokenize and add_generation_prompt and not return_dict, "the worker wants the prompt's ids"
        return _prompt_ids(conversation)


def _words(conversation: list[dict[str, str]]) -> list[str]:
    return [w for m in conversation for w in m["content"].split()]


def _prompt_ids(conversation: list[dict[str, str]]) -> list[int]:
    roles = [m["role"] for m in conversation]
    if any(a == b for a, b in zip(roles, roles[1:], strict=False)):
        raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")
    return list(range(len(_words(conversation)) + len(conversation) + 1))


def _result(model: str, prompt: str, max_tokens: int) -> Any:
    whole = f"{os.path.basename(model)} says {prompt}".split()
    words, finish = whole[:max_tokens], "length" if len(whole) > max_tokens else "stop"
    completion = SimpleNamespace(text=" ".join(words), token_ids=list(range(len(words))), finish_reason=finish)
    return SimpleNamespace(outputs=[completion], prompt_token_ids=list(range(len(prompt.split()))))
