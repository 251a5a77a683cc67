"""Simulated devices that speak the edgeml MQTT protocol: a thousand and more in one thread.

For developing and testing the fleet side (registry, rollouts, health gates) without a thousand
Raspberry Pis. Each simulated device behaves on the wire as ``edgeml.agent`` does: a retained
status with an offline last will, its own ``commands`` and ``transfer`` topics only, results
``accepted`` then ``succeeded``/``failed``/``refused``, a status after every command, pulled
chunked transfers checked chunk by chunk and as a whole, and a telemetry window (QoS 1, ``seq``
1, 2, 3, ...) every interval while a bundle is active.

Functional core, imperative shell:

* :class:`SimulatedDevice` is one device's state (active and previous bundle, the transfer in
  progress, the telemetry sequence). Its methods take a parsed message and the time and return
  the messages to publish; no I/O, so it is unit-tested without a broker.
* :class:`DeviceBehaviour` says what a device's traffic looks like while a given bundle is
  active (request rate, error rate, latency, drift, whether its self-test fails); a
  ``behaviour`` callable maps the active bundle id to one, which is how a test makes a new
  bundle "bad" and watches a rollout stop.
* :class:`Misbehaviour` makes a device misbehave on the wire as well (issue 7): garbage on its
  own topics (:func:`make_garbage` makes each kind: malformed, oversized, wrong schema, huge
  numbers, another device's id, duplicates, bogus transfer requests, forged results), its
  connection dropped abruptly and taken up again at once (many such devices: a reconnect
  storm), or telemetry far faster than its interval. Pure too: the shell only schedules it.
* :class:`DeviceSimulator` is the shell: one driver thread multiplexes every device's paho
  client through one ``selectors`` selector (epoll on Linux) with paho's external-loop API
  (``loop_read``/``loop_write``/``loop_misc`` and the ``on_socket_*`` callbacks). A thread per
  client, or paho's own ``loop_start``, stops at a few hundred clients (``select()`` cannot
  watch descriptors past 1024). It connects at a bounded rate, reconnects dropped clients with
  back-off, and never lets a malformed message or a failing callback stop the thread.

What it leaves to others: it verifies no bundle signature, runs no model, writes nothing to
disk (a transfer keeps only a running SHA-256, never the bytes) and keeps no outbox across
restarts; it speaks plain MQTT with optional username and password, no TLS. The fleet side
is ``edgeml.fleet`` (or ``tests/protocol_peer.py`` in tests); the real device is
``edgeml.agent``. docs/protocol.md is the reference for every message.

Run it by hand against a broker::

    python -m edgeml.fleet.simulator --broker mqtt://127.0.0.1:1883 --devices 1000 \\
        --profile raspberry-pi-4 --canary 5 --telemetry-interval 5 \\
        --garbage-devices 10 --garbage-per-s 20 --storm-devices 10 --reconnect-every 1.5
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import json
import logging
import random
import resource
import secrets
import selectors
import signal
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import paho.mqtt.client as mqtt

from edgeml.toolkit import __version__
from edgeml.toolkit.protocol import (
    TRANSFER_WINDOW,
    Chunk,
    Command,
    CommandResult,
    Message,
    ProtocolError,
    Status,
    TelemetryWindow,
    TopicKind,
    TransferRequest,
    check_device_id,
    device_topic,
    parse_message,
)

log = logging.getLogger("edgeml.fleet.simulator")

AGENT_VERSION = f"{__version__}+simulated"
DEFAULT_WINDOW_S = 5.0
STALL_S = 10.0
"""No chunk for this long during a transfer: ask again from the current offset (as the agent)."""
MISC_EVERY_S = 1.0
"""How often the driver runs paho's keepalive bookkeeping and the stall checks."""
MAX_SELECT_S = 0.1
DEFAULT_FEATURES = ("x0", "x1", "x2", "x3")
PREDICTION_DRIFT = "__prediction__"


# ------------------------------------------------------------------------------ behaviour


@dataclass(frozen=True)
class DeviceBehaviour:
    """What a device's traffic looks like while one bundle is active.

    Attributes:
        requests_per_window: API requests (one row each) in a full telemetry window; a shorter
            window (closed by an install) gets its share.
        error_rate: the fraction of requests that fail; ``errors = round(requests * rate)``.
        latency_p95_ms: the 95th percentile latency; p50, p99, max and mean follow from it.
        psi: the PSI reported for every feature and for ``__prediction__``.
        fail_install: an install of this bundle fails its golden self-test: outcome
            ``failed``, and the device keeps what it ran.
        features: the feature names that ``drift_psi`` reports.
    """

    requests_per_window: int = 600
    error_rate: float = 0.0
    latency_p95_ms: float = 12.0
    psi: float = 0.02
    fail_install: bool = False
    features: tuple[str, ...] = DEFAULT_FEATURES

    def __post_init__(self) -> None:
        if self.requests_per_window < 0:
            raise ValueError("requests_per_window must be at least 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be in [0, 1]")
        if self.latency_p95_ms <= 0:
            raise ValueError("latency_p95_ms must be positive")
        if self.psi < 0:
            raise ValueError("psi must be at least 0")

    def latency_ms(self) -> dict[str, float]:
        """The window's latency figures, derived from the p95."""
        p95 = self.latency_p95_ms
        figures = {"p50": 0.5 * p95, "p95": p95, "p99": 1.5 * p95, "max": 2.5 * p95}
        figures["mean"] = 0.6 * p95
        return {name: round(value, 3) for name, value in figures.items()}

    def drift_psi(self) -> dict[str, float]:
        """PSI per feature and for the predictions."""
        return {name: self.psi for name in (*self.features, PREDICTION_DRIFT)}


HEALTHY = DeviceBehaviour()

BehaviourOf = Callable[[str | None], DeviceBehaviour]
"""Maps the active bundle id (None: nothing installed) to the traffic it produces."""


def healthy(_bundle_id: str | None) -> DeviceBehaviour:
    """The default behaviour: every bundle is healthy and installs."""
    return HEALTHY


# ------------------------------------------------------------------------------ the core


@dataclass(frozen=True)
class Outgoing:
    """A message a device publishes on one of its own topics (QoS 1; statuses retained)."""

    kind: TopicKind
    message: Message

    @property
    def retain(self) -> bool:
        """Statuses are retained; nothing else is."""
        return self.kind == "status"


@dataclass
class Transfer:
    """The install whose bundle is arriving: how far it got and the hash so far."""

    command: Command
    offset: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    requested_up_to: int = 0
    progress_at: float = 0.0

    @property
    def size(self) -> int:
        """The announced bundle size in bytes."""
        return self.command.bundle_size or 0

    def same_bundle(self, command: Command) -> bool:
        """Whether ``command`` announces the same bundle (then the transfer resumes)."""
        mine = self.command
        return (mine.bundle_id, mine.bundle_size, mine.bundle_sha256) == (
            command.bundle_id,
            command.bundle_size,
            command.bundle_sha256,
        )


@dataclass(eq=False)
class SimulatedDevice:
    """One simulated device's state, and what it answers to each message.

    Every method that reacts returns the messages to publish, in order; nothing here does I/O.
    ``now`` is Unix time (it goes into the messages).

    Attributes:
        device_id: the device id (``[A-Za-z0-9._-]{1,64}``).
        profile: its hardware profile.
        tags: its tags (e.g. ``canary``).
        active: the bundle it serves, if any.
        previous: the bundle it can roll back to, if any.
        seq: the last telemetry window's ``seq`` (0: none yet).
        state: ``idle``, ``receiving`` or ``installing``.
        detail: a human note, e.g. why the last install failed.
        transfer: the install in progress.
        window_start: when the current telemetry window opened (None until first connected).
        dropped_windows: windows the client could not queue, reported with the next window.
        stream: its telemetry stream id (a new one per simulated device, as an agent's new
            outbox takes; ``seq`` numbers windows within it).
    """

    device_id: str
    profile: str | None = None
    tags: tuple[str, ...] = ()
    active: str | None = None
    previous: str | None = None
    seq: int = 0
    state: str = "idle"
    detail: str = ""
    transfer: Transfer | None = None
    window_start: float | None = None
    dropped_windows: int = 0
    stream: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        self.tags = tuple(self.tags)

    # -------------------------------------------------------------------- what it says

    def status(self, online: bool, now: float) -> Status:
        """The device's status message (``online=False`` is its last will and its goodbye)."""
        return Status(
            device_id=self.device_id,
            online=online,
            sent_at=now,
            profile=self.profile,
            tags=list(self.tags),
            active=self.active,
            previous=self.previous,
            state=self.state if online else "offline",
            agent_version=AGENT_VERSION,
            detail=self.detail[:2048],
        )

    def connected(self, now: float) -> list[Outgoing]:
        """The broker accepted the connection: say who we are, resume a transfer."""
        if self.window_start is None:
            self.window_start = now
        out = [Outgoing("status", self.status(True, now))]
        if self.transfer is not None:
            out.append(self._request_chunks(self.transfer, now))
        return out

    def telemetry(
        self, now: float, behaviour: BehaviourOf = healthy, window_s: float = DEFAULT_WINDOW_S
    ) -> TelemetryWindow | None:
        """Close the current telemetry window at ``now`` and open the next.

        Returns:
            The window, or None when no bundle is active (nothing served, nothing to say)
            or the device never connected yet.
        """
        start = self.window_start
        if start is None:
            return None
        self.window_start = now
        if self.active is None:
            return None
        traffic = behaviour(self.active)
        share = (now - start) / window_s if window_s > 0 else 1.0
        requests = max(0, round(traffic.requests_per_window * share))
        errors = min(requests, round(requests * traffic.error_rate))
        scored = requests - errors
        self.seq += 1
        window = TelemetryWindow(
            device_id=self.device_id,
            seq=self.seq,
            window_start=start,
            window_end=max(start, now),
            bundle_id=self.active,
            requests=requests,
            rows=requests,
            errors=errors,
            contract_violations=0,
            latency_ms=traffic.latency_ms(),
            predictions={"0": scored // 2, "1": scored - scored // 2},
            drift_psi=traffic.drift_psi(),
            dropped_windows=self.dropped_windows,
            stream=self.stream,
        )
        self.dropped_windows = 0
        return window

    def window_dropped(self, window: TelemetryWindow) -> None:
        """The client could not queue ``window``: report it (and what it carried) as dropped."""
        self.dropped_windows += 1 + window.dropped_windows

    # -------------------------------------------------------------------- what it hears

    def handle(
        self,
        message: Message,
        now: float,
        behaviour: BehaviourOf = healthy,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> list[Outgoing]:
        """React to a command or a chunk from the fleet.

        Args:
            message: a parsed :class:`Command` or :class:`Chunk`; anything else is ignored.
            now: Unix time.
            behaviour: the traffic of each bundle (decides whether an install's self-test
                fails, and what the window closed by a bundle change reports).
            window_s: the telemetry interval (to size a window an install cuts short).

        Returns:
            The messages to publish, in order.
        """
        if isinstance(message, Command):
            return self._command(message, now, behaviour, window_s)
        if isinstance(message, Chunk):
            return self._chunk(message, now, behaviour, window_s)
        return []

    def retry_if_stalled(self, now: float) -> list[Outgoing]:
        """No chunk for :data:`STALL_S`: ask again from the current offset (a chunk was lost)."""
        transfer = self.transfer
        if transfer is None or now - transfer.progress_at < STALL_S:
            return []
        return [self._request_chunks(transfer, now)]

    # -------------------------------------------------------------------- commands

    def _command(
        self, command: Command, now: float, behaviour: BehaviourOf, window_s: float
    ) -> list[Outgoing]:
        if command.kind == "ping":
            return self._result(command, "succeeded", now, "pong")
        if command.kind == "install":
            return self._start_install(command, now)
        if command.kind == "rollback":
            if self.previous is None:
                return self._failed_apply(command, now, "no previous bundle to roll back to")
            return self._switch(command, self.previous, self.active, now, behaviour, window_s)
        if command.kind == "activate":
            if command.bundle_id is not None and command.bundle_id == self.active:
                return self._result(command, "succeeded", now, "already active")
            if command.bundle_id is not None and command.bundle_id == self.previous:
                return self._switch(command, self.previous, self.active, now, behaviour, window_s)
            return self._result(
                command, "refused", now, f"this device holds no bundle {command.bundle_id}"
            )
        return []

    def _start_install(self, command: Command, now: float) -> list[Outgoing]:
        if command.bundle_id == self.active:
            return self._result(command, "succeeded", now, "already active")
        if command.bundle_id is None or not command.bundle_size or not command.bundle_sha256:
            return self._result(
                command, "refused", now, f"command {command.command_id} announces no bundle"
            )
        old = self.transfer
        if old is not None and old.same_bundle(command):
            # The bytes of the earlier attempt are kept: resume where it stopped.
            transfer = Transfer(command, old.offset, old.digest, 0, now)
        else:
            transfer = Transfer(command, progress_at=now)
        self.transfer = transfer
        self.state = "receiving"
        detail = f"resuming at byte {transfer.offset}" if transfer.offset else ""
        out = self._result(command, "accepted", now, detail)
        out.append(self._request_chunks(transfer, now))
        return out

    def _request_chunks(self, transfer: Transfer, now: float) -> Outgoing:
        transfer.progress_at = now
        transfer.requested_up_to = transfer.offset + TRANSFER_WINDOW * transfer.command.chunk_size
        command = transfer.command
        return Outgoing(
            "events", TransferRequest(command.command_id, command.bundle_id or "", transfer.offset)
        )

    def _chunk(
        self, chunk: Chunk, now: float, behaviour: BehaviourOf, window_s: float
    ) -> list[Outgoing]:
        transfer = self.transfer
        if transfer is None or chunk.command_id != transfer.command.command_id:
            return []  # a stale chunk of a finished or replaced transfer
        try:
            payload = chunk.payload()
        except ProtocolError:
            return []  # corrupt: ignored, asked for again later
        if chunk.bundle_id != transfer.command.bundle_id or chunk.total_size != transfer.size:
            return []  # foreign
        if chunk.offset + len(payload) > transfer.size:
            self.transfer = None
            return self._give_up(
                transfer.command,
                "refused",
                now,
                f"{chunk.bundle_id}: a chunk of {len(payload)} bytes at offset {chunk.offset} "
                f"goes past the announced size of {transfer.size} bytes; transfer aborted",
            )
        if not payload or chunk.offset != transfer.offset:
            return []  # empty, a duplicate, or out of order
        transfer.digest.update(payload)
        transfer.offset += len(payload)
        transfer.progress_at = now
        if transfer.offset == transfer.size:
            return self._finish(transfer, now, behaviour, window_s)
        if transfer.offset >= transfer.requested_up_to:
            return [self._request_chunks(transfer, now)]
        return []

    def _finish(
        self, transfer: Transfer, now: float, behaviour: BehaviourOf, window_s: float
    ) -> list[Outgoing]:
        self.transfer = None
        command = transfer.command
        bundle_id = command.bundle_id or ""
        digest = transfer.digest.hexdigest()
        if digest != command.bundle_sha256:
            return self._give_up(
                command,
                "refused",
                now,
                f"{bundle_id}: the received file has sha256 {digest[:16]}…, the announced one "
                f"is {(command.bundle_sha256 or '')[:16]}…; partial file removed",
            )
        if behaviour(bundle_id).fail_install:
            return self._failed_apply(
                command,
                now,
                f"{bundle_id}: golden self-test failed on row(s) 0, 1, 2: outputs differ beyond "
                "the bundle's tolerance (simulated)",
            )
        return self._switch(command, bundle_id, self.active, now, behaviour, window_s)

    def _switch(
        self,
        command: Command,
        active: str | None,
        previous: str | None,
        now: float,
        behaviour: BehaviourOf,
        window_s: float,
    ) -> list[Outgoing]:
        """Install or roll back: announce ``installing``, close the old bundle's window, swap."""
        self.state = "installing"
        out = [Outgoing("status", self.status(True, now))]
        window = self.telemetry(now, behaviour, window_s)  # the old bundle's window ends here
        if window is not None:
            out.append(Outgoing("telemetry", window))
        self.active, self.previous = active, previous
        self.detail = ""
        self.state = self._resting_state()
        return out + self._result(command, "succeeded", now)

    def _failed_apply(self, command: Command, now: float, detail: str) -> list[Outgoing]:
        self.state = "installing"
        out = [Outgoing("status", self.status(True, now))]
        return out + self._give_up(command, "failed", now, detail)

    def _give_up(self, command: Command, outcome: str, now: float, detail: str) -> list[Outgoing]:
        self.state = self._resting_state()
        self.detail = detail
        return self._result(command, outcome, now, detail)

    def _resting_state(self) -> str:
        return "receiving" if self.transfer is not None else "idle"

    def _result(
        self, command: Command, outcome: str, now: float, detail: str = ""
    ) -> list[Outgoing]:
        result = CommandResult(
            command_id=command.command_id,
            kind=command.kind,
            outcome=outcome,
            sent_at=now,
            detail=detail[:4096],
            bundle_id=command.bundle_id,
            active=self.active,
            previous=self.previous,
        )
        return [Outgoing("events", result), Outgoing("status", self.status(True, now))]


def make_devices(
    n: int,
    profile: str | None,
    *,
    tags_for: Callable[[int], Sequence[str]] = lambda _i: (),
    active: str | None = None,
    prefix: str = "sim",
) -> list[SimulatedDevice]:
    """``n`` devices ``{prefix}-00000``, ``{prefix}-00001``, ...

    Args:
        n: how many.
        profile: their hardware profile.
        tags_for: the tags of device ``i``, e.g. ``lambda i: ("canary",) if i < 5 else ()``.
        active: the bundle every device starts with (None: nothing installed, no telemetry).
        prefix: the device id prefix.
    """
    return [
        SimulatedDevice(f"{prefix}-{i:05d}", profile, tuple(tags_for(i)), active=active)
        for i in range(n)
    ]


# ------------------------------------------------------------------------------ misbehaviour


GARBAGE_KINDS: tuple[str, ...] = (
    "not-json",
    "oversized",
    "wrong-schema",
    "huge-number",
    "foreign-device",
    "duplicate-window",
    "bogus-transfer",
    "forged-result",
)
"""What a misbehaving device sends besides its protocol traffic, on its own topics:

* ``not-json``: bytes that are not UTF-8 JSON (truncated JSON, binary, nothing);
* ``oversized``: :data:`OVERSIZED_BYTES` of JSON, over the protocol's message limit;
* ``wrong-schema``: JSON that is no message of its topic (a list, an unknown type, a status on
  the telemetry topic, a field of the wrong type, a window that ends before it starts);
* ``huge-number``: a window whose number is past its field's range (``seq`` of 10^40), not
  finite (``1e999``), or longer than Python converts (5,000 digits);
* ``foreign-device``: a valid window that names another device than its topic's;
* ``duplicate-window``: one of its own recent windows, sent again byte for byte;
* ``bogus-transfer``: a transfer request under a command the fleet never sent it;
* ``forged-result``: an install result ``succeeded`` for a command the fleet never sent it.
"""
DROPPED_GARBAGE = frozenset(GARBAGE_KINDS[:5])
"""The kinds a fleet must drop as they arrive (malformed, or naming another device); the
others are valid messages that it must not act on (a duplicate is stored once, a bogus
request gets no chunk, a forged result never moves a rollout)."""
OVERSIZED_BYTES = 300 * 1024


@dataclass(frozen=True)
class Misbehaviour:
    """How one simulated device misbehaves on the wire, on top of behaving as a device.

    The device still answers commands, installs and sends its telemetry; a rollout may still
    count on it.

    Attributes:
        garbage_per_s: garbage messages per second (QoS 1, never retained), the kinds of
            ``garbage`` in turn; none while disconnected.
        garbage: the kinds of garbage, from :data:`GARBAGE_KINDS`.
        reconnect_every_s: drop the connection abruptly this often on average (uniformly
            between half and one and a half times it): the socket is shut without a
            DISCONNECT, so the broker publishes the device's last will; the device connects
            again at once, with no back-off. Many devices doing it make a reconnect storm.
            None: never.
        flood_windows_per_s: send telemetry windows this often instead of every telemetry
            interval (each a real window with the next ``seq``, its requests in proportion
            to its span): a device whose configuration or clock runs too fast. 0: the
            simulator's interval.
    """

    garbage_per_s: float = 0.0
    garbage: tuple[str, ...] = GARBAGE_KINDS
    reconnect_every_s: float | None = None
    flood_windows_per_s: float = 0.0

    def __post_init__(self) -> None:
        if self.garbage_per_s < 0:
            raise ValueError("garbage_per_s must be at least 0")
        unknown = sorted(set(self.garbage) - set(GARBAGE_KINDS))
        if unknown:
            raise ValueError(f"unknown garbage kinds: {', '.join(unknown)}")
        if self.garbage_per_s > 0 and not self.garbage:
            raise ValueError("garbage_per_s needs at least one kind of garbage")
        if self.reconnect_every_s is not None and self.reconnect_every_s <= 0:
            raise ValueError("reconnect_every_s must be positive")
        if self.flood_windows_per_s < 0:
            raise ValueError("flood_windows_per_s must be at least 0")

    def garbage_kind(self, serial: int) -> str:
        """The kind of the ``serial``-th garbage message (0, 1, 2, ...): the kinds in turn."""
        return self.garbage[serial % len(self.garbage)]


@dataclass(frozen=True)
class Garbage:
    """One garbage message: its kind, the device's own topic it goes to, its bytes."""

    kind: str
    topic: TopicKind
    payload: bytes


@lru_cache(maxsize=1)
def _padding(size: int) -> bytes:
    return b"x" * size


def _window_dict(device: SimulatedDevice, now: float) -> dict[str, Any]:
    """A valid window's fields, for garbage to spoil."""
    return TelemetryWindow(
        device_id=device.device_id,
        seq=max(1, device.seq),
        window_start=now - 1.0,
        window_end=now,
        bundle_id=device.active,
        requests=10,
        rows=10,
        errors=0,
        contract_violations=0,
        latency_ms={"p50": 1.0, "p95": 2.0},
        predictions={"0": 5, "1": 5},
        drift_psi={},
    ).to_dict()


def _json(data: Any, **raw: str) -> bytes:
    """``data`` as JSON, each string ``"@NAME@"`` in it replaced by the raw text ``raw[NAME]``
    (for numbers that ``json.dumps`` will not write)."""
    text = json.dumps(data, separators=(",", ":"))
    for name, value in raw.items():
        text = text.replace(f'"@{name}@"', value)
    return text.encode()


def make_garbage(
    device: SimulatedDevice,
    kind: str,
    now: float,
    serial: int = 0,
    old_window: TelemetryWindow | None = None,
) -> Garbage | None:
    """One garbage message of ``kind`` from ``device`` (pure: nothing is sent).

    Args:
        device: the misbehaving device (its id, bundles and ``seq`` go into the garbage).
        kind: one of :data:`GARBAGE_KINDS`.
        now: Unix time.
        serial: how many garbage messages of this kind the device sent before (0, 1, 2,
            ...): picks the variant (and the topic of ``not-json``) and makes ids unique.
        old_window: a window the device sent before, for ``duplicate-window``.

    Returns:
        The message, or None when ``kind`` cannot be made now (a duplicate before any window).
    """
    device_id = device.device_id
    bundle_id = device.active or device.previous or "none-0.0.0-none"
    if kind == "not-json":
        topic: TopicKind = ("status", "telemetry", "events")[serial % 3]
        variants = (b'{"type": "telemetry", "device_id": "', b"\xff\xfe\x00garbage\x80", b"")
        return Garbage(kind, topic, variants[(serial // 3) % len(variants)])
    if kind == "oversized":
        head = b'{"type":"telemetry","device_id":"' + device_id.encode() + b'","pad":"'
        return Garbage(kind, "telemetry", head + _padding(OVERSIZED_BYTES) + b'"}')
    if kind == "wrong-schema":
        window = _window_dict(device, now)
        variant = serial % 5
        if variant == 0:
            status = {"type": "status", "device_id": device_id, "online": "yes", "sent_at": now}
            return Garbage(kind, "status", _json(status))
        if variant == 1:
            return Garbage(kind, "telemetry", _json([1, 2, 3]))
        if variant == 2:
            return Garbage(kind, "events", _json({"type": "gossip", "device_id": device_id}))
        if variant == 3:
            return Garbage(kind, "telemetry", device.status(True, now).to_bytes())
        window["window_end"] = window["window_start"] - 60.0
        return Garbage(kind, "telemetry", _json(window))
    if kind == "huge-number":
        window = _window_dict(device, now)
        variant = serial % 3
        if variant == 0:
            window["seq"] = 10**40
            return Garbage(kind, "telemetry", _json(window))
        if variant == 1:
            window["requests"] = "@N@"
            return Garbage(kind, "telemetry", _json(window, N="1e999"))
        window["errors"] = "@N@"
        return Garbage(kind, "telemetry", _json(window, N="9" * 5000))
    if kind == "foreign-device":
        window = _window_dict(device, now)
        window["device_id"] = f"ghost-{device_id}"[:64]
        return Garbage(kind, "telemetry", _json(window))
    if kind == "duplicate-window":
        if old_window is None:
            return None
        return Garbage(kind, "telemetry", old_window.to_bytes())
    if kind == "bogus-transfer":
        request = TransferRequest(f"bogus-{device_id}-{serial}"[:128], bundle_id, 0)
        return Garbage(kind, "events", request.to_bytes())
    if kind == "forged-result":
        result = CommandResult(
            command_id=f"forged-{device_id}-{serial}"[:128],
            kind="install",
            outcome="succeeded",
            sent_at=now,
            bundle_id=bundle_id,
            active=device.active,
            previous=device.previous,
        )
        return Garbage(kind, "events", result.to_bytes())
    raise ValueError(f"unknown garbage kind {kind!r}")


# ------------------------------------------------------------------------------ the shell


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it).

    Returns:
        The soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, error)
        return soft
    return target


@dataclass(eq=False)
class _Link:
    """One device's paho client and its connection bookkeeping (driver thread only)."""

    device: SimulatedDevice
    client: mqtt.Client
    topics: dict[str, str]
    connected: bool = False
    ever_connected: bool = False
    connect_queued: bool = False
    backoff_s: float = 0.0
    write_watched: bool = False
    interval_s: float = DEFAULT_WINDOW_S
    misbehaviour: Misbehaviour | None = None
    last_window: TelemetryWindow | None = None
    garbage_sent: dict[str, int] = field(default_factory=dict)
    dropping: bool = False


Credentials = Callable[[str], tuple[str, str | None]]
"""Maps a device id to its (username, password) on the broker."""


class DeviceSimulator:
    """Many simulated devices on one broker, driven by one thread.

    Counters are written by the driver thread only; read them from anywhere (they are
    snapshots). ``devices`` are the simulator's own from :meth:`start` on: read them, do not
    change them while it runs. A simulator starts once; make a new one to start again.

    Attributes:
        connected: devices connected now (the broker accepted their CONNECT).
        windows_sent: telemetry windows handed to the clients (a disconnected client keeps
            them and sends them after reconnecting).
        windows_dropped: windows a client could not keep (its queue was full).
        installs_succeeded: install results ``succeeded`` (``already active`` included).
        installs_failed: install results ``failed`` or ``refused``.
        messages_received: valid commands and chunks received.
        messages_dropped: malformed or foreign messages, logged and dropped.
        reconnects: connections after a device's first.
        connect_failures: TCP connects that failed (the broker down or unreachable).
        garbage_sent: garbage messages the misbehaving devices handed to their clients;
            ``garbage_by_kind`` counts them per kind.
        connection_drops: connections the misbehaving devices dropped on purpose.
        driver_cpu_s: CPU seconds the driver thread used.

    Args:
        host: the broker's host.
        port: the broker's port.
        devices: the devices (unique ids).
        telemetry_interval_s: each device with an active bundle publishes a window this often.
        behaviour: the traffic of each bundle (default: every bundle healthy).
        credentials: a device's username and password, if the broker wants them.
        connect_rate: new connections per second at most (no SYN flood on the broker).
        keepalive_s: the MQTT keepalive.
        reconnect_min_s: the first back-off after a lost or failed connection; it doubles...
        reconnect_max_s: ...up to this.
        max_queued_messages: QoS 1 messages a client keeps while disconnected; telemetry
            windows past that are dropped and reported in the next window.
        clock: Unix time, for the messages.
        misbehaviour: device id to how that device misbehaves (garbage, reconnect storms,
            telemetry floods); the others behave.
    """

    def __init__(
        self,
        host: str,
        port: int,
        devices: Sequence[SimulatedDevice],
        *,
        telemetry_interval_s: float = DEFAULT_WINDOW_S,
        behaviour: BehaviourOf = healthy,
        credentials: Credentials | None = None,
        connect_rate: float = 1000.0,
        keepalive_s: int = 60,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_queued_messages: int = 1000,
        clock: Callable[[], float] = time.time,
        misbehaviour: Mapping[str, Misbehaviour] | None = None,
    ) -> None:
        if telemetry_interval_s <= 0:
            raise ValueError("telemetry_interval_s must be positive")
        if connect_rate <= 0:
            raise ValueError("connect_rate must be positive")
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            raise ValueError("device ids must be unique")
        misbehaviour = dict(misbehaviour or {})
        strangers = sorted(set(misbehaviour) - set(ids))
        if strangers:
            raise ValueError(f"misbehaviour for unknown devices: {', '.join(strangers[:5])}")
        self.host, self.port = host, port
        self.devices = list(devices)
        self.telemetry_interval_s = telemetry_interval_s
        self.behaviour = behaviour
        self.connect_rate = connect_rate
        self.keepalive_s = keepalive_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.clock = clock
        # counters
        self.connected = 0
        self.windows_sent = 0
        self.windows_dropped = 0
        self.installs_succeeded = 0
        self.installs_failed = 0
        self.messages_received = 0
        self.messages_dropped = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.garbage_sent = 0
        self.garbage_by_kind: Counter[str] = Counter()
        self.connection_drops = 0
        self.driver_cpu_s = 0.0
        # driver state
        self._links = [
            self._make_link(device, credentials, max_queued_messages) for device in self.devices
        ]
        for link in self._links:
            link.misbehaviour = misbehaviour.get(link.device.device_id)
            flood = link.misbehaviour.flood_windows_per_s if link.misbehaviour else 0.0
            link.interval_s = 1.0 / flood if flood > 0 else telemetry_interval_s
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._shutting_down = False
        self._pending_write: dict[_Link, None] = {}
        self._connects: list[tuple[float, int, _Link]] = []
        self._telemetry: list[tuple[float, int, _Link]] = []
        self._chores: list[tuple[float, int, _Link, str]] = []
        self._order = 0
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._connect_pause_until = 0.0
        self._next_misc = 0.0

    # -------------------------------------------------------------------- public

    def start(self) -> None:
        """Raise the open file limit, then connect every device from one driver thread."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        raise_open_file_limit()
        self._selector = selectors.DefaultSelector()
        now = time.monotonic()
        self._tokens, self._tokens_at = 1.0, now
        self._next_misc = now + MISC_EVERY_S
        for link in self._links:
            self._queue_connect(link, now)
        self._thread = threading.Thread(target=self._drive, name="edgeml-simulator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish every connected device's offline status (retained), disconnect, join."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the simulator's driver thread did not stop within %.1f s", timeout)

    def wait_connected(self, timeout: float = 30.0, count: int | None = None) -> bool:
        """Wait until ``count`` devices (default: all) are connected; False on timeout."""
        wanted = len(self._links) if count is None else count
        deadline = time.monotonic() + timeout
        while self.connected < wanted:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def counters(self) -> dict[str, float]:
        """A snapshot of every counter."""
        return {
            "devices": len(self._links),
            "connected": self.connected,
            "windows_sent": self.windows_sent,
            "windows_dropped": self.windows_dropped,
            "installs_succeeded": self.installs_succeeded,
            "installs_failed": self.installs_failed,
            "messages_received": self.messages_received,
            "messages_dropped": self.messages_dropped,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "garbage_sent": self.garbage_sent,
            "connection_drops": self.connection_drops,
            "driver_cpu_s": round(self.driver_cpu_s, 3),
        }

    # -------------------------------------------------------------------- clients

    def _make_link(
        self,
        device: SimulatedDevice,
        credentials: Credentials | None,
        max_queued_messages: int,
    ) -> _Link:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgeml-{device.device_id}",
            clean_session=False,
        )
        topics = {
            kind: device_topic(device.device_id, kind)
            for kind in ("status", "telemetry", "events", "commands", "transfer")
        }
        link = _Link(device, client, topics)
        client.user_data_set(link)
        if credentials is not None:
            client.username_pw_set(*credentials(device.device_id))
        # A simulated device may have many messages in flight; a real one bounds telemetry.
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(max_queued_messages)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.connect_async(self.host, self.port, keepalive=self.keepalive_s)  # no I/O yet
        return link

    def _send(self, link: _Link, outgoing: Outgoing) -> None:
        message = outgoing.message
        info = link.client.publish(
            link.topics[outgoing.kind], message.to_bytes(), qos=1, retain=outgoing.retain
        )
        if isinstance(message, TelemetryWindow):
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                link.device.window_dropped(message)
                self.windows_dropped += 1
            else:
                self.windows_sent += 1
                if link.misbehaviour is not None:  # a duplicate-window garbage repeats it
                    link.last_window = message
        elif isinstance(message, CommandResult) and message.kind == "install":
            if message.outcome == "succeeded":
                self.installs_succeeded += 1
            elif message.outcome in ("failed", "refused"):
                self.installs_failed += 1

    def _send_all(self, link: _Link, outgoing: list[Outgoing]) -> None:
        for item in outgoing:
            self._send(link, item)

    # paho callbacks: all run on the driver thread, inside loop_read/loop_write/reconnect.

    def _on_connect(
        self, client: mqtt.Client, link: _Link, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused %s: %s", link.device.device_id, reason)
            return  # paho closes the socket; _on_disconnect schedules the retry
        try:
            link.connected = True
            self.connected += 1
            link.backoff_s = 0.0
            if link.ever_connected:
                self.reconnects += 1
            else:
                link.ever_connected = True
                self._schedule_window(link, time.monotonic() + link.interval_s)
                self._schedule_misbehaviour(link, time.monotonic())
            client.subscribe([(link.topics["commands"], 1), (link.topics["transfer"], 1)])
            self._send_all(link, link.device.connected(self.clock()))
        except Exception:
            log.exception("handling the connection of %s failed", link.device.device_id)

    def _on_disconnect(
        self, _client: mqtt.Client, link: _Link, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if link.connected:
            link.connected = False
            self.connected -= 1
            if not self._shutting_down:
                log.info("%s lost its connection: %s", link.device.device_id, reason)
        if not self._shutting_down:
            # A connection dropped on purpose (a reconnect storm) comes back at once.
            self._queue_connect(link, time.monotonic(), backoff=not link.dropping)
        link.dropping = False

    def _on_message(self, _client: mqtt.Client, link: _Link, message: mqtt.MQTTMessage) -> None:
        device = link.device
        if message.topic == link.topics["commands"]:
            kind = "commands"
        elif message.topic == link.topics["transfer"]:
            kind = "transfer"
        else:
            self.messages_dropped += 1
            log.warning(
                "%s dropped a message on a foreign topic %s", device.device_id, message.topic
            )
            return
        try:
            parsed = parse_message(message.payload, kind)
        except ProtocolError as error:
            self.messages_dropped += 1
            log.warning("%s dropped a message on %s: %s", device.device_id, message.topic, error)
            return
        self.messages_received += 1
        try:
            outgoing = device.handle(
                parsed, self.clock(), self.behaviour, self.telemetry_interval_s
            )
            self._send_all(link, outgoing)
        except Exception:  # a bug must not stop the driver thread
            log.exception("%s failed to handle a %s message", device.device_id, kind)

    def _on_socket_open(self, _client: mqtt.Client, link: _Link, sock: Any) -> None:
        assert self._selector is not None
        self._selector.register(sock, selectors.EVENT_READ, link)
        link.write_watched = False

    def _on_socket_close(self, _client: mqtt.Client, link: _Link, sock: Any) -> None:
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        link.write_watched = False
        self._pending_write.pop(link, None)

    def _on_socket_register_write(self, _client: mqtt.Client, link: _Link, _sock: Any) -> None:
        # paho queued bytes: try writing them at the end of this driver iteration, and only
        # ask the selector about writability when the socket's buffer is full.
        self._pending_write[link] = None

    def _on_socket_unregister_write(self, _client: mqtt.Client, link: _Link, sock: Any) -> None:
        self._pending_write.pop(link, None)
        if link.write_watched:
            link.write_watched = False
            assert self._selector is not None
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(sock, selectors.EVENT_READ, link)

    # -------------------------------------------------------------------- the driver

    def _drive(self) -> None:
        cpu_at_start = time.thread_time()
        try:
            while not self._stopping.is_set():
                self._iterate()
                self.driver_cpu_s = time.thread_time() - cpu_at_start
            self._shutdown()
        except Exception:
            log.exception("the simulator's driver thread failed")
        finally:
            self.driver_cpu_s = time.thread_time() - cpu_at_start
            if self._selector is not None:
                self._selector.close()

    def _iterate(self) -> None:
        assert self._selector is not None
        now = time.monotonic()
        events = self._selector.select(self._timeout(now))
        self._serve_events(events)
        now = time.monotonic()
        self._guarded(self._connect_due, now)
        self._guarded(self._telemetry_due, now)
        if self._chores:
            self._guarded(self._chores_due, now)
        if now >= self._next_misc:
            self._next_misc = now + MISC_EVERY_S
            self._guarded(self._misc)
        self._flush_writes()

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception:
            log.exception("simulator step %s failed", step.__name__)

    def _timeout(self, now: float) -> float:
        wake = self._next_misc
        if self._telemetry:
            wake = min(wake, self._telemetry[0][0])
        if self._chores:
            wake = min(wake, self._chores[0][0])
        if self._connects:
            due = max(self._connects[0][0], self._connect_pause_until)
            if self._tokens < 1:
                due = max(due, now + (1 - self._tokens) / self.connect_rate)
            wake = min(wake, due)
        return min(MAX_SELECT_S, max(0.0, wake - now))

    def _serve_events(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in events:
            link: _Link = key.data
            client = link.client
            try:
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
            except Exception:
                log.exception("network I/O of %s failed", link.device.device_id)

    def _flush_writes(self) -> None:
        assert self._selector is not None
        pending, self._pending_write = self._pending_write, {}
        for link in pending:
            client = link.client
            try:
                if client.socket() is None:
                    continue
                client.loop_write()
                sock = client.socket()
                if sock is not None and client.want_write() and not link.write_watched:
                    self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, link)
                    link.write_watched = True
            except Exception:
                log.exception("writing for %s failed", link.device.device_id)

    def _queue_connect(self, link: _Link, now: float, backoff: bool = False) -> None:
        if link.connect_queued:
            return
        link.connect_queued = True
        delay = 0.0
        if backoff:
            link.backoff_s = min(
                self.reconnect_max_s, max(self.reconnect_min_s, link.backoff_s * 2)
            )
            delay = link.backoff_s * random.uniform(0.5, 1.0)
        self._order += 1
        heapq.heappush(self._connects, (now + delay, self._order, link))

    def _connect_due(self, now: float) -> None:
        self._tokens = min(
            max(1.0, self.connect_rate * 0.05),
            self._tokens + (now - self._tokens_at) * self.connect_rate,
        )
        self._tokens_at = now
        while (
            self._connects
            and self._connects[0][0] <= now
            and self._tokens >= 1
            and now >= self._connect_pause_until
        ):
            _, _, link = heapq.heappop(self._connects)
            link.connect_queued = False
            client = link.client
            if link.connected or client.socket() is not None:
                continue
            self._tokens -= 1
            device = link.device
            # The will says what the device runs now, not what it ran when it first connected.
            client.will_set(
                link.topics["status"],
                device.status(False, self.clock()).to_bytes(),
                qos=1,
                retain=True,
            )
            try:
                client.reconnect()  # the TCP connect itself blocks: paho has no async connect
            except OSError as error:
                self.connect_failures += 1
                log.info("%s cannot connect: %s", device.device_id, error)
                self._queue_connect(link, now, backoff=True)
                # The broker is likely down for everyone: one probe per back-off, not a storm.
                self._connect_pause_until = now + self.reconnect_min_s
                return

    def _schedule_window(self, link: _Link, due: float) -> None:
        self._order += 1
        heapq.heappush(self._telemetry, (due, self._order, link))

    def _telemetry_due(self, now: float) -> None:
        wall = self.clock()
        while self._telemetry and self._telemetry[0][0] <= now:
            due, _, link = heapq.heappop(self._telemetry)
            interval = link.interval_s
            self._schedule_window(link, due + interval if due + interval > now else now + interval)
            try:
                window = link.device.telemetry(wall, self.behaviour, self.telemetry_interval_s)
                if window is not None:
                    self._send(link, Outgoing("telemetry", window))
            except Exception:
                log.exception("the telemetry of %s failed", link.device.device_id)

    def _schedule_misbehaviour(self, link: _Link, now: float) -> None:
        """A misbehaving device's first garbage and first drop, at random phases."""
        misbehaviour = link.misbehaviour
        if misbehaviour is None:
            return
        if misbehaviour.garbage_per_s > 0:
            self._schedule_chore(
                link, "garbage", now + random.uniform(0, 1 / misbehaviour.garbage_per_s)
            )
        if misbehaviour.reconnect_every_s is not None:
            self._schedule_chore(
                link, "drop", now + misbehaviour.reconnect_every_s * random.uniform(0.5, 1.5)
            )

    def _schedule_chore(self, link: _Link, chore: str, due: float) -> None:
        self._order += 1
        heapq.heappush(self._chores, (due, self._order, link, chore))

    def _chores_due(self, now: float) -> None:
        wall = self.clock()
        while self._chores and self._chores[0][0] <= now:
            due, _, link, chore = heapq.heappop(self._chores)
            misbehaviour = link.misbehaviour
            if misbehaviour is None:  # pragma: no cover - only misbehaving links have chores
                continue
            try:
                if chore == "garbage":
                    period = 1 / misbehaviour.garbage_per_s
                    self._schedule_chore(
                        link, chore, due + period if due + period > now else now + period
                    )
                    if link.connected:
                        self._send_garbage(link, misbehaviour, wall)
                else:
                    every = misbehaviour.reconnect_every_s or 1.0
                    self._schedule_chore(link, chore, now + every * random.uniform(0.5, 1.5))
                    if link.connected:
                        self._drop(link)
            except Exception:
                log.exception("the %s of %s failed", chore, link.device.device_id)

    def _send_garbage(self, link: _Link, misbehaviour: Misbehaviour, wall: float) -> None:
        total = sum(link.garbage_sent.values())
        kind = misbehaviour.garbage_kind(total)
        serial = link.garbage_sent.get(kind, 0)
        link.garbage_sent[kind] = serial + 1
        garbage = make_garbage(link.device, kind, wall, serial, link.last_window)
        if garbage is None:
            return
        info = link.client.publish(link.topics[garbage.topic], garbage.payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.garbage_sent += 1
            self.garbage_by_kind[kind] += 1

    def _drop(self, link: _Link) -> None:
        """Shut the socket without a DISCONNECT (the broker publishes the last will); paho
        reads the end of the stream, closes, and :meth:`_on_disconnect` connects again."""
        sock = link.client.socket()
        if sock is None:
            return
        link.dropping = True
        self.connection_drops += 1
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _misc(self) -> None:
        wall = self.clock()
        for link in self._links:
            client = link.client
            if client.socket() is None:
                continue
            try:
                client.loop_misc()  # keepalive pings; drops a connection whose CONNACK never came
                if link.connected and link.device.transfer is not None:
                    self._send_all(link, link.device.retry_if_stalled(wall))
            except Exception:
                log.exception("housekeeping of %s failed", link.device.device_id)

    def _shutdown(self, timeout: float = 5.0) -> None:
        """Say goodbye (offline status, retained), disconnect, wait for the sockets to close."""
        assert self._selector is not None
        self._shutting_down = True
        wall = self.clock()
        for link in self._links:
            try:
                if link.connected:
                    self._send(link, Outgoing("status", link.device.status(False, wall)))
                if link.client.socket() is not None:
                    link.client.disconnect()  # queued after the status: sent, then closed
            except Exception:
                log.exception("disconnecting %s failed", link.device.device_id)
        self._flush_writes()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            link.client.socket() is not None for link in self._links
        ):
            self._serve_events(self._selector.select(0.05))
            self._flush_writes()
        for link in self._links:  # what did not close in time is closed now
            sock = link.client.socket()
            if sock is not None:
                self._on_socket_close(link.client, link, sock)
                sock.close()


# ------------------------------------------------------------------------------ command line


def _parse_broker(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise argparse.ArgumentTypeError(f"{url}: only mqtt:// is supported (no TLS)")
    return parts.hostname or "127.0.0.1", parts.port or 1883


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run simulated devices until Ctrl-C, printing the counters every few seconds."""
    parser = argparse.ArgumentParser(
        prog="python -m edgeml.fleet.simulator",
        description="Simulate edgeml devices against an MQTT broker, all in one thread.",
    )
    parser.add_argument("--broker", type=_parse_broker, default=("127.0.0.1", 1883))
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--profile", default="raspberry-pi-4")
    parser.add_argument("--canary", type=int, default=0, help="the first N get the canary tag")
    parser.add_argument(
        "--active",
        default=None,
        help="the bundle every device starts with (without one: no telemetry until an install)",
    )
    parser.add_argument("--prefix", default="sim", help="device ids are PREFIX-00000, ...")
    parser.add_argument("--telemetry-interval", type=float, default=DEFAULT_WINDOW_S)
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="connections/s")
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password", default=None)
    misbehaving = parser.add_argument_group(
        "misbehaving devices", "taken from the end of the device list, in this order"
    )
    misbehaving.add_argument("--garbage-devices", type=int, default=0, metavar="N")
    misbehaving.add_argument("--garbage-per-s", type=float, default=10.0, metavar="R")
    misbehaving.add_argument("--storm-devices", type=int, default=0, metavar="N")
    misbehaving.add_argument(
        "--reconnect-every", type=float, default=2.0, metavar="S", help="seconds"
    )
    misbehaving.add_argument("--flood-devices", type=int, default=0, metavar="N")
    misbehaving.add_argument("--flood-windows-per-s", type=float, default=20.0, metavar="R")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly on SIGTERM too
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    canary = args.canary
    devices = make_devices(
        args.devices,
        args.profile,
        tags_for=lambda i: ("canary",) if i < canary else (),
        active=args.active,
        prefix=args.prefix,
    )
    username, password = args.username, args.password
    host, port = args.broker
    wanted = [
        (args.garbage_devices, Misbehaviour(garbage_per_s=args.garbage_per_s)),
        (args.storm_devices, Misbehaviour(reconnect_every_s=args.reconnect_every)),
        (args.flood_devices, Misbehaviour(flood_windows_per_s=args.flood_windows_per_s)),
    ]
    misbehaviour: dict[str, Misbehaviour] = {}
    remaining = list(reversed(devices))
    for count, how in wanted:
        taken, remaining = remaining[:count], remaining[count:]
        misbehaviour.update((d.device_id, how) for d in taken)
    simulator = DeviceSimulator(
        host,
        port,
        devices,
        telemetry_interval_s=args.telemetry_interval,
        connect_rate=args.connect_rate,
        credentials=(lambda _id: (username, password)) if username else None,
        misbehaviour=misbehaviour,
    )
    simulator.start()
    print(f"simulating {len(devices)} devices against mqtt://{host}:{port}; Ctrl-C stops")
    try:
        while True:
            time.sleep(args.report_every)
            print(" ".join(f"{k}={v}" for k, v in simulator.counters().items()), flush=True)
    except KeyboardInterrupt:
        print("stopping: offline statuses, then disconnect (Ctrl-C again: leave at once)")
    try:
        simulator.stop()
    except KeyboardInterrupt:  # the broker publishes the last wills of those still connected
        return 130
    print(" ".join(f"{k}={v}" for k, v in simulator.counters().items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
