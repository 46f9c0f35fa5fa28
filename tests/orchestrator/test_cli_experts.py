"""`skillroute experts update|remove`: in-process on a replay pool's store (recorded real models,
profiled from their recordings), and with --url against a running service over the mock pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from orchestrator import cli, cli_remote
from orchestrator.api.app import create_app
from orchestrator.cli import app
from orchestrator.settings import AuthSettings, get_settings
from tests.live_server import live_server

runner = CliRunner()
MODELS = ["Llama-2-7b-hf", "Mistral-7B-v0.1"]
SliceRecording = Callable[[Path, Sequence[str], int], Path]


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=250))  # tables unwrapped, whatever the terminal
    monkeypatch.setattr(cli_remote, "POLL_S", 0.05)  # a mock profiles at once: 2 s polls only slow the test


@pytest.fixture
def replay_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_recording: SliceRecording,
                wide: None) -> Iterator[str]:
    """A profiled replay pool in a temp data dir; yields its `--pool` value."""
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    pool = f"replay:{slice_recording(tmp_path / 'rec', MODELS, 2)}"
    made = runner.invoke(app, ["profile", "--pool", pool])
    assert made.exit_code == 0, made.output
    yield pool
    get_settings.cache_clear()


def stored(pool: str, name: str) -> dict[str, object]:
    from orchestrator.store.db import Database
    from orchestrator.store.repositories.experts import ExpertRepository

    with Database(get_settings().db_url).session() as s:
        row = ExpertRepository(s).by_name(name)
        assert row is not None
        return {"status": row.status, "spec": row.spec, "accuracy": row.accuracy}


def test_update_and_remove_in_process(replay_pool: str) -> None:
    name = "Llama-2-7b-hf"
    r = runner.invoke(app, ["experts", "update", name, "--system-prompt", "Answer tersely.", "--pool", replay_pool])
    assert r.exit_code == 0 and "ready" in r.output, r.output  # profiled again, in the foreground
    row = stored(replay_pool, name)
    assert row["spec"]["system_prompt"] == "Answer tersely." and row["accuracy"] is not None  # type: ignore[index]
    r = runner.invoke(app, ["experts", "update", name, "--disable", "--timeout-s", "9", "--pool", replay_pool])
    assert r.exit_code == 0 and "disabled" in r.output, r.output
    assert stored(replay_pool, name)["spec"]["timeout_s"] == 9  # type: ignore[index]
    bad = runner.invoke(app, ["experts", "update", name, "--temperature", "9", "--pool", replay_pool])
    assert bad.exit_code == 2 and "less than or equal to 2" in bad.output, bad.output
    assert stored(replay_pool, name)["spec"]["sampling"]["temperature"] == 0  # type: ignore[index]
    gone = runner.invoke(app, ["experts", "remove", name, "--pool", replay_pool])
    assert gone.exit_code == 0 and "removed" in gone.output and stored(replay_pool, name)["status"] == "removed"
    again = runner.invoke(app, ["experts", "update", name, "--enable", "--pool", replay_pool])
    assert again.exit_code == 2 and "was removed" in again.output
    missing = runner.invoke(app, ["experts", "remove", "nobody", "--pool", replay_pool])
    assert missing.exit_code == 2 and "no expert named 'nobody'" in missing.output


def test_update_and_remove_over_http_with_the_admin_key(container, wide: None) -> None:
    _, admin = container.keys.create("ops", "admin")
    with live_server(create_app(container)) as url:
        refused = runner.invoke(app, ["experts", "remove", "gamma", "--url", url])
        assert refused.exit_code == 2 and "refused (401)" in refused.output
        key = ["--url", url, "--key", admin]
        r = runner.invoke(app, ["experts", "update", "beta", "--system-prompt", "You judge cases.", *key])
        assert r.exit_code == 0 and "ready" in r.output, r.output  # followed until profiled again
        assert container.pool.snapshot.experts["beta"].system_prompt == "You judge cases."
        r = runner.invoke(app, ["experts", "update", "gamma", "--disable", *key])
        assert r.exit_code == 0 and "disabled" in r.output and "gamma" not in container.pool.snapshot.experts
        gamma = str(container.experts.find("gamma").id)
        r = runner.invoke(app, ["experts", "remove", gamma, *key])  # by id
        assert r.exit_code == 0 and "removed" in r.output and container.experts.find("gamma").status == "removed"
        missing = runner.invoke(app, ["experts", "update", "nobody", "--enable", *key])
        assert missing.exit_code == 2 and "no expert named 'nobody'" in missing.output


def test_add_list_and_ask_over_http_send_the_key_given(container, wide: None) -> None:  # type: ignore[no-untyped-def]
    """Once keys are required (an admin key to register, a client key to ask or list), every verb
    that talks to a running service sends `--key`; without it, each is refused naming the 401."""
    container.settings = container.settings.model_copy(update={"auth": AuthSettings(require_client_keys=True)})
    _, admin = container.keys.create("ops", "admin")
    _, client = container.keys.create("app", "client")
    add = ["experts", "add", "delta", "--kind", "mock", "--source", "m2"]
    with live_server(create_app(container)) as url:
        for verb in (add, ["experts", "list"], ["ask", "What is 2+2?", "--k", "1", "--seed", "1"]):
            refused = runner.invoke(app, [*verb, "--url", url])
            assert refused.exit_code == 2 and "refused (401)" in refused.output, (verb, refused.output)
        r = runner.invoke(app, [*add, "--url", url, "--key", admin])
        assert r.exit_code == 0 and "delta" in r.output and "ready" in r.output, r.output
        r = runner.invoke(app, ["experts", "list", "--url", url, "--key", client])
        assert r.exit_code == 0 and "delta" in r.output, r.output
        r = runner.invoke(app, ["ask", "What is 2+2?", "--url", url, "--key", client, "--seed", "1"])
        assert r.exit_code == 0 and '"status": "done"' in r.output, r.output
        assert f'"k": {container.settings.default_k}' in r.output  # no --k: the service's default


@pytest.mark.parametrize(("args", "named"), [
    (["bad name!", "--kind", "mock"], "name: String should match pattern"),
    (["ok", "--kind", "foo"], "model.kind: Input should be"),
])
def test_add_in_process_refuses_a_bad_name_or_kind_as_the_api_does(container, monkeypatch: pytest.MonkeyPatch,
                                                                   wide: None, args: list[str], named: str) -> None:
    """Exit 2 naming the field, as the 422 over HTTP does, with nothing stored: not a traceback."""
    monkeypatch.setattr(cli, "_container", lambda pool: container)
    before = len(container.experts.all())
    r = runner.invoke(app, ["experts", "add", *args, "--source", "m1"])
    assert r.exit_code == 2 and named in r.output, r.output
    assert len(container.experts.all()) == before
