"""`skillroute serve` profiles a pool of recordings in the driver, while Ray starts, so the
replica only loads it; any other pool is left to the replica and its workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from orchestrator.container import SkillRoute
from orchestrator.pools.loader import load_pool_config
from orchestrator.serving.app import coarse_progress, prepare_lookups
from orchestrator.settings import DEFAULT_POOL
from orchestrator.store.repositories.experts import ExpertRepository
from tests.orchestrator.conftest import quiet_settings

SliceRecording = Callable[[Path, Sequence[str], int], Path]
MODELS = ["Llama-2-7b-hf", "Mistral-7B-v0.1", "gemma-7b"]


def test_a_recorded_pool_is_profiled_by_the_driver_and_only_loaded_after(
        slice_recording: SliceRecording, tmp_path: Path) -> None:
    folder = slice_recording(tmp_path / "rec", MODELS, 4)
    settings, logged = quiet_settings(tmp_path / "data"), []
    thread = prepare_lookups(settings, Path(f"replay:{folder}"), logged.append)
    assert thread is not None
    thread.join(timeout=120)
    assert not thread.is_alive() and logged[0].startswith("profiling recordings: ")
    c = SkillRoute(settings, load_pool_config(f"replay:{folder}"))
    try:
        with c.db.session() as s:
            assert {r.status for r in ExpertRepository(s).list()} == {"ready"}
        c.profiler.profile = pytest.fail  # type: ignore[assignment]  # the replica profiles nothing
        c.bootstrap()
        assert len(c.pool.snapshot.experts) == len(MODELS)
    finally:
        c.close()


def test_a_pool_with_models_to_run_is_left_to_the_replica(tmp_path: Path) -> None:
    assert prepare_lookups(quiet_settings(tmp_path), DEFAULT_POOL, print) is None


def test_progress_is_logged_in_tenths() -> None:
    lines: list[str] = []
    report = coarse_progress(lines.append)
    for done in range(1001):
        report(done, 1000)
    assert len(lines) == 11 and lines[-1] == "profiling recordings: 1000/1000 answers"
