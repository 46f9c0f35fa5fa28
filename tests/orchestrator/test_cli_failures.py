"""What a user can act on is one line and an exit code, not a traceback: a section set as a
whole by a name that means one field, a folder setting that names no folder it can write, a
database URL whose driver is not installed, and in-process refusals on a narrow terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from orchestrator import cli
from orchestrator.cli import app
from orchestrator.container import SkillRoute
from orchestrator.settings import get_settings

runner = CliRunner()
SliceRecording = Callable[[Path, Sequence[str], int], Path]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`env(NAME=value, …)`: the CLI's settings read from these (over a temp data dir)."""
    monkeypatch.setenv("SKILLROUTE_DATA_DIR", str(tmp_path / "data"))

    def setting(**names: str) -> None:
        for name, value in names.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield setting
    get_settings.cache_clear()


def one_line(r: Result, code: int) -> str:
    """The one line `r` printed, having exited with `code`."""
    assert r.exit_code == code and len(r.output.splitlines()) == 1 and "Traceback" not in r.output, r.output
    return r.output


@pytest.mark.parametrize(("names", "verb", "nested", "flat"), [
    ({"SKILLROUTE_DATABASE": "postgresql://u@h/db"}, ["keys", "list"], "SKILLROUTE_DATABASE__URL",
     "SKILLROUTE_DATABASE_URL"),
    ({"SKILLROUTE_RAY": "x"}, ["experts", "list"], "SKILLROUTE_RAY__ADDRESS", "RAY_ADDRESS"),
], ids=["database", "ray"])
def test_a_section_named_variable_is_one_line_naming_its_fields_exit_2(env: Callable[..., None], names: dict[str, str],
                                                                       verb: list[str], nested: str, flat: str) -> None:
    """Both ended in pydantic_settings' SettingsError traceback: the value is read as the section, in JSON."""
    env(**names)
    out = one_line(runner.invoke(app, verb), 2)
    assert out.startswith("invalid settings (SKILLROUTE_* variables): ") and nested in out and flat in out, out


def test_a_data_dir_that_is_no_folder_is_one_line_naming_it_exit_1(env: Callable[..., None], tmp_path: Path) -> None:
    """A file, and a path under a file: FileExistsError and NotADirectoryError tracebacks from the store's URL."""
    plain = tmp_path / "a-file"
    plain.write_text("not a folder")
    for data_dir in (plain, plain / "x"):
        env(SKILLROUTE_DATA_DIR=str(data_dir))
        out = one_line(runner.invoke(app, ["keys", "list"]), 1)
        assert f"SKILLROUTE_DATA_DIR={data_dir}" in out, out


def test_a_cache_dir_that_is_no_folder_is_one_line_naming_it_exit_1(env: Callable[..., None], tmp_path: Path,
                                                                     slice_recording: SliceRecording) -> None:
    """The static embedding's build met a file: a NotADirectoryError traceback from the embedder."""
    plain = tmp_path / "a-file"
    plain.write_text("not a folder")
    env(SKILLROUTE_EMBEDDING__CACHE_DIR=str(plain / "x"), SKILLROUTE_EMBEDDING__KIND="static")
    pool = f"replay:{slice_recording(tmp_path / 'rec', ['Llama-2-7b-hf'], 1)}"
    r = runner.invoke(app, ["profile", "--pool", pool])
    *bar, out = r.output.splitlines() or [""]  # the profiling bar, then why it stopped
    assert r.exit_code == 1 and f"SKILLROUTE_EMBEDDING__CACHE_DIR={plain / 'x'}" in out, (r.exception, r.output)
    assert all("profiling experts" in line for line in bar), r.output


def test_a_database_url_whose_driver_is_not_installed_is_one_line_exit_2(env: Callable[..., None]) -> None:
    """It ended in ModuleNotFoundError: No module named 'MySQLdb'."""
    env(SKILLROUTE_DATABASE_URL="mysql://u:s3cret@127.0.0.1:1/x")
    out = one_line(runner.invoke(app, ["keys", "list"]), 2)
    assert "database.url: its driver MySQLdb" in out and "not installed" in out and "s3cret" not in out, out


def test_an_in_process_refusal_is_one_line_on_a_narrow_terminal(container: SkillRoute,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """It wrapped at the terminal's width: "… [Errno 111] Connection" then "refused" below it."""
    monkeypatch.setattr(cli, "console", Console(width=40))
    monkeypatch.setattr(cli, "_container", lambda pool: container)
    r = runner.invoke(app, ["experts", "add", "foo", "--kind", "openai", "--source", "http://127.0.0.1:1/v1",
                            "--model", "m"])
    assert one_line(r, 2).startswith("refused: cannot reach http://127.0.0.1:1/v1/models"), r.output


def test_keys_lines_are_one_line_on_a_narrow_terminal(env: Callable[..., None],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=12))
    env()
    made = runner.invoke(app, ["keys", "create", "--name", "edge-app"])
    assert made.exit_code == 0 and len(made.output.splitlines()) == 2, made.output  # the line, then the key
    assert one_line(runner.invoke(app, ["keys", "revoke", "99"]), 2).startswith("no key with id 99")
