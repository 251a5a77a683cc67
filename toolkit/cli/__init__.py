"""The ``edgeml`` command.

:func:`main` is the console entry. ``edgeml agent run --config FILE [--verbose]`` goes straight
to the daemon (``edgeml.agent.entry``), which a device keeps running for years: it never loads
the CLI framework. Every other command line goes to the Typer app composed in
``edgeml.toolkit.cli.root`` (also importable here as ``app``).
"""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    """Console entry point."""
    if sys.argv[1:3] == ["agent", "run"]:
        from edgeml.agent.entry import run_from_command_line

        if run_from_command_line(sys.argv[3:]):
            return
    from edgeml.toolkit.cli.root import app

    app()


def __getattr__(name: str) -> Any:
    if name == "app":
        from edgeml.toolkit.cli.root import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
