"""The one settings object's derived choices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.container import SkillRoute
from orchestrator.pools.loader import load_pool_config
from orchestrator.settings import EmbeddingSettings, Settings, embedding_kind
from tests.orchestrator.conftest import mock_expert, mock_or_real, small_pool

SliceRecording = Callable[[Path, Sequence[str], int], Path]


@pytest.mark.parametrize(("kind", "router", "chosen"), [
    ("auto", "knn", "static"), ("auto", "symbolic", "transformer"),
    ("static", "symbolic", "static"), ("transformer", "knn", "transformer"), ("both", "symbolic", "both"),
])
def test_embedding_kind_follows_the_router_unless_set(kind: str, router: str, chosen: str) -> None:
    assert embedding_kind(kind, router) == chosen


def test_each_pool_gets_the_embedding_its_router_wants(tmp_path: Path, slice_recording: SliceRecording) -> None:
    """The skill-based router reads skills with the transformer; a recorded pool, routed by k-NN,
    embeds statically; the environment can force any kind."""
    folder = slice_recording(tmp_path / "rec", ["gemma-7b"], 1)
    for pool, kind, expected in [(small_pool([mock_expert("a", "m")]), "auto", "transformer"),
                                 (load_pool_config(f"replay:{folder}"), "auto", "static"),
                                 (small_pool([mock_expert("a", "m")]), "static", "static"),
                                 (load_pool_config(f"replay:{folder}"), "both", "both")]:
        settings = Settings(data_dir=tmp_path / "data", embedding=EmbeddingSettings(kind=kind))  # type: ignore[arg-type]
        c = SkillRoute(settings, pool, factory=mock_or_real)
        assert c.embedder.kind == expected
        c.close()


def test_the_kind_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLROUTE_EMBEDDING__KIND", "static")
    assert Settings().embedding.kind == "static"
    monkeypatch.setenv("SKILLROUTE_EMBEDDING__KIND", "bert")
    with pytest.raises(ValueError, match="embedding.kind"):
        Settings()


def test_a_service_is_not_taken_for_dead_between_two_of_its_own_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLROUTE_RECOVERY__HEARTBEAT_S", "40")
    with pytest.raises(ValidationError, match="dead_after_s \\(60\\) must be at least twice heartbeat_s \\(40\\)"):
        Settings()
    monkeypatch.setenv("SKILLROUTE_RECOVERY__DEAD_AFTER_S", "80")
    assert Settings().recovery.dead_after_s == 80


@pytest.mark.parametrize("port", ["70000", "65536", "-5"])
def test_a_port_outside_0_to_65535_is_refused(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    monkeypatch.setenv("SKILLROUTE_PORT", port)  # 70000 was taken, and the socket layer made it 4464
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_port_0_and_65535_are_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKILLROUTE_PORT", "0")
    assert Settings().port == 0
    assert Settings(port=65535).port == 65535


def test_a_home_relative_data_dir_holds_the_database_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", "~/data")
    monkeypatch.setenv("SKILLROUTE_EMBEDDING__CACHE_DIR", "~/emb")
    s = Settings()
    assert s.db_url == f"sqlite:///{tmp_path / 'data' / 'skillroute.db'}"  # not ./~/data/skillroute.db
    assert s.backend_options().models_dir.parent == s.data_dir == tmp_path / "data"
    assert s.embedding.cache_dir == tmp_path / "emb"


@pytest.mark.parametrize("name", ["SKILLROUTE_ADMIN_KEY", "SKILLROUTE_AUTH__ADMIN_KEY"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_admin_key_is_refused_not_taken_as_a_key_nobody_can_send(monkeypatch: pytest.MonkeyPatch,
                                                                          name: str, blank: str) -> None:
    monkeypatch.setenv(name, blank)
    with pytest.raises(ValidationError, match="admin_key\n.*is set but empty"):
        Settings()


@pytest.mark.parametrize("key", ["s3cret\n", "s3cret ", "two words", "pässwort-1", "tab\tkey"])
def test_an_admin_key_no_bearer_header_can_carry_is_refused(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """A key read from a file with its newline, or one past ASCII (a header is read as Latin-1),
    started the service and then matched no Bearer token: every admin write refused, nothing said."""
    monkeypatch.setenv("SKILLROUTE_ADMIN_KEY", key)
    with pytest.raises(ValidationError, match="admin_key\n.*a blank, a line break or a character past ASCII"):
        Settings()
    monkeypatch.setenv("SKILLROUTE_ADMIN_KEY", "s3cret-!~_key")
    assert Settings().auth.admin_key is not None


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_openai_key_is_no_key(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", blank)
    assert Settings().backends.openai_api_key is None and Settings().backend_options().openai_api_key is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    assert Settings().backend_options().openai_api_key == "sk-1"
