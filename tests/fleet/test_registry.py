"""The fleet registry on real SQLite files: every table, reopening, concurrency, bad files."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgeml.fleet.records import BundleRecord, DeviceRecord
from edgeml.fleet.registry import MIGRATION_SET, MIGRATIONS, FleetRegistry, RegistryError
from edgeml.toolkit.errors import ConfigError, InputError
from edgeml.toolkit.protocol import Command, CommandResult, Status, TelemetryWindow

BUNDLE = "cancer-1.0.0-raspberry-pi-4"
NEXT = "cancer-1.1.0-raspberry-pi-4"
SHA = "ab" * 32


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "fleet.db"


@pytest.fixture
def registry(db_path: Path) -> Any:
    with FleetRegistry.open(db_path) as registry:
        yield registry


def status(device_id: str = "pi-1", **changes: Any) -> Status:
    values: dict[str, Any] = {
        "device_id": device_id,
        "online": True,
        "sent_at": 5.0,
        "profile": "raspberry-pi-4",
        "tags": ["canary", "plant-3"],
        "active": BUNDLE,
        "previous": None,
        "state": "idle",
        "agent_version": "0.1.0",
        "detail": "",
    }
    values.update(changes)
    return Status(**values)


def bundle_record(bundle_id: str = BUNDLE, sha256: str = SHA) -> BundleRecord:
    name, version, profile = bundle_id.split("-", 2)
    return BundleRecord(
        bundle_id, name, version, profile, sha256, 1234, f"/srv/{bundle_id}.edgeml", "k1", 10.0
    )


def install(command_id: str, bundle_id: str = NEXT, rollout_id: str | None = "r-1") -> Command:
    return Command(command_id, "install", 20.0, bundle_id, 1234, SHA, rollout_id=rollout_id)


def result(command_id: str, outcome: str = "succeeded", kind: str = "install") -> CommandResult:
    return CommandResult(command_id, kind, outcome, 30.0, "", NEXT, NEXT, BUNDLE)


def window(
    device_id: str = "pi-1", seq: int = 1, bundle_id: str | None = NEXT, stream: str = ""
) -> TelemetryWindow:
    return TelemetryWindow(
        device_id=device_id,
        seq=seq,
        window_start=60.0 * seq,
        window_end=60.0 * (seq + 1),
        bundle_id=bundle_id,
        requests=10,
        rows=20,
        errors=1,
        contract_violations=0,
        latency_ms={"p50": 0.2, "p95": 0.4, "p99": 0.9, "max": 1.5, "mean": 0.25},
        predictions={"0": 12, "1": 8},
        drift_psi={"mean_radius": 0.01, "__prediction__": 0.02},
        dropped_windows=0,
        stream=stream,
    )


def with_rollout(registry: FleetRegistry, rollout_id: str = "r-1") -> None:
    registry.add_bundle(bundle_record(NEXT))
    registry.add_rollout(rollout_id, NEXT, "running", 100.0, {"stages": [1, "10%"]})


# ---------------------------------------------------------------------------------- opening


def test_open_creates_a_wal_database_with_the_schema_recorded(db_path: Path) -> None:
    with FleetRegistry.open(db_path):
        pass
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]
    ).fetchall()
    assert names == [(name,) for name, _ in MIGRATIONS]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"devices", "bundles", "rollouts", "commands", "telemetry", "audit"} <= tables
    conn.close()
    with FleetRegistry.open(db_path):  # reopening applies nothing twice
        pass


def test_a_closed_registry_refuses_work(db_path: Path) -> None:
    registry = FleetRegistry.open(db_path)
    registry.close()
    registry.close()
    with pytest.raises(RegistryError, match="closed"):
        registry.devices()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is a text file, not a database\n" * 100, "not a usable fleet registry"),
        (b"SQLite format 3\x00" + b"\xff" * 200, "not a usable fleet registry"),
    ],
    ids=["text", "damaged-header"],
)
def test_a_file_that_is_not_a_database_is_a_clean_error_naming_it(
    db_path: Path, content: bytes, message: str
) -> None:
    db_path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        FleetRegistry.open(db_path)
    assert str(db_path) in str(caught.value)


def test_another_programs_database_is_refused_and_left_alone(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE windows (seq INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match="not an edgeml fleet registry") as caught:
        FleetRegistry.open(db_path)
    assert str(db_path) in str(caught.value)
    conn = sqlite3.connect(db_path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["windows"]
    conn.close()


def test_a_database_from_a_newer_edgeml_is_refused(db_path: Path) -> None:
    FleetRegistry.open(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
        [MIGRATION_SET, "0099_from_the_future", "2030-01-01"],
    )
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"newer edgeml.*0099_from_the_future") as caught:
        FleetRegistry.open(db_path)
    assert str(db_path) in str(caught.value)


def test_a_missing_folder_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        FleetRegistry.open(tmp_path / "nowhere" / "fleet.db")
    with pytest.raises(RegistryError, match="is a folder"):
        FleetRegistry.open(tmp_path)


# ---------------------------------------------------------------------------------- devices


def test_status_upserts_keep_first_seen_and_use_the_fleets_clock(
    registry: FleetRegistry,
) -> None:
    assert registry.device("pi-1") is None
    registry.record_status(status(sent_at=1.0), received_at=100.0)
    registry.record_status(
        status(online=False, state="offline", active=NEXT, previous=BUNDLE, sent_at=2.0),
        received_at=160.0,
    )
    device = registry.device("pi-1")
    assert device == DeviceRecord(
        device_id="pi-1",
        profile="raspberry-pi-4",
        tags=("canary", "plant-3"),
        online=False,
        active=NEXT,
        previous=BUNDLE,
        state="offline",
        agent_version="0.1.0",
        detail="",
        sent_at=2.0,
        last_seen=160.0,
        first_seen=100.0,
    )
    as_dict = device.to_dict()
    for key in ("device_id", "profile", "tags", "active", "previous", "online", "last_seen"):
        assert key in as_dict
    assert as_dict["tags"] == ["canary", "plant-3"]


def test_devices_filter_by_profile_and_by_every_tag(registry: FleetRegistry) -> None:
    registry.record_status(status("pi-3", tags=["plant-3"]), 1.0)
    registry.record_status(status("pi-1", tags=["canary", "plant-3"]), 1.0)
    registry.record_status(status("pi-2", tags=[]), 1.0)
    registry.record_status(status("jetson-1", profile="jetson-orin", tags=["canary"]), 1.0)

    def ids(**filters: Any) -> list[str]:
        return [d.device_id for d in registry.devices(**filters)]

    assert ids() == ["jetson-1", "pi-1", "pi-2", "pi-3"]
    assert ids(profile="raspberry-pi-4") == ["pi-1", "pi-2", "pi-3"]
    assert ids(tags=["plant-3"]) == ["pi-1", "pi-3"]
    assert ids(tags=["canary", "plant-3"]) == ["pi-1"]
    assert ids(profile="jetson-orin", tags=("canary",)) == ["jetson-1"]
    assert ids(tags=["nowhere"]) == []


# ---------------------------------------------------------------------------------- bundles


def test_a_bundle_is_added_once_and_its_content_never_changes(registry: FleetRegistry) -> None:
    assert registry.add_bundle(bundle_record(BUNDLE)) is True
    assert registry.add_bundle(bundle_record(BUNDLE)) is False
    with pytest.raises(InputError, match=BUNDLE):
        registry.add_bundle(bundle_record(BUNDLE, sha256="cd" * 32))
    assert registry.bundle(BUNDLE) == bundle_record(BUNDLE)
    assert registry.bundle("nope-1-x") is None
    registry.add_bundle(bundle_record("cancer-1.0.0-jetson-orin"))
    assert [b.bundle_id for b in registry.bundles()] == ["cancer-1.0.0-jetson-orin", BUNDLE]
    assert [b.bundle_id for b in registry.bundles(profile="raspberry-pi-4")] == [BUNDLE]
    assert registry.bundle(BUNDLE).to_dict()["sha256"] == SHA


# --------------------------------------------------------------------------------- rollouts


def test_rollouts_store_documents_and_list_newest_first(registry: FleetRegistry) -> None:
    with pytest.raises(InputError, match="not published"):
        registry.add_rollout("r-0", NEXT, "running", 1.0, {})
    registry.add_bundle(bundle_record(NEXT))
    registry.add_rollout("r-1", NEXT, "running", 100.0, {"stage": 0, "devices": {"pi-1": "x"}})
    registry.add_rollout("r-2", NEXT, "paused", 200.0, {"stage": 1})
    with pytest.raises(InputError, match="r-1 already exists"):
        registry.add_rollout("r-1", NEXT, "running", 300.0, {})
    registry.save_rollout("r-1", "succeeded", 150.0, {"stage": 3})
    with pytest.raises(InputError, match="no rollout r-9"):
        registry.save_rollout("r-9", "running", 1.0, {})
    with pytest.raises(InputError, match="JSON"):
        registry.save_rollout("r-1", "running", 1.0, {"when": object()})

    record = registry.rollout("r-1")
    assert record is not None
    assert (record.bundle_id, record.state, record.created_at, record.updated_at) == (
        NEXT,
        "succeeded",
        100.0,
        150.0,
    )
    assert record.document == {"stage": 3}
    assert registry.rollout("r-9") is None
    assert (registry.rollout_state("r-1"), registry.rollout_state("r-9")) == ("succeeded", None)
    assert [r.rollout_id for r in registry.rollouts()] == ["r-2", "r-1"]
    assert [r.rollout_id for r in registry.rollouts(states=["succeeded"])] == ["r-1"]
    assert registry.rollouts(states=[]) == []


def test_operator_requests_are_pending_in_order_until_consumed(registry: FleetRegistry) -> None:
    with_rollout(registry)
    with pytest.raises(InputError, match="unknown rollout action"):
        registry.request("r-1", "explode", 1.0)
    with pytest.raises(InputError, match="no rollout r-9"):
        registry.request("r-9", "pause", 1.0)
    first = registry.request("r-1", "pause", 110.0, reason="looking at latency")
    second = registry.request("r-1", "resume", 120.0, actor="alice")
    pending = registry.pending_requests("r-1")
    assert [(r.request_id, r.action, r.actor) for r in pending] == [
        (first, "pause", "cli"),
        (second, "resume", "alice"),
    ]
    assert pending[0].reason == "looking at latency" and pending[0].handled_at is None
    assert registry.pending_requests() == pending
    assert registry.consume_requests([first], 130.0) == 1
    assert registry.consume_requests([first], 140.0) == 0
    assert [r.request_id for r in registry.pending_requests("r-1")] == [second]


# ------------------------------------------------------------------------- commands, results


def test_commands_queue_until_sent_and_parse_back(registry: FleetRegistry) -> None:
    registry.queue_command(install("c-2"), "pi-2", "rollout r-1 stage 1", 50.0)
    registry.queue_command(install("c-1"), "pi-1", "rollout r-1 stage 1", 40.0)
    registry.queue_command(Command("c-3", "ping", 60.0), "pi-1", "health check", 60.0)
    with pytest.raises(InputError, match="c-1 was already queued"):
        registry.queue_command(install("c-1"), "pi-1", "again", 70.0)
    with pytest.raises(InputError, match="device id"):
        registry.queue_command(install("c-4"), "../etc", "bad", 70.0)

    unsent = registry.unsent_commands()
    assert [(q.command_id, q.device_id) for q in unsent] == [
        ("c-1", "pi-1"),
        ("c-2", "pi-2"),
        ("c-3", "pi-1"),
    ]
    assert unsent[0].command == install("c-1") and unsent[0].reason == "rollout r-1 stage 1"
    assert unsent[0].to_dict()["command"] == install("c-1").to_dict()
    assert [q.command_id for q in registry.unsent_commands(limit=1)] == ["c-1"]
    assert registry.mark_sent(["c-1", "c-3", "c-nope"], 80.0) == 2
    assert registry.mark_sent(["c-1"], 90.0) == 0
    assert [q.command_id for q in registry.unsent_commands()] == ["c-2"]
    sent = registry.command("c-1")
    assert sent is not None and sent.sent_at == 80.0 and sent.created_at == 40.0
    assert registry.command("c-2").sent_at is None  # type: ignore[union-attr]
    assert registry.command("c-nope") is None


def test_forged_and_stray_results_are_kept_but_never_drive_decisions(
    registry: FleetRegistry,
) -> None:
    registry.queue_command(install("c-1"), "pi-1", "stage 1", 40.0)
    assert registry.record_result("pi-1", result("c-1", "accepted"), 41.0) is True
    assert registry.final_result("c-1") is None  # accepted is not final
    # pi-2 claims pi-1's command failed; a result for a command never issued; a wrong kind.
    assert registry.record_result("pi-2", result("c-1", "failed"), 42.0) is False
    assert registry.record_result("pi-2", result("c-forged", "succeeded"), 43.0) is False
    assert registry.record_result("pi-1", result("c-1", "failed", kind="rollback"), 44.0) is False
    assert registry.final_result("c-1") is None
    assert registry.final_result("c-forged") is None

    assert registry.record_result("pi-1", result("c-1", "succeeded"), 45.0) is True
    final = registry.final_result("c-1")
    assert final is not None
    assert (final.device_id, final.outcome, final.received_at, final.known) == (
        "pi-1",
        "succeeded",
        45.0,
        True,
    )
    assert final.result == result("c-1", "succeeded")
    assert final.to_dict()["result"]["type"] == "command-result"


def test_latest_results_for_many_commands_prefer_a_final_outcome(registry: FleetRegistry) -> None:
    ids = [f"c-{i}" for i in range(1200)]
    with registry.transaction():
        for i, command_id in enumerate(ids):
            registry.queue_command(install(command_id), f"pi-{i}", "stage", 1.0)
            registry.record_result(f"pi-{i}", result(command_id, "accepted"), 2.0)
            if i % 2:
                registry.record_result(f"pi-{i}", result(command_id, "succeeded"), 3.0)
                # a late duplicate of "accepted" after the final outcome
                registry.record_result(f"pi-{i}", result(command_id, "accepted"), 4.0)
    registry.record_result("pi-x", result("c-0", "failed"), 5.0)  # forged, ignored

    latest = registry.latest_results([*ids, "c-unknown"])
    assert len(latest) == 1200
    assert latest["c-0"].outcome == "accepted" and latest["c-0"].device_id == "pi-0"
    assert latest["c-1"].outcome == "succeeded" and latest["c-1"].received_at == 3.0
    assert registry.latest_results([]) == {}


# -------------------------------------------------------------------------------- telemetry


def test_windows_are_stored_whole_duplicates_dropped_and_gaps_reported(
    db_path: Path,
) -> None:
    with FleetRegistry.open(db_path) as registry:
        assert registry.add_windows([window(seq=s) for s in (1, 2, 3)], 200.0) == 3
        assert registry.add_windows([window(seq=3), window(seq=7), window(seq=7)], 210.0) == 1
        assert registry.add_windows([], 220.0) == 0
        registry.add_windows([window("pi-2", 2, bundle_id=BUNDLE)], 230.0)
    with FleetRegistry.open(db_path) as registry:  # persists across reopening
        assert registry.window_gaps("pi-1") == [(4, 6)]
        assert registry.window_gaps("pi-2") == [(1, 1)]
        assert registry.window_gaps("pi-none") == []
        assert registry.telemetry_counts() == {"windows": 5, "devices": 2}

        stored = registry.windows(device_id="pi-1")
        assert [(r.device_id, r.seq) for r in stored] == [("pi-1", s) for s in (1, 2, 3, 7)]
        assert stored[0].window == window(seq=1)
        assert stored[0].to_dict()["window"]["drift_psi"] == window().drift_psi
        assert stored[2].received_at == 200.0  # the duplicate did not overwrite it
        assert [r.device_id for r in registry.windows(bundle_id=BUNDLE)] == ["pi-2"]
        assert [r.seq for r in registry.windows("pi-1", since=120.0, until=420.0)] == [2, 3]
        assert len(registry.windows()) == 5
        assert [(r.device_id, r.seq) for r in registry.windows(received_since=210.0)] == [
            ("pi-1", 7),
            ("pi-2", 2),
        ]


OLD_STREAM, NEW_STREAM = "0123456789abcdef", "fedcba9876543210"


def test_the_same_seq_in_two_streams_is_two_windows_and_a_redelivery_is_dropped(
    registry: FleetRegistry,
) -> None:
    """A device re-imaged (its outbox lost) numbers its windows from 1 again in a new stream:
    stored, not taken for duplicates; a window delivered twice in one stream is dropped."""
    assert registry.add_windows([window(seq=s, stream=OLD_STREAM) for s in (1, 2, 3)], 10.0) == 3
    batch = [window(seq=1, stream=NEW_STREAM), window(seq=2, stream=NEW_STREAM)]
    assert registry.add_windows([*batch, window(seq=3, stream=OLD_STREAM)], 20.0) == 2
    assert registry.add_windows([window(seq=1, stream=NEW_STREAM)], 30.0) == 0
    assert registry.add_windows([window(seq=1)], 30.0) == 1  # the empty stream is a third
    assert registry.telemetry_counts() == {"windows": 6, "devices": 1}

    stored = registry.windows(device_id="pi-1")
    assert [(r.stream, r.seq) for r in stored] == [
        ("", 1),
        (OLD_STREAM, 1),
        (OLD_STREAM, 2),
        (OLD_STREAM, 3),
        (NEW_STREAM, 1),
        (NEW_STREAM, 2),
    ]
    assert stored[4].window == window(seq=1, stream=NEW_STREAM)
    assert stored[4].received_at == 20.0  # the redelivery did not overwrite it
    assert stored[4].to_dict()["window"]["stream"] == NEW_STREAM
    assert "stream" not in stored[0].to_dict()["window"]
    recent = registry.windows(received_since=20.0)
    assert [(r.stream, r.seq) for r in recent] == [("", 1), (NEW_STREAM, 1), (NEW_STREAM, 2)]


def test_gaps_are_per_stream_and_default_to_the_latest_stream(registry: FleetRegistry) -> None:
    assert registry.latest_stream("pi-1") is None
    registry.add_windows([window(seq=s, stream=OLD_STREAM) for s in (1, 2, 5, 9)], 10.0)
    assert registry.latest_stream("pi-1") == OLD_STREAM
    assert registry.window_gaps("pi-1") == [(3, 4), (6, 8)]
    registry.add_windows([window(seq=s, stream=NEW_STREAM) for s in (1, 3)], 20.0)
    assert registry.latest_stream("pi-1") == NEW_STREAM
    assert registry.window_gaps("pi-1") == [(2, 2)]  # the new stream does not owe 4 to 8
    assert registry.window_gaps("pi-1", OLD_STREAM) == [(3, 4), (6, 8)]
    assert registry.window_gaps("pi-1", NEW_STREAM) == [(2, 2)]
    assert registry.window_gaps("pi-1", "") == []
    # The old stream's last windows arrive late (the broker kept them): the latest stream
    # follows what arrived last.
    registry.add_windows([window(seq=s, stream=OLD_STREAM) for s in (3, 4)], 30.0)
    assert registry.latest_stream("pi-1") == OLD_STREAM
    assert registry.window_gaps("pi-1") == [(6, 8)]
    # Received together (one batch, one time): the window stored last decides.
    registry.add_windows([window(seq=6, stream=OLD_STREAM), window(seq=2, stream=NEW_STREAM)], 40.0)
    assert registry.latest_stream("pi-1") == NEW_STREAM
    assert registry.window_gaps("pi-1") == []
    assert registry.window_gaps("pi-none") == []


def test_migrating_a_registry_from_before_streams_keeps_every_window_in_the_empty_stream(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry written at migration 0002 (telemetry keyed by device and seq) opens under
    this edgeml: its windows are kept, in the empty stream, with their indexes."""
    from edgeml.fleet import registry as registry_module

    before_streams = [(name, f) for name, f in MIGRATIONS if name < "0003"]
    assert [name for name, _ in before_streams] == [
        "0001_create_registry",
        "0002_create_enrollments",
    ]
    with monkeypatch.context() as patch:
        patch.setattr(registry_module, "MIGRATIONS", tuple(before_streams))
        with FleetRegistry.open(db_path) as old:  # what an edgeml before streams wrote
            old.audit(1.0, "made", "before streams")
    conn = sqlite3.connect(db_path)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(telemetry)")]
    assert "stream" not in columns
    rows = [
        ("pi-1", 1, 60.0, 120.0, NEXT, 10, 20, 1, 0, '{"p95":0.4}', '{"0":12}', "{}", 0, 0.4, 5.0),
        ("pi-1", 2, 120.0, 180.0, NEXT, 10, 20, 1, 0, '{"p95":0.4}', '{"0":12}', "{}", 2, 0.4, 6.0),
        ("pi-1", 4, 240.0, 300.0, NEXT, 10, 20, 1, 0, '{"p95":0.4}', '{"0":12}', "{}", 0, 0.4, 7.0),
        ("pi-2", 1, 60.0, 120.0, BUNDLE, 3, 3, 0, 0, "{}", "{}", '{"x":0.5}', 0, None, 8.0),
    ]
    with conn:
        conn.executemany(
            "INSERT INTO telemetry (device_id, seq, window_start, window_end, bundle_id, "
            "requests, rows, errors, contract_violations, latency_ms, predictions, drift_psi, "
            "dropped_windows, p95_ms, received_at) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()

    with FleetRegistry.open(db_path) as registry:
        stored = registry.windows()
        assert [(r.device_id, r.stream, r.seq) for r in stored] == [
            ("pi-1", "", 1),
            ("pi-1", "", 2),
            ("pi-1", "", 4),
            ("pi-2", "", 1),
        ]
        assert stored[1].window.dropped_windows == 2 and stored[1].received_at == 6.0
        assert stored[3].window.drift_psi == {"x": 0.5}
        assert registry.window_gaps("pi-1") == [(3, 3)]
        assert registry.window_gaps("pi-1", "") == [(3, 3)]
        assert [r.device_id for r in registry.windows(bundle_id=BUNDLE)] == ["pi-2"]
        assert [r.seq for r in registry.windows(received_since=7.0)] == [4, 1]
        assert registry.telemetry_counts() == {"windows": 4, "devices": 2}
        assert [e.action for e in registry.audit_log()] == ["made"]
        # An old agent sends window 2 again: a duplicate. Re-imaged with a new agent: new.
        assert registry.add_windows([window(seq=2), window(seq=1, stream=NEW_STREAM)], 9.0) == 1
        assert registry.window_gaps("pi-1") == []  # the latest stream: the new one
    conn = sqlite3.connect(db_path)
    indexes = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'telemetry'"
        )
    }
    assert {"telemetry_bundle", "telemetry_received"} <= indexes
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "telemetry_0003" not in tables
    applied = conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id", [MIGRATION_SET]
    ).fetchall()
    assert applied == [(name,) for name, _ in MIGRATIONS]
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_p95_is_a_column_for_sql(db_path: Path) -> None:
    with FleetRegistry.open(db_path) as registry:
        registry.add_windows([window(seq=1)], 1.0)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT p95_ms FROM telemetry").fetchone() == (0.4,)
    conn.close()


# ------------------------------------------------------------------------------------ audit


def test_the_audit_log_is_ordered_filtered_and_append_only(db_path: Path) -> None:
    with FleetRegistry.open(db_path) as registry:
        first = registry.audit(1.0, "rollout-started", "operator asked", rollout_id="r-1")
        registry.audit(2.0, "install", "stage 1", rollout_id="r-1", device_id="pi-1")
        registry.audit(
            3.0, "rollback", "p95 1.9x > 1.5x", actor="fleet", device_id="pi-2", details={"r": 1.9}
        )
        registry.audit(4.0, "pause", "looking", actor="alice", rollout_id="r-1")
        with pytest.raises(InputError, match="JSON"):
            registry.audit(5.0, "x", "y", details={"bad": {1, 2}})

        log = registry.audit_log()
        assert [e.action for e in log] == ["rollout-started", "install", "rollback", "pause"]
        assert log[0].entry_id == first and log[0].actor == "fleet" and log[0].details == {}
        assert log[2].details == {"r": 1.9}
        assert [e.at for e in registry.audit_log(rollout_id="r-1")] == [1.0, 2.0, 4.0]
        assert [e.at for e in registry.audit_log(device_id="pi-2")] == [3.0]
        assert [e.at for e in registry.audit_log(rollout_id="r-1", limit=2)] == [2.0, 4.0]
        assert log[3].to_dict()["actor"] == "alice"

    conn = sqlite3.connect(db_path)
    for statement in ("UPDATE audit SET reason = 'nothing happened'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="audit log is append-only"):
            conn.execute(statement)
    conn.rollback()
    conn.close()
    with FleetRegistry.open(db_path) as registry:
        assert len(registry.audit_log()) == 4


# ----------------------------------------------------------------------- transactions, locks


def test_a_transaction_writes_everything_or_nothing(registry: FleetRegistry) -> None:
    with_rollout(registry)
    with pytest.raises(RuntimeError), registry.transaction():
        registry.save_rollout("r-1", "paused", 200.0, {"stage": 9})
        registry.queue_command(install("c-1"), "pi-1", "stage", 200.0)
        registry.audit(200.0, "pause", "operator")
        raise RuntimeError("crash before commit")
    assert registry.rollout("r-1").state == "running"  # type: ignore[union-attr]
    assert registry.command("c-1") is None and registry.audit_log() == []

    with registry.transaction():
        registry.save_rollout("r-1", "paused", 200.0, {"stage": 9})
        with pytest.raises(InputError):  # a failed write inside leaves the others standing
            registry.add_bundle(bundle_record(NEXT, sha256="cd" * 32))
        registry.queue_command(install("c-1"), "pi-1", "stage", 200.0)
    assert registry.rollout("r-1").state == "paused"  # type: ignore[union-attr]
    assert registry.command("c-1") is not None


def test_a_writer_waits_for_another_connections_lock_instead_of_failing(
    db_path: Path,
) -> None:
    holder = FleetRegistry.open(db_path)
    waiter = FleetRegistry.open(db_path)
    locked = threading.Event()

    def hold() -> None:
        with holder.transaction():
            holder.audit(1.0, "hold", "keeps the write lock a while")
            locked.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait()
    started = time.monotonic()
    waiter.add_windows([window(seq=1)], 2.0)  # blocks until the holder commits
    assert time.monotonic() - started > 0.3
    thread.join()
    assert waiter.audit_log()[0].action == "hold"
    holder.close()
    waiter.close()


def test_a_lock_held_past_the_busy_timeout_is_a_clean_error(db_path: Path) -> None:
    holder = FleetRegistry.open(db_path)
    impatient = FleetRegistry.open(db_path, busy_timeout_s=0.1)
    with holder.transaction():
        holder.audit(1.0, "hold", "keeps the write lock")
        with pytest.raises(RegistryError, match="locked"):
            impatient.audit(2.0, "x", "y")
        assert impatient.audit_log() == []  # readers never wait in WAL mode
    holder.close()
    impatient.close()


def test_two_connections_write_concurrently_without_lock_errors(db_path: Path) -> None:
    with FleetRegistry.open(db_path) as setup:
        with_rollout(setup)
    errors: list[BaseException] = []

    def requests() -> None:
        try:
            with FleetRegistry.open(db_path) as cli:
                for i in range(200):
                    cli.request("r-1", "pause" if i % 2 else "resume", float(i))
        except BaseException as error:
            errors.append(error)

    def ingest() -> None:
        try:
            with FleetRegistry.open(db_path) as service:
                for batch in range(40):
                    with service.transaction():
                        service.add_windows(
                            [window(f"pi-{d}", batch + 1) for d in range(250)], float(batch)
                        )
                        service.audit(float(batch), "ingest", f"batch {batch}")
                        service.consume_requests(
                            [r.request_id for r in service.pending_requests("r-1")], float(batch)
                        )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=requests), threading.Thread(target=ingest)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with FleetRegistry.open(db_path) as registry:
        assert registry.telemetry_counts() == {"windows": 40 * 250, "devices": 250}
        assert len(registry.audit_log()) == 40
        conn = sqlite3.connect(db_path)
        assert conn.execute("SELECT count(*) FROM operator_requests").fetchone() == (200,)
        conn.close()


def test_a_cli_process_writes_while_the_service_ingests(db_path: Path) -> None:
    with FleetRegistry.open(db_path) as service:
        with_rollout(service)
        script = textwrap.dedent(
            f"""
            from edgeml.fleet.registry import FleetRegistry
            with FleetRegistry.open({str(db_path)!r}) as cli:
                for i in range(100):
                    cli.request("r-1", "pause", float(i), reason="from another process")
            """
        )
        process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
        seq = 0
        while process.poll() is None:
            seq += 1
            with service.transaction():
                service.add_windows([window(f"pi-{d}", seq) for d in range(100)], float(seq))
        assert process.returncode == 0, process.stderr.read().decode()  # type: ignore[union-attr]
        assert len(service.pending_requests("r-1")) == 100


# ----------------------------------------------------------------------------------- health


def varied(device_id: str, seq: int, bundle_id: str, rng: Any) -> TelemetryWindow:
    requests = int(rng.integers(0, 50))
    return dataclasses.replace(
        window(device_id, seq, bundle_id),
        requests=requests,
        rows=int(rng.integers(0, 200)),
        errors=int(rng.integers(0, 3)),
        contract_violations=int(rng.integers(0, 2)),
        latency_ms={"p95": float(rng.uniform(0.1, 9))} if seq % 4 else {},
        drift_psi={"a": float(rng.uniform(0, 1)), "b": float(rng.uniform(0, 2))}
        if seq % 3
        else {"a": 0.5},
    )


def test_health_in_sql_equals_the_pure_fold_over_the_same_windows(
    registry: FleetRegistry,
) -> None:
    import numpy as np

    from edgeml.fleet.gates import summarize_windows

    rng = np.random.default_rng(7)
    received = {}
    for seq in range(1, 40):
        batch = [varied(d, seq, NEXT if seq % 5 else BUNDLE, rng) for d in ("pi-1", "pi-2")]
        registry.add_windows(batch, float(seq))
        for w in batch:
            received[(w.device_id, w.seq)] = (float(seq), w)
    since = {"pi-1": 10.0, "pi-2": 25.0, "pi-9": 0.0}
    health = registry.health(NEXT, since)
    assert set(health) == {"pi-1", "pi-2"}
    for device_id in ("pi-1", "pi-2"):
        expected = summarize_windows(
            w
            for (d, _), (at, w) in sorted(received.items())
            if d == device_id and w.bundle_id == NEXT and at >= since[device_id]
        )
        got = health[device_id]
        assert (got.windows, got.requests, got.rows, got.errors) == (
            expected.windows,
            expected.requests,
            expected.rows,
            expected.errors,
        )
        assert got.p95_ms == pytest.approx(expected.p95_ms)
        assert got.psi == pytest.approx(expected.psi)
    assert registry.health(NEXT, {}) == {}


def test_latency_baseline_is_the_request_weighted_p95_in_its_span(
    registry: FleetRegistry,
) -> None:
    first = dataclasses.replace(window("pi-1", 1, BUNDLE), requests=10, latency_ms={"p95": 2.0})
    second = dataclasses.replace(window("pi-1", 2, BUNDLE), requests=30, latency_ms={"p95": 4.0})
    late = dataclasses.replace(window("pi-1", 3, BUNDLE), requests=30, latency_ms={"p95": 99.0})
    registry.add_windows([first], 100.0)
    registry.add_windows([second], 200.0)
    registry.add_windows([late], 300.0)
    assert registry.latency_p95("pi-1", BUNDLE, 0.0, 300.0) == pytest.approx(3.5)
    assert registry.latency_p95("pi-1", NEXT, 0.0, 300.0) is None
    assert registry.latency_p95("pi-2", BUNDLE, 0.0, 300.0) is None
