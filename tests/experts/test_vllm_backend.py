"""VLLMBackend's batching and sleep/wake logic over a mock engine; the real engine is in
test_vllm_real.py (marked slow). The mock lives here, beside its tests, not in the package."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from experts import hf_export, vllm_backend, vllm_host
from experts.backend import BackendError, ExpertBackend, ModelSourceError
from experts.factory import make_backend
from experts.options import BackendOptions
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest, SamplingParams
from experts.vllm_backend import (
    Conversation,
    EngineConfig,
    EngineOutput,
    VLLMBackend,
    VLLMEngine,
    check_hf_folder,
    to_vllm_sampling,
)
from experts.vllm_host import WorkerProcess
from tests.conftest import MakeHFFolder


class MockVLLMEngine:
    """Deterministic stand-in for the worker engine: answers echo the last user turn, and every
    call is recorded so tests can count engine calls, sleeps and wakes."""

    def __init__(self, config: EngineConfig, sleep_mode: bool = True):
        self.config = config
        self.sleep_mode = sleep_mode
        self.calls: list[tuple[str, Any]] = []
        self.asleep = False
        self.closed = False

    def chat(self, conversations: Sequence[Conversation], sampling: Sequence[dict[str, Any]]) -> list[EngineOutput]:
        assert not self.asleep and not self.closed, "chat() on a sleeping or closed engine"
        self.calls.append(("chat", (list(conversations), list(sampling))))
        for c in conversations:  # as vLLM's LLM.chat: every prompt is checked before any runs
            n = sum(len(m["content"].split()) for m in c)
            if n > self.config.max_model_len:
                raise ValueError(f"The decoder prompt (length {n}) is longer than the maximum model length "
                                 f"of {self.config.max_model_len}.")
        return [self._answer(c, s) for c, s in zip(conversations, sampling, strict=True)]

    def _answer(self, conversation: Conversation, sampling: dict[str, Any]) -> EngineOutput:
        whole = f"echo {conversation[-1]['content']}".split()
        words = whole[: sampling["max_tokens"]]
        prompt = sum(len(m["content"].split()) for m in conversation)
        return EngineOutput(" ".join(words), prompt, len(words), "length" if len(whole) > len(words) else "stop")

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        self.asleep = True

    def wake_up(self) -> None:
        self.calls.append(("wake_up", None))
        self.asleep = False

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closed = True

    def count(self, op: str) -> int:
        return sum(1 for name, _ in self.calls if name == op)


@pytest.fixture
def hf_folder(tmp_path: Path, make_hf_folder: MakeHFFolder) -> Path:
    return make_hf_folder(tmp_path / "model", {"architectures": ["LlamaForCausalLM"]})


def make(
    folder: Path | str, sleep_mode: bool | None = True, platform_sleeps: bool = True,
    options: BackendOptions | None = None,
) -> tuple[VLLMBackend, list[MockVLLMEngine]]:
    """A backend over mock engines; `platform_sleeps` is what the engine decides when the
    backend leaves sleep mode to the platform (sleep_mode=None)."""
    engines: list[MockVLLMEngine] = []

    def factory(config: EngineConfig) -> VLLMEngine:
        decided = platform_sleeps if config.sleep_mode is None else config.sleep_mode
        engines.append(MockVLLMEngine(config, sleep_mode=decided))
        return engines[-1]

    spec = BaseModelSpec(kind="vllm", source=str(folder), n_ctx=1024)
    return VLLMBackend(spec, engine_factory=factory, sleep_mode=sleep_mode, options=options), engines


def ask(request_id: str, text: str, system: str | None = None, **sampling: Any) -> GenerationRequest:
    messages = [ChatMessage(role="system", content=system)] if system else []
    messages.append(ChatMessage(role="user", content=text))
    return GenerationRequest(request_id=request_id, messages=messages, sampling=SamplingParams(**sampling))


def test_is_an_expert_backend_and_the_factory_builds_it(hf_folder: Path) -> None:
    backend = make_backend(BaseModelSpec(kind="vllm", source=str(hf_folder)))
    assert isinstance(backend, VLLMBackend) and isinstance(backend, ExpertBackend)
    assert backend.base_model_key == f"vllm:{hf_folder}"
    assert not backend.is_loaded and backend.loads == 0  # nothing starts until load()


def test_a_batch_is_one_engine_call_in_request_order(hf_folder: Path) -> None:
    backend, engines = make(hf_folder)
    backend.load()
    batch = [ask("a", "one two three"), ask("b", "four", system="be brief"), ask("c", "five six", max_tokens=2)]
    out = backend.generate(batch)
    assert engines[0].count("chat") == 1
    assert [g.request_id for g in out] == ["a", "b", "c"]
    assert [g.text for g in out] == ["echo one two three", "echo four", "echo five"]
    assert [(g.prompt_tokens, g.completion_tokens) for g in out] == [(3, 4), (3, 2), (2, 2)]
    assert [g.finish_reason for g in out] == ["stop", "stop", "length"]  # the engine's own
    conversations, _ = engines[0].calls[0][1]
    assert conversations[1] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "four"}]


def test_sampling_is_mapped_per_request(hf_folder: Path) -> None:
    backend, engines = make(hf_folder)
    backend.load()
    backend.generate([ask("a", "x"), ask("b", "y", temperature=0.7, top_p=0.9, max_tokens=5, seed=3, stop=["\n"])])
    _, sampling = engines[0].calls[0][1]
    assert sampling[0] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 128, "seed": 0, "stop": None}
    assert sampling[1] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": 3, "stop": ["\n"]}
    assert to_vllm_sampling(SamplingParams(seed=None))["seed"] is None


def test_engine_config_comes_from_the_spec(hf_folder: Path) -> None:
    backend, engines = make(hf_folder, sleep_mode=False)
    backend.load()
    assert engines[0].config == EngineConfig(
        model=str(hf_folder), max_model_len=1024, sleep_mode=False, dtype=vllm_backend.default_dtype(),
        weights_bytes=(hf_folder / "model.safetensors").stat().st_size,  # the config names no dtype: as stored
    )


@pytest.mark.parametrize(
    ("has_gpu", "flags", "dtype"),
    [(False, "fpu avx avx2 fma", "float32"), (False, "avx2 avx512f avx512_bf16", None),
     (False, "avx2 amx_bf16 amx_tile", None), (True, "avx2", None)],
)
def test_a_cpu_without_bf16_runs_float32(has_gpu: bool, flags: str, dtype: str | None) -> None:
    assert vllm_backend.choose_dtype(has_gpu, flags) == dtype


def test_engines_load_in_the_background_only_where_a_gpu_runs_them(hf_folder: Path) -> None:
    """On a CPU an engine start competes with the other model's generation for the same cores
    (measured: no gain), so the device worker only overlaps them on a GPU, unless told."""
    spec = BaseModelSpec(kind="vllm", source=str(hf_folder))
    assert VLLMBackend(spec).loads_in_background == vllm_backend.has_gpu()
    assert VLLMBackend(spec, background_loads=True).loads_in_background
    assert not VLLMBackend(spec, background_loads=False).loads_in_background


def test_unload_sleeps_and_load_wakes_without_a_new_engine(hf_folder: Path) -> None:
    backend, engines = make(hf_folder, sleep_mode=True)
    backend.load()
    backend.load()  # already loaded: nothing happens
    backend.unload()
    assert (backend.is_loaded, backend.is_asleep, backend.sleeps) == (False, True, 1)
    backend.unload()  # already asleep: not slept twice
    backend.load()
    backend.unload()
    backend.load()
    assert len(engines) == 1 and backend.loads == 1 and backend.wakes == 2
    assert [op for op, _ in engines[0].calls] == ["sleep", "wake_up", "sleep", "wake_up"]
    assert engines[0].calls[0] == ("sleep", 1)  # level 1: weights kept in host memory
    assert backend.generate([ask("a", "hi")])[0].text == "echo hi"


def test_without_sleep_mode_unload_frees_and_load_starts_again(hf_folder: Path) -> None:
    backend, engines = make(hf_folder, sleep_mode=False)
    backend.load()
    backend.unload()
    assert engines[0].closed and not backend.is_loaded and not backend.is_asleep
    backend.load()
    assert len(engines) == 2 and backend.loads == 2 and backend.wakes == 0
    assert engines[0].count("sleep") == 0


@pytest.mark.parametrize("platform_sleeps", [True, False])
def test_by_default_the_platform_decides_whether_unload_sleeps(hf_folder: Path, platform_sleeps: bool) -> None:
    backend, engines = make(hf_folder, sleep_mode=None, platform_sleeps=platform_sleeps)
    backend.load()
    assert engines[0].config.sleep_mode is None
    backend.unload()
    assert (backend.is_asleep, engines[0].closed) == (platform_sleeps, not platform_sleeps)


def test_close_stops_a_sleeping_engine_for_good(hf_folder: Path) -> None:
    backend, engines = make(hf_folder, sleep_mode=True)
    backend.load()
    backend.unload()
    backend.close()
    assert engines[0].closed and not backend.is_asleep
    backend.load()
    assert backend.loads == 2 and backend.wakes == 0


def test_generate_needs_an_awake_engine(hf_folder: Path) -> None:
    backend, _ = make(hf_folder)
    with pytest.raises(BackendError, match="before load"):
        backend.generate([ask("a", "hi")])
    backend.load()
    backend.unload()
    with pytest.raises(BackendError, match="before load"):
        backend.generate([ask("a", "hi")])
    backend.load()
    assert backend.generate([]) == []


def test_an_engine_that_drops_outputs_is_an_error(hf_folder: Path) -> None:
    backend, engines = make(hf_folder)
    backend.load()
    engines[0].chat = lambda conversations, sampling: []  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="2 requests, 0 outputs"):
        backend.generate([ask("a", "x"), ask("b", "y")])


def test_an_engine_refusing_one_prompt_fails_that_request_alone(hf_folder: Path) -> None:
    """An engine run in this process raises ValueError for the whole call, as vLLM does; each
    request is then run alone and only the refused one fails, with the engine's words."""
    backend, engines = make(hf_folder)
    backend.load()
    out = backend.generate([ask("a", "one two"), ask("b", "word " * 2000), ask("c", "three")])
    assert [g.text for g in out] == ["echo one two", "", "echo three"]
    assert out[1].error == "The decoder prompt (length 2000) is longer than the maximum model length of 1024."
    assert engines[0].count("chat") == 4  # the refused batch, then one call per request


def test_memory_is_the_weights_plus_a_fixed_kv_budget(hf_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_backend, "has_gpu", lambda: False)  # a GPU's share: test_vllm_gpu_budget.py
    (hf_folder / "model-00002.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    weights = 2 * (hf_folder / "model.safetensors").stat().st_size
    spec = BaseModelSpec(kind="vllm", source=str(hf_folder))
    assert VLLMBackend(spec).memory_bytes() == weights  # the config names no dtype: as stored
    assert VLLMBackend(spec, kv_cache_bytes=2**20).memory_bytes() == weights + 2**20
    (hf_folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "dtype": "bfloat16"}))
    assert VLLMBackend(spec, dtype="float32").memory_bytes() == 2 * weights  # upcast on load
    assert VLLMBackend(spec, dtype="bfloat16").memory_bytes() == weights


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "no such model folder"),
        ("no_config", "has no config.json"),
        ("bad_config", "not valid JSON"),
        ("no_weights", "has no weights"),
        ("lfs_pointer", "not a complete safetensors"),
        ("truncated", "not a complete safetensors"),
        ("no_chat_template", "has no chat template"),
        ("template_less_tokenizer_config", "has no chat template"),
    ],
)
def test_validate_names_what_is_wrong(hf_folder: Path, breakage: str, message: str) -> None:
    weights = hf_folder / "model.safetensors"
    if breakage == "missing":
        hf_folder = hf_folder / "nope"
    elif breakage == "no_config":
        (hf_folder / "config.json").unlink()
    elif breakage == "bad_config":
        (hf_folder / "config.json").write_text("{not json")
    elif breakage == "no_weights":
        weights.unlink()
    elif breakage == "lfs_pointer":
        weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 269060552\n")
    elif breakage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-3])
    elif breakage in ("no_chat_template", "template_less_tokenizer_config"):
        (hf_folder / "chat_template.jinja").unlink()  # vLLM's chat() would fail every batch
        if breakage == "template_less_tokenizer_config":
            (hf_folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    backend, engines = make(hf_folder)
    with pytest.raises(ModelSourceError, match=message):
        backend.validate()
    with pytest.raises(ModelSourceError, match=message):
        backend.load()
    assert engines == [] and backend.loads == 0


def test_a_good_folder_lists_its_weights(hf_folder: Path) -> None:
    assert check_hf_folder(hf_folder) == [hf_folder / "model.safetensors"]


def test_a_chat_template_in_tokenizer_config_is_one(hf_folder: Path) -> None:
    """Older exports keep the template in tokenizer_config.json, where transformers reads it too."""
    (hf_folder / "chat_template.jinja").unlink()
    (hf_folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert check_hf_folder(hf_folder) == [hf_folder / "model.safetensors"]


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_a_request_vllm_ended_on_an_error_fails(hf_folder: Path, reason: str) -> None:
    """vLLM ends a request with "error" on a request-level internal error (FinishReason.ERROR) or
    "abort"; its partial text is no answer, and only that request fails."""
    backend, engines = make(hf_folder)
    backend.load()
    answer = engines[0]._answer

    def ended(conversation: Conversation, sampling: dict[str, Any]) -> EngineOutput:
        out = answer(conversation, sampling)
        return EngineOutput(out.text, out.prompt_tokens, out.completion_tokens, reason) if "cut" in out.text else out

    engines[0]._answer = ended  # type: ignore[method-assign]
    out = backend.generate([ask("a", "one"), ask("b", "cut short"), ask("c", "three")])
    assert [g.text for g in out] == ["echo one", "", "echo three"]
    assert out[1].error == f"vLLM ended the request with finish_reason {reason!r}"
    assert out[0].error is None and out[2].error is None


def test_the_worker_reports_a_failed_start() -> None:
    """The real worker script under an interpreter without vLLM (ours, isolated): the start
    report says why, and the backend raises it instead of hanging."""
    with pytest.raises(BackendError, match="failed while starting the vLLM worker: ModuleNotFoundError.*vllm"):
        WorkerProcess(python=sys.executable, start_timeout_s=60)


def test_a_worker_that_dies_is_an_error_with_its_log(tmp_path: Path) -> None:
    dying = tmp_path / "python"
    dying.write_text("#!/bin/sh\necho 'no engine today' >&2\nexit 3\n")
    dying.chmod(0o755)
    with pytest.raises(BackendError, match="(?s)died while starting the vLLM worker.*no engine today"):
        WorkerProcess(python=str(dying), start_timeout_s=60)


def test_the_vllm_interpreter_is_found_or_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert vllm_host.vllm_python("/opt/vllm/bin/python") == "/opt/vllm/bin/python"  # backends.vllm_python
    monkeypatch.setattr(vllm_host, "REPO_VENV_PYTHON", tmp_path / "absent")
    monkeypatch.setattr(vllm_host.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match="scripts/setup_vllm.sh"):
        vllm_host.vllm_python()


def test_a_package_source_uses_the_cached_export(
    hf_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`package:<name>` resolves to the exported folder; a finished export (its marker written
    last) is reused as is, so validate() costs no conversion."""
    options = BackendOptions(data_dir=tmp_path / "data")
    cached = hf_export.exported_path("smollm2-135m-instruct", options.hf_dir)
    cached.parent.mkdir(parents=True)
    hf_folder.rename(cached)
    assert not hf_export.is_exported(cached)
    (cached / hf_export.DONE_MARKER).write_text("done\n")
    backend, engines = make("package:smollm2-135m-instruct", options=options)
    backend.load()
    assert engines[0].config.model == str(cached)
