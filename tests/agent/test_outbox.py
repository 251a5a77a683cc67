"""The telemetry outbox on a real SQLite file: sequence numbers, bounds, crashes, two processes."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeml.agent.outbox import MIGRATION_SET, OutboxError, TelemetryOutbox
from edgeml.toolkit.errors import ConfigError
from edgeml.toolkit.protocol import ProtocolError, TelemetryWindow, parse_message


def window(number: int = 0, **changes: Any) -> dict[str, Any]:
    """A telemetry window as the daemon hands it over (no seq: the outbox assigns it)."""
    document = {
        "device_id": "pi-0001",
        "window_start": 60.0 * number,
        "window_end": 60.0 * (number + 1),
        "bundle_id": "cancer-1.0.0-raspberry-pi-4",
        "requests": number,
        "rows": 2 * number,
        "errors": 0,
        "contract_violations": 0,
        "latency_ms": {"p50": 0.2, "p95": 0.3, "p99": 0.5},
        "predictions": {"0": number, "1": number},
        "drift_psi": {"mean_radius": 0.01},
    }
    document.update(changes)
    return document


def seqs_of(outbox: TelemetryOutbox) -> list[int]:
    return [entry.seq for entry in outbox.pending(limit=10**6)]


def test_sequence_numbers_start_at_one_survive_reopening_and_are_never_reused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    with TelemetryOutbox(path) as outbox:
        assert outbox.last_seq == 0
        assert outbox.add(window(0)) == 1
        assert outbox.add_many([window(1), window(2)]) == [2, 3]
        assert outbox.mark_sent([1, 2, 3]) == 3
        assert outbox.pending() == []
    with TelemetryOutbox(path) as outbox:  # every window deleted, then a restart
        assert outbox.add(window(3)) == 4
        assert outbox.last_seq == 4
        assert outbox.migrations() == ["0001_create_windows", "0002_add_stream"]
        stats = outbox.stats()
        assert (stats.sent_total, stats.last_sent_seq, stats.pending) == (3, 3, 1)


def test_payloads_are_the_exact_messages_with_seq_and_drop_count(tmp_path: Path) -> None:
    with TelemetryOutbox(tmp_path / "outbox.db") as outbox:
        message = TelemetryWindow.from_dict({"type": "telemetry", "seq": 99, **window(5)})
        seqs = outbox.add_many([window(4, seq=1234, dropped_windows=77), message], now=42.0)
        entries = outbox.pending()
    assert [e.seq for e in entries] == seqs == [1, 2]
    first = parse_message(entries[0].payload, "telemetry")
    assert isinstance(first, TelemetryWindow)
    assert (first.seq, first.dropped_windows, first.requests) == (1, 0, 4)
    assert entries[1].window().seq == 2
    assert entries[0].created_at == 42.0
    assert entries[0].size == len(entries[0].payload)


def test_a_batch_with_an_invalid_window_stores_nothing(tmp_path: Path) -> None:
    with TelemetryOutbox(tmp_path / "outbox.db") as outbox:
        outbox.add(window(0))
        with pytest.raises(ProtocolError, match="requests"):
            outbox.add_many([window(1), window(2, requests=-1)])
        with pytest.raises(ProtocolError, match="device"):
            outbox.add({"rows": 1})
        assert seqs_of(outbox) == [1]
        assert outbox.add(window(3)) == 2  # no seq was consumed by the refused batch


def test_pending_is_oldest_first_and_mark_sent_is_idempotent(tmp_path: Path) -> None:
    with TelemetryOutbox(tmp_path / "outbox.db") as outbox:
        outbox.add_many([window(i) for i in range(10)])
        assert [e.seq for e in outbox.pending(limit=3)] == [1, 2, 3]
        assert [e.seq for e in outbox.pending(limit=3, after=3)] == [4, 5, 6]
        assert outbox.mark_sent(2) == 1
        assert outbox.mark_sent([2, 4, 999]) == 1
        assert outbox.mark_sent([]) == 0
        assert seqs_of(outbox) == [1, 3, 5, 6, 7, 8, 9, 10]
        assert outbox.mark_sent(range(1, 1200)) == 8  # more than one IN (...) chunk
        assert outbox.stats().sent_total == 10


def test_the_row_bound_drops_the_oldest_and_the_next_window_reports_it(tmp_path: Path) -> None:
    with TelemetryOutbox(tmp_path / "outbox.db", max_windows=4) as outbox:
        assert outbox.add_many([window(i) for i in range(10)]) == list(range(1, 11))
        assert seqs_of(outbox) == [7, 8, 9, 10]
        assert outbox.dropped_total == 6
        assert outbox.stats().dropped_unreported == 6
        outbox.mark_sent([7, 8, 9, 10])
        outbox.add(window(10))
        outbox.add(window(11))
        reported = [e.window().dropped_windows for e in outbox.pending()]
        assert reported == [6, 0]  # once, on the next window written
        assert outbox.stats().dropped_unreported == 0


def test_the_byte_bound_drops_the_oldest(tmp_path: Path) -> None:
    with TelemetryOutbox(tmp_path / "probe.db") as probe:
        probe.add(window(1))
        size = probe.pending()[0].size
    with TelemetryOutbox(tmp_path / "outbox.db", max_bytes=3 * size + size // 2) as outbox:
        outbox.add_many([window(i) for i in range(1, 6)])
        stats = outbox.stats()
        assert seqs_of(outbox) == [3, 4, 5]
        assert stats.pending_bytes <= outbox.max_bytes
        assert stats.dropped_total == 2
    with TelemetryOutbox(tmp_path / "tiny.db", max_bytes=size // 2) as tiny:
        assert tiny.add(window(1)) == 1  # larger than the bound by itself: dropped, counted
        assert tiny.pending() == []
        assert (tiny.dropped_total, tiny.last_seq) == (1, 1)


def test_every_drop_is_reported_exactly_once(tmp_path: Path) -> None:
    """Whatever the order of adds, drops and acknowledgements, the drop counts that windows
    carry (sent or still stored) plus those not yet attached add up to the drops."""
    rng = random.Random(7)
    reported_in_sent = 0
    with TelemetryOutbox(tmp_path / "outbox.db", max_windows=5) as outbox:
        for step in range(300):
            if rng.random() < 0.6:
                outbox.add_many([window(step)] * rng.randint(1, 4))
            else:
                entries = outbox.pending(limit=rng.randint(1, 3))
                reported_in_sent += sum(e.window().dropped_windows for e in entries)
                outbox.mark_sent([e.seq for e in entries])
            stored = sum(e.window().dropped_windows for e in outbox.pending(limit=100))
            stats = outbox.stats()
            assert reported_in_sent + stored + stats.dropped_unreported == stats.dropped_total
    assert stats.dropped_total > 0


def test_the_database_is_wal_with_its_migrations_recorded(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    TelemetryOutbox(path).close()
    TelemetryOutbox(path, synchronous="NORMAL").close()  # reopening applies nothing again
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]
        ).fetchall()
    assert applied == [("0001_create_windows",), ("0002_add_stream",)]


def test_the_migrations_table_is_the_one_sqlite_utils_keeps(tmp_path: Path) -> None:
    """The outbox records its migrations without importing sqlite-utils, in the table and
    rows sqlite-utils' ``Migrations`` keeps: a file migrated by either is up to date for the
    other (a device that ran an agent applying them through sqlite-utils keeps its windows)."""
    import sqlite_utils  # a dependency of edgeml (the fleet), 4.0 or later

    from edgeml.agent.outbox import MIGRATIONS

    def migrations_of_sqlite_utils(applied: list[str]) -> Any:
        migrations = sqlite_utils.Migrations(MIGRATION_SET)
        for name, function in MIGRATIONS:

            def apply(db: Any, _function: Any = function, _name: str = name) -> None:
                applied.append(_name)
                _function(db.conn)

            migrations(name=name)(apply)
        return migrations

    by_library = tmp_path / "by-sqlite-utils.db"
    applied: list[str] = []
    migrations_of_sqlite_utils(applied).apply(sqlite_utils.Database(by_library))
    assert applied == [name for name, _ in MIGRATIONS]
    with TelemetryOutbox(by_library) as outbox:  # nothing applied twice, and it works
        assert outbox.migrations() == applied
        assert outbox.add(window(1)) == 1
    ours = tmp_path / "by-the-outbox.db"
    TelemetryOutbox(ours).close()
    again: list[str] = []
    migrations_of_sqlite_utils(again).apply(sqlite_utils.Database(ours))
    assert again == [], "sqlite-utils sees the outbox's migrations as applied"


def test_bad_settings_and_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_bytes"):
        TelemetryOutbox(tmp_path / "a.db", max_bytes=0)
    with pytest.raises(ConfigError, match="max_windows"):
        TelemetryOutbox(tmp_path / "a.db", max_windows=-1)
    with pytest.raises(ConfigError, match="synchronous"):
        TelemetryOutbox(tmp_path / "a.db", synchronous="OFF")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=r"junk\.db"):
        TelemetryOutbox(junk)
    outbox = TelemetryOutbox(tmp_path / "b.db")
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.add(window(1))


def test_a_read_only_outbox_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    reader = TelemetryOutbox(path, readonly=True)
    assert reader.stats().pending == 0
    assert reader.pending() == []
    assert not path.exists()  # reading did not create it
    with TelemetryOutbox(path) as writer:
        writer.add_many([window(i) for i in range(3)])
        assert [e.seq for e in reader.pending()] == [1, 2, 3]
        assert reader.stats().last_seq == 3
        with pytest.raises(OutboxError, match="read-only"):
            reader.add(window(4))
        with pytest.raises(OutboxError, match="read-only"):
            reader.mark_sent(1)
    reader.close()


# ---------------------------------------------------------------------- other processes

WRITER = """
import json, sys
from edgeml.agent.outbox import TelemetryOutbox
path, tag, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
document = json.loads(sys.argv[5])
outbox = TelemetryOutbox(path, max_windows=10**7, max_bytes=10**10)
for batch in range(batches):
    window = {**document, "requests": tag * 100_000 + batch, "rows": size}
    seqs = outbox.add_many([window] * size)
    print(" ".join(map(str, seqs)), flush=True)
"""


def start_writer(path: Path, tag: int, batches: int, size: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            *map(str, (path, tag, batches, size)),
            json.dumps(window(0)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_writer_killed_mid_batch_leaves_whole_batches_and_a_consistent_sequence(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    rng = random.Random(11)
    committed = 0
    for round_number in range(3):
        writer = start_writer(path, round_number, batches=10**6, size=2_000)
        assert writer.stdout is not None
        for _ in range(2):  # two batches committed, the third one under way
            line = writer.stdout.readline()
            assert line, writer.stderr.read() if writer.stderr else ""
            committed = max(committed, int(line.split()[-1]))
        time.sleep(rng.uniform(0.0, 0.05))
        writer.send_signal(signal.SIGKILL)
        writer.communicate()
        assert writer.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with TelemetryOutbox(path) as outbox:
        entries = outbox.pending(limit=10**7)
        seqs = [e.seq for e in entries]
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate, nothing partial
        assert seqs[-1] >= committed
        batches: dict[int, int] = {}
        for entry in entries:
            batch = entry.window().requests
            batches[batch] = batches.get(batch, 0) + 1
        assert set(batches.values()) == {2_000}
        assert outbox.add(window(0)) == seqs[-1] + 1


def test_two_writing_processes_and_a_reader_share_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    TelemetryOutbox(path).close()
    writers = [start_writer(path, tag, batches=150, size=1) for tag in (1, 2)]
    reader = TelemetryOutbox(path, readonly=True)
    acknowledger = TelemetryOutbox(path)
    seen_last = 0
    while any(w.poll() is None for w in writers):
        stats = reader.stats()
        assert stats.last_seq >= seen_last
        seen_last = stats.last_seq
        acknowledger.mark_sent(e.seq for e in acknowledger.pending(limit=7))
    outputs = [w.communicate() for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in outputs]
    assigned = [int(s) for out, _ in outputs for s in out.split()]
    assert sorted(assigned) == list(range(1, 301))  # every seq once, across processes
    acknowledger.mark_sent(e.seq for e in acknowledger.pending(limit=1_000))
    final = reader.stats()
    assert (final.pending, final.sent_total, final.last_seq) == (0, 300, 300)
    reader.close()
    acknowledger.close()
    assert os.path.exists(path)


# ----------------------------------------------------------------------------- streams


def test_the_stream_id_is_taken_once_stamped_on_every_window_and_kept_across_reopening(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    with TelemetryOutbox(path) as outbox:
        stream = outbox.stream
        assert len(stream) == 16 and int(stream, 16) >= 0
        outbox.add_many([window(0), window(1, stream="ffffffffffffffff")])
        assert outbox.stats().stream == stream
        assert {e.window().stream for e in outbox.pending()} == {stream}  # replaced, not kept
    with TelemetryOutbox(path) as outbox:
        assert outbox.stream == stream
        assert outbox.add(window(2)) == 3
        assert outbox.pending()[-1].window().stream == stream
    reader = TelemetryOutbox(path, readonly=True)
    assert reader.stream == stream and reader.stats().stream == stream
    reader.close()


def test_a_recreated_outbox_is_a_new_stream_numbered_from_one(tmp_path: Path) -> None:
    """A re-imaged device, or a state folder lost: seq starts again at 1, in a new stream."""
    path = tmp_path / "outbox.db"
    with TelemetryOutbox(path) as outbox:
        old_stream = outbox.stream
        assert outbox.add_many([window(i) for i in range(5)]) == [1, 2, 3, 4, 5]
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with TelemetryOutbox(path) as outbox:
        assert outbox.stream != old_stream
        assert outbox.add(window(0)) == 1
        first = outbox.pending()[0].window()
        assert (first.seq, first.stream) == (1, outbox.stream)


def test_an_outbox_from_before_streams_keeps_numbering_in_the_empty_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent upgraded in place: its outbox goes on where it was, in the stream the fleet
    already holds its windows in (``""``), so that nothing looks like a gap or a new stream;
    its pending windows are sent as they were stored."""
    from edgeml.agent import outbox as outbox_module

    numbered, empty = tmp_path / "numbered.db", tmp_path / "empty.db"
    monkeypatch.setattr(outbox_module, "MIGRATIONS", outbox_module.MIGRATIONS[:1])
    with TelemetryOutbox(numbered) as old:
        old.add_many([window(i) for i in range(3)])
        old.mark_sent([1])
    TelemetryOutbox(empty).close()
    reader = TelemetryOutbox(numbered, readonly=True)  # a newer `agent status`, an older daemon
    assert reader.stats().stream == "" and reader.stats().last_seq == 3
    reader.close()
    monkeypatch.undo()

    with TelemetryOutbox(numbered) as outbox:
        assert outbox.migrations() == ["0001_create_windows", "0002_add_stream"]
        assert outbox.stream == ""
        assert outbox.add(window(3)) == 4
        entries = outbox.pending()
        assert [e.seq for e in entries] == [2, 3, 4]
        assert {e.window().stream for e in entries} == {""}
        assert all(b"stream" not in e.payload for e in entries)
    with TelemetryOutbox(empty) as outbox:  # never numbered a window: a stream of its own
        assert len(outbox.stream) == 16
        assert outbox.add(window(0)) == 1
