"""Task metrics of a model's outputs against the validation target.

Classifiers: accuracy and macro-F1; regressors: R² and MAE. The primary metric (accuracy, or
R² for regressors) is what the ``max_accuracy_drop`` budget compares, in percentage points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeml.toolkit.runtime import ModelOutputs


def label_strings(labels: np.ndarray) -> np.ndarray:
    """Labels as strings, so int and string class labels compare the same way everywhere."""
    if (
        labels.dtype.kind == "f"
        and np.all(np.isfinite(labels))
        and np.all(labels == np.round(labels))
    ):
        labels = labels.astype(np.int64)
    return labels.astype(str)


def task_metrics(task: str, outputs: ModelOutputs, target: np.ndarray) -> dict[str, float]:
    """The metrics of ``outputs`` against ``target``.

    Returns:
        ``{"accuracy", "macro_f1"}`` for classification, ``{"r2", "mae"}`` for regression.
    """
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

    if task == "classification":
        assert outputs.labels is not None
        truth, predicted = label_strings(target), label_strings(outputs.labels)
        return {
            "accuracy": round(float(accuracy_score(truth, predicted)), 6),
            "macro_f1": round(
                float(f1_score(truth, predicted, average="macro", zero_division=0)), 6
            ),
        }
    assert outputs.values is not None
    truth_values = target.astype(np.float64)
    return {
        "r2": round(float(r2_score(truth_values, outputs.values)), 6),
        "mae": round(float(mean_absolute_error(truth_values, outputs.values)), 6),
    }


def primary_metric(task: str) -> str:
    """The metric the accuracy budget watches."""
    return "accuracy" if task == "classification" else "r2"


def metric_drop_points(task: str, source: dict[str, Any], bundled: dict[str, Any]) -> float:
    """How many percentage points the bundled model loses on the primary metric."""
    key = primary_metric(task)
    return round((float(source[key]) - float(bundled[key])) * 100.0, 4)
