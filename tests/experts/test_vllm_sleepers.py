"""Sleeping vLLM engines are bounded: each keeps its weights in host memory, and the worker
counts only resident models, so every swap left one more asleep (twenty 7B models: ~280 GB)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from experts.types import BaseModelSpec
from experts.vllm_backend import VLLMBackend, VLLMEngine
from experts.vllm_host import EngineConfig
from experts.vllm_sleepers import Sleepers
from tests.conftest import MakeHFFolder
from tests.experts.test_vllm_backend import MockVLLMEngine, ask


@pytest.fixture
def folders(tmp_path: Path, make_hf_folder: MakeHFFolder) -> list[Path]:
    return [make_hf_folder(tmp_path / f"model{i}", {"architectures": ["LlamaForCausalLM"]}) for i in range(3)]


def backends(folders: list[Path], sleepers: Sleepers) -> tuple[list[VLLMBackend], list[MockVLLMEngine]]:
    engines: list[MockVLLMEngine] = []

    def factory(config: EngineConfig) -> VLLMEngine:
        engines.append(MockVLLMEngine(config, sleep_mode=True))
        return engines[-1]

    made = [VLLMBackend(BaseModelSpec(kind="vllm", source=str(f), n_ctx=1024), engine_factory=factory,
                        sleep_mode=True, sleepers=sleepers) for f in folders]
    return made, engines


def swap_through(made: list[VLLMBackend]) -> None:
    """Each model loaded in turn, the one before put to sleep to make room (as the worker swaps)."""
    for before, after in zip([None, *made], made, strict=False):
        if before is not None:
            before.unload()
        after.load()


def test_past_the_engine_bound_the_least_recently_slept_engine_stops(folders: list[Path]) -> None:
    sleepers = Sleepers(budget_bytes=2**40, max_engines=1)
    made, engines = backends(folders, sleepers)
    swap_through(made)  # 0 and 1 slept, in that order; 2 is awake
    assert engines[0].closed and not made[0].is_asleep  # stopped, its weights let go
    assert made[1].is_asleep and not engines[1].closed
    made[0].load()  # starts anew: slower, not wrong
    assert made[0].loads == 2 and made[0].generate([ask("a", "hi")])[0].text == "echo hi"


def test_past_the_memory_bound_the_oldest_sleepers_stop_the_newest_stays(folders: list[Path]) -> None:
    made, engines = backends(folders, Sleepers(budget_bytes=1))  # every engine's weights are over it
    swap_through(made)
    made[2].unload()
    assert [e.closed for e in engines] == [True, True, False] and made[2].is_asleep
    assert made[2].sleepers.holding() == made[2].memory_bytes()


def test_a_woken_engine_holds_nothing_asleep_and_is_never_stopped(folders: list[Path]) -> None:
    sleepers = Sleepers(budget_bytes=2**40, max_engines=1)
    made, engines = backends(folders[:2], sleepers)
    made[0].load()
    made[0].unload()
    made[0].load()  # woken: out of the sleepers
    made[1].load()
    made[1].unload()
    assert not engines[0].closed and made[0].is_loaded and sleepers.holding() == made[1].memory_bytes()


class Failing:
    def stop_if_asleep(self) -> None:
        raise RuntimeError("the engine's process did not answer")


class Stopping:
    stopped = False

    def stop_if_asleep(self) -> None:
        self.stopped = True


def test_a_victim_that_fails_to_stop_leaves_the_others_to_stop() -> None:
    sleepers, later = Sleepers(budget_bytes=0, max_engines=1), Stopping()
    sleepers.slept(Failing(), 1)
    sleepers.slept(later, 1)  # the failing one goes first: its raise does not reach the sleeper
    sleepers.slept(Stopping(), 1)
    assert later.stopped


def test_an_engine_in_use_is_left_not_waited_for(folders: list[Path]) -> None:
    """Picked, then woken and generating on another worker before its stop: the stop waited for
    its generation while the caller's worker held its own device."""
    made, engines = backends(folders[:1], Sleepers(budget_bytes=2**40))
    made[0].load()
    made[0].unload()
    held, done = threading.Event(), threading.Event()

    def in_use() -> None:
        with made[0]._lock:
            held.set()
            done.wait(30)

    threading.Thread(target=in_use, daemon=True).start()
    assert held.wait(30)
    try:
        made[0].stop_if_asleep()  # returns at once
    finally:
        done.set()
    assert not engines[0].closed and made[0].is_asleep
