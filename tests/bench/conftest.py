"""Benchmarks are scripts, not a package: tests load them by path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.container import SkillRoute
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_script(name: str) -> ModuleType:
    """`bench/<name>.py` as a module named `<name>_bench`."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_bench() -> Callable[[str], ModuleType]:
    return load_script


@pytest.fixture
def mock_service(tmp_path: Path, embedder: Embedder) -> Iterator[SkillRoute]:
    """A started service over two mock experts on two base models, for the load benches."""
    pool = small_pool([mock_expert("alpha", "m1"), mock_expert("beta", "m2")])
    c = SkillRoute(quiet_settings(tmp_path), pool, factory=mock_or_real, embedder=embedder)
    c.start()
    yield c
    c.close()
