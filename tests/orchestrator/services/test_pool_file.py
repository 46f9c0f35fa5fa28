"""A start over a data directory an earlier pool file made: the file's experts are what is
served (`services.pool_file`), and what the API registered stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.container import SkillRoute
from orchestrator.pools.schema import ArithmeticSource, PoolConfig
from orchestrator.services.expert_changes import ExpertChange
from orchestrator.services.pool_file import PoolFileConflict
from orchestrator.store.repositories.validation import ValidationRepository
from skills.embedder import Embedder
from tests.orchestrator.conftest import mock_expert, mock_or_real, quiet_settings, small_pool

ALPHA, BETA, GAMMA = mock_expert("alpha", "m1", "math persona"), mock_expert("beta", "m1"), mock_expert("gamma", "m2")


def start(data_dir: Path, embedder: Embedder, experts: list[ExpertSpec], pool: PoolConfig | None = None) -> SkillRoute:
    c = SkillRoute(quiet_settings(data_dir), pool or small_pool(experts), embedder=embedder, factory=mock_or_real)
    c.bootstrap()
    return c


def states(c: SkillRoute) -> dict[str, tuple[str, float | None]]:
    return {e.name: (e.status, e.accuracy) for e in c.experts.all()}


def test_a_start_serves_its_files_experts_and_keeps_the_apis(tmp_path: Path, embedder: Embedder) -> None:
    c = start(tmp_path, embedder, [ALPHA, BETA, GAMMA])
    c.experts.register(mock_expert("delta", "m2"), profile=False)  # over the API, not the file's
    c.experts.profile_now([c.experts.find("delta").id])
    first = states(c)
    c.close()
    c = start(tmp_path, embedder, [ALPHA.model_copy(update={"system_prompt": "You are a historian."}), BETA])
    now = states(c)
    assert set(c.pool.snapshot.experts) == {"alpha", "beta", "delta"} and now["gamma"][0] == "removed"
    assert c.experts.find("alpha").spec["system_prompt"] == "You are a historian." and now["alpha"][0] == "ready"
    assert now["beta"] == first["beta"] and now["delta"] == first["delta"]
    c.close()
    c = start(tmp_path, embedder, [ALPHA, BETA, GAMMA])  # back to the first file: gamma returns, profile and all
    assert states(c)["gamma"] == first["gamma"] and "gamma" in c.pool.snapshot.experts
    c.close()


def test_a_name_is_never_reused_and_a_conflict_changes_nothing(tmp_path: Path, embedder: Embedder) -> None:
    c = start(tmp_path, embedder, [ALPHA, BETA, GAMMA])
    before = states(c)
    c.close()
    c = SkillRoute(quiet_settings(tmp_path), embedder=embedder, factory=mock_or_real,
                   pool=small_pool([ALPHA.model_copy(update={"base": BaseModelSpec(kind="mock", source="m3")}), BETA]))
    with pytest.raises(PoolFileConflict, match="'alpha' has another base"):
        c.bootstrap()
    assert states(c) == before
    c.close()


def test_the_files_expert_removed_over_the_api_stays_removed(tmp_path: Path, embedder: Embedder) -> None:
    c = start(tmp_path, embedder, [ALPHA, BETA, GAMMA])
    c.experts.remove(c.experts.find("gamma").id)
    c.close()
    c = start(tmp_path, embedder, [ALPHA, BETA, GAMMA])
    assert states(c)["gamma"][0] == "removed" and set(c.pool.snapshot.experts) == {"alpha", "beta"}
    c.close()


def test_a_changed_validation_set_profiles_the_ready_experts_again_on_it(tmp_path: Path, embedder: Embedder) -> None:
    """Dropping `subjects:` or changing n or seed is a new set: a start profiled every expert on
    it again instead of failing with a KeyError on the old set's answers."""
    start(tmp_path, embedder, [ALPHA, GAMMA]).close()
    pool = small_pool([ALPHA, GAMMA])
    validation = pool.validation.model_copy(update={"sources": [ArithmeticSource(n=4)]})
    pool = pool.model_copy(update={"validation": validation})
    c = start(tmp_path, embedder, [ALPHA, GAMMA], pool)
    with c.db.session() as s:
        questions = {q.id for q in ValidationRepository(s).questions(pool.validation.dataset_key())}
        answered = [a.question_id for a in ValidationRepository(s).answers([e.id for e in c.experts.all()])]
    assert len(questions) == 4 and sorted(answered) == sorted(2 * list(questions))
    assert {n: st for n, (st, _) in states(c).items()} == {"alpha": "ready", "gamma": "ready"}
    c.close()


def test_an_expert_the_user_disabled_stays_disabled_when_the_file_names_it_again(tmp_path: Path,
                                                                                 embedder: Embedder) -> None:
    """Switching pool files away and back revived it ready, routed again against the user's act."""
    c = start(tmp_path, embedder, [ALPHA, BETA, GAMMA])
    c.experts.update(c.experts.find("gamma").id, ExpertChange(enabled=False))
    profiled = states(c)["gamma"][1]
    c.close()
    start(tmp_path, embedder, [ALPHA, BETA]).close()
    c = start(tmp_path, embedder, [ALPHA, BETA, GAMMA])
    assert states(c)["gamma"] == ("disabled", profiled) and "gamma" not in c.pool.snapshot.experts
    c.experts.update(c.experts.find("gamma").id, ExpertChange(enabled=True))
    assert states(c)["gamma"] == ("ready", profiled) and "gamma" in c.pool.snapshot.experts
    c.close()


def test_experts_a_refused_start_registered_stay_the_files(tmp_path: Path, embedder: Embedder) -> None:
    """A start refused on a later expert left the ones it had registered untracked: the file
    backed out, they were kept as if registered over the API and served for good."""
    start(tmp_path, embedder, [ALPHA]).close()
    clash = ExpertSpec(name="zeta", base=BaseModelSpec(kind="mock", source="m1", n_ctx=512))  # m1 is loaded at 2048
    with pytest.raises(PoolFileConflict, match="'zeta' was refused"):
        start(tmp_path, embedder, [ALPHA, GAMMA, clash])
    c = start(tmp_path, embedder, [ALPHA])
    assert states(c)["gamma"][0] == "removed" and set(c.pool.snapshot.experts) == {"alpha"}
    c.close()
