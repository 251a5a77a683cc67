"""The scoring engine on real signed bundles: verified first, the profile's session, and
predictions that reproduce the source scikit-learn model from every kind of input."""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import TrainedModel

from edgeml.toolkit.bundle import BASELINE, MODEL, verify_bundle
from edgeml.toolkit.contract import ContractViolation
from edgeml.toolkit.drift import Baseline
from edgeml.toolkit.errors import BundleError, InputError
from edgeml.toolkit.scoring import ScoringEngine
from edgeml.toolkit.trust import load_trust_store


def tampered_copy(bundle: Path, folder: Path) -> Path:
    """The bundle with one byte of its model changed (the hash check must refuse it)."""
    copy = folder / bundle.name
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(copy, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == MODEL:
                data = data[:-1] + bytes([data[-1] ^ 1])
            target.writestr(info, data)
    return copy


@pytest.fixture(scope="module")
def engine(built_bundle: Path, key_dir: Path) -> ScoringEngine:
    return ScoringEngine.open(built_bundle, key_dir / "edgeml.pub")


def test_open_verifies_and_takes_the_profile_s_settings(
    engine: ScoringEngine, logreg: TrainedModel
) -> None:
    assert engine.bundle_id == "cancer-1.0.0-raspberry-pi-4"
    assert engine.threads == 4, "raspberry-pi-4 asks for 4 intra-op threads"
    assert engine.providers == ("CPUExecutionProvider",)
    assert engine.features == logreg.feature_names
    assert engine.classes == (0, 1)
    assert engine.warnings == ()
    assert [f.name for f in engine.output_fields()] == ["label", "probability_0", "probability_1"]


def test_a_tampered_bundle_is_refused_before_anything_is_loaded(
    tmp_path: Path, built_bundle: Path, key_dir: Path
) -> None:
    with pytest.raises(BundleError, match="check 'hashes' failed") as caught:
        ScoringEngine.open(tampered_copy(built_bundle, tmp_path), key_dir)
    assert caught.value.exit_code == 3


def test_an_untrusted_key_is_refused(built_bundle: Path, other_key_dir: Path) -> None:
    with pytest.raises(BundleError, match="check 'trusted key' failed"):
        ScoringEngine.open(built_bundle, load_trust_store(other_key_dir))


def test_a_missing_provider_falls_back_to_the_cpu_with_a_warning(
    built_bundle: Path, key_dir: Path
) -> None:
    bundle = verify_bundle(built_bundle, load_trust_store(key_dir))
    baseline = Baseline.from_dict(bundle.json_entry(BASELINE))
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available"):
        engine = ScoringEngine(
            bundle.manifest,
            bundle.entries[MODEL],
            baseline,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            threads=0,
        )
    assert engine.providers == ("CPUExecutionProvider",)
    assert any("CUDAExecutionProvider" in w for w in engine.warnings)
    assert engine.threads == 0


def test_predictions_from_every_kind_of_input_reproduce_scikit_learn(
    engine: ScoringEngine, logreg: TrainedModel
) -> None:
    X = logreg.X_val
    expected_labels = logreg.estimator.predict(X)
    expected_probabilities = logreg.estimator.predict_proba(X)
    names = logreg.feature_names
    inputs = {
        "array": X,
        "mapping": {name: X[:, j] for j, name in enumerate(names)},
        "lists": {name: X[:, j].tolist() for j, name in enumerate(names)},
        "rows": [dict(zip(names, row.tolist(), strict=True)) for row in X],
        "arrow": pa.table({name: X[:, j] for j, name in enumerate(names)}),
        "structured": np.rec.fromarrays(X.T, names=list(names)),
    }
    # Within the tolerance the build proved the bundle against (exact for an fp32 bundle;
    # tests/toolkit/test_scoring_files.py checks an fp32 bundle with tight tolerances).
    tolerance = engine.profile.tolerance
    for kind, data in inputs.items():
        predictions = engine.predict(data)
        agreement = np.mean(predictions.labels == expected_labels)
        assert agreement >= tolerance.label_agreement, kind
        np.testing.assert_allclose(
            predictions.probabilities,
            expected_probabilities,
            atol=tolerance.probability_atol,
            err_msg=kind,
        )
    one = engine.predict(X[0])
    assert one.labels.tolist() == expected_labels[:1].tolist()
    columns = engine.predict(X[:3]).to_columns()
    assert list(columns) == ["label", "probability_0", "probability_1"]


def test_extra_columns_are_passed_over(engine: ScoringEngine, logreg: TrainedModel) -> None:
    data = {name: logreg.X_val[:2, j] for j, name in enumerate(logreg.feature_names)}
    data["comment"] = ["a", "b"]
    report = engine.check(data)
    assert report.passed and report.unknown_columns == ("comment",)
    assert len(engine.predict(data)) == 2


def test_a_contract_violation_names_row_and_column(
    engine: ScoringEngine, logreg: TrainedModel
) -> None:
    names = logreg.feature_names
    rows = [dict(zip(names, row.tolist(), strict=True)) for row in logreg.X_val[:3]]
    rows[1][names[2]] = "n/a?"
    with pytest.raises(
        ContractViolation, match=rf"row 2, column '{names[2]}': 'n/a\?' is not a number"
    ):
        engine.predict(rows)
    del rows[1][names[2]]
    with pytest.raises(ContractViolation, match=rf"row 2, column '{names[2]}': no value"):
        engine.predict(rows)
    too_big = logreg.X_val[:1].copy()
    too_big[0, 0] = 1e9
    assert engine.check(too_big).passed, "out of range is only a warning by default"
    with pytest.raises(ContractViolation, match="above the contract's maximum"):
        engine.predict(too_big, strict_range=True)


def test_batches_converted_through_a_kept_matrix_give_their_own_predictions(
    engine: ScoringEngine, logreg: TrainedModel
) -> None:
    """predict converts a float64 batch of many rows into a matrix it keeps for the next
    call: each call's answer is its own rows' (as the full check and run give them), on
    one thread or several at once, and a batch that breaks the contract, converted there
    first, is reported from a matrix of its own."""
    rng = np.random.default_rng(7)
    batches = [
        logreg.X_val[rng.integers(0, len(logreg.X_val), size)] for size in (100, 300, 65, 300)
    ]
    expected = [engine.run(engine.check(b).matrix).probabilities for b in batches]
    for batch, probabilities in zip(batches * 3, expected * 3, strict=True):
        np.testing.assert_array_equal(engine.predict(batch).probabilities, probabilities)
    kept = list(engine._buffers._free)
    assert kept and all(m.dtype == np.float32 and m.shape[0] >= 300 for m in kept)

    def score(i: int) -> bool:
        j = i % len(batches)
        return np.array_equal(engine.predict(batches[j]).probabilities, expected[j])

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(score, range(200)))
    assert len(engine._buffers._free) <= 4

    bad = batches[1].copy()
    bad[123, 4] = np.nan
    with pytest.raises(ContractViolation, match=r"row 124, column .*: no value") as caught:
        engine.predict(bad)
    matrix = caught.value.report.matrix
    assert not any(np.shares_memory(matrix, m) for m in engine._buffers._free)


def test_input_of_the_wrong_shape_or_kind_is_an_input_error(engine: ScoringEngine) -> None:
    with pytest.raises(InputError, match="expected 30 columns"):
        engine.predict(np.zeros((2, 3)))
    with pytest.raises(InputError, match="cannot score a int"):
        engine.predict(3)
    with pytest.raises(InputError, match="no columns"):
        engine.predict({})


def test_no_rows_give_no_predictions(engine: ScoringEngine) -> None:
    predictions = engine.predict(np.zeros((0, 30)))
    assert len(predictions) == 0 and predictions.probabilities.shape == (0, 2)


def test_the_engine_runs_without_the_build_stack_loaded(tmp_path: Path) -> None:
    """Layering: scoring imports numpy, onnxruntime and the kernel only (pyarrow lazily)."""
    import subprocess
    import sys

    code = (
        "import sys\nimport edgeml.toolkit.scoring, edgeml.toolkit.batch_scoring, "
        "edgeml.toolkit.drift_report, edgeml.toolkit.cli.score\n"
        "bad = {m.split('.')[0] for m in sys.modules} & "
        "{'onnx', 'skl2onnx', 'sklearn', 'skops', 'scipy', 'pyarrow', 'pandas'}\n"
        "print(sorted(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
