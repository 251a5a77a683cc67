"""The device simulator: its per-device state machine without a broker, then hundreds of
simulated devices in one thread against a real Mosquitto, driven by the protocol peer."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import MosquittoBroker
from protocol_peer import ProtocolPeer

from edgeml.fleet.simulator import (
    DROPPED_GARBAGE,
    GARBAGE_KINDS,
    OVERSIZED_BYTES,
    DeviceBehaviour,
    DeviceSimulator,
    Misbehaviour,
    Outgoing,
    SimulatedDevice,
    healthy,
    make_devices,
    make_garbage,
)
from edgeml.toolkit.protocol import (
    DEFAULT_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
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
)

OLD = "demo-0.9.0-raspberry-pi-4"
NEW = "demo-1.0.0-raspberry-pi-4"
T0 = 1_700_000_000.0


# --- helpers ------------------------------------------------------------------------------------


def install_command(data: bytes, bundle_id: str = NEW, chunk_size: int = 1024, **over: object):
    fields: dict[str, object] = {
        "command_id": "cmd-install",
        "kind": "install",
        "issued_at": T0,
        "bundle_id": bundle_id,
        "bundle_size": len(data),
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "chunk_size": chunk_size,
    }
    fields.update(over)
    return Command(**fields)  # type: ignore[arg-type]


def command(kind: str, bundle_id: str | None = None, command_id: str = "cmd-1") -> Command:
    return Command(command_id, kind, T0, bundle_id)


def of_type(out: list[Outgoing], kind: type) -> list:
    return [o.message for o in out if isinstance(o.message, kind)]


def final_result(out: list[Outgoing]) -> CommandResult:
    results = [r for r in of_type(out, CommandResult) if r.outcome != "accepted"]
    assert len(results) == 1, out
    return results[0]


def transfer(
    device: SimulatedDevice, cmd: Command, data: bytes, behaviour=healthy, now: float = T0
) -> list[Outgoing]:
    """Play the fleet: answer every transfer request with a window of chunks, like the peer."""
    out = device.handle(cmd, now, behaviour)
    everything = list(out)
    requests = of_type(out, TransferRequest)
    while requests:
        request = requests.pop(0)
        offset = request.offset
        for _ in range(TRANSFER_WINDOW):
            if offset >= len(data):
                break
            payload = data[offset : offset + cmd.chunk_size]
            chunk = Chunk.of(cmd.command_id, request.bundle_id, offset, len(data), payload)
            answer = device.handle(chunk, now, behaviour)
            everything += answer
            requests += of_type(answer, TransferRequest)
            offset += len(payload)
    return everything


def roundtrip(out: list[Outgoing]) -> None:
    """Every message the device publishes is valid on the topic it goes to."""
    for item in out:
        assert item.kind in ("status", "telemetry", "events")
        assert parse_message(item.message.to_bytes(), item.kind) == item.message
        assert item.retain == (item.kind == "status")


@pytest.fixture
def device() -> SimulatedDevice:
    pi = SimulatedDevice("pi-7", "raspberry-pi-4", ("canary",), active=OLD)
    pi.connected(T0 - 5)
    return pi


# --- the device's state machine ------------------------------------------------------------------


def test_an_install_pulls_chunk_windows_checks_the_hash_and_swaps_bundles(
    device: SimulatedDevice,
) -> None:
    data = os.urandom(40 * 1024 + 77)  # 41 chunks of 1 KiB: three transfer requests
    cmd = install_command(data)
    out = transfer(device, cmd, data)
    roundtrip(out)

    assert of_type(out, CommandResult)[0].outcome == "accepted"
    assert [r.offset for r in of_type(out, TransferRequest)] == [0, 16 * 1024, 32 * 1024]
    result = final_result(out)
    assert (result.outcome, result.kind, result.bundle_id) == ("succeeded", "install", NEW)
    assert (result.active, result.previous) == (NEW, OLD)
    assert (device.active, device.previous, device.state, device.transfer) == (
        NEW,
        OLD,
        "idle",
        None,
    )
    states = [s.state for s in of_type(out, Status)]
    assert states[0] == "receiving" and "installing" in states and states[-1] == "idle"
    # The old bundle's window closes with it, before the new one serves.
    (window,) = of_type(out, TelemetryWindow)
    assert window.bundle_id == OLD


def test_installing_the_active_bundle_succeeds_at_once(device: SimulatedDevice) -> None:
    out = device.handle(install_command(b"x" * 2000, bundle_id=OLD), T0)
    result = final_result(out)
    assert (result.outcome, result.detail) == ("succeeded", "already active")
    assert not of_type(out, TransferRequest)


def test_a_bundle_whose_hash_differs_is_refused_and_the_old_one_kept(
    device: SimulatedDevice,
) -> None:
    data = os.urandom(3000)
    cmd = install_command(data, bundle_sha256="0" * 64)
    out = transfer(device, cmd, data)
    result = final_result(out)
    assert result.outcome == "refused" and "sha256" in result.detail
    assert (device.active, device.previous, device.state) == (OLD, None, "idle")


def test_chunks_at_the_wrong_offset_or_of_another_command_are_ignored(
    device: SimulatedDevice,
) -> None:
    data = os.urandom(4096)
    cmd = install_command(data)
    device.handle(cmd, T0)
    assert device.handle(Chunk.of(cmd.command_id, NEW, 1024, 4096, data[1024:2048]), T0) == []
    assert device.handle(Chunk.of("other", NEW, 0, 4096, data[:1024]), T0) == []
    assert device.handle(Chunk.of(cmd.command_id, "x-1-y", 0, 4096, data[:1024]), T0) == []
    assert device.transfer is not None and device.transfer.offset == 0
    assert device.handle(Chunk.of(cmd.command_id, NEW, 0, 4096, data[:1024]), T0) == []
    assert device.handle(Chunk.of(cmd.command_id, NEW, 0, 4096, data[:1024]), T0) == []  # dup
    assert device.transfer.offset == 1024 and device.state == "receiving"


def test_a_chunk_past_the_announced_size_ends_the_transfer(device: SimulatedDevice) -> None:
    data = os.urandom(2048)
    cmd = install_command(data)
    device.handle(cmd, T0)
    out = device.handle(Chunk.of(cmd.command_id, NEW, 1536, 2048, os.urandom(1024)), T0)
    assert final_result(out).outcome == "refused"
    assert device.transfer is None and device.active == OLD


def test_a_failing_self_test_keeps_the_old_bundle(device: SimulatedDevice) -> None:
    def behaviour(bundle_id: str | None) -> DeviceBehaviour:
        return DeviceBehaviour(fail_install=bundle_id == NEW)

    data = os.urandom(5000)
    out = transfer(device, install_command(data), data, behaviour)
    roundtrip(out)
    result = final_result(out)
    assert result.outcome == "failed" and "golden self-test failed" in result.detail
    assert (result.active, device.active, device.previous) == (OLD, OLD, None)
    assert of_type(out, Status)[-1].detail == result.detail


def test_activate_the_previous_swaps_and_rollback_swaps_back(device: SimulatedDevice) -> None:
    data = os.urandom(3000)
    transfer(device, install_command(data), data)
    assert (device.active, device.previous) == (NEW, OLD)

    out = device.handle(command("activate", OLD), T0 + 1)
    roundtrip(out)
    assert final_result(out).outcome == "succeeded"
    assert (device.active, device.previous) == (OLD, NEW)

    again = final_result(device.handle(command("activate", OLD), T0 + 2))
    assert (again.outcome, again.detail) == ("succeeded", "already active")
    unknown = final_result(device.handle(command("activate", "other-1.0.0-x"), T0 + 2))
    assert unknown.outcome == "refused"

    back = final_result(device.handle(command("rollback"), T0 + 3))
    assert (back.outcome, back.active, back.previous) == ("succeeded", NEW, OLD)
    assert of_type(device.handle(command("rollback"), T0 + 4), Status)[-1].active == OLD


def test_rollback_without_a_previous_bundle_fails(device: SimulatedDevice) -> None:
    result = final_result(device.handle(command("rollback"), T0))
    assert result.outcome == "failed" and device.active == OLD
    assert final_result(device.handle(command("ping"), T0)).detail == "pong"


def test_a_new_install_of_the_same_bundle_resumes_and_a_reconnect_asks_again(
    device: SimulatedDevice,
) -> None:
    data = os.urandom(4096)
    first = install_command(data, command_id="first")
    device.handle(first, T0)
    device.handle(Chunk.of("first", NEW, 0, 4096, data[:1024]), T0)
    (resume,) = of_type(device.connected(T0 + 1), TransferRequest)
    assert resume.offset == 1024

    second = install_command(data, command_id="second")
    out = device.handle(second, T0 + 2)
    assert of_type(out, CommandResult)[0].detail == "resuming at byte 1024"
    assert [r.offset for r in of_type(out, TransferRequest)] == [1024]
    for offset in range(1024, 4096, 1024):
        out = device.handle(Chunk.of("second", NEW, offset, 4096, data[offset:][:1024]), T0 + 3)
    assert final_result(out).outcome == "succeeded" and device.active == NEW
    assert device.retry_if_stalled(T0 + 100) == []


def test_a_stalled_transfer_is_asked_for_again(device: SimulatedDevice) -> None:
    data = os.urandom(4096)
    device.handle(install_command(data), T0)
    assert device.retry_if_stalled(T0 + 1) == []
    (again,) = of_type(device.retry_if_stalled(T0 + 11), TransferRequest)
    assert again.offset == 0


def test_telemetry_numbers_windows_and_follows_the_behaviour() -> None:
    pi = SimulatedDevice("pi-1", "raspberry-pi-4", active=OLD)
    assert pi.telemetry(T0) is None  # never connected: not booted
    pi.connected(T0)
    slow = DeviceBehaviour(
        requests_per_window=1000, error_rate=0.123, latency_p95_ms=80, psi=0.4, features=("a",)
    )

    def behaviour(bundle_id: str | None) -> DeviceBehaviour:
        return slow if bundle_id == OLD else DeviceBehaviour()

    windows = [pi.telemetry(T0 + 5 * i, behaviour, 5.0) for i in range(1, 4)]
    assert all(w is not None for w in windows)
    assert [w.seq for w in windows] == [1, 2, 3]  # type: ignore[union-attr]
    first = windows[0]
    assert first is not None
    assert (first.window_start, first.window_end, first.bundle_id) == (T0, T0 + 5, OLD)
    assert (first.requests, first.rows, first.errors) == (1000, 1000, 123)
    assert first.latency_ms["p95"] == 80
    assert first.latency_ms["p50"] < first.latency_ms["p95"] < first.latency_ms["p99"]
    assert first.latency_ms["p99"] <= first.latency_ms["max"]
    assert first.drift_psi == {"a": 0.4, "__prediction__": 0.4}
    assert sum(first.predictions.values()) == 1000 - 123
    assert parse_message(first.to_bytes(), "telemetry") == first

    half = pi.telemetry(T0 + 17.5, behaviour, 5.0)  # a window half as long: half the traffic
    assert half is not None and (half.seq, half.requests) == (4, 500)
    pi.window_dropped(half)
    after = pi.telemetry(T0 + 22.5, behaviour, 5.0)
    assert after is not None and (after.seq, after.dropped_windows) == (5, 1)

    idle = SimulatedDevice("pi-2", "raspberry-pi-4")
    idle.connected(T0)
    assert idle.telemetry(T0 + 5) is None and idle.seq == 0  # nothing active: nothing to say


def test_make_devices_numbers_and_tags_them() -> None:
    devices = make_devices(12, "jetson-orin", tags_for=lambda i: ("canary",) if i < 2 else ())
    assert [d.device_id for d in devices[:3]] == ["sim-00000", "sim-00001", "sim-00002"]
    assert [d.tags for d in devices[:3]] == [("canary",), ("canary",), ()]
    assert {d.profile for d in devices} == {"jetson-orin"}
    with pytest.raises(ValueError, match="unique"):
        DeviceSimulator("127.0.0.1", 1, [*devices, devices[0]])


# --- misbehaviour ---------------------------------------------------------------------------------


def test_a_misbehaviour_checks_its_figures_and_takes_the_kinds_in_turn() -> None:
    both = Misbehaviour(garbage_per_s=5, garbage=("not-json", "forged-result"))
    assert [both.garbage_kind(i) for i in range(4)] == ["not-json", "forged-result"] * 2
    for wrong in (
        {"garbage_per_s": -1},
        {"garbage": ("gibberish",)},
        {"garbage_per_s": 1, "garbage": ()},
        {"reconnect_every_s": 0},
        {"flood_windows_per_s": -2},
    ):
        with pytest.raises(ValueError):
            Misbehaviour(**wrong)  # type: ignore[arg-type]
    devices = make_devices(2, "raspberry-pi-4")
    with pytest.raises(ValueError, match="unknown devices"):
        DeviceSimulator("127.0.0.1", 1, devices, misbehaviour={"pi-404": Misbehaviour()})


def test_garbage_that_the_fleet_must_drop_does_not_parse_or_names_another_device(
    device: SimulatedDevice,
) -> None:
    assert DROPPED_GARBAGE.issubset(GARBAGE_KINDS)
    topics = set()
    for kind in sorted(DROPPED_GARBAGE):
        for serial in range(9):  # every variant of every kind
            garbage = make_garbage(device, kind, T0, serial)
            assert garbage is not None and garbage.kind == kind
            assert garbage.topic in ("status", "telemetry", "events")  # its own topics only
            topics.add(garbage.topic)
            if kind == "foreign-device":
                window = parse_message(garbage.payload, garbage.topic)
                assert isinstance(window, TelemetryWindow)
                assert window.device_id != device.device_id
                continue
            with pytest.raises(ProtocolError):
                parse_message(garbage.payload, garbage.topic)
    assert topics == {"status", "telemetry", "events"}
    oversized = make_garbage(device, "oversized", T0)
    assert oversized is not None
    assert len(oversized.payload) >= OVERSIZED_BYTES > MAX_MESSAGE_BYTES
    huge = [make_garbage(device, "huge-number", T0, i) for i in range(3)]
    assert any(g is not None and b"9" * 5000 in g.payload for g in huge)
    assert any(g is not None and b"1e999" in g.payload for g in huge)


def test_valid_garbage_repeats_a_window_or_names_commands_the_fleet_never_sent(
    device: SimulatedDevice,
) -> None:
    assert make_garbage(device, "duplicate-window", T0) is None  # nothing to repeat yet
    old = device.telemetry(T0)
    assert old is not None
    repeated = make_garbage(device, "duplicate-window", T0 + 60, old_window=old)
    assert repeated is not None and repeated.topic == "telemetry"
    assert parse_message(repeated.payload, "telemetry") == old
    requests = [make_garbage(device, "bogus-transfer", T0, i) for i in range(2)]
    parsed = [parse_message(g.payload, g.topic) for g in requests if g is not None]
    assert all(isinstance(r, TransferRequest) and r.bundle_id == OLD for r in parsed)
    assert len({r.command_id for r in parsed}) == 2  # type: ignore[attr-defined]
    forged = make_garbage(device, "forged-result", T0, 3)
    assert forged is not None and forged.topic == "events"
    result = parse_message(forged.payload, "events")
    assert isinstance(result, CommandResult)
    assert (result.kind, result.outcome, result.active) == ("install", "succeeded", OLD)
    with pytest.raises(ValueError, match="unknown garbage"):
        make_garbage(device, "gibberish", T0)


# --- against a real Mosquitto --------------------------------------------------------------------


def wait(condition, timeout: float, what: str) -> None:
    ProtocolPeer.wait(condition, timeout, what)


def test_three_hundred_devices_in_one_thread(
    roomy_mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    n = 300
    devices = make_devices(
        n, "raspberry-pi-4", tags_for=lambda i: ("canary",) if i < 5 else (), active=OLD
    )
    ids = [d.device_id for d in devices]
    peer = ProtocolPeer("127.0.0.1", roomy_mosquitto.port)
    simulator = DeviceSimulator(
        "127.0.0.1", roomy_mosquitto.port, devices, telemetry_interval_s=1.0
    )
    threads_before = threading.active_count()
    late: ProtocolPeer | None = None
    try:
        simulator.start()
        assert simulator.wait_connected(15), simulator.counters()
        assert threading.active_count() == threads_before + 1  # one driver thread, not 300

        wait(lambda: all(peer.statuses.get(i, None) for i in ids), 10, "every status")
        first = peer.statuses[ids[0]]
        assert (first.online, first.profile, first.tags, first.active) == (
            True,
            "raspberry-pi-4",
            ["canary"],
            OLD,
        )
        assert all(peer.statuses[i].online for i in ids) and peer.statuses[ids[-1]].tags == []
        # Retained: a subscriber that comes later still gets every status.
        late = ProtocolPeer("127.0.0.1", roomy_mosquitto.port, client_id="late-subscriber")
        wait(lambda: len(late.statuses) == n, 10, "the retained statuses")  # type: ignore[union-attr]

        # Install a bundle on three devices through the real chunked transfer.
        bundle = tmp_path / f"{NEW}.edgeml"
        bundle.write_bytes(os.urandom(300_000))  # five chunks of 64 KiB
        targets = ids[:3]
        commands = [peer.install(device, bundle) for device in targets]
        for command_id in commands:
            result = peer.result(command_id, timeout=10)
            assert (result.outcome, result.active, result.previous) == ("succeeded", NEW, OLD)
        wait(lambda: all(peer.statuses[t].active == NEW for t in targets), 5, "the new statuses")
        assert peer.statuses[targets[0]].previous == OLD and peer.statuses[ids[3]].active == OLD
        assert simulator.installs_succeeded == 3
        assert peer.chunks_sent == 3 * -(-300_000 // DEFAULT_CHUNK_BYTES)

        # A malformed command is dropped; the device still answers.
        dropped = simulator.messages_dropped
        peer.client.publish(device_topic(ids[5], "commands"), b"{not json", qos=1)
        pong = peer.result(peer.command(ids[5], "ping"), timeout=5)
        assert pong.detail == "pong" and simulator.messages_dropped == dropped + 1

        # Telemetry: every device, consecutive seqs from 1, the new bundle after the install.
        wait(
            lambda: (
                all(len(peer.telemetry[i]) >= 2 for i in ids)
                and any(w.bundle_id == NEW for w in peer.telemetry[targets[0]])
            ),
            10,
            "two telemetry windows from every device",
        )
        for i in ids:
            seqs = [w.seq for w in peer.telemetry[i]]
            assert sorted(set(seqs)) == list(range(1, max(seqs) + 1)), (i, seqs)
        assert simulator.windows_sent >= 2 * n
    finally:
        simulator.stop()
        if late is not None:
            late.close()
        assert threading.active_count() == threads_before

    try:
        wait(lambda: not any(peer.statuses[i].online for i in ids), 10, "offline statuses")
        assert {peer.statuses[i].state for i in ids} == {"offline"}
        assert peer.statuses[targets[0]].active == NEW
        assert simulator.connected == 0
    finally:
        peer.close()


def test_devices_reconnect_after_the_broker_comes_back(
    roomy_mosquitto: MosquittoBroker,
) -> None:
    devices = make_devices(20, "raspberry-pi-4", active=OLD)
    simulator = DeviceSimulator(
        "127.0.0.1",
        roomy_mosquitto.port,
        devices,
        telemetry_interval_s=0.5,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    try:
        simulator.start()
        assert simulator.wait_connected(10)
        roomy_mosquitto.stop()
        wait(lambda: simulator.connected == 0, 10, "the devices to notice the broker is gone")
        time.sleep(0.5)  # connection attempts fail meanwhile
        roomy_mosquitto.start()
        peer = ProtocolPeer("127.0.0.1", roomy_mosquitto.port)
        try:
            assert simulator.wait_connected(15), simulator.counters()
            assert simulator.reconnects == 20
            # Statuses are published again (the broker lost its retained ones), telemetry goes on.
            wait(lambda: len(peer.statuses) == 20, 10, "the statuses after the restart")
            wait(lambda: len(peer.telemetry) == 20, 10, "telemetry after the restart")
        finally:
            peer.close()
    finally:
        simulator.stop()


def test_misbehaving_devices_send_garbage_drop_their_connections_and_flood(
    roomy_mosquitto: MosquittoBroker,
) -> None:
    devices = make_devices(6, "raspberry-pi-4", active=OLD)
    garbage, storm, flood = (d.device_id for d in devices[:3])
    misbehaviour = {
        garbage: Misbehaviour(garbage_per_s=40),
        storm: Misbehaviour(reconnect_every_s=0.4),
        flood: Misbehaviour(flood_windows_per_s=10),
    }
    peer = ProtocolPeer("127.0.0.1", roomy_mosquitto.port)
    wills: list[bool] = []  # the storming device's statuses, in order

    def heard(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        status = parse_message(message.payload, "status")
        assert isinstance(status, Status)
        wills.append(status.online)

    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="storm-watcher")
    watcher.on_message = heard
    watcher.connect("127.0.0.1", roomy_mosquitto.port)
    watcher.subscribe(device_topic(storm, "status"), qos=1)
    watcher.loop_start()
    simulator = DeviceSimulator(
        "127.0.0.1",
        roomy_mosquitto.port,
        devices,
        telemetry_interval_s=0.5,
        misbehaviour=misbehaviour,
    )
    try:
        simulator.start()
        assert simulator.wait_connected(10)
        wait(
            lambda: simulator.connection_drops >= 4 and simulator.garbage_sent >= 2 * 8,
            10,
            "drops and garbage",
        )
        wait(lambda: len(peer.telemetry[flood]) >= 15, 10, "the flood")
    finally:
        simulator.stop()
        watcher.loop_stop()
        watcher.disconnect()
    try:
        # Every kind went out; what does not parse reached the peer as invalid.
        assert set(simulator.garbage_by_kind) == set(GARBAGE_KINDS)
        wait(lambda: len(peer.invalid) >= 8, 5, "the invalid garbage")
        assert {parse_topic(topic)[0] for topic, _ in peer.invalid} == {garbage}
        # The storm: each drop publishes the last will (offline), each reconnect says online,
        # and the device comes back at once rather than after a back-off.
        # (only the storming device reconnects; its last drop may not have come back yet)
        assert simulator.connection_drops >= simulator.reconnects >= simulator.connection_drops - 1
        assert simulator.reconnects >= 3
        assert wills.count(False) >= 3 and wills.count(True) >= 4
        # The flood: windows far faster than the interval, still numbered 1, 2, 3, ...
        calm = len(peer.telemetry[devices[4].device_id])
        seqs = [w.seq for w in peer.telemetry[flood]]
        assert len(set(seqs)) >= 3 * calm and sorted(set(seqs)) == list(range(1, max(seqs) + 1))
    finally:
        peer.close()
