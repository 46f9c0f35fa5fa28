"""The keyword reader and a reply cut by the token limit: its last keyword is likely a word cut
short (SmolLM2-135M's "Keywords: psychology, virology, behavioral" at 32 tokens)."""

from __future__ import annotations

from experts.mock import MockBackend
from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.pipeline.keywords import MAX_TOKENS, KeywordReader
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.worker import DeviceWorker

READER = BaseModelSpec(kind="mock", source="reader")


def read_with(answer: str) -> list[list[str]]:
    backend = MockBackend(READER.key, answer=answer)  # a word a token: `MAX_TOKENS` words, then "length"
    fleet = Fleet({"cpu": DeviceWorker("cpu", 2**30, lambda spec: backend)})
    try:
        return KeywordReader(fleet, samples=3).read(ExpertSpec(name="reader", base=READER), "cpu", ["Why?"])
    finally:
        fleet.shutdown()


def test_a_keyword_reply_cut_by_the_token_limit_keeps_no_cut_word() -> None:
    """'behavioral' (the limit fell inside "behavioral theory") became a skill."""
    talk = " ".join(["la"] * (MAX_TOKENS - 4)) + "\n"  # the model talking before its list
    assert read_with(talk + "Keywords: psychology, virology, behavioral theory, business") == [
        ["psychology", "virology"]]
    assert read_with("Keywords: psychology, virology, behavioral theory") == [
        ["psychology", "virology", "behavioral theory"]]  # it stopped: every item is whole
