"""The data contract: what each input feature of a bundle may hold.

Derived from the validation data at build time (per feature: kind, range, whether nulls were
seen) and stored in the manifest. This module models the document, derives it, and checks rows
against it: :func:`check_columns` (typed columns, as the batch readers give them) and
:func:`check_matrix` (a numeric matrix) are pure functions that return a
:class:`ContractReport` listing every violation by row and column; the report's
``raise_if_invalid`` raises :class:`ContractViolation` naming the first one. Reading files and
deciding what to do with invalid rows (fail, skip, quarantine) are the scoring engine's job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from edgeml.toolkit.errors import BundleError, InputError

FeatureKind = Literal["float", "integer", "boolean"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: its kind, the range seen in the validation data, and nullability."""

    name: str
    kind: FeatureKind
    nullable: bool
    minimum: float | None
    maximum: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "nullable": self.nullable,
            "min": self.minimum,
            "max": self.maximum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        kind = data["kind"]
        if kind not in ("float", "integer", "boolean"):
            raise BundleError(f"contract: feature {data.get('name')!r} has unknown kind {kind!r}")
        return cls(
            name=str(data["name"]),
            kind=kind,
            nullable=bool(data["nullable"]),
            minimum=None if data.get("min") is None else float(data["min"]),
            maximum=None if data.get("max") is None else float(data["max"]),
        )


@dataclass(frozen=True)
class DataContract:
    """The features a bundle reads, in input order."""

    features: tuple[FeatureSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataContract:
        try:
            return cls(tuple(FeatureSpec.from_dict(f) for f in data["features"]))
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"contract: malformed ({error!r})") from error

    def feature(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)


def feature_spec(
    name: str, kind: FeatureKind, values: np.ndarray, missing: np.ndarray
) -> FeatureSpec:
    """Derive one feature's spec from its validation values (``missing`` masks the nulls)."""
    present = values[~missing]
    if kind != "boolean":
        present = present.astype(np.float64)
        present = present[np.isfinite(present)]
    minimum = float(present.min()) if present.size and kind != "boolean" else None
    maximum = float(present.max()) if present.size and kind != "boolean" else None
    return FeatureSpec(name, kind, bool(missing.any()), minimum, maximum)


# --------------------------------------------------------------------------- checking rows
#
# The check is a pure function of the contract and a batch of typed columns (or a numeric
# matrix): no file, no clock. Two tiers, as for bundle verification: ``check_columns`` and
# ``check_matrix`` return a ``ContractReport`` that lists every violation by row and column
# (for people, for a quarantine file, for a summary); ``ContractReport.raise_if_invalid``
# raises ``ContractViolation`` naming the first one (for code).

MISSING_COLUMN = "missing column"
WRONG_TYPE = "wrong type"
NULL = "null"
OUT_OF_RANGE = "out of range"
VIOLATION_KINDS = (MISSING_COLUMN, WRONG_TYPE, NULL, OUT_OF_RANGE)
"""Every kind of violation, in the order a row's reasons are listed."""

# The text forms of numbers that ``edgeml.toolkit.tabular`` reads as numbers, so that a cell
# a batch reader left as text (because another cell of its batch is not a number) parses the
# same way here: an optional sign, a decimal number with an optional exponent, or an infinity.
_NUMBER_TEXT = re.compile(
    r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity)\s*",
    re.IGNORECASE,
)
_BOOLEAN_TEXT = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}
_EXPECTED = {
    "float": "a number",
    "integer": "an integer",
    "boolean": "a boolean (true or false)",
}


class TypedColumn(Protocol):
    """What the check reads of a column: ``edgeml.toolkit.tabular.Column`` is one.

    ``kind`` is ``integer``, ``float``, ``boolean`` or ``string``; ``values`` holds int64,
    float64, bool or ``str`` objects accordingly; ``missing`` is True where a cell is null.
    """

    @property
    def kind(self) -> str: ...

    @property
    def values(self) -> np.ndarray: ...

    @property
    def missing(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Violation:
    """One value (or one column) that breaks the contract.

    Attributes:
        kind: one of ``VIOLATION_KINDS``.
        column: the feature's name.
        row: the 1-based data row in the source; None for a missing column.
        value: the offending value as read (None for a null or a missing column).
        detail: what is wrong, without the location.
        source: the file (or other source) the row came from; ``""`` if none.
    """

    kind: str
    column: str
    row: int | None
    value: Any
    detail: str
    source: str = ""

    @property
    def location(self) -> str:
        """``"data.csv, row 4, column 'age'"``, leaving out the parts not known."""
        parts = [self.source] if self.source else []
        if self.row is not None:
            parts.append(f"row {self.row}")
        parts.append(f"column {self.column!r}")
        return ", ".join(parts)

    @property
    def message(self) -> str:
        """The location and the detail: what an error message says."""
        return f"{self.location}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "column": self.column,
            "row": self.row,
            "value": _jsonable(self.value),
            "message": self.message,
        }


@dataclass(frozen=True)
class RangeCount:
    """How many values of one feature fell outside the contract's range in a batch."""

    below: int
    above: int
    minimum: float | None
    maximum: float | None

    @property
    def total(self) -> int:
        return self.below + self.above

    def merge(self, other: RangeCount) -> RangeCount:
        return RangeCount(
            self.below + other.below, self.above + other.above, self.minimum, self.maximum
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "below": self.below,
            "above": self.above,
            "min": self.minimum,
            "max": self.maximum,
        }


@dataclass(frozen=True, eq=False)
class _Finding:
    """Rows of one feature with one kind of violation (batch-relative indices)."""

    kind: str
    feature: int
    rows: np.ndarray
    values: tuple[Any, ...] | None  # as read, aligned with rows; None: take them from the matrix


@dataclass(frozen=True, eq=False)
class ContractReport:
    """What the contract check found in one batch of rows.

    Attributes:
        contract: the contract checked against.
        source: where the rows came from (a file name), for messages.
        first_row: the 1-based row number of the batch's first row in ``source``.
        rows: the number of rows checked.
        strict_range: whether a value outside the range made its row invalid.
        matrix: the features as floats, shape ``(rows, features)`` in the contract's order,
            nan where a value is null or could not be read as its kind (float64, or the
            float32 matrix ``check_matrix`` was given).
        invalid: True for each row with at least one violation.
        missing_columns: features the batch lacks entirely (every row is then invalid).
        unknown_columns: columns of the batch the contract does not know (passed over).
        out_of_range: per feature with any, the values below the minimum and above the
            maximum, counted whether or not ``strict_range`` made them violations.
    """

    contract: DataContract
    source: str
    first_row: int
    rows: int
    strict_range: bool
    matrix: np.ndarray
    invalid: np.ndarray
    missing_columns: tuple[str, ...]
    unknown_columns: tuple[str, ...]
    out_of_range: dict[str, RangeCount]
    findings: tuple[_Finding, ...]

    @property
    def passed(self) -> bool:
        """True when no row is invalid and no column is missing."""
        return not self.missing_columns and not self.findings  # every finding marks rows

    @property
    def invalid_rows(self) -> int:
        """How many rows have at least one violation."""
        return int(np.count_nonzero(self.invalid))

    def counts(self) -> dict[str, dict[str, int]]:
        """Violations per column and kind: ``{column: {kind: count}}``."""
        counts: dict[str, dict[str, int]] = {}
        for name in self.missing_columns:
            counts.setdefault(name, {})[MISSING_COLUMN] = self.rows
        for finding in self.findings:
            name = self.contract.features[finding.feature].name
            per_kind = counts.setdefault(name, {})
            per_kind[finding.kind] = per_kind.get(finding.kind, 0) + len(finding.rows)
        return counts

    def violations(self, limit: int | None = None) -> list[Violation]:
        """The violations, missing columns first, then by row and by the contract's order.

        Args:
            limit: return at most this many (all when None).
        """
        found = [
            Violation(MISSING_COLUMN, name, None, None, self._missing_detail(name), self.source)
            for name in self.missing_columns
        ]
        if limit is not None and len(found) >= limit:
            return found[:limit]
        entries: list[tuple[int, int, int, _Finding, int]] = []
        order = {kind: i for i, kind in enumerate(VIOLATION_KINDS)}
        for finding in self.findings:
            rows = finding.rows if limit is None else finding.rows[:limit]
            entries.extend(
                (int(r), finding.feature, order[finding.kind], finding, i)
                for i, r in enumerate(rows.tolist())
            )
        entries.sort(key=lambda e: e[:3])
        if limit is not None:
            entries = entries[: limit - len(found)]
        found.extend(self._violation(finding, row, i) for row, _, _, finding, i in entries)
        return found

    def reasons(self) -> dict[int, str]:
        """Why each invalid row is invalid: batch-relative row index to its violations' details,
        joined with ``"; "`` (what a quarantine file records)."""
        per_row: dict[int, list[tuple[int, int, str]]] = {}
        order = {kind: i for i, kind in enumerate(VIOLATION_KINDS)}
        for finding in self.findings:
            for i, row in enumerate(finding.rows.tolist()):
                violation = self._violation(finding, row, i)
                text = f"{violation.column}: {violation.detail}"
                per_row.setdefault(row, []).append((finding.feature, order[finding.kind], text))
        reasons = {row: "; ".join(t for _, _, t in sorted(items)) for row, items in per_row.items()}
        if self.missing_columns:
            missing = "; ".join(f"{n}: {self._missing_detail(n)}" for n in self.missing_columns)
            for row in range(self.rows):
                reasons[row] = missing + ("; " + reasons[row] if row in reasons else "")
        return dict(sorted(reasons.items()))

    def raise_if_invalid(self, hint: str = "") -> None:
        """Raise ``ContractViolation`` when any row is invalid or a column is missing.

        Args:
            hint: a sentence added to the message (e.g. how to score the valid rows anyway).

        Raises:
            ContractViolation: naming the first violation's row and column.
        """
        if not self.passed:
            raise ContractViolation.from_report(self, hint)

    def to_dict(self, limit: int = 20) -> dict[str, Any]:
        """The report as JSON-able values, with at most ``limit`` violations listed."""
        return {
            "source": self.source,
            "first_row": self.first_row,
            "rows": self.rows,
            "invalid_rows": self.invalid_rows,
            "strict_range": self.strict_range,
            "missing_columns": list(self.missing_columns),
            "unknown_columns": list(self.unknown_columns),
            "out_of_range": {k: v.to_dict() for k, v in self.out_of_range.items()},
            "counts": self.counts(),
            "violations": [v.to_dict() for v in self.violations(limit)],
        }

    def _missing_detail(self, name: str) -> str:
        return _missing_detail(self.contract.feature(name))

    def _violation(self, finding: _Finding, row: int, index: int) -> Violation:
        spec = self.contract.features[finding.feature]
        if finding.values is not None:
            value = finding.values[index]
        else:
            value = _plain(self.matrix[row, finding.feature])
        return Violation(
            finding.kind,
            spec.name,
            self.first_row + row,
            None if finding.kind == NULL else value,
            _detail(finding.kind, spec, value),
            self.source,
        )


class ContractViolation(InputError):
    """Rows break a bundle's data contract; the message names the first row and column.

    Attributes:
        report: the full report of the batch, when there is one (a file that lacks a required
            column is refused from its header alone).
    """

    def __init__(self, message: str, report: ContractReport | None = None) -> None:
        super().__init__(message)
        self.report = report

    @classmethod
    def from_report(cls, report: ContractReport, hint: str = "") -> ContractViolation:
        """The exception for a report that did not pass, naming its first violation.

        Args:
            report: the report.
            hint: a sentence added to the message.
        """
        shown = report.violations(limit=1)
        first = shown[0].message if shown else f"{report.source}: rows break the contract"
        invalid = report.invalid_rows
        total = sum(sum(kinds.values()) for kinds in report.counts().values())
        more = ""
        if total > 1:
            more = f" ({total} violations in {invalid} invalid row{'s' if invalid != 1 else ''}"
            more += " of this batch)" if report.rows else ")"
        return cls(first + more + (f"; {hint}" if hint else ""), report)


def missing_columns(
    contract: DataContract, names: Sequence[str], *, source: str = ""
) -> list[Violation]:
    """The features a file's header (``names``) lacks, as violations, in the contract's order.

    Lets a reader refuse a file from its header alone, before any row is read.
    """
    present = set(names)
    return [
        Violation(MISSING_COLUMN, spec.name, None, None, _missing_detail(spec), source)
        for spec in contract.features
        if spec.name not in present
    ]


def _missing_detail(spec: FeatureSpec) -> str:
    return f"the column is missing; the contract requires it ({spec.kind})"


def check_columns(
    contract: DataContract,
    columns: Mapping[str, TypedColumn],
    *,
    rows: int | None = None,
    strict_range: bool = False,
    source: str = "",
    first_row: int = 1,
    ignore: Sequence[str] = (),
    dtype: type = np.float64,
) -> ContractReport:
    """Check a batch of typed columns against the contract.

    A value is a violation when it is null and the feature is not nullable, when it does not
    read as the feature's kind (text that is not a number; a fraction for an integer feature;
    anything but true/false/0/1 for a boolean one), or, with ``strict_range``, when it lies
    outside the contract's range. A feature the batch lacks is a missing column. Columns the
    contract does not know are listed in ``unknown_columns`` and otherwise passed over.

    A column the batch reader left as text (because some cell of the batch is not a number) is
    read cell by cell as the contract's kind, so only the cells that do not read are flagged:
    kinds are reconciled against the contract, not taken from the batch.

    Args:
        contract: the bundle's data contract.
        columns: the batch's columns by name, all of the same length.
        rows: the number of rows (needed when no column of the contract is present).
        strict_range: count a value outside the range as a violation, not only a warning.
        source: the file the rows come from, for messages.
        first_row: the 1-based row number of the batch's first row in ``source``.
        ignore: columns that are neither features nor unknown (an id column).
        dtype: the matrix's float type: float64, or float32 to check the values a float32
            model receives (see ``check_matrix``).

    Returns:
        The report; its ``matrix`` holds the features in the contract's order.

    Raises:
        ValueError: the columns are not all of the same length.
    """
    lengths = {len(column.values) for column in columns.values()}
    if rows is not None:
        lengths.add(rows)
    if len(lengths) > 1:
        raise ValueError(f"{source}: columns of different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    width = len(contract.features)
    data = np.full((n, width), np.nan, dtype=dtype)
    findings: list[_Finding] = []
    nulls: dict[int, np.ndarray] = {}
    missing_columns = []
    for j, spec in enumerate(contract.features):
        column = columns.get(spec.name)
        if column is None:
            missing_columns.append(spec.name)
            continue
        null = _coerce(spec, column, data[:, j], j, findings)
        if null is not None:
            nulls[j] = np.flatnonzero(null)
    known = {spec.name for spec in contract.features} | set(ignore)
    unknown = tuple(name for name in columns if name not in known)
    return _finish(
        contract, data, nulls, findings, missing_columns, unknown, strict_range, source, first_row
    )


def check_matrix(
    contract: DataContract,
    matrix: np.ndarray,
    *,
    strict_range: bool = False,
    source: str = "",
    first_row: int = 1,
) -> ContractReport:
    """Check a numeric matrix whose columns are the contract's features, in order.

    nan is a null. An integer feature must hold whole numbers, a boolean one 0 or 1. A float32
    or float64 matrix is checked as it is (the report's ``matrix`` is the same array unless a
    value had to be blanked); other dtypes are converted to float64. A float32 matrix is
    checked against the contract's range rounded to float32 (what a float32 model receives):
    no value inside the range is ever flagged.

    Args:
        contract: the bundle's data contract.
        matrix: shape ``(rows, features)``, any real or boolean dtype.
        strict_range: count a value outside the range as a violation.
        source: the file the rows come from, for messages.
        first_row: the 1-based row number of the first row in ``source``.

    Raises:
        ValueError: the matrix is not 2-D with one column per feature, or not numeric.
    """
    width = len(contract.features)
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise ValueError(
            f"{source}: expected a matrix of {width} columns (one per feature), "
            f"got shape {matrix.shape}"
        )
    if matrix.dtype.kind not in "fiub":
        raise ValueError(f"{source}: expected a numeric matrix, got dtype {matrix.dtype}")
    data = matrix if matrix.dtype.kind == "f" and matrix.itemsize in (4, 8) else None
    if data is None:
        data = matrix.astype(np.float64)
    n = data.shape[0]
    if 0 < n <= SMALL_BATCH and is_clean_batch(contract, data):
        return _clean_report(contract, data, strict_range, source, first_row)
    findings: list[_Finding] = []
    blanked: dict[int, np.ndarray] = {}
    copied = data is not matrix
    for j, spec in enumerate(contract.features):
        if spec.kind == "float" or not n:
            continue
        bad_rows = np.flatnonzero(~_fits_kind(spec.kind, data[:, j]))
        if bad_rows.size:
            values = tuple(_plain(v) for v in data[bad_rows, j])
            findings.append(_Finding(WRONG_TYPE, j, bad_rows, values))
            if not copied:
                data, copied = data.copy(), True
            data[bad_rows, j] = np.nan
            blanked[j] = bad_rows
    return _finish(contract, data, None, findings, [], (), strict_range, source, first_row, blanked)


T = TypeVar("T")


class _PerObject:
    """Values computed from objects that stay as they are (a contract, the bounds made from
    it), kept per those objects' identity: a scoring engine checks every request against the
    same contract, and hashing it would cost more than the check. An entry holds its objects,
    so no other object can take their ids while it is kept; at most 256 entries."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], tuple[tuple[object, ...], Any]] = {}

    def get(
        self, key: tuple[Any, ...], owners: tuple[object, ...], make: Callable[..., T], *args: Any
    ) -> T:
        """The value under ``key`` (the ids of ``owners``, then anything else it depends on),
        made by ``make(*args)`` the first time."""
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) > 256:
                self._entries.clear()
            entry = self._entries[key] = (owners, make(*args))
        return entry[1]


_BOUNDS = _PerObject()


def _bounds(contract: DataContract, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The contract's range per feature in ``dtype``, kept per contract object."""
    dtype = np.dtype(dtype)
    return _BOUNDS.get((id(contract), dtype.str), (contract,), _compute_bounds, contract, dtype)


class CleanCheck:
    """Whether a float matrix (columns in a contract's order, of one float type) is certainly
    clean: every value inside its range (so not nan: no null), whole where the feature is
    integer, 0 or 1 where it is boolean.

    A True answer means the full check would find nothing at all; False only means the full
    check must look (it finds and names what is wrong). This is the request path (the
    scoring engine's ``predict``, the agent's local API): a few numpy calls instead of the
    full bookkeeping. Make it once per contract and float type (:func:`clean_check`): what
    it compares against is prepared then, and a request's rows are judged with nothing
    else looked up.

    A few rows (``SMALL_BATCH`` at most) are compared value by value. Many rows are judged by
    their smallest and largest values, found by two reductions along lines of ``_LINE``
    values (rows side by side) and compared with the bounds repeated as often, the largest
    only when the smallest passed (no mask as large as the batch); a nan anywhere makes
    them nan, which compares False.
    """

    __slots__ = (
        "_floats_only",
        "_high",
        "_high_line",
        "_line",
        "_low",
        "_low_line",
        "_tile",
        "_whole",
    )

    def __init__(self, contract: DataContract, dtype: np.dtype) -> None:
        low, high = _bounds(contract, dtype)
        low, high = low.copy(), high.copy()
        finite = np.finfo(dtype)
        whole = [j for j, f in enumerate(contract.features) if f.kind != "float"]
        for j, spec in enumerate(contract.features):
            if spec.kind == "boolean":
                low[j], high[j] = max(low[j], 0), min(high[j], 1)
            elif spec.kind == "integer":  # inf is no whole number
                low[j], high[j] = max(low[j], finite.min), min(high[j], finite.max)
        width = len(contract.features)
        low.flags.writeable = high.flags.writeable = False  # shared by every request
        self._low, self._high = low, high
        self._tile = max(1, _LINE // max(width, 1))
        self._line = self._tile * width
        self._low_line, self._high_line = _tiled(low, high, self._tile)
        self._whole: np.ndarray | None = (  # None: every feature is integer or boolean
            None if len(whole) == width else np.array(whole, dtype=np.intp)
        )
        self._floats_only = not whole

    def __call__(self, data: np.ndarray) -> bool:
        """Whether ``data`` (rows, features) of this check's float type is certainly clean."""
        return self._inside(data) and (self._floats_only or self._whole_where_needed(data))

    def _inside(self, data: np.ndarray) -> bool:
        """Whether every value lies within its feature's bounds (nan does not: it compares
        False, without a warning; only ordering nan in a sort warns)."""
        n = data.shape[0]
        if n <= SMALL_BATCH:
            return bool(((data >= self._low) & (data <= self._high)).all())
        if not self._line or not data.flags.c_contiguous:  # column by column
            return bool(
                (data.min(axis=0) >= self._low).all() and (data.max(axis=0) <= self._high).all()
            )
        aligned = n - n % self._tile
        if aligned:
            lines = (data if aligned == n else data[:aligned]).reshape(-1, self._line)
            if not (lines.min(axis=0) >= self._low_line).all():
                return False
            if not (lines.max(axis=0) <= self._high_line).all():
                return False
        if aligned == n:
            return True
        rest = data[aligned:]
        return bool(((rest >= self._low) & (rest <= self._high)).all())

    def _whole_where_needed(self, data: np.ndarray) -> bool:
        """Whether the integer and boolean columns hold whole numbers only (the values are
        known to be inside their bounds, which are finite for such columns)."""
        picked = data if self._whole is None else data[:, self._whole]
        return bool((picked == np.rint(picked)).all())


_CLEAN_CHECKS = _PerObject()


def clean_check(contract: DataContract, dtype: np.dtype | type) -> CleanCheck:
    """The :class:`CleanCheck` of a contract for matrices of ``dtype``, kept per contract."""
    dtype = np.dtype(dtype)
    return _CLEAN_CHECKS.get((id(contract), dtype.str), (contract,), CleanCheck, contract, dtype)


def is_clean_batch(contract: DataContract, data: np.ndarray) -> bool:
    """Whether a float matrix of any number of rows (columns in the contract's order) is
    certainly clean (:class:`CleanCheck`)."""
    return clean_check(contract, data.dtype)(data)


def _clean_report(
    contract: DataContract, data: np.ndarray, strict_range: bool, source: str, first_row: int
) -> ContractReport:
    return ContractReport(
        contract=contract,
        source=source,
        first_row=first_row,
        rows=data.shape[0],
        strict_range=strict_range,
        matrix=data,
        invalid=np.zeros(data.shape[0], dtype=np.bool_),
        missing_columns=(),
        unknown_columns=(),
        out_of_range={},
        findings=(),
    )


def _compute_bounds(contract: DataContract, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The contract's range per feature in ``dtype`` (±inf where none).

    Rounded to nearest: rounding is monotonic, so a value inside the range stays inside it in
    float32; only a value outside it by less than float32's precision passes.
    """
    low = np.array([-np.inf if s.minimum is None else s.minimum for s in contract.features])
    high = np.array([np.inf if s.maximum is None else s.maximum for s in contract.features])
    with np.errstate(over="ignore"):
        low, high = low.astype(dtype), high.astype(dtype)
    low.flags.writeable = high.flags.writeable = False  # cached: shared by every call
    return low, high


def _finish(
    contract: DataContract,
    data: np.ndarray,
    nulls: dict[int, np.ndarray] | None,
    findings: list[_Finding],
    missing_columns: list[str],
    unknown: tuple[str, ...],
    strict_range: bool,
    source: str,
    first_row: int,
    blanked: dict[int, np.ndarray] | None = None,
) -> ContractReport:
    """Nulls and ranges over the whole batch; then which rows are invalid.

    ``data`` is ``(rows, features)`` with nan where a value is null or unreadable. ``nulls``
    holds, per feature that has any, its null rows; None means every nan is a null except the
    ``blanked`` cells (unreadable values already in ``findings``).

    One pass over the batch finds the rows with a nan or a value outside the range; only those
    rows are looked at again, so a clean batch costs two comparisons per value.
    """
    n, width = data.shape
    out_of_range: dict[str, RangeCount] = {}
    nan_cells: dict[int, np.ndarray] = {}
    if n and width:
        low, high = _bounds(contract, data.dtype)
        rows = _rows_to_look_at(data, low, high)
        if rows.size:
            r, c = np.nonzero(~_within(data[rows], low, high))
            values = data[rows[r], c]
            nan = np.isnan(values)
            with np.errstate(invalid="ignore"):
                below = ~nan & (values < low[c])
            above = ~nan & ~below
            if nulls is None:
                for j in np.unique(c[nan]).tolist():
                    cells = rows[r[nan & (c == j)]]
                    if blanked and j in blanked:
                        cells = np.setdiff1d(cells, blanked[j], assume_unique=True)
                    if cells.size:
                        nan_cells[j] = cells
            below_counts = np.bincount(c[below], minlength=width)
            above_counts = np.bincount(c[above], minlength=width)
            for j in np.flatnonzero(below_counts + above_counts).tolist():
                spec = contract.features[j]
                out_of_range[spec.name] = RangeCount(
                    int(below_counts[j]), int(above_counts[j]), spec.minimum, spec.maximum
                )
                if strict_range:
                    cells = np.sort(rows[r[(below | above) & (c == j)]])
                    findings.append(_Finding(OUT_OF_RANGE, j, cells, None))
    for j, null_rows in sorted((nan_cells if nulls is None else nulls).items()):
        if not contract.features[j].nullable and null_rows.size:
            findings.append(_Finding(NULL, j, null_rows, None))
    invalid = np.zeros(n, dtype=np.bool_)
    if missing_columns:
        invalid[:] = True
    for finding in findings:
        invalid[finding.rows] = True
    return ContractReport(
        contract=contract,
        source=source,
        first_row=first_row,
        rows=n,
        strict_range=strict_range,
        matrix=data,
        invalid=invalid,
        missing_columns=tuple(missing_columns),
        unknown_columns=unknown,
        out_of_range=out_of_range,
        findings=tuple(findings),
    )


SMALL_BATCH = 16
_LINE = 1024  # values compared side by side per line in a batch of many rows
_BLOCK_ROWS = 4096  # rows compared at once in a batch of many: masks of 128 KiB at 32 features
_ALL_TRUE = np.uint64(0x0101010101010101)  # eight numpy booleans, all True, as one word
_EIGHT = np.arange(8)


def _rows_to_look_at(data: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The rows with a cell outside ``[low, high]`` or nan, in order.

    Rows are compared ``_LINE`` values at a time, laid side by side against the bounds
    repeated as often, so numpy's inner loops run along long lines rather than along each
    short row. A block of ``_BLOCK_ROWS`` rows at a time goes through the same two small
    masks (no fresh pages per batch, and the block is read twice while it is in cache);
    the masks are combined and searched for a cell that is not True eight cells (one
    machine word) at a time.
    """
    n, width = data.shape
    if n <= SMALL_BATCH or not data.flags.c_contiguous:
        return np.flatnonzero(~_within(data, low, high).all(axis=1))
    tile = max(1, _LINE // width)
    group = 8 * tile  # rows whose cells fill whole machine words, in whole lines
    block = max(group, _BLOCK_ROWS // group * group)
    aligned = n // group * group
    found: list[np.ndarray] = []
    if aligned:
        low_line, high_line = _bound_lines(low, high, tile)
        size = min(block, aligned) * width
        at_least, at_most = np.empty(size, dtype=np.bool_), np.empty(size, dtype=np.bool_)
        with np.errstate(invalid="ignore"):
            for start in range(0, aligned, block):
                stop = min(start + block, aligned)
                cells = (stop - start) * width
                lines = data[start:stop].reshape(-1, tile * width)
                np.greater_equal(lines, low_line, out=at_least[:cells].reshape(lines.shape))
                np.less_equal(lines, high_line, out=at_most[:cells].reshape(lines.shape))
                words = at_least[:cells].view(np.uint64)
                words &= at_most[:cells].view(np.uint64)
                bad_words = np.flatnonzero(words != _ALL_TRUE)
                if bad_words.size:
                    candidates = (bad_words[:, None] * 8 + _EIGHT).ravel()
                    found.append(start + candidates[~at_least[candidates]] // width)
    if aligned < n:
        rest = _within(data[aligned:], low, high)
        found.append(aligned + np.flatnonzero(~rest.all(axis=1)))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.intp)


_LINES = _PerObject()


def _bound_lines(low: np.ndarray, high: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """``low`` and ``high`` repeated ``tile`` times, kept per pair of bounds (those of
    :func:`_bounds`, the same arrays for every batch checked against one contract)."""
    return _LINES.get((id(low), id(high), tile), (low, high), _tiled, low, high, tile)


def _tiled(low: np.ndarray, high: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    lines = np.tile(low, tile), np.tile(high, tile)
    for line in lines:
        line.flags.writeable = False  # shared by every batch, on every thread
    return lines


def _within(data: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Which cells lie within ``[low, high]`` (nan does not)."""
    with np.errstate(invalid="ignore"):
        return (data >= low) & (data <= high)


def _plain(value: Any) -> Any:
    """A numpy number as the Python number it prints as (float32 in its shortest form)."""
    if isinstance(value, np.float32):
        return float(str(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fits_kind(kind: str, values: np.ndarray) -> np.ndarray:
    """Which values are of the feature's kind (nan counts as fitting: it is a null)."""
    with np.errstate(invalid="ignore"):
        if kind == "integer":
            return np.isnan(values) | (np.isfinite(values) & (values == np.round(values)))
        if kind == "boolean":
            return np.isnan(values) | (values == 0.0) | (values == 1.0)
    return np.ones(values.shape, dtype=np.bool_)


def _coerce(
    spec: FeatureSpec, column: TypedColumn, out: np.ndarray, j: int, findings: list[_Finding]
) -> np.ndarray | None:
    """Write one column into ``out`` as floats, nan where null or unreadable.

    A value that is not of the feature's kind is added to ``findings``.

    Returns:
        The column's null mask, or None when it has no null.
    """
    missing = np.asarray(column.missing, dtype=np.bool_)
    values = column.values
    if column.kind == "string":
        bad = _coerce_text(spec.kind, values, missing, out)
    elif column.kind == "boolean" and spec.kind != "boolean":
        rows = np.flatnonzero(~missing)
        bad = (rows, tuple(values[rows].tolist())) if rows.size else None
    else:
        out[:] = values
        if column.kind == "float":
            missing = missing | np.isnan(out)
        elif missing.any():
            out[missing] = np.nan
        bad = None
        if spec.kind != "float":
            rows = np.flatnonzero(~_fits_kind(spec.kind, out))
            if rows.size:
                bad = (rows, tuple(_plain(v) for v in values[rows]))
                out[rows] = np.nan
    if bad is not None:
        findings.append(_Finding(WRONG_TYPE, j, bad[0], bad[1]))
    return missing if missing.any() else None


def _coerce_text(
    kind: str, values: np.ndarray, missing: np.ndarray, out: np.ndarray
) -> tuple[np.ndarray, tuple[Any, ...]] | None:
    """Read text cells one by one as the feature's kind; return the ones that do not read."""
    bad_rows: list[int] = []
    bad_values: list[Any] = []
    for i in np.flatnonzero(~missing).tolist():
        text = values[i]
        number = _read_text(kind, text)
        if number is None:
            bad_rows.append(i)
            bad_values.append(text)
        else:
            out[i] = number
    if not bad_rows:
        return None
    return np.array(bad_rows, dtype=np.int64), tuple(bad_values)


def _read_text(kind: str, text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    if kind == "boolean":
        return _BOOLEAN_TEXT.get(text.strip().lower())
    if not _NUMBER_TEXT.fullmatch(text):
        return None
    number = float(text)
    if kind == "integer" and not (math.isfinite(number) and number == round(number)):
        return None
    return number


def _detail(kind: str, spec: FeatureSpec, value: Any) -> str:
    if kind == WRONG_TYPE:
        return f"{value!r} is not {_EXPECTED[spec.kind]} (the contract says {spec.kind})"
    if kind == NULL:
        return "no value, and the contract does not allow nulls"
    if kind == OUT_OF_RANGE:
        low, high = spec.minimum, spec.maximum
        where = (
            f"below the contract's minimum {low!r}"
            if low is not None and value < low
            else f"above the contract's maximum {high!r}"
        )
        return f"{value!r} is {where} (validation range [{low!r}, {high!r}])"
    raise ValueError(f"unknown violation kind {kind!r}")  # pragma: no cover


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
