"""LlamaCppBackend: fast checks on bad sources, and the real SmolLM2-135M (marked slow)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from experts.backend import BackendError, ExpertBackend, ModelSourceError
from experts.factory import make_backend
from experts.llamacpp import LlamaCppBackend
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest, SamplingParams

SMOL = "package:smollm2-135m-instruct"


def spec(source: str, n_ctx: int = 1024) -> BaseModelSpec:
    return BaseModelSpec(kind="llamacpp", source=source, n_ctx=n_ctx)


def ask(request_id: str, text: str, system: str | None = None, **sampling: object) -> GenerationRequest:
    messages = [ChatMessage(role="system", content=system)] if system else []
    messages.append(ChatMessage(role="user", content=text))
    return GenerationRequest(request_id=request_id, messages=messages, sampling=SamplingParams(**sampling))


def test_validate_refuses_a_text_file_without_loading(write_gguf: Callable[..., Path]) -> None:
    path = write_gguf("model.gguf", b"version https://git-lfs.github.com/spec/v1\n")
    b = LlamaCppBackend(spec(str(path)))
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        b.validate()
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        b.load()
    assert (b.is_loaded, b.loads) == (False, 0)


def test_generate_before_load(write_gguf: Callable[..., Path]) -> None:
    b = LlamaCppBackend(spec(str(write_gguf())))
    with pytest.raises(BackendError, match="before load"):
        b.generate([ask("r", "hi")])


def test_memory_estimate_from_header_alone(write_gguf: Callable[..., Path]) -> None:
    path = write_gguf()
    b = LlamaCppBackend(spec(str(path), n_ctx=256))
    kv = 2 * 2 * 256 * 1 * 4 * 2  # K+V, 2 layers, 256 positions, 1 kv head of dim 4, f16
    assert b.memory_bytes() == path.stat().st_size + kv + 64 * 2**20
    assert not b.is_loaded


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaCppBackend]:
    pytest.importorskip("llama_cpp")
    b = make_backend(spec(SMOL))
    assert isinstance(b, LlamaCppBackend)
    try:
        b.validate()
    except ModelSourceError as exc:
        pytest.skip(str(exc))
    b.load()
    yield b
    b.unload()


@pytest.mark.slow
def test_load_counted_once(smol: LlamaCppBackend) -> None:
    assert isinstance(smol, ExpertBackend)
    loads = smol.loads
    smol.load()
    assert smol.is_loaded and smol.loads == loads


@pytest.mark.slow
def test_batch_of_three_real_generations(smol: LlamaCppBackend) -> None:
    batch = [
        ask("a", "What is the capital of France?", max_tokens=24),
        ask("b", "Name a color.", system="Answer with one word.", max_tokens=8),
        ask("c", "Write a short greeting.", max_tokens=16, temperature=0.8, seed=3),
    ]
    out = smol.generate(batch)
    assert [g.request_id for g in out] == ["a", "b", "c"]
    for g, r in zip(out, batch, strict=True):
        assert g.text.strip() and g.latency_s > 0
        assert g.prompt_tokens > 5 and 0 < g.completion_tokens <= r.sampling.max_tokens
    assert "paris" in out[0].text.lower()


@pytest.mark.slow
def test_greedy_is_deterministic_across_calls_and_reload(smol: LlamaCppBackend) -> None:
    q = ask("q", "List three fruits.", max_tokens=32)
    other = ask("o", "List three fruits and say why you like them.", max_tokens=32)
    first = smol.generate([q])[0].text
    # Same prompt again (whole prefix cached), after a prompt sharing a prefix, and fresh.
    assert smol.generate([q, other, q])[2].text == first
    assert smol.generate([q])[0].text == first
    loads = smol.loads
    smol.unload()
    assert not smol.is_loaded
    smol.load()
    assert smol.loads == loads + 1
    assert smol.generate([q])[0].text == first


@pytest.mark.slow
def test_seeded_sampling_repeats(smol: LlamaCppBackend) -> None:
    r = ask("s", "Tell me a one-line story.", temperature=1.0, top_p=0.95, seed=42, max_tokens=24)
    texts = {g.text for g in smol.generate([r, r])}
    assert len(texts) == 1


@pytest.mark.slow
def test_stop_and_max_tokens_are_honoured(smol: LlamaCppBackend) -> None:
    q = "What is the capital of France?"
    full = smol.generate([ask("f", q, max_tokens=24)])[0].text
    cut = full.lower().index("paris")
    stopped = smol.generate([ask("s", q, max_tokens=24, stop=["Paris"])])[0]
    assert stopped.text == full[:cut]
    short = smol.generate([ask("m", q, max_tokens=3)])[0]
    assert short.completion_tokens == 3


@pytest.mark.slow
def test_memory_counts_weights_and_kv_cache(smol: LlamaCppBackend, smollm2_path: Path) -> None:
    kv = 2 * 30 * 1024 * 3 * 64 * 2  # SmolLM2: 30 layers, 3 kv heads of dim 64, f16
    assert smol.memory_bytes() == smollm2_path.stat().st_size + kv + 64 * 2**20
