"""Drift statistics: the baseline a bundle carries and the population stability index.

Pure numpy, no I/O. A baseline holds, per feature, the interior bin edges (quantiles of the
validation data) and the share of rows in each bin, plus the share of missing values; and the
same for the model's predictions (class shares for classifiers, a histogram for regressors).
A device or a batch scorer bins its own values with the same edges and compares shares with
:func:`psi`. Keeping counts per bin is what lets the agent summarise a window without keeping
rows: :class:`DriftCounts` add up batch by batch (:func:`accumulate`) and :func:`summarise`
turns them into PSI and a Kolmogorov-Smirnov distance per feature, flagged above a threshold.
Drawing a report is ``edgeml.toolkit.drift_report``'s job.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BINS = 10
PSI_EPSILON = 1e-4
PSI_THRESHOLD = 0.25
"""Above this PSI a feature is flagged as drifted (the usual reading: < 0.1 stable,
0.1-0.25 moderate shift, > 0.25 significant shift)."""
# Values side by side per line when many rows are compared at once: long contiguous lines keep
# numpy's inner loops long (a row of a few features makes them short and the calls many).
_LINE = 1024


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    """Interior bin edges at the quantiles of the finite values, duplicates removed.

    ``k`` interior edges make ``k + 1`` bins: ``(-inf, e1], (e1, e2], ..., (ek, inf)``.
    A constant feature gets one edge at its value.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    qs = np.quantile(finite.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(np.round(qs, 12))
    if edges.size == 0:
        edges = np.array([float(finite[0])])
    return [float(e) for e in edges]


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Count finite values per bin of ``edges`` (``len(edges) + 1`` bins, right-closed)."""
    finite = values[np.isfinite(values)]
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), finite, side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


def shares(counts: np.ndarray) -> list[float]:
    """Counts as proportions that sum to 1 (all zeros stay zeros)."""
    total = counts.sum()
    if total == 0:
        return [0.0] * len(counts)
    return [float(c) / float(total) for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions over the same bins.

    Shares are floored at a small epsilon so an empty bin gives a large, finite figure.

    Raises:
        ValueError: the two have different numbers of bins.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_EPSILON)
    if e.shape != a.shape:
        raise ValueError(f"PSI needs the same bins: {e.shape[0]} expected, {a.shape[0]} actual")
    return float(np.sum((a - e) * np.log(a / e)))


def feature_baseline(
    values: np.ndarray, missing: np.ndarray, bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """The baseline of one numeric feature: edges, shares per bin, share missing."""
    present = values[~missing].astype(np.float64)
    edges = quantile_edges(present, bins)
    return {
        "edges": edges,
        "proportions": shares(bin_counts(present, edges)),
        "missing": float(missing.mean()) if missing.size else 0.0,
    }


def class_baseline(labels: np.ndarray, classes: Sequence[Any]) -> dict[str, Any]:
    """The prediction distribution of a classifier: the share of each class, in class order."""
    counts = np.array([int(np.sum(labels == c)) for c in classes], dtype=np.int64)
    return {"kind": "classes", "classes": list(classes), "proportions": shares(counts)}


def value_baseline(values: np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The prediction distribution of a regressor: a quantile histogram."""
    values = values.astype(np.float64).ravel()
    edges = quantile_edges(values, bins)
    return {"kind": "histogram", "edges": edges, "proportions": shares(bin_counts(values, edges))}


# ------------------------------------------------------------------ the drift of a batch
#
# A scorer keeps counts, not rows: per feature, how many values fell in each bin of the
# baseline's edges and how many were missing; for the predictions, how many fell in each class
# (or histogram bin). Counts add up batch by batch (``accumulate``) and merge across workers
# (``DriftCounts.merge``), so memory does not grow with the number of rows. ``summarise`` turns
# them into figures: PSI, and the Kolmogorov-Smirnov distance at the baseline's edges.

KS_THRESHOLD = 0.2
"""A KS distance at the baseline's edges above this is reported as notable (the flag itself
follows PSI, the figure the fleet's gates use)."""


@dataclass(frozen=True)
class FeatureBaseline:
    """One feature of ``baseline.json``: interior edges, shares per bin, share missing."""

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    missing: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureBaseline:
        edges = tuple(float(e) for e in data["edges"])
        proportions = tuple(float(p) for p in data["proportions"])
        if len(proportions) != len(edges) + 1:
            raise ValueError(f"{len(edges)} edges need {len(edges) + 1} proportions")
        return cls(edges, proportions, float(data.get("missing", 0.0)))


@dataclass(frozen=True)
class PredictionBaseline:
    """The prediction distribution of ``baseline.json``: class shares or a histogram."""

    kind: str  # "classes" or "histogram"
    proportions: tuple[float, ...]
    classes: tuple[Any, ...] = ()
    edges: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictionBaseline:
        kind = data["kind"]
        proportions = tuple(float(p) for p in data["proportions"])
        if kind == "classes":
            classes = tuple(data["classes"])
            if len(classes) != len(proportions):
                raise ValueError("prediction: one proportion per class is needed")
            return cls(kind, proportions, classes=classes)
        if kind == "histogram":
            edges = tuple(float(e) for e in data["edges"])
            if len(proportions) != len(edges) + 1:
                raise ValueError("prediction: a histogram needs one more proportion than edges")
            return cls(kind, proportions, edges=edges)
        raise ValueError(f"prediction: unknown kind {kind!r}")


@dataclass(frozen=True)
class Baseline:
    """``baseline.json`` as a typed document (the format is in docs/bundle-format.md)."""

    bins: int
    rows: int
    features: dict[str, FeatureBaseline]
    prediction: PredictionBaseline | None

    @classmethod
    def from_dict(cls, data: Any) -> Baseline:
        """Parse a baseline document.

        Raises:
            ValueError: a field is missing or malformed.
        """
        try:
            features = {
                str(name): FeatureBaseline.from_dict(f) for name, f in data["features"].items()
            }
            prediction = data.get("prediction")
            return cls(
                bins=int(data.get("bins", DEFAULT_BINS)),
                rows=int(data.get("rows", 0)),
                features=features,
                prediction=PredictionBaseline.from_dict(prediction) if prediction else None,
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"baseline.json: malformed ({error!r})") from error


@dataclass(frozen=True)
class FeatureCounts:
    """What a scorer saw of one feature: values per baseline bin, missing values, rows."""

    counts: tuple[int, ...]
    missing: int = 0
    rows: int = 0

    def merge(self, other: FeatureCounts) -> FeatureCounts:
        return FeatureCounts(
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.missing + other.missing,
            self.rows + other.rows,
        )


@dataclass(frozen=True)
class DriftCounts:
    """Counts per feature and of the predictions, against one baseline; they add up."""

    features: dict[str, FeatureCounts]
    prediction: tuple[int, ...] = ()
    rows: int = 0

    @classmethod
    def empty(cls, baseline: Baseline) -> DriftCounts:
        """No rows seen yet."""
        prediction: tuple[int, ...] = ()
        if baseline.prediction is not None:
            prediction = (0,) * len(baseline.prediction.proportions)
        return cls(
            {
                name: FeatureCounts((0,) * (len(f.edges) + 1))
                for name, f in baseline.features.items()
            },
            prediction,
            0,
        )

    def merge(self, other: DriftCounts) -> DriftCounts:
        """The counts of both (e.g. of two workers scoring parts of one file)."""
        return DriftCounts(
            {name: c.merge(other.features[name]) for name, c in self.features.items()},
            tuple(a + b for a, b in zip(self.prediction, other.prediction, strict=True)),
            self.rows + other.rows,
        )


def accumulate(
    counts: DriftCounts,
    baseline: Baseline,
    matrix: np.ndarray,
    feature_names: Sequence[str],
    labels: np.ndarray | None = None,
    values: np.ndarray | None = None,
) -> DriftCounts:
    """Add a batch of rows to the counts (a pure function: the counts given are not changed).

    Args:
        counts: the counts so far.
        baseline: the bundle's baseline.
        matrix: the batch's features, shape ``(rows, features)``, nan where missing.
        feature_names: the matrix's column names; features the baseline lacks are passed over.
        labels: a classifier's predicted labels for the rows.
        values: a regressor's predicted values for the rows.

    Returns:
        The new counts.
    """
    features = dict(counts.features)
    n = int(matrix.shape[0])
    wanted = [(j, name) for j, name in enumerate(feature_names) if name in baseline.features]
    if wanted and n:
        edges = [baseline.features[name].edges for _, name in wanted]
        tallies, missing = bin_matrix(matrix, [j for j, _ in wanted], edges)
        for (_, name), tally, nulls, feature_edges in zip(
            wanted, tallies, missing, edges, strict=True
        ):
            before = features[name]
            added = tally[: len(feature_edges) + 1].tolist()
            features[name] = FeatureCounts(
                tuple(a + b for a, b in zip(before.counts, added, strict=True)),
                before.missing + int(nulls),
                before.rows + n,
            )
    prediction = counts.prediction
    reference_prediction = baseline.prediction
    if reference_prediction is not None:
        if reference_prediction.kind == "classes" and labels is not None:
            added_prediction = class_counts(labels, reference_prediction.classes)
        elif reference_prediction.kind == "histogram" and values is not None:
            added_prediction = bin_counts(
                np.asarray(values, dtype=np.float64).ravel(), reference_prediction.edges
            )
        else:
            added_prediction = np.zeros(len(prediction), dtype=np.int64)
        prediction = tuple(
            a + b for a, b in zip(prediction, added_prediction.tolist(), strict=True)
        )
    return DriftCounts(features, prediction, counts.rows + n)


def bin_matrix(
    matrix: np.ndarray, columns: Sequence[int], edges: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Count, for several columns at once, the finite values per bin and the nans.

    The same counts as :func:`bin_counts` per column (bins right-closed, infinities in no
    bin), computed for every column together: per edge, one comparison of the whole block and
    a sum down its columns gives how many values lie above that edge; the bins are the
    differences of those counts.

    Args:
        matrix: shape ``(rows, features)``, float32 or float64.
        columns: the columns to count.
        edges: each column's interior edges.

    Returns:
        A ``(columns, max edges + 1)`` array of counts per bin (a column with fewer edges has
        zeros beyond its last bin) and the number of nans per column.
    """
    columns = list(columns)
    width = len(columns)
    most = max((len(e) for e in edges), default=0)
    dtype = matrix.dtype if matrix.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    rows = int(matrix.shape[0])
    # Rows side by side, ``tile`` of them per line, so that each comparison and each sum runs
    # along long contiguous lines rather than along rows a few features wide; the last line is
    # padded with nan, which lies above no edge.
    tile = max(1, min(_LINE // max(width, 1), rows))
    lines = -(-rows // tile)
    block = np.empty((lines * tile, width), dtype=dtype)
    if columns == list(range(matrix.shape[1])):
        block[:rows] = matrix  # also makes a strided sample of every k-th row contiguous
    else:
        block[:rows] = matrix[:, columns]
    block[rows:] = np.nan
    padded = np.full((width, max(most, 1)), np.inf)
    for i, feature_edges in enumerate(edges):
        padded[i, : len(feature_edges)] = feature_edges
    # Edges in the block's type, rounded to nearest: rounding is monotonic, so a value at or
    # below an edge stays at or below it; only a value above an edge by less than the type's
    # precision can land one bin low.
    rounded = np.tile(padded.astype(dtype).T, (1, tile))  # (edges, tile * width)
    line_view = block.reshape(lines, tile * width)
    above = np.empty(line_view.shape, dtype=np.bool_)
    greater = np.empty((most, width), dtype=np.int64)  # values above each edge, per column
    with np.errstate(invalid="ignore"):
        for k in range(most):
            np.greater(line_view, rounded[k], out=above)
            line_sums = above.view(np.uint8).sum(axis=0, dtype=np.int32)
            greater[k] = line_sums.reshape(tile, width).sum(axis=0)
    nans = np.zeros(width, dtype=np.int64)
    infinite_above = np.zeros(width, dtype=np.int64)
    finite = np.full(width, rows, dtype=np.int64)
    body = block[:rows]
    if rows and not np.isfinite(body).all():
        nans = np.count_nonzero(np.isnan(body), axis=0).astype(np.int64)
        infinite_above = np.count_nonzero(body == np.inf, axis=0).astype(np.int64)
        finite -= nans + np.count_nonzero(np.isinf(body), axis=0)
    # +inf lies above every real edge and in no bin: take it out where an edge is real.
    real = np.isfinite(padded.T)  # (edges, width): padding is inf
    greater = np.where(real, greater - infinite_above, 0)
    tally = np.zeros((width, most + 1), dtype=np.int64)
    if most:
        tally[:, 0] = finite - greater[0]
        tally[:, 1:most] = (greater[:-1] - greater[1:]).T
        tally[:, most] = greater[-1]
    else:
        tally[:, 0] = finite
    return tally, nans


def class_counts(labels: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    """How many labels fall on each class, in class order (labels compare by their text)."""
    index = {str(c): i for i, c in enumerate(classes)}
    out = np.zeros(len(classes), dtype=np.int64)
    found, tally = np.unique(np.asarray(labels), return_counts=True)
    for label, count in zip(found.tolist(), tally.tolist(), strict=True):
        i = index.get(str(label))
        if i is not None:
            out[i] += count
    return out


def ks_distance(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Kolmogorov-Smirnov distance of two distributions over the same ordered bins.

    The largest gap between the two cumulative shares at the bins' edges. With a baseline's
    quantile edges this is the two-sample KS statistic evaluated at those edges (a lower bound
    of the statistic over all points: the baseline keeps no rows).

    Raises:
        ValueError: the two have different numbers of bins.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"KS needs the same bins: {e.shape[0]} expected, {a.shape[0]} actual")
    if e.size < 2:
        return 0.0
    return float(np.max(np.abs(np.cumsum(e)[:-1] - np.cumsum(a)[:-1])))


@dataclass(frozen=True)
class FeatureDrift:
    """The drift of one feature over the rows scored.

    Attributes:
        name: the feature.
        rows: rows seen; ``present`` of them had a finite value.
        psi: population stability index against the baseline (None without values).
        ks: KS distance at the baseline's edges (None without values).
        missing_expected: share missing in the validation data.
        missing_actual: share missing in the rows scored.
        drifted: PSI above the threshold.
        edges: the baseline's interior bin edges.
        expected: the baseline's share per bin.
        actual: the observed share per bin.
    """

    name: str
    rows: int
    present: int
    psi: float | None
    ks: float | None
    missing_expected: float
    missing_actual: float
    drifted: bool
    edges: tuple[float, ...]
    expected: tuple[float, ...]
    actual: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.name,
            "rows": self.rows,
            "present": self.present,
            "psi": self.psi,
            "ks": self.ks,
            "missing_expected": self.missing_expected,
            "missing_actual": self.missing_actual,
            "drifted": self.drifted,
            "edges": list(self.edges),
            "expected": list(self.expected),
            "actual": list(self.actual),
        }


@dataclass(frozen=True)
class PredictionDrift:
    """The drift of the model's outputs: class shares or a histogram of values."""

    kind: str
    psi: float | None
    ks: float | None
    drifted: bool
    labels: tuple[str, ...]
    expected: tuple[float, ...]
    actual: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "psi": self.psi,
            "ks": self.ks,
            "drifted": self.drifted,
            "bins": list(self.labels),
            "expected": list(self.expected),
            "actual": list(self.actual),
        }


@dataclass(frozen=True)
class DriftSummary:
    """Per-feature and prediction drift of the rows scored, against the bundle's baseline."""

    rows: int
    threshold: float
    features: tuple[FeatureDrift, ...]
    prediction: PredictionDrift | None

    @property
    def drifted(self) -> tuple[str, ...]:
        """The names of the features flagged as drifted."""
        return tuple(f.name for f in self.features if f.drifted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "threshold": self.threshold,
            "drifted_features": list(self.drifted),
            "features": [f.to_dict() for f in self.features],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
        }


def summarise(
    baseline: Baseline,
    counts: DriftCounts,
    threshold: float = PSI_THRESHOLD,
    order: Sequence[str] | None = None,
) -> DriftSummary:
    """Figures from counts: PSI and KS per feature and for the predictions, flagged above
    ``threshold`` (PSI).

    A feature without a single finite value in the rows has no PSI or KS (None) and is not
    flagged; its missing share says what happened.

    Args:
        baseline: the bundle's baseline.
        counts: what was seen.
        threshold: the PSI above which a feature (or the prediction) is flagged.
        order: the features to report, in this order (default: the baseline's).
    """
    features = []
    names = [n for n in order if n in baseline.features] if order is not None else baseline.features
    for name in names:
        reference = baseline.features[name]
        seen = counts.features[name]
        present = int(sum(seen.counts))
        actual = tuple(shares(np.asarray(seen.counts)))
        psi_value = ks_value = None
        if present:
            psi_value = psi(reference.proportions, actual)
            ks_value = ks_distance(reference.proportions, actual)
        features.append(
            FeatureDrift(
                name=name,
                rows=seen.rows,
                present=present,
                psi=psi_value,
                ks=ks_value,
                missing_expected=reference.missing,
                missing_actual=seen.missing / seen.rows if seen.rows else 0.0,
                drifted=psi_value is not None and psi_value > threshold,
                edges=reference.edges,
                expected=reference.proportions,
                actual=actual,
            )
        )
    prediction = None
    if baseline.prediction is not None and counts.prediction:
        reference_prediction = baseline.prediction
        total = sum(counts.prediction)
        actual = tuple(shares(np.asarray(counts.prediction)))
        p_psi = psi(reference_prediction.proportions, actual) if total else None
        p_ks = None
        if reference_prediction.kind == "histogram":
            labels = bin_labels(reference_prediction.edges)
            p_ks = ks_distance(reference_prediction.proportions, actual) if total else None
        else:
            labels = tuple(str(c) for c in reference_prediction.classes)
        prediction = PredictionDrift(
            reference_prediction.kind,
            p_psi,
            p_ks,
            p_psi is not None and p_psi > threshold,
            labels,
            reference_prediction.proportions,
            actual,
        )
    return DriftSummary(counts.rows, threshold, tuple(features), prediction)


def bin_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """Labels of the bins of ``edges`` (right-closed): ``"≤ 1.5"``, ``"(1.5, 2]"``, ``"> 9"``."""
    if not edges:
        return ("all",)
    labels = [f"≤ {edges[0]:.4g}"]
    labels += [f"({a:.4g}, {b:.4g}]" for a, b in itertools.pairwise(edges)]
    labels.append(f"> {edges[-1]:.4g}")
    return tuple(labels)
