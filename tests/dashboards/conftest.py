"""The dashboards tests run over the same mock-backend SkillRoute as tests/orchestrator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "orchestrator" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_orchestrator_conftest", _path)
assert _spec is not None and _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

container, client = _shared.container, _shared.client  # re-exported fixtures
