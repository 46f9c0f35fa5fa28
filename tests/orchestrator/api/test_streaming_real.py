"""Streaming and sampling asks on real weights: SmolLM2-135M under llama.cpp, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import ArithmeticSource, GenerationBudget, PoolConfig, ValidationConfig
from skills.embedder import Embedder
from tests.live_server import live_server
from tests.orchestrator.conftest import quiet_settings

pytestmark = pytest.mark.slow

SMOL = BaseModelSpec(kind="llamacpp", source="package:smollm2-135m-instruct", n_ctx=1024)
STORY = [{"role": "user", "content": "Write a short story about a cat who learns to sail."}]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[str]:
    pytest.importorskip("llama_cpp")
    pool = PoolConfig(validation=ValidationConfig(sources=[ArithmeticSource(n=3)]),
                      generation=GenerationBudget(profiling_max_tokens=4, expert_max_tokens=96,
                                                  aggregator_max_tokens=96),
                      experts=[ExpertSpec(name="smol", base=SMOL)])
    settings = quiet_settings(Path(tmp_path_factory.mktemp("real-stream")))
    settings.backends.llama_threads = 1  # two shared cores: one thread is the fast choice
    c = SkillRoute(settings, pool, embedder=embedder)
    c.start()
    with live_server(create_app(c)) as served:
        yield served
    c.close()


def test_real_tokens_stream_as_llama_cpp_writes_them(url: str) -> None:
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    plain = oai.chat.completions.create(model="smol", messages=STORY, max_tokens=80)  # type: ignore[arg-type]
    started, first, pieces, last = time.perf_counter(), None, [], None
    for chunk in oai.chat.completions.create(model="smol", messages=STORY, max_tokens=80, stream=True):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            pieces.append(chunk.choices[0].delta.content)
        last = chunk
    total = time.perf_counter() - started
    assert "".join(pieces) == plain.choices[0].message.content  # greedy: the same text, streamed or not
    assert len(pieces) >= 40 and first is not None and first < total / 2, (first, total)
    assert last is not None and plain.choices[0].finish_reason == last.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 80


def test_stop_and_max_tokens_cut_real_generations(url: str) -> None:
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    full = oai.chat.completions.create(model="smol", messages=STORY, max_tokens=40).choices[0].message.content  # type: ignore[arg-type]
    assert full and len(full.split()) > 12
    word = full.split()[10]
    stopped = oai.chat.completions.create(model="smol", messages=STORY, max_tokens=40, stop=[word])  # type: ignore[arg-type]
    assert stopped.choices[0].message.content == full[:full.index(word)] and stopped.choices[0].finish_reason == "stop"
    short = oai.chat.completions.create(model="smol", messages=STORY, max_tokens=5)  # type: ignore[arg-type]
    assert short.usage is not None and short.usage.completion_tokens == 5 and short.choices[0].finish_reason == "length"
    assert full.startswith(short.choices[0].message.content or "-")
