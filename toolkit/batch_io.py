"""Stream tabular files in batches of typed columns, choosing the reader by extension.

Readers (:func:`open_reader`) take CSV, TSV, JSON Lines, Parquet and ``.npy`` files and yield
:class:`Batch` objects of at most ``batch_size`` rows, so memory follows the batch size, not
the file size. Writing the same formats is ``edgeml.toolkit.batch_writers``'s job.

Typing follows ``edgeml.toolkit.tabular``: text cells go through ``infer_column`` batch by
batch (a pure function of the batch), so one batch may type a column as ``string`` where
another typed it ``float``; reconciling a batch's kinds with the data contract is the
contract check's job (``edgeml.toolkit.contract.check_columns``), which reads such a column
cell by cell as the feature's kind and flags only the cells that do not read.

- CSV/TSV: the first line is the header; blank lines are skipped.
- JSON Lines: one object per line; a key a row lacks is a null there; the batch always holds
  the columns the caller asks for (``wanted``), null where no row of the batch has the key.
- Parquet (``pip install 'edgeml[server]'`` for pyarrow): only the wanted columns are read;
  the others are listed from the schema.
- ``.npy``: a 2-D numeric array maps its columns to the features by position (a
  :class:`Batch` with a ``matrix``); a 1-D structured array maps its fields by name. The
  file is memory-mapped and the pages of rows already handed out are given back, so memory
  follows the batch, not the file; object arrays are refused (they need pickle).

An id column (``id_column``) is carried as it was written: for text files (CSV, JSON Lines)
as its text, so ``007`` stays ``007``; for Parquet and ``.npy`` in its stored type.

What this module leaves to others: which columns are features (the contract), what to do
with invalid rows (``edgeml.toolkit.batch_scoring``), writing (``batch_writers``). It imports
numpy and the standard library only; pyarrow is imported lazily, for Parquet, and where it is
installed (a server) it also parses the numbers of CSV columns (:func:`type_text_column`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import json
import math
import mmap
import operator
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeml.toolkit.errors import InputError
from edgeml.toolkit.tabular import Column, check_names, infer_column, json_type

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".npy": "npy",
}
"""File extensions read and written, compared case-insensitively, and their formats."""

PARQUET_HINT = "pip install 'edgeml[server]'"
DEFAULT_BATCH_SIZE = 65_536


def file_format(path: str | os.PathLike[str]) -> str:
    """The format of a file by its extension: ``csv``, ``tsv``, ``jsonl``, ``parquet``, ``npy``.

    Raises:
        InputError: the extension is not one of ``FORMATS``.
    """
    suffix = Path(path).suffix.lower()
    found = FORMATS.get(suffix)
    if found is None:
        what = f"file type {suffix!r}" if suffix else "a file without an extension"
        raise InputError(f"{path}: unsupported {what}; supported: {', '.join(FORMATS)}")
    return found


def require_pyarrow(source: str) -> Any:
    """Import pyarrow or say which extra installs it.

    Raises:
        InputError: pyarrow is not installed.
    """
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InputError(f"{source}: Parquet needs pyarrow: {PARQUET_HINT}") from None
    return pyarrow


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True, eq=False)
class Batch:
    """Rows of a file, as typed columns or (a plain ``.npy``) as a matrix.

    Attributes:
        source: the file, for messages.
        first_row: the 1-based data row of the batch's first row in ``source``.
        rows: the number of rows.
        columns: typed columns by name (the wanted ones the file has); None for a matrix.
        matrix: a plain ``.npy`` array's rows, columns in the features' order; else None.
        ids: the id column, as it was written; None without one.
        progress: how far the reader is after this batch, in the reader's ``unit``.
    """

    source: str
    first_row: int
    rows: int
    columns: dict[str, Column] | None = None
    matrix: np.ndarray | None = None
    ids: Column | None = None
    progress: int = 0


class BatchReader:
    """Base of the readers: what they know at open, and iteration over batches.

    Attributes:
        source: the file.
        names: the file's column names in file order, when known at open (not for JSON Lines,
            whose keys show up row by row: see ``seen``).
        total: the progress total in ``unit`` (rows or bytes), or None.
        unit: ``rows`` or ``bytes``.
    """

    source: str
    names: tuple[str, ...] | None = None
    total: int | None = None
    unit: str = "rows"

    @property
    def seen(self) -> tuple[str, ...]:
        """Every column name seen so far, in order of first appearance."""
        return self.names or ()

    def __iter__(self) -> Iterator[Batch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(
    path: str | os.PathLike[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    features: Sequence[str] = (),
    id_column: str | None = None,
) -> BatchReader:
    """Open a file for reading in batches, choosing the reader by its extension.

    Args:
        path: the file.
        batch_size: the most rows a batch holds.
        features: the columns to type (and, for a plain ``.npy``, the names of its columns).
        id_column: a column to carry as it was written.

    Returns:
        The reader; use it as a context manager.

    Raises:
        InputError: the file is missing, empty, of an unsupported type, unreadable, or (for
            Parquet) pyarrow is not installed; the message names the file.
        ValueError: ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    source = os.fspath(path)
    kind = file_format(source)
    if not os.path.exists(source):
        raise InputError(f"{source}: no such file")
    if os.path.isdir(source):
        raise InputError(f"{source} is a folder, not a file")
    if os.path.getsize(source) == 0:
        raise InputError(f"{source} is empty")
    wanted = _Wanted(tuple(features), id_column)
    try:
        if kind in ("csv", "tsv"):
            return _DelimitedReader(source, "\t" if kind == "tsv" else ",", batch_size, wanted)
        if kind == "jsonl":
            return _JsonLinesReader(source, batch_size, wanted)
        if kind == "parquet":
            return _ParquetReader(source, batch_size, wanted)
        return _NpyReader(source, batch_size, wanted)
    except OSError as error:
        raise InputError(f"{source}: cannot read: {error.strerror or error}") from error


@dataclass(frozen=True)
class _Wanted:
    """The columns a reader types (features) and the one it carries as written (the id)."""

    features: tuple[str, ...]
    id_column: str | None

    @property
    def names(self) -> tuple[str, ...]:
        extra = (self.id_column,) if self.id_column else ()
        return tuple(dict.fromkeys(self.features + extra))


# ------------------------------------------------------------------------------ CSV


class _DelimitedReader(BatchReader):
    unit = "bytes"

    def __init__(
        self,
        source: str,
        delimiter: str,
        batch_size: int,
        wanted: _Wanted,
    ) -> None:
        self.source = source
        self.total = os.path.getsize(source)
        self._batch_size = batch_size
        self._wanted = wanted
        self._file = open(source, encoding="utf-8-sig", newline="")  # noqa: SIM115
        try:
            self._reader = csv.reader(self._file, delimiter=delimiter, strict=True)
            try:
                header = next(self._reader, None)
            except csv.Error as error:
                raise InputError(f"{source}, line 1 (the header): {error}") from None
            except UnicodeDecodeError:
                raise InputError(f"{source}: not valid UTF-8; save the file as UTF-8") from None
            if not header:
                raise InputError(
                    f"{source}, line 1: blank; the first line must be a header naming the columns"
                )
            check_names(f"{source}, line 1 (the header)", header, "field")
        except BaseException:
            self._file.close()
            raise
        self.names = tuple(header)
        names = wanted.names
        self._take = [(i, name) for i, name in enumerate(header) if name in names]

    def __iter__(self) -> Iterator[Batch]:
        rows: list[list[str]] = []
        width = len(self.names or ())
        done = 0
        last_line = self._reader.line_num
        while True:
            try:
                fields = next(self._reader, None)
            except csv.Error as error:
                where = f"{self.source}, row {done + len(rows) + 1} (line {last_line + 1})"
                raise InputError(f"{where}: {error}") from None
            except UnicodeDecodeError:
                raise InputError(
                    f"{self.source}, near row {done + len(rows) + 1} (line {last_line + 1}): "
                    "not valid UTF-8; save the file as UTF-8"
                ) from None
            if fields is None:
                break
            start, last_line = last_line + 1, self._reader.line_num
            if not fields:
                continue
            if len(fields) != width:
                where = f"{self.source}, row {done + len(rows) + 1} (line {start})"
                raise InputError(
                    f"{where}: {len(fields)} fields, but the header has {width} "
                    f"({'tab' if self._reader.dialect.delimiter == chr(9) else 'comma'}-separated)"
                )
            rows.append(fields)
            if len(rows) == self._batch_size:
                yield self._batch(rows, done)
                done += len(rows)
                rows = []
        if rows:
            yield self._batch(rows, done)

    def _batch(self, rows: list[list[str]], done: int) -> Batch:
        columns: dict[str, Column] = {}
        ids = None
        first = done + 1
        for i, name in self._take:
            raw = [row[i] for row in rows]
            if name == self._wanted.id_column:
                ids = text_ids(name, raw, self.source, first)
            if name in self._wanted.features:
                columns[name] = type_text_column(name, raw, source=self.source, first_row=first)
        return Batch(
            self.source,
            first,
            len(rows),
            columns=columns,
            ids=ids,
            progress=self._position(),
        )

    def _position(self) -> int:
        try:
            return self._file.buffer.tell()
        except (OSError, ValueError):  # pragma: no cover - a pipe
            return 0

    def close(self) -> None:
        self._file.close()


# Cells made only of these characters, with no "n"/"N" (nan, inf and the null tokens all have
# one) and no blank line, are plain decimal numbers that Python's int() and float() read
# exactly as ``infer_column`` does: the fast path of ``type_text_column``.
_NOT_PLAIN_NUMBER = re.compile(r"[^0-9+\-.eE \t\n]")


def type_text_column(
    name: str, raw: Sequence[str], *, source: str = "", first_row: int = 1
) -> Column:
    """Type a column of text cells as ``infer_column`` does, faster when every cell is a plain
    decimal number (the common case of a feature column).

    Such a column is converted with ``int()`` or ``float()`` in one sweep; any other (a null,
    a word, an infinity, a cell ``infer_column`` would reject) goes through ``infer_column``.
    """
    joined = "\n".join(raw)
    if (
        raw
        and raw[0] != ""
        and raw[-1] != ""
        and "\n\n" not in joined
        and not _NOT_PLAIN_NUMBER.search(joined)
    ):
        try:
            if "." in joined or "e" in joined or "E" in joined:
                values, kind = _parse_numbers(raw, np.float64, float), "float"
            else:
                values, kind = _parse_numbers(raw, np.int64, int), "integer"
        except (ValueError, OverflowError):
            pass
        else:
            values.flags.writeable = False
            missing = np.zeros(len(raw), dtype=np.bool_)
            missing.flags.writeable = False
            return Column(name, kind, values, missing, source, first_row)
    return infer_column(name, raw, source=source, first_row=first_row)


def _parse_numbers(
    raw: Sequence[str], dtype: type[np.number], parse: Callable[[str], Any]
) -> np.ndarray:
    """Cells of plain decimal numbers as ``dtype``, the values ``parse`` (``float`` or
    ``int``) gives.

    With pyarrow installed, its parser reads them (3-4 times faster than ``float`` on
    17-digit decimals: both round correctly, so the values are the same); it accepts a subset
    of what Python accepts (not surrounding blanks, not ``+5`` as an integer, nothing past
    int64): a column it refuses is read again by ``parse``, which decides.

    Raises:
        ValueError, OverflowError: ``parse`` refuses a cell, or a value does not fit.
    """
    arrow = _pyarrow_if_installed()
    if arrow is not None:
        pa, pc = arrow
        try:
            parsed = pc.cast(pa.array(raw, type=pa.string()), pa.from_numpy_dtype(dtype))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        else:
            return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype=dtype)
    return np.fromiter(map(parse, raw), dtype, len(raw))


@functools.cache
def _pyarrow_if_installed() -> tuple[Any, Any] | None:
    """(pyarrow, pyarrow.compute), or None where pyarrow is not installed."""
    try:
        import pyarrow
        import pyarrow.compute
    except ImportError:
        return None
    return pyarrow, pyarrow.compute


def text_ids(name: str, raw: Sequence[str | None], source: str, first_row: int) -> Column:
    """An id column kept as text, exactly as written; an empty cell or a null is missing."""
    values = np.array([("" if v is None else v) for v in raw], dtype=object)
    missing = np.fromiter((v is None or v == "" for v in raw), dtype=np.bool_, count=len(raw))
    return Column(name, "string", values, missing, source=source, first_row=first_row)


# ------------------------------------------------------------------------ JSON Lines


class _JsonLinesReader(BatchReader):
    unit = "bytes"

    def __init__(self, source: str, batch_size: int, wanted: _Wanted) -> None:
        self.source = source
        self.total = os.path.getsize(source)
        self._batch_size = batch_size
        self._wanted = wanted
        self._seen: dict[str, None] = {}
        self._file = open(source, encoding="utf-8-sig")  # noqa: SIM115

    @property
    def seen(self) -> tuple[str, ...]:
        return tuple(self._seen)

    def __iter__(self) -> Iterator[Batch]:
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        done = 0
        seen = self._seen
        line_no = 0
        try:
            for line_no, line in enumerate(self._file, start=1):
                if not line or line.isspace():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    where = f"{self.source}, row {done + len(rows) + 1} (line {line_no})"
                    raise InputError(
                        f"{where}: not valid JSON ({error.msg} at character {error.colno})"
                    ) from None
                if type(obj) is not dict:
                    where = f"{self.source}, row {done + len(rows) + 1} (line {line_no})"
                    raise InputError(
                        f"{where}: expected a JSON object ({{...}}), got a JSON {json_type(obj)}"
                    )
                if not obj.keys() <= seen.keys():
                    seen.update(dict.fromkeys(obj))
                rows.append(obj)
                lines.append(line_no)
                if len(rows) == self._batch_size:
                    yield self._batch(rows, lines, done)
                    done += len(rows)
                    rows, lines = [], []
        except UnicodeDecodeError:
            raise InputError(
                f"{self.source}, near line {line_no + 1}: not valid UTF-8; save the file as UTF-8"
            ) from None
        if rows:
            yield self._batch(rows, lines, done)
        elif not done:
            raise InputError(f"{self.source} is empty: it holds no JSON objects")

    def _batch(self, rows: list[dict[str, Any]], lines: list[int], done: int) -> Batch:
        first = done + 1
        columns: dict[str, Column] = {}
        ids = None
        for name in self._wanted.names:
            cells = [obj.get(name) for obj in rows]
            if name == self._wanted.id_column:
                ids = text_ids(name, [_json_text(c) for c in cells], self.source, first)
            if name in self._wanted.features:
                columns[name] = column_from_cells(
                    name, cells, source=self.source, first_row=first, lines=lines
                )
        return Batch(
            self.source,
            first,
            len(rows),
            columns=columns,
            ids=ids,
            progress=self._file.buffer.tell(),
        )

    def close(self) -> None:
        self._file.close()


def column_from_cells(
    name: str,
    cells: Sequence[Any],
    *,
    source: str = "",
    first_row: int = 1,
    lines: Sequence[int] | None = None,
) -> Column:
    """Type a column of Python (JSON) values as ``infer_column`` types their text forms.

    ``None`` is a null. Ints make an integer column, ints and floats a float column (nan is a
    null), booleans a boolean one; anything holding a string goes through ``infer_column``.

    Raises:
        InputError: a cell is a list or an object (nested values are not table cells).
    """
    types = set(map(type, cells))
    for nested in (dict, list, tuple):
        if nested in types:
            index = next(i for i, v in enumerate(cells) if type(v) is nested)
            row = first_row + index
            where = f"{source + ', ' if source else ''}row {row}"
            if lines is not None:
                where += f" (line {lines[index]})"
            raise InputError(
                f"{where}, column {name!r}: a JSON {'object' if nested is dict else 'array'} is "
                "not a table cell (nested values are not supported; flatten them into columns)"
            )
    types.discard(type(None))
    n = len(cells)
    if not types:
        return Column(name, "float", np.full(n, np.nan), np.ones(n, np.bool_), source, first_row)
    if types == {int}:
        missing = np.fromiter(map(operator.is_, cells, itertools.repeat(None)), np.bool_, n)
        try:
            values = np.array([0 if v is None else v for v in cells], dtype=np.int64)
            return Column(name, "integer", values, missing, source, first_row)
        except OverflowError:
            pass  # beyond int64: the text path makes it float
    elif types <= {int, float}:
        values = np.array([math.nan if v is None else v for v in cells], dtype=np.float64)
        return Column(name, "float", values, np.isnan(values), source, first_row)
    elif types == {bool}:
        missing = np.fromiter(map(operator.is_, cells, itertools.repeat(None)), np.bool_, n)
        values = np.fromiter(map(operator.is_, cells, itertools.repeat(True)), np.bool_, n)
        return Column(name, "boolean", values, missing, source, first_row)
    raw = cells if types <= {str} else [_json_text(v) for v in cells]
    return infer_column(name, raw, source=source, first_row=first_row)


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


# -------------------------------------------------------------------------- Parquet


class _ParquetReader(BatchReader):
    unit = "rows"

    def __init__(self, source: str, batch_size: int, wanted: _Wanted) -> None:
        pa = require_pyarrow(source)
        import pyarrow.parquet as pq

        self.source = source
        self._pa = pa
        self._batch_size = batch_size
        self._wanted = wanted
        try:
            # pre_buffer=False: with pre-buffering (pyarrow's default in recent versions) the
            # batches of iter_batches keep their row groups' buffers alive, and a run holds
            # the whole file in memory by its end.
            self._file = pq.ParquetFile(source, pre_buffer=False)
        except (pa.ArrowException, ValueError, OSError) as error:
            raise InputError(f"{source} is not a readable Parquet file: {error}") from None
        self.names = tuple(self._file.schema_arrow.names)
        check_names(source, self.names, "column")
        self.total = self._file.metadata.num_rows
        names = wanted.names
        self._take = [name for name in self.names if name in names]

    def __iter__(self) -> Iterator[Batch]:
        pa = self._pa
        done = 0
        try:
            batches = self._file.iter_batches(
                batch_size=self._batch_size, columns=self._take, use_threads=True
            )
            for record_batch in batches:
                n = record_batch.num_rows
                if n == 0:
                    continue
                first = done + 1
                columns = {}
                ids = None
                for name, array in zip(self._take, record_batch.columns, strict=True):
                    column = arrow_column(name, array, source=self.source, first_row=first)
                    if name == self._wanted.id_column:
                        ids = column
                    if name in self._wanted.features:
                        columns[name] = column
                done += n
                yield Batch(self.source, first, n, columns=columns, ids=ids, progress=done)
        except (pa.ArrowException, OSError) as error:
            raise InputError(
                f"{self.source}, after row {done}: cannot read the Parquet data: {error}"
            ) from None

    def close(self) -> None:
        self._file.close()


def arrow_column(name: str, array: Any, *, source: str = "", first_row: int = 1) -> Column:
    """A typed column from a pyarrow array (or chunked array), as ``read_table`` types it.

    Integers become ``integer``, floats and decimals ``float`` (nan counts as null), booleans
    ``boolean``, strings, dates and times ``string``; dictionary columns are decoded.

    Raises:
        InputError: a type that is no table cell (lists, structs, binary).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    types = pa.types
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if types.is_dictionary(array.type):
        array = array.dictionary_decode()
    n = len(array)
    nulls = array.null_count
    if types.is_null(array.type):
        return Column(name, "float", np.full(n, np.nan), np.ones(n, np.bool_), source, first_row)
    if types.is_floating(array.type) or types.is_decimal(array.type):
        if types.is_float64(array.type) and nulls == 0:
            values = array.to_numpy(zero_copy_only=False)
        else:
            values = pc.fill_null(array.cast(pa.float64(), safe=False), math.nan).to_numpy(
                zero_copy_only=False
            )
        values = np.asarray(values, dtype=np.float64)
        return Column(name, "float", values, np.isnan(values), source, first_row)
    missing = (
        np.zeros(n, dtype=np.bool_)
        if nulls == 0
        else np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
    )
    if types.is_boolean(array.type):
        values = np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), np.bool_)
        return Column(name, "boolean", values, missing, source, first_row)
    if types.is_integer(array.type):
        try:
            values = np.asarray(pc.fill_null(array.cast(pa.int64()), 0).to_numpy(), np.int64)
            return Column(name, "integer", values, missing, source, first_row)
        except pa.ArrowInvalid:  # unsigned beyond int64
            values = pc.fill_null(array.cast(pa.float64(), safe=False), math.nan).to_numpy()
            return Column(name, "float", np.asarray(values, np.float64), missing, source, first_row)
    is_view = getattr(types, "is_string_view", None)
    if (
        types.is_string(array.type)
        or types.is_large_string(array.type)
        or (is_view is not None and is_view(array.type))
        or types.is_temporal(array.type)
    ):
        try:
            text = array if types.is_string(array.type) else array.cast(pa.string())
        except pa.ArrowNotImplementedError:
            raise _unsupported_arrow(source, name, array.type) from None
        values = np.asarray(pc.fill_null(text, "").to_numpy(zero_copy_only=False), dtype=object)
        return Column(name, "string", values, missing, source, first_row)
    raise _unsupported_arrow(source, name, array.type)


def _unsupported_arrow(source: str, name: str, arrow_type: Any) -> InputError:
    where = f"{source}, column {name!r}" if source else f"column {name!r}"
    return InputError(
        f"{where}: Parquet type {arrow_type} is not supported "
        "(supported: integers, floats, decimals, booleans, strings, dates and times)"
    )


# ------------------------------------------------------------------------------ .npy


class _NpyReader(BatchReader):
    unit = "rows"

    def __init__(self, source: str, batch_size: int, wanted: _Wanted) -> None:
        self.source = source
        self._batch_size = batch_size
        self._wanted = wanted
        features, id_column = wanted.features, wanted.id_column
        shape, fortran, dtype, offset = _npy_header(source)
        self._structured = dtype.names is not None
        self._fortran = fortran and len(shape) > 1
        self._offset = offset
        self._dtype = dtype
        if self._structured:
            if len(shape) != 1:
                raise InputError(f"{source}: a structured array must be 1-D, got shape {shape}")
            self.names = tuple(dtype.names or ())
            for field in self.names:
                field_type = dtype.fields[field][0]  # type: ignore[index]
                if field_type.kind not in "biufUS" or field_type.shape:
                    raise InputError(
                        f"{source}, column {field!r}: dtype {field_type} is not supported "
                        "(numbers, booleans and strings are)"
                    )
            self._width = 1
        else:
            if dtype.kind not in "biuf":
                raise InputError(
                    f"{source}: dtype {dtype} is not supported; a plain array must hold numbers "
                    "or booleans (use a structured array for named columns)"
                )
            if id_column is not None:
                raise InputError(
                    f"{source}: a plain array has no named columns, so no id column "
                    f"{id_column!r}; use a structured array or another format"
                )
            if len(shape) == 1 and len(features) == 1:
                shape = (shape[0], 1)
            if len(shape) != 2:
                raise InputError(f"{source}: expected a 2-D array (rows, features), got {shape}")
            if shape[1] != len(features):
                raise InputError(
                    f"{source}: {shape[1]} columns, but the model takes {len(features)} "
                    "features (a plain array maps its columns to the features by position; use "
                    "a structured array or another format for named or extra columns)"
                )
            self.names = tuple(features)
            self._width = shape[1]
        self._rows = int(shape[0]) if shape else 0
        self.total = self._rows
        needed = offset + self._rows * self._width * dtype.itemsize
        size = os.path.getsize(source)
        if size < needed:
            rows = (size - offset) // max(self._width * dtype.itemsize, 1)
            raise InputError(
                f"{source}: truncated: the header states {self._rows} rows, the file holds "
                f"{max(rows, 0)}"
            )
        self._file = open(source, "rb")  # noqa: SIM115
        self._map: mmap.mmap | None = None
        count = self._rows * self._width
        if count:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            flat = np.frombuffer(self._map, dtype=dtype, count=count, offset=offset)
            if self._structured:
                self._array = flat
            else:
                self._array = flat.reshape(
                    (self._rows, self._width), order="F" if self._fortran else "C"
                )
        else:
            self._array = np.zeros((0,) if self._structured else (0, self._width), dtype=dtype)

    def _release(self, start: int, stop: int) -> None:
        """Drop the pages of rows already handed out from this process's memory.

        The file is mapped, not read: rows go from the page cache straight into the batch's
        conversion, and pages a batch has used are given back, so the resident memory follows
        the batch size. (A Fortran-order array spreads a batch over the whole file: all of
        its pages are given back.) The pages stay in the page cache; touching them again only
        maps them again.
        """
        if self._map is None or not hasattr(self._map, "madvise"):
            return
        page = mmap.PAGESIZE
        if self._fortran:
            first, last = 0, len(self._map)
        else:
            row_bytes = self._dtype.itemsize * self._width
            first = (self._offset + start * row_bytes) // page * page
            last = min(self._offset + stop * row_bytes, len(self._map))
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def __iter__(self) -> Iterator[Batch]:
        done = 0
        while done < self._rows:
            n = min(self._batch_size, self._rows - done)
            block = self._array[done : done + n]
            first = done + 1
            done += n
            if self._structured:
                take = [name for name in self.names or () if name in self._wanted.names]
                typed = {name: _npy_field(name, block[name], self.source, first) for name in take}
                ids = typed.get(self._wanted.id_column or "")
                columns = {c: v for c, v in typed.items() if c in self._wanted.features}
                yield Batch(self.source, first, n, columns=columns, ids=ids, progress=done)
            else:
                yield Batch(self.source, first, n, matrix=block, progress=done)
            self._release(first - 1, done)

    def close(self) -> None:
        self._array = None  # type: ignore[assignment]
        if self._map is not None:
            # A batch that still holds a view keeps the mapping alive; it goes with the view.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        self._file.close()


def _npy_header(source: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The shape, Fortran order, dtype and data offset a ``.npy`` file's header states."""
    fmt = np.lib.format
    with open(source, "rb") as handle:
        try:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(handle)
            else:
                shape, fortran, dtype = fmt._read_array_header(handle, version)
        except (ValueError, SyntaxError, OSError, EOFError) as error:
            raise InputError(f"{source} is not a readable .npy array: {error}") from None
        offset = handle.tell()
    if dtype.hasobject:
        raise InputError(
            f"{source} holds Python objects, which only pickle can load; edgeml does not load "
            "pickles (save numbers, booleans and strings)"
        )
    return tuple(shape), bool(fortran), dtype, offset


def _npy_field(name: str, values: np.ndarray, source: str, first_row: int) -> Column:
    kind = values.dtype.kind
    if kind == "f":
        values = values.astype(np.float64)
        return Column(name, "float", values, np.isnan(values), source, first_row)
    if kind in "iu":
        return Column(
            name,
            "integer",
            values.astype(np.int64),
            np.zeros(len(values), np.bool_),
            source,
            first_row,
        )
    if kind == "b":
        return Column(
            name,
            "boolean",
            values.astype(np.bool_),
            np.zeros(len(values), np.bool_),
            source,
            first_row,
        )
    texts = values.astype(str).astype(object)
    return Column(name, "string", texts, texts == "", source, first_row)


# -------------------------------------------------------------------- columns in memory


def columns_from_mapping(data: Mapping[str, Any]) -> dict[str, Column]:
    """Typed columns from ``{name: values}``: numpy arrays, lists or scalars (one row).

    Raises:
        InputError: the columns have different lengths or hold nested values.
        ValueError: the mapping is empty.
    """
    if all(np.ndim(v) == 0 for v in data.values()):
        data = {k: [v] for k, v in data.items()}
    columns = {}
    for name, values in data.items():
        array = values if isinstance(values, np.ndarray) else None
        if array is not None and array.ndim == 1 and array.dtype.kind in "biuf":
            columns[name] = _npy_field(name, array, "", 1)
        else:
            cells = array.tolist() if array is not None else list(values)
            columns[name] = column_from_cells(str(name), cells)
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise InputError(f"columns of different lengths: {sorted(lengths)}")
    return columns


def columns_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Column]:
    """Typed columns from rows of ``{name: value}``; a key a row lacks is a null there."""
    names: dict[str, None] = {}
    for row in rows:
        if not isinstance(row, Mapping):
            raise InputError(
                f"a row must be a mapping of column to value, got {type(row).__name__}"
            )
        names.update(dict.fromkeys(row))
    return {
        str(name): column_from_cells(str(name), [row.get(name) for row in rows]) for name in names
    }


def columns_from_arrow(table: Any) -> dict[str, Column]:
    """Typed columns from a pyarrow ``Table`` or ``RecordBatch``."""
    return {name: arrow_column(name, table.column(i)) for i, name in enumerate(table.column_names)}


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FORMATS",
    "PARQUET_HINT",
    "Batch",
    "BatchReader",
    "arrow_column",
    "check_names",
    "column_from_cells",
    "columns_from_arrow",
    "columns_from_mapping",
    "columns_from_rows",
    "file_format",
    "open_reader",
    "require_pyarrow",
    "text_ids",
]
