"""The fleet service (``edgeml fleet serve``): listens to the devices, keeps the registry,
serves bundle transfers, and steps the rollouts.

The imperative shell around :mod:`edgeml.fleet.rollout`. One paho client (its network thread
only parses and queues what arrives; a thread per client is never needed, the fleet holds one
connection), and one worker — :meth:`FleetService.run` — that owns the registry:

- statuses, telemetry windows (deduplicated by device, stream and seq) and command results are
  written in batches; a message whose device id differs from its topic's is dropped;
- a transfer request is answered with a window of chunks of the fleet's verified copy of the
  bundle, only for an install command the fleet queued for that device, and only while its
  rollout still wants it (a rolled-back rollout's transfers stop);
- every ``tick_s`` each live rollout is stepped; the new document, the commands it decided
  and its audit lines are written in one transaction, and only then are the commands
  published, so a service killed at any moment resumes without losing or repeating a step
  (a command published but not yet marked sent is published once more; commands are
  idempotent on the device: install of the active bundle and activate of the active bundle
  are no-ops).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeml.fleet.gates import DeviceHealth
from edgeml.fleet.operations import device_view
from edgeml.fleet.records import BundleRecord
from edgeml.fleet.registry import FleetRegistry
from edgeml.fleet.rollout import (
    OPEN_STATES,
    CommandOutcome,
    Decision,
    Observations,
    OperatorRequest,
    RequestsHandled,
    Rollout,
    SendActivate,
    SendInstall,
    step,
)
from edgeml.toolkit.bundle import sha256_file, verify_bundle
from edgeml.toolkit.errors import EdgeMLError
from edgeml.toolkit.protocol import (
    TRANSFER_WINDOW,
    BrokerEndpoint,
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
from edgeml.toolkit.trust import TrustStore

log = logging.getLogger("edgeml.fleet")

LIVE_STATES = ("running", "waiting-approval", "paused", "rolled-back")
BASELINE_S = 3600.0
"""How far back a device's windows on its previous bundle count as its latency baseline."""


@dataclass(frozen=True)
class BrokerConnection(BrokerEndpoint):
    """Where the broker is and how the fleet logs in (``--broker mqtts://user@host:port``)."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str = "edgeml-fleet"


@dataclass
class ServiceCounters:
    """What the service did since it started (logged, and read by benchmarks)."""

    statuses: int = 0
    windows: int = 0
    duplicate_windows: int = 0
    results: int = 0
    chunks_sent: int = 0
    commands_sent: int = 0
    dropped_messages: int = 0
    steps: int = 0


class FleetService:
    """The fleet's MQTT shell over the registry and the rollout engine."""

    def __init__(
        self,
        db_path: Path,
        broker: BrokerConnection,
        trust: TrustStore,
        *,
        tick_s: float = 1.0,
        health_every_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        queue_limit: int = 100_000,
    ) -> None:
        self.db_path = db_path
        self.broker = broker
        self.trust = trust
        self.tick_s = tick_s
        self.health_every_s = health_every_s
        self.clock = clock
        self.counters = ServiceCounters()
        self._inbox: queue.Queue[tuple[str, str, Any]] = queue.Queue(maxsize=queue_limit)
        self._stopping = threading.Event()
        self.connected = threading.Event()
        # bundle id -> (recorded sha256, inode, size, mtime, ctime) of the copy that verified
        self._revoked: frozenset[str] = frozenset()  # devices whose access was revoked
        self._verified: dict[str, tuple[str, int, int, int, int]] = {}
        self._health_at: dict[str, float] = {}
        self._health: dict[str, dict[str, Any]] = {}
        self._baselines: dict[tuple[str, str | None, float], float | None] = {}
        self.client = self._make_client()

    # ------------------------------------------------------------------------ MQTT side

    def _make_client(self) -> mqtt.Client:
        broker = self.broker
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=broker.client_id, clean_session=False
        )
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(**broker.tls_arguments())
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the fleet's connection: %s", reason)
            return
        client.subscribe([(subscription(k), 1) for k in ("status", "telemetry", "events")])
        self.connected.set()
        log.info("connected to %s", self.broker.url)

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("lost the broker; reconnecting")

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        # paho's thread: parse, check the sender, queue. Never raise into paho.
        try:
            device_id, kind = parse_topic(message.topic)
            parsed = parse_message(message.payload, kind)
        except ProtocolError as error:
            self.counters.dropped_messages += 1
            log.warning("dropped a message on %s: %s", message.topic[:200], error)
            return
        except Exception as error:  # a parser bug (e.g. a 400-digit number): still dropped,
            # never raised into paho's thread, which would stop hearing every device for good
            self.counters.dropped_messages += 1
            log.warning("dropped a message on %s: unparseable: %r", message.topic[:200], error)
            return
        if device_id in self._revoked:  # until the broker reloads its ACL, it may still pass
            self.counters.dropped_messages += 1
            return
        claimed = getattr(parsed, "device_id", device_id)
        if claimed != device_id:
            self.counters.dropped_messages += 1
            log.warning("dropped a %s on %s naming device %s", kind, message.topic, claimed)
            return
        self._inbox.put((kind, device_id, parsed))  # blocks paho when the worker lags

    # ---------------------------------------------------------------------- the worker

    def run(self) -> None:
        """Connect and work until :meth:`stop`: ingest, serve transfers, step rollouts."""
        registry = FleetRegistry.open(self.db_path)
        try:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
            self.client.loop_start()
            next_tick = 0.0
            while not self._stopping.is_set():
                timeout = max(0.0, min(self.tick_s, next_tick - time.monotonic()))
                self._ingest(registry, timeout)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_s
                    self.tick(registry)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            registry.close()

    def stop(self) -> None:
        self._stopping.set()

    def _ingest(self, registry: FleetRegistry, timeout: float) -> None:
        """Take what arrived (waiting up to ``timeout`` for the first) and store it in bulk."""
        try:
            batch = [self._inbox.get(timeout=timeout)]
        except queue.Empty:
            return
        while len(batch) < 5000:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        now = self.clock()
        windows: list[TelemetryWindow] = []
        requests: list[tuple[str, TransferRequest]] = []
        with registry.transaction():
            for kind, device_id, message in batch:
                if isinstance(message, Status):
                    registry.record_status(message, now)
                    self.counters.statuses += 1
                elif isinstance(message, TelemetryWindow):
                    windows.append(message)
                elif isinstance(message, CommandResult):
                    registry.record_result(device_id, message, now)
                    self.counters.results += 1
                elif isinstance(message, TransferRequest):
                    requests.append((device_id, message))
                else:  # pragma: no cover - parse_message checked the kind
                    log.warning("unexpected %s on %s", type(message).__name__, kind)
            if windows:
                new = registry.add_windows(windows, now)
                self.counters.windows += new
                self.counters.duplicate_windows += len(windows) - new
        for device_id, request in requests:
            self._serve_transfer(registry, device_id, request)

    def _serve_transfer(
        self, registry: FleetRegistry, device_id: str, request: TransferRequest
    ) -> None:
        queued = registry.command(request.command_id)
        if (
            queued is None
            or queued.device_id != device_id
            or queued.command.kind != "install"
            or queued.command.bundle_id != request.bundle_id
        ):
            log.warning(
                "%s asked for %s under command %s the fleet did not send it",
                device_id,
                request.bundle_id,
                request.command_id[:128],
            )
            return
        rollout_id = queued.command.rollout_id
        if rollout_id is not None:
            state = registry.rollout_state(rollout_id)  # not the document: it grows with devices
            if state not in OPEN_STATES:
                log.info("not serving %s to %s: its rollout stopped", request.bundle_id, device_id)
                return
        bundle = registry.bundle(request.bundle_id)
        if bundle is None or not self._bundle_verifies(bundle):
            return
        chunk_size = queued.command.chunk_size
        offset = request.offset
        with open(bundle.path, "rb") as handle:
            handle.seek(offset)
            for _ in range(TRANSFER_WINDOW):
                if offset >= bundle.size:
                    break
                payload = handle.read(min(chunk_size, bundle.size - offset))
                chunk = Chunk.of(
                    request.command_id, request.bundle_id, offset, bundle.size, payload
                )
                self.client.publish(device_topic(device_id, "transfer"), chunk.to_bytes(), qos=1)
                self.counters.chunks_sent += 1
                offset += len(payload)

    def _bundle_verifies(self, bundle: BundleRecord) -> bool:
        """Whether the fleet's copy of a bundle verifies against the trust store (cached by
        the file's identity and times: a copy changed on disk is verified again, and refused)."""
        try:
            seen = os.stat(bundle.path)
        except OSError as error:
            log.error("bundle %s refused: %s", bundle.bundle_id, error)
            return False
        stamp = (bundle.sha256, seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns)
        if self._verified.get(bundle.bundle_id) == stamp:
            return True
        try:
            verify_bundle(bundle.path, self.trust)
            if sha256_file(Path(bundle.path)) != bundle.sha256:
                raise EdgeMLError(f"{bundle.path} changed since it was published")
        except (EdgeMLError, OSError) as error:
            log.error("bundle %s refused: %s", bundle.bundle_id, error)
            return False
        self._verified[bundle.bundle_id] = stamp
        return True

    # ----------------------------------------------------------------------- rollouts

    def tick(self, registry: FleetRegistry) -> None:
        """Step every live rollout, then publish the commands queued."""
        now = self.clock()
        self._revoked = frozenset(
            e.username for e in registry.enrollments(role="device") if e.revoked_at is not None
        )
        for record in registry.rollouts(states=LIVE_STATES):
            rollout = Rollout.from_dict(record.document)
            if not rollout.live(now):
                continue
            bundle = registry.bundle(rollout.bundle_id)
            if bundle is None or not self._bundle_verifies(bundle):
                self._refuse(registry, rollout, now)
                continue
            observations = self._observe(registry, rollout, now)
            updated, actions = step(rollout, observations, now)
            self.counters.steps += 1
            if updated == rollout and not actions:
                continue
            self._persist(registry, updated, actions, bundle, now)
        self.send_queued(registry)

    def _refuse(self, registry: FleetRegistry, rollout: Rollout, now: float) -> None:
        reason = f"bundle {rollout.bundle_id} does not verify against the trust store"
        if rollout.state in OPEN_STATES:
            aborted = replace(rollout, state="aborted", reason=reason, updated_at=now)
            with registry.transaction():
                registry.save_rollout(rollout.rollout_id, "aborted", now, aborted.to_dict())
                registry.audit(now, "aborted", reason, rollout_id=rollout.rollout_id)

    def _observe(self, registry: FleetRegistry, rollout: Rollout, now: float) -> Observations:
        devices = {d.device_id: device_view(d) for d in registry.devices(profile=rollout.profile)}
        waiting = [e.command_id for e in rollout.devices.values() if e.command_id]
        results = {
            command_id: CommandOutcome(r.outcome, r.result.detail)
            for command_id, r in registry.latest_results(waiting).items()
        }
        requests = tuple(
            OperatorRequest(r.request_id, r.action, r.actor, r.reason)
            for r in registry.pending_requests(rollout.rollout_id)
        )
        return Observations(
            devices, results, self._rollout_health(registry, rollout, now), requests
        )

    def _rollout_health(
        self, registry: FleetRegistry, rollout: Rollout, now: float
    ) -> dict[str, Any]:
        """Each watched device's figures on the bundle since it was sent, with its p95 on the
        bundle it ran before over the hour before that as the latency baseline (figures
        recomputed in SQL every ``health_every_s``; a baseline once per device and install)."""
        key = rollout.rollout_id
        if now - self._health_at.get(key, -1e18) < self.health_every_s:
            return self._health.get(key, {})
        watched = {
            e.device_id: e
            for e in rollout.devices.values()
            if e.state in ("installed", "unhealthy")
        }
        current = registry.health(rollout.bundle_id, {d: e.sent_at for d, e in watched.items()})
        health: dict[str, Any] = {}
        for device_id, entry in watched.items():
            baseline_key = (device_id, entry.from_bundle, entry.sent_at)
            if baseline_key not in self._baselines:  # once per device and install
                if len(self._baselines) > 100_000:
                    self._baselines.clear()
                self._baselines[baseline_key] = (
                    registry.latency_p95(
                        device_id, entry.from_bundle, entry.sent_at - BASELINE_S, entry.sent_at
                    )
                    if entry.from_bundle
                    else None
                )
            figures = current.get(device_id, DeviceHealth())
            health[device_id] = replace(figures, baseline_p95_ms=self._baselines[baseline_key])
        self._health_at[key] = now
        self._health[key] = health
        return health

    def _persist(
        self,
        registry: FleetRegistry,
        rollout: Rollout,
        actions: Iterable[Any],
        bundle: BundleRecord,
        now: float,
    ) -> None:
        """The new document, its commands and its audit lines, in one transaction."""
        rollout_id = rollout.rollout_id
        with registry.transaction():
            registry.save_rollout(rollout_id, rollout.state, now, rollout.to_dict())
            for action in actions:
                if isinstance(action, SendInstall):
                    command = Command(
                        command_id=action.command_id,
                        kind="install",
                        issued_at=now,
                        bundle_id=action.bundle_id,
                        bundle_size=bundle.size,
                        bundle_sha256=bundle.sha256,
                        rollout_id=rollout_id,
                    )
                    registry.queue_command(command, action.device_id, action.reason, now)
                elif isinstance(action, SendActivate):
                    command = Command(
                        command_id=action.command_id,
                        kind="activate",
                        issued_at=now,
                        bundle_id=action.bundle_id,
                        rollout_id=rollout_id,
                    )
                    registry.queue_command(command, action.device_id, action.reason, now)
                elif isinstance(action, Decision):
                    registry.audit(
                        now,
                        action.action,
                        action.reason,
                        rollout_id=rollout_id,
                        device_id=action.device_id,
                        details=dict(action.details),
                    )
                elif isinstance(action, RequestsHandled):
                    registry.consume_requests(action.request_ids, now)
        for action in actions:
            if isinstance(action, Decision) and action.device_id is None:
                log.info("rollout %s: %s", rollout_id, action.reason)

    def send_queued(self, registry: FleetRegistry) -> int:
        """Publish the commands not yet sent (none while the broker is away)."""
        if not self.connected.is_set():
            return 0
        sent: list[str] = []
        for queued in registry.unsent_commands():
            info = self.client.publish(
                device_topic(queued.device_id, "commands"), queued.command.to_bytes(), qos=1
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
            sent.append(queued.command_id)
        if sent:
            registry.mark_sent(sent, self.clock())
            self.counters.commands_sent += len(sent)
        return len(sent)
