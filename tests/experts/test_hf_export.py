"""Two threads of one process exporting the same model (a size read beside a registration's
check) wrote the same temp folder (named by process only) and removed each other's files: one
could install a folder missing files, marked done, and broken for good."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from experts import hf_export

FILES = ("config.json", "model.safetensors", "tokenizer.json")


def test_two_threads_exporting_one_model_end_with_one_whole_folder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    both = threading.Barrier(2, timeout=30)

    def write_slowly(_gguf: Path, out: Path) -> None:  # each writer's first file, then the other's turn
        out.mkdir(parents=True, exist_ok=True)
        (out / FILES[0]).write_text("{}")
        both.wait()
        for name in FILES[1:]:
            (out / name).write_text("x")
        both.wait()

    monkeypatch.setattr(hf_export, "_write_folder", write_slowly)
    folder, errors = tmp_path / "model", list[BaseException]()

    def export() -> None:
        try:
            hf_export._export(tmp_path / "m.gguf", folder)
        except BaseException as exc:  # the test's failure, seen on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=export) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and hf_export.is_exported(folder)
    assert all((folder / name).is_file() for name in FILES)
