"""Faults survived (issue 7, part 4): after each, no telemetry window lost or duplicated (by
seq), every device on a verified active bundle, and the rollout's state consistent.

- a broker restart during a transfer: the agent asks again from the bytes on disk;
- a broker restart during a rollout: the rollout ends ``succeeded``, every window arrives;
- the agent SIGKILLed again and again while it closes and flushes telemetry windows;
- the disk filling up while a bundle arrives (a real tmpfs of a few hundred KiB, then one
  filled to the last page): refused or failed naming the disk, the active bundle serving all
  along, and the transfer resumed from the bytes kept once there is room;
- the device's clock stepped back an hour and forward a day: windows keep coming, each one
  valid, and an install (with a stalled transfer) still goes through.

The fleet service SIGKILLed mid-rollout is
tests/fleet/test_end_to_end.py::test_the_service_killed_mid_rollout_carries_on_without_repeating_a_step;
a SIGKILL at every step of an install is tests/agent/test_crash_during_install.py.

Every wait polls with a deadline. The only sleeps are the moments a fault is injected at
(seeded) and the time a full disk is left full: no assertion depends on their length.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from agent_process import Agent, write_config
from background import Background
from broker import MosquittoBroker
from conftest import TrainedModel, build_bundle, write_csv
from protocol_peer import ProtocolPeer

from edgeml.agent.install import install_bundle
from edgeml.agent.outbox import OutboxError, TelemetryOutbox
from edgeml.agent.slots import leftovers
from edgeml.toolkit.protocol import (
    TRANSFER_WINDOW,
    ProtocolError,
    TelemetryWindow,
    TransferRequest,
)
from edgeml.toolkit.trust import load_trust_store

DEVICE = "pi-1"
OLD = "cancer-1.0.0-raspberry-pi-4"
FOREST = "forest-1.0.0-raspberry-pi-4"
CHUNK = 1024
WINDOW_BYTES = TRANSFER_WINDOW * CHUNK


def _sibling(relative: str, name: str) -> ModuleType:
    """Another test module's helpers, loaded by path (``fleet`` would resolve to the source
    package as an import name)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


e2e = _sibling("fleet/test_end_to_end.py", "end_to_end_helpers")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forest_bundle(tmp_path_factory: pytest.TempPathFactory, key_dir: Path) -> Path:
    """A 200-tree forest: a real bundle of ~40 KB, three transfer windows of 1 KiB chunks."""
    import skops.io
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    folder = tmp_path_factory.mktemp("forest")
    data = load_breast_cancer()
    X, y = data.data, data.target
    names = tuple(n.replace(" ", "_") for n in data.feature_names)
    estimator = RandomForestClassifier(n_estimators=200, random_state=0).fit(X[:400], y[:400])
    skops.io.dump(estimator, folder / "forest.skops")
    validation = write_csv(folder / "validation.csv", names, X[400:], y[400:])
    model = TrainedModel(
        folder / "forest.skops", validation, "target", estimator, X[400:], y[400:], names
    )
    bundle = build_bundle(model, key_dir, folder / "out", "forest", version="1.0.0")
    assert bundle.stem == FOREST
    assert bundle.stat().st_size > 2 * WINDOW_BYTES, "the transfer must span three windows"
    return bundle


def online(peer: ProtocolPeer, device: str = DEVICE) -> None:
    peer.wait(
        lambda: device in peer.statuses and peer.statuses[device].online, 30, f"{device} online"
    )


def serving(agent: Agent, bundle_id: str) -> None:
    """The agent runs, ``/v1/health`` names ``bundle_id``, and a prediction is answered by it."""
    assert agent.process.poll() is None, agent.log.read_text()[-3000:]
    code, health = agent.get("/v1/health")
    assert (code, health.get("bundle")) == (200, bundle_id), health
    rows = np.zeros((2, 30))
    code, answer = agent.predict(rows)
    assert code == 200 and answer["bundle"] == bundle_id, answer


def requests_of(peer: ProtocolPeer, command_id: str) -> list[int]:
    """The offsets a command's transfer asked for, in order; a request delivered twice (QoS 1
    is at least once) counts once."""
    with peer._lock:
        found = [r for r in peer.requests if r.command_id == command_id]
    return [r.offset for r in dict.fromkeys(found)]


def last_seq(state_dir: Path) -> int:
    with TelemetryOutbox(state_dir / "outbox.db", readonly=True) as outbox:
        return outbox.stats().last_seq


def every_window_arrived(peer: ProtocolPeer, state_dir: Path, device: str = DEVICE) -> int:
    """Wait until the peer holds every window the (stopped) agent ever numbered; check that a
    seq that arrived twice is the same window both times. Returns the number of windows."""
    last = last_seq(state_dir)

    def complete() -> bool:
        with peer._lock:
            return {w.seq for w in peer.telemetry[device]} >= set(range(1, last + 1))

    peer.wait(complete, 30, f"windows 1..{last} of {device}")
    by_seq: dict[int, list[TelemetryWindow]] = defaultdict(list)
    with peer._lock:
        for window in peer.telemetry[device]:
            by_seq[window.seq].append(window)
        assert peer.invalid == []
    assert set(by_seq) == set(range(1, last + 1)), "a window nobody numbered arrived"
    for seq, copies in by_seq.items():
        assert all(copy == copies[0] for copy in copies), f"seq {seq} names two windows"
    assert sum(w[0].dropped_windows for w in by_seq.values()) == 0
    return last


# --- broker restarts -----------------------------------------------------------------------


def test_a_broker_restart_during_a_transfer_resumes_from_the_bytes_on_disk(
    tmp_path: Path,
    broker: MosquittoBroker,
    peer: ProtocolPeer,
    key_dir: Path,
    forest_bundle: Path,
) -> None:
    agent = Agent(write_config(tmp_path / "device", broker, key_dir))
    try:
        online(peer)
        size = forest_bundle.stat().st_size
        kept = WINDOW_BYTES + 4 * CHUNK  # the outage starts inside the second window
        peer.chunk_limit = peer.chunks_sent + kept // CHUNK
        command_id = peer.install(DEVICE, forest_bundle, chunk_size=CHUNK)
        part = tmp_path / "device" / "state" / "incoming" / f"{FOREST}.part"
        peer.wait(
            lambda: part.exists() and part.stat().st_size == kept, 30, f"{kept} bytes on disk"
        )
        broker.stop()
        peer.chunk_limit = None
        broker.start()
        result = peer.result(command_id, timeout=60)
        assert result.outcome == "succeeded", result.detail
        assert result.active == FOREST
        asked = requests_of(peer, command_id)
        assert asked == [0, WINDOW_BYTES, *range(kept, size, WINDOW_BYTES)], asked
        served = sorted({offset for cid, offset in peer.served if cid == command_id})
        assert served == list(range(0, size, CHUNK))
        serving(agent, FOREST)
    finally:
        agent.stop()


@pytest.mark.slow
def test_a_broker_restart_during_a_rollout(
    tmp_path: Path, broker: MosquittoBroker, key_dir: Path, built_bundle: Path
) -> None:
    """Mosquitto, ``edgeml fleet serve`` and three agent processes; the broker restarts while
    the first stage soaks. The rollout ends ``succeeded`` with each stage started once, every
    device runs the bundle, and the registry holds every telemetry window of every device,
    each once (seq 1 to the last the device numbered, no gap)."""
    from edgeml.fleet.registry import FleetRegistry

    db = tmp_path / "fleet.db"
    trust = key_dir / "edgeml.pub"
    devices = ("pi-a", "pi-b", "pi-c")
    fleet = e2e.FleetProcess(db, broker, trust)
    try:
        agents: list[Agent] = []
        try:
            for device in devices:
                tags = ("canary",) if device == "pi-a" else ()
                config = write_config(tmp_path / device, broker, key_dir, 0.5, device, tags)
                agents.append(Agent(config))
            rollout_id = roll_out_across_a_broker_restart(db, broker, trust, built_bundle)
            assert set(e2e.actives(db).values()) == {OLD}
            for agent in agents:
                serving(agent, OLD)
        finally:
            for agent in agents:
                agent.stop()  # a clean stop flushes the last window and waits for its ack
        lasts = {d: last_seq(tmp_path / d / "state") for d in devices}
        assert all(last >= 2 for last in lasts.values()), lasts

        def registry_complete() -> bool:
            with FleetRegistry.open(db) as registry:
                return all(
                    {r.seq for r in registry.windows(device_id=d)} >= set(range(1, last + 1))
                    for d, last in lasts.items()
                )

        e2e.wait_for(registry_complete, 30, "every window in the registry", fleet.log)
        with FleetRegistry.open(db) as registry:
            for device, last in lasts.items():
                assert registry.window_gaps(device) == []
                stored = [r.seq for r in registry.windows(device_id=device)]
                assert stored == list(range(1, last + 1))
            log = registry.audit_log(rollout_id=rollout_id)
            assert registry.unsent_commands() == []
        started = [e.reason.split(":")[0] for e in log if e.action == "stage-started"]
        assert len(started) == len(set(started)) == 2, "a stage started twice"
    finally:
        fleet.stop()


def roll_out_across_a_broker_restart(
    db: Path, broker: MosquittoBroker, trust: Path, bundle: Path
) -> str:
    """Publish ``bundle``, roll it out in two stages, restart the broker while the first
    soaks; the rollout's id, once it succeeded with both stages passed."""
    fleet_log = db.with_suffix(".log")
    e2e.wait_for(
        lambda: (
            all(d["online"] for d in e2e.edgeml_json("fleet", "devices", "--db", str(db)))
            and len(e2e.edgeml_json("fleet", "devices", "--db", str(db))) == 3
        ),
        30,
        "every device online",
        fleet_log,
    )
    published = e2e.edgeml_json(
        "fleet", "publish", str(bundle), "--db", str(db), "--trust", str(trust)
    )
    rollout_id = e2e.edgeml_json(
        "fleet", "rollout", "start", published["bundle_id"], "--db", str(db),
        "--stages", "1,100%", "--soak", "2", "--min-requests", "0",
    )["rollout_id"]  # fmt: skip
    e2e.wait_for(
        lambda: any(
            d["state"] == "installed" for d in e2e.rollout_state(db, rollout_id)["devices"]
        ),
        60,
        "the canary installed",
        fleet_log,
    )
    broker.stop()  # mid-rollout: the first stage is soaking
    broker.start()
    status = e2e.wait_for(
        lambda: (s := e2e.rollout_state(db, rollout_id))["state"] != "running" and s,
        90,
        "the rollout to finish after the broker came back",
        fleet_log,
    )
    assert status["state"] == "succeeded", status["reason"]
    assert [s["outcome"] for s in status["stages"]] == ["passed", "passed"]
    assert len(status["devices"]) == 3
    return str(rollout_id)


# --- the agent killed while it flushes telemetry -------------------------------------------


class Traffic:
    """Predictions sent to one API address all the time; errors while the agent is down."""

    def __init__(self, url: str, rows: np.ndarray) -> None:
        self.url = url
        self.rows = rows
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = json.dumps({"instances": self.rows.tolist()}).encode()
        while not self._stop.is_set():
            request = urllib.request.Request(
                self.url + "/v1/predict", body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                    self.answered += 1
            except (OSError, urllib.error.URLError):
                pass  # the agent is down: the next request finds it back
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.slow
def test_sigkill_while_windows_are_closed_and_flushed_loses_no_window(
    tmp_path: Path,
    broker: MosquittoBroker,
    peer: ProtocolPeer,
    key_dir: Path,
    built_bundle: Path,
    logreg: TrainedModel,
) -> None:
    """Windows of 0.3 s under constant traffic; the agent is SIGKILLed five times at seeded
    random moments (closing a window, writing it, publishing it, deleting it once acked) and
    started again. Every window numbered reaches the fleet side, a seq that arrives twice (at
    least once) is the same window, and none was dropped."""
    config = write_config(tmp_path / "device", broker, key_dir, window_s=0.3)
    agent = Agent(config)
    rng = random.Random(71)
    kills: list[float] = []
    traffic: Traffic | None = None
    try:
        online(peer)
        assert peer.result(peer.install(DEVICE, built_bundle)).outcome == "succeeded"
        traffic = Traffic(agent.url, logreg.X_val[:4])
        for _ in range(5):
            delay = rng.uniform(0.3, 1.5)
            kills.append(round(delay, 3))
            time.sleep(delay)  # the moment of the fault; nothing is asserted on its length
            agent.process.kill()
            agent.process.wait(timeout=10)
            agent = Agent(config)
            serving(agent, OLD)
        peer.wait(lambda: traffic is not None and traffic.answered > 50, 30, "traffic")
    finally:
        if traffic is not None:
            traffic.stop()
        agent.stop()
    windows = every_window_arrived(peer, tmp_path / "device" / "state")
    assert windows >= 10, f"only {windows} windows (kills after {kills} s)"


def restart(agent: Agent, peer: ProtocolPeer) -> Agent:
    """SIGKILL the agent and start it again; returns once it is back online."""
    agent.process.kill()
    agent.process.wait(timeout=10)
    with peer._lock:
        peer.statuses.pop(DEVICE, None)
    restarted = Agent(agent.config)
    online(peer)
    return restarted


@pytest.mark.slow
def test_sigkill_while_receiving_and_while_installing(
    tmp_path: Path,
    broker: MosquittoBroker,
    peer: ProtocolPeer,
    key_dir: Path,
    built_bundle: Path,
    forest_bundle: Path,
    logreg: TrainedModel,
) -> None:
    """The agent process SIGKILLed while a bundle arrives, then while one installs (the steps
    of ``install_bundle`` one by one are tests/agent/test_crash_during_install.py). Started
    again, it serves a verified bundle at once, the old or the new one, nothing partial left;
    the transfer resumes from the bytes on disk, and the install sent again finishes."""
    newer = build_bundle(logreg, key_dir, tmp_path / "newer", "cancer", version="1.1.0")
    state = tmp_path / "device" / "state"
    agent = Agent(write_config(tmp_path / "device", broker, key_dir))
    try:
        online(peer)
        assert peer.result(peer.install(DEVICE, built_bundle)).outcome == "succeeded"

        peer.chunk_limit = peer.chunks_sent + 20
        peer.install(DEVICE, forest_bundle, chunk_size=CHUNK)
        part = state / "incoming" / f"{FOREST}.part"
        peer.wait(lambda: part.exists() and part.stat().st_size == 20 * CHUNK, 30, "20 KiB")
        agent = restart(agent, peer)
        serving(agent, OLD)
        assert part.stat().st_size == 20 * CHUNK
        peer.chunk_limit = None
        again = peer.install(DEVICE, forest_bundle, chunk_size=CHUNK)
        result = peer.result(again)
        assert result.outcome == "succeeded", result.detail
        assert requests_of(peer, again)[0] == 20 * CHUNK
        serving(agent, FOREST)

        peer.install(DEVICE, newer)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a tight poll: the install takes a few 100 ms
            status = peer.statuses.get(DEVICE)
            if status is not None and (status.state == "installing" or status.active != FOREST):
                break
            time.sleep(0.005)
        agent = restart(agent, peer)
        code, health = agent.get("/v1/health")
        assert code == 200 and health["bundle"] in (FOREST, newer.stem), health
        print(f"killed while installing {newer.stem}; serving {health['bundle']} after")
        assert leftovers(state) == []
        serving(agent, health["bundle"])
        final = peer.result(peer.install(DEVICE, newer))
        assert final.outcome == "succeeded" and final.active == newer.stem, final
        serving(agent, newer.stem)
    finally:
        agent.stop()
    every_window_arrived(peer, state)


# --- a full disk ---------------------------------------------------------------------------


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 and os.geteuid() != 0:
        pytest.skip(f"cannot mount a tmpfs at {folder} (needs root): {done.stderr.strip()}")
    assert done.returncode == 0, f"root cannot mount a tmpfs at {folder}: {done.stderr.strip()}"


def resize_tmpfs(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """The device's state folder on its own tmpfs of 512 KiB (resized by the test)."""
    state = tmp_path / "device" / "state"
    mount_tmpfs(state, "512k")
    yield state
    if subprocess.run(["umount", str(state)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(folder: Path) -> Path:
    """A file that takes every free byte of ``folder``'s filesystem."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        for block in (1024 * 1024, 4096, 512, 1):
            data = bytes(block)
            try:
                while True:
                    handle.write(data)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    return filler


def test_a_full_disk_while_receiving_keeps_the_active_bundle_and_resumes_later(
    tmp_path: Path,
    small_disk: Path,
    broker: MosquittoBroker,
    peer: ProtocolPeer,
    key_dir: Path,
    built_bundle: Path,
    forest_bundle: Path,
) -> None:
    state = small_disk
    config = write_config(tmp_path / "device", broker, key_dir, window_s=0.3)
    install_bundle(built_bundle, state, load_trust_store(key_dir / "edgeml.pub"), "raspberry-pi-4")
    agent = Agent(config)
    incoming = state / "incoming"
    try:
        online(peer)
        serving(agent, OLD)

        # 1. No room for the bundle and the reserve: refused before a byte is written.
        first = peer.result(peer.install(DEVICE, forest_bundle, chunk_size=CHUNK))
        assert first.outcome in ("refused", "failed"), first
        assert "bytes free" in first.detail and "reserve" in first.detail, first.detail
        assert first.active == OLD
        assert not incoming.exists() or list(incoming.iterdir()) == []
        serving(agent, OLD)

        # 2. Room enough to start; the disk fills up in the middle of the transfer.
        resize_tmpfs(state, "20m")
        peer.chunk_limit = peer.chunks_sent + 8
        second = peer.install(DEVICE, forest_bundle, chunk_size=CHUNK)
        part = incoming / f"{FOREST}.part"
        peer.wait(lambda: part.exists() and part.stat().st_size == 8 * CHUNK, 30, "8 KiB")
        filler = fill(state)
        peer.chunk_limit = None
        peer._serve(DEVICE, TransferRequest(second, FOREST, 8 * CHUNK))
        failed = peer.result(second)
        assert failed.outcome == "failed", failed
        assert "no space left" in failed.detail, failed.detail
        assert failed.active == OLD
        kept = part.stat().st_size
        assert kept >= 8 * CHUNK and kept % CHUNK == 0, kept
        assert sorted(p.name for p in incoming.iterdir()) == [
            f"{FOREST}.part",
            f"{FOREST}.transfer.json",
        ]
        assert leftovers(state) == []
        time.sleep(1.5)  # five windows close while the disk is full; the agent must live on
        serving(agent, OLD)

        # 3. Room again: the next install resumes from the bytes kept.
        filler.unlink()
        third = peer.install(DEVICE, forest_bundle, chunk_size=CHUNK)
        result = peer.result(third)
        assert result.outcome == "succeeded", result.detail
        assert (result.active, result.previous) == (FOREST, OLD)
        assert requests_of(peer, third)[0] == kept
        with peer._lock:
            accepted = [r for r in peer.results if r.command_id == third]
        assert accepted[0].outcome == "accepted"
        assert f"resuming at byte {kept}" in accepted[0].detail
        serving(agent, FOREST)
        assert list(incoming.iterdir()) == [] and leftovers(state) == []
    finally:
        agent.stop()
    every_window_arrived(peer, state)


def _window(requests: int) -> TelemetryWindow:
    return TelemetryWindow("pi-1", 1, 1000.0, 1001.0, OLD, requests, requests, 0, 0, {}, {}, {})


def test_windows_wait_in_memory_while_the_outbox_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon does with a window the disk cannot take: it is held (a bounded
    number), stored with the next window that can be written, numbered then; the windows
    dropped from memory are counted and reported by the first one stored."""
    outbox = TelemetryOutbox(tmp_path / "outbox.db", max_held=3)
    real = TelemetryOutbox.add_many
    disk = {"full": True}

    def add_many(self: TelemetryOutbox, windows: Any, **options: Any) -> list[int]:
        if disk["full"]:
            raise OutboxError(f"{self.path}: storing telemetry failed: database or disk is full")
        return real(self, windows, **options)

    monkeypatch.setattr(TelemetryOutbox, "add_many", add_many)
    with outbox:
        assert [outbox.add_or_hold(_window(n)) for n in range(1, 6)] == [None] * 5
        assert outbox.held == 3 and outbox.last_seq == 0
        with pytest.raises(ProtocolError):
            outbox.add_or_hold({"rows": -1})  # never held: it would block the others
        disk["full"] = False
        assert outbox.add_or_hold(_window(6)) == 4
        entries = outbox.pending()
        assert [e.seq for e in entries] == [1, 2, 3, 4]
        assert [e.window().requests for e in entries] == [3, 4, 5, 6]  # 1 and 2 dropped
        assert [e.window().dropped_windows for e in entries] == [2, 0, 0, 0]
        assert (outbox.held, outbox.dropped_total, outbox.stats().dropped_unreported) == (0, 2, 0)


# --- clock jumps ---------------------------------------------------------------------------


class SteppedClock:
    """The device's wall clock: real time plus an offset the test steps (NTP, a dead RTC)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def call_api(url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_clock_jumps_on_the_device(
    tmp_path: Path,
    broker: MosquittoBroker,
    peer: ProtocolPeer,
    key_dir: Path,
    built_bundle: Path,
    forest_bundle: Path,
    logreg: TrainedModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon in this process with a wall clock that steps back an hour, then (during a
    stalled transfer) another hour, then forward a day. Windows keep closing on time, every
    one validates (it ends after it starts and spans its real length), seqs run 1..N without a
    gap, every row scored is counted once, and the install started across the jump finishes."""
    import edgeml.agent.daemon as daemon_module
    from edgeml.agent.config import load_config
    from edgeml.agent.daemon import AgentDaemon

    monkeypatch.setattr(daemon_module, "STALL_S", 0.5)
    config = load_config(write_config(tmp_path / "device", broker, key_dir, window_s=0.3))
    install_bundle(built_bundle, config.state_dir, load_trust_store(config.trust), config.profile)
    clock = SteppedClock()
    daemon = AgentDaemon(config, clock=clock)
    running = Background(daemon.run, "agent-daemon")
    url = f"http://{config.api.listen}"
    rows_sent = 0

    def traffic(requests: int) -> None:
        nonlocal rows_sent
        for _ in range(requests):
            code, answer = call_api(url, "/v1/predict", {"instances": logreg.X_val[:5].tolist()})
            assert code == 200, answer
            rows_sent += 5

    def windows_after(count: int) -> Callable[[], bool]:
        with peer._lock:
            target = max((w.seq for w in peer.telemetry[DEVICE]), default=0) + count

        def enough() -> bool:
            with peer._lock:
                return max((w.seq for w in peer.telemetry[DEVICE]), default=0) >= target

        return enough

    try:
        online(peer)
        traffic(3)
        peer.wait(windows_after(2), 20, "windows on time")

        clock.offset = -3600.0  # stepped back an hour
        traffic(3)
        peer.wait(windows_after(3), 20, "windows after the clock stepped back")

        peer.chunk_limit = (
            peer.chunks_sent + 3
        )  # a transfer that stalls; the clock steps back again meanwhile
        command_id = peer.install(DEVICE, forest_bundle, chunk_size=CHUNK)
        part = config.state_dir / "incoming" / f"{FOREST}.part"
        peer.wait(lambda: part.exists() and part.stat().st_size == 3 * CHUNK, 20, "3 chunks")
        clock.offset -= 3600.0
        peer.chunk_limit = None  # the agent must ask again once it sees no progress
        result = peer.result(command_id, timeout=30)
        assert result.outcome == "succeeded", result.detail
        assert call_api(url, "/v1/health")[1]["bundle"] == FOREST

        clock.offset += 86400.0 + 7200.0  # forward a day
        traffic(3)
        peer.wait(windows_after(3), 20, "windows after the clock stepped forward")
    finally:
        daemon.stop()
        running.thread.join(timeout=30)
    assert not running.thread.is_alive() and running.errors == [], running.errors
    count = every_window_arrived(peer, config.state_dir)
    with peer._lock:
        windows = {w.seq: w for w in peer.telemetry[DEVICE]}
    assert len(windows) == count
    assert sum(w.rows for w in windows.values()) == rows_sent, "a scored row went uncounted"
    for window in windows.values():
        assert 0 <= window.window_end - window.window_start < 30, window
    ends = [windows[s].window_end for s in sorted(windows)]
    assert min(ends) < time.time() - 3000 and max(ends) > time.time() + 80000, "no jump seen"
