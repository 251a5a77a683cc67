"""Installing a bundle on a device: the pure state machine and the admission rules.

The machine (:func:`step`) holds every decision of the install lifecycle, like h11's
``_state.py`` or python-tuf's ``trusted_metadata_set``: ``step(state, event) -> (state,
actions)``, with no disk, no clock and no onnxruntime inside. An event that is not allowed in
the current phase raises :class:`IllegalTransition` and changes nothing (states are frozen)::

    idle ─Receive─► received ─Verified─► verified ─Unpacked─► unpacked ─SelfTestPassed─► self-tested
     ▲                 │  (refused: profile,  │                   │                          │
     │                 │   downgrade, replay) │                   │                       Switched
     │                 ▼                      ▼                   ▼                          ▼
     │               failed(reason) ◄──Fail───┴───────Fail────────┴───────Fail─────────  activated
     └───────────────────── Finish ──────────────────────────────────────────────────────────┘

A failure in any phase before ``Switched`` leaves the active bundle as it was: the active
pointer changes only on ``Switched``, and ``Switched`` is allowed only after ``SelfTestPassed``.

Admission (:func:`refusal`) is decided once the verified bundle is known: a bundle for another
hardware profile is refused (no mix-and-match); within one lineage (same name and profile) a
version lower than the one last activated is refused, and so is the same version with other
content, unless the install is an allowed rollback to the ``previous`` bundle the device holds.
Versions compare by their dotted numbers, then their suffix (:func:`version_key`).

The shell that runs it on disk is :mod:`edgeml.agent.install`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from edgeml.agent.slots import AgentState, BundleRef
from edgeml.toolkit.errors import EdgeMLError, GateError, InputError
from edgeml.toolkit.golden import OutputComparison

# ---------------------------------------------------------------------------------- errors


class IllegalTransition(EdgeMLError):
    """An event the install machine does not allow in its current phase (a bug in the shell)."""


class SelfTestError(GateError):
    """A bundle's golden self-test failed on this device: it is not activated (exit 4).

    Attributes:
        bundle_id: the bundle tested.
        rows: the golden rows whose outputs did not match (0-based), when the model ran.
        comparison: the full comparison, when the model ran.
    """

    def __init__(
        self, message: str, bundle_id: str, comparison: OutputComparison | None = None
    ) -> None:
        super().__init__(message)
        self.bundle_id = bundle_id
        self.comparison = comparison
        self.rows = comparison.disagreeing_rows if comparison else ()


class InstallError(EdgeMLError):
    """The device could not write an install (disk full, I/O error); the active bundle is
    unchanged."""


class NoPreviousBundleError(InputError):
    """A rollback was asked for but the device holds no previous bundle."""


# --------------------------------------------------------------------------------- versions

_VERSION = re.compile(r"^([0-9]+(?:\.[0-9]+){0,3})(?:([a-z]+)([0-9]*))?$")
_SUFFIX_RANK = {"dev": 0, "a": 1, "alpha": 1, "b": 2, "beta": 2, "c": 3, "rc": 3, "pre": 3}
_SUFFIX_NAME = {"alpha": "a", "beta": "b", "c": "rc", "pre": "rc"}
_OTHER_SUFFIX, _RELEASE, _POST = 4, 5, 6


def version_key(version: str) -> tuple[Any, ...]:
    """A sort key for a bundle version (``VERSION_PATTERN``): dotted numbers, then suffix.

    Numbers compare numerically with missing parts as zeros (``1.2`` == ``1.2.0`` <
    ``1.10``). A suffix ranks ``dev`` < ``a``/``alpha`` < ``b``/``beta`` < ``rc``/``c``/``pre``
    < any other letters (alphabetically) < no suffix < ``post``; the suffix's own number
    compares numerically (``rc2`` < ``rc10``).

    Raises:
        ValueError: not a valid bundle version.
    """
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a bundle version")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    numbers += (0,) * (4 - len(numbers))
    letters, number = match.group(2), match.group(3)
    if letters is None:
        suffix: tuple[Any, ...] = (_RELEASE, "", 0)
    elif letters == "post":
        suffix = (_POST, "", int(number or 0))
    else:
        rank = _SUFFIX_RANK.get(letters, _OTHER_SUFFIX)
        suffix = (rank, _SUFFIX_NAME.get(letters, letters), int(number or 0))
    return (numbers, *suffix)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is lower than, equal to or higher than ``b``."""
    key_a, key_b = version_key(a), version_key(b)
    return (key_a > key_b) - (key_a < key_b)


# ------------------------------------------------------------------------------ the machine


class Phase(str, Enum):
    """Where an install attempt stands."""

    IDLE = "idle"
    RECEIVED = "received"  # the bundle file is complete on the device
    VERIFIED = "verified"  # signature, hashes, profile and version admitted
    UNPACKED = "unpacked"  # written into its slot (staging) and synced
    SELF_TESTED = "self-tested"  # loaded, and every golden row matched
    ACTIVATED = "activated"  # the active pointer names it
    FAILED = "failed"  # refused or failed; the active bundle is unchanged


@dataclass(frozen=True)
class InstallState:
    """The machine's state: the device's bundles and the attempt in progress.

    Attributes:
        profile: the hardware profile this device runs.
        device: the persisted state (active, previous, version floors).
        phase: where the attempt stands.
        candidate: the bundle being installed, once verified.
        rollback: whether this attempt may go back to the previous bundle.
        reason: why the attempt failed (phase ``failed``).
    """

    profile: str
    device: AgentState
    phase: Phase = Phase.IDLE
    candidate: BundleRef | None = None
    rollback: bool = False
    reason: str = ""


# Events: what the shell observed.
@dataclass(frozen=True)
class Receive:
    """A bundle file is complete on the device; start an attempt."""

    allow_rollback_to_previous: bool = False


@dataclass(frozen=True)
class Verified:
    """Signature and hashes verified; this is the bundle."""

    bundle: BundleRef


@dataclass(frozen=True)
class Unpacked:
    """The bundle is written into its slot and synced."""


@dataclass(frozen=True)
class SelfTestPassed:
    """The model loaded and every golden row matched."""


@dataclass(frozen=True)
class Switched:
    """The state file now names the candidate as active."""


@dataclass(frozen=True)
class Fail:
    """A step failed (verification, I/O, self-test)."""

    reason: str


@dataclass(frozen=True)
class Finish:
    """The attempt is over (activated or failed); back to idle."""


Event = Receive | Verified | Unpacked | SelfTestPassed | Switched | Fail | Finish


# Actions: what the shell must do next.
@dataclass(frozen=True)
class VerifyBundle:
    """Copy the bundle into a staging folder and verify the copy."""


@dataclass(frozen=True)
class PrepareSlot:
    """Unpack the verified bundle into its slot (or reuse the slot the device holds)."""

    bundle: BundleRef


@dataclass(frozen=True)
class RunSelfTest:
    """Load the slot's model and run the golden rows."""

    bundle: BundleRef


@dataclass(frozen=True)
class SwitchActive:
    """Put the slot in place and write ``state`` as the state file (if ``changed``)."""

    state: AgentState
    changed: bool


@dataclass(frozen=True)
class CollectGarbage:
    """Remove every slot but these bundle ids."""

    keep: tuple[str, ...]


@dataclass(frozen=True)
class DiscardCandidate:
    """Remove what the attempt wrote, but never a slot the device uses."""

    bundle: BundleRef | None
    slot_in_use: bool


Action = VerifyBundle | PrepareSlot | RunSelfTest | SwitchActive | CollectGarbage | DiscardCandidate

_ALLOWED: dict[Phase, tuple[type, ...]] = {
    Phase.IDLE: (Receive,),
    Phase.RECEIVED: (Verified, Fail),
    Phase.VERIFIED: (Unpacked, Fail),
    Phase.UNPACKED: (SelfTestPassed, Fail),
    Phase.SELF_TESTED: (Switched, Fail),
    Phase.ACTIVATED: (Finish,),
    Phase.FAILED: (Finish,),
}


def same_bundle(a: BundleRef | None, b: BundleRef | None) -> bool:
    """Same id and same signed manifest."""
    return a is not None and b is not None and a == b


def refusal(
    candidate: BundleRef, device: AgentState, profile: str, *, rollback: bool = False
) -> str | None:
    """Why a verified bundle may not be installed on this device, or None when it may.

    Args:
        candidate: the verified bundle.
        device: the device's state.
        profile: the hardware profile the device runs.
        rollback: the install may go back to the device's previous bundle.
    """
    if candidate.profile != profile:
        return (
            f"{candidate.bundle_id} is built for hardware profile {candidate.profile!r}; this "
            f"device runs {profile!r} (a bundle runs only on the profile it was built for)"
        )
    if rollback and same_bundle(candidate, device.previous):
        return None
    floor = device.floor(candidate.name, candidate.profile)
    if floor is None:
        return None
    order = compare_versions(candidate.version, floor.version)
    if order > 0 or (order == 0 and same_bundle(candidate, floor)):
        return None
    where = "active" if same_bundle(floor, device.active) else "last active"
    if order == 0:
        return (
            f"downgrade refused: {candidate.bundle_id} has the version of the {where} bundle "
            f"{floor.bundle_id} but other content (manifest {candidate.digest[:12]}…, "
            f"{where} {floor.digest[:12]}…)"
        )
    rule = "only a rollback to the previous bundle the device holds may go back"
    if rollback and device.previous is not None:
        rule += f" ({device.previous.bundle_id}, manifest {device.previous.digest[:12]}…)"
    return (
        f"downgrade refused: {candidate.bundle_id} is older than the {where} bundle "
        f"{floor.bundle_id}; {rule}"
    )


def activated(device: AgentState, candidate: BundleRef) -> AgentState:
    """The device state once ``candidate`` is active: the old active becomes previous."""
    if same_bundle(candidate, device.active):
        return device.with_floor(candidate)
    return replace(device, active=candidate, previous=device.active).with_floor(candidate)


def fall_back(device: AgentState, *, active_ok: bool, previous_ok: bool) -> AgentState:
    """The device state after recovery found its active and previous slots intact or not.

    A damaged active bundle gives way to the previous one when that is intact, else to none;
    a damaged previous bundle is dropped (nothing can roll back to it).
    """
    active, previous = device.active, device.previous
    if active is not None and not active_ok:
        active = previous if previous is not None and previous_ok else None
        previous = None
    elif previous is not None and not previous_ok:
        previous = None
    result = replace(device, active=active, previous=previous)
    if active is not None and not same_bundle(active, device.active):
        result = result.with_floor(active)
    return result


def step(state: InstallState, event: Event) -> tuple[InstallState, tuple[Action, ...]]:
    """Apply one event; return the new state and the actions the shell must take.

    Raises:
        IllegalTransition: the event is not allowed in ``state.phase``; ``state`` is unchanged.
    """
    if not isinstance(event, _ALLOWED[state.phase]):
        allowed = ", ".join(t.__name__ for t in _ALLOWED[state.phase])
        raise IllegalTransition(
            f"{type(event).__name__} is not allowed in phase {state.phase.value} "
            f"(allowed: {allowed})"
        )
    if isinstance(event, Receive):
        return (
            replace(state, phase=Phase.RECEIVED, rollback=event.allow_rollback_to_previous),
            (VerifyBundle(),),
        )
    if isinstance(event, Verified):
        reason = refusal(event.bundle, state.device, state.profile, rollback=state.rollback)
        if reason is not None:
            return _failed(replace(state, candidate=event.bundle), reason)
        return replace(state, phase=Phase.VERIFIED, candidate=event.bundle), (
            PrepareSlot(event.bundle),
        )
    if isinstance(event, Fail):
        return _failed(state, event.reason)
    if isinstance(event, Finish):
        return InstallState(state.profile, state.device), ()
    candidate = state.candidate
    assert candidate is not None  # every phase after received has one
    if isinstance(event, Unpacked):
        return replace(state, phase=Phase.UNPACKED), (RunSelfTest(candidate),)
    if isinstance(event, SelfTestPassed):
        planned = activated(state.device, candidate)
        changed = planned.to_dict() != state.device.to_dict()
        return replace(state, phase=Phase.SELF_TESTED), (SwitchActive(planned, changed),)
    # Switched
    device = activated(state.device, candidate)
    keep = tuple(r.bundle_id for r in (device.active, device.previous) if r is not None)
    return replace(state, phase=Phase.ACTIVATED, device=device), (CollectGarbage(keep),)


def _failed(state: InstallState, reason: str) -> tuple[InstallState, tuple[Action, ...]]:
    held = {r.bundle_id for r in (state.device.active, state.device.previous) if r is not None}
    in_use = state.candidate is not None and state.candidate.bundle_id in held
    return replace(state, phase=Phase.FAILED, reason=reason), (
        DiscardCandidate(state.candidate, in_use),
    )
