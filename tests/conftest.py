"""Fixtures every test package shares: one real MiniLM embedder, the real MMLU-Pro replay corpus
and slices of it, and tiny HF-format model folders for the vLLM backend."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from experts.replay import Recording, load_recording, write_recording
from skills.embedder import Embedder, get_embedder

REPLAY = Path(__file__).resolve().parents[1].parent / "shared/data/mmlu_pro_replay"
SliceRecording = Callable[[Path, Sequence[str], int], Path]
MakeHFFolder = Callable[[Path, dict[str, object]], Path]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """One real MiniLM for every test: loading it once keeps the suite quick."""
    return get_embedder()


@pytest.fixture(scope="session")
def real_recording() -> Recording:
    if not REPLAY.is_dir():
        pytest.skip(f"the replay corpus is not at {REPLAY}")
    return load_recording(REPLAY)


@pytest.fixture(scope="session")
def slice_recording(real_recording: Recording) -> SliceRecording:
    """`slice_recording(folder, models, per_category)`: the first `per_category` questions of
    every category of the real corpus, answered by `models`, written as a recording folder."""

    def make(folder: Path, models: Sequence[str], per_category: int) -> Path:
        seen: Counter[str] = Counter()
        ids = []
        for qid, q in real_recording.questions.items():
            if seen[q.category] < per_category:
                seen[q.category] += 1
                ids.append(qid)
        answers = {m: {q: real_recording.answer(m, q) for q in ids} for m in models}
        return write_recording(folder, [real_recording.questions[q] for q in ids], answers)

    return make


@pytest.fixture(scope="session")
def make_hf_folder() -> MakeHFFolder:
    """Writes what vLLM reads from a model folder: the given config.json and a tiny, well-formed
    model.safetensors (header only)."""

    def make(folder: Path, config: dict[str, object]) -> Path:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
        (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
        return folder

    return make
