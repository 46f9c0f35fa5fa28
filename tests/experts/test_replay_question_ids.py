"""A recording's question ids become validation question ids in the store (`qid`, at most 128
characters): one longer started on SQLite and failed the start on PostgreSQL with a DataError
naming no file. The reader refuses it, on every store, naming the file and its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from experts.backend import ModelSourceError
from experts.replay import RecordedQuestion, load_recording, read_questions, write_recording
from orchestrator.store.models import ValidationQuestion

STORED = 128  # ValidationQuestion.qid's length, checked against the model below


def _recording(folder: Path, ids: list[str]) -> Path:
    questions = [RecordedQuestion(qid, "history", f"Question {i} about the past?", ("a", "b"), "A")
                 for i, qid in enumerate(ids)]
    return write_recording(folder, questions, {"model-7b": {q.question_id: "A" for q in questions}})


def test_the_store_keeps_question_ids_of_128_characters() -> None:
    assert ValidationQuestion.__table__.c.qid.type.length == STORED


def test_a_question_id_the_store_keeps_is_read(tmp_path: Path) -> None:
    folder = _recording(tmp_path, ["q1", "x" * STORED])
    assert [q.question_id for q in read_questions(folder)] == ["q1", "x" * STORED]


def test_a_question_id_over_128_characters_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    folder = _recording(tmp_path, ["q1", "x" * (STORED + 1)])
    with pytest.raises(ModelSourceError, match=r"questions\.jsonl\.gz line 2: .*129 characters.*128"):
        read_questions(folder)
    with pytest.raises(ModelSourceError, match="line 2"):  # a replay expert's load reads it alike
        load_recording(folder)
