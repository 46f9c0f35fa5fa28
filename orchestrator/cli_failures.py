"""How the `skillroute` commands fail: a failure its user can act on (a server not running, a
bad setting or pool file) is one line and an exit code, not a traceback; a bug keeps its traceback.
"""

from __future__ import annotations

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
    from sqlalchemy.exc import ArgumentError

    from orchestrator.pools.loader import PoolConfigError, field_errors
    from orchestrator.services.pool_file import PoolFileConflict
    from orchestrator.settings import Settings
    from orchestrator.store.db import SchemaTooNew

    if isinstance(exc, PoolConfigError | PoolFileConflict | SchemaTooNew):  # a file or a store it cannot take
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return f"invalid settings (SKILLROUTE_* variables): {field_errors(exc)}"
    if isinstance(exc, ArgumentError):  # SQLAlchemy could not read SKILLROUTE_DATABASE__URL
        return f"invalid settings (SKILLROUTE_* variables): database.url: {exc}"
    return None


def store_unreachable(exc: Exception) -> str | None:
    """The database would not open (a server down, a path it cannot write), in a line; None for
    any other error. The command ran and failed: exit 1."""
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        return f"the database did not answer: {str(exc.orig or exc).splitlines()[0]}"
    return None
