"""How the `skillroute` commands fail: a failure its user can act on (a server not running, a
bad setting or pool file) is one line and an exit code, not a traceback; a bug keeps its traceback.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click import Context  # typer vendors click: its groups take this Context


class CliFailure(Exception):
    """A command failed in a way its user can act on: `message` printed, exit `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


class Commands(TyperGroup):
    """The command group that prints a CliFailure, or what is wrong with the settings or the pool
    file (exit 2), as one line; anything else propagates with its traceback."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliFailure as exc:
            failure = exc
        except Exception as exc:
            if (bad := config_error(exc)) is not None:
                failure = CliFailure(bad, 2)
            elif (down := store_unreachable(exc)) is not None:
                failure = CliFailure(down, 1)
            else:
                raise
        # soft wrap: one line, whatever the terminal, so it can be grepped
        Console().print(f"[red]{escape(failure.message)}[/red]", soft_wrap=True, highlight=False)
        raise typer.Exit(failure.code) from failure


def config_error(exc: Exception) -> str | None:
    """What is wrong with the settings or the pool file (as read, or as a start's sync with the
    store refused it), in a line; None for any other error."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import ArgumentError

    from orchestrator.pools.loader import PoolConfigError, field_errors
    from orchestrator.services.pool_file import PoolFileConflict
    from orchestrator.settings import Settings
    from orchestrator.store.db import SchemaTooNew

    if isinstance(exc, PoolConfigError | PoolFileConflict | SchemaTooNew):  # a file or a store it cannot take
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return f"invalid settings (SKILLROUTE_* variables): {field_errors(exc)}"
    if isinstance(exc, SettingsError):  # a section's name given a value that is no JSON object
        return f"invalid settings (SKILLROUTE_* variables): {_whole_section(exc)}"
    if isinstance(exc, ArgumentError):  # SQLAlchemy could not read SKILLROUTE_DATABASE__URL (or load its driver)
        return f"invalid settings (SKILLROUTE_* variables): database.url: {exc}"
    return None


def _whole_section(exc: Exception) -> str:
    """SKILLROUTE_DATABASE=postgresql://… is read as the whole `database` section, in JSON: the
    names that set one of its fields, nested and flat."""
    from orchestrator.settings import FLAT_NAMES, Section, Settings

    field = (found.group(1) if (found := re.search(r'field "(\w+)"', str(exc))) else "")
    section = Settings.model_fields[field].annotation if field in Settings.model_fields else None
    if not (isinstance(section, type) and issubclass(section, Section)):
        return str(exc)
    nested = ", ".join(f"SKILLROUTE_{field}__{name}".upper() for name in section.model_fields)
    flat = ", ".join(name for name, (of, _) in FLAT_NAMES.items() if of == field)
    return (f"{field}: SKILLROUTE_{field.upper()} is read as the whole section, as a JSON object; set one of "
            f"its fields with {nested}" + (f" (or {flat})" if flat else ""))


def store_unreachable(exc: Exception) -> str | None:
    """The database would not open (a server down, a path it cannot write), in a line; None for
    any other error. The command ran and failed: exit 1."""
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        return f"the database did not answer: {str(exc.orig or exc).splitlines()[0]}"
    return _folder_unusable(exc)


def _folder_unusable(exc: Exception) -> str | None:
    """A folder setting naming no folder this user can make or use (a file, a path under one,
    /proc/x, another user's), in a line naming the setting; None for any other error. The path
    failing may be the folder, a file in it, or a parent made on the way to it."""
    from orchestrator.settings import get_settings

    if not isinstance(exc, OSError) or not isinstance(exc.filename, str | bytes | os.PathLike):  # not an fd
        return None
    failed, settings = Path(os.fsdecode(exc.filename)).absolute(), get_settings()
    for name, folder in (("SKILLROUTE_EMBEDDING__CACHE_DIR", settings.embedding.cache_dir),
                         ("SKILLROUTE_DATA_DIR", settings.data_dir)):  # the cache first: it may lie in the other
        if failed.is_relative_to(folder.absolute()) or failed in folder.absolute().parents:
            return f"{name}={folder}: skillroute cannot make or use it ({exc})"
    return None


def check_bindable(host: str, port: int, shown: str) -> None:
    """Fail in a line (exit 1) where nothing could listen on host:port, `shown` naming it: Ray's
    proxy met a port taken only once Ray had started, and said so in a long traceback. Bound as
    the proxy binds (its family, SO_REUSEADDR: a port a closed server left in TIME_WAIT is free),
    but without its SO_REUSEPORT, which would let a second service share a port held already."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise CliFailure(f"cannot bind {shown}: {(exc.strerror or str(exc)).lower()}", 1) from exc
