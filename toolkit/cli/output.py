"""Where the CLI writes: tables and JSON to stdout, everything else to stderr."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from rich.console import Console
from rich.markup import escape

from edgeml.toolkit.errors import EdgeMLError, bug_report_line

stdout = Console()
stderr = Console(stderr=True)


def print_json(document: Any) -> None:
    """Write one JSON document to stdout, keys sorted, nothing else on the line."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """Print a warning to stderr."""
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """Print a progress or status line to stderr."""
    stderr.print(message, highlight=False, soft_wrap=True)


def fail(error: EdgeMLError, exit_code: int | None = None) -> NoReturn:
    """Print an edgeml error to stderr and exit with its code."""
    stderr.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise SystemExit(exit_code if exit_code is not None else error.exit_code)


def report_bug(error: BaseException) -> NoReturn:
    """An unexpected exception: print where it happened and where to report it, exit 1.

    Only the traceback's frames are printed, never local variables (a signing tool must not
    print a key).
    """
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    stderr.print(
        f"[red]error:[/red] {escape(bug_report_line(error))}", highlight=False, soft_wrap=True
    )
    raise SystemExit(1)


Command = TypeVar("Command", bound=Callable[..., Any])


def handles_errors(command: Command) -> Command:
    """Decorate a CLI command: an ``EdgeMLError`` exits with its code and message, anything
    unexpected exits 1 with a bug report. Typer's own exits pass through."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EdgeMLError as error:
            fail(error)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as error:
            if type(error).__module__.startswith(("typer", "click")):
                raise  # the CLI framework's own exits and usage errors
            report_bug(error)

    return wrapper  # type: ignore[return-value]
