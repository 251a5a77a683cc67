"""Comparing model outputs: labels, probabilities, ties, values (pure, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeml.toolkit.errors import BundleError
from edgeml.toolkit.golden import GoldenSet, compare_outputs
from edgeml.toolkit.profiles import Tolerance
from edgeml.toolkit.runtime import ModelOutputs

STRICT = Tolerance(label_agreement=0.999, probability_atol=1e-3)


def classifier(labels, probabilities) -> ModelOutputs:
    return ModelOutputs(labels=np.array(labels), probabilities=np.array(probabilities, dtype=float))


def test_identical_outputs_agree() -> None:
    a = classifier([0, 1], [[0.9, 0.1], [0.2, 0.8]])
    result = compare_outputs(a, a, STRICT, every_row=True)
    assert result.passed and result.label_agreement == 1.0 and result.max_probability_diff == 0.0


def test_a_tie_in_the_reference_accepts_either_label() -> None:
    reference = classifier([0, 1], [[0.5, 0.5], [0.2, 0.8]])
    actual = classifier([1, 1], [[0.4999999, 0.5000001], [0.2, 0.8]])
    result = compare_outputs(actual, reference, STRICT, every_row=True)
    assert result.passed and result.ties == 1 and result.label_agreement == 1.0
    assert "a tie in the reference" in result.describe()


def test_a_real_disagreement_is_named_with_its_row() -> None:
    reference = classifier([0, 1, 1], [[0.7, 0.3], [0.2, 0.8], [0.1, 0.9]])
    actual = classifier([1, 1, 1], [[0.3, 0.7], [0.2, 0.8], [0.1, 0.9]])
    result = compare_outputs(actual, reference, STRICT)
    assert not result.passed
    assert result.disagreeing_rows == (0,)
    assert result.label_agreement == pytest.approx(2 / 3)
    assert "first disagreeing rows: 0" in result.describe()


def test_shares_below_every_row() -> None:
    n = 1000
    labels = np.zeros(n, dtype=int)
    probabilities = np.tile([0.9, 0.1], (n, 1))
    flipped = probabilities.copy()
    flipped[0] = [0.1, 0.9]
    reference = ModelOutputs(labels=labels, probabilities=probabilities)
    actual = ModelOutputs(labels=np.where(np.arange(n) == 0, 1, 0), probabilities=flipped)
    assert compare_outputs(actual, reference, STRICT).passed, "999 of 1000 rows is enough"
    assert not compare_outputs(actual, reference, STRICT, every_row=True).passed


def test_string_and_integer_labels_compare_by_value() -> None:
    a = ModelOutputs(labels=np.array(["a", "b"]))
    assert compare_outputs(a, ModelOutputs(labels=np.array(["a", "b"])), STRICT).passed
    b = ModelOutputs(labels=np.array([1, 2], dtype=np.int32))
    assert compare_outputs(b, ModelOutputs(labels=np.array([1, 2], dtype=np.int64)), STRICT).passed


def test_regression_values_within_relative_and_absolute_tolerance() -> None:
    tolerance = Tolerance(value_rtol=0.01, value_atol=0.1)
    reference = ModelOutputs(values=np.array([100.0, 0.0, 50.0]))
    close = ModelOutputs(values=np.array([100.9, 0.09, 50.5]))
    far = ModelOutputs(values=np.array([102.0, 0.0, 50.0]))
    assert compare_outputs(close, reference, tolerance, every_row=True).passed
    result = compare_outputs(far, reference, tolerance, every_row=True)
    assert not result.passed and result.disagreeing_rows == (0,) and result.max_value_diff == 2.0


def test_mismatched_shapes_are_errors_not_passes() -> None:
    with pytest.raises(ValueError):
        compare_outputs(classifier([0], [[1.0, 0.0]]), classifier([0, 1], [[1, 0], [0, 1]]), STRICT)


def test_golden_set_round_trips_and_refuses_malformed_documents() -> None:
    golden = GoldenSet(np.array([[1.0, np.nan]]), classifier([1], [[0.25, 0.75]]), STRICT)
    again = GoldenSet.from_dict(golden.to_dict())
    assert np.isnan(again.rows[0, 1]) and again.rows[0, 0] == 1.0
    assert again.tolerance == STRICT
    for broken in (
        {},
        {"rows": [], "expected": {}, "tolerance": {}},
        {**golden.to_dict(), "tolerance": {"label_agreement": 7}},
    ):
        with pytest.raises(BundleError, match=r"golden\.json"):
            GoldenSet.from_dict(broken)


def test_labels_that_contradict_clear_probabilities_are_no_tie() -> None:
    """A golden file whose labels were changed while its probabilities were not is a
    disagreement, not a tie (the probabilities are far from each other)."""
    reference = classifier([1, 0], [[0.99, 0.01], [0.02, 0.98]])
    actual = classifier([0, 1], [[0.99, 0.01], [0.02, 0.98]])
    result = compare_outputs(actual, reference, STRICT, every_row=True)
    assert not result.passed and result.ties == 0 and result.disagreeing_rows == (0, 1)
