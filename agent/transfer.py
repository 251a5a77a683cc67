"""Receiving a bundle in chunks: streamed to disk, each chunk checked, resumable, bounded.

The transfer is pulled by the device (``edgeml.toolkit.protocol``): an install command
announces the bundle's id, size and SHA-256; the device asks for chunks from the offset it
holds on disk and appends each chunk it receives. :class:`IncomingTransfer` is that receiving
side, one per announced bundle, on disk under ``STATE_DIR/incoming/``::

    <bundle_id>.part            the bytes received so far (its size is the offset)
    <bundle_id>.transfer.json   the announcement they belong to: bundle id, size, sha256
    <bundle_id>.edgeml          the complete file, once its whole SHA-256 matched

A restart or a disconnect resumes from the bytes on disk, as long as the new announcement is
the one the sidecar holds; another announcement starts over. Memory is bounded by one chunk:
the whole file is never held, and its hash is computed by streaming it back. A chunk that
would take the file past its announced size aborts the transfer and removes the partial file
(a sender of endless data gets nowhere). A full disk is an error that keeps the bytes written
so far for a later resume.

The decisions (:func:`judge_chunk`, :func:`resume_offset`) are pure functions; the class is
their shell. Installing the received file is ``edgeml.agent.install``'s job; MQTT is the
daemon's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from edgeml.agent.slots import INCOMING, fsync_dir, is_disk_full
from edgeml.toolkit.bundle import sha256_file
from edgeml.toolkit.errors import EdgeMLError
from edgeml.toolkit.protocol import MAX_BUNDLE_BYTES, Chunk, Command, ProtocolError

PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".transfer.json"
BUNDLE_SUFFIX = ".edgeml"
DEFAULT_FSYNC_BYTES = 1024 * 1024
DEFAULT_RESERVE_BYTES = 16 * 1024 * 1024
_BUNDLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TransferError(EdgeMLError):
    """A transfer cannot go on: a write failed, or it was completed before all bytes came."""


class TransferRefused(TransferError):
    """The sender broke the announcement: more bytes than announced, or a whole file whose
    SHA-256 is not the announced one. The partial file is removed (exit 3, like a bundle that
    does not verify)."""

    exit_code = 3


class DiskFullError(TransferError):
    """Not enough free space for the transfer, before it starts or while it writes."""


# ------------------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Announcement:
    """What an install command announced: the bundle, its size and its SHA-256.

    Raises:
        ProtocolError: a bundle id that is not a safe file name, a size out of
            ``[1, MAX_BUNDLE_BYTES]``, or a SHA-256 that is not 64 lowercase hex digits.
    """

    bundle_id: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        if not isinstance(self.bundle_id, str) or not _BUNDLE_ID.match(self.bundle_id):
            raise ProtocolError(f"bundle id {self.bundle_id!r} is not NAME-VERSION-PROFILE")
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not 1 <= self.size <= MAX_BUNDLE_BYTES
        ):
            raise ProtocolError(f"bundle size {self.size!r} is not in [1, {MAX_BUNDLE_BYTES}]")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise ProtocolError(f"bundle sha256 {self.sha256!r} is not 64 lowercase hex digits")

    @classmethod
    def of(cls, command: Command) -> Announcement:
        """The announcement of an install command.

        Raises:
            ProtocolError: the command announces no bundle.
        """
        if command.bundle_id is None or command.bundle_size is None or not command.bundle_sha256:
            raise ProtocolError(f"command {command.command_id} announces no bundle to transfer")
        return cls(command.bundle_id, command.bundle_size, command.bundle_sha256)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any) -> Announcement:
        return cls(data["bundle_id"], data["size"], data["sha256"])


class Verdict(str, Enum):
    """What to do with a chunk."""

    WRITE = "written"  # the next bytes: append them
    DUPLICATE = "duplicate"  # bytes already on disk (a resend): ignore
    OUT_OF_ORDER = "out-of-order"  # past the bytes on disk (one was lost): ignore, ask again
    FOREIGN = "foreign"  # another bundle or another announced size: ignore
    EMPTY = "empty"  # no bytes: ignore
    CORRUPT = "corrupt"  # not base64 or not matching its own SHA-256: ignore, ask again
    OVERFLOW = "overflow"  # would end past the announced size: abort the transfer


def judge_chunk(
    announced: Announcement,
    offset: int,
    chunk_bundle_id: str,
    chunk_offset: int,
    chunk_total: int,
    length: int,
) -> Verdict:
    """Decide what to do with a chunk whose payload checked out against its own hash.

    Args:
        announced: the transfer's announcement.
        offset: bytes already on disk.
        chunk_bundle_id, chunk_offset, chunk_total: what the chunk says of itself.
        length: the payload's length.
    """
    if chunk_bundle_id != announced.bundle_id or chunk_total != announced.size:
        return Verdict.FOREIGN
    if chunk_offset + length > announced.size:
        return Verdict.OVERFLOW
    if length == 0:
        return Verdict.EMPTY
    if chunk_offset < offset:
        return Verdict.DUPLICATE
    if chunk_offset > offset:
        return Verdict.OUT_OF_ORDER
    return Verdict.WRITE


def resume_offset(
    on_disk: Announcement | None, announced: Announcement, part_size: int | None
) -> int | None:
    """How many bytes of an earlier attempt to keep, or None to start over.

    Args:
        on_disk: the announcement the sidecar holds (None: no sidecar, or unreadable).
        announced: the new announcement.
        part_size: the partial file's size (None: no partial file).
    """
    if on_disk != announced or part_size is None or part_size > announced.size:
        return None
    return part_size


def space_needed(announced: Announcement, offset: int, reserve: int) -> int:
    """Free bytes a transfer needs to go on: what is still to come, plus a reserve."""
    return announced.size - offset + reserve


# ---------------------------------------------------------------------------------- shell


@dataclass(frozen=True)
class ChunkResult:
    """What :meth:`IncomingTransfer.accept` did with a chunk, and the offset after it."""

    verdict: Verdict
    offset: int
    detail: str = ""

    @property
    def written(self) -> bool:
        return self.verdict is Verdict.WRITE


class IncomingTransfer:
    """The receiving side of one bundle transfer, streamed to ``STATE_DIR/incoming``.

    Opening one resumes the bytes an earlier attempt left for the same announcement (after a
    disconnect or a restart), or starts over. :attr:`offset` is where the next chunk must
    start: ask the fleet for chunks from there.

    Args:
        state_dir: the agent's state folder.
        announced: the bundle's id, size and SHA-256.
        fsync_every: fsync the partial file after this many bytes (and at the end).
        reserve_bytes: free space to leave beyond the bytes still to come.

    Raises:
        DiskFullError: the disk lacks room for the rest of the bundle plus the reserve.
        TransferError: the incoming folder cannot be written.
    """

    def __init__(
        self,
        state_dir: Path | str,
        announced: Announcement,
        *,
        fsync_every: int = DEFAULT_FSYNC_BYTES,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        self.announced = announced
        self.folder = Path(state_dir) / INCOMING
        self.part = self.folder / f"{announced.bundle_id}{PART_SUFFIX}"
        self.sidecar = self.folder / f"{announced.bundle_id}{SIDECAR_SUFFIX}"
        self.final = self.folder / f"{announced.bundle_id}{BUNDLE_SUFFIX}"
        self.fsync_every = max(1, fsync_every)
        self.reserve_bytes = reserve_bytes
        self.ignored: Counter[str] = Counter()
        self.resumed_from = 0
        self._fd: int | None = None
        self._unsynced = 0
        self._complete = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.offset = self._open()
        except OSError as error:
            raise self._write_error("cannot prepare", error) from None

    @classmethod
    def from_command(
        cls, state_dir: Path | str, command: Command, **options: Any
    ) -> IncomingTransfer:
        """The transfer an install command announces (see the constructor)."""
        return cls(state_dir, Announcement.of(command), **options)

    # -- opening

    def _read_sidecar(self) -> Announcement | None:
        try:
            return Announcement.from_dict(json.loads(self.sidecar.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError, ProtocolError):
            return None

    def _open(self) -> int:
        if self.final.exists():
            if self.final.stat().st_size == self.announced.size and (
                sha256_file(self.final) == self.announced.sha256
            ):
                self._complete = True  # completed before: nothing to fetch again
                return self.announced.size
            self.final.unlink()
        part_size = self.part.stat().st_size if self.part.exists() else None
        keep = resume_offset(self._read_sidecar(), self.announced, part_size)
        if keep is None:
            self._start_over()
            keep = 0
        self._check_space(keep)
        self.resumed_from = keep
        return keep

    def _start_over(self) -> None:
        self.part.unlink(missing_ok=True)
        self._check_space(0)
        data = json.dumps(self.announced.to_dict(), sort_keys=True).encode()
        fd, temp = tempfile.mkstemp(prefix=f".{self.sidecar.name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.sidecar)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        # An empty partial file: the sidecar is in place before any byte is kept.
        os.close(os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        fsync_dir(self.folder)

    def _check_space(self, offset: int) -> None:
        needed = space_needed(self.announced, offset, self.reserve_bytes)
        free = shutil.disk_usage(self.folder).free
        if free < needed:
            raise DiskFullError(
                f"{self.folder}: {free} bytes free; {self.announced.bundle_id} needs "
                f"{self.announced.size - offset} more bytes plus a reserve of "
                f"{self.reserve_bytes}"
            )

    # -- receiving

    @property
    def size(self) -> int:
        return self.announced.size

    @property
    def done(self) -> bool:
        """Every announced byte is on disk (call :meth:`complete`)."""
        return self.offset == self.announced.size

    def accept(self, chunk: Chunk) -> ChunkResult:
        """Check a chunk and append it when it is the next one.

        A chunk that fails its own hash, repeats bytes already on disk, starts past them, or
        belongs to another transfer is ignored (see :attr:`ignored`); the result says which.

        Returns:
            The verdict and the offset after it.

        Raises:
            TransferRefused: the chunk would end past the announced size; the transfer is
                aborted and its partial file removed.
            DiskFullError: the disk filled up; the bytes written before this chunk are kept
                for a resume.
            TransferError: another write error, or the transfer is already complete.
        """
        if self._complete:
            raise TransferError(f"transfer of {self.announced.bundle_id} is already complete")
        try:
            payload = chunk.payload()
        except ProtocolError as error:
            self.ignored[Verdict.CORRUPT.value] += 1
            return ChunkResult(Verdict.CORRUPT, self.offset, str(error))
        verdict = judge_chunk(
            self.announced,
            self.offset,
            chunk.bundle_id,
            chunk.offset,
            chunk.total_size,
            len(payload),
        )
        if verdict is Verdict.OVERFLOW:
            self.discard()
            raise TransferRefused(
                f"{self.announced.bundle_id}: a chunk of {len(payload)} bytes at offset "
                f"{chunk.offset} goes past the announced size of {self.announced.size} bytes; "
                "transfer aborted and the partial file removed"
            )
        if verdict is not Verdict.WRITE:
            self.ignored[verdict.value] += 1
            detail = (
                f"chunk {chunk.bundle_id}@{chunk.offset} (total {chunk.total_size}, "
                f"{len(payload)} bytes) ignored: {verdict.value}; next offset {self.offset}"
            )
            return ChunkResult(verdict, self.offset, detail)
        self._append(payload)
        return ChunkResult(Verdict.WRITE, self.offset)

    def _append(self, payload: bytes) -> None:
        start = self.offset
        try:
            if self._fd is None:
                self._fd = os.open(self.part, os.O_WRONLY | os.O_CLOEXEC)
            view = memoryview(payload)
            written = 0
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], start + written)
            self._unsynced += len(payload)
            self.offset = start + len(payload)
            if self._unsynced >= self.fsync_every or self.done:
                os.fsync(self._fd)
                self._unsynced = 0
        except OSError as error:
            self.offset = start
            kept = self._truncate_to(start)
            raise self._write_error(
                f"cannot write the chunk at offset {start}"
                + (
                    f"; the {start} bytes before it are kept to resume"
                    if kept
                    else "; the partial file is removed"
                ),
                error,
            ) from None

    def _truncate_to(self, offset: int) -> bool:
        """Cut a partly written chunk off; if that fails too, start the transfer over."""
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, offset)
                os.fsync(self._fd)
            return True
        except OSError:
            self.discard()
            return False

    def _write_error(self, what: str, error: OSError) -> TransferError:
        where = f"{self.announced.bundle_id} ({self.part})"
        if is_disk_full(error):
            return DiskFullError(f"{where}: {what}: no space left on the device")
        return TransferError(f"{where}: {what}: {error}")

    def complete(self) -> Path:
        """Check the whole file's SHA-256 and move it to ``incoming/<bundle_id>.edgeml``.

        Returns:
            The complete bundle file (verify it before use: ``install_bundle`` does).

        Raises:
            TransferError: not every announced byte has arrived.
            TransferRefused: the SHA-256 is not the announced one; the partial file is
                removed (the next attempt starts over).
        """
        if self._complete:
            return self.final
        if not self.done:
            raise TransferError(
                f"{self.announced.bundle_id}: {self.offset} of {self.announced.size} bytes "
                "received; the transfer is not complete"
            )
        self.close()
        digest = sha256_file(self.part)
        if digest != self.announced.sha256:
            self.discard()
            raise TransferRefused(
                f"{self.announced.bundle_id}: the received file has sha256 {digest[:16]}…, "
                f"the announced one is {self.announced.sha256[:16]}…; partial file removed"
            )
        try:
            os.replace(self.part, self.final)
            fsync_dir(self.folder)
            self.sidecar.unlink(missing_ok=True)
        except OSError as error:
            raise self._write_error("cannot complete", error) from None
        self._complete = True
        return self.final

    def close(self) -> None:
        """Sync and close the partial file (the bytes stay for a resume)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._unsynced = 0

    def discard(self) -> None:
        """Abort: close and remove the partial file and its sidecar."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.part.unlink(missing_ok=True)
        self.sidecar.unlink(missing_ok=True)
        self.offset = 0

    def __enter__(self) -> IncomingTransfer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def remove_transfers(state_dir: Path | str, *, keep: str | None = None) -> list[str]:
    """Remove every transfer's files in ``incoming/`` but those of bundle ``keep``.

    Returns:
        The names of the files removed.
    """
    folder = Path(state_dir) / INCOMING
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    kept = (
        set()
        if keep is None
        else {f"{keep}{suffix}" for suffix in (PART_SUFFIX, SIDECAR_SUFFIX, BUNDLE_SUFFIX)}
    )
    for path in sorted(folder.iterdir()):
        if path.name in kept:
            continue
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
