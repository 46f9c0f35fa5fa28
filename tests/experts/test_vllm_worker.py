"""experts/vllm_worker.py's protocol, run for real over a fake vLLM (tests/experts/fake_vllm):
one worker process hosts engine after engine, and a failed request leaves it serving. The real
vLLM runs in test_vllm_real.py (slow)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from experts import vllm_backend
from experts.backend import BackendError
from experts.options import BackendOptions
from experts.types import BaseModelSpec, ChatMessage, GenerationRequest, SamplingParams
from experts.vllm_backend import EngineConfig, EngineOutput, VLLMBackend, WorkerEngine
from experts.vllm_host import WorkerProcess
from tests.conftest import MakeHFFolder

FAKE_VLLM = Path(__file__).with_name("fake_vllm")


@pytest.fixture
def engine_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Writes an interpreter that finds the fake vLLM (`fake_python`); returns the file where
    every engine built is logged as `<pid> <model> <dtype> <kwargs>`."""
    python = tmp_path / "python"
    runner = (f"import runpy, sys; sys.path.insert(0, {str(FAKE_VLLM)!r}); "
              "runpy.run_path(sys.argv[1], run_name='__main__')")
    python.write_text(f'#!/bin/sh\nshift\nexec {sys.executable} -I -c "{runner}" "$@"\n')  # shift: drop our -I
    python.chmod(0o755)
    log = tmp_path / "engines.log"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))  # the worker inherits the environment
    return log


def fake_python(engine_log: Path) -> BackendOptions:
    """The backend options that point vLLM's interpreter at the fake (`backends.vllm_python`)."""
    return BackendOptions(vllm_python=str(engine_log.with_name("python")))


@pytest.fixture
def folder(tmp_path: Path, make_hf_folder: MakeHFFolder) -> Path:
    return make_hf_folder(tmp_path / "smol", {"dtype": "bfloat16"})


def ask(text: str) -> GenerationRequest:
    return GenerationRequest(request_id=text, messages=[ChatMessage(role="user", content=text)],
                             sampling=SamplingParams(max_tokens=4))


def test_unload_stops_the_engine_and_load_starts_one_in_the_same_process(engine_log: Path, folder: Path) -> None:
    backend = VLLMBackend(BaseModelSpec(kind="vllm", source=str(folder)), dtype="float32",
                          options=fake_python(engine_log))
    backend.load()
    replies = backend.generate([ask("hi"), ask("a b c")])
    assert [(g.text, g.finish_reason) for g in replies] == [("smol says hi", "stop"), ("smol says a b", "length")]
    first = backend._engine
    assert isinstance(first, WorkerEngine) and first.report["dtype"] == "float32" and not first.sleep_mode
    backend.unload()
    assert not backend.is_loaded and first.process.alive
    backend.load()
    assert backend.generate([ask("again")])[0].text == "smol says again"
    engines = engine_log.read_text().splitlines()
    assert len(engines) == 2 == backend.loads
    assert {line.split()[0] for line in engines} == {str(first.process.pid)}  # one process, two engines
    assert all(f"{folder} float32" in line for line in engines)
    backend.close()
    assert not first.process.alive


def test_a_worker_that_grew_is_replaced_at_the_next_load(
    engine_log: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fake engine leaves 40 MB behind; past 100 MB over the worker's size after its first
    engine, the backend ends the worker and the next load starts a fresh one."""
    monkeypatch.setenv("FAKE_VLLM_LEAK_MB", "40")
    monkeypatch.setattr(vllm_backend, "RECYCLE_GROWTH_BYTES", 100 * 2**20)
    backend = VLLMBackend(BaseModelSpec(kind="vllm", source=str(folder)), dtype="float32",
                          options=fake_python(engine_log))
    pids = []
    for _ in range(5):
        backend.load()
        engine = backend._engine
        assert isinstance(engine, WorkerEngine)
        pids.append(engine.process.pid)
        backend.unload()
    backend.close()
    # engines 1-4 share a worker: after the 4th stop it holds 3 x 40 MB more than after the 1st
    assert pids[:4] == [pids[0]] * 4 and pids[4] != pids[0]
    assert backend.loads == 5


def test_a_worker_that_died_is_noticed_and_the_next_load_starts_a_new_one(engine_log: Path, folder: Path) -> None:
    """A worker killed under a loaded backend (the OOM killer, a crash, a call timing out) is no
    loaded engine: the device worker's next load() starts a new process and engine, and the
    dead process's log file is closed."""
    backend = VLLMBackend(BaseModelSpec(kind="vllm", source=str(folder)), dtype="float32",
                          options=fake_python(engine_log))
    backend.load()
    dead = backend._engine
    assert isinstance(dead, WorkerEngine)
    os.killpg(dead.process.pid, signal.SIGKILL)
    dead.process._proc.wait(timeout=30)
    with pytest.raises(BackendError, match="has exited"):
        backend.generate([ask("hi")])
    assert not backend.is_loaded
    backend.load()
    try:
        assert backend.generate([ask("again")])[0].text == "smol says again"
        fresh = backend._engine
        assert isinstance(fresh, WorkerEngine) and fresh.process.pid != dead.process.pid
        assert backend.loads == 2 and dead.process._log.closed
    finally:
        backend.close()


def test_a_failed_request_leaves_the_worker_serving(engine_log: Path, folder: Path) -> None:
    process = WorkerProcess(fake_python(engine_log).vllm_python)
    assert process.ready["platform"] == "cpu" and process.ready["sleep_available"] is False
    with pytest.raises(BackendError, match="chat: RuntimeError: no engine is running"):
        process.call({"op": "chat", "conversations": [], "sampling": []})
    with pytest.raises(BackendError, match="starting the engine: ValueError: cannot load .*broken"):
        WorkerEngine(EngineConfig(model=str(folder.with_name("broken")), max_model_len=256), process)
    engine = WorkerEngine(EngineConfig(model=str(folder), max_model_len=256), process)
    with pytest.raises(BackendError, match="already running here"):
        WorkerEngine(EngineConfig(model=str(folder), max_model_len=256), process)
    with pytest.raises(BackendError, match="cannot sleep"):
        engine.sleep()
    with pytest.raises(BackendError, match="unknown op 'dance'"):
        process.call({"op": "dance"})
    answer = engine.chat([[{"role": "user", "content": "still here"}]], [{"max_tokens": 8}])[0]
    assert answer.text == "smol says still here"
    engine.close()  # stops the engine only: the process was given to it
    assert process.alive
    process.close()
    assert not process.alive


def test_a_prompt_over_max_model_len_fails_alone(engine_log: Path, folder: Path) -> None:
    """vLLM refuses a whole chat call for one prompt over max_model_len (the fake does too); the
    worker counts each templated prompt first and answers the long one alone."""
    backend = VLLMBackend(BaseModelSpec(kind="vllm", source=str(folder), n_ctx=128), dtype="float32",
                          options=fake_python(engine_log))
    backend.load()
    try:
        out = backend.generate([ask("hi"), ask("word " * 200), ask("a b c")])
    finally:
        backend.close()
    assert [g.text for g in out] == ["smol says hi", "", "smol says a b"]
    assert out[1].error == "the prompt is 202 tokens, not under the model's maximum length of 128"
    assert out[0].error is None and out[2].error is None


def chat(engine_log: Path, folder: Path, texts: list[str], sampling: list[dict[str, Any]] | None = None
         ) -> list[EngineOutput]:
    """The fake engine's outputs for one user turn per text (8 tokens each unless `sampling` says)."""
    process = WorkerProcess(fake_python(engine_log).vllm_python)
    engine = WorkerEngine(EngineConfig(model=str(folder), max_model_len=128), process)
    try:
        return engine.chat([[{"role": "user", "content": t}] for t in texts],
                           sampling or [{"max_tokens": 8}] * len(texts))
    finally:
        process.close()


def test_a_prompt_vllm_still_refuses_fails_alone(engine_log: Path, folder: Path) -> None:
    """Where vLLM's count and the template's disagree (the fake's `<wide>`), the refused batch is
    run one request at a time and only the refused one fails, with vLLM's own words."""
    out = chat(engine_log, folder, ["hi", "<wide> x", "there"])
    assert [o.text for o in out] == ["smol says hi", "", "smol says there"]
    assert out[1].error is not None and out[1].error.startswith("The decoder prompt (length 1003) is longer than")


def test_sampling_vllm_refuses_fails_its_request_alone(engine_log: Path, folder: Path) -> None:
    """SamplingParams were built for the whole batch up front: one refused (vLLM's own
    VLLMValidationError) failed every request beside it."""
    out = chat(engine_log, folder, ["hi", "x", "there"],
               [{"max_tokens": 8}, {"max_tokens": 8, "stop": [""]}, {"max_tokens": 8}])
    assert [o.text for o in out] == ["smol says hi", "", "smol says there"]
    assert out[1].error == "vLLM refused the sampling parameters: stop cannot contain an empty string."


def test_a_conversation_its_template_refuses_fails_alone(engine_log: Path, folder: Path) -> None:
    """The chat template raises jinja2's TemplateError (neither ValueError nor vLLM's own error)
    for two user turns in a row; only that request fails, with the template's words."""
    backend = VLLMBackend(BaseModelSpec(kind="vllm", source=str(folder)), dtype="float32",
                          options=fake_python(engine_log))
    twice = GenerationRequest(request_id="twice", sampling=SamplingParams(max_tokens=4), messages=[
        ChatMessage(role="user", content="hi"), ChatMessage(role="user", content="again")])
    backend.load()
    try:
        out = backend.generate([ask("hi"), twice, ask("there")])
    finally:
        backend.close()
    assert [g.text for g in out] == ["smol says hi", "", "smol says there"]
    assert out[1].error is not None and "Conversation roles must alternate" in out[1].error
    assert out[0].error is None and out[2].error is None


def test_a_conversation_vllm_cannot_render_fails_alone(engine_log: Path, folder: Path) -> None:
    """A template error from vLLM's own rendering (the fake's `<jinja>`), after the tokenizer's
    passed: the batch is run one request at a time and only that request fails."""
    out = chat(engine_log, folder, ["hi", "<jinja> x", "there"])
    assert [o.text for o in out] == ["smol says hi", "", "smol says there"]
    assert out[1].error == "the engine's renderer cannot render this conversation"


def test_an_engine_whose_core_died_is_noticed_and_the_next_load_starts_a_new_one(
    engine_log: Path, folder: Path
) -> None:
    """vLLM raises EngineDeadError for every call once its engine-core process is gone, while the
    worker lives on: the worker drops that engine and says so, and the backend is no longer
    loaded, so the next load starts an engine that answers."""
    backend = VLLMBackend(BaseModelSpec(kind="vllm", source=str(folder)), dtype="float32",
                          options=fake_python(engine_log))
    backend.load()
    dead = backend._engine
    assert isinstance(dead, WorkerEngine)
    try:
        with pytest.raises(BackendError, match="EngineDeadError"):
            backend.generate([ask("<die>")])
        assert not backend.is_loaded
        with pytest.raises(BackendError, match="no engine is running"):  # the worker dropped it
            dead.process.call({"op": "chat", "conversations": [], "sampling": []})
        backend.load()
        assert backend.generate([ask("again")])[0].text == "smol says again"
        assert backend.loads == 2
    finally:
        backend.close()
