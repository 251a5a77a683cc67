"""``edgeml profiles list | show``: tables and JSON on stdout, errors on stderr with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from edgeml.toolkit.cli.profiles import app
from edgeml.toolkit.profiles import builtin_profile_names, load_profile

runner = CliRunner()


def test_list_prints_a_table_of_every_builtin() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.stderr
    for name in builtin_profile_names():
        assert name in result.stdout
    assert "aarch64" in result.stdout
    assert "50 MB / 1 pt / 10 ms" in result.stdout  # raspberry-pi-4's budgets
    assert result.stderr == ""


def test_list_json() -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.stderr
    documents = json.loads(result.stdout)
    assert [document["name"] for document in documents] == builtin_profile_names()
    assert documents[0] == load_profile(documents[0]["name"]).to_dict()


def test_show_json() -> None:
    result = runner.invoke(app, ["show", "raspberry-pi-4", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document == load_profile("raspberry-pi-4").to_dict()
    assert document["budgets"] == {
        "max_size_mb": 50.0,
        "max_accuracy_drop": 1.0,
        "max_latency_ms": 10.0,
    }


def test_show_renders_for_people() -> None:
    result = runner.invoke(app, ["show", "jetson-orin"])
    assert result.exit_code == 0, result.stderr
    assert "jetson-orin" in result.stdout
    assert "TensorrtExecutionProvider" in result.stdout
    assert "fp16, fp32" in result.stdout


def test_show_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "board.toml"
    path.write_text(
        'name = "board"\narchitecture = "armv7l"\n'
        'execution_providers = ["CPUExecutionProvider"]\nprecisions = ["fp32"]\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["show", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["architecture"] == "armv7l"


def test_show_a_bad_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'name = "bad"\narchitecture = "x86_64"\n'
        'execution_providers = ["CPUExecutionProvider"]\nprecisions = ["fp32"]\n'
        "[budgets]\nmax_size_mb = -1\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 2
    assert "budgets.max_size_mb" in result.stderr
    assert "bad.toml" in result.stderr
    assert result.stdout == ""


def test_show_an_unknown_name_exits_2() -> None:
    result = runner.invoke(app, ["show", "raspberry-pi-3"])
    assert result.exit_code == 2
    assert "raspberry-pi-4" in result.stderr  # the known names are listed


def test_no_arguments_prints_help() -> None:
    result = runner.invoke(app, [])
    assert "list" in result.stdout
    assert "show" in result.stdout


def test_installed_entry_point() -> None:
    script = Path(sys.executable).with_name("edgeml")
    assert script.exists(), "the edgeml console script is not installed next to this interpreter"
    completed = subprocess.run(
        [str(script), "profiles", "show", "raspberry-pi-4", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["name"] == "raspberry-pi-4"
