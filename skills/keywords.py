"""Skill keywords for a question, as Symbolic-MoE gets them from its keyword LLM.

The prompt is the paper's, word for word; it is sampled `n_samples` times and only keywords
that several samples agree on are kept (`consolidate`). Parsing follows the paper's
`get_keywords` (text after the last "Keywords:", split on ",", strip, lower-case, drop ".",
keep items of at most 20 characters) with guards for small local models, which the paper's
frontier keyword model did not need: the marker is matched case-insensitively, the last one that
gives a keyword is read (one opening a line before one mid-sentence), only the first
non-empty line after it is read (small models keep talking after the list), with the lines a
comma list wraps onto (a separator ends one line or starts the next), unless that line starts
a numbered or bulleted list (then the list's lines are read, one keyword each),
markdown/quote characters (curly ones too) and list numbers around items are stripped ("#"
only before an item: C# keeps its own),
";" and the CJK commas separate as "," does, and the prompt's own `<keyword1>` echoed back is
no keyword. Whitespace inside a keyword is collapsed as the vocabulary's names are (`normal_form`).
"The keywords are:" is a marker too, an item with a ":" in it is a label and its text (SmolLM2's
"Psychology: 1.1.2.2.4.3."), not a keyword, and a reply cut by the token limit loses its last item
(likely a word cut short: "behavioral", "mathematical"). A reply without a marker is read whole, as
the paper does, but when no keyword is agreed a sample that had one is preferred (`consolidate`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from experts.types import ChatMessage, Generation, GenerationRequest, SamplingParams

MAX_KEYWORD_CHARS = 20
MAX_KEYWORDS = 5
_MARKER = re.compile(r"keywords(?:\s+are)?\s*[:：]", re.IGNORECASE)  # "The keywords are: a, b" too
_STRIP = " \t\"'`*_-•[]<>\u201c\u201d\u2018\u2019«»「」『』"
_HEADING = "#"  # markdown headings and tags lead an item; at its end it is C#'s or F#'s
_SEPARATOR = re.compile(r"[,;，、；]")  # small models write the list as their language does
_LIST_ITEM = re.compile(r"\s*(?:[-*•+]|\d{1,2}[.)])\s+")  # "- x", "* x", "1. x", "2) x"
_PLACEHOLDER = re.compile(r"keywords?\s*\d*")  # the prompt's "<keyword1>, <keyword2>..." copied
_LABEL = re.compile(r"[:：]")  # "psychology: 112243": a label and its text, no keyword
_CUT_ITEM = re.compile(r"[^,;，、；\n]*\Z")  # the text after a reply's last separator or line break


def keyword_prompt(question: str) -> str:
    """The paper's keyword prompt for one question."""
    return (
        f"Question: {question}\nWhat are the core knowledge, subjects or skills needed to solve "
        "this problem? List 2-5 keywords separated in comma. Example keywords: psychology, "
        "virology, behavioral theory, microbiology, diplomacy, political science, property law, "
        "finance, business. Give ONLY the keywords, no other words or explanation. Follow this "
        "format: Keywords: <keyword1>, <keyword2>..."
    )


def parse_keywords(text: str, cut: bool = False) -> list[str]:
    """Keywords in one reply, in order, without duplicates: after the last marker that gives any
    (see `_tails`); `cut`: the reply hit the token limit, so its last item is dropped."""
    return read_reply(text, cut)[0]


def read_reply(text: str, cut: bool = False) -> tuple[list[str], bool]:
    """`parse_keywords`, and whether a marker gave them: a reply without one is read whole, and
    is as likely prose ("…other viruses, such as cyt") as a list."""
    if cut:  # the last item may be a word cut short: no keyword, or worse a wrong one
        text = _CUT_ITEM.sub("", text)
    for tail in _tails(text):
        if keywords := _parsed(_keyword_lines(tail)):
            return keywords, _MARKER.search(text) is not None  # a marker found reads only its tails
    return [], False


def _tails(text: str) -> list[str]:
    """The text after each marker, last first: markers opening a line before others (a "these
    keywords: …" mid-sentence is the model talking), and each one in turn where a later one gives
    nothing (the prompt's format line "Keywords: <keyword1>, …" echoed after the list, or before
    "I think the keywords are: …": the mid-sentence ones are still tried after the opening ones)."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        return [text]
    opening = [m for m in markers if not text[text.rfind("\n", 0, m.start()) + 1 : m.start()].strip(_STRIP + _HEADING)]
    inside = [m for m in markers if m not in opening]
    return [text[m.end() :] for m in [*reversed(opening), *reversed(inside)]]


def _parsed(lines: list[str]) -> list[str]:
    out: list[str] = []
    for item in (i for line in lines for i in _SEPARATOR.split(line)):
        keyword = _clean(item)
        if keyword and len(keyword) <= MAX_KEYWORD_CHARS and not _LABEL.search(keyword) and keyword not in out:
            out.append(keyword)
    return out


def _keyword_lines(tail: str) -> list[str]:
    """The first non-empty line of a marker's tail, with the lines its comma list wraps onto;
    a list started there is read whole (its consecutive item lines), as a list puts one keyword
    on each line."""
    lines = [ln for ln in tail.splitlines() if ln.strip(_STRIP + _HEADING)]
    if lines and _LIST_ITEM.match(lines[0]):
        return _list_items(lines)
    return _wrapped(lines)


def _wrapped(lines: list[str]) -> list[str]:
    """The first line and the next ones while a separator ends one or starts the next: a comma
    list wrapped. A line that does neither is the model talking after its list."""
    kept = lines[:1]
    for line in lines[1:]:
        if not _continues(kept[-1], line):
            break
        kept.append(line)
    return kept


def _continues(line: str, after: str) -> bool:
    """Whether `after` carries on `line`'s comma list: a separator ends one or starts the other."""
    return bool(_SEPARATOR.fullmatch(line.rstrip(_STRIP)[-1:]) or _SEPARATOR.fullmatch(after.lstrip(_STRIP)[:1]))


def _list_items(lines: list[str]) -> list[str]:
    """A numbered or bulleted list's consecutive item lines."""
    items = []
    for line in lines:
        if not _LIST_ITEM.match(line):
            break  # the list is over: what follows is the model talking
        items.append(line)
    return items


def _clean(item: str) -> str:
    """One item as the paper keeps it (lower-cased, no "."), without list marks or quotes; ""
    for the prompt's placeholder echoed back."""
    item = item.strip()
    mark = _LIST_ITEM.match(item)  # at the start only: "supply - demand" is one keyword, not "supplydemand"
    keyword = item[mark.end() if mark else 0:].replace(".", "").strip(_STRIP)
    keyword = normal_form(keyword.lstrip(_HEADING).strip(_STRIP))
    return "" if _PLACEHOLDER.fullmatch(keyword) else keyword


def normal_form(name: str) -> str:
    """A skill name as profiles and the vocabulary both key it: lower-cased, every run of
    whitespace (non-breaking spaces too) one space. Two forms of one name left a skill mapped
    to the vocabulary's form with no profile entry under it."""
    return " ".join(name.split()).lower()


def consolidate(samples: Sequence[Sequence[str]], min_count: int = 2, most: int = MAX_KEYWORDS,
                marked: Sequence[bool] = ()) -> list[str]:
    """Keywords named by at least `min_count` samples, in first-seen order; at most `most` (the
    prompt asks for 2-5): the best agreed, ties to the first seen. Small models sometimes copy
    the prompt's example list whole, which would otherwise give a question ten "skills".

    A keyword counts once per sample (repeating it inside one reply is not agreement). When no
    keyword reaches `min_count`, the first non-empty sample's keywords are returned: with every
    count at 1 no sample is better supported than another, the first is reproducible, and a
    question with no skills could never be routed or profiled. `marked[i]`: sample i's reply had
    a "Keywords:" marker; the first such sample is taken before any without (`_fallback`).
    """
    counts: Counter[str] = Counter()
    order: list[str] = []
    for sample in samples:
        for keyword in dict.fromkeys(sample):
            counts[keyword] += 1
            if counts[keyword] == 1:
                order.append(keyword)
    agreed = [k for k in order if counts[k] >= min_count]
    if not agreed:
        return list(dict.fromkeys(_fallback(samples, marked)))[:most]
    kept = set(sorted(agreed, key=lambda k: (-counts[k], order.index(k)))[:most])
    return [k for k in agreed if k in kept]


def _fallback(samples: Sequence[Sequence[str]], marked: Sequence[bool]) -> Sequence[str]:
    """The first non-empty sample whose reply had a marker, else the first non-empty one: a reply
    without a marker is read whole, so SmolLM2's prose ("such as cyt") came before a later
    sample's "Keywords: psychology, virology"."""
    flags = [i < len(marked) and marked[i] for i in range(len(samples))]
    ranked = sorted(range(len(samples)), key=lambda i: not flags[i])  # stable: first seen first
    return next((samples[i] for i in ranked if samples[i]), [])


def keyword_requests(
    question_id: str,
    question: str,
    n_samples: int = 5,
    temperature: float = 0.7,
    max_tokens: int = 32,
    seed: int = 0,
    timeout_s: float | None = None,
) -> list[GenerationRequest]:
    """`n_samples` keyword requests for one question, ids f"{question_id}#kw{j}", seeds distinct
    so that a seeded backend really draws different samples; each gives up after the keyword
    expert's `timeout_s` as its other requests do."""
    messages = [ChatMessage(role="user", content=keyword_prompt(question))]
    return [
        GenerationRequest(
            request_id=f"{question_id}#kw{j}",
            messages=messages,
            sampling=SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=(seed + j) % 2**31),
            timeout_s=timeout_s,
        )
        for j in range(n_samples)
    ]


def question_id_of(request_id: str) -> str | None:
    """The question id inside a keyword request id, or None for any other request."""
    head, sep, tail = request_id.rpartition("#kw")
    return head if sep and tail.isdigit() else None


def keywords_from_generations(
    question_ids: Iterable[str], generations: Iterable[Generation], min_count: int = 2
) -> dict[str, list[str]]:
    """Consolidated keywords per question (an empty list for a question with no replies); a
    reply that hit the token limit (finish_reason "length") is read without its last item."""
    replies: dict[str, list[tuple[int, list[str], bool]]] = defaultdict(list)
    for gen in generations:
        qid = question_id_of(gen.request_id)
        if qid is not None:
            sample_index = int(gen.request_id.rpartition("#kw")[2])
            replies[qid].append((sample_index, *read_reply(gen.text, gen.finish_reason == "length")))
    return {qid: _consolidated(replies.get(qid, []), min_count) for qid in question_ids}


def _consolidated(replies: list[tuple[int, list[str], bool]], min_count: int) -> list[str]:
    """One question's (sample index, keywords, marked) replies consolidated."""
    ordered = sorted(replies)  # by sample index: the fallback does not depend on reply order
    return consolidate([kw for _, kw, _ in ordered], min_count, marked=[m for _, _, m in ordered])
