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
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

import numpy as np

from edgeml.agent.api_bodies import (
    Refusal,
    health_document,
    json_bytes,
    model_document,
    parse_body,
    prediction_document,
    violation_document,
)
from edgeml.agent.api_sockets import ListenAddress, bind_server
from edgeml.agent.telemetry import Observation, Outcome
from edgeml.toolkit.contract import RangeCount
from edgeml.toolkit.errors import ConfigError, InputError
from edgeml.toolkit.scoring import Predictions, ScoringEngine

log = logging.getLogger("edgeml.agent.api")

DEFAULT_LISTEN = "127.0.0.1:8765"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 30.0
CLOSE_WAIT_S = 5.0
MIN_TOKEN_LENGTH = 16
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 token68

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
        self._server = bind_server(self.listen, handler, int(max_connections), socket_mode)

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
        """Stop serving, close every connection and the socket, and wait (5 s at most) for
        the requests being answered: once it returns, every request answered has been
        recorded (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._serving.is_set():
            self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self._server.wait_for_handlers(CLOSE_WAIT_S):
            log.warning("the local API closed with requests still being answered")

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
        body = json_bytes(build())
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
        self._send(200, json_bytes(document))

    def _predict(self, engine: ScoringEngine, started: float) -> None:
        api = self.api
        rows = 0
        outcome: Outcome = "refused"
        matrix: np.ndarray | None = None
        predictions: Predictions | None = None
        try:
            body = self._read_body()
            data, unknown = parse_body(body, engine)
            rows = len(data) if not isinstance(data, dict) else len(next(iter(data.values())))
            out_of_range: Mapping[str, RangeCount] = {}
            if (  # numbers only, every one inside its range: nothing for the full check to say
                isinstance(data, np.ndarray)
                and data.dtype == engine.input_dtype
                and engine.is_clean(data)
            ):
                matrix = data
            else:
                try:
                    report = engine.check(data, first_row=0)
                except (InputError, ValueError) as error:
                    raise Refusal(422, "contract-violation", str(error), violations=[]) from None
                if not report.passed:
                    self._reply(422, violation_document(report))
                    return
                matrix, out_of_range = report.matrix, report.out_of_range
                unknown = unknown or list(report.unknown_columns)
            outcome = "error"
            try:
                predictions = engine.run(matrix)
            except Exception as error:
                api.model_failures += 1
                if api.model_failures == 1 or api.model_failures % 1000 == 0:
                    log.exception(
                        "the model of %s failed (%d times)", engine.bundle_id, api.model_failures
                    )
                self._reply(500, {"error": "model-failed", "message": f"the model failed: {error}"})
                return
            outcome = "ok"
            document = prediction_document(engine, predictions, out_of_range, unknown)
            self._send(200, json_bytes(document))
        except Refusal as refusal:
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
                    matrix=matrix if outcome == "ok" else None,
                    labels=None if predictions is None else predictions.labels,
                    values=None if predictions is None else predictions.values,
                )
            )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise Refusal(411, "length-required", "send the body with a Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise Refusal(411, "length-required", "send the body with a Content-Length")
        if not length_text.strip().isdigit():
            self.close_connection = True
            raise Refusal(400, "bad-request", "Content-Length is not a number")
        length = int(length_text)
        if length > self.api.max_body_bytes:
            raise Refusal(
                413,
                "payload-too-large",
                f"the body is {length} bytes; at most {self.api.max_body_bytes} are read",
            )
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise Refusal(400, "bad-request", "the body ended before its Content-Length")
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
        self._send(status, json_bytes(document), headers=headers, close=close)

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
