"""The agent's state folder on disk: bundle slots, the active pointer, and how both are written.

Layout (docs/agent-install.md has the why)::

    STATE_DIR/
      install.lock                one install at a time (edgeml.agent.locking)
      state.json                  the active pointer: active, previous, last_active, history
      .state.json.*.tmp           a state write in progress; removed by recovery
      trust-chain.json            the trust documents accepted since the configured trust
                                  (edgeml.agent.trust)
      .trust-chain.json.*.tmp     a trust write in progress; removed by recovery
      slots/<bundle_id>/          one complete slot per bundle the device holds
        bundle.edgeml             the signed bundle, as verified: the source of truth
        manifest.json, model.onnx, baseline.json, golden.json   unpacked, as verified
      slots/.staging-*/           an install in progress; removed by recovery
      slots/.trash-*/             a slot being removed; removed by recovery
      incoming/                   chunked transfers (edgeml.agent.transfer)

A slot folder carries its bundle's id only once it is complete: an install fills a staging
folder, fsyncs it, and renames it into place. ``state.json`` is replaced atomically (temporary
file, fsync, ``os.replace``, fsync of the folder), so at every instant it names either the old
or the new active bundle. This module holds the typed state document and the file operations;
deciding what to install is ``edgeml.agent.install``'s job, and so is the lock.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeml.toolkit.bundle import (
    DEFAULT_LIMITS,
    MANIFEST,
    BundleLimits,
    VerifiedBundle,
    verify_bundle,
)
from edgeml.toolkit.errors import BundleError, ConfigError
from edgeml.toolkit.manifest import NAME_PATTERN, VERSION_PATTERN
from edgeml.toolkit.manifest import bundle_id as make_bundle_id
from edgeml.toolkit.trust import TrustStore

STATE_FILE = "state.json"
STATE_FORMAT = "edgeml-agent-state"
STATE_FORMAT_VERSION = 1
SLOTS = "slots"
INCOMING = "incoming"
BUNDLE_FILE = "bundle.edgeml"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
STATE_TEMP_PREFIX = f".{STATE_FILE}."
TRUST_CHAIN_FILE = "trust-chain.json"
TRUST_TEMP_PREFIX = f".{TRUST_CHAIN_FILE}."
TEMP_SUFFIX = ".tmp"
HISTORY_LIMIT = 32
COPY_BLOCK = 1024 * 1024
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_STATE_FIELDS = frozenset(
    ("format", "format_version", "active", "previous", "last_active", "history")
)

Checkpoint = Callable[[str], None]
"""Called with a step's name at each step boundary of an install (tests crash there)."""


def _no_checkpoint(step: str) -> None:
    return None


# ------------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class BundleRef:
    """A bundle the device holds or considers, named by id and pinned by its manifest's hash.

    Attributes:
        bundle_id: ``NAME-VERSION-PROFILE``; also the name of the bundle's slot folder.
        name, version, profile: from the verified manifest.
        digest: SHA-256 of the signed ``manifest.json`` bytes, which cover every entry: two
            bundles with the same digest are the same bundle.
    """

    bundle_id: str
    name: str
    version: str
    profile: str
    digest: str

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name) or not NAME_PATTERN.match(self.profile):
            raise ValueError(f"bundle {self.bundle_id!r}: name or profile is not valid")
        if not VERSION_PATTERN.match(self.version):
            raise ValueError(f"bundle {self.bundle_id!r}: version {self.version!r} is not valid")
        if self.bundle_id != make_bundle_id(self.name, self.version, self.profile):
            raise ValueError(f"bundle id {self.bundle_id!r} is not name-version-profile")
        if not _DIGEST.match(self.digest):
            raise ValueError(f"bundle {self.bundle_id!r}: digest is not 64 hex digits")

    @property
    def lineage(self) -> tuple[str, str]:
        """(name, profile): versions are compared only within one lineage."""
        return (self.name, self.profile)

    @classmethod
    def of(cls, bundle: VerifiedBundle) -> BundleRef:
        """The reference of a verified bundle."""
        manifest = bundle.manifest
        return cls(
            manifest.bundle_id,
            manifest.name,
            manifest.version,
            manifest.profile,
            hashlib.sha256(bundle.entries[MANIFEST]).hexdigest(),
        )

    def to_dict(self) -> dict[str, str]:
        return {
            "bundle_id": self.bundle_id,
            "name": self.name,
            "version": self.version,
            "profile": self.profile,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, data: Any) -> BundleRef:
        if not isinstance(data, dict):
            raise ValueError("a bundle reference is not an object")
        return cls(
            *(str(data[key]) for key in ("bundle_id", "name", "version", "profile", "digest"))
        )


@dataclass(frozen=True)
class HistoryEntry:
    """One change of the active bundle: when, what happened, to which bundle, and why."""

    at: float
    event: str  # installed, rolled-back, recovered
    bundle_id: str | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "event": self.event,
            "bundle_id": self.bundle_id,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Any) -> HistoryEntry:
        return cls(
            float(data["at"]),
            str(data["event"]),
            None if data.get("bundle_id") is None else str(data["bundle_id"]),
            str(data.get("detail", "")),
        )


def _optional_ref(value: Any) -> BundleRef | None:
    return None if value is None else BundleRef.from_dict(value)


@dataclass(frozen=True)
class AgentState:
    """What ``state.json`` holds: the active pointer and what the install decisions need.

    Attributes:
        active: the bundle the device serves, or None (the local API answers 503).
        previous: the bundle it served before, kept for rollback, or None.
        last_active: per lineage (name, profile), the bundle last activated: the version
            floor below which installs are refused (no downgrade by replay, even after another
            model was active in between).
        history: the latest changes of the active bundle, newest last.
        extra: fields a newer edgeml wrote, kept on a load and save.
    """

    active: BundleRef | None = None
    previous: BundleRef | None = None
    last_active: tuple[BundleRef, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def floor(self, name: str, profile: str) -> BundleRef | None:
        """The bundle last activated in this lineage, or None."""
        return next((r for r in self.last_active if r.lineage == (name, profile)), None)

    def with_floor(self, ref: BundleRef) -> AgentState:
        """The state with ``ref`` as its lineage's last activated bundle."""
        others = tuple(r for r in self.last_active if r.lineage != ref.lineage)
        return replace(self, last_active=(*others, ref))

    def with_history(self, entry: HistoryEntry) -> AgentState:
        return replace(self, history=(*self.history, entry)[-HISTORY_LIMIT:])

    def to_dict(self) -> dict[str, Any]:
        document = dict(self.extra)
        document.update(
            {
                "format": STATE_FORMAT,
                "format_version": STATE_FORMAT_VERSION,
                "active": self.active.to_dict() if self.active else None,
                "previous": self.previous.to_dict() if self.previous else None,
                "last_active": [r.to_dict() for r in self.last_active],
                "history": [h.to_dict() for h in self.history],
            }
        )
        return document

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Any) -> AgentState:
        """Validate a state document.

        Raises:
            ValueError: not a state document of a version this edgeml reads, or malformed.
        """
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"not an {STATE_FORMAT} document")
        if data.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r} is not supported")
        try:
            return cls(
                active=_optional_ref(data.get("active")),
                previous=_optional_ref(data.get("previous")),
                last_active=tuple(BundleRef.from_dict(r) for r in data.get("last_active", [])),
                history=tuple(HistoryEntry.from_dict(h) for h in data.get("history", [])),
                extra={k: v for k, v in data.items() if k not in _STATE_FIELDS},
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"malformed ({error!r})") from None


# ---------------------------------------------------------------------------------- layout


def slots_dir(state_dir: Path) -> Path:
    return Path(state_dir) / SLOTS


def slot_dir(state_dir: Path, bundle_id: str) -> Path:
    """The slot folder of a bundle (it exists only once complete)."""
    return slots_dir(state_dir) / bundle_id


def slot_bundle(state_dir: Path, bundle_id: str) -> Path:
    """The signed bundle file in a bundle's slot."""
    return slot_dir(state_dir, bundle_id) / BUNDLE_FILE


def read_state(state_dir: Path | str) -> AgentState:
    """Read ``state.json``; a state folder without one holds no bundle yet.

    Needs no lock: the file is only ever replaced whole.

    Args:
        state_dir: the agent's state folder.

    Returns:
        The state (empty when there is no state file).

    Raises:
        ConfigError: the state file exists but cannot be read or is not a valid state document.
    """
    path = Path(state_dir) / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return AgentState()
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error}") from None
    try:
        return AgentState.from_dict(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise ConfigError(f"{path}: not a valid agent state file: {error}") from None


def active_bundle_path(state_dir: Path | str) -> Path | None:
    """The active bundle's file (for the scoring engine to open and verify), or None."""
    active = read_state(state_dir).active
    return None if active is None else slot_bundle(Path(state_dir), active.bundle_id)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state(
    state_dir: Path, state: AgentState, checkpoint: Checkpoint = _no_checkpoint
) -> None:
    """Replace ``state.json`` atomically: temporary file, fsync, ``os.replace``, fsync folder.

    Checkpoints: ``state-temp-created``, ``state-temp-partial``, ``state-temp-written``,
    ``state-temp-synced``, ``state-replaced``, ``state-synced``.

    Raises:
        OSError: the file could not be written; the old state file is untouched.
    """
    data = state.to_bytes()
    fd, temp = tempfile.mkstemp(prefix=STATE_TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=state_dir)
    try:
        try:
            checkpoint("state-temp-created")
            half = len(data) // 2
            _write_all(fd, data[:half])
            checkpoint("state-temp-partial")
            _write_all(fd, data[half:])
            checkpoint("state-temp-written")
            os.fsync(fd)
            checkpoint("state-temp-synced")
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.replace(temp, Path(state_dir) / STATE_FILE)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    checkpoint("state-replaced")
    fsync_dir(Path(state_dir))
    checkpoint("state-synced")


def replace_file(state_dir: Path, name: str, data: bytes) -> None:
    """Replace ``state_dir/name`` atomically, as :func:`write_state` does ``state.json``:
    a temporary ``.NAME.*.tmp`` in the same folder, fsync, ``os.replace``, fsync of the folder.

    Raises:
        OSError: the file could not be written; the old one is untouched.
    """
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=state_dir)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.replace(temp, Path(state_dir) / name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(Path(state_dir))


# ----------------------------------------------------------------------------- slot files


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (``os.write`` may write fewer than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def _write_file(path: Path, data: bytes) -> None:
    fd = _create(path)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_file(source: Path, target: Path, checkpoint: Checkpoint = _no_checkpoint) -> None:
    """Copy a file block by block (memory bounded by one block) and fsync it.

    Checkpoints: ``copy-partial`` (the first half of the file, or of its first block,
    written), ``copied``.

    Raises:
        OSError: reading or writing failed (ENOSPC included); the target may be partial.
    """
    with open(source, "rb") as src:
        fd = _create(target)
        try:
            block = min(COPY_BLOCK, max(1, os.fstat(src.fileno()).st_size // 2))
            first = True
            while data := src.read(block):
                _write_all(fd, data)
                if first:
                    checkpoint("copy-partial")
                    first, block = False, COPY_BLOCK
            os.fsync(fd)
        finally:
            os.close(fd)
    checkpoint("copied")


def unpack(bundle: VerifiedBundle, folder: Path, checkpoint: Checkpoint = _no_checkpoint) -> None:
    """Write a verified bundle's entries (the bytes that were verified) into its slot folder:
    ``manifest.json`` and every entry it lists (the signature stays in ``bundle.edgeml``).

    Checkpoints: ``unpack-partial`` after the first entry, ``unpacked`` after the folder's fsync.

    Raises:
        OSError: writing failed (ENOSPC included).
    """
    for index, name in enumerate(sorted(bundle.entries)):
        _write_file(folder / name, bundle.entries[name])
        if index == 0:
            checkpoint("unpack-partial")
    fsync_dir(folder)
    checkpoint("unpacked")


def check_slot(
    state_dir: Path,
    ref: BundleRef,
    trust: TrustStore,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> VerifiedBundle:
    """Re-verify a slot: its bundle file verifies, is the bundle ``ref`` pins, and every
    unpacked entry still holds the verified bytes.

    Returns:
        The verified bundle of the slot.

    Raises:
        BundleError: naming what is missing or damaged.
    """
    folder = slot_dir(state_dir, ref.bundle_id)
    if not folder.is_dir():
        raise BundleError(f"slot {folder} is missing")
    bundle = verify_bundle(folder / BUNDLE_FILE, trust, limits)
    found = BundleRef.of(bundle)
    if found != ref:
        raise BundleError(
            f"slot {folder} holds {found.bundle_id} (manifest {found.digest[:12]}…), "
            f"not {ref.bundle_id} (manifest {ref.digest[:12]}…)"
        )
    for name, data in bundle.entries.items():
        path = folder / name
        try:
            on_disk = path.read_bytes()
        except OSError as error:
            raise BundleError(f"slot {folder}: unpacked {name} cannot be read: {error}") from None
        if on_disk != data:
            raise BundleError(f"slot {folder}: unpacked {name} differs from the verified bundle")
    return bundle


# --------------------------------------------------------------------------------- cleanup


def is_leftover(path: Path) -> bool:
    """A staging or trash folder, or a temporary state file: what a crash leaves behind."""
    name = path.name
    return name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or (
        name.startswith((STATE_TEMP_PREFIX, TRUST_TEMP_PREFIX)) and name.endswith(TEMP_SUFFIX)
    )


def leftovers(state_dir: Path) -> list[Path]:
    """Everything an interrupted install left in the state folder and its slots folder."""
    found: list[Path] = []
    for folder in (Path(state_dir), slots_dir(state_dir)):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if is_leftover(p))
    return found


def slot_folders(state_dir: Path) -> Iterator[Path]:
    """Complete slot folders (staging and trash left out)."""
    folder = slots_dir(state_dir)
    if folder.is_dir():
        yield from sorted(p for p in folder.iterdir() if p.is_dir() and not is_leftover(p))


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree; a folder is first renamed to a trash name so that a
    crash halfway never leaves a slot that looks complete."""
    if path.is_dir() and not path.is_symlink():
        if not path.name.startswith(TRASH_PREFIX):
            trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
            if trash.exists():
                shutil.rmtree(trash)
            os.rename(path, trash)
            path = trash
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def is_disk_full(error: OSError) -> bool:
    """ENOSPC or EDQUOT: the disk or the quota is full."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
