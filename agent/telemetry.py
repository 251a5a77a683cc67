"""Telemetry windows: what the agent saw in one time window, kept as fixed-size summaries.

A :class:`WindowAccumulator` (one per active bundle) takes one :class:`Observation` per API
request and folds it, on the spot, into counters and arrays whose size is fixed when the
accumulator is made: request, row, error and refusal counts; a log-spaced latency histogram
(:class:`LatencyHistogram`); per feature, counts per bin of the bundle baseline's edges and
of missing values; counts of predicted classes (classifiers) or of the baseline's prediction
histogram bins (regressors). No row is kept, so memory does not grow with traffic.
:meth:`WindowAccumulator.take` turns what was seen into a :class:`WindowSummary` (latency
percentiles, prediction counts, PSI per feature and of the predictions against the baseline,
through :mod:`edgeml.toolkit.drift`) and starts the next window.

No I/O and no clock: window times come in as arguments. The accumulator holds a lock, since
the API's request threads feed it while the daemon closes windows. What this module leaves to
others: timing requests (the API), numbering and storing windows (``edgeml.agent.outbox``),
publishing them (the MQTT link), deciding when a window ends (the daemon).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgeml.toolkit.drift import (
    Baseline,
    DriftCounts,
    FeatureCounts,
    bin_counts,
    bin_matrix,
    class_counts,
    summarise,
)
from edgeml.toolkit.protocol import TelemetryWindow

Outcome = Literal["ok", "error", "refused"]
OUTCOMES: tuple[str, ...] = ("ok", "error", "refused")
"""``ok``: rows scored; ``error``: the model failed; ``refused``: the request was refused
before scoring (data contract, malformed body)."""

PREDICTION_KEY = "__prediction__"
"""The key of the predictions' PSI in ``drift_psi`` (docs/protocol.md)."""

LATENCY_MIN_S = 1e-6
LATENCY_MAX_S = 100.0
LATENCY_GROWTH = 1.02
"""Each latency bin is 2 % wider than the one before it, from 1 µs to 100 s (931 bins)."""
LATENCY_RELATIVE_ERROR = math.sqrt(LATENCY_GROWTH) - 1.0
"""The most a percentile inside [1 µs, 100 s) is off, relatively: just under 1 %."""
PERCENTILES: tuple[int, ...] = (50, 95, 99)

_SMALL_BATCH = 64  # rows up to which binning broadcasts against every edge at once
_PENDING_BYTES = 256 * 1024
"""Rows of small requests wait in a buffer of about this size (per float type; 512 rows at
most) and are binned
together: one vectorised pass per few hundred rows instead of a dozen numpy calls per
request, which is most of what a single-row request costs the agent."""


@dataclass(frozen=True, eq=False)
class Observation:
    """What one API request did, as the accumulator takes it.

    Attributes:
        bundle_id: the bundle that answered (or refused) the request.
        rows: rows in the request (scored when ``outcome`` is ``ok``).
        latency_s: seconds from the request's arrival to its answer being ready.
        outcome: ``ok``, ``error`` or ``refused`` (see :data:`OUTCOMES`).
        matrix: the checked features of the scored rows, shape ``(rows, features)`` in the
            accumulator's feature order, nan where a value is missing; None to skip drift.
        labels: a classifier's predicted labels.
        values: a regressor's predicted values.
    """

    bundle_id: str | None
    rows: int
    latency_s: float
    outcome: Outcome = "ok"
    matrix: np.ndarray | None = None
    labels: np.ndarray | None = None
    values: np.ndarray | None = None


class LatencyHistogram:
    """Latencies in fixed log-spaced bins: bounded memory, percentiles within 1 %.

    Bin ``i`` (1 to :attr:`bins`) holds ``[1 µs · 1.02^(i-1), 1 µs · 1.02^i)``; bin 0 holds
    what is faster than 1 µs, the last bin what takes 100 s or more. A percentile is the
    inverted-CDF one (numpy's ``method="inverted_cdf"``: the smallest latency with at least
    that share of requests at or below it), estimated as its bin's geometric middle and kept
    within the exact minimum and maximum seen. Inside [1 µs, 100 s) its relative error is at
    most :data:`LATENCY_RELATIVE_ERROR` (sqrt(1.02) - 1, about 0.995 %); outside, the
    estimate is the exact minimum or maximum.
    """

    bins: int = math.ceil(math.log(LATENCY_MAX_S / LATENCY_MIN_S) / math.log(LATENCY_GROWTH))
    _log_growth: float = math.log(LATENCY_GROWTH)

    def __init__(self) -> None:
        self.counts = np.zeros(self.bins + 2, dtype=np.int64)
        self.count = 0
        self.total_s = 0.0
        self.minimum_s = math.inf
        self.maximum_s = 0.0

    def _index(self, seconds: float) -> int:
        if seconds < LATENCY_MIN_S:
            return 0
        if seconds >= LATENCY_MAX_S:
            return self.bins + 1
        return min(1 + int(math.log(seconds / LATENCY_MIN_S) / self._log_growth), self.bins)

    def add(self, seconds: float) -> None:
        """Count one latency.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        if not (math.isfinite(seconds) and seconds >= 0.0):
            raise ValueError(f"a latency must be a finite number of seconds >= 0, got {seconds}")
        self.counts[self._index(seconds)] += 1
        self.count += 1
        self.total_s += seconds
        self.minimum_s = min(self.minimum_s, seconds)
        self.maximum_s = max(self.maximum_s, seconds)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) in seconds, or None when nothing was counted."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"a quantile must be in (0, 1], got {q}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count - 1e-9))
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="left"))
        if index == 0:
            return self.minimum_s
        if index > self.bins:
            return self.maximum_s
        middle = LATENCY_MIN_S * LATENCY_GROWTH ** (index - 0.5)
        return min(max(middle, self.minimum_s), self.maximum_s)

    def summary_ms(self) -> dict[str, float]:
        """``p50``, ``p95``, ``p99``, ``max`` and ``mean`` in milliseconds; empty when no
        request was counted."""
        if self.count == 0:
            return {}
        figures = {f"p{p}": self.quantile(p / 100.0) for p in PERCENTILES}
        figures["max"] = self.maximum_s
        figures["mean"] = self.total_s / self.count
        return {k: round(float(v) * 1000.0, 6) for k, v in figures.items() if v is not None}

    def reset(self) -> None:
        self.counts[:] = 0
        self.count = 0
        self.total_s = 0.0
        self.minimum_s = math.inf
        self.maximum_s = 0.0


@dataclass(frozen=True)
class WindowSummary:
    """One window's figures: the fields of a ``telemetry`` message but the device's.

    ``missing`` (missing values per feature) and ``drift_rows`` are kept for the agent's own
    status; the protocol's message has no field for them.
    """

    window_start: float
    window_end: float
    bundle_id: str | None
    requests: int
    rows: int
    errors: int
    contract_violations: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, int] = field(default_factory=dict)
    drift_psi: dict[str, float] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    drift_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The ``telemetry`` message's fields this summary knows (all but ``device_id``,
        ``seq``, ``stream`` and ``dropped_windows``, which the daemon and the outbox add)."""
        return {
            "window_start": self.window_start,
            "window_end": self.window_end,
            "bundle_id": self.bundle_id,
            "requests": self.requests,
            "rows": self.rows,
            "errors": self.errors,
            "contract_violations": self.contract_violations,
            "latency_ms": dict(self.latency_ms),
            "predictions": dict(self.predictions),
            "drift_psi": dict(self.drift_psi),
        }

    def to_window(
        self, device_id: str, seq: int, dropped_windows: int = 0, stream: str = ""
    ) -> TelemetryWindow:
        """The protocol message, validated (the outbox stamps its own ``seq``, ``stream`` and
        ``dropped_windows`` when it stores the window).

        Raises:
            ProtocolError: a field does not validate (e.g. more than 1,024 classes, or a
                stream id that is not 8 to 32 lowercase hex digits).
        """
        document = {
            "type": TelemetryWindow.TYPE,
            "device_id": device_id,
            "seq": seq,
            "dropped_windows": dropped_windows,
            **self.to_dict(),
        }
        if stream:
            document["stream"] = stream
        return TelemetryWindow.from_dict(document)


class WindowAccumulator:
    """Folds one bundle's API requests into fixed-size summaries of the current window.

    Thread-safe: :meth:`observe` may run in many request threads while :meth:`take` closes
    the window in another.

    Attributes:
        bundle_id: the bundle whose requests this accumulates.
        features: the features of an observation's matrix, in its column order.
    """

    def __init__(
        self,
        baseline: Baseline,
        features: Sequence[str],
        *,
        bundle_id: str | None = None,
        classes: Sequence[Any] = (),
    ) -> None:
        """Make an empty window for a bundle.

        Args:
            baseline: the bundle's drift baseline.
            features: the columns of the matrices observations carry (the engine's features,
                in input order); features the baseline lacks are passed over.
            bundle_id: the bundle, reported in each summary.
            classes: a classifier's classes, used when the baseline has no prediction
                distribution.
        """
        self.baseline = baseline
        self.bundle_id = bundle_id
        self.features = tuple(features)
        wanted = [(j, n) for j, n in enumerate(self.features) if n in baseline.features]
        self._columns = [j for j, _ in wanted]
        self._names = tuple(n for _, n in wanted)
        self._edges = [baseline.features[n].edges for n in self._names]
        most = max((len(e) for e in self._edges), default=0)
        self._most = most
        padded = np.full((len(self._edges), max(most, 1)), np.inf)
        for i, edges in enumerate(self._edges):
            padded[i, : len(edges)] = edges
        # Edges rounded to each float type once, as drift.bin_matrix rounds them per call.
        self._padded = {np.dtype(t): padded.astype(t) for t in (np.float32, np.float64)}
        self._bins = np.zeros((len(self._names), most + 1), dtype=np.int64)
        self._missing = np.zeros(len(self._names), dtype=np.int64)
        self._prediction_kind: str | None = None
        self._prediction_classes: tuple[Any, ...] = ()
        self._prediction_edges: tuple[float, ...] = ()
        reference = baseline.prediction
        if reference is not None and reference.kind == "classes":
            self._prediction_kind = "classes"
            self._prediction_classes = tuple(reference.classes)
        elif reference is not None and reference.kind == "histogram":
            self._prediction_kind = "histogram"
            self._prediction_edges = tuple(reference.edges)
        elif classes:
            self._prediction_kind = "classes"
            self._prediction_classes = tuple(classes)
        size = len(self._prediction_classes) or (
            len(self._prediction_edges) + 1 if self._prediction_kind else 0
        )
        self._predictions = np.zeros(size, dtype=np.int64)
        self._prediction_keys = self._keys()
        self._class_index = {str(c): i for i, c in enumerate(self._prediction_classes)}
        self.latency = LatencyHistogram()
        self._requests = self._rows = self._errors = self._refused = self._drift_rows = 0
        rows = min(512, max(_SMALL_BATCH, _PENDING_BYTES // (8 * max(len(self._names), 1))))
        self._pending = {  # fixed buffers, made once
            np.dtype(t): np.empty((rows, len(self._names)), dtype=t)
            for t in (np.float32, np.float64)
        }
        self._pending_count = dict.fromkeys(self._pending, 0)
        self._lock = threading.Lock()

    @classmethod
    def for_engine(cls, engine: Any) -> WindowAccumulator:
        """An accumulator for a ``ScoringEngine`` (its baseline, features, id and classes)."""
        return cls(
            engine.baseline,
            engine.features,
            bundle_id=engine.bundle_id,
            classes=engine.classes,
        )

    def _keys(self) -> tuple[str, ...]:
        if self._prediction_kind == "classes":
            return tuple(str(c) for c in self._prediction_classes)
        if self._prediction_kind == "histogram":
            return histogram_keys(self._prediction_edges)
        return ()

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulator's arrays: fixed when it is made."""
        return int(
            self._bins.nbytes
            + self._missing.nbytes
            + self._predictions.nbytes
            + self.latency.counts.nbytes
            + sum(buffer.nbytes for buffer in self._pending.values())
        )

    # ------------------------------------------------------------------------- observing

    def observe(self, observation: Observation) -> None:
        """Fold one request into the window.

        Raises:
            ValueError: the observation is of another bundle, its outcome is unknown, its
                latency is negative or not finite, or its matrix does not have one column
                per feature.
        """
        if observation.bundle_id != self.bundle_id:
            raise ValueError(
                f"an observation of bundle {observation.bundle_id!r} does not belong to the "
                f"window of {self.bundle_id!r}"
            )
        if observation.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {observation.outcome!r}; one of {OUTCOMES}")
        matrix = observation.matrix
        scored = observation.outcome == "ok"
        tally = missing = None
        small = None
        if scored and matrix is not None and matrix.shape[0] and self._names:
            if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
                raise ValueError(
                    f"expected a matrix of {len(self.features)} columns, got {matrix.shape}"
                )
            if matrix.shape[0] <= _SMALL_BATCH:
                small = matrix if matrix.dtype in (np.float32, np.float64) else None
                if small is None:
                    small = matrix.astype(np.float64)
            else:
                tally, missing = self._bin(matrix)
        predictions = self._count_predictions(observation) if scored else None
        with self._lock:
            if small is not None:
                self._hold(small)
            self.latency.add(observation.latency_s)
            self._requests += 1
            if observation.outcome == "error":
                self._errors += 1
            elif observation.outcome == "refused":
                self._refused += 1
            else:
                self._rows += observation.rows
            if tally is not None and missing is not None and matrix is not None:
                self._bins += tally
                self._missing += missing
                self._drift_rows += int(matrix.shape[0])
            if predictions is not None:
                self._predictions += predictions

    def _hold(self, matrix: np.ndarray) -> None:
        """Keep a small request's rows for binning later (under the lock)."""
        dtype = matrix.dtype
        buffer = self._pending[dtype]
        count = self._pending_count[dtype]
        rows = matrix.shape[0]
        if count + rows > len(buffer):
            self._bin_pending()
            count = 0
        if len(self._columns) == matrix.shape[1]:
            buffer[count : count + rows] = matrix
        else:
            buffer[count : count + rows] = matrix[:, self._columns]
        self._pending_count[dtype] = count + rows
        self._drift_rows += rows

    def _bin_pending(self) -> None:
        """Bin the rows waiting in the buffers into the window's counts (under the lock)."""
        everything = list(range(len(self._names)))
        for dtype, buffer in self._pending.items():
            count = self._pending_count[dtype]
            if count:
                tally, missing = bin_matrix(buffer[:count], everything, self._edges)
                self._bins += tally
                self._missing += missing
                self._pending_count[dtype] = 0

    def _bin(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts per baseline bin and nans per feature: ``drift.bin_matrix``'s figures."""
        if matrix.dtype not in (np.float32, np.float64):
            matrix = matrix.astype(np.float64)
        if matrix.shape[0] > _SMALL_BATCH:
            return bin_matrix(matrix, self._columns, self._edges)
        block = matrix if len(self._columns) == matrix.shape[1] else matrix[:, self._columns]
        edges = self._padded[block.dtype]
        width, most = len(self._columns), self._most
        with np.errstate(invalid="ignore"):
            index = np.count_nonzero(block[:, :, None] > edges[None, :, :most], axis=2)
        finite = np.isfinite(block)
        nans = np.zeros(width, dtype=np.int64)
        if not finite.all():
            index[~finite] = most + 1
            nans = np.count_nonzero(np.isnan(block), axis=0)
        slots = most + 2
        flat = index + np.arange(width, dtype=np.int64) * slots
        tally = np.bincount(flat.ravel(), minlength=width * slots).reshape(width, slots)
        return tally[:, : most + 1], nans

    def _count_predictions(self, observation: Observation) -> np.ndarray | None:
        if self._prediction_kind == "classes" and observation.labels is not None:
            labels = np.asarray(observation.labels).ravel()
            if labels.size > _SMALL_BATCH:
                return class_counts(labels, self._prediction_classes)
            # class_counts' figures (labels compare by their text) without np.unique's cost
            counts = np.zeros(len(self._prediction_classes), dtype=np.int64)
            for label in labels.tolist():
                index = self._class_index.get(str(label))
                if index is not None:
                    counts[index] += 1
            return counts
        if self._prediction_kind == "histogram" and observation.values is not None:
            values = np.asarray(observation.values, dtype=np.float64).ravel()
            return bin_counts(values, self._prediction_edges)
        return None

    # ------------------------------------------------------------------------- summarising

    def drift_counts(self) -> DriftCounts:
        """What was seen so far as ``edgeml.toolkit.drift`` counts (for ``summarise``)."""
        with self._lock:
            return self._drift_counts()

    def _drift_counts(self) -> DriftCounts:
        self._bin_pending()
        features = {
            name: FeatureCounts(
                tuple(int(c) for c in self._bins[i, : len(self._edges[i]) + 1]),
                int(self._missing[i]),
                self._drift_rows,
            )
            for i, name in enumerate(self._names)
        }
        prediction: tuple[int, ...] = ()
        if self.baseline.prediction is not None:
            prediction = tuple(int(c) for c in self._predictions)
        return DriftCounts(features, prediction, self._drift_rows)

    def summary(self, window_start: float, window_end: float) -> WindowSummary:
        """The window's figures so far, leaving the window open.

        Raises:
            ValueError: ``window_end`` is before ``window_start``, or a time is not finite.
        """
        with self._lock:
            return self._summary(window_start, window_end)

    def take(self, window_start: float, window_end: float) -> WindowSummary:
        """The window's figures, and a fresh window: one step, so no request is lost or
        counted twice between the two.

        Raises:
            ValueError: ``window_end`` is before ``window_start``, or a time is not finite.
        """
        with self._lock:
            summary = self._summary(window_start, window_end)
            self._reset()
            return summary

    def reset(self) -> None:
        """Forget everything seen: an empty window."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        for dtype in self._pending_count:
            self._pending_count[dtype] = 0
        self._bins[:] = 0
        self._missing[:] = 0
        self._predictions[:] = 0
        self.latency.reset()
        self._requests = self._rows = self._errors = self._refused = self._drift_rows = 0

    def _summary(self, window_start: float, window_end: float) -> WindowSummary:
        if not (math.isfinite(window_start) and math.isfinite(window_end)):
            raise ValueError("window times must be finite")
        if window_end < window_start:
            raise ValueError(f"window_end {window_end} is before window_start {window_start}")
        drift_psi: dict[str, float] = {}
        self._bin_pending()
        if self._drift_rows or self._predictions.any():
            report = summarise(self.baseline, self._drift_counts(), order=self._names)
            drift_psi = {f.name: f.psi for f in report.features if f.psi is not None}
            if report.prediction is not None and report.prediction.psi is not None:
                drift_psi[PREDICTION_KEY] = report.prediction.psi
        return WindowSummary(
            window_start=float(window_start),
            window_end=float(window_end),
            bundle_id=self.bundle_id,
            requests=self._requests,
            rows=self._rows,
            errors=self._errors,
            contract_violations=self._refused,
            latency_ms=self.latency.summary_ms(),
            predictions={
                key: int(count)
                for key, count in zip(self._prediction_keys, self._predictions, strict=True)
                if count
            },
            drift_psi=drift_psi,
            missing={n: int(m) for n, m in zip(self._names, self._missing, strict=True) if m},
            drift_rows=self._drift_rows,
        )


def histogram_keys(edges: Sequence[float]) -> tuple[str, ...]:
    """The ``predictions`` keys of a regressor's bins: ``"(-inf, 1.5]"``, ``"(1.5, 2.25]"``,
    ``"(2.25, inf)"`` with every edge at full precision, so no two bins share a key."""
    bounds = ["-inf", *(repr(float(e)) for e in edges), "inf"]
    keys = [f"({low}, {high}]" for low, high in itertools.pairwise(bounds[:-1])]
    keys.append(f"({bounds[-2]}, inf)")
    return tuple(keys)
