"""Registering an expert while the store or another registration moves under it: the model
loaded for one that is refused is freed, and the checks made before the load are made again."""

from __future__ import annotations

import pytest

from experts.types import BaseModelSpec, ExpertSpec
from orchestrator.container import SkillRoute
from orchestrator.services.errors import Unprocessable
from orchestrator.store.repositories.experts import ExpertRepository
from tests.orchestrator.conftest import mock_expert


def test_a_registration_the_store_refuses_frees_the_model_loaded_for_it(container: SkillRoute,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a 409 freed it: an insert that failed otherwise (PostgreSQL refusing a value) left
    the model loaded with no expert over it."""
    def refused(*_: object, **__: object) -> None:
        raise RuntimeError("the store refused the insert")

    monkeypatch.setattr(ExpertRepository, "add", refused)
    with pytest.raises(RuntimeError, match="refused the insert"):
        container.experts.register(mock_expert("delta", "m3"))
    assert "mock:m3" not in container.fleet["cpu"].resident()


def test_two_registrations_over_one_model_asking_other_context_windows_at_once_store_one(
        container: SkillRoute, monkeypatch: pytest.MonkeyPatch) -> None:
    """The context window was checked before the load only: one registered while the other's
    model loaded was stored too, and both ran on one loaded window."""
    def over_m3(name: str, n_ctx: int) -> ExpertSpec:
        return mock_expert(name, "m3").model_copy(update={"base": BaseModelSpec(kind="mock", source="m3", n_ctx=n_ctx)})

    check_loads = container.experts.check_loads

    def meanwhile(spec: ExpertSpec) -> None:
        check_loads(spec)
        if spec.name == "wide":  # stored while wide's model loaded
            container.experts.register(over_m3("narrow", 512), profile=False)

    monkeypatch.setattr(container.experts, "check_loads", meanwhile)
    with pytest.raises(Unprocessable, match="'narrow', loaded with model.n_ctx 512") as refused:
        container.experts.register(over_m3("wide", 4096), profile=False)
    assert refused.value.param == "model.n_ctx"
    assert {e.name for e in container.experts.all() if e.base_model_key == "mock:m3"} == {"narrow"}
    assert "mock:m3" in container.fleet["cpu"].resident()  # narrow runs on it
