"""The local API's JSON: orjson reads and writes what it can, the standard library the rest,
and a client sees the same documents (and the same errors) either way."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeml.agent import api_bodies
from edgeml.agent.api_bodies import json_bytes, read_json

orjson = pytest.importorskip("orjson")


@pytest.fixture
def standard_library_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API as it runs where orjson is not installed."""
    monkeypatch.setattr(api_bodies, "_orjson", None)


def without_orjson(function: Any, *args: Any) -> Any:
    saved, api_bodies._orjson = api_bodies._orjson, None
    try:
        return function(*args)
    finally:
        api_bodies._orjson = saved


def typed(value: Any) -> str:
    """A value's JSON with its Python types told apart (1 and 1.0, -0.0 and 0.0)."""
    return json.dumps(value, default=repr, allow_nan=True)


documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(documents, st.booleans())
def test_a_body_reads_the_same_with_or_without_orjson(document: Any, ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    assert typed(read_json(body)) == typed(without_orjson(read_json, body))


@settings(max_examples=300, deadline=None)
@given(documents)
def test_a_document_writes_the_same_json_with_or_without_orjson(document: Any) -> None:
    written = json_bytes(document)
    assert typed(json.loads(written)) == typed(json.loads(without_orjson(json_bytes, document)))


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"rows": [1]}',  # a byte order mark
        '{"rows": [1]}'.encode("utf-16"),
        b'{"x": "\\ud800"}',  # a lone surrogate
        b"[1e400]",  # past float's range: the standard library reads inf
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_what_orjson_refuses_the_standard_library_reads_as_before(body: bytes) -> None:
    try:
        before: Any = ("read", typed(without_orjson(read_json, body)))
    except (ValueError, RecursionError) as error:
        before = ("error", type(error), str(error))
    try:
        now: Any = ("read", typed(read_json(body)))
    except (ValueError, RecursionError) as error:
        now = ("error", type(error), str(error))
    assert now == before


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_the_infinities_are_not_json_either_way(constant: bytes) -> None:
    body = b'{"instances": [[' + constant + b"]]}"
    with pytest.raises(ValueError, match="is not JSON"):
        read_json(body)
    with pytest.raises(ValueError, match="is not JSON"):
        without_orjson(read_json, body)


def test_an_integer_past_64_bits_reads_as_the_nearest_float() -> None:
    """The one documented difference: the model reads float32 either way."""
    body = b"[18446744073709551616]"
    assert read_json(body) == [18446744073709551616.0]
    assert without_orjson(read_json, body) == [18446744073709551616]


def test_what_orjson_does_not_write_the_standard_library_writes() -> None:
    import numpy as np

    document = {"big": 2**70, "scalar": np.float64(0.5), "bad": [math.nan, math.inf]}
    expected = {"big": 2**70, "scalar": 0.5, "bad": [None, None]}
    assert json.loads(json_bytes(document)) == expected
    assert json.loads(without_orjson(json_bytes, document)) == expected
    assert json.loads(json_bytes({"p": [math.nan, -math.inf, 1e-6]})) == {"p": [None, None, 1e-6]}


@pytest.mark.usefixtures("standard_library_only")
def test_without_orjson_a_malformed_body_is_still_refused() -> None:
    with pytest.raises(ValueError, match="Expecting"):
        read_json(b"{not json")
