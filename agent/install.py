"""Installing a bundle on a device: the shell that runs the install state machine on disk.

The decisions (phases, admission: no mix-and-match, no downgrade, no replay) are the pure
machine's, :mod:`edgeml.agent.install_machine`; this module carries out its actions.

The shell (:func:`install_bundle`, :func:`rollback`, :func:`recover`) runs the machine under
the install lock: it copies the bundle into a staging folder, verifies the copy, unpacks it,
loads it with onnxruntime and runs its golden self-test, renames the folder into its slot and
replaces ``state.json`` atomically (``edgeml.agent.slots`` has the layout). Receiving bundles
over MQTT is ``edgeml.agent.transfer``'s job; serving the active bundle is the daemon's.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.agent.install_machine import (
    Action,
    CollectGarbage,
    DiscardCandidate,
    Event,
    Fail,
    Finish,
    InstallError,
    InstallState,
    NoPreviousBundleError,
    Phase,
    PrepareSlot,
    Receive,
    RunSelfTest,
    SelfTestError,
    SelfTestPassed,
    SwitchActive,
    Switched,
    Unpacked,
    Verified,
    VerifyBundle,
    fall_back,
    same_bundle,
    step,
)
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
from edgeml.toolkit.errors import BundleError, ConfigError, EdgeMLError
from edgeml.toolkit.golden import GoldenSet, OutputComparison, compare_outputs
from edgeml.toolkit.runtime import create_session, run_manifest_model
from edgeml.toolkit.trust import TrustStore, load_trust_store

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
