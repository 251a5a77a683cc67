"""The "fleet" benchmark: one fleet service, one Mosquitto, a thousand simulated devices.

Issue 6's scale figures. Everything runs on this machine, each part in its own process so that
its CPU and memory are its own:

* a Mosquitto on a free loopback port (no persistence, unbounded in-flight window, a queue
  of a million messages per client, so nothing is dropped while a subscriber lags);
* the fleet service as a real ``edgeml fleet serve --tick 1`` child process;
* a bare paho subscriber (one ``mqtt.Client`` with ``loop_start()``, subscribed to every
  device's telemetry at QoS 1, ``json.loads`` on each message, nothing else) as another child
  process: the floor the fleet's ingest is measured against, on the same broker at the same
  time;
* the simulated devices (:class:`edgeml.fleet.simulator.DeviceSimulator`, one epoll thread in
  this process), all of profile ``raspberry-pi-4``, about 1 % tagged ``canary``, starting on
  a bundle the fleet never published.

Three measurements, in one run:

1. **Rollout**: the reference MLP (256, 128) built for raspberry-pi-4 is published and
   rolled out in stages ``1,10%,50%,100%`` with zero soak and ``--min-requests 0``, while every
   device sends a telemetry window every 5 s: seconds from ``edgeml fleet rollout start`` to
   the state ``succeeded`` (and per stage, from the rollout's stage log), commands sent and
   chunks served.
2. **Telemetry ingest**: for each interval in :attr:`FleetScale.ingest_intervals_s` the
   devices send windows that often (the simulator is restarted with the same devices, so the
   windows' ``seq`` goes on and none is a duplicate); after a warm-up, windows stored per
   second by the fleet (the registry's telemetry row count) against messages per second the
   bare subscriber received and windows per second the devices handed to their clients, over
   the same span; then the devices stop and the time until the fleet and the bare subscriber
   hold every window sent is the catch-up.
3. **Backlog drain**: the simulator's one thread shares the cores with the fleet, so the steady
   rates stop where the simulator does. To find the fleet's own ceiling, the fleet and the
   bare subscriber are stopped (both keep a persistent session), the devices send at the
   shortest interval for :attr:`FleetScale.drain_fill_s` seconds into the broker's queues,
   stop, and then the fleet alone, and after it the bare subscriber alone, drain the queue:
   windows per second from the first window counted to the last.

4. **Load with misbehaving devices** (issue 7): the same devices send a window every
   :attr:`FleetScale.load_interval_s` while a second bundle (the same model, version 1.1.0) is
   rolled out in stages with a short soak and the health gates on, and a few devices
   misbehave (:class:`edgeml.fleet.simulator.Misbehaviour`): some send garbage (malformed,
   oversized, wrong schema, huge numbers, another device's id, duplicates, bogus transfer
   requests, forged results), some drop their connection abruptly every second or two and
   reconnect at once, a few send windows far faster than their interval. Measured: the
   rollout's time to ``succeeded`` (against the clean one of step 1), windows offered
   against stored per second and the backlog, what the fleet logged as dropped, and the
   fleet's RSS sampled every second over the whole phase (bounded means no upward trend in
   the second half). The bare subscriber is stopped first: a subscriber that only
   ``json.loads`` every message would die on the first garbage.

CPU is utime + stime from ``/proc/PID/stat`` over each span (the simulator's: its driver
thread's CPU time); memory is ``VmRSS`` sampled every half second (every second in step 4)
and the lifetime peak ``VmHWM`` from ``/proc/PID/status``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from machine import children_cpu_s
from reference_models import REFERENCE_SPECS, train_reference_model

from edgeml.converters.pipeline import BuildRequest, build_bundles
from edgeml.fleet.registry import FleetRegistry
from edgeml.fleet.rollout import OPEN_STATES
from edgeml.fleet.simulator import (
    DROPPED_GARBAGE,
    DeviceSimulator,
    Misbehaviour,
    SimulatedDevice,
    make_devices,
    raise_open_file_limit,
)
from edgeml.toolkit.keys import generate_key_pair, load_private_key
from edgeml.toolkit.profiles import load_profile
from edgeml.toolkit.protocol import DEFAULT_CHUNK_BYTES, subscription

EDGEML = str(Path(sys.executable).with_name("edgeml"))
PROFILE = "raspberry-pi-4"
STAGES = "1,10%,50%,100%"
BASE_BUNDLE = f"base-0.9.0-{PROFILE}"
"""What the simulated devices run before the rollout: a bundle the fleet never published."""
SAMPLE_EVERY_S = 0.5
LOAD_SAMPLE_EVERY_S = 1.0
LOAD_VERSION = "1.1.0"
"""The second bundle, rolled out under load: the same model, a new version."""
_TELEMETRY = subscription("telemetry")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")

BARE_SUBSCRIBER = r"""
import json, sys, threading, time
import paho.mqtt.client as mqtt

host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()
count, first, last, cpu_first, cpu_last = 0, 0.0, 0.0, 0.0, 0.0

def on_connect(client, _userdata, _flags, reason, _props):
    client.subscribe(topic, qos=1)

def on_subscribe(_client, _userdata, _mid, _codes, _props):
    print("subscribed", flush=True)

def on_message(_client, _userdata, message):
    global count, first, last, cpu_first, cpu_last
    json.loads(message.payload)
    now, cpu = time.monotonic(), time.process_time()
    with lock:
        count += 1
        if not first:
            first, cpu_first = now, cpu
        last, cpu_last = now, cpu

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=False)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect(host, port, keepalive=60)
client.loop_start()
for _ in sys.stdin:  # each line asks for the count, the first and last message's time and CPU
    with lock:
        print(count, first, last, cpu_first, cpu_last, flush=True)
client.disconnect()
client.loop_stop()
"""
"""The bare subscriber, run as ``python -c`` so that its process holds nothing else."""


@dataclass(frozen=True)
class FleetScale:
    """How big and how long: devices, telemetry intervals, spans and time-outs."""

    devices: int = 1000
    canary_share: float = 0.01
    rollout_interval_s: float = 5.0
    rollout_timeout_s: float = 300.0
    ingest_intervals_s: tuple[float, ...] = (0.5, 0.2)
    ingest_warmup_s: float = 5.0
    ingest_span_s: float = 25.0
    catch_up_timeout_s: float = 120.0
    drain_fill_s: float = 20.0
    connect_rate: float = 1000.0
    tick_s: float = 1.0
    load_interval_s: float = 1.0
    load_before_s: float = 10.0
    load_after_s: float = 20.0
    load_soak_s: float = 2.0
    load_rollout_timeout_s: float = 45.0
    load_catch_up_timeout_s: float = 30.0
    garbage_devices: int = 20
    garbage_per_s: float = 20.0
    storm_devices: int = 20
    reconnect_every_s: float = 1.5
    flood_devices: int = 5
    flood_windows_per_s: float = 20.0

    @classmethod
    def quick(cls) -> FleetScale:
        """A smoke run: 200 devices, one ingest rate, short spans."""
        return cls(
            devices=200,
            ingest_intervals_s=(0.5,),
            ingest_warmup_s=2.0,
            ingest_span_s=8.0,
            catch_up_timeout_s=30.0,
            drain_fill_s=10.0,
            rollout_timeout_s=120.0,
            load_before_s=4.0,
            load_after_s=8.0,
            garbage_devices=4,
            storm_devices=4,
            flood_devices=1,
        )

    @property
    def canaries(self) -> int:
        """How many devices carry the ``canary`` tag (at least one)."""
        return max(1, round(self.devices * self.canary_share))


@dataclass(frozen=True)
class ProcessFigures:
    """One process over one span: CPU seconds, wall seconds, resident memory."""

    cpu_s: float
    wall_s: float
    rss_mib: float
    rss_max_mib: float
    peak_mib: float

    @property
    def cores(self) -> float:
        """CPU seconds per wall second: how many cores it kept busy on average."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class StageTiming:
    """One rollout stage as its log tells it."""

    index: int
    size: str
    devices: int | None
    seconds: float | None
    outcome: str


@dataclass(frozen=True)
class RolloutFigures:
    """The staged rollout to every device."""

    state: str
    command_s: float
    seconds: float
    document_s: float | None
    stages: tuple[StageTiming, ...]
    installed: int
    installs_succeeded: int
    installs_failed: int
    commands_sent: int
    chunks: int
    chunks_expected: int
    windows_offered: int
    windows_stored: int
    fleet: ProcessFigures
    bare: ProcessFigures
    broker: ProcessFigures
    simulator_cpu_s: float


@dataclass(frozen=True)
class IngestFigures:
    """Telemetry ingest at one interval, over the steady span and the catch-up after it."""

    interval_s: float
    span_s: float
    offered_per_s: float
    stored_per_s: float
    bare_per_s: float
    offered: int
    stored_backlog: int
    bare_backlog: int
    catch_up_s: float | None
    bare_catch_up_s: float | None
    windows_dropped: int
    fleet: ProcessFigures
    bare: ProcessFigures
    broker: ProcessFigures
    simulator_cpu_s: float

    @property
    def ratio(self) -> float:
        """The fleet's stored windows per second over the bare subscriber's messages per
        second."""
        return self.stored_per_s / self.bare_per_s if self.bare_per_s else float("nan")

    @property
    def kept_up(self) -> bool:
        """Whether the fleet stored at least 98 % of what was offered within the span, and
        caught up within a few seconds."""
        return (
            self.stored_per_s >= 0.98 * self.offered_per_s
            and self.catch_up_s is not None
            and self.catch_up_s <= 5.0
        )


@dataclass(frozen=True)
class DrainFigures:
    """A backlog queued by the broker while the fleet and the bare subscriber were away,
    drained by each alone: from the first window it counted to the last."""

    interval_s: float
    fill_s: float
    queued: int
    fleet_s: float | None
    fleet_per_s: float | None
    bare_s: float | None
    bare_per_s: float | None
    fleet: ProcessFigures | None
    bare: ProcessFigures | None

    @property
    def ratio(self) -> float | None:
        """The fleet's drain rate over the bare subscriber's."""
        if not self.fleet_per_s or not self.bare_per_s:
            return None
        return self.fleet_per_s / self.bare_per_s


@dataclass(frozen=True)
class Sample:
    """One second of the load phase: the fleet's and the broker's memory and CPU, and the
    windows offered and stored so far in the phase."""

    t_s: float
    fleet_rss_mib: float
    broker_rss_mib: float
    fleet_cpu_s: float
    offered: int
    stored: int


@dataclass(frozen=True)
class LoadFigures:
    """Telemetry from every device while a rollout runs and some devices misbehave."""

    interval_s: float
    soak_s: float
    garbage_devices: int
    garbage_per_s: float
    storm_devices: int
    reconnect_every_s: float
    flood_devices: int
    flood_windows_per_s: float
    bundle_id: str
    state: str
    seconds: float
    document_s: float | None
    stages: tuple[StageTiming, ...]
    rollout_from_s: float
    rollout_to_s: float
    aborted: bool
    baseline_windows: int
    device_states: dict[str, int]
    misbehaving_installed: dict[str, tuple[int, int]]
    span_s: float
    offered: int
    stored: int
    offered_per_s: float
    stored_per_s: float
    backlog_end: int
    backlog_max: int
    catch_up_s: float | None
    missing: int
    windows_dropped: int
    garbage_sent: int
    garbage_by_kind: dict[str, int]
    garbage_to_drop: int
    logged_dropped: int
    logged_foreign: int
    logged_bogus_transfers: int
    logged_errors: int
    connection_drops: int
    reconnects: int
    fleet_alive: bool
    fleet: ProcessFigures
    broker: ProcessFigures
    simulator_cpu_s: float
    samples: tuple[Sample, ...]

    @property
    def rss_start_mib(self) -> float:
        return self.samples[0].fleet_rss_mib if self.samples else float("nan")

    @property
    def rss_end_mib(self) -> float:
        return self.samples[-1].fleet_rss_mib if self.samples else float("nan")

    @property
    def rss_max_mib(self) -> float:
        return max((s.fleet_rss_mib for s in self.samples), default=float("nan"))

    @property
    def rss_rollout_max_mib(self) -> float:
        """The fleet's highest RSS sampled while the rollout ran."""
        during = [s.fleet_rss_mib for s in self.samples if self._during_rollout(s)]
        return max(during, default=float("nan"))

    def _during_rollout(self, sample: Sample) -> bool:
        return self.rollout_from_s <= sample.t_s <= self.rollout_to_s + LOAD_SAMPLE_EVERY_S

    def steady(self) -> tuple[Sample, ...]:
        """The samples after the rollout ended (the misbehaving devices still at it)."""
        return tuple(s for s in self.samples if s.t_s > self.rollout_to_s + LOAD_SAMPLE_EVERY_S)

    @property
    def rss_slope_mib_per_min(self) -> float | None:
        """The least-squares slope of the fleet's RSS after the rollout, MiB per minute."""
        return _slope([(s.t_s, s.fleet_rss_mib) for s in self.steady()])

    @property
    def rss_bounded(self) -> bool | None:
        """No upward trend after the rollout: growing less than 2 MiB per minute, or less
        than 2 MiB from the first sample to the last (None: too few samples to say)."""
        steady = self.steady()
        slope = self.rss_slope_mib_per_min
        if slope is None or len(steady) < 5:
            return None
        return slope < 2.0 or steady[-1].fleet_rss_mib - steady[0].fleet_rss_mib < 2.0

    @property
    def kept_up(self) -> bool:
        """Every window offered stored, and the backlog never more than two seconds' worth."""
        return self.missing == 0 and self.backlog_max <= 2 * self.offered_per_s

    @property
    def backlog_max_at_s(self) -> float | None:
        """When the backlog was highest (seconds into the phase)."""
        if not self.samples:
            return None
        return max(self.samples, key=lambda s: s.offered - s.stored).t_s


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


@dataclass(frozen=True)
class FleetBenchmark:
    """What the fleet benchmark measured."""

    scale: FleetScale
    bundle_id: str
    bundle_bytes: int
    connect_s: float
    register_s: float
    fleet_rss_registered_mib: float
    bare_rss_mib: float
    rollout: RolloutFigures
    ingest: tuple[IngestFigures, ...]
    telemetry_devices: int
    drain: DrainFigures
    load: LoadFigures
    fleet_peak_mib: float
    broker_peak_mib: float
    children_cpu_s: float
    total_s: float


# ------------------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    rss = peak = float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return rss, peak


class _Span:
    """CPU and memory of some processes from now until :meth:`end`, RSS sampled meanwhile."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.started = time.monotonic()
        self.cpu = {name: _cpu_s(pid) for name, pid in pids.items()}
        self.rss_max = {name: _memory_mib(pid)[0] for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):
                    self.rss_max[name] = max(self.rss_max[name], _memory_mib(pid)[0])

    def end(self) -> dict[str, ProcessFigures]:
        self._stop.set()
        self._thread.join()
        wall = time.monotonic() - self.started
        figures = {}
        for name, pid in self.pids.items():
            rss, peak = _memory_mib(pid)
            figures[name] = ProcessFigures(
                cpu_s=round(_cpu_s(pid) - self.cpu[name], 2),
                wall_s=round(wall, 2),
                rss_mib=round(rss, 1),
                rss_max_mib=round(max(self.rss_max[name], rss), 1),
                peak_mib=round(peak, 1),
            )
        return figures


def _start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"log_dest file {folder / 'mosquitto.log'}\nlog_type error\nlog_type warning\n"
        "max_inflight_messages 0\nmax_queued_messages 1000000\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for(lambda: _port_open(port), 10, "mosquitto did not listen")
    return broker, port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_for(
    condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise RuntimeError(f"{what} within {timeout:g} s")


class _BareSubscriber:
    """The bare paho subscriber in its own process; asked for its count over a pipe."""

    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", BARE_SUBSCRIBER, "127.0.0.1", str(port), _TELEMETRY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "subscribed":
            raise RuntimeError(f"the bare subscriber did not subscribe: {line!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self) -> tuple[int, float, float, float]:
        """Messages received, the monotonic times of the first and the last, and the process
        CPU seconds between them."""
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None and self.process.stdout is not None
        stdin.write("\n")
        stdin.flush()
        count, first, last, cpu_first, cpu_last = self.process.stdout.readline().split()
        return int(count), float(first), float(last), float(cpu_last) - float(cpu_first)

    def count(self) -> int:
        """Messages received."""
        return self.read()[0]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _end_session(port: int, client_id: str) -> None:
    """Discard a persistent session at the broker: connect with its client id and a clean
    session, then disconnect."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        _wait_for(client.is_connected, 10, f"{client_id} did not reconnect")
    finally:
        client.disconnect()
        client.loop_stop()


def _edgeml(*args: str) -> Any:
    """Run an ``edgeml`` command with ``--json``; its document."""
    done = subprocess.run([EDGEML, *args, "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"edgeml {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return json.loads(done.stdout)


def _wait_until_ended(registry: _Registry, rollout_id: str, deadline: float) -> str | None:
    """The rollout's state once it has ended, or at ``deadline`` (monotonic) if it has not."""
    state = registry.rollout_state(rollout_id)
    while state in OPEN_STATES and time.monotonic() < deadline:
        time.sleep(0.1)
        state = registry.rollout_state(rollout_id)
    return state


def _stop(process: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ------------------------------------------------------------------------------ the registry


class _Registry:
    """Cheap reads of the fleet's registry while the service writes it: a read-only SQLite
    connection for the counts polled often, :class:`FleetRegistry` for the documents."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)

    def windows(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])

    def windows_of(self, bundle_id: str, since: float) -> int:
        """Windows served by ``bundle_id`` that the fleet received since ``since``."""
        row = self.conn.execute(
            "SELECT count(*) FROM telemetry WHERE bundle_id = ? AND received_at >= ?",
            (bundle_id, since),
        ).fetchone()
        return int(row[0])

    def online_devices(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM devices WHERE online = 1").fetchone()
        return int(row[0])

    def rollout_state(self, rollout_id: str) -> str | None:
        row = self.conn.execute(
            "SELECT state FROM rollouts WHERE rollout_id = ?", (rollout_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def commands_sent(self, rollout_id: str) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM commands WHERE rollout_id = ? AND sent_at IS NOT NULL",
            (rollout_id,),
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        self.conn.close()


# ------------------------------------------------------------------------------ the phases


def _start_simulator(
    port: int, devices: list[SimulatedDevice], interval_s: float, scale: FleetScale
) -> tuple[DeviceSimulator, float]:
    simulator = DeviceSimulator(
        "127.0.0.1",
        port,
        devices,
        telemetry_interval_s=interval_s,
        connect_rate=scale.connect_rate,
    )
    started = time.monotonic()
    simulator.start()
    if not simulator.wait_connected(timeout=60):
        simulator.stop()
        raise RuntimeError(f"only {simulator.connected} of {len(devices)} devices connected")
    return simulator, time.monotonic() - started


def _stage_timings(document: dict[str, Any]) -> tuple[StageTiming, ...]:
    stages = []
    for stage in document.get("stages", ()):
        started, finished = stage.get("started_at"), stage.get("finished_at")
        seconds = finished - started if started is not None and finished is not None else None
        stages.append(
            StageTiming(
                index=int(stage["index"]),
                size=str(stage["size"]),
                devices=stage.get("devices"),
                seconds=None if seconds is None else round(seconds, 2),
                outcome=str(stage.get("outcome")),
            )
        )
    return tuple(stages)


def _measure_rollout(
    db: Path,
    registry: _Registry,
    simulator: DeviceSimulator,
    bundle_id: str,
    bundle_bytes: int,
    pids: dict[str, int],
    scale: FleetScale,
    log: Callable[[str], None],
) -> RolloutFigures:
    log(f"rollout of {bundle_id} to {scale.devices} devices in stages {STAGES}, zero soak")
    before = simulator.counters()
    stored_before = registry.windows()
    span = _Span(pids)
    started = time.monotonic()
    rollout_id = _edgeml(
        "fleet", "rollout", "start", bundle_id, "--db", str(db), "--stages", STAGES,
        "--soak", "0", "--min-requests", "0",
    )["rollout_id"]  # fmt: skip
    command_s = time.monotonic() - started
    state = _wait_until_ended(registry, rollout_id, started + scale.rollout_timeout_s)
    seconds = time.monotonic() - started
    figures = span.end()
    after = simulator.counters()
    with FleetRegistry.open(db) as fleet:
        from edgeml.fleet.operations import rollout_status

        document = rollout_status(fleet, rollout_id)
    finished = [s["finished_at"] for s in document["stages"] if s.get("finished_at")]
    commands = registry.commands_sent(rollout_id)
    received = int(after["messages_received"] - before["messages_received"])
    per_device = math.ceil(bundle_bytes / DEFAULT_CHUNK_BYTES)
    log(f"rollout {rollout_id}: {state} after {seconds:.1f} s")
    return RolloutFigures(
        state=str(state),
        command_s=round(command_s, 2),
        seconds=round(seconds, 2),
        document_s=round(max(finished) - document["created_at"], 2) if finished else None,
        stages=_stage_timings(document),
        installed=sum(d.get("state") == "installed" for d in document["devices"]),
        installs_succeeded=int(after["installs_succeeded"] - before["installs_succeeded"]),
        installs_failed=int(after["installs_failed"] - before["installs_failed"]),
        commands_sent=commands,
        chunks=received - commands,
        chunks_expected=per_device * scale.devices,
        windows_offered=int(after["windows_sent"] - before["windows_sent"]),
        windows_stored=registry.windows() - stored_before,
        fleet=figures["fleet"],
        bare=figures["bare"],
        broker=figures["broker"],
        simulator_cpu_s=round(after["driver_cpu_s"] - before["driver_cpu_s"], 2),
    )


def _measure_ingest(
    port: int,
    devices: list[SimulatedDevice],
    interval_s: float,
    registry: _Registry,
    bare: _BareSubscriber,
    pids: dict[str, int],
    scale: FleetScale,
    log: Callable[[str], None],
) -> IngestFigures:
    offered_rate = len(devices) / interval_s
    log(f"telemetry every {interval_s:g} s from {len(devices)} devices (~{offered_rate:,.0f}/s)")
    stored_0, bare_0 = registry.windows(), bare.count()
    simulator, _ = _start_simulator(port, devices, interval_s, scale)
    try:
        time.sleep(scale.ingest_warmup_s)
        sent_1, stored_1, bare_1 = simulator.windows_sent, registry.windows(), bare.count()
        cpu_1 = simulator.driver_cpu_s
        span = _Span(pids)
        started = time.monotonic()
        time.sleep(scale.ingest_span_s)
        sent_2, stored_2, bare_2 = simulator.windows_sent, registry.windows(), bare.count()
        wall = time.monotonic() - started
        cpu_2 = simulator.driver_cpu_s
        figures = span.end()
    finally:
        stopped = time.monotonic()
        simulator.stop()
    offered = int(simulator.windows_sent)
    stored_backlog = sent_2 - (stored_2 - stored_0)
    bare_backlog = sent_2 - (bare_2 - bare_0)
    catch_up = bare_catch_up = None
    deadline = stopped + scale.catch_up_timeout_s
    while time.monotonic() < deadline and (catch_up is None or bare_catch_up is None):
        now = time.monotonic()
        if catch_up is None and registry.windows() - stored_0 >= offered:
            catch_up = round(now - stopped, 2)
        if bare_catch_up is None and bare.count() - bare_0 >= offered:
            bare_catch_up = round(now - stopped, 2)
        time.sleep(0.1)
    figures_ingest = IngestFigures(
        interval_s=interval_s,
        span_s=round(wall, 2),
        offered_per_s=round((sent_2 - sent_1) / wall, 1),
        stored_per_s=round((stored_2 - stored_1) / wall, 1),
        bare_per_s=round((bare_2 - bare_1) / wall, 1),
        offered=offered,
        stored_backlog=stored_backlog,
        bare_backlog=bare_backlog,
        catch_up_s=catch_up,
        bare_catch_up_s=bare_catch_up,
        windows_dropped=int(simulator.windows_dropped),
        fleet=figures["fleet"],
        bare=figures["bare"],
        broker=figures["broker"],
        simulator_cpu_s=round(cpu_2 - cpu_1, 2),
    )
    log(
        f"  offered {figures_ingest.offered_per_s:,.0f}/s, fleet stored "
        f"{figures_ingest.stored_per_s:,.0f}/s, bare {figures_ingest.bare_per_s:,.0f}/s; "
        f"catch-up {catch_up} s"
    )
    return figures_ingest


# ------------------------------------------------------------------------------ load


ROLES = ("garbage", "storm", "flood")


def misbehaving_devices(
    devices: list[SimulatedDevice], scale: FleetScale
) -> dict[str, tuple[str, Misbehaviour]]:
    """Which devices misbehave, and how: spread evenly over the devices that are not canaries,
    the roles interleaved (device id to role and :class:`Misbehaviour`)."""
    how = {
        "garbage": Misbehaviour(garbage_per_s=scale.garbage_per_s),
        "storm": Misbehaviour(reconnect_every_s=scale.reconnect_every_s),
        "flood": Misbehaviour(flood_windows_per_s=scale.flood_windows_per_s),
    }
    counts = {
        "garbage": scale.garbage_devices,
        "storm": scale.storm_devices,
        "flood": scale.flood_devices,
    }
    order = sorted(
        ((k / n, ROLES.index(role), role) for role, n in counts.items() for k in range(n)),
    )
    pool = devices[scale.canaries :]
    if len(order) > len(pool):
        raise ValueError(f"{len(order)} misbehaving devices, but only {len(pool)} non-canaries")
    step = len(pool) / len(order) if order else 1.0
    chosen = {}
    for slot, (_, _, role) in enumerate(order):
        device = pool[int(slot * step + step / 2)]
        chosen[device.device_id] = (role, how[role])
    return chosen


class _Timeline:
    """Every second, from its own thread: the fleet's and the broker's RSS, the fleet's CPU,
    and the windows offered (by ``offered()``) and stored (in the registry) since ``stored_0``."""

    def __init__(
        self, db: Path, fleet_pid: int, broker_pid: int, offered: Callable[[], int], stored_0: int
    ) -> None:
        self._args = (db, fleet_pid, broker_pid, offered, stored_0)
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db, fleet_pid, broker_pid, offered, stored_0 = self._args
        registry = _Registry(db)  # SQLite connections stay in the thread that opened them
        try:
            while True:
                with contextlib.suppress(OSError, sqlite3.Error):
                    self.samples.append(
                        Sample(
                            t_s=round(time.monotonic() - self.started, 2),
                            fleet_rss_mib=round(_memory_mib(fleet_pid)[0], 1),
                            broker_rss_mib=round(_memory_mib(broker_pid)[0], 1),
                            fleet_cpu_s=round(_cpu_s(fleet_pid), 2),
                            offered=offered(),
                            stored=registry.windows() - stored_0,
                        )
                    )
                if self._stop.wait(LOAD_SAMPLE_EVERY_S):
                    return
        finally:
            registry.close()

    def stop(self) -> tuple[Sample, ...]:
        self._stop.set()
        self._thread.join()
        return tuple(self.samples)


def _count_lines(path: Path, offset: int) -> dict[str, int]:
    """What the fleet logged from byte ``offset`` on: messages it dropped (malformed, or
    naming another device), transfer requests under commands it never sent, errors."""
    with path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode("utf-8", "replace")
    counts = {"dropped": 0, "foreign": 0, "bogus": 0, "errors": 0}
    for line in text.splitlines():
        if "dropped a message" in line:
            counts["dropped"] += 1
        elif "dropped a " in line and "naming device" in line:
            counts["foreign"] += 1
        elif "the fleet did not send it" in line:
            counts["bogus"] += 1
        if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback"):
            counts["errors"] += 1
    return counts


def _measure_load(
    port: int,
    devices: list[SimulatedDevice],
    fleet: _Fleet,
    broker_pid: int,
    db: Path,
    registry: _Registry,
    bundle_id: str,
    previous_bundle_id: str,
    scale: FleetScale,
    log: Callable[[str], None],
) -> LoadFigures:
    roles = misbehaving_devices(devices, scale)
    log(
        f"load: {len(devices)} devices send a window every {scale.load_interval_s:g} s while "
        f"{bundle_id} rolls out (soak {scale.load_soak_s:g} s); {scale.garbage_devices} send "
        f"garbage ({scale.garbage_per_s:g}/s each), {scale.storm_devices} reconnect every "
        f"~{scale.reconnect_every_s:g} s, {scale.flood_devices} send "
        f"{scale.flood_windows_per_s:g} windows/s"
    )
    log_offset = fleet.log_path.stat().st_size
    stored_0 = registry.windows()
    baseline_windows = registry.windows_of(previous_bundle_id, since=time.time() - 3600)
    simulator = DeviceSimulator(
        "127.0.0.1",
        port,
        devices,
        telemetry_interval_s=scale.load_interval_s,
        connect_rate=scale.connect_rate,
        misbehaviour={device_id: how for device_id, (_, how) in roles.items()},
    )
    span = _Span({"fleet": fleet.pid, "broker": broker_pid})
    timeline = _Timeline(db, fleet.pid, broker_pid, lambda: simulator.windows_sent, stored_0)
    started = time.monotonic()
    try:
        simulator.start()
        if not simulator.wait_connected(timeout=60):
            raise RuntimeError(f"only {simulator.connected} of {len(devices)} devices connected")
        time.sleep(scale.load_before_s)
        rollout_started = time.monotonic()
        rollout_from = rollout_started - timeline.started
        rollout_id = _edgeml(
            "fleet", "rollout", "start", bundle_id, "--db", str(db), "--stages", STAGES,
            "--soak", f"{scale.load_soak_s:g}",
        )["rollout_id"]  # fmt: skip
        state = _wait_until_ended(
            registry, rollout_id, rollout_started + scale.load_rollout_timeout_s
        )
        rollout_s = time.monotonic() - rollout_started
        rollout_to = time.monotonic() - timeline.started
        log(f"  rollout {rollout_id}: {state} after {rollout_s:.1f} s under load")
        aborted = state in OPEN_STATES
        if aborted:  # the rest of the phase measures the misbehaving devices alone
            log("  aborting it: the rest of the phase goes on without a rollout")
            subprocess.run(
                [EDGEML, "fleet", "rollout", "abort", rollout_id, "--db", str(db),
                 "--reason", "the benchmark's time-out under load"],
                capture_output=True, check=True,
            )  # fmt: skip
        time.sleep(scale.load_after_s)
        sent_end, stored_end = simulator.windows_sent, registry.windows() - stored_0
        wall = time.monotonic() - started
        samples = timeline.stop()
        figures = span.end()
    finally:
        timeline.stop()
        stopped = time.monotonic()
        simulator.stop()
    counters = simulator.counters()  # what was sent until the end, garbage included
    by_kind = dict(simulator.garbage_by_kind)
    offered = int(simulator.windows_sent)
    catch_up: float | None = None
    while time.monotonic() < stopped + scale.load_catch_up_timeout_s:
        if registry.windows() - stored_0 >= offered:
            catch_up = round(time.monotonic() - stopped, 2)
            break
        time.sleep(0.1)
    stored = registry.windows() - stored_0
    lines = _count_lines(fleet.log_path, log_offset)
    with FleetRegistry.open(db) as fleet_registry:
        from edgeml.fleet.operations import rollout_status

        document = rollout_status(fleet_registry, rollout_id)
    states: dict[str, int] = {}
    for entry in document["devices"]:
        states[entry["state"]] = states.get(entry["state"], 0) + 1
    entries = {entry["device_id"]: entry for entry in document["devices"]}
    installed = {
        role: (
            sum(
                entries.get(d, {}).get("state") == "installed"
                for d, (r, _) in roles.items()
                if r == role
            ),
            sum(r == role for r, _ in roles.values()),
        )
        for role in ROLES
    }
    finished = [s["finished_at"] for s in document["stages"] if s.get("finished_at")]
    first, last = (samples[0], samples[-1]) if samples else (None, None)
    rate_s = (last.t_s - first.t_s) if first and last and last.t_s > first.t_s else None
    result = LoadFigures(
        interval_s=scale.load_interval_s,
        soak_s=scale.load_soak_s,
        garbage_devices=scale.garbage_devices,
        garbage_per_s=scale.garbage_per_s,
        storm_devices=scale.storm_devices,
        reconnect_every_s=scale.reconnect_every_s,
        flood_devices=scale.flood_devices,
        flood_windows_per_s=scale.flood_windows_per_s,
        bundle_id=bundle_id,
        state=str(state),
        seconds=round(rollout_s, 2),
        document_s=round(max(finished) - document["created_at"], 2) if finished else None,
        stages=_stage_timings(document),
        rollout_from_s=round(rollout_from, 2),
        rollout_to_s=round(rollout_to, 2),
        aborted=aborted,
        baseline_windows=baseline_windows,
        device_states=states,
        misbehaving_installed=installed,
        span_s=round(wall, 2),
        offered=offered,
        stored=stored,
        offered_per_s=round((last.offered - first.offered) / rate_s, 1) if rate_s else 0.0,
        stored_per_s=round((last.stored - first.stored) / rate_s, 1) if rate_s else 0.0,
        backlog_end=sent_end - stored_end,
        backlog_max=max((s.offered - s.stored for s in samples), default=0),
        catch_up_s=catch_up,
        missing=max(0, offered - stored),
        windows_dropped=int(counters["windows_dropped"]),
        garbage_sent=int(counters["garbage_sent"]),
        garbage_by_kind=by_kind,
        garbage_to_drop=sum(n for kind, n in by_kind.items() if kind in DROPPED_GARBAGE),
        logged_dropped=lines["dropped"],
        logged_foreign=lines["foreign"],
        logged_bogus_transfers=lines["bogus"],
        logged_errors=lines["errors"],
        connection_drops=int(counters["connection_drops"]),
        reconnects=int(counters["reconnects"]),
        fleet_alive=fleet.process.poll() is None,
        fleet=figures["fleet"],
        broker=figures["broker"],
        simulator_cpu_s=round(float(counters["driver_cpu_s"]), 2),
        samples=samples,
    )
    log(
        f"  offered {result.offered_per_s:,.0f}/s, stored {result.stored_per_s:,.0f}/s, "
        f"backlog at the end {result.backlog_end:,}, missing {result.missing:,}; fleet RSS "
        f"{result.rss_start_mib:.1f} -> max {result.rss_max_mib:.1f} -> {result.rss_end_mib:.1f}"
        f" MiB (after the rollout {_n_slope(result.rss_slope_mib_per_min)} MiB/min)"
    )
    return result


def _n_slope(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _build_bundle(work: Path, log: Callable[[str], None]) -> tuple[Path, Path, Path]:
    """The reference MLP built for raspberry-pi-4 as version 1.0.0 and as
    :data:`LOAD_VERSION`, and the public key that signed both."""
    spec = next(s for s in REFERENCE_SPECS if s.kind == "mlp")
    log("training the reference MLP and building it for raspberry-pi-4 (two versions)")
    model = train_reference_model(spec, work / "model")
    generate_key_pair(work / "keys", "bench")
    bundles = []
    for version in ("1.0.0", LOAD_VERSION):
        result = build_bundles(
            BuildRequest(
                model_path=model.model_path,
                profiles=[load_profile(PROFILE)],
                signing_key=load_private_key(work / "keys" / "bench.key"),
                out_dir=work / "bundles",
                validation_path=model.validation_path,
                target="target",
                name="mlp",
                version=version,
            )
        )
        bundle = result.builds[0].bundle_path
        if bundle is None:
            raise RuntimeError("the reference bundle was refused by its gates")
        bundles.append(bundle)
    return bundles[0], bundles[1], work / "keys" / "bench.pub"


class _Fleet:
    """``edgeml fleet serve`` as a child process, its log in the work folder."""

    def __init__(self, work: Path, db: Path, port: int, trust: Path, tick_s: float) -> None:
        self.log_path = work / f"fleet-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                EDGEML, "fleet", "serve", "--db", str(db), "--broker",
                f"mqtt://127.0.0.1:{port}", "--trust", str(trust), "--tick", f"{tick_s:g}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_for(self._connected, 30, "the fleet service did not connect")
        except BaseException:
            self.stop()
            raise

    def _connected(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the fleet service exited: {self.log_path.read_text()[-2000:]}")
        return "connected to" in self.log_path.read_text()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        _stop(self.process)
        self._log.close()


def _drain(
    count: Callable[[], int], before: int, queued: int, pid: int, timeout: float
) -> tuple[float | None, float | None, ProcessFigures | None]:
    """Seconds and windows per second from the first window counted after ``before`` until
    ``queued`` more are counted (None when they were not within ``timeout``), and the
    process's figures over that span."""
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    span: _Span | None = None
    while time.monotonic() < deadline:
        now, value = time.monotonic(), count()
        if first is None and value > before:
            first, span = (now, value), _Span({"p": pid})
        if first is not None and value >= before + queued:
            assert span is not None
            seconds = now - first[0]
            rate = (value - first[1]) / seconds if seconds > 0 else None
            return round(seconds, 2), (None if rate is None else round(rate, 1)), span.end()["p"]
        time.sleep(0.1)
    return None, None, None if span is None else span.end()["p"]


def _drain_bare(
    bare: _BareSubscriber, queued: int, timeout: float
) -> tuple[float | None, float | None, ProcessFigures | None]:
    """As :func:`_drain`, timed by the subscriber itself (it drains faster than a poll sees):
    from its first message to its last, with its CPU between them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count, first, last, cpu = bare.read()
        if count >= queued:
            seconds = last - first
            rate = (count - 1) / seconds if seconds > 0 else None
            rss, peak = _memory_mib(bare.pid)
            figures = ProcessFigures(
                round(cpu, 2), round(seconds, 2), round(rss, 1), round(rss, 1), round(peak, 1)
            )
            return round(seconds, 2), (None if rate is None else round(rate, 1)), figures
        time.sleep(0.1)
    return None, None, None


def _measure_drain(
    port: int,
    devices: list[SimulatedDevice],
    fleet: _Fleet,
    bare: _BareSubscriber,
    registry: _Registry,
    start_fleet: Callable[[], _Fleet],
    scale: FleetScale,
    log: Callable[[str], None],
) -> tuple[DrainFigures, _Fleet, _BareSubscriber]:
    interval = min(scale.ingest_intervals_s)
    log(
        f"backlog: the fleet and the bare subscriber away, devices send every {interval:g} s "
        f"for {scale.drain_fill_s:g} s; then each drains it alone"
    )
    fleet.stop()
    bare.close()
    simulator, _ = _start_simulator(port, devices, interval, scale)
    time.sleep(scale.drain_fill_s)
    simulator.stop()
    queued = int(simulator.windows_sent)
    time.sleep(1.0)  # the last windows reach the broker's queues
    stored_before = registry.windows()
    fleet = start_fleet()
    fleet_s, fleet_rate, fleet_figures = _drain(
        registry.windows, stored_before, queued, fleet.pid, scale.catch_up_timeout_s
    )
    log(f"  the fleet stored {queued:,} queued windows in {fleet_s} s ({fleet_rate}/s)")
    bare = _BareSubscriber(port)
    bare_s, bare_rate, bare_figures = _drain_bare(bare, queued, scale.catch_up_timeout_s)
    log(f"  the bare subscriber received them in {bare_s} s ({bare_rate}/s)")
    return (
        DrainFigures(
            interval_s=interval,
            fill_s=scale.drain_fill_s,
            queued=queued,
            fleet_s=fleet_s,
            fleet_per_s=fleet_rate,
            bare_s=bare_s,
            bare_per_s=bare_rate,
            fleet=fleet_figures,
            bare=bare_figures,
        ),
        fleet,
        bare,
    )


def run_fleet_benchmark(
    work: Path, scale: FleetScale, log: Callable[[str], None]
) -> FleetBenchmark:
    """Measure a rollout to ``scale.devices`` simulated devices and the telemetry ingest."""
    started_all = time.monotonic()
    children_before = children_cpu_s()
    bundle, load_bundle, trust = _build_bundle(work, log)
    db = work / "fleet.db"
    bundle_id, load_bundle_id = (
        _edgeml("fleet", "publish", str(path), "--db", str(db), "--trust", str(trust))["bundle_id"]
        for path in (bundle, load_bundle)
    )
    bundle_bytes = bundle.stat().st_size
    raise_open_file_limit()  # the broker inherits it
    broker, port = _start_broker(work)

    def start_fleet() -> _Fleet:
        return _Fleet(work, db, port, trust, scale.tick_s)

    fleet: _Fleet | None = None
    bare: _BareSubscriber | None = None
    simulator: DeviceSimulator | None = None
    registry: _Registry | None = None
    try:
        fleet = start_fleet()
        bare = _BareSubscriber(port)
        registry = _Registry(db)
        pids = {"fleet": fleet.pid, "bare": bare.pid, "broker": broker.pid}
        devices = make_devices(
            scale.devices,
            PROFILE,
            tags_for=lambda i: ("canary",) if i < scale.canaries else (),
            active=BASE_BUNDLE,
        )
        log(f"connecting {scale.devices} simulated devices")
        started = time.monotonic()
        simulator, connect_s = _start_simulator(port, devices, scale.rollout_interval_s, scale)
        _wait_for(
            lambda: registry is not None and registry.online_devices() >= scale.devices,
            60,
            "the fleet did not register every device",
            every=0.1,
        )
        register_s = time.monotonic() - started
        time.sleep(1.0)
        fleet_rss_registered = _memory_mib(fleet.pid)[0]
        rollout = _measure_rollout(
            db, registry, simulator, bundle_id, bundle_bytes, pids, scale, log
        )
        simulator.stop()
        simulator = None
        ingest = tuple(
            _measure_ingest(port, devices, interval, registry, bare, pids, scale, log)
            for interval in scale.ingest_intervals_s
        )
        fleet_peak = _memory_mib(fleet.pid)[1]
        bare_rss = _memory_mib(bare.pid)[0]
        drain, fleet, bare = _measure_drain(
            port, devices, fleet, bare, registry, start_fleet, scale, log
        )
        broker_peak = _memory_mib(broker.pid)[1]
        bare.close()  # garbage on the telemetry topics would stop its json.loads
        bare = None
        _end_session(port, "bench-bare")  # else the broker queues every window for it
        load = _measure_load(
            port, devices, fleet, broker.pid, db, registry, load_bundle_id, bundle_id, scale, log
        )
    finally:
        if simulator is not None:
            simulator.stop()
        if registry is not None:
            registry.close()
        if bare is not None:
            bare.close()
        if fleet is not None:
            fleet.stop()
        _stop(broker)
    children_cpu = children_cpu_s() - children_before
    with FleetRegistry.open(db) as final:
        telemetry_devices = final.telemetry_counts()["devices"]
    return FleetBenchmark(
        scale=scale,
        bundle_id=bundle_id,
        bundle_bytes=bundle_bytes,
        connect_s=round(connect_s, 2),
        register_s=round(register_s, 2),
        fleet_rss_registered_mib=round(fleet_rss_registered, 1),
        bare_rss_mib=round(bare_rss, 1),
        rollout=rollout,
        ingest=ingest,
        drain=drain,
        load=load,
        telemetry_devices=telemetry_devices,
        fleet_peak_mib=round(fleet_peak, 1),
        broker_peak_mib=round(broker_peak, 1),
        children_cpu_s=round(children_cpu, 1),
        total_s=round(time.monotonic() - started_all, 1),
    )


if __name__ == "__main__":  # a quick look without the runner
    with tempfile.TemporaryDirectory() as folder:
        chosen = FleetScale() if "--full" in sys.argv else FleetScale.quick()
        print(run_fleet_benchmark(Path(folder), chosen, print))
    os._exit(0)
