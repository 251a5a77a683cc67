"""``edgeml build`` through the CLI: exit codes and what stderr names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TrainedModel
from typer.testing import CliRunner

from edgeml.toolkit.cli import app

runner = CliRunner()


def build_args(model: TrainedModel, key_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "build",
        str(model.model_path),
        "--profile",
        "raspberry-pi-4",
        "--key",
        str(key_dir / "edgeml.key"),
        "--out",
        str(out),
        "--validation",
        str(model.validation_path),
        "--target",
        model.target,
        *extra,
    ]


def test_build_then_verify(tmp_path: Path, key_dir: Path, logreg: TrainedModel) -> None:
    result = runner.invoke(app, build_args(logreg, key_dir, tmp_path, "--name", "cancer", "--json"))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    bundle = tmp_path / "cancer-1.0.0-raspberry-pi-4.edgeml"
    assert report["profiles"][0]["bundle"] == str(bundle)
    verified = runner.invoke(app, ["verify", str(bundle), "--trust", str(key_dir)])
    assert verified.exit_code == 0, verified.stderr


def test_validation_data_is_required(tmp_path: Path, key_dir: Path, logreg: TrainedModel) -> None:
    args = build_args(logreg, key_dir, tmp_path)
    without = args[: args.index("--validation")]
    result = runner.invoke(app, without)
    assert result.exit_code == 2
    assert "--validation FILE and --target COLUMN are required" in result.stderr
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_bad_inputs_exit_2_naming_the_problem(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    cases = {
        "unknown profile": (["--profile", "no-such-board"], "no-such-board"),
        "missing model": ([], "does not exist"),
        "bad version": (["--version", "one"], "--version 'one'"),
        "bad target": (["--target", "nope"], "no target column 'nope'"),
    }
    for label, (extra, expected) in cases.items():
        args = build_args(logreg, key_dir, tmp_path / "out", *extra)
        if label == "missing model":
            args[1] = str(tmp_path / "missing.skops")
        if label == "unknown profile":
            args[args.index("raspberry-pi-4")] = "no-such-board"
            extra = []
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (label, result.stderr)
        assert expected in result.stderr, (label, result.stderr)
    assert not list((tmp_path / "out").glob("*.edgeml")) if (tmp_path / "out").exists() else True


def test_pickles_warn_that_they_run_code(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    import joblib

    pickled = tmp_path / "model.joblib"
    joblib.dump(logreg.estimator, pickled)
    args = build_args(logreg, key_dir, tmp_path / "out")
    args[1] = str(pickled)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "runs code" in result.stderr


def test_a_broken_budget_exits_4_and_writes_only_the_report(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    profile = tmp_path / "tiny.toml"
    profile.write_text(
        'name = "tiny"\narchitecture = "aarch64"\nexecution_providers = ["CPUExecutionProvider"]\n'
        'precisions = ["fp32"]\n[budgets]\nmax_size_mb = 0.001\n'
    )
    args = build_args(logreg, key_dir, tmp_path / "out")
    args[args.index("raspberry-pi-4")] = str(profile)
    result = runner.invoke(app, args)
    assert result.exit_code == 4
    assert "max_size_mb" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]


def test_encrypted_key_needs_its_passphrase(
    tmp_path: Path, logreg: TrainedModel, monkeypatch
) -> None:
    monkeypatch.setenv("BUILD_PASS", "correct horse battery staple")
    made = runner.invoke(
        app, ["keys", "generate", "--out", str(tmp_path / "k"), "--passphrase-env", "BUILD_PASS"]
    )
    assert made.exit_code == 0, made.stderr
    args = build_args(logreg, tmp_path / "k", tmp_path / "out")
    monkeypatch.delenv("BUILD_PASS")
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert "EDGEML_KEY_PASSPHRASE" in refused.stderr
    monkeypatch.setenv("EDGEML_KEY_PASSPHRASE", "correct horse battery staple")
    accepted = runner.invoke(app, args)
    assert accepted.exit_code == 0, accepted.stderr
    assert "correct horse" not in accepted.stdout + accepted.stderr


def test_installed_entry_point_builds(tmp_path: Path, key_dir: Path, logreg: TrainedModel) -> None:
    script = Path(sys.executable).with_name("edgeml")
    completed = subprocess.run(
        [str(script), *build_args(logreg, key_dir, tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / f"{logreg.model_path.stem}-1.0.0-raspberry-pi-4.edgeml").exists()
