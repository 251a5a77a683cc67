"""How the CLI turns errors into exit codes and messages."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from edgeml.toolkit.cli.output import handles_errors
from edgeml.toolkit.errors import BundleError, GateError, InputError

runner = CliRunner()


def app_raising(error: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @handles_errors
    def run() -> None:
        secret_key_material = "do-not-print-me"  # noqa: F841 - a local a traceback must not show
        raise error

    return app


def test_edgeml_errors_exit_with_their_code_and_message() -> None:
    for error, code in (
        (InputError("row 3, column 'x': bad"), 2),
        (BundleError("refused"), 3),
        (GateError("gate [x]"), 4),
    ):
        result = runner.invoke(app_raising(error), [])
        assert result.exit_code == code
        assert str(error) in result.stderr


def test_an_unexpected_failure_exits_1_says_it_is_a_bug_and_shows_no_locals() -> None:
    result = runner.invoke(app_raising(RuntimeError("boom")), [])
    assert result.exit_code == 1
    assert "bug in edgeml" in result.stderr and "report it at" in result.stderr
    assert "do-not-print-me" not in result.stderr + result.stdout


def test_typer_exits_pass_through() -> None:
    assert runner.invoke(app_raising(typer.Exit(5)), []).exit_code == 5
