"""The rollout engine: ``step(rollout, observations, now) -> (rollout', actions)``.

A pure function (DESIGN.md, "Functional core"): it reads a rollout document, what the devices
report (their status: what they run), the final results of the commands it sent, their health
figures on the new bundle, and the operator's requests, and returns the next document and the
actions to take: commands to send, requests to mark handled, decisions to write to the audit
log with their reason. No broker, no database, no clock: the fleet service
(:mod:`edgeml.fleet.service`) gathers the observations, persists the document and its actions
in one transaction, and only then sends the commands, so a restart never loses or repeats a
step.

Semantics (DESIGN.md "Rollouts", docs/fleet.md):

- Stages are cumulative sizes of the target: ``1,10%,50%,100%`` means one device, then 10 %
  of the target, … A bare number counts devices. Devices tagged ``canary`` go first, then
  online devices, then by id. A bundle only goes to devices of its profile.
- A stage sends install commands, waits until ``success_threshold`` of its devices run the
  bundle and are healthy, then holds that for ``soak_s``; the next stage starts by itself or,
  with ``manual_approval``, after ``approve``.
- A device fails when its install is refused or fails (self-test), when it stays silent past
  the stage time-out while online, or when its figures break a health gate. When failed
  devices pass ``error_threshold`` of the rollout's devices, the rollout is ``rolled-back``:
  every device that took the new bundle is told to activate the bundle it ran before.
- What counts is what devices report they run, not what was sent: a device that left the
  bundle (rolled back by itself, re-imaged) is sent it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgeml.fleet.gates import DeviceHealth, device_figures, judge_device
from edgeml.fleet.rollout_document import (
    CANARY_TAG,
    DEVICE_STATES,
    FAILED_STATES,
    FINAL_STATES,
    OPEN_STATES,
    OPERATOR_ACTIONS,
    STATES,
    DeviceEntry,
    DeviceView,
    Failure,
    Rollout,
    Selector,
    StageRecord,
    StageSize,
    new_rollout,
    parse_selector,
    parse_stages,
)

__all__ = [  # the document's names are re-exported: callers import the engine's vocabulary here
    "CANARY_TAG",
    "DEVICE_STATES",
    "FAILED_STATES",
    "FINAL_STATES",
    "OPEN_STATES",
    "OPERATOR_ACTIONS",
    "STATES",
    "Action",
    "CommandOutcome",
    "Decision",
    "DeviceEntry",
    "DeviceView",
    "Failure",
    "Observations",
    "OperatorRequest",
    "RequestsHandled",
    "Rollout",
    "Selector",
    "SendActivate",
    "SendInstall",
    "StageRecord",
    "StageSize",
    "is_settled",
    "new_rollout",
    "parse_selector",
    "parse_stages",
    "step",
    "summary",
    "target_devices",
]


@dataclass(frozen=True)
class CommandOutcome:
    """The final result a device sent for a command (``succeeded``, ``failed``, ``refused``)."""

    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class OperatorRequest:
    """``pause``, ``resume``, ``approve`` or ``abort``, asked from the command line."""

    request_id: int
    action: str
    actor: str = "cli"
    reason: str = ""


@dataclass(frozen=True)
class Observations:
    """Everything the engine reads besides the rollout and the time.

    Attributes:
        devices: every device of the rollout's profile, by id.
        results: the final result of each command the rollout sent that has one, by id.
        health: each device's figures on the rollout's bundle since it installed it, with its
            latency on the previous bundle as the baseline.
        requests: the operator's requests not yet handled, oldest first.
    """

    devices: Mapping[str, DeviceView] = field(default_factory=dict)
    results: Mapping[str, CommandOutcome] = field(default_factory=dict)
    health: Mapping[str, DeviceHealth] = field(default_factory=dict)
    requests: Sequence[OperatorRequest] = ()


# ------------------------------------------------------------------------------ the outputs


@dataclass(frozen=True)
class SendInstall:
    """Send an install command for the rollout's bundle."""

    device_id: str
    bundle_id: str
    command_id: str
    rollout_id: str
    reason: str


@dataclass(frozen=True)
class SendActivate:
    """Tell a device to activate a bundle it holds (the rollback to its previous one)."""

    device_id: str
    bundle_id: str
    command_id: str
    rollout_id: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """A line of the audit log: what was decided and why."""

    action: str
    reason: str
    device_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestsHandled:
    """Operator requests the engine acted on (or refused, with a decision saying why)."""

    request_ids: tuple[int, ...]


Action = SendInstall | SendActivate | Decision | RequestsHandled


# ------------------------------------------------------------------------------- the engine


class _Step:
    """The working state of one call of :func:`step`: the document so far and its actions."""

    def __init__(self, rollout: Rollout, observations: Observations, now: float) -> None:
        self.rollout = rollout
        self.devices = dict(rollout.devices)
        self.observations = observations
        self.now = now
        self.actions: list[Action] = []

    def decide(
        self, action: str, reason: str, device_id: str | None = None, **details: Any
    ) -> None:
        self.actions.append(Decision(action, reason, device_id, details))

    def set(self, **changes: Any) -> None:
        self.rollout = replace(self.rollout, **changes)

    def entry(self, device_id: str, **changes: Any) -> DeviceEntry:
        updated = replace(self.devices[device_id], **changes)
        self.devices[device_id] = updated
        return updated

    def view(self, device_id: str) -> DeviceView | None:
        return self.observations.devices.get(device_id)

    def send_install(self, device_id: str, attempt: int, reason: str) -> str:
        rollout = self.rollout
        command_id = f"{rollout.rollout_id}.{device_id}.i{attempt}"
        self.actions.append(
            SendInstall(device_id, rollout.bundle_id, command_id, rollout.rollout_id, reason)
        )
        return command_id

    def send_rollback(self, entry: DeviceEntry, reason: str) -> None:
        assert entry.from_bundle is not None
        attempt = entry.attempts + 1 if entry.state == "rolling-back" else 1
        command_id = f"{self.rollout.rollout_id}.{entry.device_id}.r{attempt}"
        self.actions.append(
            SendActivate(
                entry.device_id, entry.from_bundle, command_id, self.rollout.rollout_id, reason
            )
        )
        self.entry(
            entry.device_id,
            state="rolling-back",
            command_id=command_id,
            sent_at=self.now,
            attempts=attempt,
            detail=reason,
        )


def step(rollout: Rollout, observations: Observations, now: float) -> tuple[Rollout, list[Action]]:
    """Advance a rollout by what was observed at ``now``.

    Args:
        rollout: the document as last persisted.
        observations: the devices' reports, results, health and the operator's requests.
        now: the fleet's clock (Unix time).

    Returns:
        The next document and the actions to persist with it, then carry out.
    """
    work = _Step(rollout, observations, now)
    _handle_requests(work)
    if work.rollout.state in FINAL_STATES:
        return _finish(work, rollout)
    _observe_devices(work)
    if work.rollout.state == "rolled-back":
        _reconcile_rollback(work)
        return _finish(work, rollout)
    if _judge_failures(work):
        return _finish(work, rollout)
    state = work.rollout.state
    if state == "running":
        _resend(work)
        if work.rollout.stage_index < 0:
            _start_stage(work, 0)
        else:
            _advance_stage(work)
    elif state == "waiting-approval":
        _resend(work)
    return _finish(work, rollout)


def _finish(work: _Step, before: Rollout) -> tuple[Rollout, list[Action]]:
    rollout = replace(work.rollout, devices=work.devices)
    if rollout != before:
        rollout = replace(rollout, updated_at=work.now)
    return rollout, work.actions


def _handle_requests(work: _Step) -> None:
    handled: list[int] = []
    for request in work.observations.requests:
        handled.append(request.request_id)
        state = work.rollout.state
        who = f"{request.actor}" + (f": {request.reason}" if request.reason else "")
        if request.action == "pause" and state in ("running", "waiting-approval"):
            work.set(state="paused", paused_from=state, reason=f"paused by {who}")
            work.decide("paused", f"paused by {who}")
        elif request.action == "resume" and state == "paused":
            resumed = work.rollout.paused_from or "running"
            work.set(state=resumed, paused_from=None, reason=f"resumed by {who}")
            work.decide("resumed", f"resumed by {who}")
        elif request.action == "approve" and state == "waiting-approval":
            work.set(state="running", reason=f"stage approved by {who}")
            work.decide("approved", f"stage {work.rollout.stage_index + 2} approved by {who}")
            _start_stage(work, work.rollout.stage_index + 1)
        elif request.action == "abort" and work.rollout.live(work.now):
            work.set(state="aborted", reason=f"aborted by {who}")
            work.decide(
                "aborted",
                f"aborted by {who}; devices keep what they run (fleet rollback moves them back)",
            )
        else:
            work.decide(
                "request-ignored",
                f"{request.action} asked by {who} does not apply to a {state} rollout",
            )
    if handled:
        work.actions.append(RequestsHandled(tuple(handled)))


def _observe_devices(work: _Step) -> None:
    """Move each device's entry by what it reports, its command results and its health."""
    rollout = work.rollout
    for device_id, entry in sorted(work.devices.items()):
        view = work.view(device_id)
        runs_bundle = view is not None and view.active == rollout.bundle_id
        if entry.state == "sent":
            outcome = work.observations.results.get(entry.command_id)
            if runs_bundle:
                work.entry(device_id, state="installed", installed_at=work.now, detail="")
                work.decide("installed", f"{device_id} runs {rollout.bundle_id}", device_id)
            elif outcome is not None and outcome.outcome in ("failed", "refused"):
                gate = "self-test" if "self-test" in outcome.detail else "install"
                work.entry(device_id, state="failed", detail=outcome.detail, broken=(gate,))
                work.decide(
                    "install-failed",
                    f"{device_id}: install {outcome.outcome}: {outcome.detail}",
                    device_id,
                    gate=gate,
                )
        elif entry.state in ("installed", "unhealthy"):
            if not runs_bundle:
                now_runs = view.active if view else None
                work.entry(device_id, state="sent", sent_at=0.0, detail=f"now runs {now_runs}")
                work.decide(
                    "left-bundle",
                    f"{device_id} no longer runs {rollout.bundle_id} (reports {now_runs}): "
                    "it will be sent again",
                    device_id,
                )
                continue
            health = work.observations.health.get(device_id, DeviceHealth())
            broken = judge_device(health, rollout.gates)
            figures = device_figures(health)
            if broken and entry.state == "installed":
                work.entry(
                    device_id,
                    state="unhealthy",
                    figures=figures,
                    broken=tuple(b.gate for b in broken),
                    detail="; ".join(b.describe() for b in broken),
                )
                work.decide(
                    "unhealthy",
                    f"{device_id}: " + "; ".join(b.describe() for b in broken),
                    device_id,
                    **figures,
                )
            elif dict(entry.figures) != figures:
                work.entry(device_id, figures=figures)


def _failed(work: _Step) -> list[DeviceEntry]:
    return [e for e in work.devices.values() if e.state in FAILED_STATES]


def _judge_failures(work: _Step) -> bool:
    """Roll back when failed devices pass the error threshold; True when it did."""
    rollout = work.rollout
    counted = [e for e in work.devices.values() if e.state != "offline"]
    failed = _failed(work)
    if not failed or not counted:
        return False
    share = len(failed) / len(counted)
    if share <= rollout.gates.error_threshold:
        return False
    gates: dict[str, list[str]] = {}
    for entry in failed:
        for gate in entry.broken or ("install",):
            gates.setdefault(gate, []).append(entry.device_id)
    stage = rollout.current_stage
    reason = (
        f"stage {rollout.stage_index + 1}: {len(failed)} of {len(counted)} devices failed "
        f"({share:.0%} > error threshold {rollout.gates.error_threshold:.0%}); gates broken: "
        + ", ".join(f"{g} on {', '.join(sorted(d))}" for g, d in sorted(gates.items()))
    )
    failure = Failure(
        stage=rollout.stage_index,
        at=work.now,
        reason=reason,
        gates={g: tuple(sorted(d)) for g, d in sorted(gates.items())},
        figures={
            e.device_id: {**e.figures, "detail": e.detail}
            for e in sorted(failed, key=lambda e: e.device_id)
        },
    )
    log = rollout.stage_log
    if stage is not None and stage.outcome == "running":
        log = (*log[:-1], replace(stage, outcome="failed", finished_at=work.now))
    work.set(state="rolled-back", failure=failure, stage_log=log, reason=reason)
    work.decide("rolled-back", reason, gates=failure.to_dict()["gates"])
    for entry in sorted(work.devices.values(), key=lambda e: e.device_id):
        view = work.view(entry.device_id)
        runs_bundle = view is not None and view.active == rollout.bundle_id
        if entry.state in ("sent", "installed", "unhealthy") or runs_bundle:
            _roll_back_device(work, entry, reason="rollout rolled back")
    return True


def _roll_back_device(work: _Step, entry: DeviceEntry, reason: str) -> None:
    view = work.view(entry.device_id)
    runs_bundle = view is not None and view.active == work.rollout.bundle_id
    if entry.from_bundle is None:
        if runs_bundle:
            work.entry(entry.device_id, detail="no previous bundle to return to")
            work.decide(
                "rollback-impossible",
                f"{entry.device_id} ran no bundle before this rollout: it keeps "
                f"{work.rollout.bundle_id}",
                entry.device_id,
            )
        return
    if not runs_bundle and entry.state not in ("sent", "installed", "unhealthy"):
        return
    work.send_rollback(entry, reason)
    work.decide(
        "rollback-sent",
        f"{entry.device_id}: activate {entry.from_bundle} ({reason})",
        entry.device_id,
    )


def _reconcile_rollback(work: _Step) -> None:
    """After a rollback: confirm devices went back; re-send to those still on the bundle."""
    rollout = work.rollout
    for device_id, entry in sorted(work.devices.items()):
        view = work.view(device_id)
        runs_bundle = view is not None and view.active == rollout.bundle_id
        if entry.state == "rolling-back":
            if not runs_bundle and view is not None:
                work.entry(device_id, state="rolled-back", detail=f"runs {view.active}")
                work.decide("rolled-back", f"{device_id} runs {view.active} again", device_id)
            elif (
                view is not None
                and view.online
                and work.now - entry.sent_at >= rollout.gates.resend_after_s
                and entry.from_bundle is not None
            ):
                work.send_rollback(entry, "no answer to the rollback: sent again")
        elif runs_bundle and entry.from_bundle is not None:
            # A device that finished its transfer after the rollback began.
            work.send_rollback(entry, "it installed the bundle after the rollback")
            work.decide(
                "rollback-sent",
                f"{device_id}: activate {entry.from_bundle} (installed after the rollback)",
                device_id,
            )


def _resend(work: _Step) -> None:
    """Install commands an online device has not answered are sent again, a few times."""
    gates = work.rollout.gates
    for device_id, entry in sorted(work.devices.items()):
        if entry.state != "sent":
            continue
        view = work.view(device_id)
        if view is None or not view.online or work.now - entry.sent_at < gates.resend_after_s:
            continue
        if entry.attempts >= gates.max_attempts:
            work.entry(
                device_id,
                state="failed",
                broken=("timeout",),
                detail=f"no answer after {entry.attempts} install commands",
            )
            work.decide(
                "install-failed",
                f"{device_id}: no answer after {entry.attempts} install commands",
                device_id,
                gate="timeout",
            )
            continue
        attempt = entry.attempts + 1
        reason = entry.detail or f"no answer after {gates.resend_after_s:g} s"
        command_id = work.send_install(device_id, attempt, f"sent again: {reason}")
        work.entry(device_id, command_id=command_id, sent_at=work.now, attempts=attempt)
        work.decide("install-sent", f"{device_id}: install sent again ({reason})", device_id)


def target_devices(rollout: Rollout, devices: Iterable[DeviceView]) -> list[DeviceView]:
    """The devices a rollout may reach, in the order stages take them: devices tagged
    ``canary`` first, then online devices, then by id."""
    eligible = [d for d in devices if rollout.in_target(d)]
    return sorted(eligible, key=lambda d: (CANARY_TAG not in d.tags, not d.online, d.device_id))


def _start_stage(work: _Step, index: int) -> None:
    rollout = work.rollout
    target = target_devices(rollout, work.observations.devices.values())
    if index == 0 and not target:
        if rollout.reason != "waiting for devices":
            work.set(reason="waiting for devices")
            work.decide("waiting", "no device of the target is registered yet")
        return
    size = max(rollout.stages[index].devices(len(target)), len(work.devices) if index else 1)
    chosen = [d for d in target if d.device_id not in work.devices][: size - len(work.devices)]
    record = StageRecord(index=index, size=size, started_at=work.now)
    work.set(
        stage_index=index,
        stage_log=(*rollout.stage_log, record),
        reason=f"stage {index + 1} of {len(rollout.stages)} started",
    )
    work.decide(
        "stage-started",
        f"stage {index + 1} of {len(rollout.stages)} ({rollout.stages[index]}): "
        f"{len(chosen)} new device(s), {size} of {len(target)} in all",
        devices=[d.device_id for d in chosen],
    )
    for device in chosen:
        if device.active == rollout.bundle_id:
            work.devices[device.device_id] = DeviceEntry(
                device.device_id, index, "installed", device.previous, "", work.now, 0, work.now
            )
            work.decide("installed", f"{device.device_id} already runs it", device.device_id)
            continue
        command_id = work.send_install(
            device.device_id, 1, f"stage {index + 1} of rollout {rollout.rollout_id}"
        )
        work.devices[device.device_id] = DeviceEntry(
            device.device_id, index, "sent", device.active, command_id, work.now
        )


def _advance_stage(work: _Step) -> None:
    rollout = work.rollout
    stage = rollout.current_stage
    assert stage is not None
    gates = rollout.gates
    members = [e for e in work.devices.values() if e.stage == stage.index]
    if work.now - stage.started_at >= gates.stage_timeout_s:
        for entry in members:
            if entry.state != "sent":
                continue
            view = work.view(entry.device_id)
            if view is not None and view.online:
                work.entry(
                    entry.device_id,
                    state="failed",
                    broken=("timeout",),
                    detail=f"not installed after the stage time-out ({gates.stage_timeout_s:g} s)",
                )
                work.decide("install-failed", "stage time-out", entry.device_id, gate="timeout")
            else:
                work.entry(entry.device_id, state="offline", detail="offline at the time-out")
                work.decide("skipped", "offline at the stage time-out", entry.device_id)
        if _judge_failures(work):
            return
        members = [e for e in work.devices.values() if e.stage == stage.index]
    counted = [e for e in members if e.state != "offline"]
    healthy = [e for e in counted if e.state == "installed"]
    enough = not counted or len(healthy) / len(counted) >= gates.success_threshold
    if not enough:
        if stage.soak_started_at is not None:
            _replace_stage(work, replace(stage, soak_started_at=None))
            work.decide("soak-reset", f"stage {stage.index + 1}: fewer healthy devices than needed")
        return
    if stage.soak_started_at is None:
        stage = replace(stage, soak_started_at=work.now)
        _replace_stage(work, stage)
        work.decide(
            "soak-started",
            f"stage {stage.index + 1}: {len(healthy)} of {len(counted)} devices healthy; "
            f"soaking {gates.soak_s:g} s",
        )
    if work.now - (stage.soak_started_at or work.now) < gates.soak_s:
        return
    _replace_stage(work, replace(stage, outcome="passed", finished_at=work.now))
    work.decide(
        "stage-passed",
        f"stage {stage.index + 1}: {len(healthy)} of {len(counted)} devices healthy "
        f"over {gates.soak_s:g} s",
    )
    if stage.index + 1 >= len(rollout.stages):
        work.set(state="succeeded", reason=f"all {len(rollout.stages)} stages passed")
        work.decide("succeeded", f"all {len(rollout.stages)} stages passed")
    elif gates.manual_approval:
        work.set(state="waiting-approval", reason=f"stage {stage.index + 1} passed")
        work.decide("waiting-approval", f"stage {stage.index + 2} waits for approval")
    else:
        _start_stage(work, stage.index + 1)


def _replace_stage(work: _Step, stage: StageRecord) -> None:
    log = work.rollout.stage_log
    work.set(stage_log=(*log[:-1], stage))


def is_settled(document: Mapping[str, Any]) -> bool:
    """Whether a status document (:func:`summary`) shows a rollout that will not change any
    more on its own: succeeded or aborted, or rolled back with no device still going back."""
    state = document.get("state")
    if state in FINAL_STATES:
        return True
    devices = document.get("devices") or ()
    return state == "rolled-back" and not any(d.get("state") == "rolling-back" for d in devices)


def summary(rollout: Rollout) -> dict[str, Any]:
    """The rollout status document (``rollout status --json``): state, stages with their
    devices per state, each device's state and figures, and the failure if any."""
    stages = []
    for index, size in enumerate(rollout.stages):
        record = next((s for s in rollout.stage_log if s.index == index), None)
        members = [e for e in rollout.devices.values() if e.stage == index]
        counts = {state: sum(e.state == state for e in members) for state in DEVICE_STATES}
        stages.append(
            {
                "index": index,
                "size": str(size),
                "devices": record.size if record else None,
                "outcome": record.outcome if record else "pending",
                "started_at": record.started_at if record else None,
                "soak_started_at": record.soak_started_at if record else None,
                "finished_at": record.finished_at if record else None,
                "states": {state: n for state, n in counts.items() if n},
            }
        )
    document = rollout.to_dict()
    document["stages"] = stages
    document["devices"] = [e.to_dict() for _, e in sorted(rollout.devices.items())]
    document["gate_figures"] = _gate_figures(rollout)
    return document


def _gate_figures(rollout: Rollout) -> dict[str, Any]:
    """The worst figure of each health gate over the rollout's devices, with its threshold."""
    gates = rollout.gates
    worst: dict[str, Any] = {}
    for key, gate, threshold in (
        ("error_rate", "error-rate", gates.max_error_rate),
        ("latency_ratio", "latency", gates.max_latency_ratio),
        ("max_psi", "drift", gates.max_psi),
    ):
        values = [
            (e.figures[key], e.device_id)
            for e in rollout.devices.values()
            if e.figures.get(key) is not None
        ]
        top = max(values, default=None)
        worst[gate] = {
            "worst": top[0] if top else None,
            "device_id": top[1] if top else None,
            "threshold": threshold,
        }
    return worst
