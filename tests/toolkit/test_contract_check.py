"""The contract check: a pure function of the contract and a batch, every violation kind named.

No file is read here: batches are typed columns built in memory, as the batch readers build
them (``infer_column`` for text cells), or numeric matrices.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgeml.toolkit.contract import (
    MISSING_COLUMN,
    NULL,
    OUT_OF_RANGE,
    SMALL_BATCH,
    WRONG_TYPE,
    ContractViolation,
    DataContract,
    FeatureSpec,
    _rows_to_look_at,
    check_columns,
    check_matrix,
    is_clean_batch,
    missing_columns,
)
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.tabular import Column, infer_column

CONTRACT = DataContract(
    (
        FeatureSpec("a", "float", nullable=False, minimum=0.0, maximum=10.0),
        FeatureSpec("n", "integer", nullable=True, minimum=0.0, maximum=5.0),
        FeatureSpec("flag", "boolean", nullable=False, minimum=None, maximum=None),
        FeatureSpec("z", "float", nullable=True, minimum=None, maximum=None),
    )
)


def text(name: str, *cells: str | None, first_row: int = 1) -> Column:
    """A column typed from text cells, as the CSV reader types a batch."""
    return infer_column(name, list(cells), source="data.csv", first_row=first_row)


def batch(**columns: list[str | None]) -> dict[str, Column]:
    return {name: text(name, *cells) for name, cells in columns.items()}


def good(**override: list[str | None]) -> dict[str, Column]:
    cells = {
        "a": ["1.5", "2", "9.75"],
        "n": ["1", "", "5"],
        "flag": ["true", "false", "TRUE"],
        "z": ["-1e9", "NA", "3"],
    }
    cells.update(override)
    return batch(**cells)


def check(columns: dict[str, Column], **kwargs) -> object:
    kwargs.setdefault("source", "data.csv")
    return check_columns(CONTRACT, columns, **kwargs)


def test_a_good_batch_passes_and_gives_the_feature_matrix() -> None:
    report = check(good())
    assert report.passed and report.invalid_rows == 0
    report.raise_if_invalid()
    assert report.violations() == []
    expected = np.array([[1.5, 1.0, 1.0, -1e9], [2.0, np.nan, 0.0, np.nan], [9.75, 5.0, 1.0, 3.0]])
    np.testing.assert_array_equal(report.matrix, expected)
    assert report.matrix.shape == (3, 4)


def test_missing_column_makes_every_row_invalid_and_is_named() -> None:
    columns = good()
    del columns["n"]
    report = check(columns)
    assert not report.passed
    assert report.missing_columns == ("n",)
    assert report.invalid.all()
    (violation,) = report.violations()
    assert violation.kind == MISSING_COLUMN and violation.row is None
    assert violation.message == (
        "data.csv, column 'n': the column is missing; the contract requires it (integer)"
    )
    assert report.counts() == {"n": {MISSING_COLUMN: 3}}
    with pytest.raises(ContractViolation, match=r"column 'n': the column is missing") as caught:
        report.raise_if_invalid()
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2
    assert caught.value.report is report


def test_missing_columns_from_a_header_alone() -> None:
    found = missing_columns(CONTRACT, ["z", "a", "extra"], source="in.parquet")
    assert [v.column for v in found] == ["n", "flag"]
    assert found[1].message == (
        "in.parquet, column 'flag': the column is missing; the contract requires it (boolean)"
    )


def test_text_that_is_not_a_number_flags_only_its_cell() -> None:
    """A batch the reader typed as text (one bad cell) is read cell by cell as the contract's
    kind: the kinds are reconciled against the contract, not taken from the batch."""
    columns = good(a=["1.5", "abc", " 7 "])
    assert columns["a"].kind == "string"
    report = check(columns, first_row=101)
    assert report.invalid.tolist() == [False, True, False]
    (violation,) = report.violations()
    assert violation.kind == WRONG_TYPE
    assert violation.row == 102 and violation.column == "a" and violation.value == "abc"
    assert violation.message == (
        "data.csv, row 102, column 'a': 'abc' is not a number (the contract says float)"
    )
    assert report.matrix[0, 0] == 1.5 and report.matrix[2, 0] == 7.0
    assert math.isnan(report.matrix[1, 0])


def test_a_fraction_in_an_integer_feature_is_the_wrong_type() -> None:
    report = check(good(n=["1", "2.5", "3.0"]))
    (violation,) = report.violations()
    assert violation.kind == WRONG_TYPE and violation.row == 2
    assert violation.detail == "2.5 is not an integer (the contract says integer)"
    assert report.matrix[2, 1] == 3.0, "a whole number written as 3.0 is an integer"


def test_a_boolean_feature_takes_true_false_0_and_1_only() -> None:
    report = check(good(flag=["maybe", "1", "0"]))
    (violation,) = report.violations()
    assert (
        violation.detail == "'maybe' is not a boolean (true or false) (the contract says boolean)"
    )
    assert report.matrix[1:, 2].tolist() == [1.0, 0.0]
    numeric = check(good(flag=["1", "0", "2"]))
    assert [v.detail for v in numeric.violations()] == [
        "2 is not a boolean (true or false) (the contract says boolean)"
    ]


def test_booleans_in_a_number_feature_are_the_wrong_type() -> None:
    report = check(good(a=["true", "false", "true"]))
    assert [v.row for v in report.violations()] == [1, 2, 3]
    assert report.violations()[0].detail == "True is not a number (the contract says float)"


def test_null_where_the_contract_allows_none() -> None:
    report = check(good(a=["1", "", "NA"]), first_row=11)
    assert [(v.kind, v.row, v.column) for v in report.violations()] == [
        (NULL, 12, "a"),
        (NULL, 13, "a"),
    ]
    assert report.violations()[0].message == (
        "data.csv, row 12, column 'a': no value, and the contract does not allow nulls"
    )
    assert report.violations()[0].value is None
    nullable = check(good(z=[None, "", "NA"]))
    assert nullable.passed, "z is nullable"


def test_out_of_range_is_counted_and_passes_unless_strict() -> None:
    columns = good(a=["-0.5", "11", "10"], n=["6", "", "0"])
    report = check(columns)
    assert report.passed, "out of range is a warning by default"
    assert report.out_of_range["a"].below == 1 and report.out_of_range["a"].above == 1
    assert report.out_of_range["n"].total == 1
    assert "z" not in report.out_of_range
    strict = check(columns, strict_range=True)
    assert strict.invalid.tolist() == [True, True, False]
    kinds = [(v.kind, v.row, v.column) for v in strict.violations()]
    assert kinds == [(OUT_OF_RANGE, 1, "a"), (OUT_OF_RANGE, 1, "n"), (OUT_OF_RANGE, 2, "a")]
    messages = [v.message for v in strict.violations()]
    assert messages[0] == (
        "data.csv, row 1, column 'a': -0.5 is below the contract's minimum 0.0 "
        "(validation range [0.0, 10.0])"
    )
    assert messages[2] == (
        "data.csv, row 2, column 'a': 11.0 is above the contract's maximum 10.0 "
        "(validation range [0.0, 10.0])"
    )


def test_unknown_columns_are_listed_and_passed_over() -> None:
    columns = good()
    columns["extra"] = text("extra", "x", "y", "z")
    columns["id"] = text("id", "1", "2", "3")
    report = check(columns, ignore=["id"])
    assert report.passed
    assert report.unknown_columns == ("extra",)


def test_a_row_with_several_violations_lists_every_reason() -> None:
    report = check(
        good(a=["", "2", "3"], flag=["nope", "true", "false"], n=["9", "1", "2"]), strict_range=True
    )
    assert report.invalid_rows == 1
    assert report.reasons() == {
        0: "a: no value, and the contract does not allow nulls; "
        "n: 9.0 is above the contract's maximum 5.0 (validation range [0.0, 5.0]); "
        "flag: 'nope' is not a boolean (true or false) (the contract says boolean)"
    }
    with pytest.raises(ContractViolation) as caught:
        report.raise_if_invalid("try --on-invalid skip")
    assert str(caught.value) == (
        "data.csv, row 1, column 'a': no value, and the contract does not allow nulls "
        "(3 violations in 1 invalid row of this batch); try --on-invalid skip"
    )


def test_violations_are_ordered_by_row_then_contract_and_limited() -> None:
    report = check(good(a=["x", "", "y"], flag=["no", "true", "true"]))
    assert [(v.row, v.column) for v in report.violations()] == [
        (1, "a"),
        (1, "flag"),
        (2, "a"),
        (3, "a"),
    ]
    assert [(v.row, v.column) for v in report.violations(limit=2)] == [(1, "a"), (1, "flag")]


def test_the_report_is_json() -> None:
    report = check(good(a=["inf", "x", "1"]), strict_range=True)
    document = json.loads(json.dumps(report.to_dict()))
    assert document["invalid_rows"] == 2
    assert document["counts"] == {"a": {WRONG_TYPE: 1, OUT_OF_RANGE: 1}}
    assert document["violations"][0]["value"] == "inf"


def test_columns_of_different_lengths_are_a_bug_of_the_caller() -> None:
    columns = good()
    columns["z"] = text("z", "1")
    with pytest.raises(ValueError, match="different lengths"):
        check(columns)


# --- matrices -------------------------------------------------------------------------------


def test_a_matrix_maps_columns_by_position_and_nan_is_null() -> None:
    matrix = np.array([[1.0, 2.0, 1.0, np.nan], [np.nan, 2.5, 2.0, 0.0], [3.0, np.nan, 0.0, 1.0]])
    report = check_matrix(CONTRACT, matrix, source="x.npy", first_row=5)
    assert [v.message for v in report.violations()] == [
        "x.npy, row 6, column 'a': no value, and the contract does not allow nulls",
        "x.npy, row 6, column 'n': 2.5 is not an integer (the contract says integer)",
        "x.npy, row 6, column 'flag': 2.0 is not a boolean (true or false) "
        "(the contract says boolean)",
    ]
    assert report.invalid.tolist() == [False, True, False]


def test_a_matrix_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="4 columns"):
        check_matrix(CONTRACT, np.zeros((2, 3)))


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(0, 12), st.just(4)),
        elements=st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=32),
            st.sampled_from([0.0, 1.0, 5.0, 10.0]),
        ),
    ),
    st.booleans(),
)
def test_a_matrix_and_the_same_columns_give_the_same_report(
    matrix: np.ndarray, strict: bool
) -> None:
    columns = {
        spec.name: Column(spec.name, "float", matrix[:, j].copy(), np.isnan(matrix[:, j]))
        for j, spec in enumerate(CONTRACT.features)
    }
    by_columns = check_columns(CONTRACT, columns, rows=len(matrix), strict_range=strict)
    by_matrix = check_matrix(CONTRACT, matrix, strict_range=strict)
    assert by_columns.invalid.tolist() == by_matrix.invalid.tolist()
    assert [v.message for v in by_columns.violations()] == [
        v.message for v in by_matrix.violations()
    ]
    assert by_columns.out_of_range == by_matrix.out_of_range
    np.testing.assert_array_equal(by_columns.matrix, by_matrix.matrix)


def test_a_float32_matrix_is_checked_as_the_model_receives_it() -> None:
    """float32(0.1) is above 0.1: a validation maximum of 0.1, rounded as the model's input
    is, must still take it, and the next float32 above it is out of range."""
    contract = DataContract((FeatureSpec("x", "float", False, 0.0, 0.1),))
    edge = np.float32(0.1)
    beyond = np.nextafter(edge, np.float32(1.0))
    report = check_matrix(contract, np.array([[edge], [beyond]], dtype=np.float32))
    assert report.out_of_range["x"].above == 1
    assert report.matrix.dtype == np.float32
    strict = check_matrix(
        contract, np.array([[edge], [beyond]], dtype=np.float32), strict_range=True
    )
    (violation,) = strict.violations()
    assert violation.row == 2
    assert violation.detail.startswith("0.10000001 is above the contract's maximum 0.1")
    typed = check_columns(
        contract, {"x": text("x", "0.1", "0.10000001")}, dtype=np.float32, strict_range=True
    )
    assert typed.invalid.tolist() == [False, True]


INTEGERS_ONLY = DataContract(
    (
        FeatureSpec("n", "integer", nullable=False, minimum=0.0, maximum=16.0),
        FeatureSpec("m", "integer", nullable=True, minimum=None, maximum=None),
        FeatureSpec("b", "boolean", nullable=False, minimum=None, maximum=None),
    )
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([CONTRACT, INTEGERS_ONLY]),
    st.sampled_from([np.float32, np.float64]),
    st.integers(1, 60),
    st.data(),
)
def test_the_clean_fast_path_never_passes_what_the_full_check_flags(
    contract: DataContract, dtype: type, rows: int, data: st.DataObject
) -> None:
    matrix = data.draw(
        arrays(
            dtype,
            (rows, len(contract.features)),
            elements=st.one_of(
                st.sampled_from([0.0, 1.0, 2.0, 5.0, 16.0, -1.0, 0.5, 17.0, np.nan, np.inf]),
                st.floats(-20, 20, width=32),
            ),
        )
    )
    # The full check, on the same rows repeated past SMALL_BATCH (check_matrix itself takes
    # the fast path for a few rows, so it cannot judge it on those).
    report = check_matrix(contract, np.concatenate([matrix] * (SMALL_BATCH // rows + 1)))
    if is_clean_batch(contract, matrix):  # then the full check finds nothing at all
        assert report.passed and not report.out_of_range
    elif not np.isnan(matrix).any():  # without nulls, "not clean" means it finds something
        assert not report.passed or report.out_of_range


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 40),
    rows=st.integers(17, 400),
    dtype=st.sampled_from([np.float32, np.float64]),
    strict=st.booleans(),
    fortran=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_large_batch_is_checked_as_its_rows_are_one_by_one(
    width: int, rows: int, dtype: type, strict: bool, fortran: bool, seed: int
) -> None:
    """Many rows at once (compared a line of many rows at a time, cells combined a machine
    word at a time, whatever the width and however many rows fill the last line) find the
    same cells as the rows checked one at a time, where plain comparisons are used."""
    rng = np.random.default_rng(seed)
    contract = DataContract(
        tuple(
            FeatureSpec(f"f{j}", "float", nullable=j % 3 == 0, minimum=-1.0, maximum=1.0 + j)
            for j in range(width)
        )
    )
    matrix = rng.uniform(-1.5, 1.5 + width, size=(rows, width)).astype(dtype)
    matrix[rng.random(matrix.shape) < 0.6] = 0.5  # mostly clean, so whole words pass
    matrix[rng.random(matrix.shape) < 0.01] = np.nan
    if fortran:
        matrix = np.asfortranarray(matrix)
    names = [spec.name for spec in contract.features]
    whole = check_matrix(contract, matrix, strict_range=strict)
    one_by_one = [
        check_matrix(contract, matrix[i : i + 1], strict_range=strict, first_row=i + 1)
        for i in range(rows)
    ]
    assert whole.invalid.tolist() == [not r.passed for r in one_by_one]
    assert [v.message for v in whole.violations()] == [
        v.message for r in one_by_one for v in r.violations()
    ]
    below = {
        n: sum(r.out_of_range[n].below for r in one_by_one if n in r.out_of_range) for n in names
    }
    above = {
        n: sum(r.out_of_range[n].above for r in one_by_one if n in r.out_of_range) for n in names
    }
    assert {n: (c.below, c.above) for n, c in whole.out_of_range.items()} == {
        n: (below[n], above[n]) for n in names if below[n] or above[n]
    }


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 70),
    rows=st.integers(17, 12_000),
    dtype=st.sampled_from([np.float32, np.float64]),
    bad=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_rows_outside_the_range_are_found_across_blocks(
    width: int, rows: int, dtype: type, bad: int, seed: int
) -> None:
    """A batch of many rows is compared a block at a time through masks used again: the rows
    found are those with a nan or a value past a bound, wherever they lie (first, last, in
    the rows that fill no whole machine word)."""
    rng = np.random.default_rng(seed)
    low, high = np.full(width, -1.0, dtype=dtype), np.full(width, 1.0, dtype=dtype)
    matrix = rng.uniform(-1, 1, size=(rows, width)).astype(dtype)
    cells = [(0, 0), (rows - 1, width - 1)] + [
        (int(rng.integers(rows)), int(rng.integers(width))) for _ in range(bad)
    ]
    for i, j in cells[: 2 + bad if bad else 0]:
        matrix[i, j] = rng.choice([np.nan, -2.0, 2.0, np.inf])
    expected = np.flatnonzero(~((matrix >= low) & (matrix <= high)).all(axis=1))
    assert _rows_to_look_at(matrix, low, high).tolist() == expected.tolist()


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 3000),
    dtype=st.sampled_from([np.float32, np.float64]),
    fortran=st.booleans(),
    bad=st.sampled_from([None, np.nan, np.inf, -np.inf, -1.0, 17.0, 0.5, 2.0]),
    column=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_clean_batch_of_any_size_is_told_from_one_bad_cell(
    rows: int, dtype: type, fortran: bool, bad: float | None, column: int, seed: int
) -> None:
    """Many rows are judged by each column's extremes: one bad cell anywhere (the first row,
    the last, the rows that fill no whole line) makes the batch not clean, and the verdict
    is the full check's."""
    rng = np.random.default_rng(seed)
    matrix = np.column_stack(
        [rng.integers(0, 17, rows), rng.integers(-5, 5, rows), rng.integers(0, 2, rows)]
    ).astype(dtype)
    if bad is not None:
        matrix[int(rng.choice([0, rows - 1, rng.integers(rows)])), column] = bad
    if fortran:
        matrix = np.asfortranarray(matrix)
    clean = is_clean_batch(INTEGERS_ONLY, matrix)
    full = check_matrix(INTEGERS_ONLY, np.concatenate([matrix] * (SMALL_BATCH // rows + 1)))
    if clean:
        assert full.passed and not full.out_of_range
    # n: whole numbers in [0, 16]; m: any whole number, or null; b: 0 or 1
    fine = {0: (2.0,), 1: (np.nan, -1.0, 17.0, 2.0), 2: ()}[column]
    if bad is None:
        assert clean
    elif not any(bad == v or (np.isnan(bad) and np.isnan(v)) for v in fine):
        assert not clean
        assert not full.passed or full.out_of_range


def test_inf_is_no_integer_on_the_fast_path_either() -> None:
    """An integer feature without bounds: inf is refused for one row as for many (the fast
    path once took inf == rint(inf) for a whole number)."""
    contract = DataContract(
        (FeatureSpec("m", "integer", nullable=True, minimum=None, maximum=None),)
    )
    for rows in (1, SMALL_BATCH + 1):
        matrix = np.zeros((rows, 1))
        matrix[-1, 0] = np.inf
        assert not is_clean_batch(contract, matrix)
        report = check_matrix(contract, matrix)
        assert [v.message for v in report.violations()] == [
            f"row {rows}, column 'm': inf is not an integer (the contract says integer)"
        ]


def test_clean_rows_take_the_fast_path_and_predict_the_same() -> None:
    clean = np.array([[1.0, 3.0, 1.0, -7.5], [10.0, 0.0, 0.0, 1e9]], dtype=np.float32)
    assert is_clean_batch(CONTRACT, clean)
    assert not is_clean_batch(CONTRACT, clean[:, [0, 1, 2, 3]] * np.array([1, 1, 2, 1]))
