"""The MQTT protocol's topics and messages: round trips and every kind of bad payload (pure)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeml.toolkit.errors import InputError
from edgeml.toolkit.protocol import (
    MAX_MESSAGE_BYTES,
    BrokerAddress,
    Chunk,
    Command,
    CommandResult,
    ProtocolError,
    Status,
    TelemetryWindow,
    TransferRequest,
    broker_address,
    device_topic,
    parse_message,
    parse_topic,
    subscription,
)

SHA = "ab" * 32
GOOD = [
    Status("pi-1", True, 1.0, "raspberry-pi-4", ["canary"], "m-1.0.0-raspberry-pi-4", None),
    Command("c1", "install", 2.0, "m-1.0.0-raspberry-pi-4", 1000, SHA),
    Command("c2", "ping", 2.0),
    TransferRequest("c1", "m-1.0.0-raspberry-pi-4", 4096),
    Chunk.of("c1", "m-1.0.0-raspberry-pi-4", 0, 10, b"0123456789"),
    CommandResult(
        "c1", "install", "succeeded", 3.0, "", "m-1.0.0-raspberry-pi-4", "m-1.0.0-raspberry-pi-4"
    ),
    TelemetryWindow("pi-1", 1, 0.0, 60.0, None, 3, 5, 0, 1, {"p50": 0.2}, {"1": 5}, {"x": 0.01}),
]
KIND_OF = {
    "status": "status",
    "command": "commands",
    "transfer-request": "events",
    "chunk": "transfer",
    "command-result": "events",
    "telemetry": "telemetry",
}


@pytest.mark.parametrize("message", GOOD, ids=lambda m: m.TYPE)
def test_messages_round_trip_on_their_topic(message) -> None:
    assert parse_message(message.to_bytes(), KIND_OF[message.TYPE]) == message


@pytest.mark.parametrize("message", GOOD, ids=lambda m: m.TYPE)
def test_a_message_on_the_wrong_topic_is_refused(message) -> None:
    wrong = "commands" if KIND_OF[message.TYPE] != "commands" else "status"
    with pytest.raises(ProtocolError, match="does not belong"):
        parse_message(message.to_bytes(), wrong)


def test_topics() -> None:
    assert device_topic("pi-1", "status") == "edgeml/v1/devices/pi-1/status"
    assert parse_topic("edgeml/v1/devices/pi-1/telemetry") == ("pi-1", "telemetry")
    assert subscription("events") == "edgeml/v1/devices/+/events"
    for bad in (
        "edgeml/v1/devices/pi 1/status",
        "edgeml/v2/devices/pi-1/status",
        "edgeml/v1/devices/pi-1/other",
        "a/b",
    ):
        with pytest.raises(ProtocolError):
            parse_topic(bad)
    with pytest.raises(ProtocolError):
        device_topic("../x", "status")


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "nope"}', "unknown message type"),
        (  # a number too large for a float: OverflowError inside the schema check
            b'{"type": "status", "device_id": "pi-1", "online": true, "sent_at": 1'
            + b"0" * 400
            + b"}",
            "malformed status message",
        ),
        (  # more digits than Python converts to an int: ValueError inside json
            b'{"type": "status", "device_id": "pi-1", "online": true, "sent_at": '
            + b"9" * 5000
            + b"}",
            "not UTF-8 JSON",
        ),
        (b'{"type": "status", "device_id": "pi-1", "online": "yes", "sent_at": 1}', "'online'"),
        (
            b'{"type": "status", "device_id": "pi-1", "online": true, "sent_at": 1, "x": 1}',
            "unknown fields: x",
        ),
        (
            b'{"type": "command", "command_id": "c", "kind": "install", "issued_at": 1, '
            b'"bundle_id": "b-1"}',
            "bundle_size",
        ),
        (
            b'{"type": "command", "command_id": "c", "kind": "format-disk", "issued_at": 1}',
            "'kind'",
        ),
        (
            b'{"type": "transfer-request", "command_id": "c", "bundle_id": "b", "offset": -1}',
            "'offset'",
        ),
        (b'{"type": "telemetry", "device_id": "d", "seq": 0}', "'seq'"),
        (b'{"type": "status", "device_id": "pi-1", "online": true, "sent_at": NaN}', "finite"),
        (b"[" * 100000 + b"]" * 100000, "not UTF-8 JSON|not a JSON object"),
    ],
)
def test_malformed_and_wrong_schema_payloads_are_named(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_message(payload)


def test_oversized_payloads_are_refused_unparsed() -> None:
    with pytest.raises(ProtocolError, match="over"):
        parse_message(b" " * (MAX_MESSAGE_BYTES + 1))


def test_a_chunk_must_match_its_hash() -> None:
    chunk = Chunk.of("c1", "b-1", 0, 10, b"0123456789").to_dict()
    chunk["sha256"] = SHA
    with pytest.raises(ProtocolError, match="does not match its sha256"):
        parse_message(json.dumps(chunk).encode(), "transfer")


@given(st.binary(max_size=2000))
def test_no_payload_crashes_the_parser(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_message(payload)


# --- the trust command ------------------------------------------------------------------------


def _trust_document() -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgeml.toolkit.trust import new_trust_document

    root, release = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    return new_trust_document([release.public_key()], [root.public_key()]).sign(root).to_dict()


def test_a_trust_command_carries_its_document_inline() -> None:
    document = _trust_document()
    command = Command("t1", "trust", 2.0, trust_document=document)
    parsed = parse_message(command.to_bytes(), "commands")
    assert parsed == command and parsed.trust_document == document
    result = CommandResult("t1", "trust", "refused", 3.0, "trust rollback refused")
    assert parse_message(result.to_bytes(), "events") == result


def test_other_commands_keep_their_bytes() -> None:
    assert b"trust_document" not in Command("c2", "ping", 2.0).to_bytes()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "trust"}, "must carry trust_document"),
        ({"kind": "trust", "trust_document": "{}"}, "must carry trust_document"),
        ({"kind": "trust", "trust_document": {"pad": "x" * 70_000}}, "over 65536"),
        ({"kind": "ping", "trust_document": {}}, "a ping command carries no trust_document"),
    ],
)
def test_malformed_trust_commands_are_refused(fields: dict, message: str) -> None:
    payload = {"type": "command", "command_id": "t", "issued_at": 1.0, **fields}
    with pytest.raises(ProtocolError, match=message):
        parse_message(json.dumps(payload).encode(), "commands")


# --- telemetry streams ------------------------------------------------------------------------

WINDOW = TelemetryWindow(
    "pi-1", 1, 0.0, 60.0, None, 3, 5, 0, 1, {"p50": 0.2}, {"1": 5}, {"x": 0.01}
)


def test_a_window_round_trips_with_its_stream() -> None:
    window = TelemetryWindow(**{**WINDOW.__dict__, "stream": "0123456789abcdef"})
    payload = window.to_bytes()
    assert json.loads(payload)["stream"] == "0123456789abcdef"
    parsed = parse_message(payload, "telemetry")
    assert parsed == window and isinstance(parsed, TelemetryWindow)
    assert parsed.stream == "0123456789abcdef"


def test_a_window_without_a_stream_is_the_empty_stream_and_keeps_its_bytes() -> None:
    """What an agent before streams sends parses, and a window of the empty stream is sent
    without the field, so that a fleet before streams still takes it."""
    old = WINDOW.to_dict()
    assert "stream" not in old
    parsed = parse_message(json.dumps(old).encode(), "telemetry")
    assert isinstance(parsed, TelemetryWindow) and parsed.stream == "" and parsed == WINDOW
    assert b"stream" not in WINDOW.to_bytes()


@pytest.mark.parametrize(
    "stream",
    ["", "0123456", "0123456789ABCDEF", "0" * 33, "0123456789abcdeg", 12345678, None, ["ab" * 8]],
)
def test_a_malformed_stream_is_refused(stream: object) -> None:
    payload = {**WINDOW.to_dict(), "stream": stream}
    with pytest.raises(ProtocolError, match="'stream'"):
        parse_message(json.dumps(payload).encode(), "telemetry")


@pytest.mark.parametrize("stream", ["01234567", "0123456789abcdef", "f" * 32])
def test_stream_ids_of_8_to_32_hex_digits_are_taken(stream: str) -> None:
    parsed = parse_message(json.dumps({**WINDOW.to_dict(), "stream": stream}).encode())
    assert isinstance(parsed, TelemetryWindow) and parsed.stream == stream


def test_broker_urls_parse_with_their_default_ports() -> None:
    assert broker_address("mqtt://10.0.0.5") == BrokerAddress("10.0.0.5", 1883, False)
    assert broker_address("mqtts://broker.example:9999") == ("broker.example", 9999, True)
    for bad in ("http://x:1883", "mqtt://", "mqtt://host:port", "broker:1883"):
        with pytest.raises(InputError, match="broker URL"):
            broker_address(bad)
