"""Docs that are tested: every command has help text and a section in docs/cli.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgeml.toolkit.cli import app

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def all_commands(group: Any, prefix: str = "edgeml") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            found.update(all_commands(command, path))
        else:
            found[path] = command
    return found


def test_every_command_has_help_and_a_section_in_the_cli_reference() -> None:
    commands = all_commands(typer.main.get_command(app))
    assert "edgeml build" in commands and "edgeml keys generate" in commands
    text = CLI_DOC.read_text()
    for path, command in commands.items():
        assert command.help, f"{path} has no help text"
        assert f"## {path}\n" in text, f"docs/cli.md has no section for {path}"
