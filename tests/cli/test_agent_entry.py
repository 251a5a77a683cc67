"""``edgeml agent run`` goes straight to the daemon without the CLI framework, and ends as any
``edgeml`` command ends; any other command line for it goes to the full CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeml.agent.entry import parse_run_arguments
from edgeml.toolkit.cli import app

EDGEML = str(Path(sys.executable).with_name("edgeml"))

# Runs the console entry as the installed script does, then reports what it loaded.
PROBE = """
import json, sys
sys.argv = ["edgeml", *sys.argv[1:]]
from edgeml.toolkit.cli import main
try:
    main()
    code = 0
except SystemExit as exit:
    code = exit.code
watched = ("typer", "click", "rich", "edgeml.toolkit.cli.root")
loaded = sorted(m for m in watched if m in sys.modules)
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def probe(*arguments: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *arguments], capture_output=True, text=True, timeout=60
    )
    *lines, last = done.stderr.strip().splitlines()
    return json.loads(last), "\n".join(lines) + done.stdout


def test_the_arguments_it_takes_and_those_it_leaves_to_the_cli() -> None:
    assert parse_run_arguments(["--config", "a.toml"]) == (Path("a.toml"), False)
    assert parse_run_arguments(["-v", "--config=a.toml"]) == (Path("a.toml"), True)
    assert parse_run_arguments(["--config", "a.toml", "--verbose"]) == (Path("a.toml"), True)
    for left in (
        [],
        ["--help"],
        ["--config"],
        ["--config", "--verbose"],
        ["--config", "a.toml", "--config", "b.toml"],
        ["--config", "a.toml", "--colour"],
        ["--config="],
    ):
        assert parse_run_arguments(left) is None, left


def test_a_bad_config_ends_it_as_the_cli_would_without_loading_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "pi-1"\nprofile = "raspberry-pi-4"\n')  # no state_dir, ...
    result, output = probe("agent", "run", "--config", str(config))
    assert result["loaded"] == [], "typer, click and rich stay out of the daemon"
    through_cli = CliRunner().invoke(app, ["agent", "run", "--config", str(config)])
    assert result["code"] == through_cli.exit_code == 2
    lean_message = output.strip().removeprefix("error: ")
    assert lean_message and lean_message in " ".join(through_cli.stderr.split())
    missing, output = probe("agent", "run", "--config", str(tmp_path / "absent.toml"))
    assert missing["code"] == 2 and "absent.toml" in output


@pytest.mark.parametrize("arguments", [["--help"], ["--config", "a.toml", "--bogus"]])
def test_anything_else_goes_to_the_full_cli(arguments: list[str]) -> None:
    result, output = probe("agent", "run", *arguments)
    assert "edgeml.toolkit.cli.root" in result["loaded"]
    if arguments == ["--help"]:
        assert result["code"] == 0 and "--config" in output
    else:
        assert result["code"] == 2 and "No such option" in output
