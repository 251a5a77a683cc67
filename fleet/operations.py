"""What an operator does to the fleet from the command line, as an importable API.

Each function reads or writes the registry only: it never talks to the broker. Work for the
devices is queued (a new rollout, an operator request, rollback commands) and the running
service (``edgeml fleet serve``) carries it out on its next tick, so the command line never
races the service writing a rollout. Every write is also a line in the audit log.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeml.fleet.gates import Gates, device_figures, summarize_windows
from edgeml.fleet.records import DeviceRecord
from edgeml.fleet.registry import FleetRegistry
from edgeml.fleet.rollout import (
    OPEN_STATES,
    OPERATOR_ACTIONS,
    DeviceView,
    Rollout,
    Selector,
    StageSize,
    new_rollout,
    summary,
)
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.protocol import Command
from edgeml.toolkit.trust import read_trust_document, verify_root

HEALTH_SPAN_S = 600.0
"""``fleet devices`` shows each device's health over this many seconds of telemetry."""


def start_rollout(
    registry: FleetRegistry,
    bundle_id: str,
    stages: Sequence[StageSize],
    *,
    target: Sequence[Selector] = (),
    gates: Gates | None = None,
    actor: str = "cli",
    now: float | None = None,
) -> Rollout:
    """Create a rollout of a published bundle; the service starts its first stage.

    Raises:
        InputError: the bundle is not published, a selector names another profile, or a
            rollout of the same profile is still live (abort it first).
    """
    now = time.time() if now is None else now
    bundle = registry.bundle(bundle_id)
    if bundle is None:
        raise InputError(f"bundle {bundle_id} is not published: run fleet publish first")
    for record in registry.rollouts(states=OPEN_STATES):
        if record.document.get("profile") == bundle.profile:
            raise InputError(
                f"rollout {record.rollout_id} ({record.bundle_id}) is still {record.state} on "
                f"profile {bundle.profile}: abort it first (fleet rollout abort "
                f"{record.rollout_id})"
            )
    rollout_id = "ro-" + uuid.uuid4().hex[:10]
    rollout = new_rollout(
        rollout_id, bundle_id, bundle.profile, stages, now=now, target=target, gates=gates
    )
    with registry.transaction():
        registry.add_rollout(rollout_id, bundle_id, rollout.state, now, rollout.to_dict())
        registry.audit(
            now,
            "rollout-created",
            f"{bundle_id} in stages {','.join(map(str, stages))}"
            + (f" to {' and '.join(map(str, target))}" if target else ""),
            actor=actor,
            rollout_id=rollout_id,
            details={"gates": rollout.gates.to_dict()},
        )
    return rollout


def load_rollout(registry: FleetRegistry, rollout_id: str) -> Rollout:
    """A rollout by id.

    Raises:
        InputError: no rollout has that id.
    """
    record = registry.rollout(rollout_id)
    if record is None:
        raise InputError(f"no rollout {rollout_id}: fleet rollout list shows them")
    return Rollout.from_dict(record.document)


def request_action(
    registry: FleetRegistry,
    rollout_id: str,
    action: str,
    *,
    actor: str = "cli",
    reason: str = "",
    now: float | None = None,
) -> int:
    """Ask the service to pause, resume, approve or abort a rollout.

    Raises:
        InputError: no such rollout, an unknown action, or a rollout that already ended.
    """
    now = time.time() if now is None else now
    if action not in OPERATOR_ACTIONS:
        raise InputError(f"unknown action {action!r}; one of {', '.join(OPERATOR_ACTIONS)}")
    rollout = load_rollout(registry, rollout_id)
    if not rollout.live(now):
        raise InputError(f"rollout {rollout_id} is {rollout.state}: nothing to {action}")
    with registry.transaction():
        request_id = registry.request(rollout_id, action, now, actor=actor, reason=reason)
        registry.audit(
            now,
            f"{action}-requested",
            reason or f"{action} asked",
            actor=actor,
            rollout_id=rollout_id,
        )
    return request_id


def roll_back_devices(
    registry: FleetRegistry,
    target: Sequence[Selector],
    *,
    actor: str = "cli",
    reason: str = "",
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Tell every device of the target to activate its previous bundle.

    Live rollouts that reach those devices are aborted first (they would send the bundle
    again). Devices without a previous bundle are listed and left alone.

    Returns:
        One entry per matching device: its id, what it runs, what it is told to activate
        (or why nothing).

    Raises:
        InputError: no selector (a rollback of the whole fleet must say so:
            ``--target profile=P``), or no device matches.
    """
    now = time.time() if now is None else now
    if not target:
        raise InputError("fleet rollback needs --target (e.g. --target profile=raspberry-pi-4)")
    devices = [d for d in registry.devices() if all(s.matches(device_view(d)) for s in target)]
    if not devices:
        raise InputError(f"no device matches {' and '.join(map(str, target))}")
    why = reason or "manual rollback"
    plan: list[dict[str, Any]] = []
    with registry.transaction():
        for record in registry.rollouts(states=OPEN_STATES):
            reached = set(record.document.get("devices", {}))
            if reached & {d.device_id for d in devices}:
                registry.request(record.rollout_id, "abort", now, actor=actor, reason=why)
                registry.audit(
                    now, "abort-requested", why, actor=actor, rollout_id=record.rollout_id
                )
        batch = uuid.uuid4().hex[:8]
        for device in devices:
            entry = {"device_id": device.device_id, "active": device.active}
            if device.previous is None:
                entry["activate"] = None
                entry["note"] = "no previous bundle"
            else:
                command = Command(
                    command_id=f"rb-{batch}.{device.device_id}",
                    kind="activate",
                    issued_at=now,
                    bundle_id=device.previous,
                )
                registry.queue_command(command, device.device_id, why, now)
                registry.audit(
                    now,
                    "rollback-sent",
                    f"activate {device.previous} ({why})",
                    actor=actor,
                    device_id=device.device_id,
                )
                entry["activate"] = device.previous
            plan.append(entry)
    return plan


def push_trust(
    registry: FleetRegistry,
    document_path: Path,
    target: Sequence[Selector] = (),
    *,
    actor: str = "cli",
    now: float | None = None,
) -> list[str]:
    """Send a trust document to the target's devices (every device without a target).

    Whether a device takes it is the document's business (its version, signatures and
    revocations, see docs/security.md), not the sender's: the fleet only checks that it is
    a trust document signed by one of its own root keys, so a damaged file is not sent.

    Returns:
        The devices the command was queued for.

    Raises:
        TrustError: not a trust document, or not signed by its own root keys (exit 3).
        InputError: no device matches the target.
    """
    now = time.time() if now is None else now
    document = read_trust_document(document_path)
    verify_root(document)
    devices = [d for d in registry.devices() if all(s.matches(device_view(d)) for s in target)]
    if not devices:
        where = " and ".join(map(str, target)) if target else "the fleet"
        raise InputError(f"no device matches {where}")
    batch = uuid.uuid4().hex[:8]
    with registry.transaction():
        for device in devices:
            command = Command(
                command_id=f"trust-{batch}.{device.device_id}",
                kind="trust",
                issued_at=now,
                trust_document=document.to_dict(),
            )
            registry.queue_command(
                command, device.device_id, f"trust version {document.version}", now
            )
        registry.audit(
            now,
            "trust-pushed",
            f"trust version {document.version} sent to {len(devices)} device(s)",
            actor=actor,
            details={"devices": [d.device_id for d in devices], "version": document.version},
        )
    return [d.device_id for d in devices]


def device_overview(
    registry: FleetRegistry, *, now: float | None = None, span_s: float = HEALTH_SPAN_S
) -> list[dict[str, Any]]:
    """``fleet devices``: each device as it reports itself, whether it holds broker
    credentials the fleet issued (``enrolled``) and whether they were revoked, with its
    health over the last ``span_s`` of telemetry on its active bundle."""
    now = time.time() if now is None else now
    recent: dict[str, list[Any]] = defaultdict(list)
    for row in registry.windows(received_since=now - span_s):
        recent[row.device_id].append(row.window)
    accounts = {e.username: e for e in registry.enrollments(role="device")}
    overview = []
    for device in registry.devices():
        account = accounts.get(device.device_id)
        windows = [w for w in recent.get(device.device_id, ()) if w.bundle_id == device.active]
        figures = device_figures(summarize_windows(windows))
        overview.append(
            {
                **device.to_dict(),
                "enrolled": account is not None,
                "revoked": account is not None and account.revoked_at is not None,
                "health": {
                    k: figures[k]
                    for k in ("windows", "requests", "error_rate", "p95_ms", "max_psi")
                },
            }
        )
    return overview


def rollout_status(registry: FleetRegistry, rollout_id: str) -> dict[str, Any]:
    """``fleet rollout status --json``: the engine's summary and the audit log's last lines."""
    rollout = load_rollout(registry, rollout_id)
    document = summary(rollout)
    document["pending_requests"] = [r.to_dict() for r in registry.pending_requests(rollout_id)]
    document["audit"] = [e.to_dict() for e in registry.audit_log(rollout_id=rollout_id)[-20:]]
    return document


def device_view(device: DeviceRecord) -> DeviceView:
    """What the rollout engine sees of a registered device."""
    return DeviceView(
        device.device_id,
        device.profile,
        frozenset(device.tags),
        device.online,
        device.active,
        device.previous,
    )
