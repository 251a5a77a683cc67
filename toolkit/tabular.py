"""Read a whole tabular file (CSV, TSV, JSON Lines, Parquet) into typed columns.

``read_table`` picks the reader by the file's extension and returns a ``Table`` of ``Column``
objects, each with one of four kinds: ``integer`` (int64), ``float`` (float64), ``boolean`` or
``string`` (object array of ``str``), plus a mask of the cells that are null.

The kind of a text column (CSV, TSV, JSON Lines) is inferred by ``infer_column``, a pure function
of the column's raw values; it holds no state between calls, so a batch reader can apply it to
each batch. The rules:

- A cell is null when it is ``None`` or, once stripped of surrounding blanks, one of
  ``NULL_TOKENS``: ``""``, ``"NA"``, ``"N/A"``, ``"null"``, ``"NULL"``, ``"NaN"``, ``"nan"``
  (compared case-sensitively: ``"Null"`` is text).
- ``integer`` when every other cell is a base-10 integer with an optional sign (``"+3"``,
  ``"-3"``; not ``"3.0"``, not ``"1_000"``) that fits in int64. A null does not turn an integer
  column into a float one: the column stays ``integer`` and the mask marks the null.
- else ``float`` when every other cell is a decimal number (``"1.5"``, ``".5"``, ``"1e3"``) or
  an infinity (``"inf"``, ``"-Infinity"``, any case);
- else ``boolean`` when every other cell is ``true`` or ``false``, in any case;
- else ``string``. String values keep their blanks; numbers and booleans ignore them.
- A column whose every cell is null (or that has no cells) is ``float``, all missing.

JSON Lines values are turned into their text form first (``true``/``false`` for JSON booleans,
``None`` for JSON null) and go through the same rules, so a column that mixes JSON numbers and
strings that are not numbers becomes ``string``. Parquet columns keep their stored types (see
``read_table``).

What this module leaves to others: which columns are features and which is the target, the
data contract and its invalid rows (DESIGN.md, "Invalid rows"), and writing files. It imports
numpy and the standard library only; pyarrow is imported lazily, for Parquet alone.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import gc
import itertools
import json
import math
import operator
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeml.toolkit.errors import InputError

ColumnKind = Literal["integer", "float", "boolean", "string"]

NULL_TOKENS: frozenset[str] = frozenset({"", "NA", "N/A", "null", "NULL", "NaN", "nan"})
"""Cell texts (after stripping surrounding blanks) that mean "no value"."""

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
"""File extensions ``read_table`` reads, compared case-insensitively."""

_DTYPES: dict[str, np.dtype] = {
    "integer": np.dtype(np.int64),
    "float": np.dtype(np.float64),
    "boolean": np.dtype(np.bool_),
    "string": np.dtype(object),
}

# A character outside these sets rules a column out of the kind at once; within them, numpy's
# parser decides, which there agrees with Python's int() and float(). Together they accept
# exactly optional blanks, an optional sign, then ASCII digits (or, for floats, a decimal number
# with an optional exponent, or inf/infinity), then optional blanks: _FLOAT_TEXT, which finds
# the offending value for an error message.
_NOT_INTEGER_CHARS = re.compile(r"[^0-9+\- \t\n]")
_NOT_FLOAT_CHARS = re.compile(r"[^0-9+\-.eE \t\niInNfFtTyY]")
_FLOAT_TEXT = re.compile(
    r"[ \t\n]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity)[ \t\n]*",
    re.IGNORECASE,
)
_NULL_CELLS = frozenset({None, *NULL_TOKENS})
_BLANK = re.compile(r"[^\S\n]")  # whitespace other than the line breaks that join the cells
_BOOLEAN_TEXTS = {"true": True, "false": False}

_LISTED_NAMES = 20  # column names an "unknown column" message lists before it says "and N more"


@dataclass(frozen=True, eq=False)
class Column:
    """One typed column of a table.

    Attributes:
        name: The column's name, as the file spells it.
        kind: ``integer``, ``float``, ``boolean`` or ``string``.
        values: A 1-D array: int64, float64, bool or object (``str``) by ``kind``. Where a cell
            is null the slot holds 0, nan, False or ``""``.
        missing: A 1-D bool array, True where the cell is null.
        source: The file the column was read from, for error messages (``""`` if none).
        first_row: The 1-based data-row number of ``values[0]`` in ``source``, for error
            messages; more than 1 when the column holds a later batch of the file.

    Columns compare by identity (``eq=False``): numpy arrays have no single truth value.
    """

    name: str
    kind: ColumnKind
    values: np.ndarray
    missing: np.ndarray
    source: str = ""
    first_row: int = 1

    def __post_init__(self) -> None:
        expected = _DTYPES.get(self.kind)
        if expected is None:
            raise ValueError(f"column {self.name!r}: unknown kind {self.kind!r}")
        if self.values.ndim != 1 or self.values.dtype != expected:
            raise ValueError(
                f"column {self.name!r} of kind {self.kind!r} needs a 1-D {expected} array, "
                f"got {self.values.ndim}-D {self.values.dtype}"
            )
        if self.missing.dtype != np.bool_ or self.missing.shape != self.values.shape:
            raise ValueError(
                f"column {self.name!r}: missing must be a bool array of shape "
                f"{self.values.shape}, got {self.missing.dtype} {self.missing.shape}"
            )

    def __len__(self) -> int:
        return len(self.values)

    def as_float64(self) -> np.ndarray:
        """The column as a new float64 array, with nan where a cell is null.

        Booleans become 1.0 and 0.0. A string column converts when every non-null value is a
        number in the text form ``infer_column`` accepts.

        Returns:
            A new, writeable float64 array as long as the column.

        Raises:
            InputError: The column is a string column with a value that is not a number; the
                message names the column, the file, the row and the value.
        """
        if self.kind == "string":
            present = ~self.missing
            texts = self.values[present].tolist()
            parsed = _parse_floats(texts, "\n".join(texts))
            if parsed is None:
                index, value = _first_non_float(self.values, self.missing)
                raise InputError(
                    f"{_location(self.source, row=self.first_row + index, column=self.name)}: "
                    f"{value!r} is not a number (the column holds text)"
                )
            out = np.full(len(self.values), np.nan)
            out[present] = parsed
            return out
        out = self.values.astype(np.float64)
        out[self.missing] = np.nan
        return out


@dataclass(frozen=True)
class Table:
    """A file's columns, all of the same length, with unique names in file order.

    Attributes:
        source: The file the table was read from (as given to ``read_table``).
        columns: The columns, in file order.
    """

    source: str
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        lengths = {len(c) for c in self.columns}
        if len(lengths) > 1:
            raise ValueError(f"{self.source}: columns of different lengths {sorted(lengths)}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"{self.source}: duplicate column names {duplicates}")

    @property
    def n_rows(self) -> int:
        """The number of data rows (0 for a table without columns)."""
        return len(self.columns[0]) if self.columns else 0

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in file order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """The column called ``name``.

        Raises:
            InputError: No column has that name; the message names the file and lists the
                columns it has.
        """
        for c in self.columns:
            if c.name == name:
                return c
        raise self._unknown_column(name)

    def drop(self, name: str) -> Table:
        """This table without the column called ``name``.

        Raises:
            InputError: No column has that name.
        """
        self.column(name)
        return Table(self.source, tuple(c for c in self.columns if c.name != name))

    def select(self, names: Iterable[str]) -> Table:
        """A table of the named columns, in the order given.

        Raises:
            InputError: A name is unknown or given twice.
        """
        wanted = list(names)
        repeated = sorted({n for n in wanted if wanted.count(n) > 1})
        if repeated:
            raise InputError(f"{self.source}: columns selected more than once: {repeated}")
        return Table(self.source, tuple(self.column(n) for n in wanted))

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` (0-based; negative counts from the end) as ``{name: value}``.

        Values are Python ``int``, ``float``, ``bool`` or ``str``; a null cell is ``None``.

        Raises:
            IndexError: ``i`` is outside the table.
        """
        n = self.n_rows
        if not -n <= i < n:
            raise IndexError(f"row index {i} out of range for {n} rows of {self.source}")
        return {c.name: _cell(c, i) for c in self.columns}

    def _unknown_column(self, name: str) -> InputError:
        names = self.names
        if not names:
            return InputError(f"{self.source} has no column {name!r}; it has no columns at all")
        listed = ", ".join(repr(n) for n in names[:_LISTED_NAMES])
        if len(names) > _LISTED_NAMES:
            listed += f" and {len(names) - _LISTED_NAMES} more"
        hint = ""
        folded = [n for n in names if n.strip().casefold() == name.strip().casefold()]
        close = folded or difflib.get_close_matches(name, names, n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
        return InputError(f"{self.source} has no column {name!r}{hint}; its columns are: {listed}")


def infer_column(
    name: str, raw: Sequence[str | None], *, source: str, first_row: int = 1
) -> Column:
    """Type one column of raw cell texts (see the module docstring for the rules).

    Pure: the result depends on the arguments only, so a batch reader can call it per batch
    (a later batch may then infer another kind for the same column; reconciling is its job).

    Args:
        name: The column's name.
        raw: The cells, top to bottom; ``None`` is a null.
        source: The file the cells come from, kept for error messages.
        first_row: The 1-based data-row number of ``raw[0]`` in ``source``.

    Returns:
        The typed column; its arrays are read-only.
    """
    # Fast path: look the cells up as they are; only when some cell holds a blank or a line
    # break (a string column, mostly) strip every cell before looking it up.
    nulls = list(map(_NULL_CELLS.__contains__, raw))
    present = list(itertools.compress(raw, map(operator.not_, nulls)))
    joined = "\n".join(present)
    if _BLANK.search(joined) or joined.count("\n") > len(present) - 1:
        nulls = [v is None or v.strip() in NULL_TOKENS for v in raw]
        present = list(itertools.compress(raw, map(operator.not_, nulls)))
        joined = "\n".join(present)
    missing = np.array(nulls, dtype=np.bool_)
    kind: ColumnKind
    if not present:
        kind, values = "float", np.full(len(raw), np.nan)
    elif (parsed := _parse_integers(present, joined)) is not None:
        kind, values = "integer", _spread(parsed, missing, np.int64, 0)
    elif (parsed := _parse_floats(present, joined)) is not None:
        kind, values = "float", _spread(parsed, missing, np.float64, np.nan)
    elif (parsed := _parse_booleans(present)) is not None:
        kind, values = "boolean", _spread(parsed, missing, np.bool_, False)
    else:
        kind, values = "string", np.array(raw, dtype=object)
        values[missing] = ""
    values.flags.writeable = False
    missing.flags.writeable = False
    return Column(name, kind, values, missing, source=source, first_row=first_row)


def read_table(path: str | os.PathLike[str], *, max_rows: int | None = None) -> Table:
    """Read a whole tabular file into typed columns, choosing the reader by its extension.

    - ``.csv`` and ``.tsv`` (tab-separated): the first line is the header; fields may be quoted
      the usual way (commas, doubled quotes and line breaks inside quotes). A UTF-8 byte
      order mark is dropped. Blank lines at the end are ignored; a blank line between rows is
      skipped, except in a one-column file, where it is a null cell.
    - ``.jsonl`` and ``.ndjson``: one JSON object per line; columns in order of first
      appearance; a key absent from a row is null; blank lines are skipped.
    - ``.parquet`` (needs pyarrow, ``pip install 'edgeml[server]'``): integer types become
      ``integer`` (an unsigned column beyond int64 becomes ``float``), floating and decimal
      types ``float`` (NaN counts as null, as in text files), ``bool`` ``boolean``, strings
      ``string``; dictionary columns are decoded, and dates, times and timestamps become
      ``string`` in ISO form. Other types (lists, structs, binary) are refused.

    Args:
        path: The file.
        max_rows: Read at most this many data rows (all if ``None``).

    Returns:
        The table; its ``source`` is ``str(path)``.

    Raises:
        InputError: The file is missing, empty, not UTF-8, of an unsupported type, or
            malformed; the message names the file and, where it applies, the row (1-based data
            row, plus the physical line for text files) and the column.
        ValueError: ``max_rows`` is negative.
    """
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be at least 0, got {max_rows}")
    source = os.fspath(path)
    suffix = Path(source).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        what = f"file type {suffix!r}" if suffix else "file without an extension"
        raise InputError(
            f"{source}: unsupported {what}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not os.path.exists(source):
        raise InputError(f"{source}: no such file")
    if os.path.isdir(source):
        raise InputError(f"{source} is a folder, not a file")
    try:
        if os.path.getsize(source) == 0:
            raise InputError(f"{source} is empty")
        if suffix == ".parquet":
            return _read_parquet(source, max_rows)
        if suffix == ".jsonl" or suffix == ".ndjson":
            return _read_json_lines(source, max_rows)
        return _read_delimited(source, "\t" if suffix == ".tsv" else ",", max_rows)
    except UnicodeDecodeError:
        raise _utf8_error(source) from None
    except OSError as e:
        raise InputError(f"{source}: cannot read: {e.strerror or e}") from e


# --- type inference ------------------------------------------------------------------------


def _parse_integers(present: list[str], joined: str) -> np.ndarray | None:
    """``present`` as int64, or None if a value is not an integer; ``joined`` is its text."""
    if _NOT_INTEGER_CHARS.search(joined):
        return None
    return _convert(present, joined, np.int64)


def _parse_floats(present: list[str], joined: str) -> np.ndarray | None:
    """``present`` as float64, or None if a value is not a number; ``joined`` is its text."""
    if _NOT_FLOAT_CHARS.search(joined):
        return None
    return _convert(present, joined, np.float64)


def _convert(present: list[str], joined: str, dtype: type) -> np.ndarray | None:
    """Convert texts whose characters were checked; None if one does not convert.

    numpy's C parser behind ``loadtxt`` is several times faster than ``np.array(texts,
    dtype)``, which calls ``int()`` or ``float()`` per value, but it takes no line break inside
    a value; such columns take the slow way.
    """
    try:
        if joined.count("\n") == len(present) - 1:
            out = np.loadtxt(present, dtype=dtype, delimiter=",", comments=None, ndmin=1)
            if len(out) == len(present):
                return out
        return np.array(present, dtype=dtype)
    except (ValueError, OverflowError):  # a stray sign, an inner blank, beyond int64
        return None


def _parse_booleans(present: list[str]) -> np.ndarray | None:
    lookup = {}
    for text in set(present):
        value = _BOOLEAN_TEXTS.get(text.strip().lower())
        if value is None:
            return None
        lookup[text] = value
    return np.fromiter(map(lookup.__getitem__, present), dtype=np.bool_, count=len(present))


def _spread(parsed: np.ndarray, missing: np.ndarray, dtype: type, fill: object) -> np.ndarray:
    """Place the parsed non-null values back among the null slots."""
    if not missing.any():
        return parsed.astype(dtype, copy=False)
    values = np.full(len(missing), fill, dtype=dtype)
    values[~missing] = parsed
    return values


def _first_non_float(values: np.ndarray, missing: np.ndarray) -> tuple[int, str]:
    """The index and value of the first non-null cell that is not a number."""
    for i, (value, null) in enumerate(zip(values, missing, strict=True)):
        if not null and not (isinstance(value, str) and _FLOAT_TEXT.fullmatch(value)):
            return i, value
    return 0, values[0]  # pragma: no cover - _FLOAT_TEXT accepts only what float() accepts


def _cell(column: Column, i: int) -> Any:
    if column.missing[i]:
        return None
    value = column.values[i]
    return value if column.kind == "string" else value.item()


# --- readers -------------------------------------------------------------------------------


def _read_delimited(source: str, delimiter: str, max_rows: int | None) -> Table:
    with _gc_paused(), open(source, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise InputError(f"{source}, line 1 (the header): {e}") from None
        if header is None:
            raise InputError(f"{source} is empty")
        if not header:
            raise InputError(
                f"{source}, line 1: blank; the first line must be a header naming the columns"
            )
        check_names(f"{source}, line 1 (the header)", header, "field")
        width = len(header)
        separated = "tab-separated" if delimiter == "\t" else "comma-separated"
        rows: list[list[str | None]] = []
        blank_lines: list[int] = []  # blank lines not yet known to be trailing
        last_line = reader.line_num
        while max_rows is None or len(rows) < max_rows:
            start = last_line + 1
            try:
                fields = next(reader, None)
            except csv.Error as e:
                pending = len(blank_lines) if width == 1 else 0
                where = _location(source, row=len(rows) + pending + 1, line=start)
                raise InputError(f"{where}: {e}") from None
            if fields is None:
                break
            last_line = reader.line_num
            if not fields:
                blank_lines.append(start)
                continue
            if blank_lines:
                if width == 1:
                    rows.extend([None] for _ in blank_lines)
                    if max_rows is not None and len(rows) >= max_rows:
                        del rows[max_rows:]
                        break
                blank_lines.clear()
            if len(fields) != width:
                where = _location(source, row=len(rows) + 1, line=start)
                raise InputError(
                    f"{where}: {len(fields)} fields, but the header has {width} ({separated})"
                )
            rows.append(fields)  # type: ignore[arg-type]
        cells: list[Sequence[str | None]] = (
            list(zip(*rows, strict=True)) if rows else [() for _ in header]
        )
        del rows
    return Table(
        source,
        tuple(
            infer_column(name, raw, source=source) for name, raw in zip(header, cells, strict=True)
        ),
    )


def _read_json_lines(source: str, max_rows: int | None) -> Table:
    columns: dict[str, list[Any]] = {}  # the JSON values, None where null or absent
    chunk: list[dict[str, Any]] = []  # objects not yet spread into columns
    n = 0

    def spread() -> None:
        for key, cells in columns.items():
            cells.extend([obj.get(key) for obj in chunk])
        chunk.clear()

    with _gc_paused(), open(source, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if max_rows is not None and n >= max_rows:
                break
            if line.isspace():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                where = _location(source, row=n + 1, line=line_no)
                raise InputError(
                    f"{where}: not valid JSON ({e.msg} at character {e.colno})"
                ) from None
            if type(obj) is not dict:
                where = _location(source, row=n + 1, line=line_no)
                raise InputError(
                    f"{where}: expected a JSON object ({{...}}), got a JSON {json_type(obj)}"
                )
            if not obj.keys() <= columns.keys():
                for key in obj:
                    if key not in columns:
                        if not key.strip():
                            where = _location(source, row=n + 1, line=line_no)
                            raise InputError(f"{where}: a key is empty; every column needs a name")
                        columns[key] = [None] * (n - len(chunk))
            chunk.append(obj)
            n += 1
            if len(chunk) == 4096:
                spread()
        spread()
    if not columns:
        raise InputError(f"{source} is empty: it holds no JSON objects")
    return Table(
        source, tuple(_json_column(source, name, cells) for name, cells in columns.items())
    )


def _json_column(source: str, name: str, cells: list[Any]) -> Column:
    """Type a column of JSON values as ``infer_column`` types their text forms.

    Columns of JSON numbers or booleans take a short cut to the same result; any column that
    holds a JSON string goes through ``infer_column``.
    """
    types = set(map(type, cells))
    for nested in (dict, list):
        if nested in types:
            row = next(i for i, v in enumerate(cells, start=1) if type(v) is nested)
            where = _location(source, row=row, line=_json_line_of_row(source, row), column=name)
            raise InputError(
                f"{where}: a JSON {json_type(nested())} is not a table cell (nested values are "
                "not supported; flatten them into columns)"
            )
    types.discard(type(None))
    if types == {int, float} and all(
        math.isnan(v) for v in cells if type(v) is float
    ):  # JSON NaN is a null: integers with NaNs are an integer column with nulls
        cells = [None if type(v) is float else v for v in cells]
        types = {int}
    kind: ColumnKind | None = None
    if types == {int}:
        missing = np.fromiter(
            map(operator.is_, cells, itertools.repeat(None)), np.bool_, len(cells)
        )
        try:
            values = np.array([0 if v is None else v for v in cells], dtype=np.int64)
            kind = "integer"
        except OverflowError:
            pass  # beyond int64: the text path makes it float
    elif types == {int, float} or types == {float}:
        kind, values = "float", np.array(cells, dtype=np.float64)  # None becomes nan
        missing = np.isnan(values)
    elif types == {bool}:
        kind = "boolean"
        missing = np.fromiter(
            map(operator.is_, cells, itertools.repeat(None)), np.bool_, len(cells)
        )
        values = np.fromiter(map(operator.is_, cells, itertools.repeat(True)), np.bool_, len(cells))
    if kind is None:
        raw = cells if types <= {str} else list(map(_json_text, cells))
        return infer_column(name, raw, source=source)
    values.flags.writeable = False
    missing.flags.writeable = False
    return Column(name, kind, values, missing, source=source)


def _json_line_of_row(source: str, row: int) -> int:
    """The line of the ``row``-th object of a JSON Lines file (blank lines do not count)."""
    with open(source, encoding="utf-8-sig") as f:
        objects = 0
        for line_no, line in enumerate(f, start=1):
            if not line.isspace():
                objects += 1
                if objects == row:
                    return line_no
    raise AssertionError(f"{source} has no row {row}")  # pragma: no cover


def _read_parquet(source: str, max_rows: int | None) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            f"{source}: reading Parquet needs pyarrow: pip install 'edgeml[server]'"
        ) from None
    try:
        parquet = pq.ParquetFile(source)
        if max_rows is None:
            table = parquet.read()
        else:
            batches = []
            remaining = max_rows
            if remaining > 0:
                for batch in parquet.iter_batches(batch_size=min(max_rows, 65_536)):
                    batches.append(batch.slice(0, remaining))
                    remaining -= batches[-1].num_rows
                    if remaining <= 0:
                        break
            table = pa.Table.from_batches(batches, schema=parquet.schema_arrow)
    except (pa.ArrowException, ValueError) as e:
        raise InputError(f"{source} is not a readable Parquet file: {e}") from None
    check_names(source, table.column_names, "column")
    return Table(
        source,
        tuple(
            _arrow_column(pa, source, name, table.column(i))
            for i, name in enumerate(table.column_names)
        ),
    )


def _arrow_column(pa: Any, source: str, name: str, data: Any) -> Column:
    import pyarrow.compute as pc

    types = pa.types
    if types.is_dictionary(data.type):
        data = data.cast(data.type.value_type)
    kind: ColumnKind
    if types.is_null(data.type):
        kind = "float"
        values = np.full(len(data), np.nan)
        missing = np.ones(len(data), dtype=np.bool_)
    else:
        missing = np.asarray(data.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
        if types.is_boolean(data.type):
            kind, values = "boolean", pc.fill_null(data, False).to_numpy(zero_copy_only=False)
        elif types.is_integer(data.type):
            try:
                kind, values = "integer", pc.fill_null(data.cast(pa.int64()), 0).to_numpy()
            except pa.ArrowInvalid:  # unsigned values beyond int64: float, rounded
                kind = "float"
                values = pc.fill_null(data.cast(pa.float64(), safe=False), np.nan).to_numpy()
        elif types.is_floating(data.type) or types.is_decimal(data.type):
            kind = "float"
            values = pc.fill_null(data.cast(pa.float64(), safe=False), np.nan).to_numpy()
            missing |= np.isnan(values)
        elif _is_arrow_text(types, data.type) or types.is_temporal(data.type):
            try:
                text = data.cast(pa.string()) if not types.is_string(data.type) else data
            except pa.ArrowNotImplementedError:
                raise _unsupported_arrow(source, name, data.type) from None
            kind = "string"
            values = np.asarray(pc.fill_null(text, "").to_numpy(zero_copy_only=False), dtype=object)
        else:
            raise _unsupported_arrow(source, name, data.type)
    values = np.array(values, dtype=_DTYPES[kind])  # a fresh, owned copy
    values.flags.writeable = False
    missing.flags.writeable = False
    return Column(name, kind, values, missing, source=source)


def _is_arrow_text(types: Any, arrow_type: Any) -> bool:
    is_view = getattr(types, "is_string_view", None)  # pyarrow >= 16
    return (
        types.is_string(arrow_type)
        or types.is_large_string(arrow_type)
        or (is_view is not None and is_view(arrow_type))
    )


def _unsupported_arrow(source: str, name: str, arrow_type: Any) -> InputError:
    return InputError(
        f"{_location(source, column=name)}: Parquet type {arrow_type} is not supported "
        "(supported: integers, floats, decimals, booleans, strings, dates and times)"
    )


# --- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a reader builds its cells.

    A reader makes a list (CSV) or a dict (JSON Lines) per row; none of them can form a
    cycle, yet each million of them makes the collector walk every one again, which triples
    the time a large file takes to read.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _location(
    source: str, *, row: int | None = None, line: int | None = None, column: str | None = None
) -> str:
    """``"data.csv, row 4 (line 5), column 'age'"``, leaving out the parts not given."""
    parts = [source] if source else []
    if row is not None:
        parts.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
    elif line is not None:
        parts.append(f"line {line}")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)


def check_names(where: str, names: Sequence[str], what: str) -> None:
    """Refuse empty and duplicate column names; ``what`` says what a name is in the file.

    Raises:
        InputError: naming the position of the empty or repeated name.
    """
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise InputError(f"{where}: {what} {position} has an empty name")
        if name in seen:
            raise InputError(
                f"{where}: {what}s {seen[name]} and {position} are both named {name!r}"
            )
        seen[name] = position


def _json_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def json_type(value: object) -> str:
    """The JSON type name of a parsed JSON value, for error messages."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _utf8_error(source: str) -> InputError:
    """Find the first byte that is not UTF-8 and say where it is."""
    data = Path(source).read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        line = data.count(b"\n", 0, offset) + 1
        return InputError(
            f"{source}, line {line}: not valid UTF-8 (byte 0x{data[offset]:02x} at byte offset "
            f"{offset}); save the file as UTF-8"
        )
    return InputError(f"{source}: not valid UTF-8; save the file as UTF-8")  # pragma: no cover
