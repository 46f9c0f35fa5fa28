"""A start applies what changed in the pool file since the last start (`services.pool_file`),
not the whole file over a PATCH made since: the file never changed, the user's change stays."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from experts.types import ExpertSpec, SamplingParams
from orchestrator.container import SkillRoute
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.services.pool_file import POOL_FILE_KEY
from orchestrator.store.repositories.state import StateRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

ALPHA, GAMMA = mock_expert("alpha", "m1", "file persona"), mock_expert("gamma", "m2", "file persona")
USERS = {"system_prompt": "user persona", "sampling": {"temperature": 0.3}}


def start(data_dir: Path, embedder: Embedder, experts: list[ExpertSpec]) -> SkillRoute:
    c = SkillRoute(quiet_settings(data_dir), small_pool(experts), embedder=embedder, factory=mock_or_real)
    c.bootstrap()
    return c


def patched(c: SkillRoute, name: str, change: dict[str, Any]) -> tuple[str, float | None]:
    """A PATCH of the expert, profiled again at once, as the 202 then the queue would."""
    row, _ = c.experts.update(c.experts.find(name).id, ExpertChange(change), background=False)
    c.experts.profile_now([row.id])
    row = c.experts.find(name)
    return row.status, row.accuracy


def spec(c: SkillRoute, name: str) -> dict[str, Any]:
    return c.experts.find(name).spec


def test_a_patch_outlives_a_start_on_the_unchanged_file(tmp_path: Path, embedder: Embedder,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The start put the file's persona and temperature back and profiled it again on them."""
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    profiled = patched(c, "alpha", USERS)
    c.close()
    with caplog.at_level(logging.INFO, logger="orchestrator.services.pool_file"):
        c = start(tmp_path, embedder, [ALPHA, GAMMA])
    after = spec(c, "alpha")
    assert after["system_prompt"] == "user persona" and after["sampling"]["temperature"] == 0.3
    assert (c.experts.find("alpha").status, c.experts.find("alpha").accuracy) == profiled
    assert not any("pool file: changed" in r.getMessage() for r in caplog.records)
    c.close()


def test_a_change_in_the_file_applies_and_leaves_the_patch_of_the_rest(tmp_path: Path, embedder: Embedder) -> None:
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    patched(c, "alpha", USERS)
    c.close()
    sampling = SamplingParams(max_tokens=64)  # the file changes max_tokens only; temperature stays 0.0 in it
    c = start(tmp_path, embedder, [ALPHA.model_copy(update={"sampling": sampling, "timeout_s": 30.0}), GAMMA])
    after = spec(c, "alpha")
    assert after["sampling"]["max_tokens"] == 64 and after["timeout_s"] == 30.0
    assert after["sampling"]["temperature"] == 0.3 and after["system_prompt"] == "user persona"
    c.close()


def test_a_persona_changed_in_the_file_replaces_the_patched_one(tmp_path: Path, embedder: Embedder) -> None:
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    patched(c, "alpha", USERS)
    c.close()
    c = start(tmp_path, embedder, [ALPHA.model_copy(update={"system_prompt": "new file persona"}), GAMMA])
    after = spec(c, "alpha")
    assert after["system_prompt"] == "new file persona" and after["sampling"]["temperature"] == 0.3
    assert c.experts.find("alpha").status == "ready"
    c.close()


def test_a_patch_outlives_the_file_dropping_and_naming_the_expert_again(tmp_path: Path, embedder: Embedder) -> None:
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    profiled = patched(c, "gamma", USERS)
    c.close()
    start(tmp_path, embedder, [ALPHA]).close()
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    row = c.experts.find("gamma")
    assert row.spec["system_prompt"] == "user persona" and (row.status, row.accuracy) == profiled
    c.close()


def test_a_state_from_before_specs_were_recorded_applies_the_file_as_before(tmp_path: Path,
                                                                           embedder: Embedder) -> None:
    """The first start after the upgrade cannot tell a PATCH from a change in the file: the file's
    values apply, as they did; the start after it keeps a PATCH."""
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    patched(c, "alpha", USERS)
    with c.db.session() as s:
        repo = StateRepository(s)
        repo.put(POOL_FILE_KEY, {k: v for k, v in (repo.get(POOL_FILE_KEY) or {}).items() if k != "specs"})
    c.close()
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    assert spec(c, "alpha")["system_prompt"] == "file persona" and spec(c, "alpha")["sampling"]["temperature"] == 0.0
    patched(c, "alpha", USERS)
    c.close()
    c = start(tmp_path, embedder, [ALPHA, GAMMA])
    assert spec(c, "alpha")["system_prompt"] == "user persona"
    c.close()
