"""The telemetry outbox: windows written to SQLite before they are published, deleted only
once the broker acknowledged them.

One table of windows, ``(seq, created_at, payload, size, dropped)``: ``seq`` numbers windows
from 1 and is never reused, even after deletes or a restart (``AUTOINCREMENT``); ``payload``
is the exact ``telemetry`` message to publish (its ``seq``, ``stream`` and ``dropped_windows``
filled in by the outbox). The database's **stream id** (16 random hex digits, in
``outbox_meta``) is taken once, when the database is created, and stamped on every window:
``seq`` numbers windows within that stream. A device whose outbox is lost (re-imaged, state
folder wiped) starts again at seq 1 in a new stream, which the fleet tells apart from the old
one instead of dropping the new windows as duplicates. An outbox created before streams
existed keeps the empty stream ``""`` (its windows go on numbering where they were).

The outbox is bounded in bytes of payload and in windows: past either bound the oldest windows
are deleted and counted, never silently. A window reports in ``dropped_windows`` the windows
dropped since the window before it was written, so that each drop is reported once;
``dropped_total`` keeps the count of all time.

When the database cannot be written (a full disk), :meth:`TelemetryOutbox.add_or_hold` keeps
the windows in memory, at most ``max_held`` of them, and stores them, oldest first and
numbered then, with the next window that can be written; windows dropped from memory past that
bound are counted and reported like any other drop.

Durability: WAL journal, ``synchronous=FULL`` by default. In WAL mode ``NORMAL`` already
survives a killed process; ``FULL`` also survives a power cut, which is what a device in the
field meets. Its price is one fsync per commit: with one window a minute, and batches
(``add_many``, ``mark_sent`` of many) in one transaction, that is nothing. Every write is one
``BEGIN IMMEDIATE`` transaction, so a crash leaves a batch whole or absent, and a second
process (``agent status`` reading, a second writer) waits on the lock instead
of failing. Schema changes are named migrations recorded in the database, in the
``_sqlite_migrations`` table that sqlite-utils' ``Migrations`` keeps (the same table and rows,
so either can open the file), applied by a few lines over the standard library's ``sqlite3``:
importing sqlite-utils (click, dateutil, pluggy and its scan of every installed package's entry
points) would cost the device agent about 4 MiB of memory for two ``CREATE TABLE``.

What this module leaves to others: making windows (``edgeml.agent.telemetry``), publishing
them and hearing the acknowledgements (the MQTT link), deciding when (the daemon).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.toolkit.errors import ConfigError, InputError
from edgeml.toolkit.protocol import ProtocolError, TelemetryWindow

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_WINDOWS = 100_000
DEFAULT_MAX_HELD = 1000
MIGRATION_SET = "edgeml-agent-outbox"
_IN_CHUNK = 500  # seqs per IN (...) list: below every SQLite's variable limit
_STATE_KEYS = ("dropped_total", "dropped_unreported", "sent_total", "last_sent_seq")


class OutboxError(InputError):
    """The outbox database cannot be opened or used (not an outbox, damaged, locked)."""


@dataclass(frozen=True)
class OutboxEntry:
    """One stored window: its sequence number, when it was stored, the message's bytes."""

    seq: int
    created_at: float
    payload: bytes
    size: int

    def window(self) -> TelemetryWindow:
        """The payload parsed back into the protocol message."""
        return TelemetryWindow.from_dict(json.loads(self.payload))


@dataclass(frozen=True)
class OutboxStats:
    """What the outbox holds and has done, for ``agent status``.

    Attributes:
        pending: windows stored and not yet acknowledged.
        pending_bytes: their payloads' bytes.
        oldest_seq: the oldest pending window's seq (None when none).
        last_seq: the last seq ever assigned (0 before the first window).
        dropped_total: windows dropped to keep within the bounds, of all time.
        dropped_unreported: drops no stored window reports yet (the next window will).
        sent_total: windows acknowledged by the broker, of all time.
        last_sent_seq: the highest seq acknowledged.
        stream: the stream id stamped on the windows (``""`` for an outbox created before
            streams existed, or not created yet).
    """

    pending: int
    pending_bytes: int
    oldest_seq: int | None
    last_seq: int
    dropped_total: int
    dropped_unreported: int
    sent_total: int
    last_sent_seq: int
    stream: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- migrations


def _create_windows(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE windows (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at REAL NOT NULL,
            payload BLOB NOT NULL,
            size INTEGER NOT NULL,
            dropped INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE TABLE outbox_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.executemany(
        "INSERT INTO outbox_state (key, value) VALUES (?, 0)", [(k,) for k in _STATE_KEYS]
    )


def _add_stream(db: sqlite3.Connection) -> None:
    """The stream id: new and random for a database created now; the empty (legacy) stream for
    one that numbered windows before streams existed, so that its numbering goes on."""
    db.execute("CREATE TABLE outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    numbered = db.execute(
        "SELECT 1 FROM sqlite_sequence WHERE name = 'windows' AND seq > 0"
    ).fetchone()
    stream = "" if numbered else new_stream_id()
    db.execute("INSERT INTO outbox_meta (key, value) VALUES ('stream', ?)", [stream])


MIGRATIONS: tuple[tuple[str, Any], ...] = (
    ("0001_create_windows", _create_windows),
    ("0002_add_stream", _add_stream),
)
"""Named migrations, applied in order, each once; append, never edit or reorder."""


def new_stream_id() -> str:
    """A fresh telemetry stream id: 16 random lowercase hex digits."""
    return secrets.token_hex(8)


def _apply_migrations(db: sqlite3.Connection) -> None:
    """Apply pending migrations (inside the caller's transaction), recording each as
    sqlite-utils' ``Migrations`` does."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _sqlite_migrations (id INTEGER PRIMARY KEY, "
        "migration_set TEXT, name TEXT, applied_at TEXT)"
    )
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx__sqlite_migrations_migration_set_name "
        "ON _sqlite_migrations (migration_set, name)"
    )
    applied = {
        row[0]
        for row in db.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]
        ).fetchall()
    }
    for name, function in MIGRATIONS:
        if name not in applied:
            function(db)
            db.execute(
                "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
                [MIGRATION_SET, name, str(datetime.datetime.now(datetime.timezone.utc))],
            )


# --------------------------------------------------------------------------------- outbox


class TelemetryOutbox:
    """A durable, bounded queue of telemetry windows in a SQLite file.

    Thread-safe within a process (one connection behind a lock) and safe with other
    processes on the same file (WAL, immediate transactions, a busy timeout).
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        synchronous: str = "FULL",
        readonly: bool = False,
        busy_timeout_s: float = 10.0,
        max_held: int = DEFAULT_MAX_HELD,
    ) -> None:
        """Open (and create or migrate) the outbox.

        Args:
            path: the database file (``state_dir/outbox.db``); its folder must exist.
            max_bytes: the most payload bytes kept unacknowledged (the file itself is larger
                by SQLite's page overhead). A single window larger than this is dropped as
                soon as it is written, and counted.
            max_windows: the most windows kept unacknowledged.
            synchronous: ``FULL`` (survives a power cut) or ``NORMAL`` (survives a killed
                process; a power cut may lose the last windows, never corrupt the file).
            readonly: read without ever writing (``agent status`` next to a running daemon):
                no migration, no WAL switch; an outbox not created yet reads as empty.
            busy_timeout_s: how long to wait for another process's write lock.
            max_held: the most windows :meth:`add_or_hold` keeps in memory while the database
                cannot be written.

        Raises:
            ConfigError: a bound is not a positive integer or ``synchronous`` is unknown.
            OutboxError: the file cannot be opened as an outbox.
        """
        for name, value in (
            ("max_bytes", max_bytes),
            ("max_windows", max_windows),
            ("max_held", max_held),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"outbox {name} must be a positive integer, got {value!r}")
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ConfigError(f"outbox synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_windows = max_windows
        self.max_held = max_held
        self.readonly = readonly
        self._held: list[TelemetryWindow | Mapping[str, Any]] = []
        self._held_dropped = 0
        self._closed = False
        self._lock = threading.RLock()
        self._busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._stream = ""
        if readonly and not self.path.exists():
            return  # nothing to read yet; connect once the daemon has created it
        conn = self._connect()
        try:
            if not readonly:
                conn.execute("PRAGMA journal_mode = wal")
                conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                conn.execute("PRAGMA journal_size_limit = 4194304")
                with self._write():
                    _apply_migrations(self._db_or_fail())
                    self._stream = self._read_stream(conn)
        except sqlite3.Error as error:
            self.close()
            raise OutboxError(f"{self.path}: not a usable outbox database: {error}") from None

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:  # mode=ro: never creates the file, never writes it
                uri = self.path.absolute().as_uri() + "?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, timeout=self._busy_timeout_s, check_same_thread=False
                )
            else:
                conn = sqlite3.connect(
                    str(self.path), timeout=self._busy_timeout_s, check_same_thread=False
                )
            self._db = conn
        except sqlite3.Error as error:
            raise OutboxError(f"{self.path}: cannot open the outbox: {error}") from None
        return conn

    def _db_or_fail(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"{self.path}: the outbox is closed")
        return self._db

    # ------------------------------------------------------------------------- plumbing

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._closed = True

    def __enter__(self) -> TelemetryOutbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: the write lock first, so a concurrent writer waits
        (busy timeout) instead of failing on a stale snapshot."""
        if self.readonly:
            raise OutboxError(f"{self.path}: the outbox was opened read-only")
        with self._lock:
            conn = self._db_or_fail()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection | None:
        """The connection to read from, or None while a read-only outbox has no tables yet
        (call with the lock held)."""
        if self._closed:
            raise OutboxError(f"{self.path}: the outbox is closed")
        if self._db is None:
            if not self.path.exists():
                return None
            self._connect()
        conn = self._db_or_fail()
        if self.readonly:
            found = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                "AND name IN ('windows', 'outbox_state')"
            ).fetchone()[0]
            if found != 2:
                return None
        return conn

    @staticmethod
    def _state(conn: sqlite3.Connection) -> dict[str, int]:
        return {k: int(v) for k, v in conn.execute("SELECT key, value FROM outbox_state")}

    @staticmethod
    def _read_stream(conn: sqlite3.Connection) -> str:
        """The stored stream id; ``""`` where there is none (an outbox a daemon before streams
        wrote, read by a read-only reader)."""
        try:
            row = conn.execute("SELECT value FROM outbox_meta WHERE key = 'stream'").fetchone()
        except sqlite3.OperationalError:
            return ""
        return str(row[0]) if row else ""

    @property
    def stream(self) -> str:
        """The stream id stamped on this outbox's windows (``""``: the legacy stream)."""
        if self.readonly:
            return self.stats().stream
        return self._stream

    @staticmethod
    def _last_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'windows'").fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------------- writing

    def add(self, window: TelemetryWindow | Mapping[str, Any], *, now: float | None = None) -> int:
        """Store one window; see :meth:`add_many`.

        Returns:
            The window's seq.
        """
        return self.add_many([window], now=now)[0]

    def add_many(
        self,
        windows: Iterable[TelemetryWindow | Mapping[str, Any]],
        *,
        now: float | None = None,
        dropped: int = 0,
    ) -> list[int]:
        """Store windows in one transaction, numbering them in order, then keep the bounds.

        Whatever ``seq``, ``stream`` and ``dropped_windows`` a window holds is replaced: the
        outbox assigns the next seq in its stream, and the first window of the batch reports
        the drops not yet reported. A mapping needs every other field of a ``telemetry``
        message (``type`` may be left out). If the batch takes the outbox past a bound, the
        oldest windows are deleted (possibly some of this batch) and counted for the next
        window to report.

        Args:
            windows: the windows, oldest first.
            now: the time recorded as ``created_at`` (default: the clock).
            dropped: windows dropped before they reached the outbox (held in memory past
                ``max_held``); counted in ``dropped_total`` and reported by the first window
                with the outbox's own unreported drops.

        Returns:
            The seqs assigned, in order.

        Raises:
            ProtocolError: a window does not validate, or is over the message size limit;
                nothing of the batch is stored.
            OutboxError: the database failed (disk full, damaged); nothing is stored.
        """
        items = list(windows)
        if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
            raise ValueError(f"dropped must be a count of windows, got {dropped!r}")
        if not items:
            return []
        created = time.time() if now is None else float(now)
        try:
            with self._write() as conn:
                first = self._last_seq(conn) + 1
                carry = self._state(conn)["dropped_unreported"] + dropped
                if dropped:
                    conn.execute(
                        "UPDATE outbox_state SET value = value + ? WHERE key = 'dropped_total'",
                        (dropped,),
                    )
                rows = []
                for i, item in enumerate(items):
                    dropped = carry if i == 0 else 0
                    payload = _stamped(item, first + i, dropped, self._stream).to_bytes()
                    rows.append((first + i, created, payload, len(payload), dropped))
                conn.executemany(
                    "INSERT INTO windows (seq, created_at, payload, size, dropped) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                self._keep_bounds(conn)
        except sqlite3.Error as error:
            raise OutboxError(f"{self.path}: storing telemetry failed: {error}") from None
        return [first + i for i in range(len(items))]

    def add_or_hold(
        self, window: TelemetryWindow | Mapping[str, Any], *, now: float | None = None
    ) -> int | None:
        """Store a window after the ones held before it; hold them all in memory when the
        database cannot be written (a full disk), so that a window is never lost for that.

        Held windows are stored, oldest first, by the next call that can write; they get
        their seqs then. At most ``max_held`` are held: past that the oldest are dropped,
        counted in ``dropped_total`` and reported by the first window stored after them.

        Returns:
            The window's seq, or None while it is held.

        Raises:
            ProtocolError: the window does not validate, or is over the message size limit
                (it is not held).
        """
        # An invalid window must not block those after it: refused before it is held.
        _stamped(window, 1, 0, self._stream).to_bytes()
        with self._lock:
            self._held.append(window)
            try:
                seqs = self.add_many(self._held, now=now, dropped=self._held_dropped)
            except OutboxError:
                excess = len(self._held) - self.max_held
                if excess > 0:
                    del self._held[:excess]
                    self._held_dropped += excess
                return None
            self._held, self._held_dropped = [], 0
        return seqs[-1]

    @property
    def held(self) -> int:
        """Windows held in memory, waiting for the database to take them."""
        with self._lock:
            return len(self._held)

    def _keep_bounds(self, conn: sqlite3.Connection) -> None:
        """Drop the oldest windows past either bound; count them (inside the transaction)."""
        count, total = conn.execute("SELECT count(*), total(size) FROM windows").fetchone()
        dropped = carried = 0
        if count > self.max_windows or total > self.max_bytes:
            # The newest windows that fit stay: the boundary is the newest window whose
            # suffix sum (of it and everything newer) breaks a bound.
            boundary = conn.execute(
                "SELECT max(seq) FROM (SELECT seq, "
                "sum(size) OVER (ORDER BY seq DESC) AS newer_bytes, "
                "row_number() OVER (ORDER BY seq DESC) AS newer_rows FROM windows) "
                "WHERE newer_bytes > ? OR newer_rows > ?",
                (self.max_bytes, self.max_windows),
            ).fetchone()[0]
            dropped, carried = conn.execute(
                "SELECT count(*), total(dropped) FROM windows WHERE seq <= ?", (boundary,)
            ).fetchone()
            conn.execute("DELETE FROM windows WHERE seq <= ?", (boundary,))
        conn.execute(
            "UPDATE outbox_state SET value = ? WHERE key = 'dropped_unreported'",
            (dropped + int(carried),),
        )
        if dropped:
            conn.execute(
                "UPDATE outbox_state SET value = value + ? WHERE key = 'dropped_total'",
                (dropped,),
            )

    def mark_sent(self, seqs: int | Iterable[int]) -> int:
        """Delete windows the broker acknowledged, in one transaction.

        A seq no longer stored (dropped meanwhile, or acknowledged twice) is passed over.

        Returns:
            How many windows were deleted.

        Raises:
            OutboxError: the database failed; nothing is deleted.
        """
        wanted = sorted({int(seqs)} if isinstance(seqs, int) else {int(s) for s in seqs})
        if not wanted:
            return 0
        deleted = 0
        highest = 0
        try:
            with self._write() as conn:
                for start in range(0, len(wanted), _IN_CHUNK):
                    chunk = wanted[start : start + _IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    found = [
                        s
                        for (s,) in conn.execute(
                            f"SELECT seq FROM windows WHERE seq IN ({marks})", chunk
                        )
                    ]
                    if found:
                        conn.execute(f"DELETE FROM windows WHERE seq IN ({marks})", chunk)
                        deleted += len(found)
                        highest = max(highest, *found)
                if deleted:
                    conn.execute(
                        "UPDATE outbox_state SET value = value + ? WHERE key = 'sent_total'",
                        (deleted,),
                    )
                    conn.execute(
                        "UPDATE outbox_state SET value = max(value, ?) WHERE key = 'last_sent_seq'",
                        (highest,),
                    )
        except sqlite3.Error as error:
            raise OutboxError(f"{self.path}: marking telemetry sent failed: {error}") from None
        return deleted

    # ------------------------------------------------------------------------- reading

    def pending(self, limit: int = 100, *, after: int = 0) -> list[OutboxEntry]:
        """Windows not yet acknowledged, oldest first.

        Args:
            limit: at most this many.
            after: only windows with a greater seq (those not already in flight).
        """
        with self._lock:
            conn = self._reader()
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT seq, created_at, payload, size FROM windows WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [OutboxEntry(int(s), float(c), bytes(p), int(n)) for s, c, p, n in rows]

    def stats(self) -> OutboxStats:
        """Counts and totals, read in one snapshot."""
        with self._lock:
            conn = self._reader()
            if conn is None:
                return OutboxStats(0, 0, None, 0, 0, 0, 0, 0)
            with _snapshot(conn):
                count, total, oldest = conn.execute(
                    "SELECT count(*), total(size), min(seq) FROM windows"
                ).fetchone()
                state = self._state(conn)
                last = self._last_seq(conn)
                stream = self._read_stream(conn)
        return OutboxStats(
            pending=int(count),
            pending_bytes=int(total),
            oldest_seq=None if oldest is None else int(oldest),
            last_seq=last,
            dropped_total=state["dropped_total"],
            dropped_unreported=state["dropped_unreported"],
            sent_total=state["sent_total"],
            last_sent_seq=state["last_sent_seq"],
            stream=stream,
        )

    @property
    def dropped_total(self) -> int:
        """Windows dropped to keep the bounds, of all time."""
        return self.stats().dropped_total

    @property
    def last_seq(self) -> int:
        """The last seq assigned (0 before the first window)."""
        return self.stats().last_seq

    def migrations(self) -> list[str]:
        """The names of the migrations applied to this database, in order."""
        with self._lock:
            conn = self._reader()
            if conn is None:
                return []
            try:
                rows = conn.execute(
                    "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id",
                    [MIGRATION_SET],
                ).fetchall()
            except sqlite3.OperationalError:
                return []
        return [name for (name,) in rows]


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Several reads from one WAL snapshot (a deferred read transaction)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _stamped(
    window: TelemetryWindow | Mapping[str, Any], seq: int, dropped: int, stream: str
) -> TelemetryWindow:
    """The window with its seq, stream and drop count, validated as the protocol message."""
    if isinstance(window, TelemetryWindow):
        window = window.to_dict()
    if not isinstance(window, Mapping):
        raise ProtocolError(
            f"a telemetry window must be a TelemetryWindow or a mapping, "
            f"not {type(window).__name__}"
        )
    document = {**window, "type": TelemetryWindow.TYPE, "seq": seq, "dropped_windows": dropped}
    document.pop("stream", None)
    if stream:
        document["stream"] = stream
    try:
        return TelemetryWindow.from_dict(document)
    except ProtocolError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ProtocolError(f"malformed telemetry window: {error}") from None
