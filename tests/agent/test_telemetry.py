"""Telemetry windows from fixed-size summaries: percentiles, drift, bounded memory."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgeml.agent.telemetry import (
    LATENCY_MAX_S,
    LATENCY_MIN_S,
    LATENCY_RELATIVE_ERROR,
    PREDICTION_KEY,
    LatencyHistogram,
    Observation,
    WindowAccumulator,
    histogram_keys,
)
from edgeml.toolkit.drift import (
    Baseline,
    bin_counts,
    bin_matrix,
    class_counts,
    feature_baseline,
    psi,
    shares,
    value_baseline,
)
from edgeml.toolkit.protocol import TelemetryWindow, parse_message

FEATURES = ("a", "b", "c")


def make_baseline(kind: str = "classes", seed: int = 0) -> Baseline:
    """A baseline of three features (quantile edges of normal data) and a prediction."""
    rng = np.random.default_rng(seed)
    validation = rng.normal(size=(500, 3))
    features = {
        name: feature_baseline(validation[:, j], np.zeros(500, dtype=bool))
        for j, name in enumerate(FEATURES)
    }
    if kind == "classes":
        prediction = {"kind": "classes", "classes": [0, 1, 2], "proportions": [0.5, 0.3, 0.2]}
    else:
        prediction = value_baseline(rng.normal(10, 2, size=500))
    return Baseline.from_dict(
        {"bins": 10, "rows": 500, "features": features, "prediction": prediction}
    )


def scored(matrix: np.ndarray, latency: float = 0.001, **predicted: np.ndarray) -> Observation:
    return Observation("b-1-p", len(matrix), latency, "ok", matrix=matrix, **predicted)


# ----------------------------------------------------------------------------- latency


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [1, 2, 7, 100, 5_000])
def test_percentiles_match_numpy_within_the_documented_error(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    latencies = rng.lognormal(mean=np.log(3e-4), sigma=1.2, size=n)  # ~30 µs to ~10 ms
    histogram = LatencyHistogram()
    for value in latencies:
        histogram.add(float(value))
    for q in (0.5, 0.95, 0.99, 1.0):
        exact = float(np.percentile(latencies, q * 100, method="inverted_cdf"))
        estimate = histogram.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= LATENCY_RELATIVE_ERROR * exact * (1 + 1e-9), (q, n)
    assert LATENCY_RELATIVE_ERROR < 0.01


def test_latencies_outside_the_binned_range_report_the_exact_extremes() -> None:
    histogram = LatencyHistogram()
    for value in (LATENCY_MIN_S / 10, LATENCY_MIN_S / 2, LATENCY_MAX_S * 3):
        histogram.add(value)
    assert histogram.quantile(0.01) == LATENCY_MIN_S / 10
    assert histogram.quantile(1.0) == LATENCY_MAX_S * 3
    with pytest.raises(ValueError, match="latency"):
        histogram.add(-1.0)
    with pytest.raises(ValueError, match="latency"):
        histogram.add(float("nan"))


def test_latency_summary_is_in_milliseconds_and_empty_without_requests() -> None:
    histogram = LatencyHistogram()
    assert histogram.summary_ms() == {}
    assert histogram.quantile(0.5) is None
    histogram.add(0.002)
    figures = histogram.summary_ms()
    assert set(figures) == {"p50", "p95", "p99", "max", "mean"}
    assert figures["max"] == pytest.approx(2.0)
    assert figures["p50"] == pytest.approx(2.0)  # one value: clamped to the exact min/max


# ----------------------------------------------------------------------------- drift


@pytest.mark.parametrize("rows", [1, 5, 64, 65, 3_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binning_gives_drift_bin_matrix_counts(rows: int, dtype: type) -> None:
    baseline = make_baseline()
    rng = np.random.default_rng(rows)
    matrix = rng.normal(size=(rows, 3)).astype(dtype)
    edges = baseline.features["b"].edges
    matrix[::7, 1] = edges[len(edges) // 2]  # exactly on an edge: right-closed bins
    matrix[::11, 0] = np.nan
    matrix[::13, 2] = np.inf
    accumulator = WindowAccumulator(baseline, FEATURES, bundle_id="b-1-p")
    accumulator.observe(scored(matrix, labels=np.zeros(rows, dtype=np.int64)))
    expected, nans = bin_matrix(matrix, [0, 1, 2], [baseline.features[n].edges for n in FEATURES])
    counts = accumulator.drift_counts()
    for j, name in enumerate(FEATURES):
        width = len(baseline.features[name].edges) + 1
        assert counts.features[name].counts == tuple(expected[j, :width].tolist())
        assert counts.features[name].missing == nans[j]
        assert counts.features[name].rows == rows


def test_psi_is_drift_psi_on_the_same_counts() -> None:
    baseline = make_baseline()
    rng = np.random.default_rng(1)
    accumulator = WindowAccumulator(baseline, FEATURES, bundle_id="b-1-p")
    batches = [rng.normal(loc=0.3 * i, size=(50, 3)) for i in range(4)]
    labels = [rng.integers(0, 3, size=50) for _ in batches]
    for matrix, predicted in zip(batches, labels, strict=True):
        accumulator.observe(scored(matrix, labels=predicted))
    summary = accumulator.summary(0.0, 60.0)
    everything = np.vstack(batches)
    for j, name in enumerate(FEATURES):
        reference = baseline.features[name]
        actual = shares(bin_counts(everything[:, j], reference.edges))
        assert summary.drift_psi[name] == psi(reference.proportions, actual)
    assert baseline.prediction is not None
    predicted_counts = class_counts(np.concatenate(labels), baseline.prediction.classes)
    assert summary.drift_psi[PREDICTION_KEY] == psi(
        baseline.prediction.proportions, shares(predicted_counts)
    )
    expected = zip((0, 1, 2), predicted_counts.tolist(), strict=True)
    assert summary.predictions == {str(c): n for c, n in expected if n}


def test_a_regressor_counts_its_predictions_in_the_baseline_histogram() -> None:
    baseline = make_baseline("histogram")
    assert baseline.prediction is not None
    edges = baseline.prediction.edges
    accumulator = WindowAccumulator(baseline, FEATURES, bundle_id="b-1-p")
    values = np.random.default_rng(2).normal(12, 2, size=400)
    accumulator.observe(scored(np.zeros((400, 3)), values=values))
    summary = accumulator.take(10.0, 70.0)
    counts = bin_counts(values, edges)
    keys = histogram_keys(edges)
    assert summary.predictions == {k: int(c) for k, c in zip(keys, counts, strict=True) if c}
    assert summary.drift_psi[PREDICTION_KEY] == psi(baseline.prediction.proportions, shares(counts))
    assert len(set(keys)) == len(edges) + 1
    assert histogram_keys([1.5, 2.25]) == ("(-inf, 1.5]", "(1.5, 2.25]", "(2.25, inf)")


# ----------------------------------------------------------------------------- windows


def test_a_window_counts_requests_rows_errors_and_refusals() -> None:
    accumulator = WindowAccumulator(make_baseline(), FEATURES, bundle_id="b-1-p")
    accumulator.observe(scored(np.zeros((3, 3)), labels=np.array([0, 1, 1])))
    accumulator.observe(Observation("b-1-p", 2, 0.002, "refused"))
    accumulator.observe(Observation("b-1-p", 4, 0.003, "error"))
    summary = accumulator.summary(100.0, 160.0)
    assert (summary.requests, summary.rows, summary.errors, summary.contract_violations) == (
        3,
        3,
        1,
        1,
    )
    assert summary.drift_rows == 3
    assert summary.predictions == {"0": 1, "1": 2}
    assert accumulator.summary(100.0, 160.0) == summary  # summary() leaves the window open

    window = summary.to_window("pi-0001", seq=7, dropped_windows=2)
    assert isinstance(window, TelemetryWindow)
    assert parse_message(window.to_bytes(), "telemetry") == window
    assert (window.seq, window.dropped_windows, window.bundle_id) == (7, 2, "b-1-p")
    assert set(window.latency_ms) == {"p50", "p95", "p99", "max", "mean"}

    taken = accumulator.take(100.0, 160.0)
    assert taken == summary
    empty = accumulator.summary(160.0, 220.0)
    assert (empty.requests, empty.rows, empty.latency_ms, empty.drift_psi) == (0, 0, {}, {})
    assert empty.to_window("pi-0001", 8).requests == 0
    assert empty.to_window("pi-0001", 8).stream == ""
    streamed = empty.to_window("pi-0001", 8, stream="0123456789abcdef")
    assert parse_message(streamed.to_bytes(), "telemetry") == streamed
    assert streamed.stream == "0123456789abcdef"


def test_a_window_refuses_what_is_not_its_own() -> None:
    accumulator = WindowAccumulator(make_baseline(), FEATURES, bundle_id="b-1-p")
    with pytest.raises(ValueError, match="does not belong"):
        accumulator.observe(Observation("other-1-p", 1, 0.001))
    with pytest.raises(ValueError, match="outcome"):
        accumulator.observe(Observation("b-1-p", 1, 0.001, "lost"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="columns"):
        accumulator.observe(scored(np.zeros((2, 5))))
    with pytest.raises(ValueError, match="before"):
        accumulator.summary(10.0, 5.0)
    assert accumulator.summary(0.0, 1.0).requests == 0  # nothing half-counted


def test_memory_does_not_grow_with_traffic() -> None:
    accumulator = WindowAccumulator(make_baseline(), FEATURES, bundle_id="b-1-p")
    shapes = (accumulator._bins.shape, accumulator._missing.shape, accumulator._predictions.shape)
    size = accumulator.nbytes
    rng = np.random.default_rng(3)
    batch = rng.normal(size=(10_000, 3))
    labels = rng.integers(0, 3, size=10_000)
    for i in range(100):  # 1e6 rows
        accumulator.observe(scored(batch, latency=1e-4 * (1 + i % 7), labels=labels))
    single = rng.normal(size=(1, 3))
    for _ in range(2_000):
        accumulator.observe(scored(single, labels=labels[:1]))
    assert accumulator.nbytes == size
    after = (accumulator._bins.shape, accumulator._missing.shape, accumulator._predictions.shape)
    assert after == shapes
    summary = accumulator.take(0.0, 60.0)
    assert summary.rows == 1_002_000
    assert summary.requests == 2_100
    assert sum(summary.predictions.values()) == 1_002_000
    assert accumulator.nbytes == size


def test_concurrent_observations_are_all_counted() -> None:
    accumulator = WindowAccumulator(make_baseline(), FEATURES, bundle_id="b-1-p")
    row = np.zeros((1, 3))

    def feed() -> None:
        for _ in range(500):
            accumulator.observe(scored(row, labels=np.array([2])))

    threads = [threading.Thread(target=feed) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = accumulator.take(0.0, 1.0)
    assert (summary.requests, summary.rows, summary.predictions) == (4_000, 4_000, {"2": 4_000})
    assert sum(accumulator.drift_counts().features["a"].counts) == 0  # reset by take


def test_an_accumulator_for_a_real_engine(built_bundle: Path, key_dir: Path) -> None:
    from edgeml.toolkit.scoring import ScoringEngine

    engine = ScoringEngine.open(built_bundle, key_dir / "edgeml.pub")
    accumulator = WindowAccumulator.for_engine(engine)
    lows = np.array([f.minimum for f in engine.contract.features])
    highs = np.array([f.maximum for f in engine.contract.features])
    matrix = lows + (highs - lows) * np.random.default_rng(4).random((20, len(lows)))
    report = engine.check(matrix)
    predictions = engine.run(report.matrix)
    accumulator.observe(
        Observation(engine.bundle_id, 20, 0.001, "ok", report.matrix, predictions.labels)
    )
    summary = accumulator.take(0.0, 60.0)
    assert summary.bundle_id == engine.bundle_id
    assert set(summary.drift_psi) == {*engine.features, PREDICTION_KEY}
    assert sum(summary.predictions.values()) == 20
    summary.to_window("pi-0001", 1)  # validates as a protocol message
