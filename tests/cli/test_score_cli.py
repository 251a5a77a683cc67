"""``edgeml score`` through the CLI: exit codes, what stderr names, the JSON summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TrainedModel
from typer.testing import CliRunner

from edgeml.toolkit.cli import app

runner = CliRunner()


def features_csv(path: Path, model: TrainedModel, bad_row: int | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *model.feature_names])
        for i, row in enumerate(model.X_val):
            cells = [repr(float(v)) for v in row]
            if i == bad_row:
                cells[0] = "oops"
            writer.writerow([f"r{i}", *cells])
    return path


def score_args(bundle: Path, source: Path, out: Path, key_dir: Path, *extra: str) -> list[str]:
    return ["score", str(bundle), str(source), "-o", str(out), "--trust", str(key_dir), *extra]


def test_score_prints_a_json_summary_on_stdout(
    tmp_path: Path, built_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    source = features_csv(tmp_path / "in.csv", logreg)
    out = tmp_path / "out.parquet"
    report = tmp_path / "drift.html"
    result = runner.invoke(
        app,
        score_args(
            built_bundle,
            source,
            out,
            key_dir,
            "--id-column",
            "id",
            "--drift-report",
            str(report),
            "--json",
        ),
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["bundle"] == "cancer-1.0.0-raspberry-pi-4"
    assert summary["rows"] == summary["scored"] == len(logreg.X_val)
    assert summary["invalid_rows"] == 0 and summary["rows_per_second"] > 0
    assert summary["threads"] == 4 and summary["providers"] == ["CPUExecutionProvider"]
    assert summary["concurrent_runs"] == 4, "the profile's 4 threads each run parts of a batch"
    assert [f["feature"] for f in summary["drift"]["features"]] == list(logreg.feature_names)
    assert all("psi" in f and "ks" in f and "drifted" in f for f in summary["drift"]["features"])
    assert out.exists() and report.read_text().startswith("<!DOCTYPE html>")


def test_threads_are_the_parts_of_a_batch_run_at_once(
    tmp_path: Path, built_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    source = features_csv(tmp_path / "in.csv", logreg)
    for threads, runs in (("2", 2), ("0", len(os.sched_getaffinity(0)))):
        result = runner.invoke(
            app,
            score_args(
                built_bundle, source, tmp_path / "o.csv", key_dir, "--threads", threads, "--json"
            ),
        )
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["threads"], summary["concurrent_runs"]) == (int(threads), runs)


def test_score_prints_tables_without_json(
    tmp_path: Path, built_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    source = features_csv(tmp_path / "in.csv", logreg)
    result = runner.invoke(app, score_args(built_bundle, source, tmp_path / "o.csv", key_dir))
    assert result.exit_code == 0, result.stderr
    assert "rows/s" in result.stdout and "drift against the baseline" in result.stdout
    assert "columns the contract does not know, passed over: id" in result.stderr


def test_a_tampered_bundle_exits_3_before_any_row_is_read(
    tmp_path: Path, built_bundle: Path, key_dir: Path
) -> None:
    tampered = tmp_path / "tampered.edgeml"
    with zipfile.ZipFile(built_bundle) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data.replace(b"proportions", b"proportionz"))
    garbage = tmp_path / "in.parquet"
    garbage.write_bytes(b"\x00\xff not a parquet file at all" * 10)
    out = tmp_path / "out.csv"
    result = runner.invoke(app, score_args(tampered, garbage, out, key_dir))
    assert result.exit_code == 3, result.stderr
    assert "refused, check 'hashes' failed" in result.stderr
    assert "Parquet" not in result.stderr, "the input was never opened"
    assert not out.exists()


def test_an_untrusted_key_exits_3(
    tmp_path: Path, built_bundle: Path, other_key_dir: Path, logreg: TrainedModel
) -> None:
    source = features_csv(tmp_path / "in.csv", logreg)
    result = runner.invoke(app, score_args(built_bundle, source, tmp_path / "o.csv", other_key_dir))
    assert result.exit_code == 3 and "check 'trusted key' failed" in result.stderr


def test_an_invalid_row_exits_2_naming_file_row_and_column_and_writes_nothing(
    tmp_path: Path, built_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    source = features_csv(tmp_path / "in.csv", logreg, bad_row=120)
    out = tmp_path / "out.npy"
    result = runner.invoke(
        app, score_args(built_bundle, source, out, key_dir, "--batch-size", "50")
    )
    assert result.exit_code == 2
    assert (
        f"{source}, row 121, column '{logreg.feature_names[0]}': 'oops' is not a number"
        in result.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_quarantine_and_skip_through_the_cli(
    tmp_path: Path, built_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    source = features_csv(tmp_path / "in.csv", logreg, bad_row=3)
    side = tmp_path / "bad-rows.jsonl"
    result = runner.invoke(
        app,
        score_args(
            built_bundle,
            source,
            tmp_path / "out.jsonl",
            key_dir,
            "--on-invalid",
            "quarantine",
            "--quarantine",
            str(side),
            "--id-column",
            "id",
            "--json",
        ),
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["invalid_rows"] == 1 and summary["quarantine"] == str(side)
    (record,) = [json.loads(line) for line in side.read_text().splitlines()]
    assert (
        record["_row"] == 4
        and record["id"] == "r3"
        and "'oops' is not a number" in record["_reason"]
    )
    skipped = runner.invoke(
        app, score_args(built_bundle, source, tmp_path / "s.csv", key_dir, "--on-invalid", "skip")
    )
    assert skipped.exit_code == 0 and "1 invalid row skipped" in skipped.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--on-invalid", "ignore"], "--on-invalid must be one of fail, skip, quarantine"),
        (["--quarantine", "q.jsonl"], "--quarantine FILE goes with --on-invalid quarantine"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--threads", "-1"], "--threads must be 0"),
    ],
)
def test_bad_options_exit_2(
    tmp_path: Path, built_bundle: Path, key_dir: Path, extra: list[str], message: str
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("a\n1\n")
    result = runner.invoke(
        app, score_args(built_bundle, source, tmp_path / "o.csv", key_dir, *extra)
    )
    assert result.exit_code == 2 and message in result.stderr


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, built_bundle: Path, key_dir: Path, logreg: TrainedModel, monkeypatch
) -> None:
    source = features_csv(tmp_path / "in.csv", logreg)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = runner.invoke(app, score_args(built_bundle, source, tmp_path / "o.parquet", key_dir))
    assert result.exit_code == 2
    assert "Parquet needs pyarrow: pip install 'edgeml[server]'" in result.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_the_installed_entry_point_scores_npy(
    tmp_path: Path, built_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    np.save(tmp_path / "in.npy", logreg.X_val)
    edgeml = Path(sys.executable).with_name("edgeml")
    done = subprocess.run(
        [
            str(edgeml),
            *score_args(built_bundle, tmp_path / "in.npy", tmp_path / "out.npy", key_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scored"] == len(logreg.X_val)
    out = np.load(tmp_path / "out.npy")
    assert out.dtype.names == ("label", "probability_0", "probability_1")
    assert out["label"].tolist() == logreg.estimator.predict(logreg.X_val).tolist()
