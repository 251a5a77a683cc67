"""Receiving a chunked transfer: the pure decisions, then real files: resume after a restart,
duplicates and bad chunks ignored, endless data and a wrong whole-file hash refused, a full
disk handled, memory bounded by one chunk."""

from __future__ import annotations

import errno
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeml.agent.install import install_bundle
from edgeml.agent.transfer import (
    Announcement,
    DiskFullError,
    IncomingTransfer,
    TransferError,
    TransferRefused,
    Verdict,
    judge_chunk,
    remove_transfers,
    resume_offset,
    space_needed,
)
from edgeml.toolkit.errors import EdgeMLError
from edgeml.toolkit.protocol import Chunk, Command, ProtocolError, parse_message
from edgeml.toolkit.trust import load_trust_store

CHUNK = 1024
ID = "cancer-1.0.0-raspberry-pi-4"


def announce(data: bytes, bundle_id: str = ID) -> Announcement:
    return Announcement(bundle_id, len(data), hashlib.sha256(data).hexdigest())


def chunks(data: bytes, size: int = CHUNK, bundle_id: str = ID, start: int = 0) -> Iterator[Chunk]:
    for offset in range(start, len(data), size):
        yield Chunk.of("cmd-1", bundle_id, offset, len(data), data[offset : offset + size])


@pytest.fixture
def payload() -> bytes:
    return os.urandom(10 * CHUNK + 123)


# --- pure decisions ---------------------------------------------------------------------------

A = Announcement(ID, 1000, "0" * 64)


@pytest.mark.parametrize(
    ("offset", "chunk", "verdict"),
    [
        (0, (ID, 0, 1000, 100), Verdict.WRITE),
        (100, (ID, 100, 1000, 900), Verdict.WRITE),
        (100, (ID, 0, 1000, 100), Verdict.DUPLICATE),
        (100, (ID, 50, 1000, 100), Verdict.DUPLICATE),  # overlaps: still a resend
        (100, (ID, 200, 1000, 100), Verdict.OUT_OF_ORDER),
        (100, (ID, 100, 1000, 901), Verdict.OVERFLOW),
        (100, (ID, 0, 1000, 1001), Verdict.OVERFLOW),  # past the end, wherever it starts
        (1000, (ID, 1000, 1000, 1), Verdict.OVERFLOW),
        (100, ("other-1.0-x", 100, 1000, 100), Verdict.FOREIGN),
        (100, (ID, 100, 2000, 100), Verdict.FOREIGN),
        (100, (ID, 100, 1000, 0), Verdict.EMPTY),
    ],
)
def test_judge_chunk(offset: int, chunk: tuple[str, int, int, int], verdict: Verdict) -> None:
    assert judge_chunk(A, offset, *chunk) is verdict


def test_resume_offset_keeps_bytes_only_for_the_same_announcement() -> None:
    assert resume_offset(A, A, 300) == 300
    assert resume_offset(A, A, 0) == 0
    assert resume_offset(A, A, None) is None
    assert resume_offset(None, A, 300) is None
    assert resume_offset(Announcement(ID, 1000, "1" * 64), A, 300) is None  # other sha
    assert resume_offset(Announcement(ID, 999, "0" * 64), A, 300) is None  # other size
    assert resume_offset(A, A, 1001) is None  # more on disk than announced


def test_space_needed_is_what_is_still_to_come_plus_a_reserve() -> None:
    assert space_needed(A, 0, 10) == 1010
    assert space_needed(A, 400, 0) == 600


@pytest.mark.parametrize(
    "fields",
    [("../etc", 10, "0" * 64), (".hidden", 10, "0" * 64), (ID, 0, "0" * 64), (ID, 10, "XYZ")],
)
def test_an_announcement_is_validated(fields: tuple[Any, ...]) -> None:
    with pytest.raises(ProtocolError):
        Announcement(*fields)


def test_an_announcement_comes_from_an_install_command() -> None:
    command = parse_message(
        Command(
            "cmd-1", "install", 1.0, bundle_id=ID, bundle_size=5, bundle_sha256="a" * 64
        ).to_bytes(),
        "commands",
    )
    assert isinstance(command, Command)
    assert Announcement.of(command) == Announcement(ID, 5, "a" * 64)
    with pytest.raises(ProtocolError, match="announces no bundle"):
        Announcement.of(Command("cmd-2", "ping", 1.0))


# --- receiving --------------------------------------------------------------------------------


def test_a_bundle_arrives_in_chunks_and_installs(
    tmp_path: Path, built_bundle: Path, key_dir: Path
) -> None:
    data = built_bundle.read_bytes()
    transfer = IncomingTransfer(tmp_path, announce(data))
    assert transfer.offset == 0 and (tmp_path / "incoming" / f"{ID}.transfer.json").exists()
    for chunk in chunks(data, 1024):
        assert transfer.accept(chunk).written
    assert transfer.done
    path = transfer.complete()
    assert path == tmp_path / "incoming" / f"{ID}.edgeml" and path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{ID}.edgeml"]
    trust = load_trust_store(key_dir / "edgeml.pub")
    result = install_bundle(path, tmp_path, trust, "raspberry-pi-4")
    assert result.active is not None and result.active.bundle_id == ID


def test_a_restart_resumes_without_fetching_again_what_arrived(
    tmp_path: Path, payload: bytes
) -> None:
    first = IncomingTransfer(tmp_path, announce(payload))
    for chunk in list(chunks(payload))[:4]:
        first.accept(chunk)
    first.close()  # the agent stops (or dies: the bytes are on disk either way)
    del first
    second = IncomingTransfer(tmp_path, announce(payload))
    assert second.offset == second.resumed_from == 4 * CHUNK
    fetched = list(chunks(payload, start=second.offset))
    assert len(fetched) == 7
    for chunk in fetched:
        assert second.accept(chunk).written
    assert second.complete().read_bytes() == payload


def test_a_different_announcement_starts_over(tmp_path: Path, payload: bytes) -> None:
    first = IncomingTransfer(tmp_path, announce(payload))
    for chunk in list(chunks(payload))[:3]:
        first.accept(chunk)
    first.close()
    changed = payload[:-1] + b"!"
    second = IncomingTransfer(tmp_path, announce(changed))
    assert second.offset == 0 and (tmp_path / "incoming" / f"{ID}.part").stat().st_size == 0
    for chunk in chunks(changed):
        second.accept(chunk)
    assert second.complete().read_bytes() == changed


def test_a_completed_file_is_not_fetched_again(tmp_path: Path, payload: bytes) -> None:
    first = IncomingTransfer(tmp_path, announce(payload))
    for chunk in chunks(payload):
        first.accept(chunk)
    path = first.complete()
    again = IncomingTransfer(tmp_path, announce(payload))
    assert again.done and again.complete() == path
    with pytest.raises(TransferError, match="already complete"):
        again.accept(next(chunks(payload)))


def test_duplicate_out_of_order_foreign_and_corrupt_chunks_are_ignored(
    tmp_path: Path, payload: bytes
) -> None:
    transfer = IncomingTransfer(tmp_path, announce(payload))
    all_chunks = list(chunks(payload))
    transfer.accept(all_chunks[0])
    transfer.accept(all_chunks[1])
    duplicate = transfer.accept(all_chunks[0])
    assert duplicate.verdict is Verdict.DUPLICATE and duplicate.offset == 2 * CHUNK
    assert "duplicate" in duplicate.detail
    assert transfer.accept(all_chunks[3]).verdict is Verdict.OUT_OF_ORDER
    foreign = Chunk.of("cmd-9", "other-1.0-x", 2 * CHUNK, len(payload), b"x" * CHUNK)
    assert transfer.accept(foreign).verdict is Verdict.FOREIGN
    good = all_chunks[2]
    bad_hash = Chunk(good.command_id, ID, good.offset, good.total_size, "0" * 64, good.data)
    result = transfer.accept(bad_hash)
    assert result.verdict is Verdict.CORRUPT and "sha256" in result.detail
    assert transfer.offset == 2 * CHUNK
    assert (tmp_path / "incoming" / f"{ID}.part").stat().st_size == 2 * CHUNK
    assert transfer.ignored == {"duplicate": 1, "out-of-order": 1, "foreign": 1, "corrupt": 1}
    for chunk in all_chunks[2:]:
        transfer.accept(chunk)
    assert transfer.complete().read_bytes() == payload


def test_more_bytes_than_announced_abort_the_transfer_and_remove_the_partial_file(
    tmp_path: Path, payload: bytes
) -> None:
    transfer = IncomingTransfer(tmp_path, announce(payload))
    for chunk in chunks(payload):
        transfer.accept(chunk)
    endless = Chunk.of("cmd-1", ID, len(payload), len(payload), b"more")
    with pytest.raises(TransferRefused, match="past the announced size") as caught:
        transfer.accept(endless)
    assert caught.value.exit_code == 3 and isinstance(caught.value, EdgeMLError)
    assert list((tmp_path / "incoming").iterdir()) == []
    # a chunk that starts inside the file but runs past its end: the same
    transfer = IncomingTransfer(tmp_path, announce(payload))
    with pytest.raises(TransferRefused):
        transfer.accept(Chunk.of("cmd-1", ID, 0, len(payload), payload + b"tail"))
    assert list((tmp_path / "incoming").iterdir()) == []


def test_a_wrong_whole_file_hash_is_refused_and_the_partial_file_removed(
    tmp_path: Path, payload: bytes
) -> None:
    lying = Announcement(ID, len(payload), hashlib.sha256(b"something else").hexdigest())
    transfer = IncomingTransfer(tmp_path, lying)
    for chunk in chunks(payload):
        transfer.accept(chunk)
    with pytest.raises(TransferRefused, match="announced one"):
        transfer.complete()
    assert list((tmp_path / "incoming").iterdir()) == []
    assert IncomingTransfer(tmp_path, lying).offset == 0  # the next attempt starts over


def test_completing_before_every_byte_arrived_is_an_error(tmp_path: Path, payload: bytes) -> None:
    transfer = IncomingTransfer(tmp_path, announce(payload))
    transfer.accept(next(chunks(payload)))
    with pytest.raises(TransferError, match=f"{CHUNK} of {len(payload)} bytes"):
        transfer.complete()


# --- a full disk ------------------------------------------------------------------------------


def test_not_enough_space_is_refused_before_anything_is_written(
    tmp_path: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 5000)
    )
    with pytest.raises(DiskFullError, match="5000 bytes free") as caught:
        IncomingTransfer(tmp_path, announce(payload), reserve_bytes=1000)
    assert f"needs {len(payload)} more bytes plus a reserve of 1000" in str(caught.value)
    assert list((tmp_path / "incoming").iterdir()) == []


@pytest.mark.parametrize("partial", [False, True], ids=["nothing-written", "half-written"])
def test_a_disk_filling_up_keeps_what_was_written_for_a_resume(
    tmp_path: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch, partial: bool
) -> None:
    transfer = IncomingTransfer(tmp_path, announce(payload))
    part = tmp_path / "incoming" / f"{ID}.part"
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_disk(fd: int, data: Any, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            return real_pwrite(fd, data, offset)
        if partial and calls["n"] == 3:
            return real_pwrite(fd, bytes(data)[: len(data) // 2], offset)  # a short write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    all_chunks = list(chunks(payload))
    transfer.accept(all_chunks[0])
    transfer.accept(all_chunks[1])
    with pytest.raises(DiskFullError, match="no space left on the device") as caught:
        transfer.accept(all_chunks[2])
    assert "the 2048 bytes before it are kept to resume" in str(caught.value)
    assert transfer.offset == 2 * CHUNK and part.stat().st_size == 2 * CHUNK
    monkeypatch.undo()  # space is freed; the agent restarts
    transfer.close()
    resumed = IncomingTransfer(tmp_path, announce(payload))
    assert resumed.offset == 2 * CHUNK
    for chunk in all_chunks[2:]:
        resumed.accept(chunk)
    assert resumed.complete().read_bytes() == payload


def test_fsync_every_n_bytes_and_at_the_end(
    tmp_path: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfer = IncomingTransfer(tmp_path, announce(payload), fsync_every=4 * CHUNK)
    real_fsync, synced = os.fsync, []

    def counting(fd: int) -> None:
        synced.append(transfer.offset)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    for chunk in chunks(payload):
        transfer.accept(chunk)
    assert synced == [4 * CHUNK, 8 * CHUNK, len(payload)]


# --- memory -----------------------------------------------------------------------------------


def test_memory_is_bounded_by_one_chunk(tmp_path: Path) -> None:
    size, chunk_size = 8 * 1024 * 1024, 64 * 1024
    source = tmp_path / "source.bin"
    digest = hashlib.sha256()
    with source.open("wb") as handle:
        for _ in range(size // chunk_size):
            block = os.urandom(chunk_size)
            digest.update(block)
            handle.write(block)
    transfer = IncomingTransfer(
        tmp_path / "state", Announcement(ID, size, digest.hexdigest()), reserve_bytes=0
    )
    tracemalloc.start()
    try:
        with source.open("rb") as handle:
            for offset in range(0, size, chunk_size):
                transfer.accept(Chunk.of("cmd-1", ID, offset, size, handle.read(chunk_size)))
        transfer.complete()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a chunk, its base64 text and the hashing buffer; never the 8 MiB
    assert peak < 1024 * 1024, f"peak {peak} bytes for an {size}-byte transfer"


def test_remove_transfers_keeps_only_the_named_bundle(tmp_path: Path, payload: bytes) -> None:
    IncomingTransfer(tmp_path, announce(payload)).accept(next(chunks(payload)))
    other = "other-2.0-raspberry-pi-4"
    IncomingTransfer(tmp_path, announce(payload, other), reserve_bytes=0)
    removed = remove_transfers(tmp_path, keep=ID)
    assert removed == [f"{other}.part", f"{other}.transfer.json"]
    assert sorted(p.name for p in (tmp_path / "incoming").iterdir()) == [
        f"{ID}.part",
        f"{ID}.transfer.json",
    ]
    assert len(remove_transfers(tmp_path)) == 2
