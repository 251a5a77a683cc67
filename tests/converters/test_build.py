"""The build pipeline on real models: conversion proven, bundles verified, deterministic, gated."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TrainedModel, train_model, write_csv
from sklearn.linear_model import LogisticRegression

from edgeml.converters.pipeline import BuildRequest, build_bundles
from edgeml.toolkit.bundle import GOLDEN, MODEL, verify_bundle
from edgeml.toolkit.errors import ConversionError, GateError, InputError
from edgeml.toolkit.golden import GoldenSet, compare_outputs
from edgeml.toolkit.keys import load_private_key
from edgeml.toolkit.profiles import load_profile
from edgeml.toolkit.runtime import create_session, run_manifest_model
from edgeml.toolkit.trust import load_trust_store


def request_for(
    model: TrainedModel, key_dir: Path, out: Path, *profiles: str, **extra
) -> BuildRequest:
    return BuildRequest(
        model_path=extra.pop("model_path", model.model_path),
        profiles=[load_profile(p) for p in profiles or ("x86-64-generic",)],
        signing_key=load_private_key(key_dir / "edgeml.key"),
        out_dir=out,
        validation_path=extra.pop("validation_path", model.validation_path),
        target=extra.pop("target", model.target),
        **extra,
    )


def save_as_onnx(model: TrainedModel, path: Path, opset: int) -> Path:
    """The model converted by skl2onnx directly (no ZipMap), as a user's .onnx file."""
    from skl2onnx import to_onnx

    converted = to_onnx(
        model.estimator,
        model.X_val[:1].astype(np.float32),
        options={"zipmap": False},
        target_opset=opset,
    )
    path.write_bytes(converted.SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["logreg", "forest", "hgb", "mlp", "ridge"])
def test_reference_models_convert_and_match_their_source(
    tmp_path: Path, key_dir: Path, kind: str
) -> None:
    """HistGradientBoosting included: protobuf 7 broke its conversion with skl2onnx 1.20."""
    model = train_model(tmp_path / "model", kind)
    result = build_bundles(request_for(model, key_dir, tmp_path / "out"))
    build = result.builds[0]
    assert build.passed
    assert build.agreement is not None
    if kind == "ridge":
        assert build.agreement.values_within_tolerance >= 0.999
    else:
        assert build.agreement.label_agreement >= 0.999
        assert build.agreement.max_probability_diff < 1e-3
    bundle = verify_bundle(build.bundle_path, load_trust_store(key_dir / "edgeml.pub"))
    assert bundle.manifest.task == ("regression" if kind == "ridge" else "classification")
    assert bundle.manifest.features == model.feature_names
    # The bundled model, run as a device would, reproduces the source estimator.
    session = create_session(bundle.entries[MODEL])
    outputs = run_manifest_model(session, bundle.manifest, model.X_val)
    if kind == "ridge":
        np.testing.assert_allclose(outputs.values, model.estimator.predict(model.X_val), rtol=1e-4)
    else:
        agreement = np.mean(outputs.labels == model.estimator.predict(model.X_val))
        assert agreement >= 0.999


def test_two_profiles_give_two_verified_bundles_with_contract_baseline_and_golden(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    result = build_bundles(
        request_for(
            logreg,
            key_dir,
            tmp_path,
            "raspberry-pi-4",
            "x86-64-generic",
            name="cancer",
            version="2.1.0",
        )
    )
    paths = sorted(p.name for p in tmp_path.glob("*.edgeml"))
    assert paths == ["cancer-2.1.0-raspberry-pi-4.edgeml", "cancer-2.1.0-x86-64-generic.edgeml"]
    trust = load_trust_store(key_dir)
    for build in result.builds:
        bundle = verify_bundle(build.bundle_path, trust)
        manifest = bundle.manifest
        assert manifest.bundle_id == build.bundle_id
        assert manifest.profile == build.profile.name
        assert set(manifest.entries) == {"model.onnx", "baseline.json", "golden.json"}
        features = manifest.contract["features"]
        assert [f["name"] for f in features] == list(logreg.feature_names)
        first = features[0]
        assert first["min"] == pytest.approx(logreg.X_val[:, 0].min())
        assert first["max"] == pytest.approx(logreg.X_val[:, 0].max())
        assert first["nullable"] is False
        baseline = bundle.json_entry("baseline.json")
        assert set(baseline["features"]) == set(logreg.feature_names)
        assert sum(baseline["features"][logreg.feature_names[0]]["proportions"]) == pytest.approx(
            1.0
        )
        assert baseline["prediction"]["classes"] == [0, 1]
        golden = GoldenSet.from_dict(bundle.json_entry(GOLDEN))
        assert 2 <= len(golden.rows) <= 16
        assert set(golden.expected.labels.tolist()) == {0, 1}
        session = create_session(bundle.entries[MODEL])
        replay = run_manifest_model(session, manifest, golden.rows)
        assert compare_outputs(replay, golden.expected, golden.tolerance, every_row=True).passed
        assert manifest.provenance["source_model"]["sha256"]
        assert "onnxruntime" in manifest.provenance["versions"]
        assert "single_row_ms_p50" not in str(manifest.to_dict()), (
            "host timings never go into a bundle"
        )
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.json").exists()


def test_same_inputs_give_byte_identical_bundles(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel, monkeypatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = build_bundles(request_for(logreg, key_dir, tmp_path / "a", "raspberry-pi-4"))
    second = build_bundles(request_for(logreg, key_dir, tmp_path / "b", "raspberry-pi-4"))
    a, b = first.builds[0].bundle_path.read_bytes(), second.builds[0].bundle_path.read_bytes()
    assert a == b
    with zipfile.ZipFile(first.builds[0].bundle_path) as archive:
        assert archive.infolist()[0].date_time == (2023, 11, 14, 22, 13, 20)
        assert archive.namelist() == sorted(archive.namelist())


def test_onnx_model_builds_with_file_columns_in_order(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    path = save_as_onnx(logreg, tmp_path / "cancer.onnx", opset=15)
    result = build_bundles(request_for(logreg, key_dir, tmp_path / "out", model_path=path))
    build = result.builds[0]
    assert build.passed
    assert build.passes[0]["name"] == "import-onnx"
    bundle = verify_bundle(build.bundle_path, load_trust_store(key_dir))
    assert bundle.manifest.features == logreg.feature_names
    assert bundle.manifest.classes == (0, 1)


def test_onnx_model_above_the_profile_opset_is_refused(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    path = save_as_onnx(logreg, tmp_path / "cancer.onnx", opset=21)
    with pytest.raises(ConversionError, match=r"opset 21.*at most 17"):
        build_bundles(
            request_for(logreg, key_dir, tmp_path / "out", "raspberry-pi-4", model_path=path)
        )


def test_a_conversion_that_does_not_reproduce_its_source_fails_with_a_report(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text(
        'name = "strict"\narchitecture = "x86_64"\nexecution_providers = ["CPUExecutionProvider"]\n'
        'precisions = ["fp32"]\n[tolerance]\nlabel_agreement = 1.0\nprobability_atol = 1e-12\n'
    )
    out = tmp_path / "out"
    with pytest.raises(GateError, match="conversion") as caught:
        build_bundles(request_for(logreg, key_dir, out, str(strict)))
    assert caught.value.exit_code == 4
    assert not list(out.glob("*.edgeml")), "a failed build writes no bundle"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], (
        "no temporary files left"
    )
    report = (out / "report.md").read_text()
    assert "Conversion check: failed" in report
    assert "max probability difference" in report


def test_a_broken_size_budget_fails_every_bundle_of_the_build(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(
        'name = "tiny"\narchitecture = "aarch64"\nexecution_providers = ["CPUExecutionProvider"]\n'
        'precisions = ["fp32"]\n[budgets]\nmax_size_mb = 0.001\n'
    )
    out = tmp_path / "out"
    with pytest.raises(GateError, match=r"max_size_mb .* against 0\.001"):
        build_bundles(request_for(logreg, key_dir, out, "raspberry-pi-4", str(tiny)))
    assert not list(out.glob("*.edgeml")), (
        "all or nothing: the passing profile is not written either"
    )


def test_bad_validation_data_is_named(tmp_path: Path, key_dir: Path, logreg: TrainedModel) -> None:
    names = list(logreg.feature_names)
    with pytest.raises(InputError, match="no target column 'label'"):
        build_bundles(request_for(logreg, key_dir, tmp_path / "o1", target="label"))

    missing_column = write_csv(
        tmp_path / "missing.csv", names[1:], logreg.X_val[:, 1:], logreg.y_val
    )
    with pytest.raises(InputError, match="takes 30 features, the file has 29 columns"):
        build_bundles(request_for(logreg, key_dir, tmp_path / "o2", validation_path=missing_column))

    with_null = tmp_path / "null.csv"
    lines = logreg.validation_path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[2] = ""
    lines[3] = ",".join(cells)
    with_null.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"row 3, column '{names[2]}' is empty"):
        build_bundles(request_for(logreg, key_dir, tmp_path / "o3", validation_path=with_null))

    with_text = tmp_path / "text.csv"
    cells[2] = "abc"
    lines[3] = ",".join(cells)
    with_text.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"{names[2]}.*abc|abc.*{names[2]}"):
        build_bundles(request_for(logreg, key_dir, tmp_path / "o4", validation_path=with_text))


def test_a_model_with_feature_names_takes_columns_by_name(tmp_path: Path, key_dir: Path) -> None:
    import pyarrow as pa
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    names = ["sepal_l", "sepal_w", "petal_l", "petal_w"]
    frame = pa.table({n: X[:, i] for i, n in enumerate(names)})
    model_path = tmp_path / "named.skops"
    skops.io.dump(LogisticRegression(max_iter=500).fit(frame, y), model_path)
    # The file's columns come in another order, with an extra one the model does not use.
    shuffled = [2, 0, 3, 1]
    validation = write_csv(
        tmp_path / "v.csv",
        [names[i] for i in shuffled] + ["row_id"],
        np.column_stack([X[:, shuffled], np.arange(len(X))]),
        y,
    )
    model = TrainedModel(model_path, validation, "target", None, X, y, tuple(names))
    result = build_bundles(request_for(model, key_dir, tmp_path / "ok"))
    assert result.builds[0].agreement.label_agreement == 1.0
    assert any("row_id" in w for w in result.warnings)
    bundle = verify_bundle(result.builds[0].bundle_path, load_trust_store(key_dir))
    assert bundle.manifest.features == tuple(names), "the model's order, not the file's"
    missing = write_csv(tmp_path / "m.csv", names[1:], X[:, 1:], y)
    with pytest.raises(InputError, match="lacks: sepal_l"):
        build_bundles(request_for(model, key_dir, tmp_path / "bad", validation_path=missing))


def test_model_without_feature_names_needs_the_right_column_count(
    tmp_path: Path, key_dir: Path
) -> None:
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    model_path = tmp_path / "iris.skops"
    skops.io.dump(LogisticRegression(max_iter=500).fit(X, y), model_path)
    good = write_csv(tmp_path / "good.csv", ["a", "b", "c", "d"], X, y, "species")
    model = TrainedModel(model_path, good, "species", None, X, y, ("a", "b", "c", "d"))
    assert build_bundles(request_for(model, key_dir, tmp_path / "ok")).passed
    short = write_csv(tmp_path / "short.csv", ["a", "b", "c"], X[:, :3], y, "species")
    with pytest.raises(InputError, match="takes 4 features, the file has 3 columns"):
        build_bundles(request_for(model, key_dir, tmp_path / "bad", validation_path=short))


def test_string_class_labels(tmp_path: Path, key_dir: Path) -> None:
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    data = load_iris()
    labels = np.array(data.target_names)[data.target]
    model_path = tmp_path / "iris.skops"
    skops.io.dump(
        DecisionTreeClassifier(max_depth=3, random_state=0).fit(data.data, labels), model_path
    )
    validation = write_csv(
        tmp_path / "iris.csv", ["a", "b", "c", "d"], data.data, labels, "species"
    )
    model = TrainedModel(
        model_path, validation, "species", None, data.data, labels, ("a", "b", "c", "d")
    )
    result = build_bundles(request_for(model, key_dir, tmp_path / "out"))
    bundle = verify_bundle(result.builds[0].bundle_path, load_trust_store(key_dir))
    assert bundle.manifest.classes == ("setosa", "versicolor", "virginica")
    assert result.builds[0].metrics["bundled"]["accuracy"] > 0.9


def test_unsupported_estimators_are_named(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    import joblib
    from sklearn.cluster import KMeans

    path = tmp_path / "kmeans.joblib"
    joblib.dump(KMeans(n_clusters=2, n_init=1, random_state=0).fit(logreg.X_val), path)
    with pytest.raises(ConversionError, match=r"unsupported estimator sklearn\.cluster.*KMeans"):
        build_bundles(request_for(logreg, key_dir, tmp_path / "out", model_path=path))


class CustomLogisticRegression(LogisticRegression):
    """A user's own estimator class: skops must not load it unless the user trusts it."""


def test_skops_types_outside_sklearn_numpy_scipy_must_be_trusted_by_name(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    import skops.io

    path = tmp_path / "custom.skops"
    skops.io.dump(CustomLogisticRegression(max_iter=3000).fit(logreg.X_val, logreg.y_val), path)
    type_name = f"{CustomLogisticRegression.__module__}.CustomLogisticRegression"
    with pytest.raises(
        ConversionError, match=f"not trusted by default: {type_name}; name each with --trust-type"
    ):
        build_bundles(request_for(logreg, key_dir, tmp_path / "out", model_path=path))
    # Trusted, it loads; skl2onnx has no converter for a subclass, and the error names it.
    with pytest.raises(ConversionError, match="cannot convert the CustomLogisticRegression"):
        build_bundles(
            request_for(
                logreg, key_dir, tmp_path / "out", model_path=path, trusted_types=(type_name,)
            )
        )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.edgeml"))


def test_a_function_transformer_is_refused_by_name(
    tmp_path: Path, key_dir: Path, logreg: TrainedModel
) -> None:
    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    pipeline = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=3000))
    pipeline.fit(logreg.X_val, logreg.y_val)
    path = tmp_path / "log.skops"
    skops.io.dump(pipeline, path)
    with pytest.raises(ConversionError, match="cannot convert the Pipeline: FunctionTransformer"):
        build_bundles(request_for(logreg, key_dir, tmp_path / "out", model_path=path))
