"""A multiple-choice prompt's parts: where its lettered options start, and the question before them.

One rule for every reader: the replay lookup (`experts.replay`), the question a query is
embedded by (`skills.question_text`) and the options a vote counts (`orchestrator.aggregation.
vote`). Read apart, a dialogue ("A: …", "B: …" then its question) counted no options for the vote
while the lookup and the embedding cut it at its last "A:" line and lost the question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import accumulate

_LETTERS = "ABCDEFGHIJKLMNOP"
_OPTION_LINE = re.compile(r"^\s*\(?([A-Pa-p])[.):](?:\s|$)")  # "A. …", "B) …", "(C) …", "d: …"
_OPTIONS_LINE = re.compile(r"(?mi)^\s*options?:(?:\s|$)")  # "Options: 3, 4": unlettered options
_OPTIONS_LABEL = re.compile(r"(?i)\n\s*options?:\s*$")  # a label line left above the options
_LABEL = re.compile(r"^\s*(?:question|q)\s*[:.]\s*", re.IGNORECASE)


def lettered_options(text: str) -> tuple[int, int]:
    """(offset, count) of the text's lettered options: its last run of option lines A, B, … in
    order (either case; a line between two of them continues an option's text); (-1, 0) when it
    has none. Options follow the question they answer: a run that opens the text, or one that a
    question ("…?") follows, is what the question is about (a dialogue's speakers), not options."""
    lines = text.splitlines(keepends=True)
    offsets = list(accumulate((len(line) for line in lines), initial=0))
    filled = [i for i, line in enumerate(lines) if line.strip()]  # blank lines neither end nor open a run
    start, end, n = _last_lettered_run([lines[i] for i in filled])
    if start <= 0 or any("?" in lines[i] for i in filled[end + 1 :]):
        return -1, 0
    return offsets[filled[start]], n


def option_texts(text: str) -> list[str]:
    """The texts of the lettered options `lettered_options` finds, each without its letter (a
    line between two options continues the earlier one; lines after the last, such as the reply
    format, are no option's); [] when it finds none."""
    start, n = lettered_options(text)
    options: list[str] = []
    between: list[str] = []  # lines since the last option: its text, if another option follows
    for line in text[start:].splitlines() if n else ():
        m = _OPTION_LINE.match(line)
        if m is not None and len(options) < n and m.group(1).upper() == _LETTERS[len(options)]:
            if options and between:
                options[-1] = " ".join([options[-1], *between])
            options.append(line[m.end():].strip())
            between = []
        elif line.strip():
            between.append(line.strip())
    return options


def _last_lettered_run(lines: Sequence[str]) -> tuple[int, int, int]:
    """(first line, last line, count) of the last run of option lines lettered A, B, … in
    order; (-1, -1, 0) when no line opens with option A. An option line out of order ends a run."""
    last, start, n = (-1, -1, 0), 0, 0
    for i, line in enumerate(lines):
        if (m := _OPTION_LINE.match(line)) is None:
            continue
        letter = m.group(1).upper()
        if 0 < n < len(_LETTERS) and letter == _LETTERS[n]:
            n += 1
        else:
            start, n = i, int(letter == "A")
        last = (start, i, n) if n else last
    return last


def strip_label(text: str) -> str:
    return _LABEL.sub("", text)


def strip_options(text: str) -> str:
    """The part of a message before its options (`lettered_options`; without lettered ones, the
    last "Options:" line with text before it), its "Question:" label dropped. Cut at the first
    option-like line, a stem's own statements ("I. …", "(a) …" before the options) were cut off
    or left nothing: 176 MMLU-Pro questions were embedded apart from themselves in the router's
    memory."""
    start = lettered_options(text)[0]
    if start < 0:
        labels = [m.start() for m in _OPTIONS_LINE.finditer(text) if text[: m.start()].strip()]
        start = labels[-1] if labels else len(text)
    return strip_label(_OPTIONS_LABEL.sub("", text[:start]))
