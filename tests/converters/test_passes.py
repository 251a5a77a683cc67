"""Each optimization pass on real skl2onnx models: what it does, and where it does not apply."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TrainedModel

from edgeml.converters.onnx_graph import normalise
from edgeml.converters.passes import PassContext, PassSkipped, onnx_pass
from edgeml.converters.passes.graph import check_runs, remove_noop_casts
from edgeml.converters.passes.prune import prune_mlp_units, shrink_layers
from edgeml.converters.source_model import load_source_model, to_onnx
from edgeml.toolkit.profiles import load_profile


def onnx_of(model: TrainedModel):
    source = load_source_model(model.model_path)
    return to_onnx(source, 17)[0]


def run(model, X: np.ndarray):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": X.astype(np.float32)})


def ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.fixture(scope="module")
def mlp_onnx(digits_mlp: TrainedModel):
    return onnx_of(digits_mlp)


def context(profile: str = "raspberry-pi-4", **kwargs) -> PassContext:
    return PassContext(load_profile(profile), **kwargs)


def test_dynamic_int8_quantizes_the_matmuls_to_under_a_third(
    mlp_onnx, digits_mlp: TrainedModel
) -> None:
    quantized = normalise(onnx_pass("quantize-dynamic")(mlp_onnx, context()))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops(quantized)
    # int8 weights: a quarter of the bytes, plus scales and the graph (larger share on a small MLP)
    assert len(quantized.SerializeToString()) <= 0.35 * len(mlp_onnx.SerializeToString())
    labels, _ = run(quantized, digits_mlp.X_val)
    assert np.mean(labels == digits_mlp.estimator.predict(digits_mlp.X_val)) > 0.97


def test_dynamic_quantization_survives_a_duplicated_default_domain(mlp_onnx) -> None:
    """skl2onnx can list the default domain twice; the quantizer refuses that until the
    imports are de-duplicated, which normalise does."""
    doubled = onnx.ModelProto()
    doubled.CopyFrom(mlp_onnx)
    doubled.opset_import.append(onnx.helper.make_opsetid("", 15))
    assert [o.domain for o in doubled.opset_import].count("") == 2
    cleaned = normalise(doubled)
    assert [o.domain for o in cleaned.opset_import].count("") == 1
    quantized = onnx_pass("quantize-dynamic")(cleaned, context())
    check_runs(quantized, 64, "features")


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_qdq_quantization_with_each_calibration_method(
    mlp_onnx, digits_mlp: TrainedModel, method: str
) -> None:
    profile = load_profile("x86-64-server")
    settings = profile.quantization.__class__(
        **{**profile.quantization.__dict__, "calibration_method": method}
    )
    profile = profile.__class__(**{**profile.__dict__, "quantization": settings})
    quantized = onnx_pass("quantize-static")(mlp_onnx, PassContext(profile, digits_mlp.X_val[:200]))
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(quantized)
    labels, _ = run(quantized, digits_mlp.X_val)
    assert np.mean(labels == digits_mlp.estimator.predict(digits_mlp.X_val)) > 0.95


def test_static_quantization_needs_calibration_rows(mlp_onnx) -> None:
    with pytest.raises(PassSkipped, match="calibration rows"):
        onnx_pass("quantize-static")(mlp_onnx, context("x86-64-server"))


def test_fp16_keeps_float32_inputs_and_outputs_and_runs(mlp_onnx, digits_mlp: TrainedModel) -> None:
    """The trap: skl2onnx's Scaler → no-op Cast → MatMul made a model onnxruntime refused."""
    converted = onnx_pass("fp16")(mlp_onnx, context("jetson-orin"))
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert converted.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in converted.graph.initializer)
    labels, probabilities = run(converted, digits_mlp.X_val)
    assert np.mean(labels == digits_mlp.estimator.predict(digits_mlp.X_val)) > 0.99
    assert np.abs(probabilities - digits_mlp.estimator.predict_proba(digits_mlp.X_val)).max() < 0.05


def test_noop_casts_are_removed_but_real_ones_kept(mlp_onnx) -> None:
    casts_before = sum(n.op_type == "Cast" for n in mlp_onnx.graph.node)
    cleaned = remove_noop_casts(mlp_onnx)
    assert sum(n.op_type == "Cast" for n in cleaned.graph.node) == casts_before - 1
    check_runs(cleaned, 64, "features")


def test_simplify_keeps_outputs_and_imports_no_foreign_domain(
    mlp_onnx, digits_mlp: TrainedModel
) -> None:
    simplified = normalise(onnx_pass("simplify")(mlp_onnx, context()))
    assert {o.domain for o in simplified.opset_import} <= {"", "ai.onnx.ml"}
    before, after = run(mlp_onnx, digits_mlp.X_val), run(simplified, digits_mlp.X_val)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], atol=1e-6)


def test_passes_that_do_not_apply_to_tree_ensembles_say_why(tmp_path: Path) -> None:
    from conftest import train_model

    forest = onnx_of(train_model(tmp_path, "forest"))
    for name, profile in (
        ("quantize-dynamic", "raspberry-pi-4"),
        ("fp16", "jetson-orin"),
        ("prune-magnitude", "raspberry-pi-4"),
    ):
        with pytest.raises(PassSkipped, match=r"TreeEnsembleClassifier|no MatMul"):
            onnx_pass(name)(forest, context(profile))


def test_magnitude_pruning_zeroes_the_share_asked(mlp_onnx) -> None:
    from onnx import numpy_helper

    pruned = onnx_pass("prune-magnitude")(mlp_onnx, context(params={"sparsity": 0.5}))
    weights = [
        numpy_helper.to_array(i)
        for i in pruned.graph.initializer
        if len(i.dims) == 2 and i.dims[0] > 1
    ]
    for matrix in weights:
        assert np.mean(matrix == 0) == pytest.approx(0.5, abs=0.01)
    import zlib

    assert len(zlib.compress(pruned.SerializeToString())) < 0.75 * len(
        zlib.compress(mlp_onnx.SerializeToString())
    )


def test_shrink_layers_keeps_the_most_important_units() -> None:
    rng = np.random.default_rng(0)
    coefs = [rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=(3, 2))]
    coefs[0][:, 2] *= 100  # unit 2 of the first hidden layer matters most
    intercepts = [np.arange(4.0), np.arange(3.0), np.arange(2.0)]
    new_coefs, new_intercepts = shrink_layers(coefs, intercepts, 0.5)
    # round(4 * 0.5) = 2 units go from the first hidden layer, round(3 * 0.5) = 2 from the second
    assert [c.shape for c in new_coefs] == [(5, 2), (2, 1), (1, 2)]
    assert 2.0 in new_intercepts[0]
    assert [b.shape for b in new_intercepts] == [(2,), (1,), (2,)]
    assert shrink_layers(coefs, intercepts, 0.99)[0][0].shape == (5, 1), "one unit always stays"
    assert coefs[0].shape == (5, 4), "the input is not changed"


def test_structured_pruning_shrinks_the_mlp_and_fine_tuning_wins_accuracy_back(
    digits_mlp: TrainedModel,
) -> None:
    import csv

    with (digits_mlp.validation_path.parent / "digits-mlp-train.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    X_train = np.array([[float(v) for v in r[:-1]] for r in rows])
    y_train = np.array([int(r[-1]) for r in rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = prune_mlp_units(digits_mlp.estimator, 0.5, None)
        tuned = prune_mlp_units(digits_mlp.estimator, 0.5, (X_train, y_train))
    assert raw.hidden_before == (128, 64) and raw.hidden_after == (64, 32)
    assert raw.fine_tuned_epochs == 0 and tuned.fine_tuned_epochs > 0
    source = digits_mlp.estimator.score(digits_mlp.X_val, digits_mlp.y_val)
    raw_score = raw.estimator.score(digits_mlp.X_val, digits_mlp.y_val)
    tuned_score = tuned.estimator.score(digits_mlp.X_val, digits_mlp.y_val)
    assert tuned_score >= raw_score
    assert source - tuned_score <= 0.02
    assert digits_mlp.estimator.steps[-1][1].coefs_[0].shape == (64, 128), (
        "the source is not changed"
    )


def test_structured_pruning_skips_what_is_not_an_mlp(tmp_path: Path) -> None:
    from conftest import train_model

    logreg = train_model(tmp_path, "logreg")
    with pytest.raises(PassSkipped, match="applies to MLPs"):
        prune_mlp_units(logreg.estimator, 0.5, None)
