from __future__ import annotations

import re
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from experts.backend import ModelSourceError
from experts.gguf import check_gguf


def test_reads_header_of_a_hand_written_file(write_gguf: Callable[..., Path]) -> None:
    path = write_gguf()
    info = check_gguf(path)
    assert (info.version, info.tensor_count) == (3, 2)
    assert info.name == "Tiny Test Model"  # stored after three arrays: they were skipped right
    assert info.architecture == "llama"
    assert info.metadata["llama.block_count"] == 2
    assert info.metadata["tokenizer.ggml.add_bos_token"] is True
    assert info.metadata["rope.freq_base"] == pytest.approx(10000.0)
    assert info.metadata["signed"] == -7
    assert info.array_lengths == {
        "tokenizer.ggml.tokens": 4, "tokenizer.ggml.scores": 4, "nested": 2,
    }
    assert info.size_bytes == path.stat().st_size == info.data_end


def test_kv_cache_estimate_uses_grouped_kv_heads(write_gguf: Callable[..., Path]) -> None:
    info = check_gguf(write_gguf())
    # 2 (K and V) x 2 layers x 100 positions x 1 kv head x head dim 8/2 x 2 bytes
    assert info.kv_cache_bytes(100) == 2 * 2 * 100 * 1 * 4 * 2


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelSourceError, match=re.escape(f"no such file: {missing}")):
        check_gguf(missing)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="no such file"):
        check_gguf(tmp_path)


def test_text_file_is_not_gguf(write_gguf: Callable[..., Path]) -> None:
    path = write_gguf("page.html", b"<html>404 Not Found</html>")
    with pytest.raises(ModelSourceError, match=re.escape(f"not a GGUF file: {path} starts with b'<htm'")):
        check_gguf(path)


def test_empty_file_is_not_gguf(write_gguf: Callable[..., Path]) -> None:
    with pytest.raises(ModelSourceError, match="starts with b''"):
        check_gguf(write_gguf("empty.gguf", b""))


@pytest.mark.parametrize("keep", [6, 20, 60, 150, 300])
def test_file_cut_inside_header_is_truncated(
    write_gguf: Callable[..., Path], tiny_gguf: Callable[..., bytes], keep: int
) -> None:
    path = write_gguf("cut.gguf", tiny_gguf()[:keep])
    with pytest.raises(ModelSourceError, match=re.escape(f"truncated GGUF: {path}")):
        check_gguf(path)


def test_file_missing_tensor_data_is_truncated(
    write_gguf: Callable[..., Path], tiny_gguf: Callable[..., bytes]
) -> None:
    whole = tiny_gguf()
    path = write_gguf("short.gguf", whole[:-40])  # like an assembly that lost its last part
    with pytest.raises(ModelSourceError, match=rf"truncated GGUF: .* has {len(whole) - 40} bytes"):
        check_gguf(path)


def test_unknown_value_type_is_corrupt(write_gguf: Callable[..., Path]) -> None:
    key = b"general.name"
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    path = write_gguf("bad.gguf", bad + struct.pack("<I", 99) + b"\0" * 16)
    with pytest.raises(ModelSourceError, match="corrupt GGUF header .* unknown value type 99"):
        check_gguf(path)


def test_absurd_string_length_is_corrupt_not_a_memory_blowup(write_gguf: Callable[..., Path]) -> None:
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62)
    with pytest.raises(ModelSourceError, match="corrupt GGUF header"):
        check_gguf(write_gguf("huge.gguf", bad + b"x" * 64))


@pytest.mark.parametrize("etype", [4, 10])  # uint32, uint64
def test_an_array_longer_than_the_file_is_refused_without_allocating_it(
    write_gguf: Callable[..., Path], etype: int
) -> None:
    """A count within the reader's limit but past the file's end: skipping it read the whole
    claimed size at once (2**32 uint64s: 32 GB, a MemoryError) instead of refusing the file."""
    key = b"tokenizer.ggml.scores"
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    path = write_gguf("array.gguf", bad + struct.pack("<IIQ", 9, etype, 2**25) + b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(ModelSourceError, match=re.escape(f"truncated GGUF: {path} ends inside its header")):
            check_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # the claim was 128 or 256 MB, the file 133 bytes


def test_unsupported_version(write_gguf: Callable[..., Path]) -> None:
    with pytest.raises(ModelSourceError, match="unsupported GGUF version 7"):
        check_gguf(write_gguf("v7.gguf", b"GGUF" + struct.pack("<IQQ", 7, 0, 0)))


@pytest.mark.slow
def test_real_smollm2_header(smollm2_path: Path) -> None:
    info = check_gguf(smollm2_path)
    assert info.architecture == "llama"
    assert info.name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert info.array_lengths["tokenizer.ggml.tokens"] == 49152
    assert info.metadata["llama.block_count"] == 30
    assert isinstance(info.metadata["tokenizer.chat_template"], str)
    # Q4_1 tensors and the f32 norms are all sized by our block table: the data ends at the end.
    assert info.size_bytes == info.data_end == 98_362_432
