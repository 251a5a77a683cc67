"""The typed records the fleet registry stores and returns: devices, bundles, rollouts,
operator requests, queued commands, command results, telemetry windows and audit entries.

Frozen dataclasses, no I/O: ``edgeml.fleet.registry`` reads and writes them, the CLI prints
their ``to_dict()`` as ``--json``. Protocol messages (``Command``, ``CommandResult``,
``TelemetryWindow``) are kept whole inside the records that carry them, so a reader gets the
same typed message the wire carried.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeml.toolkit.protocol import Command, CommandResult, TelemetryWindow

OPERATOR_ACTIONS = ("pause", "resume", "approve", "abort")
"""What an operator may ask of a running rollout (``fleet rollout pause|resume|approve|abort``)."""


@dataclass(frozen=True)
class DeviceRecord:
    """A device as its latest status message described it.

    Attributes:
        device_id: the device.
        profile: its hardware profile, or None when it did not say.
        tags: its tags, in the order it reported them.
        online: false after its last will or a clean stop.
        active: the bundle it runs now, or None.
        previous: the bundle it can roll back to, or None.
        state: ``idle``, ``receiving``, ``installing`` or ``offline``.
        agent_version: the agent's version, if reported.
        detail: the device's human note (e.g. why its last install failed).
        sent_at: when the device sent that status, on its own clock.
        last_seen: when the fleet received it, on the fleet's clock.
        first_seen: when the fleet first heard of the device, on the fleet's clock.
    """

    device_id: str
    profile: str | None
    tags: tuple[str, ...]
    online: bool
    active: str | None
    previous: str | None
    state: str
    agent_version: str | None
    detail: str
    sent_at: float
    last_seen: float
    first_seen: float

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (one element of ``fleet devices --json``)."""
        return {**asdict(self), "tags": list(self.tags)}


@dataclass(frozen=True)
class BundleRecord:
    """A published bundle: what it is and where the fleet keeps its file.

    Attributes:
        bundle_id: ``NAME-VERSION-PROFILE``.
        name: the model's name.
        version: the model's version.
        profile: the hardware profile it was built for.
        sha256: the bundle file's SHA-256 (64 lowercase hex digits).
        size: the file's size in bytes.
        path: where the fleet stored the file.
        key_id: the id of the key that signed it.
        published_at: when it was published, on the fleet's clock.
    """

    bundle_id: str
    name: str
    version: str
    profile: str
    sha256: str
    size: int
    path: str
    key_id: str
    published_at: float

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (one element of ``fleet bundles --json``)."""
        return asdict(self)


@dataclass(frozen=True)
class RolloutRecord:
    """A rollout as stored: a few columns for queries, and the engine's document as is.

    Attributes:
        rollout_id: the rollout.
        bundle_id: the bundle it sends.
        state: the rollout's state (``running``, ``paused``, ...), as the engine named it.
        created_at: when it was started.
        updated_at: when its document was last saved.
        document: the rollout engine's own JSON document, opaque to the registry.
    """

    rollout_id: str
    bundle_id: str
    state: str
    created_at: float
    updated_at: float
    document: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class OperatorRequest:
    """An operator's request to a rollout, written by the CLI, acted on by the service.

    Attributes:
        request_id: increasing; requests are handled in this order.
        rollout_id: the rollout.
        action: one of :data:`OPERATOR_ACTIONS`.
        requested_at: when it was asked.
        actor: who asked (``cli`` by default).
        reason: the operator's words.
        handled_at: when the service consumed it, or None while pending.
    """

    request_id: int
    rollout_id: str
    action: str
    requested_at: float
    actor: str
    reason: str
    handled_at: float | None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class QueuedCommand:
    """A command the fleet decided to send to a device.

    Attributes:
        device_id: the device it goes to.
        command: the protocol message, as it will be published.
        created_at: when it was queued.
        reason: why it was sent (e.g. ``rollout r-1 stage 2``).
        sent_at: when it was published, or None while unsent.
    """

    device_id: str
    command: Command
    created_at: float
    reason: str
    sent_at: float | None = None

    @property
    def command_id(self) -> str:
        """The command's id."""
        return self.command.command_id

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, the command as its protocol document."""
        return {**asdict(self), "command": self.command.to_dict()}


@dataclass(frozen=True)
class ResultRecord:
    """A command result a device reported, with what the fleet knows of it.

    Attributes:
        result_id: increasing in order of arrival.
        device_id: the device whose events topic it arrived on.
        result: the protocol message.
        received_at: when the fleet received it, on the fleet's clock.
        known: true when it answers a command the fleet queued for that device, with the
            same kind; false for a stray or forged result, which must not drive decisions.
    """

    result_id: int
    device_id: str
    result: CommandResult
    received_at: float
    known: bool

    @property
    def command_id(self) -> str:
        """The id of the command it answers."""
        return self.result.command_id

    @property
    def outcome(self) -> str:
        """``accepted``, ``succeeded``, ``failed`` or ``refused``."""
        return self.result.outcome

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, the result as its protocol document."""
        return {**asdict(self), "result": self.result.to_dict()}


@dataclass(frozen=True)
class WindowRecord:
    """A stored telemetry window and when it arrived.

    Attributes:
        window: the protocol message.
        received_at: when the fleet received it, on the fleet's clock.
    """

    window: TelemetryWindow
    received_at: float

    @property
    def device_id(self) -> str:
        """The reporting device."""
        return self.window.device_id

    @property
    def seq(self) -> int:
        """The window's number in its device's stream."""
        return self.window.seq

    @property
    def stream(self) -> str:
        """The device's telemetry stream the window belongs to (``""``: an agent before
        streams); it changes when the device's buffer starts over."""
        return self.window.stream

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, the window as its protocol document."""
        return {"window": self.window.to_dict(), "received_at": self.received_at}


@dataclass(frozen=True)
class AuditEntry:
    """One decision or operator action, with its reason; entries are never changed.

    Attributes:
        entry_id: increasing in order of writing.
        at: when, on the fleet's clock.
        actor: who (``fleet`` for the service's own decisions, ``cli``, an operator's name).
        action: what (e.g. ``stage-started``, ``rollback``, ``pause``).
        reason: why, in words that name the gate and its figure.
        rollout_id: the rollout concerned, if any.
        device_id: the device concerned, if any.
        details: further figures, as JSON-ready data.
    """

    entry_id: int
    at: float
    actor: str
    action: str
    reason: str
    rollout_id: str | None
    device_id: str | None
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)


ENROLLMENT_ROLES = ("device", "fleet")
"""Who holds broker credentials: a device (user name = device id) or the fleet service."""


@dataclass(frozen=True)
class EnrollmentRecord:
    """A broker account the fleet issued: a device's, or the fleet service's own.

    Only the password's hash is kept (Mosquitto's PBKDF2 format); the plain password was
    written once, to the enrollment's ``broker-password`` file, and is nowhere else.

    Attributes:
        username: the broker user name; for a device, its device id.
        role: ``device`` or ``fleet``.
        profile: the device's hardware profile (None for the fleet).
        tags: the device's tags at enrollment.
        password_hash: ``$7$ITERATIONS$SALT$HASH``, as in a Mosquitto password file.
        enrolled_at: when it was first enrolled, on the fleet's clock.
        rotated_at: when its password was last replaced, or None.
        revoked_at: when its access was revoked, or None while it may connect.
        revoke_reason: the operator's words when revoking.
    """

    username: str
    role: str
    profile: str | None
    tags: tuple[str, ...]
    password_hash: str
    enrolled_at: float
    rotated_at: float | None = None
    revoked_at: float | None = None
    revoke_reason: str = ""

    @property
    def device_id(self) -> str:
        """The device's id (its broker user name)."""
        return self.username

    @property
    def revoked(self) -> bool:
        """Whether the account was revoked."""
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data, without the password hash."""
        document = {**asdict(self), "tags": list(self.tags), "revoked": self.revoked}
        del document["password_hash"]
        return document
