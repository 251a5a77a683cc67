"""Drift statistics: the baseline a bundle carries and the population stability index.

Pure numpy, no I/O. A baseline holds, per feature, the interior bin edges (quantiles of the
validation data) and the share of rows in each bin, plus the share of missing values; and the
same for the model's predictions (class shares for classifiers, a histogram for regressors).
A device or a batch scorer bins its own values with the same edges and compares shares with
:func:`psi`. Keeping counts per bin is what lets the agent summarise a window without keeping
rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_BINS = 10
PSI_EPSILON = 1e-4
PSI_THRESHOLD = 0.25
"""Above this PSI a feature is flagged as drifted (the usual reading: < 0.1 stable,
0.1-0.25 moderate shift, > 0.25 significant shift)."""


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
