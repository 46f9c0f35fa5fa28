"""Replay experts: real LLMs answering from their recorded answers.

A recording folder holds `questions.jsonl.gz` (question_id, category, src, question, options,
answer) and `predictions.csv.gz` (question_id, then one column per model holding the letter that
model answered; empty when its reply had no parseable choice). Plain `.jsonl` / `.csv` files are
read too. A `ReplayBackend` finds the corpus question in a request's user message (the question
text, usually followed by its lettered options) and replies "Answer: <letter>".

Cost is simulated from the model's size (`experts.cost_model`): the recording keeps only the
letter, so a reply's `latency_s` is what the real model would take on the reference device to
read the prompt and write a chain of thought of `cot_tokens` tokens. That reply is the recorded
one whatever a request's `max_tokens`: no recorded thought exists to cut, and the letter it ended
in is the answer. A request's stop strings do cut the reply's text.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TextIO

from experts.backend import BackendError, ModelSourceError
from experts.cost_model import ModelCost, approx_prompt_tokens, model_cost
from experts.devices import CostEstimate
from experts.prompt_text import strip_label, strip_options
from experts.replay_ids import recorded_id
from experts.types import BaseModelSpec, Generation, GenerationRequest

QUESTIONS_FILE = "questions.jsonl"
PREDICTIONS_FILE = "predictions.csv"
NO_ANSWER_TEXT = "No answer."  # what a model whose recorded reply had no choice says
COT_TOKENS = 256  # the chain of thought a recorded model is charged for before its letter
_NULL_CELLS = {"", "none", "nan", "null", "na", "n/a"}


@dataclass(frozen=True)
class RecordedQuestion:
    question_id: str
    category: str
    question: str
    options: tuple[str, ...]
    answer: str  # the gold letter
    src: str = ""


def normalise_text(text: str) -> str:
    """Case, Unicode form and whitespace never decide which question a message is."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _data_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise ModelSourceError(f"recording folder {folder} has no {name}.gz (or {name})")


def _open_text(path: Path) -> TextIO:
    # utf-8-sig: a file saved with a byte-order mark (Excel's "CSV UTF-8") reads as without one
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


def read_questions(path: str | Path) -> list[RecordedQuestion]:
    """The questions of a recording folder (`questions.jsonl.gz` or `.jsonl`), or of that file."""
    path = Path(path)
    return list(_read_questions(_data_file(path, QUESTIONS_FILE) if path.is_dir() else path))


def _read_questions(path: Path) -> Iterator[RecordedQuestion]:
    with _open_text(path) as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield _question(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ModelSourceError(f"{path} line {number}: not a recorded question ({exc!r})") from exc


def _question(row: dict[str, object]) -> RecordedQuestion:
    options = row.get("options") or ()
    if not isinstance(options, list | tuple):
        raise TypeError("options must be a list")
    return RecordedQuestion(
        question_id=recorded_id(row["question_id"]),  # refused past what the store keeps
        category=str(row.get("category") or "unknown").strip().lower(),
        question=str(row["question"]),
        options=tuple(str(o) for o in options),
        answer=str(row["answer"]).strip().upper(),
        src=str(row.get("src") or ""),
    )


def _read_predictions(path: Path) -> tuple[list[str], dict[str, dict[str, str | None]]]:
    """Model columns and, per model, question id → letter (None: recorded, no choice)."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or header[0].strip() != "question_id":
            raise ModelSourceError(f"{path} must start with a 'question_id' column")
        models = [m.strip() for m in header[1:]]
        if len(set(models)) != len(models) or "" in models:
            raise ModelSourceError(f"{path}: model columns must be named and distinct")
        answers: dict[str, dict[str, str | None]] = {m: {} for m in models}
        for row in reader:
            for model, cell in zip(models, row[1:], strict=False):
                letter = cell.strip().upper()
                answers[model][row[0].strip()] = None if letter.lower() in _NULL_CELLS else letter
    return models, answers


def write_recording(
    folder: str | Path,
    questions: Sequence[RecordedQuestion],
    answers: Mapping[str, Mapping[str, str | None]],
) -> Path:
    """Write a recording folder (model → question id → letter or None); a question a model has
    no answer for is left out of its row's cell (an empty cell reads back as "no choice", so
    only a shorter row can say "not recorded": give every model every question to be safe)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with gzip.open(path / f"{QUESTIONS_FILE}.gz", "wt", encoding="utf-8") as fh:
        for q in questions:
            row = {
                "question_id": q.question_id,
                "category": q.category,
                "src": q.src,
                "question": q.question,
                "options": list(q.options),
                "answer": q.answer,
            }
            fh.write(json.dumps(row) + "\n")
    models = list(answers)
    with gzip.open(path / f"{PREDICTIONS_FILE}.gz", "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question_id", *models])
        for q in questions:
            writer.writerow([q.question_id, *(answers[m].get(q.question_id) or "" for m in models)])
    return path


class Recording:
    """One recording folder: the questions, every model's answers, and a text index."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.questions = {q.question_id: q for q in read_questions(folder)}
        self.models, self._answers = _read_predictions(_data_file(folder, PREDICTIONS_FILE))
        self._by_text: dict[str, list[str]] = {}
        self._found: dict[str, str] = {}  # message → question id, insertion-ordered (see find_question)
        # The experts of a batch look questions up from many threads: unlocked, two at the cap
        # popped one key (KeyError) or one evicted while another inserted (RuntimeError).
        self._found_lock = threading.Lock()
        for q in self.questions.values():
            self._by_text.setdefault(normalise_text(q.question), []).append(q.question_id)
        self._long_texts = [t for t in self._by_text if len(t.split()) >= _SCAN_MIN_WORDS]

    def has_model(self, model: str) -> bool:
        return model in self._answers

    def recorded(self, model: str, question_id: str) -> bool:
        return question_id in self._answers.get(model, {})

    def answer(self, model: str, question_id: str) -> str | None:
        """The model's recorded letter (None: it answered without a parseable choice)."""
        if not self.has_model(model):
            raise ModelSourceError(f"model {model!r} is not recorded in {self.folder}")
        if question_id not in self._answers[model]:
            raise BackendError(f"{model} has no recorded answer for question {question_id} in {self.folder}")
        return self._answers[model][question_id]

    def find_question(self, message: str) -> str:
        """The id of the corpus question that the message asks (see `_candidates`). Recent
        messages are remembered: profiling sends every question once per model, and routing
        looks each query up again when it is answered."""
        with self._found_lock:
            found = self._found.get(message)
        if found is None:
            found = self._find(message)  # unlocked: lookups of other messages go on meanwhile
            with self._found_lock:
                if len(self._found) >= _FOUND_CACHE and message not in self._found:
                    self._found.pop(next(iter(self._found)))  # bounded: the oldest goes first
                self._found[message] = found
        return found

    def _find(self, message: str) -> str:
        """A chat transcript's last user turn is the question it asks; else the whole message."""
        text = _last_turn(message)
        ids = self._candidates(text) if text != message else []
        if not ids:
            text, ids = message, self._candidates(message)
        if not ids:
            raise BackendError(f"no recorded question in {self.folder} matches the message {_clip(message)!r}")
        if len(ids) > 1:
            ids = self._best_by_options(ids, normalise_text(text))
        return ids[0]

    def _candidates(self, message: str) -> list[str]:
        """Exact text; else the text before the options; else one line of the message, the last
        first; else, of the corpus questions of at least `_SCAN_MIN_WORDS` words inside it (a short
        one like "Inflation" would match any message that mentions the word), the one ending last,
        then the longest. A message asking several asks its last (the longest, or the first line,
        was taken: a chat's earlier turn), and "Define poverty in Europe." is found over "Define
        poverty." (or "poverty in Europe.") inside it."""
        norm = normalise_text(message)
        keys = [norm, normalise_text(strip_options(message))]
        keys += [normalise_text(strip_label(line)) for line in reversed(message.splitlines())]
        for key in keys:
            if key in self._by_text:
                return self._by_text[key]
        inside = [text for text in self._long_texts if text in norm]
        return self._by_text[max(inside, key=lambda t: (norm.rfind(t) + len(t), len(t)))] if inside else []

    def _best_by_options(self, ids: list[str], norm: str) -> list[str]:
        """Same question text, different options: the one whose options the message shows most
        of, then the one with fewest options not shown (a question whose options are a subset
        of another's: both show all of the shorter list)."""

        def fit(qid: str) -> tuple[int, int]:
            found = [_shown(o, norm) for o in self.questions[qid].options]
            return sum(found), -found.count(False)

        best = max(fit(q) for q in ids)
        top = [q for q in ids if fit(q) == best or best[0] == 0]  # no option shown: cannot tell
        if len(top) > 1 and len({self.questions[q].options for q in top}) > 1:
            listed = ", ".join(top)
            raise BackendError(f"the message matches recorded questions {listed}; include the options")
        return top


_SCAN_MIN_WORDS = 6
_USER_TURN = re.compile(r"(?m)^User: ")  # a turn of a transcript as the service's chat writes one
_FOUND_CACHE = 8192  # messages whose question id is remembered (a validation set is ~3,000)


def _last_turn(message: str) -> str:
    """The message from its last "User: " line on: a chat with history reaches an expert as one
    transcript ("User: …\n\nAssistant: …\n\nUser: …"), and its earlier questions, matched
    first, were answered in place of the last one."""
    starts = [m.end() for m in _USER_TURN.finditer(message)]
    return message[starts[-1] :] if starts else message


def _shown(option: str, norm: str) -> bool:
    """Whether the (normalised) message shows the option as a whole, not inside a longer word
    or number: as a substring, "1" was shown by "10" and "act" by "contract", so a message that
    listed one copy's options matched another copy's too."""
    pattern = rf"(?<!\w)(?<!\w[.,]){re.escape(normalise_text(option))}(?![.,]?\w)"  # "1" is not in "1.5"
    return re.search(pattern, norm) is not None


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Changes when a file in the folder changes, so an edited recording is read again."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)


@lru_cache(maxsize=8)
def _load_cached(folder: Path, signature: tuple[tuple[str, int, int], ...]) -> Recording:
    return Recording(folder)


_CHECK_EVERY_S = 1.0  # how stale a lookup may be: routing asks for the recording per decision
_checked: dict[str | Path, tuple[float, Recording]] = {}


def load_recording(folder: str | Path, recent: bool = False) -> Recording:
    """The recording in `folder`, read once and shared by all of its replay experts; an edited
    recording is read again. `recent`: the one seen in the last second will do (the folder's
    files are not looked at again), for callers on every routing decision's path."""
    now = time.monotonic()
    seen = _checked.get(folder)
    if recent and seen is not None and now - seen[0] < _CHECK_EVERY_S:
        return seen[1]
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ModelSourceError(f"recording folder not found: {path}")
    recording = _load_cached(path, _signature(path))
    if len(_checked) > 64:  # bounded: a few folders in practice
        _checked.clear()
    _checked[folder] = (now, recording)
    return recording


class ReplayBackend:
    """A recorded model behind the `ExpertBackend` protocol.

    `load` reads the recording (shared with the folder's other models) and counts a load;
    `memory_bytes` is the real model's simulated footprint, not the recording's.
    """

    def __init__(self, folder: str | Path, model: str, cot_tokens: int = COT_TOKENS, time_scale: float = 0.0):
        self.folder = Path(folder)
        self.time_scale = time_scale  # > 0: each reply takes its simulated latency x this, for real
        self.model = model
        self.base_model_key = BaseModelSpec(kind="replay", source=str(folder), model=model).key
        self.cost: ModelCost = model_cost(model)
        self.cot_tokens = cot_tokens
        self.loads = 0
        self.energy_j = 0.0  # simulated energy of every reply so far
        self._recording: Recording | None = None

    @classmethod
    def from_spec(cls, spec: BaseModelSpec, time_scale: float = 0.0) -> ReplayBackend:
        if spec.kind != "replay" or not spec.model:
            raise ModelSourceError(f"a replay expert needs kind 'replay' and a model name, got {spec.key}")
        return cls(spec.source, spec.model, time_scale=time_scale)

    @property
    def is_loaded(self) -> bool:
        return self._recording is not None

    def validate(self) -> None:
        recording = load_recording(self.folder)
        if not recording.has_model(self.model):
            known = ", ".join(recording.models)
            raise ModelSourceError(f"model {self.model!r} is not recorded in {self.folder}; it has {known}")

    def load(self) -> None:
        if self._recording is None:
            self.validate()
            self._recording = load_recording(self.folder)
            self.loads += 1

    def unload(self) -> None:
        self._recording = None

    def memory_bytes(self) -> int:
        return self.cost.memory_bytes()

    def estimate(self, prompt_tokens: int) -> CostEstimate:
        return self.cost.estimate(prompt_tokens, self.cot_tokens)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self._recording is None:
            raise BackendError(f"{self.base_model_key}: generate() before load()")
        return [self._reply(self._recording, r) for r in requests]

    def _reply(self, recording: Recording, request: GenerationRequest) -> Generation:
        """The recorded letter; a question it lacks, or a reply slower than the request's
        timeout, is this request's error alone."""
        user = "\n".join(m.content for m in request.messages if m.role == "user")
        prompt_tokens = _approx_tokens(request)
        cost = self.estimate(prompt_tokens)
        taken, timeout = cost.latency_s * (self.time_scale or 1.0), request.timeout_s  # in this run's seconds
        self._spend(taken if timeout is None else min(taken, timeout))
        if timeout is not None and taken > timeout:
            return Generation.timed_out(request, timeout)
        try:
            letter = recording.answer(self.model, recording.find_question(user))
        except BackendError as exc:
            return Generation.failed(request.request_id, str(exc))
        text = _until_stop(f"Answer: {letter}" if letter else NO_ANSWER_TEXT, request.sampling.stop)
        self.energy_j += cost.energy_j
        return Generation(
            request_id=request.request_id,
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=self.cot_tokens,
            latency_s=cost.latency_s,
            # The recording keeps only the letter the model's whole reply ended in: max_tokens
            # cannot cut a chain of thought nobody recorded (and cutting the letter would leave
            # replay pools, run at 8 tokens, with no answers), so the reply is charged and ended
            # as recorded; stop strings do cut its text, as they would a model's.
            finish_reason="stop",
        )


    def _spend(self, seconds: float) -> None:
        if self.time_scale > 0:
            time.sleep(seconds)


def _until_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to the first of the stop strings it holds, as a server applies them."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def _approx_tokens(request: GenerationRequest) -> int:
    """The request's prompt tokens as a real tokenizer would count them, near enough."""
    return max(1, approx_prompt_tokens(m.content for m in request.messages))
