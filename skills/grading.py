"""Reading an expert's answer out of free text and grading it against gold.

Choice extraction goes from the most explicit signal to the least, and gives up (None) rather
than guess when the weak signals disagree: a wrong letter would count as evidence against the
expert in its profile, while None is simply a wrong answer that a better extractor could not
have recovered either.

    1. an "answer" marker: "Answer: C", "the answer is (C)", "Final answer: **c**" (the last one
       wins: models restate their final pick at the end); without one, the last "option"/"choice"
       marker ("the correct option is D"): after an answer, "option A is wrong" is reasoning;
    2. \\boxed{C};
    3. a letter that opens the reply: "C", "C. Paris", "(C) Paris", "C) …", "C: …";
    4. otherwise the distinct standalone letters "(C)" / " C " in the text: one letter → it,
       several → None. "A" and "I" followed by an ordinary word are English ("A good question",
       "I think"), not options; followed by "and"/"or" they are letters ("A and B are plausible").

A marker's letter followed by another ("Answer: A or B") is a hedge: None, whatever follows.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Literal

LETTERS = "ABCDEFGHIJKLMNOP"

# Its whitespace runs are possessive (`\s*+`): nothing after one starts with whitespace, so giving
# some back never makes a match, and with plain `\s*` each of the five runs could take any share of
# one long blank stretch: "answer:" + 200 spaces + "x" (a feedback answer, a degenerate reply)
# took 53 s to fail, 2,000 spaces would take hours.
_MARKER = re.compile(
    r"\b(?P<word>answer|option|choice)\b\s*+(?:is|:|=|would be|should be)?\s*+(?:option|choice)?\s*+"
    r"[:\-]?\s*+[\*\"'`$]*\s*+[\(\[]?\s*+(?P<letter>[A-Pa-p])\s*[\)\]]?(?![A-Za-z])",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^\s*+[\*\"'`#]*\s*+[\(\[]?([A-P])(?:\s*[\)\].:*]|\s*$|\s*\n)")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])\(?([A-P])\)?(?![A-Za-z0-9'’])")
# After these words an "A"/"I" is still an option letter ("A is correct", "A or B"): an article
# or a pronoun never comes before them.
_WORDS_AFTER_OPTION = {"is", "was", "seems", "appears", "looks", "and", "or", "nor", "vs", "versus"}
# A marker's letter followed by another: "Answer: A or B", "the answer is (A)/(C)": no commitment.
_HEDGE = re.compile(r"[\)\]]?\s*(?:or|and|/)\s*[\(\[]?[A-P]\b")
# A number: "1,234", "-3.5", ".5", "1.5e3", a fraction "3/4" or "\\frac{1}{2}" (read whole: its
# numerator or denominator alone would be a wrong answer graded as if the reply meant it). A
# number inside braces or after "^", "_", "\\" is a piece of LaTeX ("\\frac{\\pi}{2}", "x^{2}"),
# not one.
_DECIMAL = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+(?![\w.]))?"
_NUMBER = re.compile(
    rf"(?P<fsign>-?)\\[dt]?frac\{{\s*(?P<fnum>-?{_DECIMAL})\s*\}}\{{\s*(?P<fden>-?{_DECIMAL})\s*\}}"
    rf"|(?<![\w.{{^_\\/])(?P<num>-?{_DECIMAL})(?:/(?P<den>{_DECIMAL}))?(?![\d}}/])"
)
_MINUS = str.maketrans({"\u2212": "-"})  # the Unicode minus sign, as LaTeX-to-text output writes it
_ANSWER_WORD = re.compile(r"\banswer\b", re.IGNORECASE)
_EQUALS = re.compile(r"\s*(?:=|\\approx|≈)\s*")
_OPERATOR = re.compile(r"\s*(?:[-+*/×x·÷^]|\\times|\\cdot|\\div)\s*")


@lru_cache(maxsize=8192)  # bounded; profiling grades the same short replies over and over
def extract_choice(text: str, n_options: int) -> str | None:
    """The option letter the text commits to, or None (see the module doc for the precedence)."""
    valid = LETTERS[: max(0, min(n_options, len(LETTERS)))]
    for finder in (_from_marker, _from_boxed, _from_leading, _from_standalone):
        letter = finder(text, valid)
        if letter is not None:
            return letter or None  # "": the reply hedged ("Answer: A or B"), no weaker signal overrules it
    return None


def _from_marker(text: str, valid: str) -> str | None:
    """The last "answer" marker's letter, else the last "option"/"choice" one's: "Answer: B.
    Option A is wrong" commits to B; a later mention of an option is reasoning about it."""
    picks = [m for m in _MARKER.finditer(text) if _marker_letter_ok(text, m) and m["letter"].upper() in valid]
    answers = [m for m in picks if m["word"].lower() == "answer"]
    if not picks:
        return None
    last = (answers or picks)[-1]
    return "" if _HEDGE.match(text, last.end("letter")) else last["letter"].upper()


def _marker_letter_ok(text: str, m: re.Match[str]) -> bool:
    """A lower-case letter must stand alone ("answer: c."), not open a word ("is a good")."""
    rest = text[m.end("letter") :]
    if m["letter"].islower():
        return re.match(r"\s*($|[)\].,;:*\n])", rest) is not None
    # Right after "answer" a capital is the letter, even "A"/"I" before a word ("Answer: A because")
    return m["word"].lower() == "answer" or _is_option_letter(text, m.start("letter"), m.end("letter"))


def _from_boxed(text: str, valid: str) -> str | None:
    boxed = extract_boxed(text)
    if boxed is None:
        return None
    inner = re.sub(r"\\text\{([^}]*)\}", r"\1", boxed).strip(" ()$")
    return inner.upper() if len(inner) == 1 and inner.upper() in valid else None


def _from_leading(text: str, valid: str) -> str | None:
    m = _LEADING.match(text)
    if m is None or m.group(1) not in valid:
        return None
    return m.group(1)


def _from_standalone(text: str, valid: str) -> str | None:
    found = {m.group(1) for m in _STANDALONE.finditer(text) if _is_option_letter(text, m.start(1), m.end())}
    found &= set(valid)
    return found.pop() if len(found) == 1 else None


def _is_option_letter(text: str, start: int, end: int) -> bool:
    """False for the English words "A" and "I" (the letter at `start`) when an ordinary
    lower-case word follows `end`."""
    if text[start - 1 : start] == "(" or text[start] not in "AI":
        return True
    nxt = re.match(r"\s+([a-z]+)", text[end:])
    return nxt is None or nxt.group(1) in _WORDS_AFTER_OPTION


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{…} (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unbalanced: the reply was cut off inside the box


def extract_number(text: str) -> float | None:
    """The last number in the text: "1,234" → 1234, "-3.5" → -3.5, "391." → 391, "3/4" → 0.75."""
    found = list(_NUMBER.finditer(text.translate(_MINUS)))
    return _value(found[-1]) if found else None


def _value(m: re.Match[str]) -> float | None:
    """A `_NUMBER` match's value; None for a fraction over zero."""
    if m.group("fnum") is not None:
        sign = -1.0 if m.group("fsign") else 1.0
        return _ratio(sign * _decimal(m.group("fnum")), _decimal(m.group("fden")))
    den = m.group("den")
    return _decimal(m.group("num")) if den is None else _ratio(_decimal(m.group("num")), _decimal(den))


def _decimal(token: str) -> float:
    return float(token.replace(",", ""))


def _ratio(num: float, den: float) -> float | None:
    return num / den if den != 0 else None


def _to_float(token: str) -> float | None:
    """A whole string as one number ("391", "−5", "3/4"), else None."""
    m = _NUMBER.fullmatch(token.strip().translate(_MINUS))
    return _value(m) if m is not None else None


def extract_answer_number(text: str) -> float | None:
    """The number an answer commits to: boxed, else the first result after the last "answer"
    marker (the reasoning that follows "Answer: 391" has numbers of its own), else the last
    number. A result is a lone number or an equation's lone side ("17*23 = 391" → 391): the
    operands of a restated sum ("The answer to 17*23 is 391") are not what the reply commits to."""
    boxed = extract_boxed(text)
    if boxed is not None and (value := _first_result(boxed.translate(_MINUS), 0)) is not None:
        return value
    text = text.translate(_MINUS)
    for marker in reversed(list(_ANSWER_WORD.finditer(text))):
        if (value := _first_result(text, marker.end())) is not None:
            return value
    return extract_number(text)


def _first_result(text: str, start: int) -> float | None:
    """The value of the first run of numbers from `start` that has a result (`_result`)."""
    run: list[list[re.Match[str]]] = []
    for m in _NUMBER.finditer(text, start):
        joint = _joint(text[run[-1][-1].end() : m.start()]) if run else None
        if joint == "=":
            run.append([m])
        elif joint == "op":
            run[-1].append(m)
        elif run and (found := _result(run)) is not None:
            return _value(found)
        else:
            run = [[m]]
    return _value(found) if run and (found := _result(run)) is not None else None


def _joint(gap: str) -> str | None:
    """How two numbers a `gap` apart are joined: "=" (two sides), "op" (one expression), or None."""
    if _EQUALS.fullmatch(gap):
        return "="
    return "op" if _OPERATOR.fullmatch(gap) else None


def _result(sides: list[list[re.Match[str]]]) -> re.Match[str] | None:
    """A run's result: its last side when that is one number ("17*23 = 391"), else its first
    ("391 = 17*23"); None when neither is (a bare "17*23" states no result)."""
    for side in (sides[-1], sides[0]):
        if len(side) == 1:
            return side[0]
    return None


def grade(text: str, gold: str, kind: Literal["choice", "number"], n_options: int = 4) -> bool:
    """Whether the reply's answer equals gold (numbers within a relative 1e-6)."""
    if kind == "choice":
        return extract_choice(text, n_options) == gold.strip().upper()
    value, target = extract_answer_number(text), _to_float(gold.strip())
    if value is None or target is None:
        return False
    return math.isclose(value, target, rel_tol=1e-6, abs_tol=1e-9)
