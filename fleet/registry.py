"""The fleet registry: devices, bundles, rollouts, operator requests, the command queue,
command results, telemetry windows, broker accounts (enrollments) and the audit log, in one
SQLite file.

``edgeml fleet serve`` (a long-running process) and the short CLI commands (``fleet publish``,
``fleet devices``, ``fleet rollout ...``) open the same file at the same time. So: WAL journal
(readers never wait for the writer), every write one ``BEGIN IMMEDIATE`` transaction (a writer
takes the lock first and waits for it, up to a busy timeout, instead of failing on a stale
snapshot), and :meth:`FleetRegistry.transaction` for callers that write several things at once
(a rollout document with the commands it decided, atomically). The CLI never writes a rollout
document the service owns: it files an operator request, which the service consumes.

Schema changes are named migrations recorded in the database (sqlite-utils' ``Migrations`` in
the ``_sqlite_migrations`` table). A file
with a migration this edgeml does not know was written by a newer edgeml, and is refused.

Reads return the typed records of :mod:`edgeml.fleet.records`, never rows, and the interface
speaks of fleet things only, never of SQL, so that a server database can later be another
backend of the same interface (DESIGN.md, "Scale beyond one machine").

What this module leaves to others: MQTT (parsing, subscribing, publishing: the service);
decisions (which devices get which command, when a stage passes: ``edgeml.fleet.rollout``,
whose documents are stored here as opaque JSON); verifying bundles (the publish command).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlite_utils

from edgeml.fleet.gates import DeviceHealth
from edgeml.fleet.records import (
    ENROLLMENT_ROLES,
    OPERATOR_ACTIONS,
    AuditEntry,
    BundleRecord,
    DeviceRecord,
    EnrollmentRecord,
    OperatorRequest,
    QueuedCommand,
    ResultRecord,
    RolloutRecord,
    WindowRecord,
)
from edgeml.toolkit.errors import ConfigError, InputError
from edgeml.toolkit.protocol import (
    Command,
    CommandResult,
    Status,
    TelemetryWindow,
    check_device_id,
)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "MIGRATION_SET",
    "FleetRegistry",
    "RegistryError",
]

MIGRATION_SET = "edgeml-fleet-registry"
DEFAULT_BUSY_TIMEOUT_S = 10.0

_ACTIONS_SQL = ", ".join(f"'{a}'" for a in OPERATOR_ACTIONS)
_SCHEMA_0001 = (
    """CREATE TABLE devices (
        device_id TEXT PRIMARY KEY, profile TEXT, tags TEXT NOT NULL DEFAULT '[]',
        online INTEGER NOT NULL, active TEXT, previous TEXT, state TEXT NOT NULL,
        agent_version TEXT, detail TEXT NOT NULL DEFAULT '', sent_at REAL NOT NULL,
        last_seen REAL NOT NULL, first_seen REAL NOT NULL)""",
    "CREATE INDEX devices_profile ON devices (profile)",
    """CREATE TABLE bundles (
        bundle_id TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL,
        profile TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL,
        key_id TEXT NOT NULL, published_at REAL NOT NULL)""",
    """CREATE TABLE rollouts (
        rollout_id TEXT PRIMARY KEY, bundle_id TEXT NOT NULL REFERENCES bundles (bundle_id),
        state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        document TEXT NOT NULL)""",
    "CREATE INDEX rollouts_state ON rollouts (state, created_at)",
    f"""CREATE TABLE operator_requests (
        request_id INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout_id TEXT NOT NULL REFERENCES rollouts (rollout_id),
        action TEXT NOT NULL CHECK (action IN ({_ACTIONS_SQL})), requested_at REAL NOT NULL,
        actor TEXT NOT NULL, reason TEXT NOT NULL, handled_at REAL)""",
    "CREATE INDEX operator_requests_pending ON operator_requests (rollout_id, request_id) "
    "WHERE handled_at IS NULL",
    """CREATE TABLE commands (
        command_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, kind TEXT NOT NULL,
        bundle_id TEXT, rollout_id TEXT, created_at REAL NOT NULL, sent_at REAL,
        reason TEXT NOT NULL, document TEXT NOT NULL)""",
    "CREATE INDEX commands_unsent ON commands (created_at) WHERE sent_at IS NULL",
    "CREATE INDEX commands_rollout ON commands (rollout_id)",
    "CREATE INDEX commands_device ON commands (device_id)",
    """CREATE TABLE command_results (
        result_id INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL,
        device_id TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL, sent_at REAL NOT NULL,
        received_at REAL NOT NULL, detail TEXT NOT NULL, bundle_id TEXT, active TEXT,
        previous TEXT, known INTEGER NOT NULL)""",
    "CREATE INDEX command_results_command ON command_results (command_id, result_id)",
    """CREATE TABLE telemetry (
        device_id TEXT NOT NULL, seq INTEGER NOT NULL, window_start REAL NOT NULL,
        window_end REAL NOT NULL, bundle_id TEXT, requests INTEGER NOT NULL,
        rows INTEGER NOT NULL, errors INTEGER NOT NULL, contract_violations INTEGER NOT NULL,
        latency_ms TEXT NOT NULL, predictions TEXT NOT NULL, drift_psi TEXT NOT NULL,
        dropped_windows INTEGER NOT NULL, p95_ms REAL, received_at REAL NOT NULL,
        PRIMARY KEY (device_id, seq))""",
    # Both secondary indexes grow at their end (received_at only increases), so they cost the
    # ingest little; an index led by (bundle_id, device_id) would take random inserts.
    "CREATE INDEX telemetry_bundle ON telemetry (bundle_id, received_at)",
    "CREATE INDEX telemetry_received ON telemetry (received_at)",
    """CREATE TABLE audit (
        entry_id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, reason TEXT NOT NULL, rollout_id TEXT, device_id TEXT,
        details TEXT NOT NULL DEFAULT '{}')""",
    "CREATE INDEX audit_rollout ON audit (rollout_id, entry_id)",
    "CREATE INDEX audit_device ON audit (device_id, entry_id)",
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END",
)


def _create_schema(db: sqlite_utils.Database) -> None:
    for statement in _SCHEMA_0001:  # one by one: executescript would commit the transaction
        db.execute(statement)


_ROLES_SQL = ", ".join(f"'{r}'" for r in ENROLLMENT_ROLES)
_SCHEMA_0002 = (
    f"""CREATE TABLE enrollments (
        username TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ({_ROLES_SQL})),
        profile TEXT, tags TEXT NOT NULL DEFAULT '[]', password_hash TEXT NOT NULL,
        enrolled_at REAL NOT NULL, rotated_at REAL, revoked_at REAL,
        revoke_reason TEXT NOT NULL DEFAULT '')""",
)


def _create_enrollments(db: sqlite_utils.Database) -> None:
    for statement in _SCHEMA_0002:
        db.execute(statement)


_TELEMETRY_COLUMNS_0001 = (
    "device_id, seq, window_start, window_end, bundle_id, requests, rows, errors, "
    "contract_violations, latency_ms, predictions, drift_psi, dropped_windows, p95_ms, "
    "received_at"
)
_SCHEMA_0003 = (
    # SQLite cannot change a primary key: a new table, the rows copied (rowids too, which
    # keep the order of arrival), the old one dropped with its indexes, the new one renamed.
    # The columns keep their order, ``stream`` comes last: SQL that reads rows by position
    # still finds what it read before.
    """CREATE TABLE telemetry_0003 (
        device_id TEXT NOT NULL, seq INTEGER NOT NULL, window_start REAL NOT NULL,
        window_end REAL NOT NULL, bundle_id TEXT, requests INTEGER NOT NULL,
        rows INTEGER NOT NULL, errors INTEGER NOT NULL, contract_violations INTEGER NOT NULL,
        latency_ms TEXT NOT NULL, predictions TEXT NOT NULL, drift_psi TEXT NOT NULL,
        dropped_windows INTEGER NOT NULL, p95_ms REAL, received_at REAL NOT NULL,
        stream TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (device_id, stream, seq))""",
    f"""INSERT INTO telemetry_0003 (rowid, stream, {_TELEMETRY_COLUMNS_0001})
        SELECT rowid, '', {_TELEMETRY_COLUMNS_0001} FROM telemetry ORDER BY rowid""",
    "DROP TABLE telemetry",
    "ALTER TABLE telemetry_0003 RENAME TO telemetry",
    "CREATE INDEX telemetry_bundle ON telemetry (bundle_id, received_at)",
    "CREATE INDEX telemetry_received ON telemetry (received_at)",
)


def _telemetry_streams(db: sqlite_utils.Database) -> None:
    """Telemetry keyed by (device, stream, seq): a device whose buffer started over (re-imaged,
    state lost) numbers its windows from 1 again in a new stream. Windows stored before this
    migration are in the empty stream, which is what agents before streams send."""
    for statement in _SCHEMA_0003:
        db.execute(statement)


MIGRATIONS: tuple[tuple[str, Callable[[sqlite_utils.Database], None]], ...] = (
    ("0001_create_registry", _create_schema),
    ("0002_create_enrollments", _create_enrollments),
    ("0003_telemetry_streams", _telemetry_streams),
)
"""Named migrations, applied in order, each once; append, never edit or reorder."""


class RegistryError(ConfigError):
    """The registry database cannot be opened or used: not a SQLite file, not a registry,
    written by a newer edgeml, damaged, locked for longer than the busy timeout, closed."""


# ------------------------------------------------------------------------------ columns

_DEVICE = (
    "device_id, profile, tags, online, active, previous, state, agent_version, detail, "
    "sent_at, last_seen, first_seen"
)
_BUNDLE = "bundle_id, name, version, profile, sha256, size, path, key_id, published_at"
_ROLLOUT = "rollout_id, bundle_id, state, created_at, updated_at, document"
_REQUEST = "request_id, rollout_id, action, requested_at, actor, reason, handled_at"
_COMMAND = "device_id, document, created_at, reason, sent_at"
_RESULT = (
    "r.result_id, r.device_id, r.command_id, r.kind, r.outcome, r.sent_at, r.detail, "
    "r.bundle_id, r.active, r.previous, r.received_at, r.known"
)
_WINDOW = (
    "device_id, seq, window_start, window_end, bundle_id, requests, rows, errors, "
    "contract_violations, latency_ms, predictions, drift_psi, dropped_windows, stream, "
    "received_at"
)
_AUDIT = "entry_id, at, actor, action, reason, rollout_id, device_id, details"
_ENROLLMENT = (
    "username, role, profile, tags, password_hash, enrolled_at, rotated_at, revoked_at, "
    "revoke_reason"
)
_KNOWN_RESULTS = (
    "command_results r JOIN commands c ON c.command_id = r.command_id "
    "AND c.device_id = r.device_id AND r.known = 1"
)


def _device(row: Sequence[Any]) -> DeviceRecord:
    return DeviceRecord(
        row[0], row[1], tuple(json.loads(row[2])), bool(row[3]), *row[4:9], *row[9:12]
    )


def _enrollment(row: Sequence[Any]) -> EnrollmentRecord:
    return EnrollmentRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), *row[4:9])


def _rollout(row: Sequence[Any]) -> RolloutRecord:
    return RolloutRecord(*row[:5], json.loads(row[5]))


def _queued(row: Sequence[Any]) -> QueuedCommand:
    return QueuedCommand(row[0], Command.from_dict(json.loads(row[1])), *row[2:5])


def _result(row: Sequence[Any]) -> ResultRecord:
    return ResultRecord(
        row[0], row[1], CommandResult(*row[2:10]), received_at=row[10], known=bool(row[11])
    )


def _window(row: Sequence[Any]) -> WindowRecord:
    values = list(row[:14])  # TelemetryWindow's fields, in order, stream last
    for i in (9, 10, 11):  # latency_ms, predictions, drift_psi
        values[i] = json.loads(values[i])
    return WindowRecord(TelemetryWindow(*values), row[14])


def _json(what: str, value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise InputError(f"{what} must be JSON-ready data: {error}") from None


def _insert(
    conn: sqlite3.Connection, table: str, values: dict[str, Any], suffix: str = ""
) -> sqlite3.Cursor:
    """``INSERT INTO table`` of one row given as column → value."""
    marks = ", ".join(f":{column}" for column in values)
    return conn.execute(
        f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks}){suffix}", values
    )


def _where(**filters: Any) -> tuple[str, list[Any]]:
    """``column = ?`` for each filter that is not None (so that SQLite can use its indexes)."""
    clauses = [f"{column} = ?" for column, value in filters.items() if value is not None]
    params = [value for value in filters.values() if value is not None]
    return " AND ".join(clauses) or "1", params


def _id_list(ids: Iterable[Any]) -> str:
    """Ids as one JSON parameter, read by ``json_each``: one statement for any number."""
    return json.dumps([i if isinstance(i, int | float) else str(i) for i in ids])


class FleetRegistry:
    """The fleet's storage in one SQLite file, shared by the service and the CLI.

    Open with :meth:`open`. Thread-safe within a process (one connection behind a lock) and
    safe with other processes on the same file. Times are Unix seconds on the fleet's clock,
    passed in by the caller: nothing stored here comes from a clock the registry reads.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self.path = path
        self._db: sqlite_utils.Database | None = sqlite_utils.Database(conn, execute_plugins=False)
        self._lock = threading.RLock()
        self._depth = 0

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        synchronous: str = "NORMAL",
    ) -> FleetRegistry:
        """Open the registry, creating the file or migrating its schema as needed.

        Args:
            path: the database file (``--db fleet.db``); its folder must exist.
            busy_timeout_s: how long a write waits for another process's lock.
            synchronous: ``NORMAL`` (survives a killed process; a power cut may lose the last
                transactions, never corrupt the file) or ``FULL`` (survives a power cut too,
                at one fsync per transaction).

        Returns:
            The open registry; close it, or use it as a context manager.

        Raises:
            RegistryError: (a ``ConfigError``) the file is not a SQLite database, is another
                program's database, was written by a newer edgeml, or cannot be opened.
        """
        path = Path(path)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ConfigError(f"registry synchronous must be NORMAL or FULL, got {synchronous!r}")
        if path.is_dir() or not path.parent.is_dir():
            what = "is a folder" if path.is_dir() else f"folder {path.parent} does not exist"
            raise RegistryError(f"{path}: cannot open the fleet registry: {what}")
        try:
            conn = sqlite3.connect(
                str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise RegistryError(f"{path}: cannot open the fleet registry: {error}") from None
        try:
            registry = cls(path, conn)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            registry._database().enable_wal()
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            conn.execute("PRAGMA journal_size_limit = 67108864")  # trim the WAL after bursts
            with registry._write("migrating the schema"):
                registry._migrate()
        except sqlite3.Error as error:
            conn.close()
            raise RegistryError(f"{path}: not a usable fleet registry: {error}") from None
        except BaseException:
            conn.close()
            raise
        return registry

    # ------------------------------------------------------------------------- plumbing

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> FleetRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _database(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RegistryError(f"{self.path}: the fleet registry is closed")
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Write several things atomically: all of them, or none if the block raises.

        The first (outermost) block takes the database's write lock at once
        (``BEGIN IMMEDIATE``), waiting up to the busy timeout for another process; nested
        blocks and the registry's own writes inside it join it (as savepoints). Other
        threads using the same registry wait until the block ends.

        Raises:
            RegistryError: the lock was not free within the busy timeout, or the commit failed.
        """
        with self._lock:
            conn = self._database().conn
            if self._depth:
                savepoint = f"fleet_registry_{self._depth}"
                conn.execute(f"SAVEPOINT {savepoint}")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    if conn.in_transaction:
                        conn.execute(f"ROLLBACK TO {savepoint}")
                        conn.execute(f"RELEASE {savepoint}")
                    raise
                else:
                    conn.execute(f"RELEASE {savepoint}")
                finally:
                    self._depth -= 1
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise RegistryError(f"{self.path}: cannot write: {error}") from None
            self._depth = 1
            try:
                yield
                conn.execute("COMMIT")
            except BaseException as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(error, sqlite3.Error):
                    raise RegistryError(f"{self.path}: cannot write: {error}") from None
                raise
            finally:
                self._depth = 0

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write, in its own transaction or the caller's; SQLite errors named."""
        with self.transaction():
            try:
                yield self._database().conn
            except sqlite3.Error as error:
                raise RegistryError(f"{self.path}: {what} failed: {error}") from None

    def _query(self, what: str, sql: str, params: Any = ()) -> list[Any]:
        """Every row a read gives; SQLite errors named."""
        with self._lock:
            try:
                return self._database().conn.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise RegistryError(f"{self.path}: {what} failed: {error}") from None

    def _query_one(self, what: str, sql: str, params: Any = ()) -> Any:
        """The first row a read gives, or None."""
        rows = self._query(what, sql, params)
        return rows[0] if rows else None

    def _migrate(self) -> None:
        """Refuse a foreign or newer database, then apply pending migrations."""
        db = self._database()
        known = [name for name, _ in MIGRATIONS]
        applied: list[str] = []
        if db["_sqlite_migrations"].exists():
            applied = [
                row[0]
                for row in db.execute(
                    "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id",
                    [MIGRATION_SET],
                )
            ]
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise RegistryError(
                f"{self.path}: written by a newer edgeml (schema migrations "
                f"{', '.join(unknown)} are unknown here); upgrade edgeml to open it"
            )
        tables = [name for name in db.table_names() if not name.startswith(("sqlite_", "_"))]
        if not applied and tables:
            raise RegistryError(
                f"{self.path}: a SQLite database but not an edgeml fleet registry "
                f"(it holds tables {', '.join(sorted(tables))})"
            )
        migrations = sqlite_utils.Migrations(MIGRATION_SET)
        for name, function in MIGRATIONS:
            migrations(name=name)(function)
        migrations.apply(db)

    # -------------------------------------------------------------------------- devices

    def record_status(self, status: Status, received_at: float) -> None:
        """Store a device's status: insert it, or replace what the previous status said.

        Args:
            status: the parsed status message.
            received_at: when the fleet received it; becomes ``last_seen`` (and ``first_seen``
                for a device not seen before).
        """
        values = {
            **asdict(status),
            "tags": json.dumps(list(status.tags)),
            "online": int(status.online),
            "last_seen": received_at,
            "first_seen": received_at,
        }
        kept = ("device_id", "first_seen")
        update = ", ".join(f"{c} = excluded.{c}" for c in values if c not in kept)
        with self._write("recording a status") as conn:
            _insert(conn, "devices", values, f" ON CONFLICT (device_id) DO UPDATE SET {update}")

    def device(self, device_id: str) -> DeviceRecord | None:
        """The device, or None if it never sent a status."""
        row = self._query_one(
            "reading a device", f"SELECT {_DEVICE} FROM devices WHERE device_id = ?", (device_id,)
        )
        return None if row is None else _device(row)

    def devices(self, profile: str | None = None, tags: Iterable[str] = ()) -> list[DeviceRecord]:
        """Devices, sorted by id.

        Args:
            profile: only devices of this hardware profile.
            tags: only devices that have every one of these tags.
        """
        clauses, params = ["1"], []
        if profile is not None:
            clauses.append("profile = ?")
            params.append(profile)
        for tag in dict.fromkeys(tags):
            clauses.append("EXISTS (SELECT 1 FROM json_each(devices.tags) WHERE value = ?)")
            params.append(tag)
        rows = self._query(
            "listing devices",
            f"SELECT {_DEVICE} FROM devices WHERE {' AND '.join(clauses)} ORDER BY device_id",
            params,
        )
        return [_device(row) for row in rows]

    # -------------------------------------------------------------------------- bundles

    def add_bundle(self, record: BundleRecord) -> bool:
        """Register a published bundle.

        Returns:
            True when added; False when the same id with the same content was already there.

        Raises:
            InputError: the id is already published with other content (a published id
                never changes content: publish a new version).
        """
        with self._write("publishing a bundle") as conn:
            row = conn.execute(
                "SELECT sha256 FROM bundles WHERE bundle_id = ?", (record.bundle_id,)
            ).fetchone()
            if row is not None:
                if row[0] == record.sha256:
                    return False
                raise InputError(
                    f"bundle {record.bundle_id} is already published with other content "
                    f"(sha256 {row[0]}, this file {record.sha256}); a published id never "
                    "changes content: publish it under a new version"
                )
            _insert(conn, "bundles", asdict(record))
        return True

    def bundle(self, bundle_id: str) -> BundleRecord | None:
        """The published bundle, or None."""
        row = self._query_one(
            "reading a bundle", f"SELECT {_BUNDLE} FROM bundles WHERE bundle_id = ?", (bundle_id,)
        )
        return None if row is None else BundleRecord(*row)

    def bundles(self, profile: str | None = None) -> list[BundleRecord]:
        """Published bundles, sorted by id; only those of ``profile`` if given."""
        where, params = _where(profile=profile)
        rows = self._query(
            "listing bundles",
            f"SELECT {_BUNDLE} FROM bundles WHERE {where} ORDER BY bundle_id",
            params,
        )
        return [BundleRecord(*row) for row in rows]

    # ------------------------------------------------------------------------- rollouts

    def add_rollout(
        self, rollout_id: str, bundle_id: str, state: str, created_at: float, document: dict
    ) -> None:
        """Store a new rollout.

        Raises:
            InputError: the bundle is not published, or the rollout id is taken.
        """
        text = _json(f"rollout {rollout_id}'s document", document)
        with self._write("storing a rollout") as conn:
            if not conn.execute(
                "SELECT 1 FROM bundles WHERE bundle_id = ?", (bundle_id,)
            ).fetchone():
                raise InputError(f"bundle {bundle_id} is not published in {self.path}")
            if conn.execute(
                "SELECT 1 FROM rollouts WHERE rollout_id = ?", (rollout_id,)
            ).fetchone():
                raise InputError(f"rollout {rollout_id} already exists in {self.path}")
            conn.execute(
                f"INSERT INTO rollouts ({_ROLLOUT}) VALUES (?, ?, ?, ?, ?, ?)",
                (rollout_id, bundle_id, state, created_at, created_at, text),
            )

    def save_rollout(self, rollout_id: str, state: str, updated_at: float, document: dict) -> None:
        """Replace a rollout's state and document.

        Raises:
            InputError: no such rollout.
        """
        text = _json(f"rollout {rollout_id}'s document", document)
        with self._write("saving a rollout") as conn:
            changed = conn.execute(
                "UPDATE rollouts SET state = ?, updated_at = ?, document = ? WHERE rollout_id = ?",
                (state, updated_at, text, rollout_id),
            ).rowcount
        if not changed:
            raise InputError(f"no rollout {rollout_id} in {self.path}")

    def rollout(self, rollout_id: str) -> RolloutRecord | None:
        """The rollout, or None."""
        row = self._query_one(
            "reading a rollout",
            f"SELECT {_ROLLOUT} FROM rollouts WHERE rollout_id = ?",
            (rollout_id,),
        )
        return None if row is None else _rollout(row)

    def rollout_state(self, rollout_id: str) -> str | None:
        """A rollout's state alone, or None when there is no such rollout (cheap: the
        document, which grows with the devices, is not read)."""
        row = self._query_one(
            "reading a rollout's state",
            "SELECT state FROM rollouts WHERE rollout_id = ?",
            (rollout_id,),
        )
        return None if row is None else str(row[0])

    def rollouts(self, states: Iterable[str] | None = None) -> list[RolloutRecord]:
        """Rollouts, newest first; only those in ``states`` if given."""
        wanted = None if states is None else _id_list(states)
        rows = self._query(
            "listing rollouts",
            f"SELECT {_ROLLOUT} FROM rollouts WHERE ? IS NULL "
            "OR state IN (SELECT value FROM json_each(?)) ORDER BY created_at DESC, rowid DESC",
            (wanted, wanted),
        )
        return [_rollout(row) for row in rows]

    # ---------------------------------------------------------------- operator requests

    def request(
        self, rollout_id: str, action: str, at: float, actor: str = "cli", reason: str = ""
    ) -> int:
        """File an operator's request for the service to act on.

        Returns:
            The request's id.

        Raises:
            InputError: the action is not one of pause, resume, approve, abort, or there is
                no such rollout.
        """
        if action not in OPERATOR_ACTIONS:
            raise InputError(
                f"unknown rollout action {action!r}: one of {', '.join(OPERATOR_ACTIONS)}"
            )
        with self._write("filing a request") as conn:
            if not conn.execute(
                "SELECT 1 FROM rollouts WHERE rollout_id = ?", (rollout_id,)
            ).fetchone():
                raise InputError(f"no rollout {rollout_id} in {self.path}")
            cursor = conn.execute(
                "INSERT INTO operator_requests (rollout_id, action, requested_at, actor, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (rollout_id, action, at, actor, reason),
            )
            return int(cursor.lastrowid or 0)

    def pending_requests(self, rollout_id: str | None = None) -> list[OperatorRequest]:
        """Requests not yet consumed, oldest first; of one rollout, or of all if None."""
        where, params = _where(rollout_id=rollout_id)
        rows = self._query(
            "reading requests",
            f"SELECT {_REQUEST} FROM operator_requests WHERE handled_at IS NULL AND {where} "
            "ORDER BY request_id",
            params,
        )
        return [OperatorRequest(*row) for row in rows]

    def consume_requests(self, ids: Iterable[int], at: float) -> int:
        """Mark requests handled; those already handled keep their first time.

        Returns:
            How many were pending and are now handled.
        """
        with self._write("consuming requests") as conn:
            return conn.execute(
                "UPDATE operator_requests SET handled_at = ? WHERE handled_at IS NULL "
                "AND request_id IN (SELECT value FROM json_each(?))",
                (at, _id_list(ids)),
            ).rowcount

    # ------------------------------------------------------------------------- commands

    def queue_command(self, command: Command, device_id: str, reason: str, at: float) -> None:
        """Queue a command for a device; it stays queued until :meth:`mark_sent`.

        Raises:
            InputError: the device id is not valid, or the command id was queued before.
        """
        check_device_id(device_id)
        with self._write("queueing a command") as conn:
            if conn.execute(
                "SELECT 1 FROM commands WHERE command_id = ?", (command.command_id,)
            ).fetchone():
                raise InputError(f"command {command.command_id} was already queued")
            values = {
                "command_id": command.command_id,
                "device_id": device_id,
                "kind": command.kind,
                "bundle_id": command.bundle_id,
                "rollout_id": command.rollout_id,
                "created_at": at,
                "reason": reason,
                "document": _json("a command", command.to_dict()),
            }
            _insert(conn, "commands", values)

    def unsent_commands(self, limit: int = 1000) -> list[QueuedCommand]:
        """Commands queued and not yet sent, oldest first (at most ``limit``)."""
        rows = self._query(
            "reading the command queue",
            f"SELECT {_COMMAND} FROM commands WHERE sent_at IS NULL "
            "ORDER BY created_at, rowid LIMIT ?",
            (limit,),
        )
        return [_queued(row) for row in rows]

    def mark_sent(self, command_ids: Iterable[str], at: float) -> int:
        """Record that commands were published; a command already sent keeps its first time.

        Returns:
            How many commands were unsent and are now sent.
        """
        with self._write("marking commands sent") as conn:
            return conn.execute(
                "UPDATE commands SET sent_at = ? WHERE sent_at IS NULL "
                "AND command_id IN (SELECT value FROM json_each(?))",
                (at, _id_list(command_ids)),
            ).rowcount

    def command(self, command_id: str) -> QueuedCommand | None:
        """The queued command (sent or not), or None."""
        row = self._query_one(
            "reading a command",
            f"SELECT {_COMMAND} FROM commands WHERE command_id = ?",
            (command_id,),
        )
        return None if row is None else _queued(row)

    # -------------------------------------------------------------------------- results

    def record_result(self, device_id: str, result: CommandResult, received_at: float) -> bool:
        """Store a command result that arrived on ``device_id``'s events topic.

        Every result is kept; one that does not answer a command queued for that device
        (unknown command id, another device's command, another kind) is kept as unknown and
        never returned by :meth:`final_result` or :meth:`latest_results`.

        Returns:
            Whether the result answers a command the fleet queued for that device.
        """
        with self._write("recording a command result") as conn:
            known = (
                conn.execute(
                    "SELECT 1 FROM commands WHERE command_id = ? AND device_id = ? AND kind = ?",
                    (result.command_id, device_id, result.kind),
                ).fetchone()
                is not None
            )
            values = {
                **asdict(result),
                "device_id": device_id,
                "received_at": received_at,
                "known": int(known),
            }
            _insert(conn, "command_results", values)
        return known

    def final_result(self, command_id: str) -> ResultRecord | None:
        """The latest known result of a command whose outcome is not ``accepted``, or None."""
        row = self._query_one(
            "reading a command result",
            f"SELECT {_RESULT} FROM {_KNOWN_RESULTS} WHERE r.command_id = ? "
            "AND r.outcome != 'accepted' ORDER BY r.result_id DESC LIMIT 1",
            (command_id,),
        )
        return None if row is None else _result(row)

    def latest_results(self, command_ids: Iterable[str]) -> dict[str, ResultRecord]:
        """For many commands at once (one query): each one's final result if it has one (as
        :meth:`final_result`), else its latest ``accepted``; commands without a known result
        are left out.

        Returns:
            Command id to result.
        """
        rows = self._query(
            "reading command results",
            f"SELECT * FROM (SELECT {_RESULT}, row_number() OVER (PARTITION BY r.command_id "
            "ORDER BY r.outcome != 'accepted' DESC, r.result_id DESC) AS rank "
            f"FROM {_KNOWN_RESULTS} WHERE r.command_id IN (SELECT value FROM json_each(?))) "
            "WHERE rank = 1",
            (_id_list(command_ids),),
        )
        return {record.command_id: record for record in map(_result, rows)}

    # ------------------------------------------------------------------------ telemetry

    def add_windows(self, windows: Sequence[TelemetryWindow], received_at: float) -> int:
        """Store telemetry windows in one statement; a (device, stream, seq) already stored is
        dropped (a window delivered again), while the same seq in another stream (the device's
        buffer started over) is a new window.

        One transaction (or part of the caller's): pass a whole batch (hundreds of windows),
        not one window per call. The registry does not check that a window's device is the
        one whose topic it arrived on: the service does.

        Returns:
            How many windows were new.
        """
        rows = [
            (
                w.device_id,
                w.seq,
                w.window_start,
                w.window_end,
                w.bundle_id,
                w.requests,
                w.rows,
                w.errors,
                w.contract_violations,
                json.dumps(w.latency_ms, separators=(",", ":")),
                json.dumps(w.predictions, separators=(",", ":")),
                json.dumps(w.drift_psi, separators=(",", ":")),
                w.dropped_windows,
                w.stream,
                received_at,
                w.latency_ms.get("p95"),
            )
            for w in windows
        ]
        if not rows:
            return 0
        with self._write("storing telemetry") as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO telemetry ({_WINDOW}, p95_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return conn.total_changes - before

    def windows(
        self,
        device_id: str | None = None,
        bundle_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        *,
        received_since: float | None = None,
    ) -> list[WindowRecord]:
        """Stored windows, of every stream, ordered by device, stream and seq.

        Args:
            device_id: only this device's.
            bundle_id: only windows served by this bundle.
            since: only windows that start at or after this time (the device's clock).
            until: only windows that start before this time (the device's clock).
            received_since: only windows the fleet received at or after this time (the
                fleet's clock, which a device's wrong clock cannot move).
        """
        where, params = _where(device_id=device_id, bundle_id=bundle_id)
        for clause, value in (
            ("window_start >= ?", since),
            ("window_start < ?", until),
            ("received_at >= ?", received_since),
        ):
            if value is not None:
                where += f" AND {clause}"
                params.append(value)
        # With a time filter, "+" keeps SQLite from walking the whole primary key to skip
        # a sort: the received_at index finds the few recent windows, then they are sorted.
        order = (
            "+device_id, +stream, +seq" if received_since is not None else "device_id, stream, seq"
        )
        rows = self._query(
            "reading telemetry",
            f"SELECT {_WINDOW} FROM telemetry WHERE {where} ORDER BY {order}",
            params,
        )
        return [_window(row) for row in rows]

    def window_gaps(self, device_id: str, stream: str | None = None) -> list[tuple[int, int]]:
        """The windows of one of the device's streams that never arrived, as inclusive
        (first, last) seq ranges, from seq 1 up to the highest stored (e.g. ``[(4, 6)]``: 4, 5
        and 6 are missing).

        Args:
            device_id: the device.
            stream: the stream (``""``: windows of agents before streams); by default the
                device's latest, the stream of the window the fleet received last.
        """
        if stream is None:
            stream = self.latest_stream(device_id)
            if stream is None:
                return []
        rows = self._query(
            "reading telemetry",
            "SELECT previous + 1, seq - 1 FROM (SELECT seq, lag(seq, 1, 0) OVER "
            "(ORDER BY seq) AS previous FROM telemetry WHERE device_id = ? AND stream = ?) "
            "WHERE seq > previous + 1 ORDER BY seq",
            (device_id, stream),
        )
        return [(int(first), int(last)) for first, last in rows]

    def latest_stream(self, device_id: str) -> str | None:
        """The stream of the device's window the fleet received last (the latest stored of
        those received together), or None when it sent none."""
        row = self._query_one(
            "reading telemetry",
            # "+" keeps SQLite on the primary key (this device's rows) rather than walking the
            # whole received_at index backwards to the device's last window.
            "SELECT stream FROM telemetry WHERE device_id = ? "
            "ORDER BY +received_at DESC, rowid DESC LIMIT 1",
            (device_id,),
        )
        return None if row is None else str(row[0])

    def health(self, bundle_id: str, since: Mapping[str, float]) -> dict[str, DeviceHealth]:
        """Each device's figures on ``bundle_id`` over the windows received since its own time
        in ``since`` (device id -> fleet time), aggregated in SQL.

        The same figures as :func:`edgeml.fleet.gates.summarize_windows` over those windows
        (tests hold them equal), without decoding any window in Python: a rollout's health is
        recomputed every few seconds over every window of its soak.
        """
        if not since:
            return {}
        values = ", ".join("(?, ?)" for _ in since)
        params: list[Any] = [x for item in since.items() for x in item]
        scope = (
            f"WITH since(device_id, t) AS (VALUES {values}) "
            "SELECT {columns} FROM telemetry AS w JOIN since ON w.device_id = since.device_id "
            "{extra}WHERE +w.bundle_id = ? AND +w.received_at >= since.t "
        )
        totals = self._query(
            "aggregating health",
            scope.format(
                columns="w.device_id, count(*), sum(w.requests), sum(w.rows), "
                "sum(w.errors + w.contract_violations), "
                "sum(CASE WHEN w.p95_ms IS NOT NULL AND w.requests > 0 "
                "THEN w.p95_ms * w.requests END), "
                "sum(CASE WHEN w.p95_ms IS NOT NULL AND w.requests > 0 THEN w.requests END)",
                extra="",
            )
            + "GROUP BY w.device_id",
            [*params, bundle_id],
        )
        psi: dict[str, dict[str, float]] = {}
        for device_id, name, value in self._query(
            "aggregating drift",
            scope.format(
                columns="w.device_id, j.key, sum(j.value * max(w.rows, 1)) / sum(max(w.rows, 1))",
                extra=", json_each(w.drift_psi) AS j ",
            )
            + "GROUP BY w.device_id, j.key",
            [*params, bundle_id],
        ):
            psi.setdefault(device_id, {})[name] = float(value)
        return {
            device_id: DeviceHealth(
                windows=int(count),
                requests=int(requests or 0),
                rows=int(rows or 0),
                errors=int(errors or 0),
                p95_ms=float(weighted) / float(weight) if weight else None,
                psi=dict(sorted(psi.get(device_id, {}).items())),
            )
            for device_id, count, requests, rows, errors, weighted, weight in totals
        }

    def latency_p95(
        self, device_id: str, bundle_id: str, received_since: float, received_before: float
    ) -> float | None:
        """A device's request-weighted p95 on a bundle over the windows received in a span
        (its latency baseline before an install); None without such windows."""
        row = self._query_one(
            "reading a latency baseline",
            "SELECT sum(p95_ms * requests), sum(requests) FROM telemetry "
            "WHERE device_id = ? AND +bundle_id = ? AND +received_at >= ? "
            "AND +received_at < ? AND p95_ms IS NOT NULL AND requests > 0",
            (device_id, bundle_id, received_since, received_before),
        )
        if row is None or not row[1]:
            return None
        return float(row[0]) / float(row[1])

    def telemetry_counts(self) -> dict[str, int]:
        """``{"windows": stored windows, "devices": devices that reported any}``."""
        windows, devices = self._query_one(
            "counting telemetry", "SELECT count(*), count(DISTINCT device_id) FROM telemetry"
        )
        return {"windows": int(windows), "devices": int(devices)}

    # ---------------------------------------------------------------------- enrollments

    def save_enrollment(self, record: EnrollmentRecord) -> None:
        """Store a broker account, replacing the one of the same user name if any.

        Whether replacing is allowed (``--rotate-credentials``) is the caller's decision
        (:mod:`edgeml.fleet.enrollment`), made in the same transaction.

        Raises:
            InputError: the role is not ``device`` or ``fleet``, or a device's user name is
                not a valid device id.
        """
        if record.role not in ENROLLMENT_ROLES:
            raise InputError(
                f"enrollment role must be one of {', '.join(ENROLLMENT_ROLES)}, got {record.role!r}"
            )
        if record.role == "device":
            check_device_id(record.username)
        values = {**asdict(record), "tags": json.dumps(list(record.tags))}
        update = ", ".join(f"{c} = excluded.{c}" for c in values if c != "username")
        with self._write("storing an enrollment") as conn:
            _insert(conn, "enrollments", values, f" ON CONFLICT (username) DO UPDATE SET {update}")

    def enrollment(self, username: str) -> EnrollmentRecord | None:
        """The broker account of a device (or of the fleet's user), revoked or not; or None."""
        row = self._query_one(
            "reading an enrollment",
            f"SELECT {_ENROLLMENT} FROM enrollments WHERE username = ?",
            (username,),
        )
        return None if row is None else _enrollment(row)

    def enrollments(
        self, role: str | None = None, *, include_revoked: bool = True
    ) -> list[EnrollmentRecord]:
        """Broker accounts, sorted by user name.

        Args:
            role: only ``device`` or only ``fleet`` accounts.
            include_revoked: False leaves revoked accounts out (what the broker may admit).
        """
        where, params = _where(role=role)
        if not include_revoked:
            where += " AND revoked_at IS NULL"
        rows = self._query(
            "listing enrollments",
            f"SELECT {_ENROLLMENT} FROM enrollments WHERE {where} ORDER BY username",
            params,
        )
        return [_enrollment(row) for row in rows]

    def revoke_enrollment(self, username: str, at: float, reason: str = "") -> bool:
        """Mark a broker account revoked; one already revoked keeps its first time and reason.

        Returns:
            True when it was active and is now revoked; False when it was revoked already.

        Raises:
            InputError: no such account.
        """
        with self._write("revoking an enrollment") as conn:
            if not conn.execute(
                "SELECT 1 FROM enrollments WHERE username = ?", (username,)
            ).fetchone():
                raise InputError(f"{username} is not enrolled in {self.path}")
            return (
                conn.execute(
                    "UPDATE enrollments SET revoked_at = ?, revoke_reason = ? "
                    "WHERE username = ? AND revoked_at IS NULL",
                    (at, reason, username),
                ).rowcount
                == 1
            )

    # ---------------------------------------------------------------------------- audit

    def audit(
        self,
        at: float,
        action: str,
        reason: str,
        *,
        actor: str = "fleet",
        rollout_id: str | None = None,
        device_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append an entry to the audit log (which the database keeps append-only).

        Returns:
            The entry's id.

        Raises:
            InputError: ``details`` is not JSON-ready data.
        """
        text = _json("audit details", details or {})
        with self._write("writing the audit log") as conn:
            return int(
                conn.execute(
                    "INSERT INTO audit (at, actor, action, reason, rollout_id, device_id, "
                    "details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (at, actor, action, reason, rollout_id, device_id, text),
                ).lastrowid
            )

    def audit_log(
        self, rollout_id: str | None = None, device_id: str | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit entries in the order they were written.

        Args:
            rollout_id: only entries about this rollout.
            device_id: only entries about this device.
            limit: only the newest ``limit`` entries (still oldest first).
        """
        where, params = _where(rollout_id=rollout_id, device_id=device_id)
        rows = self._query(
            "reading the audit log",
            f"SELECT * FROM (SELECT {_AUDIT} FROM audit WHERE {where} "
            "ORDER BY entry_id DESC LIMIT ?) ORDER BY entry_id",
            [*params, -1 if limit is None else limit],
        )
        return [AuditEntry(*row[:7], json.loads(row[7])) for row in rows]
