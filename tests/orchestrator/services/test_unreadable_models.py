"""An expert whose model file is gone since it was registered: a start fails it naming the file,
and while serving, a query naming it gets a 503 naming its model (it read as a 422 on the
client's messages), while routed queries go to the others."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.services.deployment import fail_unreadable
from orchestrator.store.repositories.experts import ExpertRepository
from orchestrator.store.repositories.validation import Graded, ValidationRepository
from skills.embedder import Embedder
from tests.experts.conftest import tiny_model
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

EXPERTS = [mock_expert("alpha", "m1", "math persona"), mock_expert("gamma", "m2")]


def with_file_expert(tmp_path: Path, embedder: Embedder) -> Path:
    """A profiled data directory with `mine` ready over a GGUF file of its own (a registration)."""
    path = tmp_path / "mine.gguf"
    path.write_bytes(tiny_model())
    first = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=mock_or_real, embedder=embedder)
    try:
        first.bootstrap()
        with first.db.session() as s:
            repo = ExpertRepository(s)
            row = repo.add(ExpertSpec(name="mine", base=BaseModelSpec(kind="llamacpp", source=str(path))),
                           status="ready")
            repo.save_profile(row.id, {"arithmetic": 0.5}, 0.5)
            validation = ValidationRepository(s)  # answered the pool's set: nothing to profile
            questions = validation.questions(first.pool.dataset)
            validation.save_answers(row.id, [Graded(q.id, "Answer: 5", i % 2 == 0) for i, q in enumerate(questions)])
    finally:
        first.close()
    return path


def test_a_start_fails_an_expert_whose_model_file_is_gone(tmp_path: Path, embedder: Embedder) -> None:
    path = with_file_expert(tmp_path, embedder)
    path.unlink()
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=mock_or_real, embedder=embedder)
    try:
        c.bootstrap()
        mine = c.experts.find("mine")
        assert mine.status == "failed" and f"no such file: {path}" in (mine.error or "")
        assert "mine" not in c.pool.snapshot.experts
        assert c.experts.find("alpha").status == "ready"
    finally:
        c.close()


def test_a_query_naming_an_expert_whose_file_went_gets_a_503_naming_it(tmp_path: Path, embedder: Embedder) -> None:
    path = with_file_expert(tmp_path, embedder)
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=mock_or_real, embedder=embedder)
    with TestClient(create_app(c, owns_container=True)) as client:
        path.unlink()  # while serving
        named = client.post("/v1/chat/completions", json={"model": "mine", "messages": [
            {"role": "user", "content": "What is 2 + 3?"}]})
        assert named.status_code == 503, named.text
        error = named.json()["error"]
        assert error["code"] == "model_unavailable" and error["param"] == "model"
        assert "'mine' cannot run" in error["message"] and str(path) in error["message"]
        routed = client.post("/v1/queries", json={"query": "What is 2 + 3?", "k": 2})
        assert routed.status_code == 200, routed.text
        assert "mine" not in routed.json()["recruited"]


def test_a_worker_that_cannot_answer_at_start_fails_no_expert(tmp_path: Path, embedder: Embedder) -> None:
    """Only a verdict on the file fails an expert: a remote worker unreachable at start raised
    through the check and stopped the whole start."""
    with_file_expert(tmp_path, embedder)
    c = SkillRoute(quiet_settings(tmp_path), small_pool(EXPERTS), factory=mock_or_real, embedder=embedder)

    def unreachable(spec: ExpertSpec) -> None:
        raise TimeoutError("the worker did not answer")

    try:
        assert fail_unreadable(c.db, unreachable, set()) == []
        assert c.experts.find("mine").status == "ready"
    finally:
        c.close()
