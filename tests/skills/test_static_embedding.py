"""The static embedding is built once per cache folder, whole or not at all."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from model2vec import StaticModel

from skills import static_embedding
from skills.embedder import default_model_path


def _fake_build(calls: list[Path]) -> object:
    def build(source: str, target: Path) -> None:
        calls.append(target)
        shutil.rmtree(target, ignore_errors=True)  # as the real build replaces a leftover
        target.mkdir()
        for name in static_embedding._FILES:
            (target / name).write_text("x")
    return build


def test_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(static_embedding, "_build", _fake_build(calls))
    found: list[Path] = []
    threads = [threading.Thread(target=lambda: found.append(
        static_embedding.distilled_path(default_model_path(), tmp_path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(found)) == 1 and found[0] == calls[0]


def test_an_incomplete_folder_is_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(static_embedding, "_build", _fake_build(calls))
    path = static_embedding.distilled_path(default_model_path(), tmp_path)
    assert static_embedding.distilled_path(default_model_path(), tmp_path) == path and len(calls) == 1
    (path / "model.safetensors").unlink()  # as a folder copied in part would be
    assert static_embedding.distilled_path(default_model_path(), tmp_path) == path
    assert calls == [path, path] and (path / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_real_build_loads_and_embeds(tmp_path: Path) -> None:
    """Distil from the packaged MiniLM into a fresh folder: no scratch folder is left, and the
    model embeds into 256 dimensions."""
    path = static_embedding.distilled_path(default_model_path(), tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".building")] == []
    vectors = StaticModel.from_pretrained(str(path)).encode(["algebra", "world religions"])
    assert np.asarray(vectors).shape == (2, static_embedding.PCA_DIMS)
