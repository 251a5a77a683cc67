"""Reading tabular files into typed columns: inference, the four formats, and every error."""

from __future__ import annotations

import json
import math
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeml.toolkit.errors import InputError
from edgeml.toolkit.tabular import (
    NULL_TOKENS,
    Column,
    Table,
    infer_column,
    read_table,
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def infer(*raw: str | None) -> Column:
    return infer_column("x", list(raw), source="data.csv")


# --- infer_column ---------------------------------------------------------------------------


def test_integers_with_signs_blanks_and_every_null_token_stay_integer() -> None:
    nulls = [*sorted(NULL_TOKENS), None, "  ", " NA "]
    col = infer("+3", "-3", " 7 ", "007", *nulls)
    assert col.kind == "integer"
    assert col.values.dtype == np.int64
    assert col.values.tolist() == [3, -3, 7, 7] + [0] * len(nulls)
    assert col.missing.tolist() == [False] * 4 + [True] * len(nulls)


@pytest.mark.parametrize(
    "raw",
    [["3.0", "1"], ["1e3", "2"], ["inf", "-Infinity", "1"], [".5", "5."], ["1", str(2**63)]],
)
def test_floats(raw: list[str]) -> None:
    col = infer(*raw, "N/A")
    assert col.kind == "float"
    assert col.values.dtype == np.float64
    assert col.values[:-1].tolist() == [float(v) for v in raw]
    assert math.isnan(col.values[-1])
    assert col.missing.tolist() == [False] * len(raw) + [True]


def test_booleans_any_case() -> None:
    col = infer("true", "FALSE", " True ", None, "")
    assert col.kind == "boolean"
    assert col.values.dtype == np.bool_
    assert col.values.tolist() == [True, False, True, False, False]
    assert col.missing.tolist() == [False, False, False, True, True]


@pytest.mark.parametrize(
    "raw",
    [
        ["1", "abc"],
        ["1_000"],  # Python's int() takes it; a data file should not
        ["\u0661\u0662"],  # Arabic-Indic digits
        ["0x10"],
        ["1", "true"],
        ["NAN"],  # not a null token (case-sensitive), and not a number either
        ["Null"],
        ["+"],
        ["1 2"],
    ],
)
def test_strings(raw: list[str]) -> None:
    col = infer(*raw, "NA")
    assert col.kind == "string"
    assert col.values.dtype == object
    assert col.values.tolist() == [*raw, ""]
    assert col.missing.tolist() == [False] * len(raw) + [True]


def test_strings_keep_their_blanks() -> None:
    assert infer(" a ", "b").values.tolist() == [" a ", "b"]


@pytest.mark.parametrize("raw", [[], ["", None, "NA"]])
def test_an_all_null_or_empty_column_is_float_all_missing(raw: list[str | None]) -> None:
    col = infer(*raw)
    assert col.kind == "float"
    assert np.isnan(col.values).all()
    assert col.missing.all()
    assert len(col) == len(raw)


def test_infer_column_is_pure_and_its_arrays_are_read_only() -> None:
    raw = ["1", None, "3"]
    first = infer_column("x", raw, source="s", first_row=11)
    second = infer_column("x", raw, source="s", first_row=11)
    assert raw == ["1", None, "3"]
    assert first.values.tolist() == second.values.tolist()
    assert (first.source, first.first_row) == ("s", 11)
    with pytest.raises(ValueError):
        first.values[0] = 5


# --- Column.as_float64 -----------------------------------------------------------------------


def test_as_float64_per_kind() -> None:
    out = infer("1", "NA", "3").as_float64()
    assert out.dtype == np.float64
    assert out[0] == 1 and math.isnan(out[1]) and out[2] == 3
    out = infer("true", "", "false").as_float64()
    assert out[0] == 1 and math.isnan(out[1]) and out[2] == 0
    out = infer("1.5", "null").as_float64()
    assert out[0] == 1.5 and math.isnan(out[1])
    out[0] = 9  # a new, writeable array


def test_as_float64_of_a_numeric_string_column_converts() -> None:
    col = Column("x", "string", np.array(["1", "", "2.5"], dtype=object), np.array([0, 1, 0], bool))
    out = col.as_float64()
    assert out[0] == 1 and math.isnan(out[1]) and out[2] == 2.5


def test_as_float64_of_text_names_file_column_row_and_value() -> None:
    col = infer_column("city", ["1", "NA", "2", "Paris", "x"], source="data.csv", first_row=101)
    with pytest.raises(InputError) as e:
        col.as_float64()
    message = str(e.value)
    assert "data.csv" in message
    assert "'city'" in message
    assert "row 104" in message
    assert "'Paris'" in message


def test_column_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match="int64"):
        Column("x", "integer", np.zeros(2), np.zeros(2, bool))
    with pytest.raises(ValueError, match="missing"):
        Column("x", "float", np.zeros(2), np.zeros(3, bool))


# --- Table ------------------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path: Path) -> Table:
    return read_table(write(tmp_path / "t.csv", "id,name,score,ok\n1,ann,1.5,true\n2,,NA,false\n"))


def test_table_names_rows_and_columns(table: Table) -> None:
    assert table.n_rows == 2
    assert table.names == ("id", "name", "score", "ok")
    assert [table.column(n).kind for n in table.names] == ["integer", "string", "float", "boolean"]
    assert table.row(0) == {"id": 1, "name": "ann", "score": 1.5, "ok": True}
    assert table.row(-1) == {"id": 2, "name": None, "score": None, "ok": False}
    assert type(table.row(0)["id"]) is int
    with pytest.raises(IndexError):
        table.row(2)


def test_table_drop_and_select(table: Table) -> None:
    assert table.drop("score").names == ("id", "name", "ok")
    assert table.select(["ok", "id"]).names == ("ok", "id")
    assert table.select(["ok", "id"]).source == table.source
    with pytest.raises(InputError, match="more than once"):
        table.select(["id", "id"])


def test_unknown_column_names_the_file_and_lists_the_columns(table: Table) -> None:
    for call in (table.column, table.drop, lambda n: table.select([n])):
        with pytest.raises(InputError) as e:
            call("Score")
        message = str(e.value)
        assert table.source in message
        assert "'Score'" in message
        assert "'id', 'name', 'score', 'ok'" in message
        assert "did you mean 'score'" in message


def test_unknown_column_listing_is_bounded(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(50))
    table = read_table(write(tmp_path / "wide.csv", header + "\n" + ",".join("1" * 50) + "\n"))
    with pytest.raises(InputError, match="and 30 more"):
        table.column("nope")


# --- CSV and TSV ------------------------------------------------------------------------------


def test_csv_quotes_commas_and_line_breaks(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv",
        'name,note,n\n"Smith, Ann","said ""hi""",1\n"multi\nline","",2\nplain,x,3\n',
    )
    table = read_table(path)
    assert table.column("name").values.tolist() == ["Smith, Ann", "multi\nline", "plain"]
    assert table.column("note").values.tolist() == ['said "hi"', "", "x"]
    assert table.column("note").missing.tolist() == [False, True, False]
    assert table.column("n").values.tolist() == [1, 2, 3]


def test_tsv(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "data.TSV", "a\tb c\n1\thello, world\n2\t\n"))
    assert table.names == ("a", "b c")
    assert table.column("a").kind == "integer"
    assert table.column("b c").values.tolist() == ["hello, world", ""]


def test_bom_crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "\ufeffa,b\r\n1,2\r\n3,4\r\n\r\n\r\n")
    table = read_table(path)
    assert table.names == ("a", "b")
    assert table.n_rows == 2


def test_blank_lines_between_rows(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "gap.csv", "a,b\n1,2\n\n3,4\n\n"))
    assert table.column("a").values.tolist() == [1, 3]
    # In a one-column file a blank line is the only way to write an empty cell.
    table = read_table(write(tmp_path / "one.csv", "a\n1\n\n3\n\n\n"))
    assert table.column("a").missing.tolist() == [False, True, False]


def test_header_only_gives_an_empty_table(tmp_path: Path) -> None:
    table = read_table(write(tmp_path / "h.csv", "a,b\n"))
    assert table.names == ("a", "b")
    assert table.n_rows == 0


def test_max_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "a\n" + "".join(f"{i}\n" for i in range(10)) + "oops,1\n")
    assert read_table(path, max_rows=3).column("a").values.tolist() == [0, 1, 2]
    assert read_table(path, max_rows=0).n_rows == 0
    with pytest.raises(ValueError):
        read_table(path, max_rows=-1)


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    assert read_table(write(tmp_path / "UP.CSV", "a\n1\n")).n_rows == 1


# --- JSON Lines -------------------------------------------------------------------------------


def test_json_lines(tmp_path: Path) -> None:
    rows = [
        {"a": 1, "b": True, "c": "x"},
        {"c": None, "a": 2, "d": 1.5},
        {"a": 3, "b": False, "d": 2},
        {"a": None, "c": "3"},
    ]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    table = read_table(path)
    assert table.names == ("a", "b", "c", "d")
    a, b, c, d = table.columns
    assert (a.kind, a.values.tolist(), a.missing.tolist()) == (
        "integer",
        [1, 2, 3, 0],
        [False, False, False, True],
    )
    assert (b.kind, b.missing.tolist()) == ("boolean", [False, True, False, True])
    assert b.values.tolist()[:3] == [True, False, False]
    assert (c.kind, c.values.tolist()) == ("string", ["x", "", "", "3"])
    assert d.kind == "float"
    assert d.values.tolist()[1:3] == [1.5, 2.0]
    assert d.missing.tolist() == [True, False, False, True]


def test_ndjson_mixing_numbers_and_text_gives_a_string_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.ndjson", '{"v": 1}\n\n{"v": "n/a"}\n{"v": 2.5}\n')
    column = read_table(path).column("v")
    assert column.kind == "string"
    assert column.values.tolist() == ["1", "n/a", "2.5"]


def test_json_lines_nested_value_names_row_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "n.jsonl", '{"a": 1}\n\n{"a": 2, "tags": ["x"]}\n')
    with pytest.raises(InputError) as e:
        read_table(path)
    message = str(e.value)
    assert "n.jsonl" in message
    assert "row 2 (line 3)" in message
    assert "'tags'" in message
    assert "array" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}\n{"a": 2,}\n', "not valid JSON"),
        ('{"a": 1}\n[1, 2]\n', "expected a JSON object"),
        ('{"a": 1}\n"text"\n', "got a JSON string"),
        ('{"a": 1}\n{"": 2}\n', "key is empty"),
        ('{"a": 1}\n{"a": {"b": 1}}\n', "JSON object is not a table cell"),
    ],
)
def test_json_lines_bad_line_names_the_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InputError) as e:
        read_table(write(tmp_path / "bad.jsonl", text))
    message = str(e.value)
    assert "bad.jsonl" in message
    assert "row 2 (line 2)" in message
    assert expected in message


def test_json_lines_without_objects_is_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"e\.jsonl is empty"):
        read_table(write(tmp_path / "e.jsonl", "\n  \n"))


def test_json_lines_max_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", '{"a": 1}\n{"a": 2}\nnot json\n')
    assert read_table(path, max_rows=2).column("a").values.tolist() == [1, 2]


# --- Parquet ----------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table(
            {
                "i8": pa.array([1, None, 3], type=pa.int8()),
                "u64": pa.array([1, 2, 2**64 - 1], type=pa.uint64()),
                "f": pa.array([1.5, None, float("nan")], type=pa.float32()),
                "b": pa.array([True, None, False]),
                "s": pa.array(["x", None, ""]),
                "cat": pa.array(["a", "b", None]).dictionary_encode(),
                "ts": pa.array([0, None, 86_400], type=pa.timestamp("s")),
                "empty": pa.array([None, None, None], type=pa.null()),
                "dec": pa.array([Decimal("1.25"), None, Decimal("-3")], type=pa.decimal128(5, 2)),
            }
        ),
        path,
    )
    table = read_table(path)
    assert table.names == ("i8", "u64", "f", "b", "s", "cat", "ts", "empty", "dec")
    kinds = [c.kind for c in table.columns]
    expected = ["integer", "float", "float", "boolean", "string", "string", "string", "float"]
    assert kinds == [*expected, "float"]
    assert table.column("dec").as_float64()[[0, 2]].tolist() == [1.25, -3.0]
    assert table.column("dec").missing.tolist() == [False, True, False]
    i8 = table.column("i8")
    assert i8.values.dtype == np.int64
    assert (i8.values.tolist(), i8.missing.tolist()) == ([1, 0, 3], [False, True, False])
    assert table.column("u64").values[2] == float(2**64 - 1)
    assert table.column("f").missing.tolist() == [False, True, True]  # NaN counts as null
    assert table.column("b").values.tolist() == [True, False, False]
    assert table.column("b").missing.tolist() == [False, True, False]
    assert table.column("s").values.tolist() == ["x", "", ""]
    assert table.column("s").missing.tolist() == [False, True, False]
    assert table.column("cat").values.tolist() == ["a", "b", ""]
    assert table.column("ts").values[2].startswith("1970-01-02")
    assert table.column("empty").missing.all()
    assert table.row(0)["i8"] == 1
    with pytest.raises(ValueError):
        table.column("i8").values[0] = 2


def test_parquet_max_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"a": list(range(100))}), path, row_group_size=7)
    assert read_table(path, max_rows=10).column("a").values.tolist() == list(range(10))
    assert read_table(path, max_rows=0).n_rows == 0
    assert read_table(path, max_rows=1000).n_rows == 100


def test_parquet_unsupported_type_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"a": [1], "tags": [["x", "y"]]}), path)
    with pytest.raises(InputError) as e:
        read_table(path)
    assert "l.parquet" in str(e.value)
    assert "'tags'" in str(e.value)


def test_parquet_duplicate_column_names(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"]), path)
    with pytest.raises(InputError) as e:
        read_table(path)
    assert "dup.parquet" in str(e.value)
    assert "columns 1 and 2 are both named 'a'" in str(e.value)


def test_not_a_parquet_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"x\.parquet is not a readable Parquet file"):
        read_table(write(tmp_path / "x.parquet", "a,b\n1,2\n"))


def test_parquet_without_pyarrow_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError) as e:
        read_table(path)
    assert "reading Parquet needs pyarrow: pip install 'edgeml[server]'" in str(e.value)
    assert "d.parquet" in str(e.value)


# --- errors shared by every format ------------------------------------------------------------


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: no such file"):
        read_table(tmp_path / "nope.csv")


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match=r"dir\.csv is a folder"):
        read_table(tmp_path / "dir.csv")


@pytest.mark.parametrize("name", ["e.csv", "e.tsv", "e.jsonl", "e.parquet"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=rf"{name} is empty"):
        read_table(write(tmp_path / name, ""))


def test_a_file_holding_only_a_bom_is_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"bom\.csv is empty"):
        read_table(write(tmp_path / "bom.csv", "\ufeff"))


@pytest.mark.parametrize("name", ["data.xlsx", "data.npy", "data"])
def test_unsupported_extension_lists_the_supported_ones(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError) as e:
        read_table(write(tmp_path / name, "a\n1\n"))
    message = str(e.value)
    assert name in message
    assert ".csv, .tsv, .jsonl, .ndjson, .parquet" in message


@pytest.mark.parametrize(
    ("name", "text", "offset", "line"),
    [
        ("l1.csv", "name\ncaf\xe9\n", 8, 2),
        ("l1.jsonl", '{"a": "ok"}\n{"a": "caf\xe9"}\n', 22, 2),
        ("bom.csv", "\ufeffa\n\xff\n", 5, 2),
    ],
)
def test_invalid_utf8_names_the_byte_offset_and_line(
    tmp_path: Path, name: str, text: str, offset: int, line: int
) -> None:
    # Latin-1 bytes for the non-ASCII characters; the BOM stays UTF-8.
    data = text.replace("\ufeff", "").encode("latin-1")
    if text.startswith("\ufeff"):
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as e:
        read_table(path)
    message = str(e.value)
    assert name in message
    assert f"byte offset {offset}" in message
    assert f"line {line}" in message
    assert data[offset] >= 0x80


# --- CSV errors -------------------------------------------------------------------------------


def test_csv_whose_first_line_is_blank_has_no_header(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        read_table(write(tmp_path / "nh.csv", "\na,b\n1,2\n"))
    assert "nh.csv, line 1" in str(e.value)
    assert "header" in str(e.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a,,c", "field 2 has an empty name"),
        ("a, ,c", "field 2 has an empty name"),
        ("a,b,a", "fields 1 and 3 are both named 'a'"),
    ],
)
def test_bad_header_names_the_field(tmp_path: Path, header: str, expected: str) -> None:
    with pytest.raises(InputError) as e:
        read_table(write(tmp_path / "h.csv", header + "\n1,2,3\n"))
    assert "h.csv, line 1 (the header)" in str(e.value)
    assert expected in str(e.value)


@pytest.mark.parametrize(
    ("row", "count"),
    [("5,6,7,8", 4), ("5,6", 2)],
)
def test_row_with_wrong_field_count_names_row_line_and_counts(
    tmp_path: Path, row: str, count: int
) -> None:
    # The quoted line break makes the physical line differ from the row number + 1.
    path = write(tmp_path / "w.csv", f'a,b,c\n1,"two\nlines",3\n\n{row}\n')
    with pytest.raises(InputError) as e:
        read_table(path)
    message = str(e.value)
    assert "w.csv, row 2 (line 5)" in message
    assert f"{count} fields, but the header has 3" in message


def test_unclosed_quote_names_the_row_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "u.csv", 'a,b\n1,2\n3,"open\n4,5\n')
    with pytest.raises(InputError) as e:
        read_table(path)
    assert "u.csv, row 2 (line 3)" in str(e.value)


def test_text_after_a_closing_quote_names_the_row_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", 'a\tb\n1\t"x"y\n')
    with pytest.raises(InputError) as e:
        read_table(path)
    assert "t.tsv, row 1 (line 2)" in str(e.value)


# --- properties -------------------------------------------------------------------------------

NUMBERISH = st.text(alphabet="0123456789+-.eEinfINFty \t", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(NUMBERISH)
def test_a_cell_is_a_number_exactly_when_python_float_takes_it(text: str) -> None:
    try:
        expected: float | None = float(text)
    except ValueError:
        expected = None
    col = infer_column("x", [text, "1"], source="p.csv")
    if not text.strip():
        assert col.missing.tolist() == [True, False]
    elif expected is None:
        assert col.kind == "string"
        with pytest.raises(InputError, match=r"p\.csv, row 1, column 'x'"):
            col.as_float64()
    else:
        assert col.kind in ("integer", "float")
        assert col.as_float64()[0] == expected
        text_col = Column("x", "string", np.array([text], dtype=object), np.array([False]))
        assert text_col.as_float64()[0] == expected


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["3", "-1.5", "true", "x", "", "NA", " 7 "]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(JSON_SCALARS, min_size=1, max_size=8))
def test_json_values_type_like_their_text_forms(values: list[object]) -> None:
    texts = [None if v is None else json.dumps(v).strip('"') for v in values]
    texts = [{"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(t, t) for t in texts]
    expected = infer_column("v", texts, source="e")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.jsonl"
        path.write_text("".join(json.dumps({"v": v}) + "\n" for v in values))
        got = read_table(path).column("v")
    assert got.kind == expected.kind
    assert got.missing.tolist() == expected.missing.tolist()
    np.testing.assert_array_equal(got.values, expected.values)


def test_json_lines_typed_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.jsonl",
        '{"big": 1, "nan": 1.5, "mix": 1, "none": null}\n'
        f'{{"big": {2**64}, "nan": NaN, "mix": true, "none": null}}\n',
    )
    table = read_table(path)
    assert table.column("big").kind == "float"
    assert table.column("nan").missing.tolist() == [False, True]
    assert table.column("mix").kind == "string"
    assert table.column("mix").values.tolist() == ["1", "true"]
    assert table.column("none").kind == "float"
    assert table.column("none").missing.all()
