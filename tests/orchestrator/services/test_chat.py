"""A chat reply's finish_reason: the stored generation's own; a guess only where none is stored."""

from orchestrator.domain import Ask
from orchestrator.pipeline import GenerationLimits
from orchestrator.services.chat import finish_reason
from orchestrator.store.models import GenerationRow


def reply(reason: str | None, tokens: int) -> GenerationRow:
    return GenerationRow(expert="e", role="expert", text="x", completion_tokens=tokens, finish_reason=reason)


def test_the_stored_reason_stands_and_only_an_unknown_one_is_guessed() -> None:
    limits, capped = GenerationLimits(), Ask(text="q", max_tokens=3)
    assert finish_reason(reply("stop", 3), capped, limits) == "stop"  # ended on its own at the cap
    assert finish_reason(reply("length", 2), Ask(text="q"), limits) == "length"  # its expert's own cap cut it
    assert finish_reason(reply(None, 3), capped, limits) == "length"  # a row from before: guessed as before
    assert finish_reason(reply(None, 2), capped, limits) == "stop"
