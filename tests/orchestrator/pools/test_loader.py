"""The pool loader: pool files (unknown fields are errors naming them and the file) and
`replay:` sources (an expert per recorded model, the seeded split)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from experts.replay import RecordedQuestion, load_recording, write_recording
from orchestrator.pools.loader import PoolConfigError, expert_name, load_pool_config, replay_pool, split_questions
from orchestrator.settings import DEFAULT_POOL
from skills.datasets import load_mmlu

KEPT = ["Llama-2-7b-hf", "Mistral-7B-v0.1", "gemma-7b"]
LATE = "gemini-1.5-pro-002"
PER_CATEGORY = 5
SliceRecording = Callable[[Path, Sequence[str], int], Path]  # the conftest fixture's signature


@pytest.fixture(scope="module")
def folder(slice_recording: SliceRecording, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slice_recording(tmp_path_factory.mktemp("pool"), [*KEPT, LATE], PER_CATEGORY)


def test_one_replay_expert_per_recorded_model(folder: Path) -> None:
    pool = replay_pool(folder)
    assert [e.name for e in pool] == [*KEPT, LATE]
    assert {e.base.kind for e in pool} == {"replay"}
    assert [e.base.model for e in pool] == [*KEPT, LATE]
    assert {e.base.source for e in pool} == {str(folder.resolve())}
    assert [e.name for e in replay_pool(folder, ["gemma-7b"])] == ["gemma-7b"]
    with pytest.raises(ValueError, match="not recorded .*: gpt-5"):
        replay_pool(folder, ["gpt-5"])


def test_expert_names_are_valid_for_any_column() -> None:
    assert expert_name("Meta-Llama-3_1-8B-Instruct") == "Meta-Llama-3_1-8B-Instruct"
    assert expert_name("org/model name (v2)") == "org-model-name-v2"


def test_split_is_seeded_stratified_and_disjoint(folder: Path) -> None:
    rec = load_recording(folder)
    profiling, test = split_questions(rec, 0.4, seed=3)
    assert split_questions(rec, 0.4, seed=3) == (profiling, test)
    assert split_questions(rec, 0.4, seed=4) != (profiling, test)
    assert not set(profiling) & set(test) and len(profiling) + len(test) == len(rec.questions)
    per_category = Counter(rec.questions[q].category for q in test)
    assert set(per_category.values()) == {2}  # round(5 × 0.4) of each category
    with pytest.raises(ValueError, match="fraction"):
        split_questions(rec, 1.0, seed=0)


def test_the_packaged_pool_loads() -> None:
    pool = load_pool_config(DEFAULT_POOL)
    assert [e.name for e in pool.experts] == ["qwen-1.5b", "qwen-0.5b", "smollm2"]
    mmlu = load_mmlu("validation", per_subject=1, subjects=pool.validation.sources[0].subjects)  # type: ignore[union-attr]
    assert len(mmlu) == 12  # every listed subject exists in the packaged MMLU


@pytest.mark.parametrize(("text", "field"), [
    ("name: p\nvalidation: {keyword_mod: llm}\n", "validation.keyword_mod"),
    ("name: p\ngeneration: {expert_max_token: 9}\n", "generation.expert_max_token"),
    ("experts:\n  - {name: a, base: {kind: mock, source: x}, sytem_prompt: hi}\n", "experts.0.sytem_prompt"),
    ("experts:\n  - {name: a, base: {kind: mock, source: x, modle: y}}\n", "experts.0.base.modle"),
    ("experts:\n  - {name: a, base: {kind: mock, source: x}, sampling: {temprature: 1}}\n",
     "experts.0.sampling.temprature"),
])
def test_a_typo_in_a_pool_file_is_an_error_naming_the_field_and_the_file(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    with pytest.raises(PoolConfigError) as err:
        load_pool_config(path)
    message = str(err.value)
    assert str(path) in message and field in message and "Extra inputs are not permitted" in message


def test_keyword_llm_mode_must_name_an_expert_of_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("name: p\nvalidation: {keyword_mode: llm, keyword_expert: nobody}\n")
    with pytest.raises(PoolConfigError, match="validation.keyword_expert: keyword_mode llm needs an expert"):
        load_pool_config(path)


def test_a_missing_file_or_recording_is_named(tmp_path: Path) -> None:
    with pytest.raises(PoolConfigError, match="pool file not found"):
        load_pool_config(tmp_path / "absent.yaml")
    with pytest.raises(PoolConfigError, match="invalid replay pool .*nowhere"):
        load_pool_config(f"replay:{tmp_path / 'nowhere'}")


def test_a_pool_file_that_is_not_utf8_text_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))  # é as one byte: not UTF-8
    with pytest.raises(PoolConfigError, match=f"cannot read pool file {path}: 'utf-8' codec can't decode"):
        load_pool_config(path)


def test_replay_columns_that_would_share_an_expert_name_are_refused_naming_both(tmp_path: Path) -> None:
    """Two columns one name apart only in characters a name cannot hold: the pool's first start
    failed with a Conflict naming neither column."""
    questions = [RecordedQuestion(f"q{i}", "math", f"Question {i}?", ("a", "b", "c", "d"), "A") for i in range(4)]
    columns = ["acme/qwen2.5-7b", "acme:qwen2.5-7b"]
    folder = write_recording(tmp_path / "rec", questions, {m: {q.question_id: "A" for q in questions} for m in columns})
    with pytest.raises(PoolConfigError, match="'acme/qwen2.5-7b' and 'acme:qwen2.5-7b' .* 'acme-qwen2.5-7b'"):
        load_pool_config(f"replay:{folder}")


def test_questions_with_the_same_text_land_on_the_same_side_of_every_split(tmp_path: Path) -> None:
    """MMLU-Pro repeats some questions under other ids (103 texts, 211 questions): a test
    question whose copy is in the profiling half is one the k-NN router finds as its own
    neighbour, so its figure counted memory as routing. Copies differ here only in case and
    spacing (the text index's normalisation), and one pair sits in two categories."""
    questions = [RecordedQuestion(f"{c}{i}", c, f"What is {c} number {i}?", ("a", "b", "c", "d"), "A")
                 for c in ("law", "math", "physics") for i in range(12)]
    copies = [RecordedQuestion(f"{q.question_id}-copy", q.category, f"  {q.question.upper()} ", q.options, "B")
              for q in questions if q.question_id.endswith(("1", "4", "7"))]
    copies.append(RecordedQuestion("cross", "physics", questions[0].question, questions[0].options, "A"))
    every = questions + copies
    rec = load_recording(write_recording(tmp_path / "rec", every, {"m": {q.question_id: "A" for q in every}}))
    groups = [[q.question_id, f"{q.question_id}-copy"] for q in questions if f"{q.question_id}-copy" in rec.questions]
    groups.append(["law0", "cross"])
    for seed in range(10):
        profiling, test = split_questions(rec, 0.5, seed)
        assert len(profiling) + len(test) == len(every) and abs(len(test) - len(every) / 2) <= len(groups)
        for group in groups:
            assert len({q in test for q in group}) == 1, (seed, group)


@pytest.mark.parametrize(("text", "problem"), [
    ("experts:\n  - {name: a, base: {kind: mock, source: x}}\nname: p\nexperts: []\n",
     "line 4, column 1: the key 'experts' is given twice"),
    ('{"experts": [], "name": "p", "experts": []}', "line 1, column 30: the key 'experts' is given twice"),
    ("", "not nothing"),
    ("[]\n", "not list"),
    ("0\n", "not int"),
    ("? [a, b]\n: 1\n", "line 1, column 3: a key must be a plain value, not a list"),
    ("{[a]: 1}\n", "line 1, column 2: a key must be a plain value, not a list"),
    ("experts:\n  - {name: a, base: {kind: mock, source: s}, {x: 1}: 2}\n",
     "line 2, column 46: a key must be a plain value, not a dict"),
])
def test_a_pool_file_is_one_mapping_with_each_key_once(tmp_path: Path, text: str, problem: str) -> None:
    """A start syncs the store to the file: a second `experts:` block (YAML keeps the last) or a
    file that is not a mapping at all (loaded as no experts) removed every expert it did not name.
    A list or mapping as a key escaped the check of keys given twice as a TypeError traceback."""
    path = tmp_path / "pool.yaml"
    path.write_text(text)
    with pytest.raises(PoolConfigError, match=f"invalid pool file {path}: .*{problem}"):
        load_pool_config(path)


def test_merge_keys_still_merge_and_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("experts:\n  - &a {name: a, base: {kind: mock, source: x}}\n  - <<: *a\n    name: b\n")
    assert [e.name for e in load_pool_config(path).experts] == ["a", "b"]


def test_every_error_of_a_pool_file_is_on_one_line_naming_its_field(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("router: bogus\nexperts:\n  - {name: a}\n")
    with pytest.raises(PoolConfigError) as err:
        load_pool_config(path)
    assert str(err.value) == (f"invalid pool file {path}: router: Input should be 'symbolic' or 'knn'; "
                              "experts.0.base: Field required")
