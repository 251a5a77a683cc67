"""Batch readers and writers (``batch_io``, ``batch_writers``) on real files: every format in
and out, errors naming file, row, line and column, and memory that follows the batch."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeml.toolkit import batch_io
from edgeml.toolkit.batch_io import (
    columns_from_mapping,
    columns_from_rows,
    file_format,
    open_reader,
    type_text_column,
)
from edgeml.toolkit.batch_writers import (
    WRITEBACK_MIN_BYTES,
    OutputColumn,
    OutputField,
    open_writer,
    read_npy_header,
)
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.tabular import infer_column


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_all(path: Path, **kwargs) -> list:
    with open_reader(path, **kwargs) as reader:
        return list(reader)


# --- CSV ------------------------------------------------------------------------------------


def test_csv_batches_keep_row_numbers_and_type_each_batch_by_itself(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", "id,a,b,extra\n007,1,x,?\n008,2.5,y,?\n\n009,abc,z,?\n")
    batches = read_all(path, batch_size=2, features=["a"], id_column="id")
    assert [(b.first_row, b.rows) for b in batches] == [(1, 2), (3, 1)]
    first, second = batches
    assert first.columns["a"].kind == "float" and second.columns["a"].kind == "string"
    assert second.columns["a"].first_row == 3
    assert set(first.columns) == {"a"}, "only the wanted columns are typed"
    assert first.ids.values.tolist() == ["007", "008"], "ids are kept as written"
    with open_reader(path, features=["a"]) as reader:
        assert reader.names == ("id", "a", "b", "extra") and reader.unit == "bytes"
        assert reader.total == path.stat().st_size
        assert list(reader)[-1].progress == reader.total


def test_csv_errors_name_the_row_and_line(tmp_path: Path) -> None:
    short = write(tmp_path / "short.csv", "a,b\n1,2\n3\n")
    with pytest.raises(
        InputError, match=r"short.csv, row 2 \(line 3\): 1 fields, but the header has 2"
    ):
        read_all(short, features=["a"])
    twice = write(tmp_path / "twice.csv", "a,b,a\n1,2,3\n")
    with pytest.raises(InputError, match="fields 1 and 3 are both named 'a'"):
        read_all(twice)
    (tmp_path / "bad.csv").write_bytes(b"a\n1\n\xff\n")
    with pytest.raises(InputError, match="not valid UTF-8"):
        read_all(tmp_path / "bad.csv", features=["a"])


def test_unsupported_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unsupported file type '\.xlsx'"):
        file_format(tmp_path / "x.xlsx")
    with pytest.raises(InputError, match="no such file"):
        open_reader(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        open_reader(tmp_path / "empty.csv")


# --- JSON Lines -----------------------------------------------------------------------------


def test_json_lines_absent_keys_are_nulls_and_ids_are_text(tmp_path: Path) -> None:
    rows = [{"id": 1, "a": 1.5, "other": "x"}, {"id": "b7", "b": 2}, {"id": None, "a": 3}]
    path = write(tmp_path / "in.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with open_reader(path, features=["a", "b", "never"], id_column="id") as reader:
        (batch,) = list(reader)
        assert reader.seen == ("id", "a", "other", "b")
    assert batch.columns["a"].missing.tolist() == [False, True, False]
    assert batch.columns["b"].kind == "integer" and batch.columns["b"].missing.tolist() == [
        True,
        False,
        True,
    ]
    assert batch.columns["never"].missing.all()
    assert batch.ids.values.tolist() == ["1", "b7", ""] and batch.ids.missing.tolist() == [
        False,
        False,
        True,
    ]


def test_json_lines_errors_name_row_line_and_column(tmp_path: Path) -> None:
    nested = write(tmp_path / "n.jsonl", '{"a": 1}\n\n{"a": [1, 2]}\n')
    with pytest.raises(InputError, match=r"n.jsonl, row 2 \(line 3\), column 'a': a JSON array"):
        read_all(nested, features=["a"])
    broken = write(tmp_path / "b.jsonl", '{"a": 1}\n{"a": \n')
    with pytest.raises(InputError, match=r"b.jsonl, row 2 \(line 2\): not valid JSON"):
        read_all(broken, features=["a"])
    scalar = write(tmp_path / "s.jsonl", "[1, 2]\n")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_all(scalar, features=["a"])


def test_columns_from_python_values() -> None:
    columns = columns_from_mapping(
        {"a": [1, None, 2.5], "b": np.array([1, 2, 3]), "c": ["x", "1", None]}
    )
    assert columns["a"].kind == "float" and columns["a"].missing.tolist() == [False, True, False]
    assert columns["b"].kind == "integer"
    assert columns["c"].kind == "string"
    single = columns_from_mapping({"a": 1.0, "b": 2})
    assert len(single["a"]) == 1
    rows = columns_from_rows([{"a": 1}, {"b": True}])
    assert rows["a"].missing.tolist() == [False, True] and rows["b"].kind == "boolean"
    with pytest.raises(InputError, match="different lengths"):
        columns_from_mapping({"a": [1, 2], "b": [1]})


# --- Parquet --------------------------------------------------------------------------------


def test_parquet_reads_only_the_wanted_columns_in_batches(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([10, 11, 12, None], pa.int64()),
            "a": pa.array([1.0, None, float("nan"), 4.0]),
            "n": pa.array([1, 2, None, 4], pa.int32()),
            "s": pa.array(["x", "y", None, "1"]),
            "blob": pa.array([b"1", b"2", b"3", b"4"]),
        }
    )
    path = tmp_path / "in.parquet"
    pq.write_table(table, path)
    with open_reader(path, batch_size=3, features=["a", "n", "s"], id_column="id") as reader:
        assert reader.names == ("id", "a", "n", "s", "blob") and reader.total == 4
        batches = list(reader)
    assert [(b.first_row, b.rows, b.progress) for b in batches] == [(1, 3, 3), (4, 1, 4)]
    first = batches[0]
    assert first.columns["a"].missing.tolist() == [False, True, True], "NaN counts as null"
    assert first.columns["n"].kind == "integer" and first.columns["n"].missing.tolist() == [
        False,
        False,
        True,
    ]
    assert first.columns["s"].kind == "string"
    assert first.ids.kind == "integer" and batches[1].ids.missing.tolist() == [True]


def test_parquet_without_pyarrow_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"a": [1.0]}), path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError, match=r"pip install 'edgeml\[server\]'"):
        open_reader(path, features=["a"])
    with pytest.raises(InputError, match=r"pip install 'edgeml\[server\]'"):
        open_writer(tmp_path / "out.parquet", [OutputField("a", "float")], file_format="parquet")


def test_a_damaged_parquet_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        open_reader(tmp_path / "bad.parquet")


# --- .npy -----------------------------------------------------------------------------------


def test_a_plain_npy_array_streams_as_matrices(tmp_path: Path) -> None:
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.save(tmp_path / "x.npy", data)
    batches = read_all(tmp_path / "x.npy", batch_size=4, features=["a", "b", "c"])
    assert [(b.first_row, b.rows) for b in batches] == [(1, 4), (5, 4), (9, 2)]
    np.testing.assert_array_equal(np.vstack([b.matrix for b in batches]), data)
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    fortran = read_all(tmp_path / "f.npy", batch_size=4, features=["a", "b", "c"])
    np.testing.assert_array_equal(np.vstack([b.matrix for b in fortran]), data)


def test_npy_shapes_and_dtypes_that_cannot_be_scored(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    with pytest.raises(InputError, match="2 columns, but the model takes 3 features"):
        open_reader(tmp_path / "x.npy", features=["a", "b", "c"])
    with pytest.raises(InputError, match="no id column 'id'"):
        open_reader(tmp_path / "x.npy", features=["a", "b"], id_column="id")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="holds Python objects, which only pickle can load"):
        open_reader(tmp_path / "o.npy", features=["a"])
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-8])
    with pytest.raises(InputError, match="truncated"):
        read_all(tmp_path / "t.npy", features=["a", "b"])


def test_a_structured_npy_array_maps_fields_by_name(tmp_path: Path) -> None:
    data = np.array(
        [("r1", 1.5, 3, True), ("r2", np.nan, 4, False)],
        dtype=[("id", "U4"), ("a", "f4"), ("n", "i2"), ("flag", "?")],
    )
    np.save(tmp_path / "s.npy", data)
    (batch,) = read_all(tmp_path / "s.npy", features=["a", "n"], id_column="id")
    assert set(batch.columns) == {"a", "n"}
    assert batch.columns["a"].missing.tolist() == [False, True]
    assert batch.ids.values.tolist() == ["r1", "r2"]


# --- writers --------------------------------------------------------------------------------

FIELDS = [
    OutputField("id", "string"),
    OutputField("label", "integer"),
    OutputField("probability_0", "float32"),
    OutputField("ok", "boolean"),
]


def chunk(offset: int) -> list[OutputColumn]:
    return [
        OutputColumn(
            "id",
            np.array([f"r{offset}", 'q"uote,', ""], dtype=object),
            np.array([False, False, True]),
        ),
        OutputColumn("label", np.array([1, 0, 1])),
        OutputColumn("probability_0", np.array([0.1, 1 / 3, np.nan], dtype=np.float32)),
        OutputColumn("ok", np.array([True, False, True])),
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".npy"])
def test_writers_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    writer = open_writer(path, FIELDS, file_format=file_format(path))
    writer.write(chunk(0))
    writer.write(chunk(3))
    writer.close()
    assert writer.rows == 6
    if suffix == ".csv":
        rows = list(csv.reader(path.open()))
        assert rows[0] == ["id", "label", "probability_0", "ok"]
        assert rows[1] == ["r0", "1", "0.1", "true"]
        assert rows[2] == ['q"uote,', "0", "0.33333334", "false"]
        assert rows[3] == ["", "1", "nan", "true"]
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows[0] == {"id": "r0", "label": 1, "probability_0": 0.1, "ok": True}
        assert rows[2] == {"id": None, "label": 1, "probability_0": None, "ok": True}
    elif suffix == ".parquet":
        table = pq.read_table(path)
        assert table.schema.field("probability_0").type == pa.float32()
        assert table.column("id").to_pylist() == ["r0", 'q"uote,', None, "r3", 'q"uote,', None]
    else:
        array = np.load(path)
        assert array.shape == (6,) and read_npy_header(path)[0] == (6,)
        assert array["label"].tolist() == [1, 0, 1, 1, 0, 1]
        assert array["probability_0"].dtype == np.float32
        assert array["id"][3] == "r3"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".npy"])
def test_files_larger_than_the_writeback_step_come_out_whole(tmp_path: Path, suffix: str) -> None:
    """Past ``WRITEBACK_MIN_BYTES`` each batch is handed to the disk as it is written (and
    its pages left out of the cache): what is read back is still every row, in order."""
    path = tmp_path / f"big{suffix}"
    fields = [OutputField("label", "integer"), OutputField("value", "float")]
    writer = open_writer(path, fields, file_format=file_format(path))
    rows, batch = 0, 40_000
    for start in range(0, 200_000, batch):
        labels = np.arange(start, start + batch)
        writer.write([OutputColumn("label", labels), OutputColumn("value", labels / 7.0)])
        rows += batch
    writer.close()
    assert path.stat().st_size > 2 * WRITEBACK_MIN_BYTES
    if suffix == ".npy":
        labels = np.load(path)["label"]
    elif suffix == ".parquet":
        labels = pq.read_table(path).column("label").to_numpy()
    elif suffix == ".csv":
        labels = np.loadtxt(path, delimiter=",", skiprows=1, usecols=0, dtype=np.int64)
    else:
        labels = np.array([json.loads(line)["label"] for line in path.open()])
    assert labels.tolist() == list(range(rows))


def test_an_empty_npy_output_is_a_valid_array(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "e.npy", FIELDS[1:], file_format="npy")
    writer.close()
    array = np.load(tmp_path / "e.npy")
    assert array.shape == (0,) and array.dtype.names == ("label", "probability_0", "ok")


def test_npy_string_fields_refuse_a_value_longer_than_their_width(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "w.npy", FIELDS[:1], file_format="npy")
    writer.write([OutputColumn("id", np.array(["short"], dtype=object))])
    with pytest.raises(InputError, match="value of 40 characters, beyond the 16"):
        writer.write([OutputColumn("id", np.array(["x" * 40], dtype=object))])


# --- the fast path for numeric text ---------------------------------------------------------

_CELLS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "",
            " ",
            "NA",
            "nan",
            "-nan",
            "inf",
            " 7 ",
            "+3",
            "007",
            "1_000",
            "1e5",
            ".5",
            "5.",
            "-",
            ".",
            "e3",
            "1\n2",
            "\t4",
            "٣",
            "true",
            "x",
            "0x10",  # pyarrow reads it as 16
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "1e400",
            "0.1000000000000000055511151231257827",
        ]
    ),
)


@pytest.mark.parametrize("parser", ["pyarrow", "python"])
@settings(max_examples=300, deadline=None)
@given(st.lists(_CELLS, min_size=1, max_size=8))
def test_the_fast_path_types_text_exactly_as_infer_column(parser: str, cells: list[str]) -> None:
    """With pyarrow installed its parser reads the numbers; without, Python's: the same."""
    with pytest.MonkeyPatch.context() as patch:
        if parser == "python":
            patch.setattr(batch_io, "_pyarrow_if_installed", lambda: None)
        fast = type_text_column("x", cells, source="f.csv", first_row=3)
    slow = infer_column("x", cells, source="f.csv", first_row=3)
    assert fast.kind == slow.kind
    assert fast.missing.tolist() == slow.missing.tolist()
    if fast.kind == "float":
        np.testing.assert_array_equal(fast.values, slow.values)
    else:
        assert fast.values.tolist() == slow.values.tolist()
    assert fast.first_row == 3


def test_parquet_batches_do_not_keep_the_file_in_memory(tmp_path: Path) -> None:
    """pyarrow pre-buffers by default in recent versions, and then every batch read keeps its
    row group's buffers alive: a whole file ends up in memory. The reader turns it off."""
    rng = np.random.default_rng(0)
    schema = pa.schema([(f"c{i}", pa.float64()) for i in range(8)])
    path = tmp_path / "big.parquet"
    with pq.ParquetWriter(path, schema) as writer:
        for _ in range(20):
            block = rng.normal(size=(10_000, 8))
            writer.write_table(pa.table({f"c{i}": block[:, i] for i in range(8)}))
    file_bytes = 20 * 10_000 * 8 * 8
    peak = 0
    with open_reader(path, batch_size=10_000, features=[f"c{i}" for i in range(8)]) as reader:
        for _ in reader:
            peak = max(peak, pa.total_allocated_bytes())
    assert peak < file_bytes / 4, f"{peak:,} bytes held while reading a {file_bytes:,}-byte file"
