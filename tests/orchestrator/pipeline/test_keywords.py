"""The keyword LLM, as Symbolic-MoE reads skills: profiling questions and live queries get the
keyword expert's agreed keywords, mapped to the nearest profiled skill, and decisions show the
keywords themselves. A mock keyword expert checks the wiring; a packaged model checks it real."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.pipeline.keywords import KeywordRead, KeywordReader, KeywordsFailed, skills_or_nearest
from orchestrator.pools.schema import PoolConfig, ValidationConfig
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.worker import DeviceWorker
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder
from skills.vocabulary import SEED_SKILLS, SkillVocabulary
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

READER = BaseModelSpec(kind="mock", source="reader")


def factory(spec: BaseModelSpec) -> MockBackend:
    if spec.source == "reader":  # reads every question as botany: its keywords are what the samples agree on
        return MockBackend(spec.key, answer="Sure. Keywords: Photosynthesis, plant biology., chlorophyll")
    return mock_or_real(spec)


def keyword_pool() -> PoolConfig:
    experts = [mock_expert("alpha", "m1"), mock_expert("gamma", "m2"), ExpertSpec(name="reader", base=READER)]
    base = small_pool(experts)
    validation = ValidationConfig(sources=base.validation.sources, keyword_mode="llm", keyword_expert="reader",
                                  keyword_samples=3)
    return base.model_copy(update={"validation": validation})


def test_profiling_and_routing_read_skills_with_the_keyword_expert(tmp_path: Path, embedder: Embedder) -> None:
    c = SkillRoute(quiet_settings(tmp_path), keyword_pool(), factory=factory, embedder=embedder)
    c.start()
    assert {s for it in c.profiler.validation_set() for s in it.skills} == {"photosynthesis", "plant biology",
                                                                           "chlorophyll"}
    decision = c.pipeline.route(c.pool.snapshot, [Ask(text="Why are leaves green?", k=2, seed=1)])[0]
    assert [m.keyword for m in decision.skills] == ["photosynthesis", "plant biology", "chlorophyll"]
    assert all(m.skill == m.keyword and m.similarity == pytest.approx(1.0, abs=1e-5) for m in decision.skills)
    c.close()


def reader_down_when(down: dict[str, bool]) -> Callable[[BaseModelSpec], MockBackend]:
    """A factory whose keyword expert ('reader') fails while down["reader"] is set."""
    def factory(spec: BaseModelSpec) -> MockBackend:
        if spec.source != "reader":
            return mock_or_real(spec)
        return MockBackend(spec.key, answer="Keywords: Photosynthesis, chlorophyll",
                           fault=lambda r: "keyword model down" if down["reader"] else None)
    return factory


def test_a_failed_keyword_expert_fails_profiling_and_stores_no_set(tmp_path: Path, embedder: Embedder) -> None:
    """All samples failing (or a question left without keywords) is an error naming the keyword
    expert, not a validation set with no skills stored for good: the next start reads them."""
    down = {"reader": True}
    flaky = reader_down_when(down)

    c = SkillRoute(quiet_settings(tmp_path), keyword_pool(), factory=flaky, embedder=embedder)
    with pytest.raises(KeywordsFailed, match="'reader' failed: .*keyword model down"):
        c.start()
    with c.db.session() as s:
        assert ValidationRepository(s).questions(c.profiler.dataset) == []
    assert c.startup.status.phase == "failed"
    c.close()
    down["reader"] = False
    c = SkillRoute(quiet_settings(tmp_path), keyword_pool(), factory=flaky, embedder=embedder)
    c.start()
    assert all(it.skills == ["photosynthesis", "chlorophyll"] for it in c.profiler.validation_set())
    c.close()


def test_keywords_are_required_unless_most_samples_answered_and_every_text_has_some() -> None:
    assert KeywordRead([["law"], ["tax"]], ["down"], 4).required("reader") == [["law"], ["tax"]]
    with pytest.raises(KeywordsFailed, match="3 of 4 keyword samples failed"):
        KeywordRead([["law"], ["tax"]], ["down"] * 3, 4).required("reader")
    with pytest.raises(KeywordsFailed, match="1 of 2 questions got no keywords"):
        KeywordRead([["law"], []], [], 4).required("reader")


def test_a_text_the_keyword_expert_read_nothing_for_gets_its_embeddings_skills(
        embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    vocabulary = SkillVocabulary(SEED_SKILLS, embedder)
    texts = ["Why are leaves green?", "What is the capital of France?"]
    embeddings = embedder.encode(texts)
    with caplog.at_level(logging.WARNING, logger="orchestrator.pipeline.keywords"):
        found = skills_or_nearest([["photosynthesis"], []], texts, embeddings, vocabulary, 3)
    assert found[0] == vocabulary.map_keywords(["photosynthesis"])
    assert found[1] == vocabulary.nearest_for_embeddings(texts[1:], embeddings[1:], 3)[0] and len(found[1]) == 3
    assert "no keywords for 1 of 2 queries" in caplog.text


def test_a_query_the_failed_keyword_expert_cannot_read_is_routed_by_embedding(
        tmp_path: Path, embedder: Embedder) -> None:
    """It was routed with skills=[] before: every expert scored alike."""
    down = {"reader": False}
    flaky = reader_down_when(down)

    c = SkillRoute(quiet_settings(tmp_path), keyword_pool(), factory=flaky, embedder=embedder)
    c.start()
    down["reader"] = True
    decision = c.pipeline.route(c.pool.snapshot, [Ask(text="Why are leaves green?", k=2, seed=1)])[0]
    c.close()
    assert decision.skills and all(m.keyword == "" for m in decision.skills)  # the embedding's, not keywords
    assert {m.skill for m in decision.skills} <= {"photosynthesis", "chlorophyll"}


def reader_requests(c: SkillRoute) -> int:
    backend = c.fleet["cpu"].backend(READER)
    assert isinstance(backend, MockBackend)
    return len(backend.requests)


def test_under_the_knn_router_live_queries_read_no_keywords(tmp_path: Path, embedder: Embedder,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The k-NN router ranks by the query's embedding: each query's keyword samples (18 s a
    question on CPU with a packaged model) changed no decision."""
    with caplog.at_level(logging.WARNING, logger="orchestrator.container"):
        c = SkillRoute(quiet_settings(tmp_path), keyword_pool().model_copy(update={"router": "knn"}), factory=factory,
                       embedder=embedder)
    c.start()
    assert {s for it in c.profiler.validation_set() for s in it.skills} == {"photosynthesis", "plant biology",
                                                                           "chlorophyll"}  # profiles: keywords
    before = reader_requests(c)
    decision = c.pipeline.route(c.pool.snapshot, [Ask(text="Why are leaves green?", k=2, seed=1)])[0]
    assert reader_requests(c) == before and all(m.keyword == "" for m in decision.skills)
    assert "live queries' keywords are not read" in caplog.text
    c.close()


def test_a_keyword_expert_no_longer_served_is_said_once(tmp_path: Path, embedder: Embedder,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Disabled or removed, keyword mode fell back to the embedding's skills without a word."""
    c = SkillRoute(quiet_settings(tmp_path), keyword_pool(), factory=factory, embedder=embedder)
    c.start()
    c.experts.update(c.experts.find("reader").id, ExpertChange({}, False), background=False)
    with caplog.at_level(logging.WARNING, logger="orchestrator.pipeline.decide"):
        for seed in (1, 2):
            decision = c.pipeline.route(c.pool.snapshot, [Ask(text="Why are leaves green?", k=2, seed=seed)])[0]
            assert all(m.keyword == "" for m in decision.skills)
    c.close()
    assert caplog.text.count("the keyword expert 'reader' is not served") == 1


def test_keyword_fields_need_llm_mode() -> None:
    """Read by nothing in embedding mode, they changed the set's key: every expert re-profiled."""
    for extra in ({"keyword_expert": "reader"}, {"keyword_samples": 9}):
        with pytest.raises(ValueError, match=f"{next(iter(extra))}: read only with keyword_mode llm"):
            ValidationConfig(**extra)  # type: ignore[arg-type]


def test_a_keyword_mode_without_its_expert_is_refused() -> None:
    with pytest.raises(ValueError, match="keyword_expert.*needs an expert of the pool"):
        PoolConfig(validation=ValidationConfig(keyword_mode="llm", keyword_expert="nobody"))


def test_keyword_samples_give_up_after_the_keyword_experts_timeout() -> None:
    asked: list[float | None] = []
    backend = MockBackend(READER.key, answer="Keywords: botany", delay_s=lambda r: asked.append(r.timeout_s) or 0.0)
    fleet = Fleet({"cpu": DeviceWorker("cpu", 2**30, lambda spec: backend)})
    reader = ExpertSpec(name="reader", base=READER, timeout_s=0.25)
    assert KeywordReader(fleet, samples=3).read(reader, "cpu", ["Why are leaves green?"]) == [["botany"]]
    fleet.shutdown()
    assert asked == [0.25, 0.25, 0.25]


@pytest.mark.slow
def test_a_packaged_model_reads_keywords_the_papers_way(embedder: Embedder) -> None:
    pytest.importorskip("llama_cpp")
    from experts.factory import make_backend

    qwen = ExpertSpec(name="qwen", base=BaseModelSpec(kind="llamacpp", source="package:qwen2.5-coder-0.5b-instruct"))
    fleet = Fleet({"cpu": DeviceWorker("cpu", 8 * 2**30, make_backend)})
    questions = ["What is the capital of France?", "Which enzyme unwinds DNA during replication?"]
    found = KeywordReader(fleet, samples=5).read(qwen, "cpu", questions)
    fleet.shutdown()
    for keywords in found:
        assert 1 <= len(keywords) <= 5, found
        assert all(k == k.lower() and "." not in k and 0 < len(k) <= 20 for k in keywords)  # the paper's parse
    skills = SkillVocabulary(SEED_SKILLS, embedder).map_keywords(found[1])
    assert [m.keyword for m in skills] == found[1] and all(m.skill in SEED_SKILLS for m in skills)
    print("keywords:", found, "->", [m.skill for m in skills])
