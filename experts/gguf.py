"""Read a GGUF file's header without loading its weights.

Why our own reader: it lets us refuse a wrong or damaged file (a half-assembled download, an
HTML error page, a different model than the package claims) in milliseconds and with a message a
user can act on, before llama.cpp spends memory on it or crashes on it.

Format (little-endian, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
magic b"GGUF", uint32 version, tensor count and metadata count (uint32 in v1, uint64 since v2),
then `count` key/value pairs: key (string), uint32 value type, value. Strings are a length
(uint32 in v1, uint64 since v2) then UTF-8 bytes; arrays are uint32 element type, count, elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from experts.backend import ModelSourceError

MAGIC = b"GGUF"
MetaValue = str | int | float | bool

# Fixed-size value types: type id -> struct format.
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# A real header string is at most a few KB (chat templates); anything near this is corruption,
# and refusing it keeps a garbage length from allocating gigabytes.
_MAX_STRING = 1 << 24
_MAX_COUNT = 1 << 32
_MAX_DIMS = 8
# ggml tensor type id -> (elements per block, bytes per block), to compute where tensor data
# must end. Types missing here only bound the data end by their offset.
_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 20: (32, 18), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 30: (1, 2),
}


class _Truncated(Exception):
    """The file ended inside the header."""


class _Corrupt(Exception):
    """The header holds a value no writer produces (unknown type, absurd length)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int  # ggml's type id: 0 F32, 1 F16, 2 Q4_0, 8 Q8_0, 12 Q4_K, 14 Q6_K, ...
    shape: tuple[int, ...]
    nbytes: int | None  # None for a type missing from our block table


@dataclass(frozen=True)
class GGUFInfo:
    """What the header says. Arrays (tokenizer vocabularies) are skipped; `array_lengths` keeps
    their element counts, which is enough to check a vocabulary size."""

    path: Path
    version: int
    tensor_count: int
    size_bytes: int
    metadata: dict[str, MetaValue] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    data_end: int = 0  # the smallest file size that holds every tensor's data
    tensors: tuple[TensorInfo, ...] = ()

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    def arch_int(self, suffix: str) -> int | None:
        """An integer hyper-parameter such as `block_count`, stored as `<arch>.<suffix>`."""
        value = self.metadata.get(f"{self.architecture}.{suffix}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def kv_cache_bytes(self, n_ctx: int, bytes_per_value: int = 2) -> int | None:
        """K and V for every layer and position at f16 (llama.cpp's default cache type)."""
        layers, embd = self.arch_int("block_count"), self.arch_int("embedding_length")
        heads = self.arch_int("attention.head_count")
        if not (layers and embd and heads):
            return None
        kv_heads = self.arch_int("attention.head_count_kv") or heads
        head_dim = self.arch_int("attention.key_length") or embd // heads
        return 2 * layers * n_ctx * kv_heads * head_dim * bytes_per_value


class _Reader:
    def __init__(self, stream: BinaryIO, pos: int, size: int, version: int = 3):
        self._stream = stream
        self.version = version
        self.pos = pos  # bytes consumed so far: tensor data starts at the next aligned offset
        self.size = size  # the file's: no read may ask for more than is left of it

    def take(self, n: int) -> bytes:
        # checked before reading: a corrupt array count asks for up to 32 GB, which read() would
        # try to allocate (MemoryError) before finding the file far shorter
        if n > self.size - self.pos:
            raise _Truncated
        data = self._stream.read(n)
        if len(data) != n:
            raise _Truncated
        self.pos += n
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def count(self) -> int:
        """Counts and lengths are 32-bit in GGUF v1, 64-bit since v2."""
        return int(self.unpack("<I" if self.version == 1 else "<Q"))

    def string(self) -> str:
        length = self.count()
        if length > _MAX_STRING:
            raise _Corrupt(f"string of {length} bytes")
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> MetaValue | None:
        """A scalar or string; arrays are skipped and give None."""
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            self.skip_array()
            return None
        raise _Corrupt(f"unknown value type {vtype}")

    def skip_array(self) -> int:
        etype, n = int(self.unpack("<I")), self.count()
        if n > _MAX_COUNT:
            raise _Corrupt(f"array of {n} elements")
        if etype in _SCALARS:
            # Numeric arrays can be skipped in one read-and-discard of known size.
            self.take(n * struct.calcsize(_SCALARS[etype]))
        else:
            for _ in range(n):
                self.value(etype)
        return n


def _read_metadata(reader: _Reader, n_kv: int) -> tuple[dict[str, MetaValue], dict[str, int]]:
    metadata: dict[str, MetaValue] = {}
    arrays: dict[str, int] = {}
    for _ in range(n_kv):
        key, vtype = reader.string(), int(reader.unpack("<I"))
        if vtype == _ARRAY:
            arrays[key] = reader.skip_array()
            continue
        value = reader.value(vtype)
        if value is not None:
            metadata[key] = value
    return metadata, arrays


def _tensor_info(reader: _Reader) -> tuple[TensorInfo, int]:
    """Read one tensor-info record: the tensor, and its data offset from the data start."""
    name = reader.string()
    n_dims = int(reader.unpack("<I"))
    if n_dims > _MAX_DIMS:
        raise _Corrupt(f"tensor {name!r} with {n_dims} dimensions")
    shape = tuple(reader.count() for _ in range(n_dims))
    ttype, offset = int(reader.unpack("<I")), int(reader.unpack("<Q"))
    elements = 1
    for dim in shape:
        elements *= dim
    block = _BLOCKS.get(ttype)
    nbytes = -(-elements // block[0]) * block[1] if block else None
    return TensorInfo(name, ttype, shape, nbytes), offset


def _read_tensors(reader: _Reader, n_tensors: int, alignment: int) -> tuple[list[TensorInfo], int]:
    """All tensor infos, and where the last tensor's data ends in the file."""
    infos, end = [], 0
    for _ in range(n_tensors):
        info, offset = _tensor_info(reader)
        infos.append(info)
        end = max(end, offset + (info.nbytes or 0))
    data_start = -(-reader.pos // alignment) * alignment
    return infos, data_start + end


def _parse(path: Path, stream: BinaryIO) -> GGUFInfo:
    head = stream.read(4)
    if head != MAGIC:
        raise ModelSourceError(f"not a GGUF file: {path} starts with {head!r}")
    reader = _Reader(stream, pos=len(MAGIC), size=path.stat().st_size)
    reader.version = int(reader.unpack("<I"))
    if reader.version not in (1, 2, 3):
        raise ModelSourceError(f"unsupported GGUF version {reader.version}: {path}")
    n_tensors, n_kv = reader.count(), reader.count()
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise _Corrupt(f"{n_tensors} tensors, {n_kv} metadata entries")
    metadata, arrays = _read_metadata(reader, n_kv)
    alignment = metadata.get("general.alignment", 32)
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    tensors, end = _read_tensors(reader, n_tensors, alignment)
    size = reader.size
    if size < end:
        raise ModelSourceError(
            f"truncated GGUF: {path} has {size} bytes but its tensors need {end}"
        )
    return GGUFInfo(path, reader.version, n_tensors, size, metadata, arrays, end, tuple(tensors))


# Headers parsed in this process, keyed by (path, size, mtime): a vocabulary of 150k strings
# takes a few hundred ms to walk, and every validate() of every expert asks again.
_parsed: dict[tuple[str, int, int], GGUFInfo] = {}


def check_gguf(path: str | Path) -> GGUFInfo:
    """Parse the header of `path`, or raise ModelSourceError saying what is wrong with it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"no such file: {path}")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _parsed:
        if len(_parsed) > 64:
            _parsed.clear()
        _parsed[key] = _check_uncached(path)
    return _parsed[key]


def _check_uncached(path: Path) -> GGUFInfo:
    try:
        # A large buffer: vocabularies are ~50-150k tiny strings read one by one.
        with path.open("rb", buffering=1 << 20) as stream:
            return _parse(path, stream)
    except _Truncated:
        raise ModelSourceError(f"truncated GGUF: {path} ends inside its header") from None
    except _Corrupt as exc:
        raise ModelSourceError(f"corrupt GGUF header in {path}: {exc}") from None
    except OSError as exc:
        raise ModelSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
