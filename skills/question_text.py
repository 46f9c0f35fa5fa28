"""The part of a query its skills are read from: the question itself.

The router's memory embeds each validation question's text alone (`services/pool.py`), so a
live query is embedded the same way: the text before its options ("A. …", "(b) …", "Options:";
not a dialogue's "A: …"/"B: …" lines, `experts.prompt_text`), without a "Question:" label and
without a reply-format line. Memory and queries
both embedded as whole prompts measured worse (+4.31 points over the best single model on the
open pool, against +4.70 for questions alone, bench/routing_quality.py over seeds 0-4, on the
split before repeated questions were kept on one side), and the
options and the instruction often triple the tokens the embedding model reads (under load at
200 clients, /v1/routes went from 10.6 to 22-28 queries/s with this alone and grouped calls).
"""

from __future__ import annotations

import re

from experts.prompt_text import strip_options

_REPLY_LINE = re.compile(r"(?mi)^\s*reply with 'answer:.*$")


def question_part(text: str) -> str:
    """The question of a query (the part a replay recording is looked up by, too: the text
    before its options, its label dropped); the whole text where that leaves nothing."""
    return _REPLY_LINE.sub("", strip_options(text)).strip() or text
