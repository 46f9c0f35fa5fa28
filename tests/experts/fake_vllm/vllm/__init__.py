"""A stand-in for vLLM with the slice the worker uses, to run experts/vllm_worker.py's protocol
in the fast suite (tests/experts/test_vllm_worker.py). Every LLM built is counted in a file the
test names, so a test can tell a new engine from a new process."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

__version__ = "0.0-fake"
_KEPT: list[bytes] = []  # what each engine leaves behind, as vLLM's engines do (FAKE_VLLM_LEAK_MB)


class SamplingParams:
    def __init__(self, max_tokens: int = 16, **_: Any) -> None:
        self.max_tokens = max_tokens


class LLM:
    def __init__(self, model: str, dtype: str = "auto", **kwargs: Any) -> None:
        if model.endswith("broken"):
            raise ValueError(f"cannot load {model}")
        with open(os.environ["FAKE_VLLM_LOG"], "a") as log:
            log.write(f"{os.getpid()} {model} {dtype} {sorted(kwargs)}\n")
        self.model = model
        _KEPT.append(b"\x01" * (int(os.environ.get("FAKE_VLLM_LEAK_MB", "0")) * 2**20))  # touched: resident
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(dtype=f"torch.{dtype}"))

    def chat(self, conversations: list[list[dict[str, str]]], params: list[SamplingParams], use_tqdm: bool) -> Any:
        pairs = zip(conversations, params, strict=True)
        return [_result(self.model, c[-1]["content"], p.max_tokens) for c, p in pairs]

    def sleep(self, level: int = 1) -> None:
        raise RuntimeError("this platform cannot sleep")

    def wake_up(self) -> None:
        raise RuntimeError("this platform cannot sleep")


def _result(model: str, prompt: str, max_tokens: int) -> Any:
    whole = f"{os.path.basename(model)} says {prompt}".split()
    words, finish = whole[:max_tokens], "length" if len(whole) > max_tokens else "stop"
    completion = SimpleNamespace(text=" ".join(words), token_ids=list(range(len(words))), finish_reason=finish)
    return SimpleNamespace(outputs=[completion], prompt_token_ids=list(range(len(prompt.split()))))
