"""The keyword LLM, as Symbolic-MoE reads a question's skills: the paper's prompt to the pool's
keyword expert, sampled several times, the keywords the samples agree on kept (`skills.keywords`).

The samples run as generations of the keyword expert on its own worker, beside the pool's
other work. `read` gives each text its keywords; mapping them to the nearest profiled skill is
the skill vocabulary's (`SkillVocabulary.map_keywords`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experts.types import ExpertSpec
from orchestrator.scheduling.fleet import Fleet
from orchestrator.scheduling.planner import Job
from skills.keywords import keyword_requests, keywords_from_generations
from skills.vocabulary import SkillMatch, SkillVocabulary

MAX_TOKENS = 32  # a keyword line; the paper's replies are one short line
log = logging.getLogger(__name__)


class KeywordsFailed(RuntimeError):
    """The keyword expert could not read the profiling questions' skills."""


@dataclass(frozen=True)
class KeywordRead:
    """Each text's agreed keywords, and the errors of the samples that failed (of `asked`)."""

    keywords: list[list[str]]
    errors: list[str]
    asked: int

    def required(self, expert: str) -> list[list[str]]:
        """The keywords, or `KeywordsFailed` when most samples failed or a text got none: a
        profiling set stored with such skills would profile nothing, and stay so for good."""
        empty = sum(not k for k in self.keywords)
        if len(self.errors) * 2 > self.asked or empty:
            first = f" (first error: {self.errors[0]})" if self.errors else ""
            raise KeywordsFailed(f"the keyword expert {expert!r} failed: {len(self.errors)} of {self.asked} "
                                 f"keyword samples failed{first}, {empty} of {len(self.keywords)} questions "
                                 "got no keywords")
        return self.keywords


class KeywordReader:
    def __init__(self, fleet: Fleet, samples: int = 5, temperature: float = 0.7, seed: int = 0):
        self.fleet, self.samples, self.temperature, self.seed = fleet, samples, temperature, seed

    def read(self, expert: ExpertSpec, worker: str, texts: Sequence[str]) -> list[list[str]]:
        """Each text's agreed keywords (lower-cased, at most 20 characters each, as the paper
        parses them); a text whose samples share none gets its first sample's (the first with a
        "Keywords:" marker if any had one), one whose samples all failed none. A sample cut by
        the token limit loses its last keyword, likely a word cut short (`skills.keywords`)."""
        return self.read_reporting(expert, worker, texts).keywords

    def read_reporting(self, expert: ExpertSpec, worker: str, texts: Sequence[str]) -> KeywordRead:
        """`read`, with the failed samples' errors, for a caller that must not go on without."""
        ids = [str(i) for i in range(len(texts))]
        # the paper asks the keyword model plainly: the expert's base model, without its persona
        jobs = [Job(r.request_id, expert.base, r) for qid, text in zip(ids, texts, strict=True)
                for r in keyword_requests(qid, text, self.samples, self.temperature, MAX_TOKENS, self.seed,
                                          expert.timeout_s)]
        replies = self.fleet.execute({worker: jobs})
        # whole Generations, not texts: a reply's finish_reason says whether its last item was cut
        found = keywords_from_generations(ids, [g for g in replies.values() if g.error is None])
        errors = [g.error for g in replies.values() if g.error is not None]
        return KeywordRead([found[qid] for qid in ids], errors, len(jobs))


def skills_or_nearest(found: Sequence[list[str]], texts: Sequence[str], embeddings: np.ndarray,
                      vocabulary: SkillVocabulary, per_text: int) -> list[list[SkillMatch]]:
    """Each text's keywords mapped to profiled skills; a text the keyword expert read nothing
    for (it failed or timed out) gets the skills nearest its embedding, with a warning, rather
    than being routed with no skills at all."""
    missing = [i for i, keywords in enumerate(found) if not keywords]
    if missing:
        log.warning("the keyword expert read no keywords for %d of %d queries: routed by their embedding's "
                    "nearest skills instead", len(missing), len(found))
    nearest = vocabulary.nearest_for_embeddings([texts[i] for i in missing], embeddings[missing], per_text) \
        if missing else []
    by_embedding = dict(zip(missing, nearest, strict=True))
    return [by_embedding[i] if i in by_embedding else vocabulary.map_keywords(kws) for i, kws in enumerate(found)]
