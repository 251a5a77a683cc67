"""A re-imaged device's telemetry: a real agent process, a real Mosquitto, the fleet service in
a thread, a real registry file.

The agent sends windows; it stops, its outbox.db is deleted (a re-image, a lost state folder:
the bundles it holds stay), and it starts again, numbering its windows from 1 in a new stream.
The fleet stores every window of both streams, drops none as a duplicate of the other, and
still drops a window that really is delivered twice.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import waiting
from agent_process import Agent, write_config
from background import Background
from broker import MosquittoBroker

from edgeml.agent.install import install_bundle
from edgeml.agent.outbox import TelemetryOutbox
from edgeml.fleet.registry import FleetRegistry
from edgeml.fleet.service import BrokerConnection, FleetService
from edgeml.toolkit.protocol import device_topic
from edgeml.toolkit.trust import load_trust_store

pytestmark = pytest.mark.slow

DEVICE = "pi-1"
PROFILE = "raspberry-pi-4"
BUNDLE = "cancer-1.0.0-raspberry-pi-4"


wait_for = functools.partial(waiting.wait_for, timeout=30.0, interval=0.05)


class RunningFleet:
    """``FleetService.run`` in a thread, as ``fleet serve`` runs it, and the registry it
    writes, opened for the test to read."""

    def __init__(self, db: Path, broker: MosquittoBroker, key_dir: Path) -> None:
        self.registry = FleetRegistry.open(db)
        self.service = FleetService(
            db, BrokerConnection(broker.url), load_trust_store(key_dir), tick_s=0.1
        )
        self.running = Background(self.service.run, "fleet-service")  # errors surface at stop()
        wait_for(self.service.connected.is_set, "the service's connection to the broker")

    def stop(self) -> None:
        self.service.stop()
        self.running.thread.join(timeout=10)
        self.registry.close()
        assert not self.running.thread.is_alive(), "the service did not stop"
        assert not self.running.errors, f"the service failed: {self.running.errors!r}"

    def stream_windows(self, stream: str) -> list[int]:
        """The seqs stored for the device's ``stream``, in order."""
        return [r.seq for r in self.registry.windows(device_id=DEVICE) if r.stream == stream]


@pytest.fixture
def fleet(mosquitto: MosquittoBroker, tmp_path: Path, key_dir: Path) -> Iterator[RunningFleet]:
    running = RunningFleet(tmp_path / "fleet.db", mosquitto, key_dir)
    yield running
    running.stop()


def outbox_stats(state_dir: Path) -> tuple[str, int, int]:
    """The stopped agent's outbox: (stream, last seq, windows still pending)."""
    with TelemetryOutbox(state_dir / "outbox.db", readonly=True) as outbox:
        stats = outbox.stats()
    return stats.stream, stats.last_seq, stats.pending


def run_agent(config: Path, fleet: RunningFleet, rows: np.ndarray, calls: int) -> int:
    """Start the agent, send ``calls`` prediction requests, let it number a few windows,
    stop it cleanly (it flushes the last window and waits for its acknowledgement).

    Returns:
        The requests the agent answered (each one is counted in exactly one window).
    """
    agent = Agent(config)
    try:
        wait_for(lambda: agent.get("/v1/health")[1].get("bundle") == BUNDLE, "the agent serving")
        answered = 0
        for i in range(calls):
            code, answer = agent.predict(rows[i % len(rows) : i % len(rows) + 2])
            assert code == 200 and answer["bundle"] == BUNDLE, answer
            answered += 1
        before = fleet.registry.telemetry_counts()["windows"]
        wait_for(
            lambda: fleet.registry.telemetry_counts()["windows"] >= before + 3,
            "three more windows in the registry",
        )
    finally:
        agent.stop()
    return answered


def test_a_device_whose_outbox_is_lost_starts_a_new_stream_and_no_window_is_dropped(
    fleet: RunningFleet,
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    key_dir: Path,
    built_bundle: Path,
) -> None:
    config = write_config(tmp_path / "device", mosquitto, key_dir, window_s=0.3, device_id=DEVICE)
    state = tmp_path / "device" / "state"
    install_bundle(built_bundle, state, load_trust_store(key_dir / "edgeml.pub"), PROFILE)
    rows = np.random.default_rng(0).normal(size=(64, 30))

    # Before the re-image: windows 1..first_last of the first stream.
    first_requests = run_agent(config, fleet, rows, 20)
    first_stream, first_last, pending = outbox_stats(state)
    assert len(first_stream) == 16 and first_last >= 3 and pending == 0
    wait_for(
        lambda: fleet.stream_windows(first_stream) == list(range(1, first_last + 1)),
        f"windows 1..{first_last} of the first stream",
    )

    # The re-image: the buffer is gone; the bundles the state folder holds stay.
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        (state / name).unlink(missing_ok=True)
    assert (state / "state.json").exists()

    second_requests = run_agent(config, fleet, rows, 30)
    second_stream, second_last, pending = outbox_stats(state)
    assert second_stream not in ("", first_stream) and pending == 0
    assert second_last >= 3
    wait_for(
        lambda: fleet.stream_windows(second_stream) == list(range(1, second_last + 1)),
        f"windows 1..{second_last} of the new stream (seq 1.. again)",
    )

    registry = fleet.registry
    stored = registry.windows(device_id=DEVICE)
    assert len(stored) == first_last + second_last  # both streams whole, nothing dropped
    assert {r.stream for r in stored} == {first_stream, second_stream}
    served = {
        stream: sum(r.window.requests for r in stored if r.stream == stream)
        for stream in (first_stream, second_stream)
    }
    assert served == {first_stream: first_requests, second_stream: second_requests}
    assert registry.latest_stream(DEVICE) == second_stream
    assert registry.window_gaps(DEVICE) == []
    assert registry.window_gaps(DEVICE, first_stream) == []
    assert fleet.service.counters.windows == first_last + second_last
    assert fleet.service.counters.duplicate_windows == 0

    # A true duplicate (at-least-once delivery sends window 1 of the new stream again) is
    # still dropped.
    again = next(r.window for r in stored if r.stream == second_stream and r.seq == 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="redelivery")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        info = client.publish(device_topic(DEVICE, "telemetry"), again.to_bytes(), qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
        wait_for(lambda: fleet.service.counters.duplicate_windows == 1, "the duplicate handled")
    finally:
        client.disconnect()
        client.loop_stop()
    assert len(registry.windows(device_id=DEVICE)) == first_last + second_last
