"""How long a recorded question's id may be. Profiling stores each one as a validation
question's `qid`, a String(128) column: PostgreSQL refused a longer one with a DataError that named
no file, while SQLite stored it, so one recording started on one store and not the other. Refused
when the recording is read, it fails alike on both, naming the file and line."""

from __future__ import annotations

MAX_QUESTION_ID = 128  # orchestrator.store.models.ValidationQuestion.qid (experts/ cannot import it)


def recorded_id(value: object) -> str:
    """The question id as the store will keep it; a ValueError saying why when it cannot."""
    qid = str(value)
    if len(qid) > MAX_QUESTION_ID:
        raise ValueError(f"question_id {qid[:40]!r}… is {len(qid)} characters; the store keeps at most "
                         f"{MAX_QUESTION_ID}")
    return qid


__all__ = ["MAX_QUESTION_ID", "recorded_id"]
