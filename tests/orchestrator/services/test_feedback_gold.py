"""Feedback's gold answer is read against the query's options: an option's text names its
letter, and an answer that names none is refused (422) instead of marking every expert wrong."""

from __future__ import annotations

from sqlalchemy import func, select

from orchestrator.store.models import LessonRow

QUESTION = ("Which gas do plants absorb for photosynthesis?\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\n"
            "D. Helium\nReply with 'Answer: X'.")


def ask(client) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/v1/queries", json={"query": QUESTION, "k": 3, "mode": "topk", "seed": 1})
    assert r.status_code == 200, r.text
    return r.json()


def letters(body: dict) -> dict[str, str]:
    """Each expert's pick: the mock experts answer 'Answer: X (digest)'."""
    return {g["expert"]: g["text"].split()[1] for g in body["generations"] if g["role"] == "expert"}


def test_an_option_s_text_as_the_answer_marks_the_experts_that_picked_it(client) -> None:  # type: ignore[no-untyped-def]
    body = ask(client)
    r = client.post(f"/v1/queries/{body['id']}/feedback", json={"answer": "carbon dioxide"})
    assert r.status_code == 200, r.text
    assert r.json()["experts"] == {e: pick == "B" for e, pick in letters(body).items()}


def test_an_answer_naming_no_option_is_refused_and_teaches_nothing(client, container) -> None:  # type: ignore[no-untyped-def]
    """It taught every expert that it was wrong, the ones right included."""
    qid = ask(client)["id"]
    for answer in (".", "Paris", "E", "The answer is (H)"):  # E, H: letters, but of no option here
        r = client.post(f"/v1/queries/{qid}/feedback", json={"answer": answer})
        assert r.status_code == 422 and r.json()["error"]["param"] == "answer", r.text
        assert "option" in r.json()["error"]["message"]
    with container.db.session() as s:
        assert s.scalar(select(func.count()).select_from(LessonRow)) == 0
