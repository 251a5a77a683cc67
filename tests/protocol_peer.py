"""The fleet's side of the MQTT protocol, as a test drives it: send commands, serve bundle
chunks on request, collect what devices publish. Built on the real protocol module and a real
paho client against a real Mosquitto; the fleet service itself (edgeml.fleet) does the same
work with a registry behind it.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeml.toolkit.protocol import (
    DEFAULT_CHUNK_BYTES,
    TRANSFER_WINDOW,
    Chunk,
    Command,
    CommandResult,
    ProtocolError,
    Status,
    TelemetryWindow,
    TransferRequest,
    device_topic,
    parse_message,
    parse_topic,
    subscription,
)


class ProtocolPeer:
    """Publishes commands and chunks; records statuses, results, requests and telemetry."""

    def __init__(self, host: str, port: int, client_id: str = "test-fleet") -> None:
        self.bundles: dict[str, bytes] = {}
        self.statuses: dict[str, Status] = {}
        self.results: list[CommandResult] = []
        self.requests: list[TransferRequest] = []
        self.telemetry: dict[str, list[TelemetryWindow]] = defaultdict(list)
        self.chunk_limit: int | None = None  # stop serving after this many chunks (outages)
        self.chunks_sent = 0
        self.served: list[tuple[str, int]] = []  # (command id, offset) of every chunk sent
        self.chunk_sizes: dict[str, int] = {}  # command id -> the chunk size it announced
        self.invalid: list[tuple[str, bytes]] = []  # what devices published that does not parse
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self._subscribed = threading.Event()
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._received
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        self.client.connect(host, port)
        self.client.loop_start()
        self.wait(self._subscribed.is_set, 10, "the peer's subscriptions")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _connected(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(subscription(k), 1) for k in ("status", "telemetry", "events")])

    def _received(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            device, kind = parse_topic(message.topic)
            parsed = parse_message(message.payload, kind)
        except ProtocolError:  # kept for the test to see; never raised into paho's thread
            with self._lock:
                self.invalid.append((message.topic, message.payload))
            return
        with self._lock:
            if isinstance(parsed, Status):
                self.statuses[device] = parsed
            elif isinstance(parsed, TelemetryWindow):
                self.telemetry[device].append(parsed)
            elif isinstance(parsed, CommandResult):
                self.results.append(parsed)
            elif isinstance(parsed, TransferRequest):
                self.requests.append(parsed)
        if isinstance(parsed, TransferRequest):
            self._serve(device, parsed)

    def _serve(self, device: str, request: TransferRequest) -> None:
        data = self.bundles.get(request.bundle_id)
        if data is None:
            return
        offset = request.offset
        size = self.chunk_sizes.get(request.command_id, DEFAULT_CHUNK_BYTES)
        for _ in range(TRANSFER_WINDOW):
            if offset >= len(data) or (
                self.chunk_limit is not None and self.chunks_sent >= self.chunk_limit
            ):
                return
            payload = data[offset : offset + size]
            chunk = Chunk.of(request.command_id, request.bundle_id, offset, len(data), payload)
            self.client.publish(device_topic(device, "transfer"), chunk.to_bytes(), qos=1)
            self.chunks_sent += 1
            self.served.append((request.command_id, offset))
            offset += len(payload)

    def install(self, device: str, bundle: Path, chunk_size: int = DEFAULT_CHUNK_BYTES) -> str:
        """Offer a bundle file to a device, to be sent in chunks of ``chunk_size`` bytes;
        returns the command id."""
        data = bundle.read_bytes()
        bundle_id = bundle.name.removesuffix(".edgeml")
        self.bundles[bundle_id] = data
        command = Command(
            command_id=uuid.uuid4().hex,
            kind="install",
            issued_at=time.time(),
            bundle_id=bundle_id,
            bundle_size=len(data),
            bundle_sha256=hashlib.sha256(data).hexdigest(),
            chunk_size=chunk_size,
        )
        self.chunk_sizes[command.command_id] = chunk_size
        self.client.publish(device_topic(device, "commands"), command.to_bytes(), qos=1)
        return command.command_id

    def command(self, device: str, kind: str, bundle_id: str | None = None) -> str:
        command = Command(uuid.uuid4().hex, kind, time.time(), bundle_id)
        self.client.publish(device_topic(device, "commands"), command.to_bytes(), qos=1)
        return command.command_id

    def trust(self, device: str, document: dict[str, Any]) -> str:
        """Send a device a trust document (a ``trust`` command); returns the command id."""
        command = Command(uuid.uuid4().hex, "trust", time.time(), trust_document=document)
        self.client.publish(device_topic(device, "commands"), command.to_bytes(), qos=1)
        return command.command_id

    def result(self, command_id: str, timeout: float = 30.0) -> CommandResult:
        """The final result of a command (not ``accepted``)."""
        found: list[CommandResult] = []

        def final() -> bool:
            with self._lock:
                found[:] = [
                    r
                    for r in self.results
                    if r.command_id == command_id and r.outcome != "accepted"
                ]
            return bool(found)

        self.wait(final, timeout, f"the result of command {command_id}")
        return found[0]

    @staticmethod
    def wait(condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
