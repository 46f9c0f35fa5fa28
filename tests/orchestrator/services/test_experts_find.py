"""ExpertService.find: a name is read as a name before it is read as an id, since the name
pattern allows all-digit names."""

from __future__ import annotations

import pytest

from orchestrator.container import SkillRoute
from orchestrator.services.errors import NotFound
from tests.orchestrator.conftest import mock_expert


def test_an_all_digit_name_finds_its_expert_not_the_id_it_spells(container: SkillRoute) -> None:
    alpha = container.experts.find("alpha")
    named = container.experts.register(mock_expert(str(alpha.id), "m2"), profile=False)
    assert named.id != alpha.id
    assert container.experts.find(str(alpha.id)).id == named.id  # the expert named "1", not id 1
    beta = container.experts.find("beta")
    assert container.experts.find(str(beta.id)).id == beta.id  # no expert has that name: the id
    with pytest.raises(NotFound, match="no expert named '999' nor with id 999"):
        container.experts.find("999")
