"""The MQTT protocol between the fleet service and its devices, version 1: topics and messages.

One module for both sides (DESIGN.md: agent and fleet share only this). Every message is a
JSON object with a ``type`` field, modelled as a frozen dataclass whose ``from_dict``
validates types, ranges and sizes and refuses what it does not understand; ``parse_message``
turns raw MQTT payload bytes into one, or raises :class:`ProtocolError`. No I/O here: the MQTT
clients are the shells (``edgeml.agent``, ``edgeml.fleet``). docs/protocol.md is the reference.

Topics, per device (``{id}`` matches ``[A-Za-z0-9._-]{1,64}``)::

    edgeml/v1/devices/{id}/status     device → fleet  QoS 1, retained; last will: offline status
    edgeml/v1/devices/{id}/telemetry  device → fleet  QoS 1: telemetry windows
    edgeml/v1/devices/{id}/events     device → fleet  QoS 1: command results, transfer requests
    edgeml/v1/devices/{id}/commands   fleet → device  QoS 1: install, activate, rollback, ping,
                                                      trust
    edgeml/v1/devices/{id}/transfer   fleet → device  QoS 1: bundle chunks

A transfer is pulled by the device: an ``install`` command announces the bundle (size,
SHA-256, chunk size); the device asks for chunks from the offset it already holds on disk
(``transfer-request``), the fleet sends a window of chunks from there, each with its own
SHA-256, and the device asks for the next window once it has written them. A restart or a
disconnect resumes from the bytes on disk; a chunk past the announced size ends the transfer.

A ``trust`` command carries a signed trust document inline (``trust_document``, at most
``MAX_TRUST_DOCUMENT_BYTES`` as canonical JSON); whether the device takes it is decided by the
document's signatures (``edgeml.toolkit.trust.verify_successor``), not by who sent it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import ssl
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple
from urllib.parse import urlparse

from edgeml.toolkit.errors import InputError
from edgeml.toolkit.manifest import canonical_json
from edgeml.toolkit.trust import MAX_TRUST_DOCUMENT_BYTES

VERSION = "v1"
PREFIX = f"edgeml/{VERSION}/devices"
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TOPIC_KINDS = ("status", "telemetry", "events", "commands", "transfer")
DEVICE_PUBLISHES = ("status", "telemetry", "events")
FLEET_PUBLISHES = ("commands", "transfer")

MAX_MESSAGE_BYTES = 256 * 1024
"""No message of this protocol is larger; a bigger payload is refused unparsed."""
DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 128 * 1024
MAX_BUNDLE_BYTES = 2 * 1024**3
STREAM_PATTERN = re.compile(r"[0-9a-f]{8,32}")
"""A telemetry stream id: lowercase hex (a device's outbox takes 16 random digits)."""
TRANSFER_WINDOW = 16
"""Chunks the fleet sends per transfer request: the device's flow control."""

TopicKind = Literal["status", "telemetry", "events", "commands", "transfer"]


class ProtocolError(InputError):
    """A message or topic that does not follow the protocol: malformed, oversized, wrong
    schema, or a value out of range. Receivers log it and drop the message."""


class BrokerAddress(NamedTuple):
    """Where a broker listens, from an ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT`` URL."""

    host: str
    port: int
    tls: bool


def broker_address(url: str) -> BrokerAddress:
    """Parse a broker URL: ``mqtt://`` (port 1883 by default) or ``mqtts://`` (TLS, 8883).

    Raises:
        InputError: another scheme, no host, or a port that is not a number.
    """
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        raise InputError(f"broker URL {url!r}: the port is not a number") from None
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise InputError(f"broker URL {url!r}: write mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parsed.scheme == "mqtts"
    return BrokerAddress(parsed.hostname, port or (8883 if tls else 1883), tls)


class BrokerEndpoint:
    """What the agent's ``[broker]`` settings and the fleet's connection share: the host, port
    and TLS of their ``url``, and paho's ``tls_set`` arguments from their certificate files.

    A mixin for dataclasses with ``url``, ``ca_file``, ``cert_file`` and ``key_file`` fields
    (the kernel does not import paho: the shells pass these arguments on).
    """

    url: str
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None

    @property
    def host(self) -> str:
        return broker_address(self.url).host

    @property
    def port(self) -> int:
        return broker_address(self.url).port

    @property
    def tls(self) -> bool:
        return broker_address(self.url).tls

    def tls_arguments(self) -> dict[str, Any]:
        """Keyword arguments for paho's ``Client.tls_set``."""
        return {
            "ca_certs": str(self.ca_file) if self.ca_file else None,
            "certfile": str(self.cert_file) if self.cert_file else None,
            "keyfile": str(self.key_file) if self.key_file else None,
            "tls_version": ssl.PROTOCOL_TLS_CLIENT,
        }


def device_topic(device_id: str, kind: TopicKind) -> str:
    """The topic of one device's ``kind`` channel.

    Raises:
        ProtocolError: the device id or the kind is not valid.
    """
    check_device_id(device_id)
    if kind not in TOPIC_KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}")
    return f"{PREFIX}/{device_id}/{kind}"


def subscription(kind: TopicKind) -> str:
    """The wildcard subscription for ``kind`` on every device (the fleet's side)."""
    return f"{PREFIX}/+/{kind}"


def parse_topic(topic: str) -> tuple[str, str]:
    """Split a device topic into (device id, kind).

    Raises:
        ProtocolError: not a topic of this protocol.
    """
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX or parts[4] not in TOPIC_KINDS:
        raise ProtocolError(f"topic {topic!r} is not an edgeml {VERSION} device topic")
    check_device_id(parts[3])
    return parts[3], parts[4]


def check_device_id(device_id: Any) -> str:
    """A device id, or ProtocolError."""
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.match(device_id):
        raise ProtocolError(f"device id {device_id!r} must match {DEVICE_ID_PATTERN.pattern}")
    return device_id


# ------------------------------------------------------------------------------ field checks


def _str(name: str, value: Any, *, optional: bool = False, limit: int = 256) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"field {name!r} must be a string of at most {limit} characters")
    return value


def _int(name: str, value: Any, low: int = 0, high: int = 2**53) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"field {name!r} must be an integer in [{low}, {high}]")
    return value


def _number(name: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"field {name!r} must be a finite number")
    if not low <= value <= high:
        raise ProtocolError(f"field {name!r} must be in [{low}, {high}]")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ProtocolError(f"field {name!r} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _sha256(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ProtocolError(f"field {name!r} must be 64 lowercase hex digits")
    return value


def _bundle_id(name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", value):
        raise ProtocolError(f"field {name!r} must be a bundle id (NAME-VERSION-PROFILE)")
    return value


def _counts(name: str, value: Any, limit: int = 1024) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > limit:
        raise ProtocolError(f"field {name!r} must be an object of at most {limit} counts")
    return {
        str(_str(f"{name} key", k, limit=128)): _int(f"{name}.{k}", v) for k, v in value.items()
    }


def _figures(name: str, value: Any, limit: int = 4096) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) > limit:
        raise ProtocolError(f"field {name!r} must be an object of at most {limit} numbers")
    return {
        str(_str(f"{name} key", k, limit=256)): _number(f"{name}.{k}", v, -math.inf)
        for k, v in value.items()
    }


def _stream(value: Any) -> str:
    if not isinstance(value, str) or not STREAM_PATTERN.fullmatch(value):
        raise ProtocolError(f"field 'stream' must match {STREAM_PATTERN.pattern}")
    return value


# ---------------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Common behaviour: the ``type`` tag, JSON bytes both ways."""

    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.TYPE, **asdict(self)}

    def to_bytes(self) -> bytes:
        data = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                f"{self.TYPE} message is {len(data)} bytes, over {MAX_MESSAGE_BYTES}"
            )
        return data

    @classmethod
    def _known(cls, data: dict[str, Any]) -> None:
        allowed = {f.name for f in fields(cls)} | {"type"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ProtocolError(f"{cls.TYPE} message has unknown fields: {', '.join(unknown)}")


@dataclass(frozen=True)
class Status(Message):
    """What a device runs and whether it is online; retained, and its last will."""

    TYPE: ClassVar[str] = "status"

    device_id: str
    online: bool
    sent_at: float
    profile: str | None = None
    tags: list[str] = field(default_factory=list)
    active: str | None = None
    previous: str | None = None
    state: str = "idle"
    agent_version: str | None = None
    detail: str = ""

    STATES: ClassVar[tuple[str, ...]] = ("idle", "receiving", "installing", "offline")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Status:
        cls._known(data)
        if not isinstance(data.get("online"), bool):
            raise ProtocolError("field 'online' must be true or false")
        tags = data.get("tags", [])
        if not isinstance(tags, list) or len(tags) > 64:
            raise ProtocolError("field 'tags' must be a list of at most 64 strings")
        return cls(
            device_id=check_device_id(data.get("device_id")),
            online=data["online"],
            sent_at=_number("sent_at", data.get("sent_at")),
            profile=_str("profile", data.get("profile"), optional=True),
            tags=[str(_str("tags[]", t, limit=64)) for t in tags],
            active=_bundle_id("active", data.get("active"), optional=True),
            previous=_bundle_id("previous", data.get("previous"), optional=True),
            state=_choice("state", data.get("state", "idle"), cls.STATES),
            agent_version=_str("agent_version", data.get("agent_version"), optional=True),
            detail=str(_str("detail", data.get("detail", ""), limit=2048)),
        )


@dataclass(frozen=True)
class Command(Message):
    """An order from the fleet to one device."""

    TYPE: ClassVar[str] = "command"
    KINDS: ClassVar[tuple[str, ...]] = ("install", "activate", "rollback", "ping", "trust")

    command_id: str
    kind: str
    issued_at: float
    bundle_id: str | None = None
    bundle_size: int | None = None
    bundle_sha256: str | None = None
    chunk_size: int = DEFAULT_CHUNK_BYTES
    rollout_id: str | None = None
    trust_document: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        document = super().to_dict()
        if self.trust_document is None:  # only trust commands carry one; others keep their bytes
            del document["trust_document"]
        return document

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Command:
        cls._known(data)
        kind = _choice("kind", data.get("kind"), cls.KINDS)
        trust_document = data.get("trust_document")
        if kind == "trust":
            if not isinstance(trust_document, dict):
                raise ProtocolError("a trust command must carry trust_document, a JSON object")
            try:
                size = len(canonical_json(trust_document))
            except (TypeError, ValueError, RecursionError):
                raise ProtocolError("field 'trust_document' is not plain JSON") from None
            if size > MAX_TRUST_DOCUMENT_BYTES:
                raise ProtocolError(
                    f"field 'trust_document' is {size} bytes, over {MAX_TRUST_DOCUMENT_BYTES}"
                )
        elif trust_document is not None:
            raise ProtocolError(f"a {kind} command carries no trust_document")
        needs_bundle = kind in ("install", "activate")
        command = cls(
            command_id=str(_str("command_id", data.get("command_id"), limit=128)),
            kind=kind,
            issued_at=_number("issued_at", data.get("issued_at")),
            bundle_id=_bundle_id("bundle_id", data.get("bundle_id"), optional=not needs_bundle),
            bundle_size=_int("bundle_size", data["bundle_size"], 1, MAX_BUNDLE_BYTES)
            if data.get("bundle_size") is not None
            else None,
            bundle_sha256=_sha256("bundle_sha256", data["bundle_sha256"])
            if data.get("bundle_sha256") is not None
            else None,
            chunk_size=_int(
                "chunk_size", data.get("chunk_size", DEFAULT_CHUNK_BYTES), 1024, MAX_CHUNK_BYTES
            ),
            rollout_id=_str("rollout_id", data.get("rollout_id"), optional=True, limit=128),
            trust_document=trust_document,
        )
        if kind == "install" and (command.bundle_size is None or command.bundle_sha256 is None):
            raise ProtocolError("an install command must announce bundle_size and bundle_sha256")
        return command


@dataclass(frozen=True)
class TransferRequest(Message):
    """A device asks for the chunks of a bundle from ``offset`` on."""

    TYPE: ClassVar[str] = "transfer-request"

    command_id: str
    bundle_id: str
    offset: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferRequest:
        cls._known(data)
        return cls(
            command_id=str(_str("command_id", data.get("command_id"), limit=128)),
            bundle_id=str(_bundle_id("bundle_id", data.get("bundle_id"))),
            offset=_int("offset", data.get("offset"), 0, MAX_BUNDLE_BYTES),
        )


@dataclass(frozen=True)
class Chunk(Message):
    """Bytes of a bundle at ``offset``, with their SHA-256."""

    TYPE: ClassVar[str] = "chunk"

    command_id: str
    bundle_id: str
    offset: int
    total_size: int
    sha256: str
    data: str  # base64

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        cls._known(data)
        chunk = cls(
            command_id=str(_str("command_id", data.get("command_id"), limit=128)),
            bundle_id=str(_bundle_id("bundle_id", data.get("bundle_id"))),
            offset=_int("offset", data.get("offset"), 0, MAX_BUNDLE_BYTES),
            total_size=_int("total_size", data.get("total_size"), 1, MAX_BUNDLE_BYTES),
            sha256=_sha256("sha256", data.get("sha256")),
            data=str(_str("data", data.get("data"), limit=MAX_CHUNK_BYTES * 4 // 3 + 8)),
        )
        chunk.payload()  # decodes and checks the hash
        return chunk

    @classmethod
    def of(
        cls, command_id: str, bundle_id: str, offset: int, total_size: int, payload: bytes
    ) -> Chunk:
        return cls(
            command_id,
            bundle_id,
            offset,
            total_size,
            hashlib.sha256(payload).hexdigest(),
            base64.b64encode(payload).decode("ascii"),
        )

    def payload(self) -> bytes:
        """The chunk's bytes, checked against its SHA-256.

        Raises:
            ProtocolError: not base64, larger than a chunk may be, or the hash differs.
        """
        try:
            payload = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("chunk data is not base64") from None
        if len(payload) > MAX_CHUNK_BYTES:
            raise ProtocolError(f"chunk of {len(payload)} bytes is over {MAX_CHUNK_BYTES}")
        if hashlib.sha256(payload).hexdigest() != self.sha256:
            raise ProtocolError(f"chunk at offset {self.offset} does not match its sha256")
        return payload


@dataclass(frozen=True)
class CommandResult(Message):
    """What a device did with a command, and what it runs now."""

    TYPE: ClassVar[str] = "command-result"
    OUTCOMES: ClassVar[tuple[str, ...]] = ("accepted", "succeeded", "failed", "refused")

    command_id: str
    kind: str
    outcome: str
    sent_at: float
    detail: str = ""
    bundle_id: str | None = None
    active: str | None = None
    previous: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommandResult:
        cls._known(data)
        return cls(
            command_id=str(_str("command_id", data.get("command_id"), limit=128)),
            kind=_choice("kind", data.get("kind"), Command.KINDS),
            outcome=_choice("outcome", data.get("outcome"), cls.OUTCOMES),
            sent_at=_number("sent_at", data.get("sent_at")),
            detail=str(_str("detail", data.get("detail", ""), limit=4096)),
            bundle_id=_bundle_id("bundle_id", data.get("bundle_id"), optional=True),
            active=_bundle_id("active", data.get("active"), optional=True),
            previous=_bundle_id("previous", data.get("previous"), optional=True),
        )


@dataclass(frozen=True)
class TelemetryWindow(Message):
    """A device's summary of one time window: counts, latency, predictions, drift.

    Never raw rows. ``seq`` numbers windows per device *and stream* from 1, so the fleet can
    drop duplicates and see gaps; ``stream`` (a random id the device's buffer takes when it is
    created) changes when the buffer starts over (a re-imaged device, a lost state folder), so
    that the new windows 1, 2, ... are not taken for duplicates of the old ones. An absent
    ``stream`` is the empty stream ``""`` (what agents before streams send), and an empty one
    is left out of the message. ``dropped_windows`` counts windows the device's buffer had to
    drop.
    """

    TYPE: ClassVar[str] = "telemetry"

    device_id: str
    seq: int
    window_start: float
    window_end: float
    bundle_id: str | None
    requests: int
    rows: int
    errors: int
    contract_violations: int
    latency_ms: dict[str, float]
    predictions: dict[str, int]
    drift_psi: dict[str, float]
    dropped_windows: int = 0
    stream: str = ""

    def to_dict(self) -> dict[str, Any]:
        document = super().to_dict()
        if not self.stream:  # the empty stream is the absent field: old receivers read it
            del document["stream"]
        return document

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TelemetryWindow:
        cls._known(data)
        window = cls(
            device_id=check_device_id(data.get("device_id")),
            seq=_int("seq", data.get("seq"), 1),
            window_start=_number("window_start", data.get("window_start")),
            window_end=_number("window_end", data.get("window_end")),
            bundle_id=_bundle_id("bundle_id", data.get("bundle_id"), optional=True),
            requests=_int("requests", data.get("requests")),
            rows=_int("rows", data.get("rows")),
            errors=_int("errors", data.get("errors")),
            contract_violations=_int("contract_violations", data.get("contract_violations")),
            latency_ms=_figures("latency_ms", data.get("latency_ms", {})),
            predictions=_counts("predictions", data.get("predictions", {})),
            drift_psi=_figures("drift_psi", data.get("drift_psi", {})),
            dropped_windows=_int("dropped_windows", data.get("dropped_windows", 0)),
            stream=_stream(data["stream"]) if "stream" in data else "",
        )
        if window.window_end < window.window_start:
            raise ProtocolError("field 'window_end' is before 'window_start'")
        return window


MESSAGES: dict[str, type[Message]] = {
    m.TYPE: m for m in (Status, Command, TransferRequest, Chunk, CommandResult, TelemetryWindow)
}
EXPECTED: dict[str, tuple[type[Message], ...]] = {
    "status": (Status,),
    "telemetry": (TelemetryWindow,),
    "events": (CommandResult, TransferRequest),
    "commands": (Command,),
    "transfer": (Chunk,),
}


def parse_message(payload: bytes, kind: str | None = None) -> Message:
    """Parse a payload, checking it is a message that may arrive on a ``kind`` topic.

    Raises:
        ProtocolError: oversized, not UTF-8 JSON, not an object, unknown type, a type that
            does not belong on the topic, or a field that does not validate.
    """
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: JSONDecodeError,
        # and an integer of more digits than Python converts
        raise ProtocolError("message is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("message is not a JSON object")
    message_type = MESSAGES.get(data.get("type"))  # type: ignore[arg-type]
    if message_type is None:
        raise ProtocolError(f"unknown message type {data.get('type')!r}")
    if kind is not None and message_type not in EXPECTED.get(kind, ()):
        raise ProtocolError(f"a {message_type.TYPE} message does not belong on a {kind} topic")
    try:
        return message_type.from_dict(data)  # type: ignore[attr-defined]
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as error:
        raise ProtocolError(f"malformed {message_type.TYPE} message: {error}") from None
