"""Golden rows: the self-test a bundle carries and the check a device runs before activating it.

``golden.json`` holds a few input rows (in the manifest's feature order), the outputs the
bundled model gave for them at build time, and the tolerance within which a device's outputs
must match. :func:`compare_outputs` is pure; running the model is ``edgeml.toolkit.runtime``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeml.toolkit.errors import BundleError, ProfileError
from edgeml.toolkit.profiles import Tolerance
from edgeml.toolkit.runtime import ModelOutputs


@dataclass(frozen=True)
class GoldenSet:
    """Input rows with the outputs expected of the bundled model."""

    rows: np.ndarray
    expected: ModelOutputs
    tolerance: Tolerance

    def to_dict(self) -> dict[str, Any]:
        expected: dict[str, Any] = {}
        if self.expected.labels is not None:
            expected["labels"] = self.expected.labels.tolist()
        if self.expected.probabilities is not None:
            expected["probabilities"] = np.round(self.expected.probabilities, 7).tolist()
        if self.expected.values is not None:
            expected["values"] = self.expected.values.tolist()
        return {
            "rows": [[None if np.isnan(v) else float(v) for v in row] for row in self.rows],
            "expected": expected,
            "tolerance": self.tolerance.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> GoldenSet:
        try:
            rows = np.array(
                [[np.nan if v is None else float(v) for v in row] for row in data["rows"]],
                dtype=np.float64,
            )
            expected = data["expected"]
            outputs = ModelOutputs(
                labels=np.asarray(expected["labels"]) if "labels" in expected else None,
                probabilities=np.asarray(expected["probabilities"], dtype=np.float64)
                if "probabilities" in expected
                else None,
                values=np.asarray(expected["values"], dtype=np.float64)
                if "values" in expected
                else None,
            )
            tolerance = Tolerance.from_dict(data["tolerance"])
        except (KeyError, TypeError, ValueError, ProfileError) as error:
            raise BundleError(f"golden.json: malformed ({error!r})") from error
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise BundleError("golden.json: holds no rows")
        return cls(rows, outputs, tolerance)


@dataclass(frozen=True)
class OutputComparison:
    """How a model's outputs compare with reference outputs on the same rows."""

    rows: int
    label_agreement: float | None
    max_probability_diff: float | None
    probabilities_within_tolerance: float | None
    values_within_tolerance: float | None
    max_value_diff: float | None
    disagreeing_rows: tuple[int, ...]
    passed: bool
    ties: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "label_agreement": self.label_agreement,
            "max_probability_diff": self.max_probability_diff,
            "probabilities_within_tolerance": self.probabilities_within_tolerance,
            "values_within_tolerance": self.values_within_tolerance,
            "max_value_diff": self.max_value_diff,
            "disagreeing_rows": list(self.disagreeing_rows),
            "ties": self.ties,
            "passed": self.passed,
        }

    def describe(self) -> str:
        """One line for people: which figure missed which threshold."""
        parts = [f"{self.rows} rows"]
        if self.label_agreement is not None:
            parts.append(f"labels agree on {self.label_agreement:.4%}")
        if self.ties:
            parts.append(f"{self.ties} row(s) a tie in the reference, either label accepted")
        if self.probabilities_within_tolerance is not None:
            parts.append(
                f"probabilities within tolerance on {self.probabilities_within_tolerance:.4%}"
            )
        if self.max_probability_diff is not None:
            parts.append(f"max probability difference {self.max_probability_diff:.3g}")
        if self.values_within_tolerance is not None:
            parts.append(f"values within tolerance on {self.values_within_tolerance:.4%}")
        if self.max_value_diff is not None:
            parts.append(f"max value difference {self.max_value_diff:.3g}")
        if self.disagreeing_rows:
            shown = ", ".join(str(r) for r in self.disagreeing_rows[:10])
            parts.append(f"first disagreeing rows: {shown}")
        return "; ".join(parts)


def _same_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        return a.astype(np.int64) == b.astype(np.int64)
    return a.astype(str) == b.astype(str)


def _tied_in_expected(actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """Rows where the expected probabilities are a tie (two or more classes within
    ``probability_atol`` of the top) and the actual model picked one of the tied classes:
    either label is a right answer there.

    The actual model's pick is the column of its highest probability.
    """
    if actual.size == 0:
        return np.zeros(len(actual), dtype=bool)
    near_top = expected >= expected.max(axis=1, keepdims=True) - tolerance.probability_atol
    picked = np.argmax(actual, axis=1)
    rows = np.arange(len(expected))
    return (near_top.sum(axis=1) >= 2) & near_top[rows, picked]


def compare_outputs(
    actual: ModelOutputs,
    expected: ModelOutputs,
    tolerance: Tolerance,
    *,
    every_row: bool = False,
) -> OutputComparison:
    """Compare outputs row by row.

    A row whose labels differ still agrees when the reference's probabilities tie (within
    ``probability_atol``) between the two labels: float32 against float64 arithmetic may break
    an exact tie either way, and either label is a right answer there.

    Args:
        actual: the outputs under test.
        expected: the reference outputs.
        tolerance: the thresholds.
        every_row: require every row to agree (the golden self-test) rather than the share
            ``tolerance.label_agreement`` (agreement with a source model on validation data).

    Returns:
        The comparison, with the rows that disagree.
    """
    required = 1.0 if every_row else tolerance.label_agreement
    bad = np.zeros(0, dtype=bool)
    label_share = probability_diff = probability_share = value_share = value_diff = None
    ties = 0
    passed = True
    if expected.labels is not None:
        if actual.labels is None or len(actual.labels) != len(expected.labels):
            raise ValueError("outputs to compare have no labels or a different number of rows")
        same = _same_labels(actual.labels, expected.labels)
        shapes_match = (
            expected.probabilities is not None
            and actual.probabilities is not None
            and actual.probabilities.shape == expected.probabilities.shape
        )
        if shapes_match:
            assert expected.probabilities is not None and actual.probabilities is not None
            tied = _tied_in_expected(actual.probabilities, expected.probabilities, tolerance)
            ties = int(np.sum(~same & tied))
            same = same | tied
        label_share = float(same.mean()) if same.size else 1.0
        bad = ~same
        passed = label_share >= required
        if expected.probabilities is not None and actual.probabilities is not None:
            if not shapes_match:
                raise ValueError(
                    f"probabilities have shape {actual.probabilities.shape}, "
                    f"expected {expected.probabilities.shape}"
                )
            diff = np.abs(actual.probabilities - expected.probabilities)
            row_diff = diff.max(axis=1) if diff.size else np.zeros(len(same))
            probability_diff = float(row_diff.max()) if row_diff.size else 0.0
            off = row_diff > tolerance.probability_atol
            bad = bad | off
            probability_share = float(1.0 - off.mean()) if off.size else 1.0
            passed = passed and probability_share >= required
    else:
        if (
            actual.values is None
            or expected.values is None
            or actual.values.shape != expected.values.shape
        ):
            raise ValueError("outputs to compare have no values or a different shape")
        diff = np.abs(actual.values - expected.values)
        limit = tolerance.value_atol + tolerance.value_rtol * np.abs(expected.values)
        off = diff > limit
        if off.ndim > 1:
            off = off.any(axis=tuple(range(1, off.ndim)))
        value_share = float(1.0 - off.mean()) if off.size else 1.0
        value_diff = float(diff.max()) if diff.size else 0.0
        bad = off
        passed = value_share >= required
    return OutputComparison(
        rows=len(bad),
        label_agreement=label_share,
        max_probability_diff=probability_diff,
        probabilities_within_tolerance=probability_share,
        values_within_tolerance=value_share,
        max_value_diff=value_diff,
        disagreeing_rows=tuple(int(i) for i in np.flatnonzero(bad)[:50]),
        ties=ties,
        passed=passed,
    )
