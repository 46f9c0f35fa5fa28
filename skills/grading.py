"""Reading an expert's answer out of free text and grading it against gold.

Choice extraction goes from the most explicit signal to the least, and gives up (None) rather
than guess when the weak signals disagree: a wrong letter would count as evidence against the
expert in its profile, while None is simply a wrong answer that a better extractor could not
have recovered either. The text is NFKC-normalised first ("答案：Ｂ" reads as "答案:B").

    1. an "answer" marker: "Answer: C", "the answer is (C)", "Final answer: **c**". Markers that
       open a line (the format the prompts ask for) outrank the others: "Response 1's answer (C)
       is wrong" in the explanation is not the reply's. Among those read, the last one wins
       (models restate their final pick at the end: "The answer is A... wait, the answer is C").
       "Answer:" followed by a text rather than a letter ("Answer: Vitamin D", "Answer: B12")
       commits to no letter;
    2. \\boxed{C};
    3. a letter that opens the reply: "C", "C. Paris", "(C) Paris", "C) …", "C: …", "C, since …",
       and a lower-case one only in forms no English word takes: "(c)", "c) …", "c. …", "**c**"
       ("a dog", "e.g." are words). Letters listed up front ("(A)/(C)", "B, D") are no pick:
       a list need not be one ("B, C and D are wrong; A is correct"), the weaker signals read on;
    4. a letter the text commits to in words ("the correct option is D", "I choose option B",
       "B is correct"); a mere mention ("Option C would be true if…") commits to nothing;
    5. otherwise the distinct standalone letters "(C)" / " C " in the text: one letter → it,
       several → None. "A" and "I" followed by an ordinary word are English ("A good question",
       "I think"), not options; followed by "and"/"or" they are letters ("A and B are plausible").

A letter followed by another ("Answer: A or B", "Answer: A, C") is a hedge: None, whatever follows.
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Context
from functools import lru_cache
from typing import Literal

LETTERS = "ABCDEFGHIJKLMNOP"

# Its whitespace runs are possessive (`\s*+`): nothing after one starts with whitespace, so giving
# some back never makes a match, and with plain `\s*` each of the five runs could take any share of
# one long blank stretch: "answer:" + 200 spaces + "x" (a feedback answer, a degenerate reply)
# took 53 s to fail, 2,000 spaces would take hours. A letter before a digit is a name ("B12").
_MARKER = re.compile(
    r"\banswer\b\s*+(?:is|:|=|would be|should be)?\s*+(?:option|choice)?\s*+"
    r"[:\-]?\s*+[\*\"'`$]*\s*+[\(\[]?\s*+(?P<letter>[A-Pa-p])\s*[\)\]]?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# "Answer:" then a word or a letter before a digit, on the same line: a text, not a letter.
_ANSWER_TEXT = re.compile(r"answer\b[ \t*_]*+:[ \t*\"'`$]*+(?:[A-Za-z](?=[A-Za-z0-9])|\d)", re.IGNORECASE)
# Words after "Answer:" that lead on to a pick ("Answer: The correct option is B", "Answer: The
# final answer is \\boxed{C}"): the text is then no answer of its own. Lazy and stopped by the next
# "answer", so the markers of one long line are scanned once in all.
_DEFERS = re.compile(r"[^\n]*?(?:\b(?:answer|option|choice)\b|\\boxed)", re.IGNORECASE)
# An "answer" that opens a line, after list or emphasis marks and "Final"/"Correct".
_ANSWER_LINE = re.compile(r"^[ \t>*#_\-]*+(?:(?:final|correct)[ \t]++)?(?P<at>answer)\b", re.IGNORECASE | re.MULTILINE)
# A letter committed to in words, before it ("the correct option is D", "I choose option B") or
# after it ("B is correct", "Option C: correct", "A is the answer"); "incorrect" is no "correct".
_COMMITTED = re.compile(
    r"\b(?i:(?:correct|right|best)\s++(?:option|choice)|(?:choose|chose|pick|select|go\s++with)\s++"
    r"(?:option|choice)|my\s++choice)\s*+(?i:is|would\s++be|should\s++be)?\s*+[:\-]?\s*+[\*\"'`$]*+"
    r"[\(\[]?(?P<before>[A-Pa-p])(?![A-Za-z0-9])"
    r"|(?<![\w'’])(?P<after>[A-P])[\)\]\*]*+(?:\s++is|\s*+:)\s++(?:the\s++)?(?:correct|right|best|answer)\b"
)
# "I, for one, …" opens with the pronoun: a comma after "I" is English.
_LEADING = re.compile(r"^\s*+[\*\"'`#]*\s*+[\(\[]?([A-P])(?:\s*[\)\].:*]|(?<!I),|\s*$|\s*\n)")
# A lower-case letter opens a reply as a pick only closed the way no word is: "(b)", "b)", "**b**",
# "b." before a blank ("e.g." and "i.e." go on with a letter, "a dog" has no mark at all).
_LEADING_LOWER = re.compile(r"^\s*+(?:\*\*(?=[a-p]\*\*)|\(?)([a-p])(?:\*\*|\)|\.(?=\s|$))")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])\(?([A-P])\)?(?![A-Za-z0-9'’])")
# After these words an "A"/"I" is still an option letter ("A is correct", "A or B"): an article
# or a pronoun never comes before them.
_WORDS_AFTER_OPTION = {"is", "was", "seems", "appears", "looks", "and", "or", "nor", "vs", "versus"}
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
_ALONE = re.compile(r"\s*($|[)\].,;:*\n])")
# A letter followed by another: "Answer: A or B", "(A)/(C)", "A, C and D": no commitment. A lower-
# case one must be closed to count ("(b) or (c)"): "B, because" and "A, a guess" name one letter.
_HEDGE = re.compile(r"[\)\]]?\s*+(?:,|\bor\b|\band\b|/|&)\s*+[\(\[]?([A-P](?![A-Za-z0-9'’])|[a-p](?=[\)\]]))")

# A number: "1,234", "-3.5", ".5", "1.5e3", a fraction "3/4" or "\\frac{1}{2}" (read whole: its
# numerator or denominator alone would be a wrong answer graded as if the reply meant it). A
# number inside braces or after "^", "_", "\\" is a piece of LaTeX ("\\frac{\\pi}{2}", "x^{2}"),
# not one; but one after "17x", "2^" or "\\times" is an operand ("17x23=391", "2^10 = 1024").
# Scientific notation "1.5 × 10^3" is one number too: read as operands it states no result (and 3 was read).
_DECIMAL = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+(?![\w.]))?"
_TIMES_TEN = r"\s*+(?:[×xX*·]|\\times|\\cdot)\s*+10\^\{?(?P<exp>[+-]?\d{1,3})\}?"  # 3 digits: a float's range
_NUMBER = re.compile(
    rf"(?P<fsign>-?)\\[dt]?frac\{{\s*(?P<fnum>-?{_DECIMAL})\s*\}}\{{\s*(?P<fden>-?{_DECIMAL})\s*\}}"
    rf"|(?:(?<![\w.{{^_\\/])|(?<=\d[xX^])|(?<=\\times)|(?<=\\cdot)|(?<=\\div))(?P<num>-?{_DECIMAL})(?:{_TIMES_TEN}|/(?P<den>{_DECIMAL}))?(?![\d}}/])"
)
_MINUS = str.maketrans({"\u2212": "-"})  # the Unicode minus sign, as LaTeX-to-text output writes it
_ANSWER_WORD = re.compile(r"\banswer\b", re.IGNORECASE)
_EQUALS = re.compile(r"\s*(?:=|\\approx|≈)\s*")
# What the last-number fallback leaves out: a parenthesis right after a number, on its line
# (`extract_number`), and a number right after "not".
_ASIDE = re.compile(r"\s*+\([^()\n]*\)")
_NOT = re.compile(r"\bnot\s+$")
_OPERATOR = re.compile(r"\s*(?:[-+*/×xX·÷^]|\\times|\\cdot|\\div)\s*")


@lru_cache(maxsize=8192)  # bounded; profiling grades the same short replies over and over
def extract_choice(text: str, n_options: int) -> str | None:
    """The option letter the text commits to, or None (see the module doc for the precedence)."""
    text = unicodedata.normalize("NFKC", text)  # fullwidth "Ｂ", "：" as models writing CJK use
    valid = LETTERS[: max(0, min(n_options, len(LETTERS)))]
    for finder in (_from_answer, _from_boxed, _from_leading, _from_committed, _from_standalone):
        letter = finder(text, valid)
        if letter is not None:
            return letter or None  # "": the reply hedged ("Answer: A or B"), no weaker signal overrules it
    return None


def answer_markers(text: str) -> list[tuple[int, int]]:
    """The spans of the "answer" words to read: those that open a line ("Answer: B", the format
    the prompts ask for) when there are any, else all: an answer the explanation after an
    answer line mentions ("Response 1's answer (C) is wrong") is not the reply's."""
    lines = [m.span("at") for m in _ANSWER_LINE.finditer(text)]
    return lines or [m.span() for m in _ANSWER_WORD.finditer(text)]


def _from_answer(text: str, valid: str) -> str | None:
    """What the last marker that says something commits to (`_read_answer`)."""
    for start, _ in reversed(answer_markers(text)):
        if (letter := _read_answer(text, start, valid)) is not None:
            return letter
    return None


def _read_answer(text: str, start: int, valid: str) -> str | None:
    """The letter of the marker at `start`; "" when it commits to no letter (a hedge, a text:
    "Answer: Vitamin D"); None when it says nothing to read (a letter out of range, "\\boxed")."""
    m = _MARKER.match(text, start)
    if m is not None and _letter_ok(text, m.start("letter"), m.end("letter")):
        letter = m["letter"].upper()
        if letter not in valid:
            return None
        return "" if _hedged(text, m.end("letter")) else letter
    if _ANSWER_TEXT.match(text, start) and not _DEFERS.match(text, start + len("answer")):
        return ""
    return None


def _letter_ok(text: str, start: int, end: int) -> bool:
    """A lower-case letter must stand alone ("answer: c."), not open a word ("is a good"); after
    a marker a capital is the letter, even "A"/"I" before a word ("Answer: A because")."""
    return text[start].isupper() or _ALONE.match(text, end) is not None


def _hedged(text: str, end: int) -> bool:
    """Whether another letter follows the one that ends at `end` ("A or B", "A, C"); "A"/"I"
    before an ordinary word are English ("Answer: C, I think"), not a second pick."""
    m = _HEDGE.match(text, end)
    return m is not None and _is_option_letter(text, m.start(1), m.end(1))


def _from_boxed(text: str, valid: str) -> str | None:
    boxed = extract_boxed(text)
    if boxed is None:
        return None
    inner = re.sub(r"\\text\{([^}]*)\}", r"\1", boxed).strip(" ()$")
    return inner.upper() if len(inner) == 1 and inner.upper() in valid else None


def _from_leading(text: str, valid: str) -> str | None:
    """The letter that opens the reply; None when another follows it ("(A)/(C)", "B) and D)"):
    unlike a hedged "Answer: A or B", a list up front may be the rejected ones, so read on."""
    m = _LEADING.match(text) or _LEADING_LOWER.match(text)
    if m is None or m[1].upper() not in valid or _hedged(text, m.end(1)) or _walks(text, m[1]):
        return None
    return m[1].upper()


def _walks(text: str, letter: str) -> bool:
    """Whether the reply opens by going through the options in turn, naming the first to judge
    it: the next letter (or a roman "ii") opens a later line the same way ("a) wrong\nb) wrong\n
    c) right"), or, in lower case, follows in brackets ("(a) is wrong … (b) … (c) fits")."""
    after = "|".join(re.escape(n) for n in (chr(ord(letter) + 1), letter * 2))
    later = text.find("\n")
    if later >= 0 and re.search(rf"(?m)^\s*+[\*\"'`#]*\s*+[\(\[]?(?:{after})[\)\].:]", text[later:]):
        return True
    return letter.islower() and re.search(rf"\((?:{after})\)", text) is not None


def _from_committed(text: str, valid: str) -> str | None:
    """The last letter the text commits to in words (`_COMMITTED`), "" when hedged."""
    last: tuple[re.Match[str], str] | None = None
    for m in _COMMITTED.finditer(text):
        group = "before" if m["before"] else "after"
        if m[group].upper() in valid and _letter_ok(text, m.start(group), m.end(group)):
            last = m, group
    if last is None:
        return None
    m, group = last
    return "" if _hedged(text, m.end(group)) else m[group].upper()


def _from_standalone(text: str, valid: str) -> str | None:
    found = {m.group(1) for m in _STANDALONE.finditer(text) if _is_option_letter(text, m.start(1), m.end())}
    found &= set(valid)
    return found.pop() if len(found) == 1 else None


def _is_option_letter(text: str, start: int, end: int) -> bool:
    """False for the English words "A" and "I" (the letter at `start`) when an ordinary
    lower-case word follows `end`."""
    if text[start - 1 : start] == "(" or text[start] not in "AI":
        return True
    nxt = _NEXT_WORD.match(text, end)  # from `end`, not a slice: a long reply has many letters
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
    """The last number the text states: "1,234" → 1234, "-3.5" → -3.5, "391." → 391, "3/4" → 0.75.
    One it rejects is not stated ("391, not 400"), nor are those of a parenthesis after a lone
    number: an aside on it ("391 (the product of 17 and 23)"). After an expression the
    parenthesis gives the result instead ("17*23 (which is 391)"), and is read."""
    text = text.translate(_MINUS)
    last, prev, aside_end = None, None, -1
    for m in _NUMBER.finditer(text):
        if m.start() < aside_end:
            continue
        if not _NOT.search(text, max(0, m.start() - 8), m.start()):  # a window: "not" is short
            last = m
        if (aside := _ASIDE.match(text, m.end())) and (prev is None or _joint(text[prev.end() : m.start()]) != "op"):
            aside_end = aside.end()
        prev = m
    return _value(last) if last is not None else None


def _value(m: re.Match[str]) -> float | None:
    """A `_NUMBER` match's value; None for a fraction over zero."""
    if m.group("fnum") is not None:
        sign = -1.0 if m.group("fsign") else 1.0
        return _ratio(sign * _decimal(m.group("fnum")), _decimal(m.group("fden")))
    if m.group("exp") is not None:  # a Decimal scales exactly ("1.1 × 10^3": 1100); untrapped: inf, not a raise
        exact = Context(traps=[])
        return float(exact.create_decimal(m.group("num").replace(",", "")).scaleb(int(m.group("exp")), exact))
    den = m.group("den")
    return _decimal(m.group("num")) if den is None else _ratio(_decimal(m.group("num")), _decimal(den))


def _decimal(token: str) -> float:
    return float(token.replace(",", ""))


def _ratio(num: float, den: float) -> float | None:
    return num / den if den != 0 else None


def _to_float(token: str) -> float | None:
    """A whole string as one number ("391", "+5", "−5", "3/4"), else None."""
    token = token.strip().translate(_MINUS)
    m = _NUMBER.fullmatch(token[1:] if token.startswith("+") else token)  # a gold "+5" is 5
    return _value(m) if m is not None else None


def extract_answer_number(text: str) -> float | None:
    """The number an answer commits to: boxed, else the first result after the last "answer"
    marker that has one (`answer_markers`: the reasoning that follows "Answer: 391" has numbers
    of its own), else the last number. A result is a lone number or an equation's lone side ("17*23 = 391" → 391): the
    operands of a restated sum ("The answer to 17*23 is 391") are not what the reply commits to."""
    boxed = extract_boxed(text)
    if boxed is not None and (value := _first_result(boxed.translate(_MINUS), 0)) is not None:
        return value
    text = text.translate(_MINUS)
    value = _result_after_last(text, answer_markers(text))
    return value if value is not None else extract_number(text)


def _result_after_last(text: str, markers: list[tuple[int, int]]) -> float | None:
    """The first result after the last marker that has one. Each marker's scan stops where the
    next one starts: past it, that later scan found nothing, and reading on from each marker
    would be quadratic (a looping reply repeats "The answer is 17*23." thousands of times)."""
    stop = len(text)
    for start, end in reversed(markers):
        if (value := _first_result(text, end, stop)) is not None:
            return value
        stop = start
    return None


def _first_result(text: str, start: int, stop: int | None = None) -> float | None:
    """The value of the first run of numbers in text[start:stop] that has a result (`_result`)."""
    run: list[list[re.Match[str]]] = []
    for m in _NUMBER.finditer(text, start, len(text) if stop is None else stop):
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
