"""Drift of a batch: counts that add up, PSI and KS against a baseline, and the HTML report.

Pure: baselines are made with the same functions the build uses, batches are arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeml.toolkit import drift
from edgeml.toolkit.drift import (
    Baseline,
    DriftCounts,
    accumulate,
    class_counts,
    ks_distance,
    summarise,
)
from edgeml.toolkit.drift_report import bar_chart_svg, render_drift

RNG = np.random.default_rng(7)
VALIDATION = RNG.normal(0.0, 1.0, size=(4000, 2))


def baseline_of(values: np.ndarray, prediction: dict) -> Baseline:
    """The baseline document the build writes (same functions), then typed."""
    document = {
        "bins": drift.DEFAULT_BINS,
        "rows": len(values),
        "features": {
            name: drift.feature_baseline(values[:, j], np.isnan(values[:, j]))
            for j, name in enumerate(["x", "y"])
        },
        "prediction": prediction,
    }
    return Baseline.from_dict(document)


CLASSES = baseline_of(
    VALIDATION,
    drift.class_baseline(np.array(["0", "1", "1", "1"]), ["0", "1"]) | {"classes": [0, 1]},
)


def test_the_baseline_document_parses_into_its_parts() -> None:
    assert set(CLASSES.features) == {"x", "y"}
    x = CLASSES.features["x"]
    assert len(x.proportions) == len(x.edges) + 1 == 10
    assert CLASSES.prediction is not None and CLASSES.prediction.classes == (0, 1)
    assert CLASSES.prediction.proportions == (0.25, 0.75)
    with pytest.raises(ValueError, match="malformed"):
        Baseline.from_dict({"rows": 3})
    with pytest.raises(ValueError, match="proportions"):
        Baseline.from_dict({"features": {"x": {"edges": [1.0], "proportions": [1.0]}}})


def test_counts_add_up_the_same_in_batches_as_at_once() -> None:
    data = RNG.normal(0.0, 1.0, size=(1000, 2))
    data[::17, 1] = np.nan
    data[5, 0] = np.inf
    labels = RNG.integers(0, 2, size=1000)
    whole = accumulate(DriftCounts.empty(CLASSES), CLASSES, data, ["x", "y"], labels=labels)
    step = DriftCounts.empty(CLASSES)
    for start in range(0, 1000, 128):
        step = accumulate(
            step, CLASSES, data[start : start + 128], ["x", "y"], labels=labels[start : start + 128]
        )
    assert step == whole
    halves = accumulate(
        DriftCounts.empty(CLASSES), CLASSES, data[:300], ["x", "y"], labels=labels[:300]
    ).merge(
        accumulate(DriftCounts.empty(CLASSES), CLASSES, data[300:], ["x", "y"], labels=labels[300:])
    )
    assert halves == whole
    y = whole.features["y"]
    assert y.missing == int(np.isnan(data[:, 1]).sum()) and y.rows == 1000
    x = whole.features["x"]
    assert sum(x.counts) == 999, "an infinity is neither binned nor missing, as in the baseline"
    np.testing.assert_array_equal(
        x.counts, drift.bin_counts(data[:, 0], CLASSES.features["x"].edges)
    )
    assert whole.prediction == tuple(class_counts(labels, [0, 1]).tolist())


def test_accumulate_leaves_the_counts_it_is_given_alone() -> None:
    empty = DriftCounts.empty(CLASSES)
    accumulate(empty, CLASSES, VALIDATION[:10], ["x", "y"])
    assert empty == DriftCounts.empty(CLASSES)


def test_the_same_distribution_does_not_drift_and_a_shifted_one_does() -> None:
    same = RNG.normal(0.0, 1.0, size=(5000, 2))
    shifted = same.copy()
    shifted[:, 1] += 1.5
    labels = np.array([0] * 1250 + [1] * 3750)
    for data, drifted in ((same, ()), (shifted, ("y",))):
        counts = accumulate(DriftCounts.empty(CLASSES), CLASSES, data, ["x", "y"], labels=labels)
        summary = summarise(CLASSES, counts)
        assert summary.drifted == drifted
        x, y = summary.features
        assert x.psi < 0.05 and x.ks < 0.05
        assert summary.prediction is not None and summary.prediction.psi == pytest.approx(0.0)
        assert summary.prediction.ks is None, "classes have no order: no KS"
    assert y.psi > 0.25 and y.ks > 0.4
    assert summary.to_dict()["drifted_features"] == ["y"]


def test_a_feature_without_values_has_no_figures_and_is_not_flagged() -> None:
    data = np.column_stack([np.full(50, np.nan), RNG.normal(size=50)])
    summary = summarise(CLASSES, accumulate(DriftCounts.empty(CLASSES), CLASSES, data, ["x", "y"]))
    x = summary.features[0]
    assert x.psi is None and x.ks is None and not x.drifted
    assert x.missing_actual == 1.0 and x.missing_expected == 0.0


def test_summaries_follow_the_order_asked_for() -> None:
    counts = accumulate(DriftCounts.empty(CLASSES), CLASSES, VALIDATION, ["x", "y"])
    assert [f.name for f in summarise(CLASSES, counts, order=["y", "x"]).features] == ["y", "x"]


def test_a_regressor_s_predictions_are_a_histogram_with_ks() -> None:
    values = RNG.normal(10.0, 2.0, size=3000)
    baseline = baseline_of(VALIDATION, drift.value_baseline(values))
    counts = accumulate(
        DriftCounts.empty(baseline), baseline, VALIDATION[:500], ["x", "y"], values=values[:500] + 3
    )
    prediction = summarise(baseline, counts).prediction
    assert prediction is not None and prediction.kind == "histogram"
    assert prediction.drifted and prediction.ks > 0.5
    assert prediction.labels[0].startswith("≤ ") and prediction.labels[-1].startswith("> ")


def test_ks_distance() -> None:
    assert ks_distance([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert ks_distance([1.0, 0.0, 0.0], [0.0, 0.0, 1.0]) == 1.0
    assert ks_distance([0.2, 0.3, 0.5], [0.3, 0.3, 0.4]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same bins"):
        ks_distance([1.0], [0.5, 0.5])


def test_class_counts_compare_labels_by_their_text() -> None:
    assert class_counts(np.array(["a", "b", "b", "c"]), ["b", "a"]).tolist() == [2, 1]
    assert class_counts(np.array([1, 1, 0]), ["0", "1"]).tolist() == [1, 2]


def test_the_existing_baseline_functions_are_unchanged() -> None:
    """Bundles already carry baselines made by these: their behaviour is part of the format."""
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert drift.quantile_edges(values[:4], bins=4) == [1.75, 2.5, 3.25]
    assert drift.bin_counts(values, [2.0]).tolist() == [2, 2]
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert drift.feature_baseline(values, np.isnan(values), bins=2)["missing"] == 0.2


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(0, 200),
    width=st.integers(1, 40),
    dtype=st.sampled_from([np.float32, np.float64, np.int64]),
    stride=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_bin_matrix_counts_as_bin_counts_does_per_column(
    rows: int, width: int, dtype: type, stride: int, seed: int
) -> None:
    """Many columns at once (rows laid side by side, padded to whole lines) count what one
    column at a time counts: right-closed bins, nan and infinities in no bin, a column with
    fewer edges zero beyond its last bin, values equal to an edge, a strided sample."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows * stride, width + 2)).round(1) * 3
    if dtype is not np.int64:
        for special in (np.nan, np.inf, -np.inf):
            values[rng.random(values.shape) < 0.05] = special
    matrix = values.astype(dtype)[::stride]
    columns = sorted(rng.choice(width + 2, size=width, replace=False).tolist())
    edges = [
        sorted(set((rng.normal(size=rng.integers(0, 10)).round(1) * 3).tolist())) for _ in columns
    ]
    tally, nans = drift.bin_matrix(matrix, columns, edges)
    for i, (j, column_edges) in enumerate(zip(columns, edges, strict=True)):
        column = matrix[:, j].astype(np.float64 if dtype is np.int64 else dtype)
        expected = drift.bin_counts(column, np.asarray(column_edges, dtype=column.dtype))
        assert tally[i, : len(column_edges) + 1].tolist() == expected.tolist()
        assert not tally[i, len(column_edges) + 1 :].any()
        assert nans[i] == np.count_nonzero(np.isnan(column))


# --- the HTML report ------------------------------------------------------------------------


def test_the_report_plots_each_drifted_feature_and_escapes_names() -> None:
    shifted = RNG.normal(0.0, 1.0, size=(2000, 2))
    shifted[:, 0] += 2.0
    labels = np.ones(2000, dtype=np.int64)
    counts = accumulate(DriftCounts.empty(CLASSES), CLASSES, shifted, ["x", "y"], labels=labels)
    summary = summarise(CLASSES, counts)
    page = render_drift(summary, title="Drift: <b>cancer</b>", facts=[("input", "a&b.csv")])
    assert page.startswith("<!DOCTYPE html>")
    assert "<b>cancer</b>" not in page and "&lt;b&gt;cancer&lt;/b&gt;" in page
    assert "a&amp;b.csv" in page
    assert page.count("<svg") == 2, "one plot for x (drifted), one for the predictions"
    assert "x: PSI" in page and "y: PSI" not in page
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_bar_chart_svg_has_a_bar_pair_per_bin() -> None:
    svg = bar_chart_svg(["a", "<b>"], [0.5, 0.5], [0.9, 0.1], title="t")
    assert svg.count("<rect") == 4
    assert "&lt;b&gt;" in svg
