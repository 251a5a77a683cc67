"""The fleet service (``edgeml.fleet.service``) against a real Mosquitto and a real registry file.

The service runs in a thread, as ``fleet serve`` runs it; raw paho clients play the devices,
publishing what an agent would (or what a broken or hostile one would). Every wait polls with
a deadline: nothing here asserts after a fixed sleep.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import waiting
from background import Background
from broker import MosquittoBroker

from edgeml.fleet.enrollment import enroll_device, revoke_device
from edgeml.fleet.operations import request_action, start_rollout
from edgeml.fleet.publishing import publish_bundle
from edgeml.fleet.registry import FleetRegistry
from edgeml.fleet.rollout import StageSize
from edgeml.fleet.service import BrokerConnection, FleetService
from edgeml.toolkit.protocol import (
    Chunk,
    Command,
    CommandResult,
    Message,
    Status,
    TelemetryWindow,
    TopicKind,
    TransferRequest,
    device_topic,
    parse_message,
)
from edgeml.toolkit.trust import load_trust_store

PROFILE = "raspberry-pi-4"
OLD = "cancer-0.9.0-raspberry-pi-4"
OLDER = "cancer-0.8.0-raspberry-pi-4"


wait_for = functools.partial(waiting.wait_for, timeout=10.0, interval=0.02)


def window(device_id: str, seq: int, bundle_id: str | None = OLD) -> TelemetryWindow:
    return TelemetryWindow(
        device_id=device_id,
        seq=seq,
        window_start=1000.0 + 60 * seq,
        window_end=1060.0 + 60 * seq,
        bundle_id=bundle_id,
        requests=10,
        rows=10,
        errors=0,
        contract_violations=0,
        latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, "mean": 1.5},
        predictions={"0": 6, "1": 4},
        drift_psi={"mean_radius": 0.01},
    )


class Device:
    """A device as the broker sees it: a paho client with an offline last will, reading its
    own commands and transfer topics, publishing whatever the test tells it to."""

    def __init__(
        self,
        broker: MosquittoBroker,
        device_id: str,
        *,
        tags: tuple[str, ...] = (),
        active: str | None = OLD,
        previous: str | None = OLDER,
    ) -> None:
        self.device_id = device_id
        self.tags = tags
        self.active = active
        self.previous = previous
        self.commands: list[Command] = []
        self.chunks: list[Chunk] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{device_id}", clean_session=False
        )
        self.client.will_set(
            device_topic(device_id, "status"),
            self.status(online=False).to_bytes(),
            qos=1,
            retain=True,
        )
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, f"{device_id}'s subscriptions")

    def status(self, online: bool = True, detail: str = "") -> Status:
        return Status(
            device_id=self.device_id,
            online=online,
            sent_at=time.time(),
            profile=PROFILE,
            tags=list(self.tags),
            active=self.active,
            previous=self.previous,
            state="idle" if online else "offline",
            detail=detail,
        )

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(device_topic(self.device_id, k), 1) for k in ("commands", "transfer")])

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        parsed = parse_message(message.payload, kind)
        with self._lock:
            if isinstance(parsed, Command):
                self.commands.append(parsed)
            elif isinstance(parsed, Chunk):
                self.chunks.append(parsed)

    def publish(
        self,
        kind: TopicKind,
        message: Message | bytes,
        *,
        retain: bool = False,
        topic: str | None = None,
    ) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement."""
        payload = message if isinstance(message, bytes) else message.to_bytes()
        info = self.client.publish(
            topic or device_topic(self.device_id, kind), payload, qos=1, retain=retain
        )
        info.wait_for_publish(timeout=5)
        assert info.is_published(), f"{self.device_id} could not publish on {kind}"

    def announce(self, detail: str = "") -> None:
        self.publish("status", self.status(detail=detail), retain=True)

    def received_commands(self) -> list[Command]:
        with self._lock:
            return list(self.commands)

    def received_chunks(self) -> list[Chunk]:
        with self._lock:
            return list(self.chunks)

    def vanish(self) -> None:
        """Drop the connection without a DISCONNECT, as a device losing power does."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Fleet:
    """A running service, its broker, the registry file as the test reads it, the bundle."""

    broker: MosquittoBroker
    db: Path
    registry: FleetRegistry
    bundle_id: str
    bundle_path: Path
    service: FleetService
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)

    def device(self, device_id: str, **options: Any) -> Device:
        """A device that announced itself and that the service registered."""
        device = Device(self.broker, device_id, **options)
        self.devices.append(device)
        device.announce()
        wait_for(lambda: self.registry.device(device_id), f"{device_id}'s status registered")
        return device

    def rollout_to(self, device: Device) -> tuple[str, Command]:
        """A one-device rollout of the bundle; its id and the install command the device got."""
        rollout = start_rollout(self.registry, self.bundle_id, [StageSize(count=1)])
        install = wait_for(
            lambda: [c for c in device.received_commands() if c.kind == "install"],
            f"the install command on {device.device_id}",
        )[0]
        assert install.rollout_id == rollout.rollout_id
        return rollout.rollout_id, install

    def state(self, rollout_id: str) -> str:
        record = self.registry.rollout(rollout_id)
        assert record is not None
        return record.state


def start_service(
    db: Path, broker: MosquittoBroker, key_dir: Path
) -> tuple[FleetService, threading.Thread, list[BaseException]]:
    """``FleetService.run`` in a thread, as ``fleet serve`` runs it, once it is connected."""
    service = FleetService(
        db,
        BrokerConnection(broker.url),
        load_trust_store(key_dir),
        tick_s=0.1,
        health_every_s=0.1,
    )
    running = Background(service.run, "fleet-service")  # errors surface at teardown
    wait_for(service.connected.is_set, "the service's connection to the broker")
    return service, running.thread, running.errors


def fleet_on(broker: MosquittoBroker, tmp_path: Path, built_bundle: Path, key_dir: Path) -> Fleet:
    db = tmp_path / "fleet.db"
    registry = FleetRegistry.open(db)
    record, _ = publish_bundle(registry, built_bundle, load_trust_store(key_dir))
    service, thread, errors = start_service(db, broker, key_dir)
    return Fleet(broker, db, registry, record.bundle_id, Path(record.path), service, thread, errors)


def shut_down(fleet: Fleet) -> None:
    for device in fleet.devices:
        device.close()
    fleet.service.stop()
    fleet.thread.join(timeout=10)
    fleet.registry.close()
    assert not fleet.thread.is_alive(), "the service did not stop"
    assert not fleet.errors, f"the service failed: {fleet.errors!r}"


@pytest.fixture
def fleet(
    mosquitto: MosquittoBroker, tmp_path: Path, built_bundle: Path, key_dir: Path
) -> Iterator[Fleet]:
    running = fleet_on(mosquitto, tmp_path, built_bundle, key_dir)
    yield running
    shut_down(running)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


# --- statuses ---------------------------------------------------------------------------------


def test_statuses_are_registered_and_the_last_will_marks_the_device_offline(
    fleet: Fleet,
) -> None:
    device = fleet.device("pi-1", tags=("canary", "plant-3"))
    record = fleet.registry.device("pi-1")
    assert record is not None
    assert (record.profile, record.tags) == (PROFILE, ("canary", "plant-3"))
    assert (record.active, record.previous, record.online) == (OLD, OLDER, True)
    first_seen = record.first_seen

    device.active, device.previous = "cancer-1.0.0-raspberry-pi-4", OLD
    device.announce(detail="updated")
    updated = wait_for(
        lambda: (r := fleet.registry.device("pi-1")) and r.detail == "updated" and r,
        "the second status",
    )
    assert (updated.active, updated.previous) == ("cancer-1.0.0-raspberry-pi-4", OLD)
    assert updated.first_seen == first_seen

    device.vanish()
    offline = wait_for(
        lambda: (r := fleet.registry.device("pi-1")) and not r.online and r,
        "the last will marking pi-1 offline",
    )
    assert offline.state == "offline"
    assert fleet.service.counters.dropped_messages == 0


# --- telemetry --------------------------------------------------------------------------------


def test_a_window_published_twice_is_stored_once(fleet: Fleet) -> None:
    device = fleet.device("pi-1")
    for seq in (1, 1, 2):
        device.publish("telemetry", window("pi-1", seq))
    counters = fleet.service.counters
    wait_for(lambda: counters.windows + counters.duplicate_windows >= 3, "three windows handled")
    assert [r.seq for r in fleet.registry.windows(device_id="pi-1")] == [1, 2]
    assert (counters.windows, counters.duplicate_windows) == (2, 1)


def test_a_revoked_device_is_not_heard_even_before_the_broker_reloads(
    fleet: Fleet, tmp_path: Path
) -> None:
    device = fleet.device("pi-1")
    enroll_device(fleet.registry, "pi-1", PROFILE, out=tmp_path / "enrolled", now=1.0)
    revoke_device(fleet.registry, "pi-1", now=2.0, reason="stolen")
    wait_for(lambda: "pi-1" in fleet.service._revoked, "the revocation seen by the service")
    dropped = fleet.service.counters.dropped_messages
    device.publish("telemetry", window("pi-1", 1))  # the broker still lets it through
    wait_for(lambda: fleet.service.counters.dropped_messages > dropped, "the window dropped")
    assert fleet.registry.windows(device_id="pi-1") == []


def test_a_window_naming_another_device_than_its_topic_is_dropped(fleet: Fleet) -> None:
    device = fleet.device("pi-1")
    device.publish("telemetry", window("pi-2", 1))  # on pi-1's topic
    device.publish("telemetry", window("pi-1", 1))
    wait_for(lambda: fleet.registry.windows(device_id="pi-1"), "pi-1's own window")
    assert fleet.registry.windows(device_id="pi-2") == []
    assert fleet.service.counters.dropped_messages == 1
    assert fleet.service.counters.windows == 1


OVERSIZED = b'{"type": "telemetry", "pad": "' + b"x" * (257 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (None, b'{"type": "telemetry", "seq": '),
        (None, OVERSIZED),
        (None, b"[1, 2, 3]"),
        (None, window("pi-1", 1).to_bytes().replace(b'"seq":1', b'"seq":-1')),
        (None, window("pi-1", 1).to_bytes().replace(b'"rows":', b'"extra":1,"rows":')),
        ("edgeml/v1/devices/pi-1/status", window("pi-1", 1).to_bytes()),
        ("edgeml/v1/devices/pi-1/events", window("pi-1", 1).to_bytes()),
        ("edgeml/v1/devices/" + "x" * 65 + "/telemetry", window("pi-1", 1).to_bytes()),
        ("edgeml/v1/devices/pi 1!/telemetry", window("pi-1", 1).to_bytes()),
    ],
    ids=[
        "malformed-json",
        "oversized",
        "not-an-object",
        "invalid-field",
        "unknown-field",
        "window-on-status-topic",
        "window-on-events-topic",
        "device-id-too-long",
        "device-id-with-bad-characters",
    ],
)
def test_a_bad_message_is_dropped_and_the_service_keeps_working(
    fleet: Fleet, topic: str | None, payload: bytes
) -> None:
    device = fleet.device("pi-1")
    device.publish("telemetry", payload, topic=topic)
    device.publish("telemetry", window("pi-1", 2))
    wait_for(lambda: fleet.registry.windows(device_id="pi-1"), "the good window after the bad")
    assert [r.seq for r in fleet.registry.windows()] == [2]
    assert fleet.service.counters.dropped_messages == 1


# --- command results --------------------------------------------------------------------------


def test_a_forged_command_result_is_kept_as_unknown_and_does_not_move_the_rollout(
    fleet: Fleet,
) -> None:
    canary = fleet.device("pi-1", tags=("canary",))
    other = fleet.device("pi-2")
    rollout_id, install = fleet.rollout_to(canary)
    failed = CommandResult(
        command_id=install.command_id,
        kind="install",
        outcome="failed",
        sent_at=time.time(),
        detail="self-test failed",
        bundle_id=fleet.bundle_id,
    )
    other.publish("events", failed)  # pi-1's command, answered by pi-2
    canary.publish(
        "events",
        CommandResult("ro-forged.pi-1.i1", "install", "failed", time.time(), "self-test failed"),
    )
    counters = fleet.service.counters
    wait_for(lambda: counters.results == 2, "both forged results stored")
    steps = counters.steps
    wait_for(lambda: counters.steps >= steps + 3, "three more steps of the rollout")

    with sqlite3.connect(fleet.db) as conn:
        stored = conn.execute(
            "SELECT command_id, device_id, known FROM command_results ORDER BY result_id"
        ).fetchall()
    assert stored == [(install.command_id, "pi-2", 0), ("ro-forged.pi-1.i1", "pi-1", 0)]
    assert fleet.registry.final_result(install.command_id) is None
    record = fleet.registry.rollout(rollout_id)
    assert record is not None and record.state == "running"
    assert record.document["devices"]["pi-1"]["state"] == "sent"

    canary.publish("events", failed)  # the same result from the device it was sent to
    wait_for(lambda: fleet.state(rollout_id) == "rolled-back", "the genuine failure's rollback")


# --- transfers --------------------------------------------------------------------------------


def fetch(device: Device, install: Command, total: int) -> bytes:
    """Pull a whole bundle the way an agent does: ask from the first byte still missing."""
    received: dict[int, bytes] = {}
    offset = 0
    while offset < total:
        device.publish("events", TransferRequest(install.command_id, install.bundle_id, offset))
        wait_for(
            lambda at=offset: any(c.offset == at for c in device.received_chunks()),
            f"a chunk at offset {offset}",
        )
        for chunk in device.received_chunks():
            assert chunk.total_size == total
            received[chunk.offset] = chunk.payload()
        while offset in received:
            offset += len(received[offset])
    return b"".join(received[at] for at in sorted(received))


def test_a_transfer_request_gets_the_bundle_it_was_told_to_install(fleet: Fleet) -> None:
    device = fleet.device("pi-1", tags=("canary",))
    _, install = fleet.rollout_to(device)
    expected = fleet.bundle_path.read_bytes()
    assert install.bundle_id == fleet.bundle_id
    assert install.bundle_size == len(expected)
    assert install.bundle_sha256 == hashlib.sha256(expected).hexdigest()

    data = fetch(device, install, len(expected))
    assert hashlib.sha256(data).hexdigest() == install.bundle_sha256

    resume_at = len(expected) - 1000
    device.publish("events", TransferRequest(install.command_id, install.bundle_id, resume_at))
    resumed = wait_for(
        lambda: [c for c in device.received_chunks() if c.offset == resume_at],
        "the chunk from the resumed offset",
    )[0]
    assert resumed.payload() == expected[resume_at:]


def test_a_transfer_request_under_another_devices_command_gets_nothing(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeml.fleet")
    canary = fleet.device("pi-1", tags=("canary",))
    other = fleet.device("pi-2")
    _, install = fleet.rollout_to(canary)
    other.publish("events", TransferRequest(install.command_id, install.bundle_id, 0))
    wait_for(lambda: logged(caplog, "pi-2 asked for"), "the service refusing pi-2's request")
    assert fleet.service.counters.chunks_sent == 0
    assert other.received_chunks() == [] and canary.received_chunks() == []


def test_a_transfer_request_for_an_aborted_rollout_gets_nothing(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeml.fleet")
    device = fleet.device("pi-1", tags=("canary",))
    rollout_id, install = fleet.rollout_to(device)
    request_action(fleet.registry, rollout_id, "abort", reason="changed my mind")
    wait_for(lambda: fleet.state(rollout_id) == "aborted", "the abort")
    device.publish("events", TransferRequest(install.command_id, install.bundle_id, 0))
    wait_for(lambda: logged(caplog, "its rollout stopped"), "the service refusing the transfer")
    assert fleet.service.counters.chunks_sent == 0
    assert device.received_chunks() == []


def test_a_stored_copy_changed_after_publishing_is_refused_and_its_rollout_aborted(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgeml.fleet")
    device = fleet.device("pi-1", tags=("canary",))
    rollout_id, install = fleet.rollout_to(device)  # the service verified its copy by now
    changed = bytearray(fleet.bundle_path.read_bytes())
    changed[len(changed) // 2] ^= 0x01
    fleet.bundle_path.write_bytes(bytes(changed))

    device.publish("events", TransferRequest(install.command_id, install.bundle_id, 0))
    wait_for(lambda: fleet.state(rollout_id) == "aborted", "the rollout's abort")
    wait_for(
        lambda: logged(caplog, "its rollout stopped") or logged(caplog, "refused"),
        "the service refusing the transfer",
    )
    assert fleet.service.counters.chunks_sent == 0
    assert device.received_chunks() == []
    record = fleet.registry.rollout(rollout_id)
    assert record is not None
    assert "does not verify" in record.document["reason"]
    aborted = [e for e in fleet.registry.audit_log(rollout_id=rollout_id) if e.action == "aborted"]
    assert aborted and "does not verify" in aborted[-1].reason


# --- the broker going away --------------------------------------------------------------------


def test_commands_queued_while_the_broker_is_down_are_sent_when_it_returns(
    tmp_path: Path, built_bundle: Path, key_dir: Path
) -> None:
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)  # sessions survive
    broker.start()
    running = fleet_on(broker, tmp_path, built_bundle, key_dir)
    try:
        device = running.device("pi-1", tags=("canary",))
        broker.stop()
        wait_for(lambda: not running.service.connected.is_set(), "the service to see it go")
        rollout = start_rollout(running.registry, running.bundle_id, [StageSize(count=1)])
        (queued,) = wait_for(running.registry.unsent_commands, "the install queued offline")
        assert (queued.device_id, queued.command.kind) == ("pi-1", "install")
        assert queued.command.rollout_id == rollout.rollout_id

        broker.start()  # the same port
        received = wait_for(device.received_commands, "the install after the broker returned")
        assert [c.command_id for c in received] == [queued.command_id]
        sent = wait_for(
            lambda: (c := running.registry.command(queued.command_id)) and c.sent_at and c,
            "the command marked sent",
        )
        assert sent.sent_at is not None and sent.sent_at >= queued.created_at
        assert running.registry.unsent_commands() == []
    finally:
        shut_down(running)
        broker.stop()
