"""The rollout document: what a rollout was asked to do, where it stands, each device's part.

Typed, frozen, JSON both ways (``to_dict``/``from_dict``), no I/O: the fleet registry stores the
document, :mod:`edgeml.fleet.rollout` (the engine) computes the next one. Also the parsing of
what users type for it (``--stages``, ``--target``). Semantics in docs/fleet.md.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeml.fleet.gates import Gates
from edgeml.toolkit.errors import InputError

STATES = ("running", "waiting-approval", "paused", "succeeded", "rolled-back", "aborted")
"""A rollout's states, as ``rollout status --json`` reports them (a published contract)."""
FINAL_STATES = ("succeeded", "aborted")
OPEN_STATES = ("running", "waiting-approval", "paused")
"""A rollout not ended: the service drives it, or waits for a person's approval or resume."""
DEVICE_STATES = (
    "sent",  # install command sent; the device does not run the bundle yet
    "installed",  # runs the bundle; its health is being watched
    "unhealthy",  # runs the bundle and broke a health gate
    "failed",  # refused or failed the install, or stayed silent past the stage time-out
    "offline",  # offline when its stage timed out: skipped, counts neither way
    "rolling-back",  # told to activate the bundle it ran before
    "rolled-back",  # runs that bundle again
)
FAILED_STATES = ("failed", "unhealthy")
OPERATOR_ACTIONS = ("pause", "resume", "approve", "abort")
CANARY_TAG = "canary"


# ------------------------------------------------------------------------------- the inputs


@dataclass(frozen=True)
class StageSize:
    """One stage's cumulative size: a count of devices, or a percentage of the target."""

    count: int | None = None
    percent: float | None = None

    def devices(self, target_size: int) -> int:
        if self.count is not None:
            return min(self.count, target_size)
        return min(target_size, math.ceil(target_size * (self.percent or 0.0) / 100 - 1e-9))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


def parse_stages(text: str) -> tuple[StageSize, ...]:
    """Parse ``--stages`` (``1,10%,50%,100%``).

    Raises:
        InputError: empty, a part that is neither a positive count nor a percentage in
            (0, 100], or a share smaller than the stage before it.
    """
    stages: list[StageSize] = []
    for part in (p.strip() for p in text.split(",")):
        if re.fullmatch(r"\d+", part) and int(part) > 0:
            stages.append(StageSize(count=int(part)))
        elif re.fullmatch(r"\d+(\.\d+)?%", part) and 0 < float(part[:-1]) <= 100:
            stages.append(StageSize(percent=float(part[:-1])))
        else:
            raise InputError(
                f"--stages: {part!r} is neither a count of devices (1, 5, …) "
                "nor a percentage in (0, 100] (10%)"
            )
    for before, after in itertools.pairwise(stages):
        if (
            before.percent is not None
            and after.percent is not None
            and after.percent < before.percent
        ):
            raise InputError(f"--stages: {after} comes after the larger {before}")
    return tuple(stages)


@dataclass(frozen=True)
class Selector:
    """One ``--target`` condition: ``profile=P``, ``tag=T`` or ``device=ID``."""

    key: str
    value: str

    KEYS = ("profile", "tag", "device")

    def matches(self, device: DeviceView) -> bool:
        if self.key == "profile":
            return device.profile == self.value
        if self.key == "tag":
            return self.value in device.tags
        return device.device_id == self.value

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


def parse_selector(text: str) -> Selector:
    """Parse one ``--target`` (``profile=raspberry-pi-4``, ``tag=plant-3``, ``device=pi-7``).

    Raises:
        InputError: not ``KEY=VALUE`` with a known key and a value.
    """
    key, sep, value = text.partition("=")
    if not sep or key.strip() not in Selector.KEYS or not value.strip():
        raise InputError(
            f"--target {text!r}: write KEY=VALUE with KEY one of {', '.join(Selector.KEYS)}"
        )
    return Selector(key.strip(), value.strip())


@dataclass(frozen=True)
class DeviceView:
    """What the registry knows of a device: what it reports it runs, not what was sent."""

    device_id: str
    profile: str | None
    tags: frozenset[str] = frozenset()
    online: bool = True
    active: str | None = None
    previous: str | None = None


# ---------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class DeviceEntry:
    """One device's part in a rollout."""

    device_id: str
    stage: int
    state: str
    from_bundle: str | None
    command_id: str
    sent_at: float
    attempts: int = 1
    installed_at: float | None = None
    detail: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)
    broken: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "stage": self.stage,
            "state": self.state,
            "from_bundle": self.from_bundle,
            "command_id": self.command_id,
            "sent_at": self.sent_at,
            "attempts": self.attempts,
            "installed_at": self.installed_at,
            "detail": self.detail,
            "figures": dict(self.figures),
            "broken": list(self.broken),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceEntry:
        return cls(
            device_id=data["device_id"],
            stage=int(data["stage"]),
            state=data["state"],
            from_bundle=data.get("from_bundle"),
            command_id=data["command_id"],
            sent_at=float(data["sent_at"]),
            attempts=int(data.get("attempts", 1)),
            installed_at=data.get("installed_at"),
            detail=data.get("detail", ""),
            figures=dict(data.get("figures", {})),
            broken=tuple(data.get("broken", ())),
        )


@dataclass(frozen=True)
class StageRecord:
    """When a stage started, began to soak and ended, and how."""

    index: int
    size: int
    started_at: float
    soak_started_at: float | None = None
    finished_at: float | None = None
    outcome: str = "running"  # running, passed, failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "size": self.size,
            "started_at": self.started_at,
            "soak_started_at": self.soak_started_at,
            "finished_at": self.finished_at,
            "outcome": self.outcome,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Failure:
    """Why a rollout rolled back: the stage, the gates broken, on which devices, the figures."""

    stage: int
    at: float
    reason: str
    gates: Mapping[str, tuple[str, ...]]
    figures: Mapping[str, Mapping[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "at": self.at,
            "reason": self.reason,
            "gates": {gate: list(devices) for gate, devices in self.gates.items()},
            "figures": {device: dict(f) for device, f in self.figures.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Failure:
        return cls(
            stage=int(data["stage"]),
            at=float(data["at"]),
            reason=data["reason"],
            gates={g: tuple(d) for g, d in data["gates"].items()},
            figures={d: dict(f) for d, f in data["figures"].items()},
        )


@dataclass(frozen=True)
class Rollout:
    """A rollout document: what was asked, where it stands, each device's part in it."""

    rollout_id: str
    bundle_id: str
    profile: str
    stages: tuple[StageSize, ...]
    gates: Gates
    created_at: float
    target: tuple[Selector, ...] = ()
    state: str = "running"
    updated_at: float = 0.0
    stage_index: int = -1
    stage_log: tuple[StageRecord, ...] = ()
    devices: Mapping[str, DeviceEntry] = field(default_factory=dict)
    failure: Failure | None = None
    paused_from: str | None = None
    reason: str = "created"

    def live(self, now: float) -> bool:
        """Whether the service still has work for it at ``now`` (it steps live rollouts).

        A rolled-back rollout stays live while a device has not confirmed its rollback, and
        for a grace time after it (a device may finish an install it had received just
        before the rollback; it is then told to go back too).
        """
        if self.state == "rolled-back":
            grace = self.gates.resend_after_s * self.gates.max_attempts
            recent = self.failure is not None and now - self.failure.at < grace
            return recent or any(e.state == "rolling-back" for e in self.devices.values())
        return self.state not in FINAL_STATES

    @property
    def current_stage(self) -> StageRecord | None:
        return self.stage_log[-1] if self.stage_log else None

    def in_target(self, device: DeviceView) -> bool:
        return device.profile == self.profile and all(s.matches(device) for s in self.target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "bundle_id": self.bundle_id,
            "profile": self.profile,
            "stages": [str(s) for s in self.stages],
            "gates": self.gates.to_dict(),
            "created_at": self.created_at,
            "target": [str(s) for s in self.target],
            "state": self.state,
            "updated_at": self.updated_at,
            "stage_index": self.stage_index,
            "stage_log": [s.to_dict() for s in self.stage_log],
            "devices": {d: e.to_dict() for d, e in sorted(self.devices.items())},
            "failure": self.failure.to_dict() if self.failure else None,
            "paused_from": self.paused_from,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        return cls(
            rollout_id=data["rollout_id"],
            bundle_id=data["bundle_id"],
            profile=data["profile"],
            stages=parse_stages(",".join(data["stages"])),
            gates=Gates.from_dict(data["gates"]),
            created_at=float(data["created_at"]),
            target=tuple(parse_selector(s) for s in data.get("target", ())),
            state=data["state"],
            updated_at=float(data.get("updated_at", 0.0)),
            stage_index=int(data.get("stage_index", -1)),
            stage_log=tuple(StageRecord.from_dict(s) for s in data.get("stage_log", ())),
            devices={d: DeviceEntry.from_dict(e) for d, e in data.get("devices", {}).items()},
            failure=Failure.from_dict(data["failure"]) if data.get("failure") else None,
            paused_from=data.get("paused_from"),
            reason=data.get("reason", ""),
        )


def new_rollout(
    rollout_id: str,
    bundle_id: str,
    profile: str,
    stages: Sequence[StageSize],
    *,
    now: float,
    target: Sequence[Selector] = (),
    gates: Gates | None = None,
) -> Rollout:
    """A rollout that has not started its first stage yet (the service starts it).

    Raises:
        InputError: no stages, or a ``profile=`` selector other than the bundle's profile.
    """
    if not stages:
        raise InputError("a rollout needs at least one stage")
    for selector in target:
        if selector.key == "profile" and selector.value != profile:
            raise InputError(
                f"--target {selector}: bundle {bundle_id} is for profile {profile}; "
                "a bundle only goes to devices of its profile"
            )
    return Rollout(
        rollout_id=rollout_id,
        bundle_id=bundle_id,
        profile=profile,
        stages=tuple(stages),
        gates=gates or Gates(),
        created_at=now,
        target=tuple(target),
        updated_at=now,
    )
