"""The agent daemon: the shell that wires the device's parts together.

On start it recovers the state folder (``install.recover``), loads the active bundle into the
scoring engine, serves the local API, and connects to the broker. Commands and chunks arrive
on paho's thread and are queued to one worker thread, so an install never blocks the network
loop or the API. A ``trust`` command (a newer signed trust document) runs on the same worker:
``edgeml.agent.trust`` verifies and persists it and re-verifies the held bundles, and the daemon
then serves what still verifies. Telemetry is summarised per window
(``telemetry.WindowAccumulator``), written to the SQLite outbox first (which numbers it in its
stream: a new outbox.db is a new stream, starting at seq 1), and published with a bounded
number in flight; a window leaves the outbox only when the broker acknowledged it.
Predictions go on whether or not the broker is reachable.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.agent.api import ModelHolder, ScoringAPI
from edgeml.agent.config import AgentConfig, ensure_state_dir
from edgeml.agent.install import install_bundle, recover, rollback
from edgeml.agent.locking import install_lock
from edgeml.agent.mqtt_link import AgentLink
from edgeml.agent.outbox import OutboxError, TelemetryOutbox
from edgeml.agent.slots import active_bundle_path, read_state, slot_bundle
from edgeml.agent.telemetry import Observation, WindowAccumulator
from edgeml.agent.transfer import DiskFullError, IncomingTransfer
from edgeml.agent.trust import DeviceTrust, chain_path, load_device_trust, update_trust
from edgeml.toolkit import __version__
from edgeml.toolkit.bundle import sha256_file
from edgeml.toolkit.errors import EdgeMLError
from edgeml.toolkit.protocol import (
    TRANSFER_WINDOW,
    Chunk,
    Command,
    CommandResult,
    Message,
    Status,
    TransferRequest,
)
from edgeml.toolkit.scoring import ScoringEngine
from edgeml.toolkit.trust import TrustStore

log = logging.getLogger("edgeml.agent")

TICK_S = 0.2
STOP_DRAIN_S = 5.0
"""How long a clean stop waits for the broker to acknowledge the last telemetry windows."""
STATUS_FILE = "agent.json"
STALL_S = 10.0


@dataclass
class _Receiving:
    """The install command whose bundle is arriving, and where it lands."""

    command: Command
    transfer: IncomingTransfer
    requested_up_to: int
    progress_at: float = 0.0


class AgentDaemon:
    """One device's agent. ``run()`` blocks until ``stop()``."""

    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        ensure_state_dir(config)
        self._trust_stamp = self._chain_stamp()
        self.device_trust: DeviceTrust = load_device_trust(config.state_dir, config.trust)
        self.trust: TrustStore = self.device_trust.store
        self.recovery = recover(config.state_dir, self._current_trust)
        for problem in (*self.device_trust.problems, *self.recovery.problems):
            log.warning("recovery: %s", problem)
        self.holder = ModelHolder(None)
        self._accumulator: WindowAccumulator | None = None
        self._accumulator_lock = threading.Lock()
        self._load_active()
        self.outbox = TelemetryOutbox(
            config.outbox_path,
            max_bytes=int(config.telemetry.max_buffer_mb * 1024 * 1024),
            max_windows=config.telemetry.max_windows,
        )
        self.state = "idle"
        self.detail = "; ".join((*self.device_trust.problems, *self.recovery.problems))
        self._receiving: _Receiving | None = None
        self._work: queue.Queue[tuple[str, Message]] = queue.Queue(maxsize=1024)
        self._stop = threading.Event()
        self._in_flight: set[int] = set()
        self._acked_seqs: list[int] = []
        self._in_flight_lock = threading.Lock()
        self._window_opened = time.monotonic()  # windows are timed on the monotonic clock
        self._status_written = 0.0
        self._last_status_document: dict[str, Any] | None = None
        self.link = AgentLink(config, self._enqueue, self._status, on_connected=self._on_connected)
        self.api = ScoringAPI(
            self.holder,
            config.api.listen,
            token=config.api.token(),
            record=self._observe,
            max_body_bytes=config.api.max_body_bytes,
            health_info=lambda: {"broker_connected": self.link.connected.is_set()},
        )

    # --------------------------------------------------------------------- lifecycle

    def run(self) -> None:
        """Serve until :meth:`stop`: API, broker connection, worker, telemetry."""
        self.api.start()
        self.link.start()
        worker = threading.Thread(target=self._worker, name="edgeml-agent-worker", daemon=True)
        worker.start()
        log.info("agent %s serving %s", self.config.device_id, self._active_id() or "nothing")
        log.info(
            "telemetry stream %s, last seq %d",
            self.outbox.stream or '"" (legacy)',
            self.outbox.last_seq,
        )
        try:
            while not self._stop.wait(TICK_S):
                now = self.clock()
                if time.monotonic() - self._window_opened >= self.config.telemetry.window_s:
                    self.flush_window(now)
                self.publish_telemetry()
                self._notice_side_load()
                self._notice_stalled_transfer()
                self._write_status_file(now)
        finally:
            # The API first: a request answered just before the stop is recorded (after its
            # answer was sent) before the last window closes.
            self.api.close()
            self.flush_window(self.clock())
            if self.outbox.held:
                log.warning(
                    "%d telemetry window(s) lost: the outbox cannot store them", self.outbox.held
                )
            self._drain_telemetry(time.monotonic() + STOP_DRAIN_S)
            self._work.put(("stop", Status(self.config.device_id, False, 0.0)))
            worker.join(timeout=10)
            self.link.stop()
            self.outbox.close()

    def stop(self) -> None:
        self._stop.set()

    # --------------------------------------------------------------------- serving

    def _chain_stamp(self) -> tuple[int, int, int] | None:
        try:
            info = chain_path(self.config.state_dir).stat()
        except FileNotFoundError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _current_trust(self) -> TrustStore:
        """The device's trust as the state folder says now; installs call it under the lock,
        so an install never verifies against a trust that changed while it waited."""
        return load_device_trust(self.config.state_dir, self.config.trust).store

    def _reload_trust(self) -> None:
        """Take the trust the state folder holds now, and serve only what verifies under it."""
        self._trust_stamp = self._chain_stamp()
        self.device_trust = load_device_trust(self.config.state_dir, self.config.trust)
        self.trust = self.device_trust.store
        log.info("trust version %d: keys %s", self.trust.version, ", ".join(self.trust.trusted_ids))
        self.flush_window(self.clock())
        self._load_active()
        if self.link.connected.is_set():
            self.link.publish_status()

    def _notice_side_load(self) -> None:
        """``edgeml agent install`` changed the active bundle under us, or ``edgeml agent
        trust-update`` the trust: serve what is active and verifies now."""
        if self.state != "idle":
            return
        if self._chain_stamp() != self._trust_stamp:
            log.info("trust changed on disk; reloading it")
            self._reload_trust()
            self.detail = f"trust version {self.trust.version} taken from {self.config.state_dir}"
        state = read_state(self.config.state_dir)
        active = state.active.bundle_id if state.active else None
        if active != self._active_id():
            log.info("active bundle changed on disk to %s; loading it", active)
            self.flush_window(self.clock())
            self._load_active()
            if self.link.connected.is_set():
                self.link.publish_status()

    def _notice_stalled_transfer(self) -> None:
        """No chunk for a while (one lost, or out of order): ask again from the bytes on disk.
        Timed on the monotonic clock: a wall clock stepped back must not silence it."""
        receiving = self._receiving
        if (
            receiving is not None
            and self.link.connected.is_set()
            and time.monotonic() - receiving.progress_at > STALL_S
        ):
            self._enqueue("retry", receiving.command)

    def _write_status_file(self, now: float) -> None:
        """``state_dir/agent.json``: what ``edgeml agent status`` reads while the daemon runs."""
        document: dict[str, Any] = {
            "pid": os.getpid(),
            "connected": self.link.connected.is_set(),
            "serving": self._active_id(),
            "state": self.state,
            "detail": self.detail,
            "trust_version": self.trust.version,
            "api": self.api.address,
            "dropped_messages": self.link.dropped_messages,
        }
        if document == self._last_status_document and now - self._status_written < 5:
            return
        path = self.config.state_dir / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.tmp")
        try:
            tmp.write_text(json.dumps({**document, "updated_at": now}))
            os.replace(tmp, path)
        except OSError as error:  # a full disk: the file is advisory, serving goes on
            log.debug("cannot write %s: %s", path, error)
            tmp.unlink(missing_ok=True)
            return
        self._last_status_document = dict(document)
        self._status_written = now

    def _active_id(self) -> str | None:
        engine = self.holder.current()
        return engine.bundle_id if engine is not None else None

    def _load_active(self) -> None:
        """Open the active bundle's engine (verified again) and start a window for it."""
        engine = None
        # Shared with other readers, exclusive of installs: a side-load cannot collect the
        # slot while it is being opened.
        with install_lock(self.config.state_dir, shared=True):
            path = active_bundle_path(self.config.state_dir)
            if path is not None:
                try:
                    engine = ScoringEngine.open(path, self.trust)
                except EdgeMLError as error:
                    log.error("the active bundle cannot be served: %s", error)
        self.holder.swap(engine)
        with self._accumulator_lock:
            self._accumulator = WindowAccumulator.for_engine(engine) if engine is not None else None

    def _observe(self, observation: Observation) -> None:
        with self._accumulator_lock:
            accumulator = self._accumulator
        if accumulator is not None and observation.bundle_id == accumulator.bundle_id:
            accumulator.observe(observation)

    # --------------------------------------------------------------------- telemetry

    def flush_window(self, now: float) -> int | None:
        """Close the current window into the outbox; returns its seq (None if nothing to say,
        or while a full disk keeps it in memory: ``TelemetryOutbox.add_or_hold``).

        The window ends at ``now`` (the device's wall clock) and lasts what the monotonic clock
        measured, so a wall clock stepped back or forward neither stops windows nor makes one
        end before it starts.
        """
        opened, self._window_opened = self._window_opened, time.monotonic()
        start = now - (self._window_opened - opened)
        with self._accumulator_lock:
            accumulator = self._accumulator
        if accumulator is None:
            return None
        summary = accumulator.take(start, now)
        # seq 1 and the stream are placeholders: the outbox stamps the next seq of its stream
        window = summary.to_window(self.config.device_id, 1, stream=self.outbox.stream)
        seq = self.outbox.add_or_hold(window, now=now)
        if seq is None:
            log.warning(
                "telemetry cannot be stored (disk full?): %d window(s) held in memory",
                self.outbox.held,
            )
        return seq

    def publish_telemetry(self) -> None:
        """Publish pending windows, oldest first, keeping at most ``max_in_flight`` unacked."""
        self._forget_acked()
        if not self.link.connected.is_set():
            return
        with self._in_flight_lock:
            room = self.config.telemetry.max_in_flight - len(self._in_flight)
            skip = set(self._in_flight)
        if room <= 0:
            return
        for entry in self.outbox.pending(limit=room + len(skip)):
            if entry.seq in skip:
                continue
            if room <= 0:
                break
            with self._in_flight_lock:
                self._in_flight.add(entry.seq)
            if not self.link.publish_telemetry(
                entry.payload, lambda seq=entry.seq: self._acked(seq)
            ):
                with self._in_flight_lock:
                    self._in_flight.discard(entry.seq)
                return
            room -= 1

    def _drain_telemetry(self, deadline: float) -> None:
        """On the way out: publish what the outbox holds, more as acknowledgements free room
        in flight, until every window is acknowledged, the broker is gone or ``deadline``
        passes. What is left stays in the outbox and goes at the next start."""
        while True:
            self.publish_telemetry()  # forgets the acknowledged first
            with self._in_flight_lock:
                in_flight = bool(self._in_flight)
            if not in_flight and not self.outbox.pending(limit=1):
                return
            if not self.link.connected.is_set() or time.monotonic() >= deadline:
                left = self.outbox.stats().pending
                log.info("%d telemetry window(s) left for the next start", left)
                return
            time.sleep(0.05)

    def _acked(self, seq: int) -> None:
        """Runs on paho's thread: note the ack; the daemon loop deletes in batches."""
        with self._in_flight_lock:
            self._acked_seqs.append(seq)

    def _forget_acked(self) -> None:
        with self._in_flight_lock:
            acked, self._acked_seqs = self._acked_seqs, []
        if acked:
            try:
                self.outbox.mark_sent(acked)
            except OutboxError as error:  # a full disk: they stay in flight, deleted later
                log.debug("cannot delete acknowledged windows yet: %s", error)
                with self._in_flight_lock:
                    self._acked_seqs.extend(acked)
                return
            with self._in_flight_lock:
                self._in_flight.difference_update(acked)

    # --------------------------------------------------------------------- broker side

    def _status(self, online: bool) -> Status:
        state = read_state(self.config.state_dir)
        return Status(
            device_id=self.config.device_id,
            online=online,
            sent_at=self.clock(),
            profile=self.config.profile,
            tags=list(self.config.tags),
            active=state.active.bundle_id if state.active else None,
            previous=state.previous.bundle_id if state.previous else None,
            state=self.state if online else "offline",
            agent_version=__version__,
            detail=self.detail[:2048],
        )

    def _on_connected(self) -> None:
        # Resume a transfer interrupted by the disconnect, from the bytes on disk.
        # paho sends unacknowledged QoS 1 messages again by itself; they stay in flight here.
        receiving = self._receiving
        if receiving is not None:
            self._request_chunks(receiving)

    def _enqueue(self, kind: str, message: Message) -> None:
        try:
            self._work.put_nowait((kind, message))
        except queue.Full:
            log.warning("work queue full: dropped a %s message", kind)

    def _worker(self) -> None:
        while True:
            kind, message = self._work.get()
            if kind == "stop":
                return
            try:
                if kind == "retry":
                    if self._receiving is not None and self._receiving.command == message:
                        self._request_chunks(self._receiving)
                elif isinstance(message, Command):
                    self._command(message)
                elif isinstance(message, Chunk):
                    self._chunk(message)
            except Exception:  # a bug in one command must not stop the agent
                log.exception("handling a %s message failed", kind)

    def _result(self, command: Command, outcome: str, detail: str = "") -> None:
        state = read_state(self.config.state_dir)
        self.link.publish_event(
            CommandResult(
                command_id=command.command_id,
                kind=command.kind,
                outcome=outcome,
                sent_at=self.clock(),
                detail=detail[:4096],
                bundle_id=command.bundle_id,
                active=state.active.bundle_id if state.active else None,
                previous=state.previous.bundle_id if state.previous else None,
            )
        )
        self.link.publish_status()

    def _command(self, command: Command) -> None:
        if command.kind == "ping":
            self._result(command, "succeeded", "pong")
        elif command.kind == "install":
            self._start_install(command)
        elif command.kind == "rollback":
            self._apply(command, lambda: rollback(self.config.state_dir, self._current_trust))
        elif command.kind == "activate":
            self._activate(command)
        elif command.kind == "trust":
            self._update_trust(command)

    def _update_trust(self, command: Command) -> None:
        """Take a newer trust document; serve only what verifies under it (worker thread)."""
        assert command.trust_document is not None  # the protocol requires it
        before = self.state  # a transfer may be in progress: it goes on under the new trust
        self.state = "installing"  # keeps the main loop's side-load check out meanwhile
        try:
            result = update_trust(
                self.config.state_dir,
                self.config.trust,
                command.trust_document,
                now=self.clock(),
            )
        except (EdgeMLError, OSError) as error:
            refused = isinstance(error, EdgeMLError) and error.exit_code == 3
            outcome = "refused" if refused else "failed"
            self.state, self.detail = before, f"trust {outcome}: {error}"
            log.warning("%s", self.detail)
            self._result(command, outcome, str(error))
            return
        if result.changed:
            self._reload_trust()
        self.state, self.detail = before, result.describe()
        log.info("%s", self.detail)
        self._result(command, "succeeded", self.detail)

    def _start_install(self, command: Command) -> None:
        if command.bundle_id == self._active_id():
            self._answer_install_of_active(command)
            return
        try:
            transfer = IncomingTransfer.from_command(
                self.config.state_dir,
                command,
                reserve_bytes=self.config.install.reserve_bytes,
            )
        except EdgeMLError as error:
            self._result(command, "refused", str(error))
            return
        if self._receiving is not None:
            self._receiving.transfer.close()  # a newer install replaces it; its bytes stay
        self._receiving = _Receiving(command, transfer, 0, time.monotonic())
        self.state = "receiving"
        self._result(
            command, "accepted", f"resuming at byte {transfer.offset}" if transfer.offset else ""
        )
        if transfer.done:
            self._finish_transfer()
        else:
            self._request_chunks(self._receiving)

    def _request_chunks(self, receiving: _Receiving) -> None:
        receiving.progress_at = time.monotonic()
        offset = receiving.transfer.offset
        receiving.requested_up_to = offset + TRANSFER_WINDOW * receiving.command.chunk_size
        self.link.publish_event(
            TransferRequest(receiving.command.command_id, receiving.command.bundle_id or "", offset)
        )

    def _chunk(self, chunk: Chunk) -> None:
        receiving = self._receiving
        if receiving is None or chunk.command_id != receiving.command.command_id:
            return  # a stale chunk of a finished or replaced transfer
        try:
            outcome = receiving.transfer.accept(chunk)
        except DiskFullError as error:  # the bytes on disk stay: a later install resumes
            receiving.transfer.close()
            self._receiving = None
            self.state, self.detail = "idle", str(error)
            self._result(receiving.command, "failed", str(error))
            return
        except EdgeMLError as error:
            receiving.transfer.discard()
            self._receiving = None
            self.state = "idle"
            self.detail = str(error)
            self._result(receiving.command, "refused", str(error))
            return
        if outcome.written:
            receiving.progress_at = time.monotonic()
        if receiving.transfer.done:
            self._finish_transfer()
        elif outcome.written and receiving.transfer.offset >= receiving.requested_up_to:
            self._request_chunks(receiving)

    def _finish_transfer(self) -> None:
        receiving = self._receiving
        assert receiving is not None
        self._receiving = None
        try:
            path = receiving.transfer.complete()
        except EdgeMLError as error:
            receiving.transfer.discard()
            self.state, self.detail = "idle", str(error)
            self._result(receiving.command, "refused", str(error))
            return
        self._apply(receiving.command, lambda: self._install_file(path))

    def _install_file(self, path: Path) -> Any:
        try:
            return install_bundle(
                path,
                self.config.state_dir,
                self._current_trust,
                self.config.profile,
                now=self.clock(),
            )
        finally:
            path.unlink(missing_ok=True)

    def _answer_install_of_active(self, command: Command) -> None:
        """An install of the bundle id already active: nothing to do if it is the same file;
        other content under that id (rebuilt, re-signed) is refused, not taken for it."""
        try:
            active = sha256_file(slot_bundle(self.config.state_dir, command.bundle_id))
        except OSError as error:
            detail = f"already active (its file could not be read to compare: {error.strerror})"
            self._result(command, "succeeded", detail)
            return
        if command.bundle_sha256 in (None, active):
            self._result(command, "succeeded", "already active")
            return
        self._result(
            command,
            "refused",
            f"{command.bundle_id} is already active with other content (sha256 {active[:16]}, "
            f"offered {command.bundle_sha256[:16]}): a bundle id names one content; build a new "
            "version",
        )

    def _activate(self, command: Command) -> None:
        state = read_state(self.config.state_dir)
        if state.active is not None and state.active.bundle_id == command.bundle_id:
            self._result(command, "succeeded", "already active")
        elif state.previous is not None and state.previous.bundle_id == command.bundle_id:
            self._apply(command, lambda: rollback(self.config.state_dir, self._current_trust))
        else:
            self._result(command, "refused", f"this device holds no bundle {command.bundle_id}")

    def _apply(self, command: Command, action: Callable[[], Any]) -> None:
        """Run an install or rollback; on success serve the new active bundle."""
        self.state = "installing"
        self.link.publish_status()
        try:
            result = action()
        except EdgeMLError as error:
            self.state, self.detail = "idle", str(error)
            outcome = "refused" if error.exit_code == 3 else "failed"
            log.warning("%s %s: %s", command.kind, outcome, error)
            self._result(command, outcome, str(error))
            return
        self.flush_window(self.clock())  # the old bundle's window closes with it
        self._load_active()
        self.state, self.detail = "idle", ""
        self._result(command, "succeeded", "; ".join(getattr(result, "warnings", ())))
