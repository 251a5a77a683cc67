"""Write scored rows batch by batch: CSV, TSV, JSON Lines, Parquet and ``.npy``.

:func:`open_writer` opens a writer of named, typed output columns (:class:`OutputField`) and
each ``write`` appends a batch of :class:`OutputColumn` values. Numbers are written in their
shortest round-trip form (float32 as float32), booleans as ``true``/``false``, nulls as an
empty cell (CSV) or ``null`` (JSON Lines). A ``.npy`` output is a 1-D structured array with
one field per column, its header rewritten with the row count at the end.

What this module leaves to others: temporary files and renaming (the caller writes to a
temporary path and renames it, ``edgeml.toolkit.batch_scoring``), reading
(``edgeml.toolkit.batch_io``). It imports numpy and the standard library only; pyarrow is
imported lazily, for Parquet alone.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeml.toolkit.batch_io import require_pyarrow
from edgeml.toolkit.errors import InputError

_KINDS = ("integer", "float", "float32", "boolean", "string")


@dataclass(frozen=True)
class OutputField:
    """One output column: its name and kind (``integer``, ``float``, ``float32``,
    ``boolean``, ``string``); for strings, the longest value known ahead (a classifier's
    class labels), which fixed-width formats (``.npy``) make room for."""

    name: str
    kind: str
    width: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"output field {self.name!r}: unknown kind {self.kind!r}")


@dataclass(frozen=True, eq=False)
class OutputColumn:
    """Values for one output field; ``missing`` marks nulls (None: no nulls)."""

    name: str
    values: np.ndarray
    missing: np.ndarray | None = None


class Writeback:
    """Has the disk write a file's new bytes in the background as batches are written.

    A writer's ``close`` syncs the file before it is renamed into place; without this, all of
    it would reach the disk then, the scorer waiting. ``push`` after each batch starts the
    writing of what was added (``posix_fadvise`` with ``POSIX_FADV_DONTNEED``, which also
    leaves the written pages out of the page cache: nobody reads them back), so the sync at
    the end waits for the last batch only. Advice, not a guarantee: the sync stays.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY) if hasattr(os, "posix_fadvise") else None
        self._done = 0

    def push(self) -> None:
        """Start writing the bytes added since the last push (the caller has flushed them)."""
        if self._fd is None:
            return
        end = os.fstat(self._fd).st_size
        if end - self._done >= WRITEBACK_MIN_BYTES:
            os.posix_fadvise(self._fd, self._done, end - self._done, os.POSIX_FADV_DONTNEED)
            self._done = end

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


WRITEBACK_MIN_BYTES = 1 << 20


class BatchWriter:
    """Base of the writers: ``write`` batches, then ``close`` (flushes and syncs)."""

    rows: int = 0

    def write(self, columns: Sequence[OutputColumn]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def abort(self) -> None:
        """Stop without finishing (the caller removes the file)."""
        with contextlib.suppress(Exception):  # the file is thrown away anyway
            self.close()


def open_writer(
    path: str | os.PathLike[str],
    fields: Sequence[OutputField],
    *,
    file_format: str,
    display: str | os.PathLike[str] | None = None,
) -> BatchWriter:
    """Open a writer of ``fields`` into ``path`` in ``file_format`` (see ``FORMATS``).

    ``path`` is written as given; writing to a temporary file and renaming it is the
    caller's job (the format comes from ``file_format``, not from ``path``'s extension).

    Args:
        path: the file to write.
        fields: the output columns.
        file_format: ``csv``, ``tsv``, ``jsonl``, ``parquet`` or ``npy``.
        display: the name messages give the file (the final name of a temporary file).

    Raises:
        InputError: Parquet without pyarrow.
    """
    target = os.fspath(path)
    name = os.fspath(display) if display is not None else target
    if file_format in ("csv", "tsv"):
        return _DelimitedWriter(target, fields, "\t" if file_format == "tsv" else ",")
    if file_format == "jsonl":
        return _JsonLinesWriter(target, fields)
    if file_format == "parquet":
        return _ParquetWriter(target, fields, name)
    if file_format == "npy":
        return _NpyWriter(target, fields, name)
    raise ValueError(f"unknown format {file_format!r}")


def _texts(field: OutputField, column: OutputColumn, null: str, json_strings: bool) -> list[str]:
    """One column as text cells: shortest round-trip numbers, true/false, strings."""
    values = column.values
    if field.kind in ("float", "float32"):
        dtype = np.float32 if field.kind == "float32" else np.float64
        texts = values.astype(dtype).astype(str)
        if json_strings:
            texts = texts.astype(object)
            texts[~np.isfinite(values)] = null
        out = texts.tolist()
    elif field.kind == "integer":
        out = values.astype(np.int64).astype(str).tolist()
    elif field.kind == "boolean":
        out = np.where(values.astype(np.bool_), "true", "false").tolist()
    else:
        out = (
            [json.dumps(str(v)) for v in values.tolist()]
            if json_strings
            else [str(v) for v in values.tolist()]
        )
    if column.missing is not None and column.missing.any():
        for i in np.flatnonzero(column.missing).tolist():
            out[i] = null
    return out


class _TextWriter(BatchWriter):
    """A UTF-8 text file: each batch handed to the disk as it is written, synced at close."""

    def __init__(self, path: str, newline: str | None) -> None:
        self._file = open(path, "w", encoding="utf-8", newline=newline)  # noqa: SIM115
        self._writeback = Writeback(path)

    def _written(self, rows: int) -> None:
        self.rows += rows
        self._file.flush()
        self._writeback.push()

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            finally:
                self._file.close()
                self._writeback.close()


class _DelimitedWriter(_TextWriter):
    def __init__(self, path: str, fields: Sequence[OutputField], delimiter: str) -> None:
        super().__init__(path, newline="")
        self._fields = tuple(fields)
        self._writer = csv.writer(self._file, delimiter=delimiter, lineterminator="\n")
        self._writer.writerow([f.name for f in self._fields])

    def write(self, columns: Sequence[OutputColumn]) -> None:
        texts = [_texts(f, c, "", False) for f, c in zip(self._fields, columns, strict=True)]
        self._writer.writerows(zip(*texts, strict=True))
        self._written(len(columns[0].values) if columns else 0)


class _JsonLinesWriter(_TextWriter):
    def __init__(self, path: str, fields: Sequence[OutputField]) -> None:
        super().__init__(path, newline=None)
        self._fields = tuple(fields)
        keys = [json.dumps(f.name) for f in self._fields]
        self._template = "{" + ",".join(f"{k}:%s" for k in keys) + "}\n"

    def write(self, columns: Sequence[OutputColumn]) -> None:
        texts = [_texts(f, c, "null", True) for f, c in zip(self._fields, columns, strict=True)]
        template = self._template
        self._file.write("".join([template % row for row in zip(*texts, strict=True)]))
        self._written(len(columns[0].values) if columns else 0)


class _ParquetWriter(BatchWriter):
    def __init__(self, path: str, fields: Sequence[OutputField], name: str) -> None:
        pa = require_pyarrow(name)
        import pyarrow.parquet as pq

        self._pa = pa
        self._fields = tuple(fields)
        arrow_types = {
            "integer": pa.int64(),
            "float": pa.float64(),
            "float32": pa.float32(),
            "boolean": pa.bool_(),
            "string": pa.string(),
        }
        self._schema = pa.schema([(f.name, arrow_types[f.kind]) for f in self._fields])
        self._path = path
        self._writer = pq.ParquetWriter(path, self._schema)
        self._writeback = Writeback(path)

    def write(self, columns: Sequence[OutputColumn]) -> None:
        pa = self._pa
        arrays = []
        for field, column, arrow_field in zip(self._fields, columns, self._schema, strict=True):
            values = column.values
            if field.kind == "string":
                values = [str(v) for v in values.tolist()]
            mask = column.missing if column.missing is not None and column.missing.any() else None
            arrays.append(pa.array(values, type=arrow_field.type, mask=mask))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        self.rows += len(columns[0].values) if columns else 0
        self._writeback.push()

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
                self._writer = None
                with open(self._path, "rb+") as handle:
                    os.fsync(handle.fileno())
            finally:
                self._writeback.close()


_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_COUNT_WIDTH = 20  # digits reserved for the row count in the header


class _NpyWriter(BatchWriter):
    """A 1-D structured array, one field per output column, written row block by row block.

    The header is written at the first batch with room for any row count and rewritten, same
    length, with the real count at the end. String fields take the width of the longest
    value of the first batch or the field's known width (at least 16 characters); a longer
    value later is refused.
    """

    def __init__(self, path: str, fields: Sequence[OutputField], name: str) -> None:
        self._name = name
        self._fields = tuple(fields)
        self._path = path
        self._file = open(path, "wb")  # noqa: SIM115
        self._writeback = Writeback(path)
        self._dtype: np.dtype | None = None
        self._header_length = 0

    def _open(self, columns: Sequence[OutputColumn]) -> None:
        spec = []
        for field, column in zip(self._fields, columns, strict=True):
            if field.kind == "string":
                longest = max((len(str(v)) for v in column.values.tolist()), default=0)
                spec.append((field.name, f"<U{max(16, longest, field.width)}"))
            elif field.kind == "float":
                spec.append((field.name, "<f8"))
            elif field.kind == "float32":
                spec.append((field.name, "<f4"))
            elif field.kind == "integer":
                spec.append((field.name, "<i8"))
            else:
                spec.append((field.name, "|b1"))
        self._dtype = np.dtype(spec)
        header = self._header(0)
        self._header_length = len(header)
        self._file.write(header)

    def _header(self, rows: int) -> bytes:
        assert self._dtype is not None
        descr = np.lib.format.dtype_to_descr(self._dtype)
        text = (
            f"{{'descr': {descr!r}, 'fortran_order': False, "
            f"'shape': ({str(rows).rjust(_NPY_COUNT_WIDTH)},), }}"
        )
        ast.literal_eval(text)  # the header must read back
        total = len(_NPY_MAGIC) + 2 + len(text) + 1
        padded = text + " " * (-total % 64) + "\n"
        length = len(padded)
        if length > 65535:
            raise InputError(f"{self._name}: too many output columns for a .npy header")
        return _NPY_MAGIC + length.to_bytes(2, "little") + padded.encode("latin1")

    def write(self, columns: Sequence[OutputColumn]) -> None:
        if self._dtype is None:
            self._open(columns)
        assert self._dtype is not None
        n = len(columns[0].values) if columns else 0
        block = np.empty(n, dtype=self._dtype)  # every field is assigned below
        for field, column in zip(self._fields, columns, strict=True):
            values = column.values
            if field.kind == "string":
                width = self._dtype[field.name].itemsize // 4
                texts = [str(v) for v in values.tolist()]
                longest = max((len(t) for t in texts), default=0)
                if longest > width:
                    raise InputError(
                        f"{self._name}: column {field.name!r} holds a value of {longest} "
                        f"characters, beyond the {width} this .npy file's field was given at "
                        "its first rows; write CSV, JSON Lines or Parquet instead"
                    )
                values = np.array(texts, dtype=self._dtype[field.name])
            block[field.name] = values
            if column.missing is not None and column.missing.any() and field.kind == "float":
                block[field.name][column.missing] = np.nan
        self._file.write(block.data)
        self.rows += n
        self._file.flush()
        self._writeback.push()

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            if self._dtype is None:
                self._open([OutputColumn(f.name, np.array([], dtype=object)) for f in self._fields])
            self._file.seek(0)
            header = self._header(self.rows)
            assert len(header) == self._header_length
            self._file.write(header)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
            self._writeback.close()


def read_npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` file states (for tests and tools)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return shape, dtype
