"""Installing a bundle on a device: a pure state machine, and the shell that runs it on disk.

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

The shell (:func:`install_bundle`, :func:`rollback`, :func:`recover`) runs the machine under
the install lock: it copies the bundle into a staging folder, verifies the copy, unpacks it,
loads it with onnxruntime and runs its golden self-test, renames the folder into its slot and
replaces ``state.json`` atomically (``edgeml.agent.slots`` has the layout). Receiving bundles
over MQTT is ``edgeml.agent.transfer``'s job; serving the active bundle is the daemon's.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from edgeml.agent.locking import install_lock
from edgeml.agent.slots import (
    BUNDLE_FILE,
    STAGING_PREFIX,
    STATE_FILE,
    AgentState,
    BundleRef,
    Checkpoint,
    HistoryEntry,
    check_slot,
    copy_file,
    fsync_dir,
    is_disk_full,
    leftovers,
    read_state,
    remove_path,
    slot_bundle,
    slot_dir,
    slot_folders,
    slots_dir,
    unpack,
    write_state,
)
from edgeml.toolkit.bundle import (
    DEFAULT_LIMITS,
    GOLDEN,
    MODEL,
    BundleLimits,
    VerifiedBundle,
    check_bundle,
)
from edgeml.toolkit.errors import BundleError, ConfigError, EdgeMLError, GateError, InputError
from edgeml.toolkit.golden import GoldenSet, OutputComparison, compare_outputs
from edgeml.toolkit.runtime import create_session, run_manifest_model
from edgeml.toolkit.trust import TrustStore, load_trust_store

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


# -------------------------------------------------------------------------------- self-test


def run_self_test(folder: Path, bundle: VerifiedBundle) -> OutputComparison:
    """Load the model unpacked in ``folder`` with onnxruntime and run the golden rows.

    The model file's bytes are checked against the verified manifest and the session is
    created from those same bytes, on the providers, threads and optimization level of the
    bundle's hardware profile. Every row must match (``compare_outputs(every_row=True)``).

    Returns:
        The comparison (passed).

    Raises:
        BundleError: the unpacked model is not the verified one.
        SelfTestError: the model does not load or run, or a golden row does not match.
    """
    manifest = bundle.manifest
    bid = manifest.bundle_id
    model = (folder / MODEL).read_bytes()
    if hashlib.sha256(model).hexdigest() != manifest.entries[MODEL].sha256:
        raise BundleError(f"{folder / MODEL}: differs from the verified bundle {bid}")
    try:
        golden = GoldenSet.from_dict(bundle.json_entry(GOLDEN))
    except (BundleError, ValueError) as error:
        raise SelfTestError(f"{bid}: golden self-test cannot run: {error}", bid) from None
    settings = manifest.profile_settings
    try:
        session = create_session(
            model,
            tuple(settings.get("execution_providers") or ("CPUExecutionProvider",)),
            threads=int(settings.get("threads", 0)),
            optimization_level=str(settings.get("graph_optimization_level", "all")),
        )
    except Exception as error:  # onnxruntime raises its own classes: all mean "does not load"
        raise SelfTestError(
            f"{bid}: the model does not load in onnxruntime: {error}", bid
        ) from None
    try:
        outputs = run_manifest_model(session, manifest, golden.rows)
        comparison = compare_outputs(outputs, golden.expected, golden.tolerance, every_row=True)
    except Exception as error:  # onnxruntime's run errors, or outputs of the wrong shape
        raise SelfTestError(f"{bid}: the model fails on its golden rows: {error}", bid) from None
    if not comparison.passed:
        rows = ", ".join(str(r) for r in comparison.disagreeing_rows)
        raise SelfTestError(
            f"{bid}: golden self-test failed on row(s) {rows}: {comparison.describe()}",
            bid,
            comparison,
        )
    return comparison


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class InstallResult:
    """What an install or a rollback did.

    Attributes:
        bundle: the bundle installed.
        active, previous: the device's bundles now.
        changed: False when the bundle was already active (nothing switched).
        rolled_back: the bundle was the previous one (a rollback).
        self_test: the golden self-test's comparison.
        removed_slots: slots garbage-collected (bundle ids).
        warnings: what went wrong after the switch without undoing it (a slot not removed).
    """

    bundle: BundleRef
    active: BundleRef | None
    previous: BundleRef | None
    changed: bool
    rolled_back: bool
    self_test: OutputComparison
    removed_slots: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle.bundle_id,
            "active": self.active.bundle_id if self.active else None,
            "previous": self.previous.bundle_id if self.previous else None,
            "changed": self.changed,
            "rolled_back": self.rolled_back,
            "self_test": self.self_test.to_dict(),
            "removed_slots": list(self.removed_slots),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class RecoveryResult:
    """What recovery found and did when the agent started.

    Attributes:
        active, previous: the device's bundles after recovery; ``active`` None means no
            verified bundle (the local API answers 503).
        fell_back: the active bundle changed because the one named was damaged.
        problems: what was damaged, and why.
        cleaned: leftovers of interrupted installs that were removed, and slots no state
            names.
    """

    active: BundleRef | None
    previous: BundleRef | None
    fell_back: bool
    problems: tuple[str, ...] = ()
    cleaned: tuple[str, ...] = ()

    @property
    def serving(self) -> bool:
        return self.active is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active.bundle_id if self.active else None,
            "previous": self.previous.bundle_id if self.previous else None,
            "fell_back": self.fell_back,
            "problems": list(self.problems),
            "cleaned": list(self.cleaned),
        }


# ---------------------------------------------------------------------------------- shell


TrustSource = TrustStore | str | os.PathLike[str] | Callable[[], TrustStore]
"""A trust store, the path of one, or a function that gives the current one (called under the
install lock, so that a change of trust and an install never cross)."""


def _store(trust: TrustSource) -> TrustStore:
    if isinstance(trust, TrustStore):
        return trust
    if callable(trust):
        return trust()
    return load_trust_store(trust)


def _no_checkpoint(step: str) -> None:
    return None


class _Installer:
    """Runs one install attempt: performs the machine's actions and feeds back events."""

    def __init__(
        self,
        state_dir: Path,
        trust: TrustStore,
        limits: BundleLimits,
        checkpoint: Checkpoint | None,
        now: float | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.trust = trust
        self.limits = limits
        self.now = now  # expiry is checked at this time; None: not checked (a rollback)
        self.checkpoint = checkpoint or _no_checkpoint
        self.source = Path()
        self.before = AgentState()
        self.staging: Path | None = None
        self.placed: Path | None = None  # a slot this attempt renamed into place
        self.verified: VerifiedBundle | None = None
        self.comparison: OutputComparison | None = None
        self.error: EdgeMLError | None = None
        self.removed: list[str] = []
        self.warnings: list[str] = []

    def run(self, source: Path, profile: str, allow_rollback: bool) -> InstallResult:
        slots_dir(self.state_dir).mkdir(parents=True, exist_ok=True)
        self.checkpoint("locked")
        device = read_state(self.state_dir)
        self._clean(device)
        self.source, self.before = source, device
        machine = InstallState(profile, device)
        events: deque[Event] = deque([Receive(allow_rollback)])
        try:
            while events:
                machine, actions = step(machine, events.popleft())
                for action in actions:
                    event = self._perform(action)
                    if event is not None:
                        events.append(event)
        finally:
            if self.staging is not None:
                remove_path(self.staging)
        if machine.phase is Phase.FAILED:
            raise self.error or BundleError(f"{source}: refused: {machine.reason}")
        candidate = machine.candidate
        assert machine.phase is Phase.ACTIVATED and candidate is not None
        assert self.comparison is not None
        machine, _ = step(machine, Finish())
        self.checkpoint("done")
        return InstallResult(
            bundle=candidate,
            active=machine.device.active,
            previous=machine.device.previous,
            changed=not same_bundle(device.active, candidate),
            rolled_back=allow_rollback and same_bundle(candidate, device.previous),
            self_test=self.comparison,
            removed_slots=tuple(self.removed),
            warnings=tuple(self.warnings),
        )

    def _clean(self, device: AgentState) -> None:
        """Remove what crashed attempts left, and slots no state names (we hold the lock)."""
        keep = {r.bundle_id for r in (device.active, device.previous) if r is not None}
        stale = leftovers(self.state_dir) + [
            p for p in slot_folders(self.state_dir) if p.name not in keep
        ]
        for path in stale:
            remove_path(path)
        if stale:
            fsync_dir(slots_dir(self.state_dir))

    def _fail(self, error: EdgeMLError) -> Fail:
        self.error = error
        return Fail(str(error))

    def _perform(self, action: Action) -> Event | None:
        if isinstance(action, VerifyBundle):
            return self._receive_and_verify()
        if isinstance(action, PrepareSlot):
            return self._prepare(action.bundle)
        if isinstance(action, RunSelfTest):
            return self._self_test(action.bundle)
        if isinstance(action, SwitchActive):
            return self._switch(action)
        if isinstance(action, CollectGarbage):
            self._collect(action.keep)
            return None
        self._discard(action)
        return None

    def _receive_and_verify(self) -> Event:
        source = self.source
        try:
            size = source.stat().st_size
        except OSError as error:
            return self._fail(BundleError(f"{source}: refused, check 'archive' failed: {error}"))
        if size > self.limits.max_bundle_bytes:
            return self._fail(
                BundleError(
                    f"{source}: refused, check 'sizes' failed: {size} bytes, over the limit "
                    f"of {self.limits.max_bundle_bytes}"
                )
            )
        staging = slots_dir(self.state_dir) / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        try:
            os.mkdir(staging)
            self.staging = staging
            self.checkpoint("staging-created")
            copy_file(source, staging / BUNDLE_FILE, self.checkpoint)
        except OSError as error:
            return self._fail(self._io_error(f"cannot copy {source} into {staging}", error))
        # The copy is what is verified, and what is kept: the source may change meanwhile.
        report, bundle = check_bundle(staging / BUNDLE_FILE, self.trust, self.limits, now=self.now)
        if bundle is None:
            failure = report.failure
            assert failure is not None
            return self._fail(
                BundleError(f"{source}: refused, check '{failure.name}' failed: {failure.detail}")
            )
        self.verified = bundle
        self.checkpoint("verified")
        return Verified(BundleRef.of(bundle))

    def _prepare(self, ref: BundleRef) -> Event:
        assert self.verified is not None and self.staging is not None
        slot = slot_dir(self.state_dir, ref.bundle_id)
        if slot.exists():
            try:
                check_slot(self.state_dir, ref, self.trust, self.limits)
            except BundleError as damage:
                self.warnings.append(f"slot {slot} replaced: {damage}")
            else:  # the device holds this very bundle, intact: use its slot as it is
                remove_path(self.staging)
                self.staging = None
                self.checkpoint("unpacked")
                return Unpacked()
        try:
            unpack(self.verified, self.staging, self.checkpoint)
        except OSError as error:
            return self._fail(self._io_error(f"cannot unpack {ref.bundle_id}", error))
        return Unpacked()

    def _self_test(self, ref: BundleRef) -> Event:
        assert self.verified is not None
        folder = self.staging or slot_dir(self.state_dir, ref.bundle_id)
        try:
            self.comparison = run_self_test(folder, self.verified)
        except (SelfTestError, BundleError) as error:
            return self._fail(error)
        except OSError as error:
            return self._fail(self._io_error(f"cannot read {folder / MODEL}", error))
        self.checkpoint("self-tested")
        return SelfTestPassed()

    def _switch(self, action: SwitchActive) -> Event:
        active = action.state.active
        assert active is not None
        try:
            if self.staging is not None:
                slot = slot_dir(self.state_dir, active.bundle_id)
                if slot.exists():  # a damaged copy of this bundle: the new one replaces it
                    remove_path(slot)
                os.rename(self.staging, slot)
                self.staging, self.placed = None, slot
                self.checkpoint("slot-renamed")
                fsync_dir(slots_dir(self.state_dir))
                self.checkpoint("slot-synced")
            if action.changed:
                before = self.before
                event = "rolled-back" if same_bundle(active, before.previous) else "installed"
                detail = f"previous: {before.active.bundle_id if before.active else 'none'}"
                entry = HistoryEntry(time.time(), event, active.bundle_id, detail)
                write_state(self.state_dir, action.state.with_history(entry), self.checkpoint)
        except OSError as error:
            if self._state_names(active):  # replaced, only the folder's fsync failed
                self.warnings.append(f"state folder not synced: {error}")
                return Switched()
            return self._fail(self._io_error(f"cannot activate {active.bundle_id}", error))
        return Switched()

    def _state_names(self, active: BundleRef) -> bool:
        try:
            return same_bundle(read_state(self.state_dir).active, active)
        except ConfigError:
            return False

    def _collect(self, keep: tuple[str, ...]) -> None:
        """Remove slots older than previous; a failure here leaves garbage, not damage."""
        try:
            for path in slot_folders(self.state_dir):
                if path.name not in keep:
                    remove_path(path)
                    self.removed.append(path.name)
                    self.checkpoint("gc-partial")
            fsync_dir(slots_dir(self.state_dir))
        except OSError as error:
            self.warnings.append(f"old slots not removed (recovery will): {error}")
        self.checkpoint("gc-done")

    def _discard(self, action: DiscardCandidate) -> None:
        try:
            if self.staging is not None:
                remove_path(self.staging)
                self.staging = None
            if self.placed is not None and not action.slot_in_use:
                remove_path(self.placed)
                self.placed = None
        except OSError as error:  # recovery or the next install removes it
            self.warnings.append(f"leftover not removed: {error}")

    @staticmethod
    def _io_error(what: str, error: OSError) -> InstallError:
        if is_disk_full(error):
            return InstallError(f"{what}: no space left on the device ({error})")
        return InstallError(f"{what}: {error}")


def install_bundle(
    bundle_path: Path | str,
    state_dir: Path | str,
    trust: TrustSource,
    profile: str,
    *,
    allow_rollback_to_previous: bool = False,
    checkpoint: Checkpoint | None = None,
    lock_timeout: float | None = None,
    limits: BundleLimits = DEFAULT_LIMITS,
    now: float | None = None,
) -> InstallResult:
    """Install a bundle file and make it active, or leave the active bundle as it was.

    Under the install lock: copy the bundle into a staging folder, verify the copy (signature
    by a trusted key that is not revoked, hashes, not expired), admit it (profile, no
    downgrade), unpack it, load it with onnxruntime and run its
    golden self-test, rename the folder into ``slots/<bundle_id>``, replace ``state.json``
    atomically (the old active becomes previous), remove older slots. Installing the active
    bundle again changes nothing.

    Args:
        bundle_path: the ``.edgeml`` file (it is copied, not moved).
        state_dir: the agent's state folder.
        trust: a trust store, the path of one, or a function giving the current one (called
            under the lock).
        profile: the hardware profile this device runs.
        allow_rollback_to_previous: accept the device's previous bundle although it is older.
        checkpoint: called with each step's name (``CHECKPOINTS``); for tests.
        lock_timeout: seconds to wait for another install; None waits.
        limits: size bounds for verification.
        now: the Unix time the bundle's expiry is checked at; None takes the clock's.

    Returns:
        What the install did.

    Raises:
        BundleError: the bundle does not verify (untrusted or revoked key, signature, hashes),
            has expired, is for another profile, or is a downgrade (exit 3).
        SelfTestError: the golden self-test failed; names the rows (exit 4).
        InstallError: the device could not write the install (disk full, I/O error).
        ConfigError: the trust store or ``state.json`` cannot be read (run :func:`recover`).
        LockTimeoutError: another install held the lock longer than ``lock_timeout``.
    """
    folder = Path(state_dir)
    when = time.time() if now is None else now
    with install_lock(folder, timeout=lock_timeout):
        store = _store(trust)
        installer = _Installer(folder, store, limits, checkpoint, when)
        return installer.run(Path(bundle_path), profile, allow_rollback_to_previous)


def rollback(
    state_dir: Path | str,
    trust: TrustSource,
    *,
    checkpoint: Checkpoint | None = None,
    lock_timeout: float | None = None,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> InstallResult:
    """Make the previous bundle active again; the active one becomes previous.

    The previous slot is re-verified and self-tested through the same path as an install, but
    its expiry is not checked: it was admitted when it was installed, and expiry gates only the
    install of a bundle the device does not hold.

    Raises:
        NoPreviousBundleError: the device holds no previous bundle (exit 2).
        BundleError: the previous slot does not verify any more; the active one stays.
        SelfTestError: the previous bundle fails its self-test now; the active one stays.
        InstallError, ConfigError, LockTimeoutError: as for :func:`install_bundle`.
    """
    folder = Path(state_dir)
    with install_lock(folder, timeout=lock_timeout):
        store = _store(trust)
        previous = read_state(folder).previous
        if previous is None:
            raise NoPreviousBundleError(f"{folder}: no previous bundle to roll back to")
        installer = _Installer(folder, store, limits, checkpoint)
        return installer.run(slot_bundle(folder, previous.bundle_id), previous.profile, True)


def recover(
    state_dir: Path | str,
    trust: TrustSource,
    *,
    self_test: bool = False,
    lock_timeout: float | None = None,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> RecoveryResult:
    """Bring the state folder back to a consistent state; run when the agent starts.

    Under the install lock: remove what interrupted installs left (staging folders, temporary
    state files), re-verify the active and previous slots (the bundle file, its manifest's
    hash, every unpacked entry; the golden self-test too when ``self_test``), fall back to the
    previous bundle when the active one is damaged, and to none when neither verifies; remove
    slots the state does not name. A ``state.json`` that cannot be read is moved aside to
    ``state.json.damaged`` (slots are then kept). A slot signed by a key ``trust`` revokes
    does not verify: it is treated as damaged.

    Returns:
        What recovery found; ``active`` None means the device has no verified bundle.

    Raises:
        ConfigError: the trust store cannot be loaded.
        LockTimeoutError: another install held the lock longer than ``lock_timeout``.
    """
    folder = Path(state_dir)
    with install_lock(folder, timeout=lock_timeout):
        store = _store(trust)
        return reverify_held_bundles(folder, store, self_test=self_test, limits=limits)


def reverify_held_bundles(
    state_dir: Path,
    trust: TrustStore,
    *,
    self_test: bool = False,
    limits: BundleLimits = DEFAULT_LIMITS,
    event: str = "recovered",
    failing: str = "is damaged",
) -> RecoveryResult:
    """:func:`recover`'s work, for a caller that already holds the install lock.

    Also what a change of trust runs (``edgeml.agent.trust``): a bundle signed by a key the
    new trust revokes, or no longer lists, stops verifying and is dropped like a damaged one.

    Args:
        state_dir: the agent's state folder.
        trust: the store the held bundles must verify against.
        self_test: run the golden self-test of each held bundle too.
        limits: size bounds for verification.
        event: the history entry's event when the state changes.
        failing: how a problem says a bundle failed (``is damaged``, ``does not verify ...``).

    Returns:
        What was found and done.
    """
    folder = state_dir
    slots_dir(folder).mkdir(parents=True, exist_ok=True)
    cleaned: list[str] = []
    problems: list[str] = []
    for path in leftovers(folder):
        remove_path(path)
        cleaned.append(path.name)
    readable = True
    try:
        device = read_state(folder)
    except ConfigError as error:
        readable = False
        problems.append(f"{error}; moved aside to {STATE_FILE}.damaged")
        os.replace(folder / STATE_FILE, folder / f"{STATE_FILE}.damaged")
        device = AgentState()

    def intact(ref: BundleRef | None, role: str) -> bool:
        if ref is None:
            return False
        try:
            bundle = check_slot(folder, ref, trust, limits)
            if self_test:
                run_self_test(slot_dir(folder, ref.bundle_id), bundle)
        except (BundleError, SelfTestError, OSError) as error:
            problems.append(f"{role} bundle {ref.bundle_id} {failing}: {error}")
            return False
        return True

    active_ok = intact(device.active, "active")
    previous_ok = intact(device.previous, "previous")
    recovered = fall_back(device, active_ok=active_ok, previous_ok=previous_ok)
    fell_back = recovered.active != device.active
    if recovered.to_dict() != device.to_dict():
        detail = "; ".join(problems)
        entry = HistoryEntry(
            time.time(),
            event,
            recovered.active.bundle_id if recovered.active else None,
            detail,
        )
        write_state(folder, recovered.with_history(entry))
    if readable:
        keep = {r.bundle_id for r in (recovered.active, recovered.previous) if r is not None}
        for path in slot_folders(folder):
            if path.name not in keep:
                remove_path(path)
                cleaned.append(f"{path.name} (slot no state names, or damaged)")
    if cleaned:
        fsync_dir(slots_dir(folder))
        fsync_dir(folder)
    return RecoveryResult(
        recovered.active, recovered.previous, fell_back, tuple(problems), tuple(cleaned)
    )


CHECKPOINTS = (
    "locked",
    "staging-created",
    "copy-partial",
    "copied",
    "verified",
    "unpack-partial",
    "unpacked",
    "self-tested",
    "slot-renamed",
    "slot-synced",
    "state-temp-created",
    "state-temp-partial",
    "state-temp-written",
    "state-temp-synced",
    "state-replaced",
    "state-synced",
    "gc-partial",
    "gc-done",
    "done",
)
"""Every step boundary of an install, in order, where ``checkpoint`` is called. ``gc-partial``
comes once per slot removed; when the device already holds the bundle intact (a rollback, a
re-sent bundle) its slot is reused: ``unpack-partial`` and the ``slot-*`` steps are skipped,
and so are the ``state-*`` steps when nothing changes."""
