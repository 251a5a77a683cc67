"""The agent's local scoring API: JSON over HTTP, on loopback or a Unix socket.

``GET /v1/health``, ``GET /v1/model`` and ``POST /v1/predict`` (DESIGN.md, "The agent's
config and local API"; docs/agent-api.md is the reference). Built on the standard library
alone (``http.server`` with HTTP/1.1 keep-alive, ``socketserver`` for the Unix socket): a
device carries no web framework. Scoring goes through the active bundle's
``ScoringEngine`` (its data contract first), which a :class:`ModelHolder` hands over; the
daemon swaps the holder's engine when it installs a bundle, and each request keeps the
engine it started with. The API knows nothing of MQTT: it answers whether or not the broker
is reachable.

Security: it binds to loopback by default. Bound to any other address it requires a bearer
token (the constructor refuses to start without one); a token, when given, is checked on
every request in constant time, and is never logged. A Unix socket is created 0600 (or the
mode asked for) by binding under a temporary name and renaming, and a stale socket left by a
dead agent is replaced; a live one is not. Every size an outsider controls is bounded: the
body (8 MiB), the connections served at once (64), the seconds a connection may idle (30).

What this module leaves to others: what happens to the observations it hands to its
``record`` callback (``edgeml.agent.telemetry``, fed by the daemon), loading and verifying
bundles (``edgeml.toolkit.scoring``), reading the config.
"""

from __future__ import annotations

import contextlib
import email.utils
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import socketserver
import stat
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeml.agent.telemetry import Observation, Outcome
from edgeml.toolkit.contract import ContractReport, ContractViolation
from edgeml.toolkit.errors import ConfigError, InputError
from edgeml.toolkit.scoring import Predictions, ScoringEngine

log = logging.getLogger("edgeml.agent.api")

DEFAULT_LISTEN = "127.0.0.1:8765"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 30.0
MIN_TOKEN_LENGTH = 16
MAX_VIOLATIONS_SHOWN = 20
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 token68
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; leave room for ".tmpPID"
_NUMBER = (int, float)
_NUMBERS = frozenset(_NUMBER)

Recorder = Callable[[Observation], None]
"""Called with one observation per predict request, after its answer was sent."""


class EngineHolder(Protocol):
    """What the API reads the active engine from: :class:`ModelHolder` is one."""

    def current(self) -> ScoringEngine | None: ...


class ModelHolder:
    """The active scoring engine, swapped atomically by the daemon; thread-safe.

    A request takes the engine once (:meth:`current`) and uses it to the end, so a swap
    never mixes two bundles in one answer.

    Attributes:
        detail: why no engine is active, when none is (``/v1/health`` says it).
    """

    def __init__(self, engine: ScoringEngine | None = None, detail: str = "") -> None:
        self._engine = engine
        self.detail = detail or ("" if engine is not None else "no verified bundle is active")
        self._lock = threading.Lock()

    def current(self) -> ScoringEngine | None:
        """The active engine, or None."""
        return self._engine  # one reference read: atomic

    def swap(self, engine: ScoringEngine | None, detail: str = "") -> ScoringEngine | None:
        """Make ``engine`` the active one (None: stop serving, saying ``detail``).

        Returns:
            The engine that was active.
        """
        with self._lock:
            previous, self._engine = self._engine, engine
            self.detail = detail or ("" if engine is not None else "no verified bundle is active")
            return previous


# ----------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class ListenAddress:
    """Where the API listens: ``HOST:PORT`` (``[v6]:PORT``) or ``unix:/path``."""

    host: str = ""
    port: int = 0
    unix_path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse a listen address.

        Raises:
            ConfigError: neither ``HOST:PORT`` nor ``unix:/path``.
        """
        if not isinstance(text, str) or not text:
            raise ConfigError(f"api listen address must be HOST:PORT or unix:/path, got {text!r}")
        if text.startswith("unix:"):
            path = text[5:]
            if not path:
                raise ConfigError(f"api listen address {text!r} names no socket path")
            if len(os.fsencode(path)) > _UNIX_PATH_MAX:
                raise ConfigError(
                    f"api listen address {text!r}: a Unix socket path may hold at most "
                    f"{_UNIX_PATH_MAX} bytes"
                )
            return cls(unix_path=Path(path))
        host, _, port = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"api listen address must be HOST:PORT or unix:/path, got {text!r}")
        return cls(host=host, port=int(port))

    @property
    def loopback(self) -> bool:
        """True for a Unix socket, ``localhost`` and loopback IPs."""
        if self.unix_path is not None or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ----------------------------------------------------------------------------- the server


class ScoringAPI:
    """The local API server; :meth:`start` serves it in a background thread.

    Example::

        holder = ModelHolder(ScoringEngine.open(bundle, trust))
        with ScoringAPI(holder, "127.0.0.1:8765", record=accumulator.observe) as api:
            api.start()
            ...
    """

    def __init__(
        self,
        holder: EngineHolder,
        listen: str = DEFAULT_LISTEN,
        *,
        token: str | None = None,
        record: Recorder | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        socket_mode: int = 0o600,
        health_info: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Bind the listening socket (nothing is served before :meth:`start`).

        Args:
            holder: gives the active engine (``current()``), or None while none is active.
            listen: ``HOST:PORT`` (port 0: any free port, see :attr:`address`) or
                ``unix:/path``.
            token: the bearer token clients must send (``Authorization: Bearer TOKEN``);
                required unless ``listen`` is loopback or a Unix socket. At least 16
                characters of ``A-Z a-z 0-9 - . _ ~ + /`` (then ``=`` padding).
            record: called with an :class:`Observation` of every predict request that
                reached a bundle, after its answer was sent (the daemon feeds its telemetry
                window with it); its exceptions are logged, never answered.
            max_body_bytes: the largest request body; a larger one is answered 413.
            max_connections: connections served at once; one more is answered 503.
            idle_timeout_s: a connection idle (or stalled mid-request) this long is closed.
            socket_mode: the Unix socket's permissions (0o600, or 0o660 for a group).
            health_info: extra fields for ``/v1/health`` (e.g. the broker connection); must
                be fast and must not raise.

        Raises:
            ConfigError: the address is malformed, non-loopback without a token, the token
                is malformed, a bound is not positive, the address is in use (or a live
                agent serves on the socket), or a non-socket file sits at the socket path.
        """
        self.listen = ListenAddress.parse(listen)
        if token is None and not self.listen.loopback:
            raise ConfigError(
                f"api listen address {listen!r} is not loopback: the API requires a token "
                "to serve other hosts (api.token_file)"
            )
        if token is not None and (
            not isinstance(token, str)
            or len(token) < MIN_TOKEN_LENGTH
            or not _TOKEN_PATTERN.match(token)
        ):
            raise ConfigError(
                f"the api token must be at least {MIN_TOKEN_LENGTH} characters of "
                "A-Z a-z 0-9 - . _ ~ + / (then = padding)"
            )  # the token itself is never shown
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("max_connections", max_connections),
            ("idle_timeout_s", idle_timeout_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"api {name} must be positive, got {value!r}")
        self.holder = holder
        self.record = record
        self.max_body_bytes = int(max_body_bytes)
        self.health_info = health_info
        self.record_failures = 0
        self.model_failures = 0
        self._token = None if token is None else token.encode("ascii")
        self._thread: threading.Thread | None = None
        self._closed = False
        self._serving = threading.Event()
        self._cache: dict[str, tuple[weakref.ref[ScoringEngine], bytes]] = {}
        handler = type(
            "ScoringHandler",
            (_Handler,),
            {
                "api": self,
                "timeout": float(idle_timeout_s),
                "disable_nagle_algorithm": self.listen.unix_path is None,
            },
        )
        self._server = _bind(self.listen, handler, int(max_connections), socket_mode)

    def __repr__(self) -> str:  # the token stays out of every repr and log line
        return f"ScoringAPI({self.address!r}, token={'set' if self._token else 'none'})"

    @property
    def address(self) -> str:
        """Where it listens: ``HOST:PORT`` with the real port, or ``unix:/path``."""
        if self.listen.unix_path is not None:
            return str(self.listen)
        host, port = self._server.server_address[:2]
        return str(ListenAddress(host=str(host), port=int(port)))

    @property
    def port(self) -> int | None:
        """The TCP port bound (None on a Unix socket)."""
        if self.listen.unix_path is not None:
            return None
        return int(self._server.server_address[1])

    def serve_forever(self) -> None:
        """Serve until :meth:`close` (blocks)."""
        self._serving.set()
        self._server.serve_forever(poll_interval=0.05)

    def start(self) -> threading.Thread:
        """Serve in a daemon thread.

        Returns:
            The thread.
        """
        if self._thread is None:
            self._serving.set()  # before the thread runs: close() must then wait for it
            self._thread = threading.Thread(
                target=self.serve_forever, name=f"edgeml-api {self.address}", daemon=True
            )
            self._thread.start()
        return self._thread

    def close(self) -> None:
        """Stop serving, close every connection and the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._serving.is_set():
            self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScoringAPI:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- helpers

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (constant time)."""
        if self._token is None:
            return True
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        given = credentials.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._token)

    def cached(self, key: str, engine: ScoringEngine, build: Callable[[], Any]) -> bytes:
        """A response body computed once per engine."""
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is engine:
            return hit[1]
        body = _json(build())
        self._cache[key] = (weakref.ref(engine), body)
        return body

    def observe(self, observation: Observation) -> None:
        if self.record is None:
            return
        try:
            self.record(observation)
        except Exception:
            self.record_failures += 1
            if self.record_failures == 1 or self.record_failures % 1000 == 0:
                log.exception("recording telemetry failed (%d times)", self.record_failures)


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
    engine: ScoringEngine, predictions: Predictions, report: ContractReport, unknown: Sequence[str]
) -> dict[str, Any]:
    """``/v1/predict``'s body for scored rows."""
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
    if report.out_of_range:
        document["out_of_range"] = {k: v.total for k, v in report.out_of_range.items()}
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


class _Refusal(Exception):
    """A request answered with an error status before (or instead of) scoring."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.document = {"error": kind, "message": message, **extra}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes, engine: ScoringEngine) -> tuple[Any, list[str]]:
    """The rows of a predict body, in a form ``engine.check`` takes, and the unknown fields.

    Rows whose values are all JSON numbers become one float matrix (the fast path); anything
    else (strings, booleans, nulls, absent fields) goes to the contract check as it came, so
    it is judged exactly as ``edgeml score`` judges it.

    Raises:
        _Refusal: 400 for a body that is not a predict request, 422 for an instance with the
            wrong number of values.
    """
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise _Refusal(400, "bad-request", f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict) or len({"rows", "instances"} & document.keys()) != 1:
        raise _Refusal(
            400,
            "bad-request",
            'the body must be an object with "rows": [{field: value}, ...] or '
            '"instances": [[value, ...], ...]',
        )
    features = engine.features
    if "rows" in document:
        rows = document["rows"]
        if not isinstance(rows, list) or not rows:
            raise _Refusal(400, "bad-request", '"rows" must be a non-empty list of objects')
        return _rows(rows, features, engine.input_dtype)
    instances = document["instances"]
    if not isinstance(instances, list) or not instances:
        raise _Refusal(400, "bad-request", '"instances" must be a non-empty list of arrays')
    return _instances(instances, features, engine.input_dtype), []


def _rows(rows: list[Any], features: Sequence[str], dtype: np.dtype) -> tuple[Any, list[str]]:
    known = set(features)
    unknown: dict[str, None] = {}
    cells: list[list[Any]] | None = []
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise _Refusal(400, "bad-request", f"rows[{i}] must be an object of field: value")
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
            raise _Refusal(400, "bad-request", f"instances[{i}] must be an array of values")
        if len(row) != width:
            message = (
                f"row {i}: {len(row)} values; the model reads {width} features "
                f"({', '.join(features)}), in that order"
            )
            violation = {"row": i, "field": None, "kind": "wrong width", "value": None}
            raise _Refusal(
                422,
                "contract-violation",
                message,
                invalid_rows=1,
                missing_fields=[],
                violations=[{**violation, "message": message}],
            )
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
        raise _Refusal(
            422,
            "contract-violation",
            message,
            invalid_rows=1,
            missing_fields=[],
            violations=[
                {"row": row, "field": name, "kind": "wrong type", "value": None, "message": message}
            ],
        )


def _json(document: Any) -> bytes:
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
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


# ------------------------------------------------------------------------- the handler

_MAX_HEADERS = 100
_MAX_HEADER_LINE = 65536
_SINGLE_HEADERS = frozenset({"content-length", "transfer-encoding", "authorization"})


class _Headers:
    """Request headers by lower-cased name (what the handler reads of them)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields


_ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/health": ("GET",),
    "/v1/model": ("GET",),
    "/v1/predict": ("POST",),
}
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class _Handler(BaseHTTPRequestHandler):
    """One connection; each request is dispatched by path, then by method."""

    protocol_version = "HTTP/1.1"
    server_version = "edgeml-agent"
    sys_version = ""
    api: ScoringAPI
    _date = (0, "")

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging: it costs time and could carry what clients send."""

    def parse_request(self) -> bool:
        """Read the request line and headers (the base class's email parser costs more than
        the model on a small request).

        Sets ``command``, ``path``, ``request_version``, ``headers`` and ``close_connection``
        as the base class does; refuses (and answers) a malformed line, an HTTP version other
        than 1.0 and 1.1, more than 100 headers, a header line over 64 KiB, and a repeated
        ``Content-Length``, ``Transfer-Encoding`` or ``Authorization``.
        """
        self.command = None
        self.request_version = "HTTP/1.1"
        self.close_connection = True
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = line
        words = line.split()
        if len(words) != 3:
            self.send_error(400, f"bad request line {line[:80]!r}")
            return False
        command, path, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            status = 505 if version.startswith("HTTP/") else 400
            self.send_error(status, f"unsupported HTTP version {version[:20]!r}")
            return False
        self.command, self.path, self.request_version = command, path, version
        fields: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            raw = self.rfile.readline(_MAX_HEADER_LINE + 1)
            if len(raw) > _MAX_HEADER_LINE:
                self.send_error(431, "a header line is too long")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            name, colon, value = raw.decode("iso-8859-1").partition(":")
            key = name.lower()
            if not colon or not key or key != key.strip():
                self.send_error(400, "malformed header line")
                return False
            value = value.strip()
            if key in fields:
                if key in _SINGLE_HEADERS:
                    self.send_error(400, f"repeated {name} header")
                    return False
                value = f"{fields[key]}, {value}"
            fields[key] = value
        else:
            self.send_error(431, f"more than {_MAX_HEADERS} headers")
            return False
        self.headers = _Headers(fields)  # type: ignore[assignment]
        tokens = {t.strip().lower() for t in fields.get("connection", "").split(",")}
        self.close_connection = "close" in tokens or (
            version == "HTTP/1.0" and "keep-alive" not in tokens
        )
        if version == "HTTP/1.1" and fields.get("expect", "").lower() == "100-continue":
            return bool(self.handle_expect_100())
        return True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_POST

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's errors (malformed request line, headers too long), as JSON."""
        with contextlib.suppress(OSError):
            phrase = _PHRASES.get(code, "")
            kind = phrase.lower().replace(" ", "-") or "error"
            self._reply(code, {"error": kind, "message": message or phrase}, close=True)

    # ------------------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        started = time.perf_counter()
        api = self.api
        try:
            if not api.authorized(self.headers.get("Authorization")):
                self._reply(
                    401,
                    {"error": "unauthorized", "message": "send Authorization: Bearer TOKEN"},
                    headers=(("WWW-Authenticate", 'Bearer realm="edgeml-agent"'),),
                    close=self._body_pending(),
                )
                return
            path = self.path.split("?", 1)[0]
            methods = _ROUTES.get(path)
            if methods is None:
                self._reply(
                    404,
                    {"error": "not-found", "message": f"no endpoint {path}"},
                    close=self._body_pending(),
                )
                return
            if self.command not in methods:
                self._reply(
                    405,
                    {
                        "error": "method-not-allowed",
                        "message": f"{path} takes {', '.join(methods)}",
                    },
                    headers=(("Allow", ", ".join(methods)),),
                    close=self._body_pending(),
                )
                return
            engine = api.holder.current()
            if engine is None:
                detail = getattr(api.holder, "detail", "") or "no verified bundle is active"
                document = {"status": "unavailable", "bundle": None, "detail": detail}
                if path == "/v1/health" and api.health_info is not None:
                    document = {**api.health_info(), **document}
                self._reply(503, document, close=self._body_pending())
                return
            if path == "/v1/predict":
                self._predict(engine, started)
            elif path == "/v1/health":
                self._health(engine)
            else:
                self._send(200, api.cached("model", engine, lambda: model_document(engine)))
        except OSError:  # the client went away mid-answer
            self.close_connection = True
        except Exception:
            log.exception("the local API failed on %s %s", self.command, self.path.split("?")[0])
            with contextlib.suppress(OSError):
                self._reply(500, {"error": "internal", "message": "the agent failed"}, close=True)

    def _health(self, engine: ScoringEngine) -> None:
        api = self.api
        if api.health_info is None:
            self._send(200, api.cached("health", engine, lambda: health_document(engine)))
            return
        document = {**api.health_info(), **health_document(engine)}
        self._send(200, _json(document))

    def _predict(self, engine: ScoringEngine, started: float) -> None:
        api = self.api
        rows = 0
        outcome: Outcome = "refused"
        report: ContractReport | None = None
        predictions: Predictions | None = None
        try:
            body = self._read_body()
            data, unknown = parse_body(body, engine)
            rows = len(data) if not isinstance(data, dict) else len(next(iter(data.values())))
            try:
                report = engine.check(data, first_row=0)
            except (InputError, ValueError) as error:
                raise _Refusal(422, "contract-violation", str(error), violations=[]) from None
            if not report.passed:
                self._reply(422, violation_document(report))
                return
            outcome = "error"
            try:
                predictions = engine.run(report.matrix)
            except Exception as error:
                api.model_failures += 1
                if api.model_failures == 1 or api.model_failures % 1000 == 0:
                    log.exception(
                        "the model of %s failed (%d times)", engine.bundle_id, api.model_failures
                    )
                self._reply(500, {"error": "model-failed", "message": f"the model failed: {error}"})
                return
            outcome = "ok"
            unknown = unknown or list(report.unknown_columns)
            document = prediction_document(engine, predictions, report, unknown)
            self._send(200, _json(document))
        except _Refusal as refusal:
            self._reply(refusal.status, refusal.document, close=refusal.status in (411, 413))
            if refusal.status == 413:
                self._discard(int(self.headers.get("Content-Length", "0")))
        finally:
            api.observe(
                Observation(
                    bundle_id=engine.bundle_id,
                    rows=rows,
                    latency_s=time.perf_counter() - started,
                    outcome=outcome,
                    matrix=report.matrix if outcome == "ok" and report is not None else None,
                    labels=None if predictions is None else predictions.labels,
                    values=None if predictions is None else predictions.values,
                )
            )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _Refusal(411, "length-required", "send the body with a Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _Refusal(411, "length-required", "send the body with a Content-Length")
        if not length_text.strip().isdigit():
            self.close_connection = True
            raise _Refusal(400, "bad-request", "Content-Length is not a number")
        length = int(length_text)
        if length > self.api.max_body_bytes:
            raise _Refusal(
                413,
                "payload-too-large",
                f"the body is {length} bytes; at most {self.api.max_body_bytes} are read",
            )
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise _Refusal(400, "bad-request", "the body ended before its Content-Length")
        return body

    def _discard(self, length: int) -> None:
        """Read and drop what a refused body sends (a bounded amount, for a second at most),
        so that a client that writes its whole body before reading gets the 413, not a
        broken pipe; then the connection closes."""
        left = min(length, 4 * self.api.max_body_bytes)
        deadline = time.monotonic() + 1.0
        with contextlib.suppress(OSError):
            self.connection.settimeout(0.2)
            while left > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)

    def _body_pending(self) -> bool:
        """Whether the request may have a body not read (the connection must then close)."""
        if self.command not in _BODY_METHODS:
            return False
        length = self.headers.get("Content-Length", "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length not in ("", "0")

    # ------------------------------------------------------------------------- writing

    def _reply(
        self,
        status: int,
        document: Any,
        *,
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        self._send(status, _json(document), headers=headers, close=close)

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        """Write the whole response in one call (no Nagle stall between head and body)."""
        if close:
            self.close_connection = True
        lines = [
            f"HTTP/1.1 {status} {_PHRASES.get(status, '')}",
            "Server: edgeml-agent",
            f"Date: {self._now()}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in headers]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    @classmethod
    def _now(cls) -> str:
        second = int(time.time())
        if cls._date[0] != second:
            cls._date = (second, email.utils.formatdate(second, usegmt=True))
        return cls._date[1]


_PHRASES = {s.value: s.phrase for s in HTTPStatus}


# ------------------------------------------------------------------------- servers


class _Connections:
    """Bounds the connections served at once and remembers them, to close them on stop."""

    def _init_connections(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                body = b'{"error":"busy","message":"too many connections"}'
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self._open_lock:
            if request in self._open:
                self._open.discard(request)
                self._slots.release()

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("a connection of the local API failed", exc_info=True)


class _TCPServer(_Connections, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks the resolver for the host's FQDN: slow, or stuck, on a
        # device with no DNS. Nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_Connections, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    socket_mode = 0o600
    _inode: int | None = None

    def server_bind(self) -> None:
        """Bind under a temporary name, set the mode, rename over the final path: the
        socket never exists at its path with looser permissions."""
        final = str(self.server_address)
        temporary = f"{final}.tmp{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        self.socket.bind(temporary)
        try:
            os.chmod(temporary, self.socket_mode)
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._inode = os.lstat(final).st_ino
        self.server_address = final

    def server_close(self) -> None:
        super().server_close()
        path = str(self.server_address)
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == self._inode:  # still ours: not a newer agent's
                os.unlink(path)


def _check_socket_path(path: Path) -> None:
    """Refuse a path that holds something other than a dead agent's socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"api listen socket {path} exists and is not a socket; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: the rename in server_bind replaces it
    except OSError as error:
        raise ConfigError(f"api listen socket {path} cannot be checked: {error}") from None
    finally:
        probe.close()
    raise ConfigError(f"api listen socket {path} is in use by a running process")


def _bind(
    listen: ListenAddress, handler: type[_Handler], max_connections: int, socket_mode: int
) -> Any:
    try:
        if listen.unix_path is not None:
            _check_socket_path(listen.unix_path)
            server_class = type("_ModeUnixServer", (_UnixServer,), {"socket_mode": socket_mode})
            server: Any = server_class(str(listen.unix_path), handler, bind_and_activate=False)
        else:
            family = _TCP6Server if ":" in listen.host else _TCPServer
            server = family((listen.host, listen.port), handler, bind_and_activate=False)
    except OSError as error:
        raise ConfigError(f"api listen address {listen}: {error}") from None
    server._init_connections(max_connections)
    try:
        server.server_bind()
        server.server_activate()
    except OSError as error:
        server.server_close()
        raise ConfigError(f"api listen address {listen}: cannot listen: {error}") from None
    return server
