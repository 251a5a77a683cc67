"""The local scoring API: a real server (loopback TCP and a Unix socket) on a real bundle."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeml.agent.api import ListenAddress, ModelHolder, ScoringAPI
from edgeml.agent.telemetry import Observation, WindowAccumulator
from edgeml.toolkit.errors import ConfigError
from edgeml.toolkit.scoring import ScoringEngine

TOKEN = "s3cret-token-0123456789abcdef"


@pytest.fixture(scope="module")
def engine(built_bundle: Path, key_dir: Path) -> ScoringEngine:
    return ScoringEngine.open(built_bundle, key_dir / "edgeml.pub", threads=1)


@pytest.fixture(scope="module")
def rows(engine: ScoringEngine, logreg: Any) -> list[dict[str, float]]:
    """Five real validation rows as ``{feature: value}``."""
    names = list(logreg.feature_names)
    return [
        {name: float(row[names.index(name)]) for name in engine.features}
        for row in logreg.X_val[:5]
    ]


@pytest.fixture
def records() -> list[Observation]:
    return []


@pytest.fixture
def api(engine: ScoringEngine, records: list[Observation]) -> Iterator[ScoringAPI]:
    server = ScoringAPI(ModelHolder(engine), "127.0.0.1:0", record=records.append)
    server.start()
    yield server
    server.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (a Unix socket's path is limited to ~100 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="edgeml-api-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.socket_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.socket_path)


def connect(api: ScoringAPI) -> http.client.HTTPConnection:
    if api.port is None:
        return UnixHTTPConnection(Path(api.address[5:]))
    return http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)


def call(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, Any]:
    """One request on a (kept-alive) connection: status, response, decoded JSON body."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    connection.request(method, path, body=data, headers=headers or {})
    response = connection.getresponse()
    raw = response.read()
    return response.status, response, json.loads(raw) if raw else None


def request(api: ScoringAPI, method: str, path: str, body: Any = None, **headers: str) -> Any:
    connection = connect(api)
    try:
        return call(connection, method, path, body, headers)
    finally:
        connection.close()


def wait_for(condition: Any, seconds: float = 5.0) -> None:
    """Observations are recorded after the answer is sent: wait for the server to catch up."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def expected(engine: ScoringEngine, rows: list[dict[str, Any]]) -> dict[str, Any]:
    predictions = engine.predict(rows)
    assert predictions.labels is not None and predictions.probabilities is not None
    return {
        "predictions": predictions.labels.tolist(),
        "probabilities": predictions.probabilities.tolist(),
    }


# ------------------------------------------------------------------------- serving


def test_health_and_model_describe_the_active_bundle(
    api: ScoringAPI, engine: ScoringEngine
) -> None:
    status, _, health = request(api, "GET", "/v1/health")
    assert status == 200
    assert health["status"] == "serving"
    assert health["bundle"] == engine.bundle_id == "cancer-1.0.0-raspberry-pi-4"
    status, response, model = request(api, "GET", "/v1/model")
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert model["bundle"] == engine.bundle_id
    assert (model["name"], model["version"], model["profile"]) == (
        "cancer",
        "1.0.0",
        "raspberry-pi-4",
    )
    assert model["task"] == "classification"
    assert model["classes"] == [0, 1]
    assert [f["name"] for f in model["features"]] == list(engine.features)
    assert {"kind", "nullable", "min", "max"} <= set(model["features"][0])
    assert model["metrics"] == engine.manifest.metrics


def test_predictions_equal_the_engines_for_rows_and_instances(
    api: ScoringAPI, engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    want = expected(engine, rows)
    status, _, by_rows = request(api, "POST", "/v1/predict", {"rows": rows})
    assert status == 200
    assert by_rows == {"bundle": engine.bundle_id, "classes": [0, 1], **want}
    instances = [[row[name] for name in engine.features] for row in rows]
    status, _, by_instances = request(api, "POST", "/v1/predict", {"instances": instances})
    assert status == 200
    assert by_instances == by_rows


def test_rows_the_fast_path_cannot_take_are_judged_by_the_contract_check(
    api: ScoringAPI, engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    as_text = [{k: repr(v) for k, v in row.items()} for row in rows[:2]]
    with_ints = [{k: int(v) if k == engine.features[0] else v for k, v in rows[2].items()}]
    mixed = as_text + with_ints
    status, _, body = request(api, "POST", "/v1/predict", {"rows": mixed})
    assert status == 200, body
    assert {k: body[k] for k in ("predictions", "probabilities")} == expected(engine, mixed)
    instances = [[row[name] for name in engine.features] for row in as_text]
    status, _, body = request(api, "POST", "/v1/predict", {"instances": instances})
    assert status == 200, body
    assert body["predictions"] == expected(engine, as_text)["predictions"]


def test_unknown_fields_and_values_out_of_range_are_reported(
    api: ScoringAPI, engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    first = engine.contract.features[0]
    assert first.maximum is not None
    row = {**rows[0], "site": 3.0, first.name: first.maximum * 10}
    status, _, body = request(api, "POST", "/v1/predict", {"rows": [row]})
    assert status == 200
    assert body["unknown_fields"] == ["site"]
    assert body["out_of_range"] == {first.name: 1}
    status, _, body = request(api, "POST", "/v1/predict", {"rows": [{**rows[0], "site": "x"}]})
    assert status == 200  # the slow path lists them too
    assert body["unknown_fields"] == ["site"]


# ------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        (lambda row, name: row.update({name: None}), "first", "null"),
        (lambda row, name: row.pop(name), "first", "null"),
        (lambda row, name: row.update({name: "many"}), "first", "wrong type"),
        (lambda row, name: row.update({name: [1, 2]}), "first", "wrong type"),
    ],
)
def test_a_contract_violation_answers_422_naming_the_row_and_field(
    api: ScoringAPI,
    engine: ScoringEngine,
    rows: list[dict[str, float]],
    records: list[Observation],
    change: Any,
    field: str,
    kind: str,
) -> None:
    name = engine.features[0]
    bad = [dict(row) for row in rows[:3]]
    change(bad[2], name)
    status, _, body = request(api, "POST", "/v1/predict", {"rows": bad})
    assert status == 422, body
    assert body["error"] == "contract-violation"
    assert "row 2" in body["message"] and name in body["message"]
    assert body["violations"][0]["row"] == 2
    assert body["violations"][0]["field"] == name
    assert body["violations"][0]["kind"] == kind
    wait_for(lambda: records)
    assert records[-1].outcome == "refused"
    assert records[-1].bundle_id == engine.bundle_id


def test_a_missing_field_in_every_row_and_a_wrong_width_answer_422(
    api: ScoringAPI, engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    name = engine.features[3]
    without = [{k: v for k, v in row.items() if k != name} for row in rows[:2]]
    status, _, body = request(api, "POST", "/v1/predict", {"rows": without})
    assert status == 422
    assert body["missing_fields"] == [name]
    assert name in body["message"]
    status, _, body = request(api, "POST", "/v1/predict", {"instances": [[1.0, 2.0], [3.0]]})
    assert status == 422
    assert body["violations"][0]["row"] == 0
    assert "2 values" in body["message"] and "30 features" in body["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"rows": [{"a": NaN}]}', "not valid JSON"),
        (b"[1, 2]", '"rows"'),
        (b'{"rows": [], "instances": []}', '"rows"'),
        (b"{}", '"rows"'),
        (b'{"rows": []}', "non-empty"),
        (b'{"rows": {"a": 1}}', "non-empty"),
        (b'{"rows": [1]}', "rows[0]"),
        (b'{"instances": [{"a": 1}]}', "instances[0]"),
        ("é".encode("latin-1"), "not valid JSON"),
    ],
)
def test_a_malformed_body_answers_400(api: ScoringAPI, body: bytes, says: str) -> None:
    status, _, answer = request(api, "POST", "/v1/predict", body)
    assert status == 400
    assert answer["error"] == "bad-request"
    assert says in answer["message"]


def test_a_body_over_the_limit_answers_413(engine: ScoringEngine) -> None:
    with ScoringAPI(ModelHolder(engine), "127.0.0.1:0", max_body_bytes=1024) as api:
        api.start()
        status, response, body = request(api, "POST", "/v1/predict", b"x" * 100_000)
        assert status == 413
        assert body["error"] == "payload-too-large"
        assert response.getheader("Connection") == "close"
        # announced but never sent: refused from the header alone
        with socket.create_connection(("127.0.0.1", api.port), timeout=5) as raw:
            raw.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
            )
            assert raw.recv(4096).startswith(b"HTTP/1.1 413 ")


def test_a_body_without_a_length_answers_411(api: ScoringAPI) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as raw:
        raw.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n"
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 411 ")


def test_unknown_paths_answer_404_and_wrong_methods_405(api: ScoringAPI) -> None:
    status, _, body = request(api, "GET", "/v1/nothing")
    assert (status, body["error"]) == (404, "not-found")
    status, _, _ = request(api, "GET", "/v1/predict/")
    assert status == 404
    status, response, body = request(api, "GET", "/v1/predict")
    assert (status, body["error"]) == (405, "method-not-allowed")
    assert response.getheader("Allow") == "POST"
    status, response, _ = request(api, "DELETE", "/v1/health")
    assert (status, response.getheader("Allow")) == (405, "GET")
    status, _, body = request(api, "HEAD", "/v1/health")
    assert (status, body) == (405, None)  # no body on a HEAD answer
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as raw:
        raw.sendall(b"GET /v1/health HTTP/2.0\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 505 ")


def test_one_connection_serves_many_requests_errors_included(
    api: ScoringAPI, engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    connection = connect(api)
    statuses = [
        call(connection, "POST", "/v1/predict", {"rows": rows[:1]})[0],
        call(connection, "POST", "/v1/predict", {"rows": [{}]})[0],
        call(connection, "POST", "/v1/predict", b"{")[0],
        call(connection, "GET", "/v1/missing")[0],
        call(connection, "GET", "/v1/health")[0],
        call(connection, "POST", "/v1/predict", {"instances": [[0.0] * 30]})[0],
    ]
    assert statuses == [200, 422, 400, 404, 200, 200]
    assert connection.sock is not None  # still the same kept-alive connection
    connection.close()


def test_no_active_bundle_answers_503(engine: ScoringEngine, rows: list[dict[str, float]]) -> None:
    holder = ModelHolder(None)
    with ScoringAPI(holder, "127.0.0.1:0", health_info=lambda: {"broker_connected": False}) as api:
        api.start()
        status, _, body = request(api, "GET", "/v1/health")
        assert status == 503
        assert body == {
            "broker_connected": False,
            "status": "unavailable",
            "bundle": None,
            "detail": "no verified bundle is active",
        }
        assert request(api, "GET", "/v1/model")[0] == 503
        assert request(api, "POST", "/v1/predict", {"rows": rows})[0] == 503
        holder.swap(None, "the active bundle failed verification")
        assert request(api, "GET", "/v1/health")[2]["detail"].startswith("the active bundle")
        assert holder.swap(engine) is None
        status, _, body = request(api, "GET", "/v1/health")
        assert (status, body["bundle"], body["broker_connected"]) == (200, engine.bundle_id, False)


# ------------------------------------------------------------------------- telemetry


def test_every_predict_request_is_recorded_after_its_answer(
    engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    accumulator = WindowAccumulator.for_engine(engine)
    with ScoringAPI(ModelHolder(engine), "127.0.0.1:0", record=accumulator.observe) as api:
        api.start()
        request(api, "POST", "/v1/predict", {"rows": rows})
        request(api, "POST", "/v1/predict", {"rows": rows[:2]})
        request(api, "POST", "/v1/predict", {"rows": [{}]})
        request(api, "POST", "/v1/predict", b"nope")
        request(api, "GET", "/v1/health")
        wait_for(lambda: accumulator.summary(0, 1).requests == 4)
    summary = accumulator.take(0.0, 60.0)
    assert (summary.requests, summary.rows, summary.contract_violations, summary.errors) == (
        4,
        7,
        2,
        0,
    )
    assert summary.drift_rows == 7
    assert sum(summary.predictions.values()) == 7
    assert summary.latency_ms["max"] > 0
    assert set(summary.drift_psi) >= set(engine.features)


def test_close_returns_once_every_answered_request_is_recorded(
    engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    """The daemon closes the API before it closes the last telemetry window: a request
    answered just before (recorded after its answer went out) must be in that window."""
    recorded: list[Observation] = []

    def slow_record(observation: Observation) -> None:
        time.sleep(0.5)  # a recorder held up (a busy device) after the answer was sent
        recorded.append(observation)

    api = ScoringAPI(ModelHolder(engine), "127.0.0.1:0", record=slow_record)
    api.start()
    try:
        status, _, _ = request(api, "POST", "/v1/predict", {"rows": rows[:1]})
        assert status == 200 and recorded == [], "answered before it was recorded"
    finally:
        api.close()
    assert len(recorded) == 1


def test_a_failing_model_answers_500_and_a_failing_recorder_is_only_logged(
    built_bundle: Path,
    key_dir: Path,
    rows: list[dict[str, float]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = ScoringEngine.open(built_bundle, key_dir / "edgeml.pub", threads=1)
    seen: list[Observation] = []

    def fail(_matrix: np.ndarray) -> Any:
        raise RuntimeError("onnxruntime fell over")

    def recorder(observation: Observation) -> None:
        seen.append(observation)
        raise ValueError("recorder bug")

    broken.run = fail  # type: ignore[method-assign]
    with ScoringAPI(ModelHolder(broken), "127.0.0.1:0", record=recorder) as api:
        api.start()
        with caplog.at_level(logging.ERROR, logger="edgeml.agent.api"):
            status, _, body = request(api, "POST", "/v1/predict", {"rows": rows})
            assert request(api, "GET", "/v1/health")[0] == 200  # still serving
            wait_for(lambda: api.record_failures == 1)
    assert status == 500
    assert body["error"] == "model-failed" and "fell over" in body["message"]
    assert [o.outcome for o in seen] == ["error"]
    assert api.record_failures == 1
    assert "recording telemetry failed" in caplog.text


# ------------------------------------------------------------------------- the token


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "192.0.2.10:8765", "agent.example:8765"])
def test_a_non_loopback_address_requires_a_token(engine: ScoringEngine, listen: str) -> None:
    with pytest.raises(ConfigError, match=r"not loopback.*token"):
        ScoringAPI(ModelHolder(engine), listen)


@pytest.mark.parametrize("token", ["short", "has spaces in the middle of it", "é" * 20])
def test_a_malformed_token_is_refused_without_being_shown(
    engine: ScoringEngine, token: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        ScoringAPI(ModelHolder(engine), "127.0.0.1:0", token=token)
    assert token not in str(refused.value)


@pytest.mark.parametrize("listen", ["", "8765", "127.0.0.1", "127.0.0.1:99999", "unix:"])
def test_a_malformed_address_is_refused(engine: ScoringEngine, listen: str) -> None:
    with pytest.raises(ConfigError, match="listen"):
        ScoringAPI(ModelHolder(engine), listen)


def test_addresses_and_loopback() -> None:
    assert ListenAddress.parse("127.0.0.1:8765").loopback
    assert ListenAddress.parse("[::1]:8765").loopback
    assert ListenAddress.parse("localhost:1").loopback
    assert ListenAddress.parse("unix:/run/edgeml/agent.sock").loopback
    assert not ListenAddress.parse("0.0.0.0:8765").loopback
    assert not ListenAddress.parse("[::]:8765").loopback
    assert str(ListenAddress.parse("[::1]:80")) == "[::1]:80"


def test_with_a_token_every_request_must_carry_it(
    engine: ScoringEngine, rows: list[dict[str, float]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        api = ScoringAPI(ModelHolder(engine), "0.0.0.0:0", token=TOKEN)
        with api:
            api.start()
            status, response, body = request(api, "GET", "/v1/health")
            assert (status, body["error"]) == (401, "unauthorized")
            assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
            wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
            assert request(api, "GET", "/v1/health", **wrong)[0] == 401
            assert request(api, "GET", "/v1/health", Authorization=TOKEN)[0] == 401
            assert request(api, "GET", "/v1/nowhere")[0] == 401  # before routing
            status, _, _ = request(
                api, "POST", "/v1/predict", {"rows": rows}, Authorization=f"Bearer {TOKEN}"
            )
            assert status == 200
            assert request(api, "GET", "/v1/model", Authorization=f"bearer {TOKEN}")[0] == 200
            assert TOKEN not in repr(api)
    assert TOKEN not in caplog.text


# ------------------------------------------------------------------------- the Unix socket


def test_a_unix_socket_serves_with_tight_permissions(
    short_dir: Path, engine: ScoringEngine, rows: list[dict[str, float]]
) -> None:
    path = short_dir / "agent.sock"
    with ScoringAPI(ModelHolder(engine), f"unix:{path}") as api:
        api.start()
        assert api.address == f"unix:{path}"
        assert api.port is None
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        status, _, body = request(api, "POST", "/v1/predict", {"rows": rows})
        assert status == 200
        assert body["predictions"] == expected(engine, rows)["predictions"]
        with pytest.raises(ConfigError, match="in use"):
            ScoringAPI(ModelHolder(engine), f"unix:{path}")
    assert not path.exists()  # removed on close
    with ScoringAPI(ModelHolder(engine), f"unix:{path}", socket_mode=0o660) as api:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660


def test_a_stale_socket_is_replaced_and_a_file_is_not(
    short_dir: Path, engine: ScoringEngine
) -> None:
    path = short_dir / "agent.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a dead agent's socket: bound, never listening, left behind
    dead.close()
    with ScoringAPI(ModelHolder(engine), f"unix:{path}") as api:
        api.start()
        assert request(api, "GET", "/v1/health")[0] == 200
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        ScoringAPI(ModelHolder(engine), f"unix:{path}")
    assert path.read_text() == "not a socket"


# ------------------------------------------------------------------------- concurrency


def test_swapping_the_engine_under_concurrent_requests_gives_no_errors(
    built_bundle: Path, key_dir: Path, rows: list[dict[str, float]]
) -> None:
    engines = [ScoringEngine.open(built_bundle, key_dir / "edgeml.pub", threads=1) for _ in "ab"]
    want = {"bundle": engines[0].bundle_id, "classes": [0, 1], **expected(engines[0], rows)}
    holder = ModelHolder(engines[0])
    failures: list[Any] = []

    def client() -> None:
        connection = connect(api)
        try:
            for _ in range(60):
                status, _, body = call(connection, "POST", "/v1/predict", {"rows": rows})
                if status != 200 or body != want:
                    failures.append((status, body))
        except Exception as error:  # pragma: no cover - reported below
            failures.append(error)
        finally:
            connection.close()

    with ScoringAPI(holder, "127.0.0.1:0") as api:
        api.start()
        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        swaps = 0
        while any(t.is_alive() for t in clients):
            holder.swap(engines[swaps % 2])
            swaps += 1
            time.sleep(0.0005)
        for thread in clients:
            thread.join()
    assert failures == []
    assert swaps > 10


def test_connections_beyond_the_limit_are_answered_busy(engine: ScoringEngine) -> None:
    with ScoringAPI(ModelHolder(engine), "127.0.0.1:0", max_connections=2) as api:
        api.start()
        held = [connect(api) for _ in range(2)]
        for connection in held:
            assert call(connection, "GET", "/v1/health")[0] == 200
        status, _, body = request(api, "GET", "/v1/health")
        assert (status, body["error"]) == (503, "busy")
        held[0].close()
        deadline = time.monotonic() + 5
        while request(api, "GET", "/v1/health")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        held[1].close()


def test_idle_connections_are_closed_and_close_stops_serving(engine: ScoringEngine) -> None:
    api = ScoringAPI(ModelHolder(engine), "127.0.0.1:0", idle_timeout_s=0.3)
    api.start()
    port = api.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
        assert idle.recv(1) == b""  # closed by the server after 0.3 s of silence
    kept = connect(api)
    assert call(kept, "GET", "/v1/health")[0] == 200
    api.close()
    api.close()
    with pytest.raises(OSError):
        call(kept, "GET", "/v1/health")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# ------------------------------------------------------------------------- a regressor


@pytest.fixture(scope="module")
def ridge_engine(tmp_path_factory: pytest.TempPathFactory, key_dir: Path) -> ScoringEngine:
    from conftest import train_model

    from edgeml.converters.pipeline import BuildRequest, build_bundles
    from edgeml.toolkit.keys import load_private_key
    from edgeml.toolkit.profiles import load_profile

    folder = tmp_path_factory.mktemp("ridge")
    model = train_model(folder, "ridge")
    built = build_bundles(
        BuildRequest(
            model_path=model.model_path,
            profiles=[load_profile("raspberry-pi-4")],
            signing_key=load_private_key(key_dir / "edgeml.key"),
            out_dir=folder / "bundles",
            validation_path=model.validation_path,
            target=model.target,
            name="diabetes",
            version="1.0.0",
        )
    )
    return ScoringEngine.open(built.builds[0].bundle_path, key_dir / "edgeml.pub", threads=1)


def test_a_regressor_answers_values(ridge_engine: ScoringEngine) -> None:
    lows = np.array([f.minimum for f in ridge_engine.contract.features])
    highs = np.array([f.maximum for f in ridge_engine.contract.features])
    matrix = lows + (highs - lows) * np.random.default_rng(5).random((4, len(lows)))
    instances = matrix.tolist()
    accumulator = WindowAccumulator.for_engine(ridge_engine)
    with ScoringAPI(ModelHolder(ridge_engine), "127.0.0.1:0", record=accumulator.observe) as api:
        api.start()
        status, _, body = request(api, "POST", "/v1/predict", {"instances": instances})
        assert request(api, "GET", "/v1/model")[2]["classes"] is None
        wait_for(lambda: accumulator.summary(0, 1).requests == 1)
    assert status == 200
    values = ridge_engine.predict(matrix).values
    assert values is not None
    assert body == {"bundle": ridge_engine.bundle_id, "predictions": values.tolist()}
    summary = accumulator.take(0.0, 60.0)
    assert sum(summary.predictions.values()) == 4
    assert all(key.startswith("(") for key in summary.predictions)
    assert "__prediction__" in summary.drift_psi
