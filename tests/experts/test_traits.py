"""What a backend kind implies for the core, and whether an expert can take a prompt at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from experts.backend import BackendError, ModelSourceError
from experts.options import BackendOptions
from experts.replay import COT_TOKENS
from experts.traits import LOCAL_DEVICE, check_prompt, prompt_scope, prompt_tokens, traits
from experts.types import BaseModelSpec, ExpertSpec

SMOL = BaseModelSpec(kind="llamacpp", source="package:smollm2-135m-instruct", n_ctx=2048)
REPLAY = Path(__file__).resolve().parents[2].parent / "shared/data/mmlu_pro_replay"


def expert(base: BaseModelSpec, persona: str | None = None) -> ExpertSpec:
    return ExpertSpec(name="e", base=base, system_prompt=persona)


def test_each_kind_says_where_it_runs_and_what_a_reply_costs() -> None:
    llama, replay = traits(SMOL), traits(BaseModelSpec(kind="replay", source="/r", model="m"))
    assert (llama.default_device, llama.computes_here, llama.own_device) == (LOCAL_DEVICE, True, False)
    assert (replay.own_device, replay.computes_here) == (True, False) and replay.default_device != LOCAL_DEVICE
    assert llama.output_tokens(96) == 96 and replay.output_tokens(96) == COT_TOKENS


def test_a_recording_takes_only_the_questions_it_holds() -> None:
    if not REPLAY.is_dir():
        pytest.skip(f"the replay corpus is not at {REPLAY}")
    spec = expert(BaseModelSpec(kind="replay", source=str(REPLAY), model="gemma-7b"))
    with pytest.raises(BackendError, match="no recorded question"):
        check_prompt(spec, "What is the capital of Mars?", 8)
    other = expert(BaseModelSpec(kind="replay", source=str(REPLAY), model="Mistral-7B-v0.1"))
    assert prompt_scope(spec, 8) == prompt_scope(other, 96)  # one folder: checked once for all its models


def test_a_prompt_over_the_context_window_is_refused_naming_the_window() -> None:
    pytest.importorskip("llama_cpp")
    try:
        short = prompt_tokens(expert(SMOL), "What is 3+5?", BackendOptions())
    except ModelSourceError as exc:
        pytest.skip(str(exc))
    assert 16 < short < 40  # the real tokenizer's count, with the chat template
    check_prompt(expert(SMOL), "What is 3+5?", 96)
    long = "Please add these numbers: " + " ".join(str(i) for i in range(3000))
    assert prompt_tokens(expert(SMOL), long, BackendOptions()) > 2048
    with pytest.raises(BackendError, match=r"the prompt is \d+ tokens and e answers in up to 96: over its context "
                                           r"window of 2048 tokens"):
        check_prompt(expert(SMOL), long, 96)
    persona = expert(SMOL, "You are an expert. " * 100)  # a persona counts against the window too
    assert prompt_tokens(persona, "What is 3+5?", BackendOptions()) > short + 300
    assert prompt_scope(persona, 96) != prompt_scope(expert(SMOL), 96)


def test_kinds_with_no_known_limit_take_any_prompt() -> None:
    for kind in ("mock", "openai"):
        check_prompt(expert(BaseModelSpec(kind=kind, source="x")), "x" * 100_000, 96)


def test_a_vllm_prompt_is_counted_as_its_worker_counts_it_chat_template_included(tmp_path: Path) -> None:
    """The admission check counts what the vLLM worker refuses by (`vllm_worker._too_long`: the
    chat template applied): texts plus a fixed 16 undercounted SmolLM2's default persona by 7."""
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from experts.catalog import resolve_source
    from experts.vllm_worker import _too_long

    try:
        gguf = resolve_source(SMOL.source)
    except ModelSourceError as exc:
        pytest.skip(str(exc))
    folder = tmp_path / "smol-hf"  # the tokenizer is all counting reads of an HF folder
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    spec = BaseModelSpec(kind="vllm", source=str(folder), n_ctx=2048)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for persona in (None, "You are a careful chemist."):
        counted = prompt_tokens(expert(spec, persona), "What is 3+5?", BackendOptions())
        conversation = ([{"role": "system", "content": persona}] if persona else []) + [
            {"role": "user", "content": "What is 3+5?"}]
        at = SimpleNamespace(llm_engine=SimpleNamespace(model_config=SimpleNamespace(max_model_len=counted)),
                             get_tokenizer=lambda t=tokenizer: t)
        assert _too_long(at, [conversation])  # the worker refuses it at a window of exactly that many
        at.llm_engine.model_config.max_model_len = counted + 1
        assert not _too_long(at, [conversation])  # and takes it with one more
