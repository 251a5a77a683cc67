"""The local API's request bodies and response documents: parsing a predict body into rows
the scoring engine takes, and the JSON documents it answers with (docs/agent-api.md).

No sockets here: :mod:`edgeml.agent.api` reads and writes HTTP. A body that is not a predict
request raises :class:`Refusal` with the HTTP status and the document to answer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:  # a compiled JSON reader and writer (docs/agent-api.md, "JSON")
    import orjson as _orjson
except ImportError:  # a dependency; without it the standard library reads and writes alone
    _orjson = None  # type: ignore[assignment]

from edgeml.toolkit.contract import ContractReport, ContractViolation, RangeCount
from edgeml.toolkit.scoring import Predictions, ScoringEngine

MAX_VIOLATIONS_SHOWN = 20
_NUMBER = (int, float)
_NUMBERS = frozenset(_NUMBER)


# ------------------------------------------------------------------------- documents


def health_document(engine: ScoringEngine) -> dict[str, Any]:
    """``/v1/health``'s body while serving."""
    manifest = engine.manifest
    return {
        "status": "serving",
        "bundle": engine.bundle_id,
        "name": manifest.name,
        "version": manifest.version,
        "profile": manifest.profile,
        "task": engine.task,
    }


def model_document(engine: ScoringEngine) -> dict[str, Any]:
    """``/v1/model``'s body: the active bundle's manifest summary."""
    manifest = engine.manifest
    return {
        "bundle": engine.bundle_id,
        "name": manifest.name,
        "version": manifest.version,
        "profile": manifest.profile,
        "task": engine.task,
        "classes": list(engine.classes) if engine.task == "classification" else None,
        "features": [spec.to_dict() for spec in engine.contract.features],
        "outputs": [field.name for field in engine.output_fields()],
        "metrics": manifest.metrics,
        "precision": manifest.precision,
        "key_id": engine.key_id,
        "providers": list(engine.providers),
    }


def prediction_document(
    engine: ScoringEngine,
    predictions: Predictions,
    out_of_range: Mapping[str, RangeCount],
    unknown: Sequence[str],
) -> dict[str, Any]:
    """``/v1/predict``'s body for scored rows (``out_of_range``: the contract check's counts of
    values outside their range, by feature)."""
    document: dict[str, Any] = {"bundle": engine.bundle_id}
    if predictions.values is not None:
        document["predictions"] = predictions.values.tolist()
    else:
        labels = predictions.labels if predictions.labels is not None else np.zeros(0)
        document["predictions"] = labels.tolist()
        if predictions.probabilities is not None:
            document["classes"] = list(predictions.classes)
            document["probabilities"] = predictions.probabilities.tolist()
    if unknown:
        document["unknown_fields"] = list(unknown)
    if out_of_range:
        document["out_of_range"] = {k: v.total for k, v in out_of_range.items()}
    return document


def violation_document(report: ContractReport) -> dict[str, Any]:
    """The 422 body for rows that break the contract: the first violations by row and
    field (``row`` is the 0-based index in ``rows`` or ``instances``)."""
    violations = [
        {
            "row": v.row,
            "field": v.column,
            "kind": v.kind,
            "value": v.to_dict()["value"],
            "message": v.message,
        }
        for v in report.violations(MAX_VIOLATIONS_SHOWN)
    ]
    return {
        "error": "contract-violation",
        "message": str(ContractViolation.from_report(report)),
        "invalid_rows": report.invalid_rows,
        "missing_fields": list(report.missing_columns),
        "violations": violations,
    }


# ------------------------------------------------------------------------- request bodies


class Refusal(Exception):
    """A request answered with an error status before (or instead of) scoring."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.document = {"error": kind, "message": message, **extra}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Made once: ``json.loads``/``json.dumps`` with any option build a new decoder or encoder (and
# its C scanner) on every call, a good part of a small request's time.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def read_json(body: bytes) -> Any:
    """A request body's JSON document.

    orjson reads a UTF-8 body of plain JSON (a few times faster than the standard library on
    a row of numbers); whatever it refuses (another encoding, a byte order mark, a lone
    surrogate, nesting past 1,024, a number past float's range, ``NaN``) goes to the
    standard library, which reads it as it always did or raises the error the client is
    shown. One difference remains: orjson reads an integer past 64 bits as the nearest
    float, where the standard library keeps it whole; the model reads float32 either way.

    Raises:
        ValueError: not JSON (``NaN`` and the infinities included: they are not JSON).
        RecursionError: nested too deep for the standard library.
    """
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass  # the standard library decides, and words the error
    # what json.loads does with bytes, with the decoder made once
    return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def parse_body(body: bytes, engine: ScoringEngine) -> tuple[Any, list[str]]:
    """The rows of a predict body, in a form ``engine.check`` takes, and the unknown fields.

    Rows whose values are all JSON numbers become one float matrix (the fast path); anything
    else (strings, booleans, nulls, absent fields) goes to the contract check as it came, so
    it is judged exactly as ``edgeml score`` judges it.

    Raises:
        Refusal: 400 for a body that is not a predict request, 422 for an instance with the
            wrong number of values.
    """
    try:
        document = read_json(body)
    except (ValueError, RecursionError) as error:
        raise Refusal(400, "bad-request", f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict) or len({"rows", "instances"} & document.keys()) != 1:
        raise Refusal(
            400,
            "bad-request",
            'the body must be an object with "rows": [{field: value}, ...] or '
            '"instances": [[value, ...], ...]',
        )
    features = engine.features
    if "rows" in document:
        rows = document["rows"]
        if not isinstance(rows, list) or not rows:
            raise Refusal(400, "bad-request", '"rows" must be a non-empty list of objects')
        return _rows(rows, features, engine.input_dtype)
    instances = document["instances"]
    if not isinstance(instances, list) or not instances:
        raise Refusal(400, "bad-request", '"instances" must be a non-empty list of arrays')
    return _instances(instances, features, engine.input_dtype), []


def _rows(rows: list[Any], features: Sequence[str], dtype: np.dtype) -> tuple[Any, list[str]]:
    known = set(features)
    unknown: dict[str, None] = {}
    cells: list[list[Any]] | None = []
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise Refusal(400, "bad-request", f"rows[{i}] must be an object of field: value")
        if cells is not None:
            try:
                values = [row[name] for name in features]
            except KeyError:
                cells = None
            else:
                if _NUMBERS.issuperset(map(type, values)):
                    cells.append(values)
                else:
                    cells = None
        if cells is not None and len(row) != len(features):
            unknown.update(dict.fromkeys(k for k in row if k not in known))
    if cells is not None:
        with contextlib.suppress(OverflowError):
            return _matrix(cells, dtype), list(unknown)
    for i, row in enumerate(rows):
        for name, value in row.items():
            _refuse_nested(i, name, value)
    return rows, []  # the contract check lists unknown columns itself


def _matrix(cells: list[list[Any]], dtype: np.dtype) -> np.ndarray:
    """Numbers as the model's float matrix, converted once (what ``as_input`` would do: a
    value beyond float32 becomes inf, which the contract check then flags)."""
    with np.errstate(over="ignore"):
        return np.array(cells, dtype=dtype)


def _instances(instances: list[Any], features: Sequence[str], dtype: np.dtype) -> Any:
    width = len(features)
    numbers = True
    for i, row in enumerate(instances):
        if type(row) is not list:
            raise Refusal(400, "bad-request", f"instances[{i}] must be an array of values")
        if len(row) != width:
            message = (
                f"row {i}: {len(row)} values; the model reads {width} features "
                f"({', '.join(features)}), in that order"
            )
            raise _row_violation(i, None, "wrong width", message)
        if numbers and not _NUMBERS.issuperset(map(type, row)):
            numbers = False
    if numbers:
        with contextlib.suppress(OverflowError):
            return _matrix(instances, dtype)
    for i, row in enumerate(instances):
        for name, value in zip(features, row, strict=True):
            _refuse_nested(i, name, value)
    return {name: [row[j] for row in instances] for j, name in enumerate(features)}


def _refuse_nested(row: int, name: str, value: Any) -> None:
    if isinstance(value, dict | list):
        kind = "an object" if isinstance(value, dict) else "an array"
        message = f"row {row}, column {name!r}: {kind} is not a value (flatten it into fields)"
        raise _row_violation(row, name, "wrong type", message)


def _row_violation(row: int, field: str | None, kind: str, message: str) -> Refusal:
    """The 422 for one row the body's shape already condemns (before the contract check),
    in the form of ``violation_document``."""
    violation = {"row": row, "field": field, "kind": kind, "value": None, "message": message}
    return Refusal(
        422,
        "contract-violation",
        message,
        invalid_rows=1,
        missing_fields=[],
        violations=[violation],
    )


def json_bytes(document: Any) -> bytes:
    """A response document as compact JSON in UTF-8; a nan or an infinity is written null.

    orjson writes it when it can (``1e-6`` where the standard library writes ``1e-06``, and
    other characters than ASCII as UTF-8 rather than escapes: the same JSON); a value it
    does not write (an integer past 64 bits, a numpy scalar) makes the standard library
    write the whole document.
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(document)  # writes nan and the infinities as null
        except TypeError:
            pass
    try:
        return _ENCODER.encode(document).encode()
    except ValueError:  # a nan or an infinity among the outputs: JSON has no such number
        return json.dumps(_finite(document), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
