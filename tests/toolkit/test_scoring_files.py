"""``score_file`` on real files and real signed bundles: every format reproduces the source
scikit-learn model, invalid rows fail, skip or go to quarantine, and a failure never leaves a
partial output."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TrainedModel, build_bundle, train_model

from edgeml.toolkit.batch_scoring import (
    ScoreOptions,
    ScoreProgress,
    default_quarantine_path,
    score_file,
)
from edgeml.toolkit.contract import ContractViolation
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.scoring import Predictions, ScoringEngine
from edgeml.toolkit.tabular import read_table


def build_fp32(model: TrainedModel, key_dir: Path, out: Path, name: str) -> Path:
    """A bundle for x86-64-generic, whose only precision is fp32: it must reproduce its source."""
    return build_bundle(model, key_dir, out, name, "x86-64-generic")


@pytest.fixture(scope="module")
def classifier_bundle(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, logreg: TrainedModel
) -> Path:
    return build_fp32(logreg, key_dir, tmp_path_factory.mktemp("fp32"), "cancer")


@pytest.fixture(scope="module", params=["whole batches", "parts at once"])
def classifier(request: pytest.FixtureRequest, classifier_bundle: Path, key_dir: Path):
    """The model runs each batch whole on the calling thread, or (as ``edgeml score`` opens
    it) in parts on three threads at once: every test below must come out the same."""
    if request.param == "whole batches":
        return ScoringEngine.open(classifier_bundle, key_dir)
    engine = ScoringEngine.open(classifier_bundle, key_dir, threads=3, split_batches=True)
    assert engine.concurrent_runs == 3
    return engine


def options(**given: object) -> ScoreOptions:
    """Options with parts small enough that the test files' batches are split."""
    return ScoreOptions(min_part_rows=8, **given)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ridge(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return train_model(tmp_path_factory.mktemp("ridge"), "ridge")


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, ridge: TrainedModel):
    bundle = build_fp32(ridge, key_dir, tmp_path_factory.mktemp("fp32-ridge"), "diabetes")
    return ScoringEngine.open(bundle, key_dir)


def frame(model: TrainedModel, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """The validation rows as named columns, with an id column first."""
    X = model.X_val[rows]
    columns = {"id": np.array([f"row-{i:04d}" for i in range(len(X))], dtype=object)}
    columns.update({name: X[:, j] for j, name in enumerate(model.feature_names)})
    return columns


def write_input(path: Path, columns: dict[str, np.ndarray]) -> Path:
    names = list(columns)
    rows = list(zip(*[columns[n].tolist() for n in names], strict=True))
    suffix = path.suffix
    if suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            writer.writerows([[repr(v) if isinstance(v, float) else v for v in r] for r in rows])
    elif suffix == ".jsonl":
        with path.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(dict(zip(names, row, strict=True))) + "\n")
    elif suffix == ".parquet":
        pq.write_table(pa.table(columns), path, row_group_size=50)
    else:
        np.save(path, np.column_stack([columns[n] for n in names if n != "id"]))
    return path


def read_output(path: Path) -> dict[str, list]:
    if path.suffix == ".npy":
        array = np.load(path)
        return {name: array[name].tolist() for name in array.dtype.names}
    table = read_table(path)
    return {c.name: [table.row(i)[c.name] for i in range(table.n_rows)] for c in table.columns}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".npy"])
def test_scoring_a_file_reproduces_scikit_learn(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel, suffix: str
) -> None:
    source = write_input(tmp_path / f"in{suffix}", frame(logreg))
    target = tmp_path / f"out{suffix}"
    id_column = None if suffix == ".npy" else "id"
    summary = score_file(classifier, source, target, options(batch_size=64, id_column=id_column))
    rows = len(logreg.X_val)
    assert (summary.rows, summary.scored, summary.invalid_rows) == (rows, rows, 0)
    out = read_output(target)
    expected = logreg.estimator.predict_proba(logreg.X_val)
    assert out["label"] == logreg.estimator.predict(logreg.X_val).tolist()
    np.testing.assert_allclose(out["probability_0"], expected[:, 0], atol=1e-6)
    np.testing.assert_allclose(out["probability_1"], expected[:, 1], atol=1e-6)
    if id_column:
        assert next(iter(out)) == "id" and out["id"] == frame(logreg)["id"].tolist()
    else:
        assert list(out) == ["label", "probability_0", "probability_1"]
    assert summary.drift is not None and summary.drift.drifted == ()
    assert [f.name for f in summary.drift.features] == list(logreg.feature_names)
    assert summary.drift.features[0].psi == pytest.approx(0.0, abs=1e-9)


def test_each_batch_runs_in_parts_at_once_and_comes_out_in_order(
    tmp_path: Path, classifier_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    """Opened for files, the session runs on one thread and each batch is split into up to
    ``threads`` parts of at least ``min_part_rows`` rows, run on as many threads; the output
    is the same, row for row, as whole batches give."""
    engine = ScoringEngine.open(classifier_bundle, key_dir, threads=3, split_batches=True)
    assert (engine.threads, engine.concurrent_runs) == (3, 3)
    assert engine.session.get_session_options().intra_op_num_threads == 1
    runs: list[tuple[int, str]] = []
    run = engine.run

    def spy(matrix: np.ndarray) -> Predictions:
        runs.append((len(matrix), threading.current_thread().name))
        return run(matrix)

    engine.run = spy  # type: ignore[method-assign]
    source = write_input(tmp_path / "in.npy", frame(logreg))
    summary = score_file(engine, source, tmp_path / "parts.npy", options(batch_size=64))
    assert summary.concurrent_runs == 3 and summary.to_dict()["concurrent_runs"] == 3
    # 171 rows: batches of 64, 64 and 43 rows, each in three parts (at least 8 rows each)
    assert sorted(n for n, _ in runs) == sorted([21, 21, 22, 21, 21, 22, 14, 14, 15])
    assert {name.startswith("edgeml-model") for _, name in runs} == {True}
    whole = ScoringEngine.open(classifier_bundle, key_dir, threads=1)
    assert whole.concurrent_runs == 1
    score_file(whole, source, tmp_path / "whole.npy", options(batch_size=64))
    assert read_output(tmp_path / "parts.npy") == read_output(tmp_path / "whole.npy")
    # Parts no smaller than min_part_rows: with 20, the 43-row batch runs in two parts.
    runs.clear()
    score_file(engine, source, tmp_path / "min.npy", ScoreOptions(batch_size=64, min_part_rows=20))
    assert sorted(n for n, _ in runs) == sorted([21, 21, 22, 21, 21, 22, 21, 22])


def test_converted_batches_reuse_a_few_buffers_and_the_model_reads_its_own_rows(
    tmp_path: Path, classifier_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    """A float64 ``.npy`` is converted batch by batch into float32 buffers used again once a
    batch's parts have run: with a model slow enough that the reader runs ahead, no batch is
    overwritten before the model read it (the output equals scikit-learn's, row for row), and
    far fewer buffers than batches serve the file."""
    engine = ScoringEngine.open(classifier_bundle, key_dir, threads=2, split_batches=True)
    buffers: set[int] = set()
    run = engine.run

    def slow(matrix: np.ndarray) -> Predictions:
        buffers.add(id(matrix.base))
        time.sleep(0.002)
        return run(matrix)

    engine.run = slow  # type: ignore[method-assign]
    X = np.tile(logreg.X_val, (4, 1)).astype(np.float64)
    np.save(tmp_path / "in.npy", X)
    score_file(engine, tmp_path / "in.npy", tmp_path / "out.npy", options(batch_size=16))
    out = np.load(tmp_path / "out.npy")
    expected = logreg.estimator.predict_proba(X)[:, 1]
    np.testing.assert_allclose(out["probability_1"], expected, atol=1e-4)
    batches = -(-len(X) // 16)
    assert batches > 20 and len(buffers) <= 8


def test_a_regressor_writes_values(
    tmp_path: Path, regressor: ScoringEngine, ridge: TrainedModel
) -> None:
    source = write_input(tmp_path / "in.parquet", frame(ridge))
    score_file(regressor, source, tmp_path / "out.csv", options(id_column="id"))
    out = read_output(tmp_path / "out.csv")
    assert list(out) == ["id", "value"]
    np.testing.assert_allclose(out["value"], ridge.estimator.predict(ridge.X_val), rtol=1e-5)
    predictions = regressor.predict(ridge.X_val).values
    np.testing.assert_allclose(predictions, ridge.estimator.predict(ridge.X_val), rtol=1e-5)


def broken_csv(tmp_path: Path, model: TrainedModel) -> tuple[Path, list[str]]:
    """171 rows; row 100 holds text in a number column, row 150 misses a required value."""
    columns = frame(model)
    names = list(columns)
    path = tmp_path / "broken.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "comment"])
        for i, row in enumerate(zip(*[columns[n].tolist() for n in names], strict=True)):
            cells = [repr(v) if isinstance(v, float) else v for v in row] + ["ok"]
            if i == 99:
                cells[2] = "twelve"
            if i == 149:
                cells[3] = ""
            writer.writerow(cells)
    return path, names


def test_fail_stops_at_the_first_invalid_row_and_writes_nothing(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    source, names = broken_csv(tmp_path, logreg)
    target = tmp_path / "out.parquet"
    target.write_text("the previous run's output")
    with pytest.raises(ContractViolation) as caught:
        score_file(classifier, source, target, options(batch_size=32, id_column="id"))
    message = str(caught.value)
    assert message.startswith(
        f"{source}, row 100, column '{names[2]}': 'twelve' is not a number "
        "(the contract says float)"
    )
    assert "--on-invalid skip or quarantine" in message
    assert caught.value.exit_code == 2
    assert target.read_text() == "the previous run's output", "the old output is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.csv", "out.parquet"]


def test_skip_drops_and_counts_invalid_rows(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    source, names = broken_csv(tmp_path, logreg)
    target = tmp_path / "out.jsonl"
    summary = score_file(
        classifier, source, target, options(on_invalid="skip", batch_size=32, id_column="id")
    )
    assert (summary.rows, summary.scored, summary.invalid_rows) == (171, 169, 2)
    assert summary.violations == {names[2]: {"wrong type": 1}, names[3]: {"null": 1}}
    assert [v.row for v in summary.examples] == [100, 150]
    assert summary.unknown_columns == ("comment",)
    out = read_output(target)
    assert "row-0099" not in out["id"] and "row-0149" not in out["id"] and len(out["id"]) == 169
    keep = [i for i in range(171) if i not in (99, 149)]
    assert out["label"] == logreg.estimator.predict(logreg.X_val[keep]).tolist()
    assert not default_quarantine_path(target).exists()
    assert any("2 invalid rows skipped" in w for w in summary.warnings)


def test_quarantine_writes_invalid_rows_with_their_reasons(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    source, names = broken_csv(tmp_path, logreg)
    target = tmp_path / "out.csv"
    summary = score_file(
        classifier,
        source,
        target,
        options(on_invalid="quarantine", batch_size=32, id_column="id"),
    )
    quarantine = tmp_path / "out.quarantine.jsonl"
    assert summary.quarantine == str(quarantine)
    records = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(r["_row"], r["id"]) for r in records] == [(100, "row-0099"), (150, "row-0149")]
    assert records[0]["_reason"] == (
        f"{names[2]}: 'twelve' is not a number (the contract says float)"
    )
    assert records[0][names[2]] == "twelve" and records[0][names[1]] == logreg.X_val[99, 0]
    assert records[1]["_reason"] == f"{names[3]}: no value, and the contract does not allow nulls"
    assert records[1][names[3]] is None
    assert len(read_output(target)["label"]) == 169
    # The quarantine file is itself an input: fixed up, it scores.
    records[0][names[2]] = logreg.X_val[99, 1]
    records[1][names[3]] = logreg.X_val[149, 2]
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text("".join(json.dumps(r) + "\n" for r in records))
    again = score_file(classifier, fixed, tmp_path / "fixed.csv", options(id_column="id"))
    assert again.scored == 2 and set(again.unknown_columns) == {"_row", "_reason"}


def test_a_missing_column_stops_the_run_before_any_row(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    columns = frame(logreg)
    dropped = logreg.feature_names[4]
    del columns[dropped]
    source = write_input(tmp_path / "in.parquet", columns)
    target = tmp_path / "out.csv"
    with pytest.raises(
        ContractViolation,
        match=rf"in.parquet, column '{dropped}': the column is missing; the contract requires it",
    ):
        score_file(classifier, source, target, options(on_invalid="skip"))
    assert not target.exists()
    with pytest.raises(InputError, match="no id column 'key'"):
        score_file(
            classifier,
            write_input(tmp_path / "ok.csv", frame(logreg)),
            target,
            options(id_column="key"),
        )


def test_out_of_range_warns_unless_strict(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    columns = frame(logreg)
    name = logreg.feature_names[0]
    columns[name] = columns[name].copy()
    columns[name][[3, 7]] = [1e6, -5.0]
    source = write_input(tmp_path / "in.csv", columns)
    summary = score_file(classifier, source, tmp_path / "out.csv")
    assert summary.invalid_rows == 0 and summary.scored == 171
    assert summary.out_of_range[name].below == 1 and summary.out_of_range[name].above == 1
    assert any(f"2 values of {name!r} outside the validation range" in w for w in summary.warnings)
    with pytest.raises(ContractViolation, match=rf"row 4, column '{name}': 1000000.0 is above"):
        score_file(classifier, source, tmp_path / "strict.csv", options(strict_range=True))
    assert not (tmp_path / "strict.csv").exists()


def test_drift_is_flagged_and_reported_in_html(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    columns = frame(logreg)
    name = logreg.feature_names[1]
    columns[name] = columns[name] * 1.8
    source = write_input(tmp_path / "in.npy", columns)
    report = tmp_path / "drift.html"
    summary = score_file(classifier, source, tmp_path / "out.npy", options(drift_report=report))
    assert summary.drift is not None and name in summary.drift.drifted
    drifted = next(f for f in summary.drift.features if f.name == name)
    assert drifted.psi > 0.25 and drifted.ks is not None
    page = report.read_text()
    assert f"{name}: PSI" in page and page.count("<svg") >= 2
    assert summary.to_dict()["drift"]["drifted_features"] == list(summary.drift.drifted)
    assert any(f"feature {name!r} drifted" in w for w in summary.warnings)


def test_an_interrupted_run_leaves_no_output_and_no_temporary_file(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    source = write_input(tmp_path / "in.csv", frame(logreg))
    seen: list[ScoreProgress] = []

    def interrupt(progress: ScoreProgress) -> None:
        seen.append(progress)
        if len(seen) == 2:
            raise KeyboardInterrupt

    given = options(batch_size=16, on_invalid="quarantine", drift_report=tmp_path / "d.html")
    with pytest.raises(KeyboardInterrupt):
        score_file(classifier, source, tmp_path / "out.parquet", given, interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    assert seen[0].unit == "bytes" and seen[0].total == source.stat().st_size


def test_a_failing_writer_leaves_no_output(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    """A .npy string field is as wide as the first batch's longest id: a longer one later fails
    in the writer thread, and the run stops with nothing written."""
    columns = frame(logreg)
    columns["id"] = columns["id"].copy()
    columns["id"][150] = "x" * 80
    source = write_input(tmp_path / "in.parquet", columns)
    with pytest.raises(InputError, match=r"out\.npy: column 'id' holds a value of 80 characters"):
        score_file(classifier, source, tmp_path / "out.npy", options(id_column="id", batch_size=50))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_a_model_failing_on_one_part_stops_the_run_with_nothing_written(
    tmp_path: Path, classifier_bundle: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    """A part of a later batch failing on a model thread stops the run: the error reaches the
    caller, the other threads stop, no output or temporary file is left."""
    engine = ScoringEngine.open(classifier_bundle, key_dir, threads=3, split_batches=True)
    run, calls = engine.run, []

    def failing(matrix: np.ndarray) -> Predictions:
        calls.append(len(matrix))
        if len(calls) == 5:
            raise RuntimeError("the model failed on this part")
        return run(matrix)

    engine.run = failing  # type: ignore[method-assign]
    source = write_input(tmp_path / "in.npy", frame(logreg))
    with pytest.raises(RuntimeError, match="the model failed on this part"):
        score_file(engine, source, tmp_path / "out.csv", options(batch_size=64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]
    assert not any(t.name.startswith("edgeml-") for t in threading.enumerate()), "threads left"


def test_paths_that_collide_and_formats_that_are_unknown(
    tmp_path: Path, classifier: ScoringEngine, logreg: TrainedModel
) -> None:
    source = write_input(tmp_path / "in.csv", frame(logreg))
    with pytest.raises(InputError, match="the OUTPUT and the INPUT are the same file"):
        score_file(classifier, source, source)
    with pytest.raises(InputError, match=r"unsupported file type '\.xlsx'"):
        score_file(classifier, source, tmp_path / "out.xlsx")
    with pytest.raises(InputError, match="does not exist"):
        score_file(classifier, source, tmp_path / "no" / "out.csv")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(InputError, match="the OUTPUT is a folder"):
        score_file(classifier, source, tmp_path / "folder.csv")
    with pytest.raises(InputError, match="--on-invalid must be one of"):
        options(on_invalid="ignore")


def test_an_empty_input_gives_an_empty_output(tmp_path: Path, classifier: ScoringEngine) -> None:
    source = tmp_path / "in.csv"
    source.write_text(",".join(classifier.features) + "\n")
    summary = score_file(classifier, source, tmp_path / "out.npy")
    assert summary.rows == 0 and np.load(tmp_path / "out.npy").shape == (0,)
    assert all(f.psi is None for f in summary.drift.features)


def test_string_class_labels_in_every_format(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    """Labels that are words, one longer than the first batch's: a .npy label field is as
    wide as the longest class, not as the first batch."""
    import skops.io
    from conftest import write_csv
    from sklearn.linear_model import LogisticRegression

    names = ["benign", "malignant-with-a-long-class-name"]
    order = np.argsort(logreg.y_val, kind="stable")  # the first rows are all class 0
    X, y = logreg.X_val[order], np.array(names, dtype=object)[logreg.y_val[order]]
    estimator = LogisticRegression(max_iter=5000).fit(X, y)
    skops.io.dump(estimator, tmp_path / "words.skops")
    validation = write_csv(tmp_path / "words.csv", logreg.feature_names, X, y)
    model = TrainedModel(
        tmp_path / "words.skops", validation, "target", estimator, X, y, logreg.feature_names
    )
    engine = ScoringEngine.open(build_fp32(model, key_dir, tmp_path / "b", "words"), key_dir)
    assert engine.classes == tuple(names)
    expected = estimator.predict(X).tolist()
    for suffix in (".npy", ".csv", ".jsonl", ".parquet"):
        target = tmp_path / f"out{suffix}"
        score_file(engine, validation, target, options(batch_size=16))
        out = read_output(target)
        assert out["label"] == expected, suffix
        assert f"probability_{names[1]}" in out
