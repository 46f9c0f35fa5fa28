"""`skillroute serve --pool replay:FOLDER`: the service over recorded real models, over HTTP.

A slice of the real MMLU-Pro corpus (4 models, 8 questions per category) is profiled from its
recorded answers on the profiling split; a test-split question sent to POST /v1/queries comes
back with the recruited experts' recorded letters and their router-weighted vote, which starts
from the option prior fitted on the profiling questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from experts.replay import RecordedQuestion, Recording, load_recording
from orchestrator.aggregation.vote import prior_of, weighted_vote
from orchestrator.api.app import create_app
from orchestrator.container import SkillRoute
from orchestrator.domain import Ask
from orchestrator.pools.loader import PoolConfigError, expert_name, load_pool_config, split_questions
from orchestrator.store.models import Query
from skills.datasets import LabelledQuestion, format_prompt
from skills.embedder import Embedder
from tests.orchestrator.conftest import quiet_settings

MODELS = ["Llama-2-7b-hf", "Mistral-7B-v0.1", "gemma-7b", "Meta-Llama-3_1-8B-Instruct"]
SliceRecording = Callable[[Path, Sequence[str], int], Path]


def question_prompt(q: RecordedQuestion) -> str:
    """A corpus question as the service's own prompt format shows it (stem and lettered options)."""
    return format_prompt(LabelledQuestion(q.question_id, q.question, q.options, q.answer, q.category))


@pytest.fixture(scope="module")
def replay_service(slice_recording: SliceRecording, tmp_path_factory: pytest.TempPathFactory, embedder: Embedder):
    folder = slice_recording(tmp_path_factory.mktemp("rec"), MODELS, 8)  # 56 profiling: enough to fit a prior
    c = SkillRoute(quiet_settings(tmp_path_factory.mktemp("data")), load_pool_config(f"replay:{folder}"),
                   embedder=embedder)
    c.bootstrap()
    yield c, folder
    c.close()


def test_replay_pool_is_profiled_on_the_profiling_split_with_knn_and_no_aggregator(replay_service) -> None:
    c, folder = replay_service
    snap = c.pool.snapshot
    assert set(snap.experts) == {expert_name(m) for m in MODELS}
    assert snap.router.name == "knn" and snap.aggregator is None
    profiling, _ = split_questions(load_recording(folder), 0.5, seed=0)
    assert len(c.profiler.validation_set()) == len(profiling)


def test_corpus_question_returns_recorded_answers_and_their_vote(replay_service, serve) -> None:
    c, folder = replay_service
    rec = load_recording(folder)
    _, test = split_questions(rec, 0.5, seed=0)
    question = rec.questions[test[0]]
    with serve(create_app(c)) as url:
        r = httpx.post(f"{url}/v1/queries", json={"query": question_prompt(question), "k": 3}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["router"] == "knn" and len(set(body["recruited"])) == 3  # top-k: the k-NN router's mode
    model_of = {expert_name(m): m for m in MODELS}
    for g in body["generations"]:
        letter = rec.answer(model_of[g["expert"]], question.question_id)
        assert g["role"] == "expert" and g["text"] == (f"Answer: {letter}" if letter else "No answer.")
    router = c.pool.snapshot.router  # the k-NN router's per-letter vote offsets and prior over options
    assert router.reliability is not None and router.option_prior is not None
    assert body["answer"] == weighted_vote(*_votes(body, rec, question), router.reliability,
                                           prior_of(router.option_prior, question_prompt(question))).answer


def _votes(body: dict, rec: Recording, q: RecordedQuestion) -> tuple[list[tuple[str, str | None]], dict[str, float]]:
    """The recorded letters a query's experts answered with, and the router's weights for them."""
    model_of = {expert_name(m): m for m in MODELS}
    votes = [(g["expert"], rec.answer(model_of[g["expert"]], q.question_id)) for g in body["generations"]]
    return votes, {e["name"]: e["weight"] for e in body["experts"]}


def test_the_vote_starts_from_the_option_prior(replay_service, serve) -> None:
    """Over the test split, every answer is the vote with the prior, and on some the prior moved it."""
    c, folder = replay_service
    rec, router = load_recording(folder), c.pool.snapshot.router
    _, test = split_questions(rec, 0.5, seed=0)
    with serve(create_app(c)) as url, httpx.Client(base_url=url, timeout=60) as client:
        replies = [client.post("/v1/queries", json={"query": question_prompt(rec.questions[q]), "k": 3}) for q in test]
    assert all(r.status_code == 200 for r in replies)
    moved = 0
    for body, q in zip((r.json() for r in replies), test, strict=True):
        votes, weights = _votes(body, rec, rec.questions[q])
        prior = prior_of(router.option_prior, question_prompt(rec.questions[q]))
        assert body["answer"] == weighted_vote(votes, weights, router.reliability, prior).answer
        moved += body["answer"] != weighted_vote(votes, weights, router.reliability).answer
    assert moved > 0


def test_a_question_outside_the_recording_is_a_422_and_stores_nothing(replay_service, serve) -> None:
    c, _ = replay_service
    with serve(create_app(c)) as url:
        r = httpx.post(f"{url}/v1/queries", json={"query": "What is the capital of Mars?", "k": 2}, timeout=60)
    assert r.status_code == 422 and "no recorded question" in r.json()["error"]["message"]
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Query).where(Query.text.contains("Mars"))) == 0


def test_a_batch_with_a_question_outside_the_recording_is_a_422_naming_it_and_stores_nothing(
    replay_service, serve
) -> None:
    c, folder = replay_service
    rec = load_recording(folder)
    _, test = split_questions(rec, 0.5, seed=0)
    queries = [{"query": question_prompt(rec.questions[q]), "k": 2} for q in test[:3]]
    queries.insert(2, {"query": "What is the capital of Mars?", "k": 2})
    with c.db.session() as s:
        before = s.scalar(select(func.count()).select_from(Query))
    with serve(create_app(c)) as url:
        r = httpx.post(f"{url}/v1/batches", json={"queries": queries}, timeout=60)
        dry = httpx.post(f"{url}/v1/routes", json={"query": "What is the capital of Mars?"}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith("query 2: no recorded question")
    assert dry.status_code == 422 and "no recorded question" in dry.json()["error"]["message"]  # routes check too
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Query)) == before


def test_replay_pool_of_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(PoolConfigError, match="not found"):
        load_pool_config(f"replay:{tmp_path / 'nowhere'}")


def test_a_model_added_to_the_folder_is_profiled_and_recruited_on_restart(
    slice_recording: SliceRecording, tmp_path: Path, embedder: Embedder
) -> None:
    late = "gemini-1.5-pro-002"  # far stronger than the others: once profiled it must lead
    folder, settings = tmp_path / "rec", quiet_settings(tmp_path / "data")
    slice_recording(folder, MODELS[:3], 4)
    first = SkillRoute(settings, load_pool_config(f"replay:{folder}"), embedder=embedder)
    first.bootstrap()
    assert expert_name(late) not in first.pool.snapshot.experts
    first.close()
    slice_recording(folder, [*MODELS[:3], late], 4)  # the same folder, one column more; no code change
    second = SkillRoute(settings, load_pool_config(f"replay:{folder}"), embedder=embedder)
    second.bootstrap()
    rec = load_recording(folder)
    _, test = split_questions(rec, 0.5, seed=0)
    inputs = [Ask(text=question_prompt(rec.questions[q]), k=1) for q in test]
    firsts = Counter(d.recruited[0] for d in second.pipeline.route(second.pool.snapshot, inputs))
    second.close()
    assert firsts.most_common(1)[0][0] == expert_name(late)


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_the_pool_cannot_answer_names_its_messages(replay_service, serve, stream: bool) -> None:
    """The refusal named `query`, a field a chat request does not have."""
    c, _ = replay_service
    chat = {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of Mars?"}],
            "stream": stream}
    with serve(create_app(c)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
    error = r.json()["error"]
    assert r.status_code == 422 and "no recorded question" in error["message"]
    assert error["param"] == "messages"
