"""Replay experts on a slice of the real MMLU-Pro recording (copied to a temp folder)."""

from __future__ import annotations

import gzip
import re
import sys
import threading
from pathlib import Path

import pytest

from experts import replay
from experts.backend import BackendError, ExpertBackend, ModelSourceError
from experts.cost_model import model_cost, parse_model_size
from experts.replay import (
    NO_ANSWER_TEXT,
    RecordedQuestion,
    Recording,
    ReplayBackend,
    load_recording,
    write_recording,
)
from experts.types import BaseModelSpec, ChatMessage, ExpertSpec, Generation, GenerationRequest, SamplingParams
from skills.datasets import LabelledQuestion, format_prompt
from skills.grading import extract_choice, grade

MODELS = ["Llama-2-7b-hf", "Meta-Llama-3_1-8B-Instruct", "gemini-1.5-pro-002"]
TWINS = ("819", "820")  # the same question text with different options (and answers)


def _prompt(rec: Recording, qid: str) -> str:
    q = rec.questions[qid]
    return format_prompt(LabelledQuestion(qid, q.question, q.options, q.answer, q.category))


@pytest.fixture(scope="module")
def real(real_recording: Recording) -> Recording:
    return real_recording


@pytest.fixture(scope="module")
def folder(real: Recording, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real questions (including both twins and some unanswered ones) and three models."""
    ids = list(real.questions)[:36] + list(TWINS)
    ids += [q for q in real.questions if real.answer("Llama-2-7b-hf", q) is None][:2]
    answers = {m: {q: real.answer(m, q) for q in ids} for m in MODELS}
    return write_recording(tmp_path_factory.mktemp("replay"), [real.questions[q] for q in ids], answers)


@pytest.fixture
def backend(folder: Path) -> ReplayBackend:
    b = ReplayBackend(folder, "Meta-Llama-3_1-8B-Instruct")
    b.load()
    return b


def _generate(backend: ReplayBackend, text: str) -> Generation:
    base = BaseModelSpec(kind="replay", source=str(backend.folder), model=backend.model)
    return backend.generate([ExpertSpec(name="x", base=base).request("r1", text)])[0]


def _ask(backend: ReplayBackend, text: str) -> str:
    return _generate(backend, text).text


def test_replays_every_recorded_answer_and_grades_like_the_recording(folder: Path) -> None:
    rec = load_recording(folder)
    for model in MODELS:
        b = ReplayBackend(folder, model)
        b.load()
        for qid, q in rec.questions.items():
            text = _ask(b, _prompt(rec, qid))
            recorded = rec.answer(model, qid)
            assert extract_choice(text, len(q.options)) == recorded
            assert grade(text, q.answer, "choice", len(q.options)) == (recorded == q.answer)


def test_unanswered_recording_says_so_without_a_letter(folder: Path) -> None:
    rec = load_recording(folder)
    b = ReplayBackend(folder, "Llama-2-7b-hf")
    b.load()
    unanswered = [q for q in rec.questions if rec.answer("Llama-2-7b-hf", q) is None]
    assert unanswered
    text = _ask(b, _prompt(rec, unanswered[0]))
    assert text == NO_ANSWER_TEXT
    assert extract_choice(text, 10) is None


def test_question_found_in_other_message_shapes(backend: ReplayBackend) -> None:
    rec = load_recording(backend.folder)
    qid = next(q for q in rec.questions if q not in TWINS)
    q = rec.questions[qid]
    want = f"Answer: {rec.answer(backend.model, qid)}"
    options = "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(q.options))
    shapes = [
        q.question,
        f"  {q.question.upper()}  ",
        f"Question: {q.question}\nOptions:\n{options}",
        f"Synthesize the responses below.\n\nQuestion:\n{q.question}\n\nResponse 1:\nAnswer: A",
    ]
    for text in shapes:
        assert _ask(backend, text) == want


def test_twin_questions_are_told_apart_by_their_options(backend: ReplayBackend) -> None:
    rec = load_recording(backend.folder)
    for qid in TWINS:
        assert rec.find_question(_prompt(rec, qid)) == qid
    with pytest.raises(BackendError, match="819, 820"):
        rec.find_question(rec.questions["819"].question)  # no options: cannot tell which


def test_every_corpus_question_is_found_from_its_own_prompt(real: Recording) -> None:
    """Including 6123/6124: one's options are a subset of the other's, so the shorter one's
    prompt shows all of both its own options and four of the other's."""

    def same(a: str, b: str) -> bool:
        qa, qb = real.questions[a], real.questions[b]
        return (qa.question, qa.options) == (qb.question, qb.options)  # true duplicates in the corpus

    wrong = [q for q in real.questions if not same(real.find_question(_prompt(real, q)), q)]
    assert wrong == []


def test_unknown_question_is_a_clear_error_of_that_request_alone(backend: ReplayBackend, folder: Path) -> None:
    unknown = _generate(backend, "What is the airspeed velocity of an unladen swallow?")
    assert unknown.text == "" and re.search(r"no recorded question .* 'What is the airspeed", unknown.error or "")
    known = next(iter(load_recording(folder).questions.values())).question
    asked = [GenerationRequest(request_id=str(i), messages=[ChatMessage(role="user", content=t)])
             for i, t in enumerate(["What is the airspeed?", known])]
    bad, good = backend.generate(asked)
    assert bad.error and good.error is None and good.text.startswith(("Answer:", "No answer"))
    assert (bad.finish_reason, good.finish_reason) == (None, "stop")  # a recorded answer is whole


def test_question_without_a_recording_for_the_model_names_both(folder: Path, tmp_path: Path) -> None:
    rec = load_recording(folder)
    first = next(iter(rec.questions.values()))
    partial = write_recording(tmp_path, [first], {"only-model": {}})
    with gzip.open(partial / "predictions.csv.gz", "wt") as fh:
        fh.write("question_id,only-model\n")  # the question exists but no row records it
    b = ReplayBackend(partial, "only-model")
    b.load()
    assert f"only-model has no recorded answer for question {first.question_id}" in (_generate(b, first.question).error
                                                                                    or "")


def test_missing_model_or_folder_fail_validation(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="'gpt-5' is not recorded .* Llama-2-7b-hf"):
        ReplayBackend(folder, "gpt-5").validate()
    with pytest.raises(ModelSourceError, match="not found"):
        ReplayBackend(tmp_path / "nowhere", "x").load()
    with pytest.raises(ModelSourceError, match="has no questions.jsonl"):
        ReplayBackend(tmp_path, "x").validate()


def test_protocol_loads_counter_and_generate_before_load(folder: Path) -> None:
    b = ReplayBackend(folder, "gemini-1.5-pro-002")
    assert isinstance(b, ExpertBackend)
    with pytest.raises(BackendError, match="before load"):
        b.generate([])
    b.load()
    b.load()
    assert (b.loads, b.is_loaded) == (1, True)
    b.unload()
    b.load()
    assert b.loads == 2
    assert b.base_model_key == BaseModelSpec(kind="replay", source=str(folder), model="gemini-1.5-pro-002").key
    assert ReplayBackend.from_spec(BaseModelSpec(kind="replay", source=str(folder), model="x")).model == "x"


def test_simulated_cost_follows_model_size(backend: ReplayBackend) -> None:
    rec = load_recording(backend.folder)
    qid = next(iter(rec.questions))
    gen = _generate(backend, _prompt(rec, qid))
    assert gen.latency_s == pytest.approx(backend.estimate(gen.prompt_tokens).latency_s)
    assert backend.energy_j == pytest.approx(backend.estimate(gen.prompt_tokens).energy_j)
    small, big = ReplayBackend(backend.folder, "Llama-2-7b-hf"), ReplayBackend(backend.folder, "Llama-2-13b-hf")
    assert small.memory_bytes() < big.memory_bytes()
    assert small.estimate(100).latency_s < big.estimate(100).latency_s
    assert small.estimate(100).energy_j < big.estimate(100).energy_j


@pytest.mark.parametrize(
    ("name", "total_b", "active_b", "source"),
    [
        ("Llama-2-13b-hf", 13, 13, "parsed"),
        ("Meta-Llama-3_1-70B-Instruct", 70, 70, "parsed"),
        ("Qwen1.5-72B-Chat", 72, 72, "parsed"),
        ("Yi-34B", 34, 34, "parsed"),
        ("Mixtral-8x7B-Instruct-v0.1", 46.7, 12.9, "known"),
        ("Mixtral-8x3B", 24, 6, "parsed"),  # unknown MoE: top-2 of 8
        ("Phi-3-mini-4k-instruct", 3.8, 3.8, "known"),
        ("SmolLM2-135M-Instruct", 0.135, 0.135, "parsed"),
        ("gemini-1.5-flash-002", 100, 20, "estimate"),
        ("some-closed-model", 1000, 150, "estimate"),
    ],
)
def test_model_sizes_from_names(name: str, total_b: float, active_b: float, source: str) -> None:
    size = parse_model_size(name)
    assert (size.total_params / 1e9, size.active_params / 1e9, size.source) == pytest.approx(
        (total_b, active_b, source)
    )


def test_moe_costs_by_active_parameters_but_holds_all_weights() -> None:
    mixtral, dense13 = model_cost("Mixtral-8x7B-v0.1"), model_cost("Llama-2-13b-hf")
    assert mixtral.memory_bytes() > 3 * dense13.memory_bytes()
    assert mixtral.params_b == pytest.approx(12.9)
    assert mixtral.devices_needed() == 2 and dense13.devices_needed() == 1


def test_stop_strings_cut_the_recorded_reply_as_a_model_would(backend: ReplayBackend) -> None:
    rec = load_recording(backend.folder)
    qid = next(q for q in rec.questions if rec.answer(backend.model, q))
    base = BaseModelSpec(kind="replay", source=str(backend.folder), model=backend.model)
    expert = ExpertSpec(name="x", base=base, sampling=SamplingParams(max_tokens=1024, stop=[":", "Answer"]))
    (gen,) = backend.generate([expert.request("r1", _prompt(rec, qid))])
    assert (gen.text, gen.finish_reason, gen.error) == ("", "stop", None)  # "Answer" comes first
    expert.sampling.stop = [": "]
    (gen,) = backend.generate([expert.request("r1", _prompt(rec, qid))])
    assert gen.text == "Answer"


def test_max_tokens_never_cuts_a_recorded_answer(backend: ReplayBackend) -> None:
    """The recording keeps only the letter a model's whole reply ended in: a limit cannot cut a
    chain of thought nobody recorded, so the reply is the recorded one, costed as recorded."""
    rec = load_recording(backend.folder)
    qid = next(q for q in rec.questions if rec.answer(backend.model, q))
    base = BaseModelSpec(kind="replay", source=str(backend.folder), model=backend.model)
    expert = ExpertSpec(name="x", base=base, sampling=SamplingParams(max_tokens=1))
    (gen,) = backend.generate([expert.request("r1", _prompt(rec, qid))])
    assert gen.text == f"Answer: {rec.answer(backend.model, qid)}" and gen.finish_reason == "stop"
    assert gen.completion_tokens == backend.cot_tokens


LONG_Q = "Which of the following best describes the function of enhancer regions in eukaryotic genes?"


def _two_questions(tmp_path: Path, first: str, second: str) -> Recording:
    qs = [RecordedQuestion("q1", "biology", first, ("Binding", "Splicing"), "A"),
          RecordedQuestion("q2", "biology", second, ("Looping", "Capping"), "B")]
    return load_recording(write_recording(tmp_path / "rec", qs, {"m": {"q1": "A", "q2": "B"}}))


def _shown_prompt(q: RecordedQuestion) -> str:
    return format_prompt(LabelledQuestion(q.question_id, q.question, q.options, q.answer, q.category))


def test_a_chat_transcript_asks_its_last_turn(tmp_path: Path) -> None:
    """A chat with history reaches the expert as one transcript: the longest corpus question in
    it, the earlier turn's, was answered in place of the follow-up."""
    for second in ("What are enhancer sequences?", "Which proteins bring a distant enhancer close to its promoter?"):
        rec = _two_questions(tmp_path / second[:4], LONG_Q, second)
        q1, q2 = rec.questions["q1"], rec.questions["q2"]
        transcript = f"User: {_shown_prompt(q1)}\n\nAssistant: Answer: A\n\nUser: {_shown_prompt(q2)}"
        assert rec.find_question(transcript) == "q2"
        assert rec.find_question(f"{q1.question}\n{q2.question}") == "q2"  # one line each: the last
    assert rec.find_question(f"{q1.question} And: {q2.question}") == "q2"  # in one line: the one ending last


def test_options_are_shown_whole_not_inside_longer_words_or_numbers(tmp_path: Path) -> None:
    """As substrings, "1".."4" were shown by "10".."40" and "act" by "contract": the message
    listing one copy's options was refused as ambiguous or found as the other copy."""
    for i, (one, other) in enumerate([(("1", "2", "3", "4"), ("10", "20", "30", "40")),
                                      (("act", "fact"), ("contract", "fact")), (("1", "2"), ("1.5", "2.5"))]):
        qs = [RecordedQuestion("a", "law", LONG_Q, one, "A"), RecordedQuestion("b", "law", LONG_Q, other, "B")]
        rec = load_recording(write_recording(tmp_path / str(i), qs, {"m": {"a": "A", "b": "B"}}))
        assert [rec.find_question(_shown_prompt(q)) for q in qs] == ["a", "b"]


def test_files_saved_with_a_byte_order_mark_read(folder: Path, tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: the header was refused as not 'question_id'."""
    for name in ("questions.jsonl", "predictions.csv"):
        with gzip.open(folder / f"{name}.gz", "rt", encoding="utf-8") as fh:
            (tmp_path / name).write_text("\ufeff" + fh.read(), encoding="utf-8")
    rec = load_recording(tmp_path)
    assert rec.models == MODELS and rec.questions == load_recording(folder).questions


def test_lookups_from_many_threads_at_the_memo_s_cap(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlocked, two threads evicting at the cap popped one key (KeyError) or one iterated the
    memo while another inserted (RuntimeError): not a BackendError, so a whole batch failed."""
    monkeypatch.setattr(replay, "_FOUND_CACHE", 4)
    rec = Recording(folder)
    prompts = [_prompt(rec, q) for q in rec.questions if q not in TWINS]
    prompts += [f"Question: {p}" for p in prompts]
    errors: list[str] = []

    def look_up(offset: int) -> None:
        try:
            for i in range(1500):
                rec.find_question(prompts[(i * 7 + offset) % len(prompts)])
        except Exception as exc:  # noqa: BLE001 - what escaped is the finding
            errors.append(repr(exc))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a loaded service does
    try:
        threads = [threading.Thread(target=look_up, args=(k * 13,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
