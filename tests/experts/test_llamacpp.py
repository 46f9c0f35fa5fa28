"""LlamaCppBackend: fast checks on bad sources, and the real SmolLM2-135M (marked slow)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from experts.backend import BackendError, ExpertBackend, ModelSourceError
from experts.catalog import resolve_source
from experts.factory import make_backend
from experts.llamacpp import LlamaCppBackend, PastDeadline, _align_prompt, _chunk_ends
from experts.streaming import collect
from experts.types import BaseModelSpec, ChatMessage, Generation, GenerationRequest, SamplingParams

SMOL = "package:smollm2-135m-instruct"
QWEN = "package:qwen2.5-coder-0.5b-instruct"
# One thread: tests share two cores with other work, where OpenMP's spinning threads crawl.
THREADS = 1
TUTOR = (
    "You are a knowledgeable tutor. Explain your reasoning step by step, then give the final answer."
    " Be precise and careful with numbers."
)


def spec(source: str, n_ctx: int = 1024) -> BaseModelSpec:
    return BaseModelSpec(kind="llamacpp", source=source, n_ctx=n_ctx)


def ask(request_id: str, text: str, system: str | None = None, **sampling: Any) -> GenerationRequest:
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
    assert b.memory_bytes() == path.stat().st_size + kv + 8 * 2**20 + 320 * 4  # 4-token vocab
    assert not b.is_loaded
    rounded = LlamaCppBackend(spec(str(path), n_ctx=1000))  # llama.cpp allocates 1024 positions
    assert rounded.memory_bytes() == b.memory_bytes() + kv * 3  # 1024 = 256 * 4


def test_factory_builds_it(write_gguf: Callable[..., Path]) -> None:
    b = make_backend(spec(str(write_gguf())))
    assert isinstance(b, LlamaCppBackend) and isinstance(b, ExpertBackend)


def loaded(source: str, n_ctx: int = 1024) -> Iterator[LlamaCppBackend]:
    pytest.importorskip("llama_cpp")
    b = LlamaCppBackend(spec(source, n_ctx), n_threads=THREADS)
    try:
        b.validate()
    except ModelSourceError as exc:
        pytest.skip(str(exc))
    b.load()
    yield b
    b.unload()


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaCppBackend]:
    yield from loaded(SMOL)


@pytest.fixture(scope="module")
def qwen() -> Iterator[LlamaCppBackend]:
    yield from loaded(QWEN)


@pytest.mark.slow
def test_load_counted_once(smol: LlamaCppBackend) -> None:
    assert isinstance(smol, ExpertBackend)
    loads = smol.loads
    smol.load()
    assert smol.is_loaded and smol.loads == loads


@pytest.mark.slow
def test_prompt_evaluation_uses_the_configured_threads(smol: LlamaCppBackend) -> None:
    """Not llama-cpp-python's default of every core for batches (prompts), which crawls when
    the cores are shared."""
    import llama_cpp

    ctx = smol.llama.ctx
    assert llama_cpp.llama_n_threads(ctx) == llama_cpp.llama_n_threads_batch(ctx) == THREADS


@pytest.mark.slow
def test_batch_of_three_real_generations(smol: LlamaCppBackend) -> None:
    batch = [
        # With the model's default persona, or "You are a helpful assistant.", this greedy
        # answer is French nonsense on llama.cpp evaluating the prompt in one pass ("La" beats
        # "The" by 0.14; an fp32 run of the same weights says Paris, by 0.35); this persona
        # gives "The capital of France is Paris." for this wording and another.
        ask("a", "What is the capital of France?", system="Answer in one sentence.", max_tokens=24),
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


def first_token_logits(b: LlamaCppBackend, question: str) -> list[float]:
    """Logits of llama.cpp's last decode: with max_tokens=1 the sampled token is never
    evaluated, so these are the logits the first answer token was chosen from. (Llama.scores
    is only filled with logits_all=True, so it is read from the context itself.)"""
    import llama_cpp
    import numpy as np

    b.generate([ask("x", question, system=TUTOR, max_tokens=1)])
    llm = b.llama
    return list(np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),)))


def test_chunk_ends_are_the_prompts_own() -> None:
    """Cuts depend on the prompt's length and its last message's start, never on what ran before."""
    assert _chunk_ends(38, 24) == (8, 16, 24)  # a short question: the template, then one pass
    assert _chunk_ends(170, 150) == (8, 16, 32, 64, 96, 128, 150)  # a long persona, reused whole
    long_question = _chunk_ends(300, 24)  # a long last message: its head is reused in 32s
    assert long_question[-1] == 256 and 24 not in long_question
    assert _chunk_ends(10, 40) == (8, 9)  # the last prompt token is always left to generate()
    assert _chunk_ends(5, 0) == ()


class ChunkRecorder:
    """The slice of an AlignedLlama that _align_prompt drives: an empty cache, evaluations noted."""

    def __init__(self) -> None:
        import numpy as np

        self.n_tokens, self.evaluated = 0, list[int]()
        self.aligned_ends: tuple[int, ...] = ()
        self.input_ids = np.zeros(0, dtype=np.intc)

    def eval(self, tokens: list[int]) -> None:
        self.evaluated.append(len(tokens))
        self.n_tokens += len(tokens)


def test_prompt_evaluation_stops_between_chunks_once_the_time_is_up() -> None:
    """A request's deadline is checked before each chunk of its prompt: a long prompt evaluates
    no more chunks once the time is up, and leaves no chunk ends claimed in the cache."""
    llm = ChunkRecorder()
    _align_prompt(llm, list(range(300)), 24, deadline=time.perf_counter() + 60)
    assert llm.evaluated == [8, 8, 16, 32, 32, 32, 32, 32, 32, 32]  # in time: every chunk
    late = ChunkRecorder()
    with pytest.raises(PastDeadline):
        _align_prompt(late, list(range(300)), 24, deadline=time.perf_counter() - 0.001)
    assert late.evaluated == [] and late.aligned_ends == ()


@pytest.mark.slow
def test_a_timeout_bounds_the_evaluation_of_a_long_prompt(smol: LlamaCppBackend) -> None:
    """~900 prompt tokens take 8 s or more on a shared core; a 1 s timeout ends the request within a
    chunk's evaluation of it, not after the whole prompt."""
    text = " ".join(f"item{i}" for i in range(250)) + "\nSummarise."  # ~900 tokens: n_ctx is 1024
    request = ask("long", text, max_tokens=4).model_copy(update={"timeout_s": 1.0})
    started = time.perf_counter()
    (reply,) = smol.generate([request])
    assert reply.error == "timed out after 1 s" and time.perf_counter() - started < 6.0  # shared cores: slack


@pytest.mark.slow
def test_prompt_cache_does_not_change_the_numbers(qwen: LlamaCppBackend) -> None:
    """Bit-exact logits whatever ran before. Plain llama-cpp-python prefix reuse fails this
    on this model (differences up to 0.33), and its greedy answers then change."""
    questions = ["What is 12*7?", "What is 13*7? Show the steps.", "Why is the sky blue?"]
    fresh = {}
    for q in questions:
        qwen.unload()
        qwen.load()
        fresh[q] = first_token_logits(qwen, q)
    for i in [0, 0, 1, 1, 2, 2, 1, 0]:  # repeats, and prompts sharing the persona prefix
        logits = first_token_logits(qwen, questions[i])
        worst = max(abs(a - b) for a, b in zip(logits, fresh[questions[i]], strict=True))
        assert worst == 0.0, f"{questions[i]!r}: logits moved by up to {worst}"


@pytest.mark.slow
def test_prompt_cache_is_still_used(qwen: LlamaCppBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests sharing a long persona evaluate it once (counted at llama.cpp's eval)."""
    persona = TUTOR + " " + " ".join(f"Rule {i}: check each step twice." for i in range(12))
    qwen.unload()
    qwen.load()
    evaluated: list[int] = []
    real_eval = qwen.llama.eval

    def counting_eval(tokens: list[int]) -> None:
        evaluated.append(len(tokens))
        real_eval(tokens)

    monkeypatch.setattr(qwen.llama, "eval", counting_eval)
    first = qwen.generate([ask("1", "What is 2+2?", system=persona, max_tokens=1)])[0]
    assert first.prompt_tokens > 120 and sum(evaluated) == first.prompt_tokens
    evaluated.clear()
    second = qwen.generate([ask("2", "What is 3+3?", system=persona, max_tokens=1)])[0]
    assert second.prompt_tokens == first.prompt_tokens
    assert len(evaluated) == 1 and sum(evaluated) < 32  # the question and what follows it, in one pass


@pytest.mark.slow
def test_seeded_sampling_repeats(smol: LlamaCppBackend) -> None:
    r = ask("s", "Tell me a one-line story.", temperature=1.0, top_p=0.95, seed=42, max_tokens=24)
    texts = {g.text for g in smol.generate([r, r])}
    assert len(texts) == 1


@pytest.mark.slow
def test_stop_and_max_tokens_are_honoured(smol: LlamaCppBackend) -> None:
    q, persona = "What is the capital of France?", "Answer in one sentence."
    full = smol.generate([ask("f", q, system=persona, max_tokens=24)])[0].text
    cut = full.index("Paris")
    stopped = smol.generate([ask("s", q, system=persona, max_tokens=24, stop=["Paris"])])[0]
    assert stopped.text == full[:cut]
    short = smol.generate([ask("m", q, system=persona, max_tokens=3)])[0]
    assert short.completion_tokens == 3


@pytest.mark.slow
def test_finish_reason_is_llama_cpp_s_own(smol: LlamaCppBackend) -> None:
    """"stop" for a reply that ended on its own or at a stop string, "length" for one max_tokens
    cut: generated whole, streamed, or generated under a time limit (streamed inside)."""
    q, persona = "What is the capital of France?", "Answer in one sentence."
    asked = [ask("f", q, system=persona, max_tokens=64), ask("s", q, system=persona, max_tokens=64, stop=["Paris"]),
             ask("m", q, system=persona, max_tokens=3)]
    replies = smol.generate(asked)
    assert [g.finish_reason for g in replies] == ["stop", "stop", "length"] and replies[0].completion_tokens < 64
    streamed = [list(smol.stream(r))[-1] for r in asked]
    timed = smol.generate([r.model_copy(update={"timeout_s": 60.0}) for r in asked])
    assert [g.finish_reason for g in streamed if isinstance(g, Generation)] == ["stop", "stop", "length"]
    assert [g.finish_reason for g in timed] == ["stop", "stop", "length"]


@pytest.mark.slow
def test_a_request_that_cannot_be_answered_fails_alone_in_its_batch(smol: LlamaCppBackend) -> None:
    """A prompt over n_ctx and a request out of time are each that request's error; the rest
    of the batch is answered."""
    too_long = ask("long", " ".join(str(i) for i in range(3000)), max_tokens=8)
    out_of_time = ask("slow", "Count from one to two hundred.", max_tokens=400).model_copy(update={"timeout_s": 0.05})
    fine = ask("fine", "What is the capital of France?", max_tokens=8)
    long, slow, ok = smol.generate([too_long, out_of_time, fine])
    assert long.error and "context window" in long.error and long.text == ""
    assert slow.error == "timed out after 0.05 s" and slow.latency_s < 5
    assert ok.error is None and ok.text and ok.completion_tokens == 8
    in_time = smol.generate([fine.model_copy(update={"timeout_s": 60.0})])[0]  # streamed, stopped by no one
    assert (in_time.text, in_time.completion_tokens) == (ok.text, ok.completion_tokens)  # the same greedy tokens


def rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_estimate_matches_resident_growth() -> None:
    """The estimate the scheduler budgets with, against what loading really costs, and the
    weights held in the process's own memory (a load reads them; nothing is left mapped)."""
    pytest.importorskip("llama_cpp")
    b = LlamaCppBackend(spec(QWEN, n_ctx=2048), n_threads=THREADS)
    try:
        b.validate()
    except ModelSourceError as exc:
        pytest.skip(str(exc))
    before, anon_before = rss_bytes(), rss_bytes("RssAnon")
    b.load()
    b.generate([ask("m", "Say hi.", max_tokens=4)])  # touches every weight page
    grown, anon_grown = rss_bytes() - before, rss_bytes("RssAnon") - anon_before
    b.unload()
    assert abs(b.memory_bytes() - grown) < 0.1 * grown, (b.memory_bytes() >> 20, grown >> 20)
    assert anon_grown > resolve_source(QWEN).stat().st_size, (anon_grown >> 20, grown >> 20)


@pytest.mark.slow
def test_stream_hands_on_each_token_as_it_is_sampled(smol: LlamaCppBackend) -> None:
    """The same greedy text as generate, arriving token by token: the first piece comes long
    before the reply is done; a stop string and a prompt over n_ctx behave as in generate."""
    import time

    # a reply that runs the whole 32 tokens: "Count from one to twenty in words." did with an
    # earlier llama.cpp build, and ends after 13 tokens with another (greedy text moves with the build)
    r = ask("s", "Count from 1 to 20, one number per line.", system="You are a helpful assistant.", max_tokens=32)
    whole = smol.generate([r])[0]
    arrivals, events, started = [], [], time.perf_counter()
    for event in smol.stream(r):
        arrivals.append(time.perf_counter() - started)
        events.append(event)
    pieces, last = events[:-1], events[-1]
    assert isinstance(last, Generation) and last.error is None
    assert "".join(str(p) for p in pieces) == last.text == whole.text
    assert len(pieces) >= 20 and last.completion_tokens == whole.completion_tokens == 32
    assert arrivals[0] < arrivals[-1] / 2, arrivals
    word = whole.text.split()[3]
    stopped = list(smol.stream(r.model_copy(update={"sampling": r.sampling.model_copy(update={"stop": [word]})})))
    assert stopped[-1].text == whole.text[:whole.text.index(word)]  # type: ignore[union-attr]
    too_long = list(smol.stream(ask("long", " ".join(str(i) for i in range(3000)), max_tokens=8)))
    assert len(too_long) == 1 and "context window" in str(too_long[0].error)  # type: ignore[union-attr]


@pytest.mark.slow
def test_streamed_and_timed_replies_count_tokens_as_generate_does(smol: LlamaCppBackend) -> None:
    """A stream has no usage from llama.cpp; its counts must still be generate()'s, not its text
    pieces (multi-byte characters take several tokens a piece), for a reply ended by its end
    token, by a stop string and by max_tokens."""
    q, persona = "What is the capital of France?", "Answer in one sentence."
    asked = [ask("eog", q, system=persona, max_tokens=64),
             ask("stop", q, system=persona, max_tokens=64, stop=["Paris"]),
             ask("cats", "Write the Japanese word for cat in hiragana, and three emoji of cats.", max_tokens=40)]
    plain = smol.generate(asked)
    assert [g.finish_reason for g in plain] == ["stop", "stop", "length"]
    timed = smol.generate([r.model_copy(update={"timeout_s": 60.0}) for r in asked])
    streamed = [collect(smol.stream(r)) for r in asked]

    def counts(gens: list[Generation]) -> list[tuple[str, int, int, str | None]]:
        return [(g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in gens]

    assert counts(timed) == counts(plain) == counts(streamed)


@pytest.mark.slow
@pytest.mark.parametrize("system", [None, TUTOR])
def test_the_context_check_counts_the_prompt_llama_cpp_evaluates(smol: LlamaCppBackend, system: str | None) -> None:
    """The check admitted prompts by their texts plus 16 tokens, while SmolLM2's template adds its
    default persona (39 tokens evaluated, 25 counted): an admitted prompt's answer was cut short."""
    from experts.options import BackendOptions
    from experts.traits import prompt_tokens
    from experts.types import ExpertSpec

    q = "What is the capital of France? Explain."
    evaluated = smol.generate([ask("p", q, system=system, max_tokens=1)])[0].prompt_tokens
    expert = ExpertSpec(name="e", base=spec(SMOL), system_prompt=system)
    assert prompt_tokens(expert, q, BackendOptions()) == evaluated
