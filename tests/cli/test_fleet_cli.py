"""``edgeml fleet`` through the CLI, on a real registry file: exit codes, what stderr names,
the ``--json`` documents; plus one run of the installed entry point.

Devices are registered, telemetry stored and rollouts moved with the registry and the rollout
engine directly (no broker here: the service itself is tested in tests/fleet/test_service.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import TrainedModel, build_bundle, write_csv
from typer.testing import CliRunner

from edgeml.fleet.operations import device_view, start_rollout
from edgeml.fleet.publishing import publish_bundle
from edgeml.fleet.registry import FleetRegistry
from edgeml.fleet.rollout import (
    CommandOutcome,
    Observations,
    OperatorRequest,
    Rollout,
    SendInstall,
    StageSize,
    step,
)
from edgeml.toolkit.cli import app
from edgeml.toolkit.keys import key_id, load_public_key
from edgeml.toolkit.protocol import Status, TelemetryWindow
from edgeml.toolkit.trust import load_trust_store

runner = CliRunner()

EDGEML = Path(sys.executable).with_name("edgeml")
PROFILE = "raspberry-pi-4"
OLD = "cancer-0.9.0-raspberry-pi-4"
OLDER = "cancer-0.8.0-raspberry-pi-4"
DEVICE_FIELDS = {"device_id", "profile", "tags", "active", "previous", "online", "last_seen"}


# --- helpers ----------------------------------------------------------------------------------


def fleet(*args: str) -> Result:
    """``edgeml fleet ARGS`` through typer's runner."""
    return runner.invoke(app, ["fleet", *args])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status(
    device_id: str,
    *,
    tags: tuple[str, ...] = (),
    active: str | None = OLD,
    previous: str | None = None,
    online: bool = True,
    profile: str = PROFILE,
) -> Status:
    return Status(
        device_id=device_id,
        online=online,
        sent_at=1.0,
        profile=profile,
        tags=list(tags),
        active=active,
        previous=previous,
    )


def window(
    device_id: str,
    seq: int,
    bundle_id: str | None,
    *,
    requests: int = 100,
    errors: int = 0,
    violations: int = 0,
    p95: float = 10.0,
    psi: float = 0.0,
) -> TelemetryWindow:
    return TelemetryWindow(
        device_id=device_id,
        seq=seq,
        window_start=1000.0 + seq * 60,
        window_end=1060.0 + seq * 60,
        bundle_id=bundle_id,
        requests=requests,
        rows=requests,
        errors=errors,
        contract_violations=violations,
        latency_ms={"p50": p95 / 2, "p95": p95, "p99": p95, "max": p95, "mean": p95 / 2},
        predictions={"0": requests},
        drift_psi={"mean_radius": psi},
    )


def tamper_model_entry(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with one byte of ``model.onnx`` flipped (headers written anew, so
    the archive itself is sound: only the entry's hash gives it away)."""
    with zipfile.ZipFile(src) as original, zipfile.ZipFile(dst, "w") as out:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "model.onnx":
                changed = bytearray(data)
                changed[len(changed) // 2] ^= 0x01
                data = bytes(changed)
            header = zipfile.ZipInfo(info.filename, info.date_time)
            header.compress_type = info.compress_type
            header.external_attr = info.external_attr
            out.writestr(header, data)
    return dst


def engine_step(
    registry: FleetRegistry, rollout: Rollout, now: float, **observed: Any
) -> tuple[Rollout, list[Any]]:
    """Step a rollout with the registry's devices (plus ``observed``) and save it."""
    devices = {d.device_id: device_view(d) for d in registry.devices(profile=rollout.profile)}
    updated, actions = step(rollout, Observations(devices=devices, **observed), now)
    registry.save_rollout(updated.rollout_id, updated.state, now, updated.to_dict())
    return updated, actions


def started(registry: FleetRegistry, bundle_id: str, now: float, **options: Any) -> Rollout:
    """A rollout of one device whose first stage the engine has started (install sent)."""
    rollout = start_rollout(registry, bundle_id, [StageSize(count=1)], now=now, **options)
    rollout, actions = engine_step(registry, rollout, now)
    assert any(isinstance(a, SendInstall) for a in actions)
    return rollout


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fleet.db"


@pytest.fixture
def registry(db: Path) -> Iterator[FleetRegistry]:
    with FleetRegistry.open(db) as registry:
        yield registry


@pytest.fixture
def bundle_id(registry: FleetRegistry, built_bundle: Path, key_dir: Path) -> str:
    """``built_bundle`` published to the registry; its id."""
    record, new = publish_bundle(registry, built_bundle, load_trust_store(key_dir))
    assert new
    return record.bundle_id


@pytest.fixture(scope="module")
def same_id_other_content(
    tmp_path_factory: pytest.TempPathFactory, key_dir: Path, logreg: TrainedModel
) -> Path:
    """A bundle with ``built_bundle``'s name, version and profile, built on fewer validation
    rows: the same id, other bytes."""
    folder = tmp_path_factory.mktemp("other-content")
    rows = write_csv(
        folder / "fewer.csv", logreg.feature_names, logreg.X_val[:80], logreg.y_val[:80]
    )
    model = dataclasses.replace(logreg, validation_path=rows)
    return build_bundle(model, key_dir, folder / "out", "cancer", version="1.0.0")


# --- fleet publish ----------------------------------------------------------------------------


def test_publish_copies_the_bundle_into_the_store_and_registers_it(
    db: Path, built_bundle: Path, key_dir: Path
) -> None:
    result = fleet("publish", str(built_bundle), "--db", str(db), "--trust", str(key_dir))
    assert result.exit_code == 0, result.stderr
    assert f"published {built_bundle.stem}" in result.stdout
    stored = db.with_name("fleet.bundles") / built_bundle.name
    assert stored.read_bytes() == built_bundle.read_bytes()
    with FleetRegistry.open(db) as registry:
        record = registry.bundle(built_bundle.stem)
    assert record is not None
    assert record.path == str(stored)
    assert record.sha256 == sha256_of(built_bundle)


def test_publish_json_reports_the_registered_bundle(
    db: Path, built_bundle: Path, key_dir: Path
) -> None:
    result = fleet("publish", str(built_bundle), "--db", str(db), "--trust", str(key_dir), "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["bundle_id"] == "cancer-1.0.0-raspberry-pi-4"
    assert (document["name"], document["version"], document["profile"]) == (
        "cancer",
        "1.0.0",
        PROFILE,
    )
    assert document["sha256"] == sha256_of(built_bundle)
    assert document["size"] == built_bundle.stat().st_size
    assert document["key_id"] == key_id(load_public_key(key_dir / "edgeml.pub"))
    assert document["path"] == str(db.with_name("fleet.bundles") / built_bundle.name)
    assert document["new"] is True
    assert isinstance(document["published_at"], float)


def test_publishing_the_same_bundle_again_is_a_no_op(
    db: Path, built_bundle: Path, key_dir: Path
) -> None:
    args = ("publish", str(built_bundle), "--db", str(db), "--trust", str(key_dir))
    assert fleet(*args).exit_code == 0
    again = fleet(*args)
    assert again.exit_code == 0, again.stderr
    assert f"already published: {built_bundle.stem}" in again.stdout
    as_json = fleet(*args, "--json")
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["new"] is False
    assert [p.name for p in db.with_name("fleet.bundles").iterdir()] == [built_bundle.name]


def test_publish_refuses_a_bundle_signed_by_an_untrusted_key(
    db: Path, built_bundle: Path, other_key_dir: Path
) -> None:
    result = fleet("publish", str(built_bundle), "--db", str(db), "--trust", str(other_key_dir))
    assert result.exit_code == 3, result.output
    assert "trusted key" in result.stderr
    assert "not in the trust store" in result.stderr
    assert result.stdout == ""
    with FleetRegistry.open(db) as registry:
        assert registry.bundles() == []
    store = db.with_name("fleet.bundles")
    assert not store.exists() or list(store.iterdir()) == []


def test_publish_refuses_a_tampered_bundle(
    tmp_path: Path, db: Path, built_bundle: Path, key_dir: Path
) -> None:
    tampered = tamper_model_entry(built_bundle, tmp_path / built_bundle.name)
    result = fleet("publish", str(tampered), "--db", str(db), "--trust", str(key_dir))
    assert result.exit_code == 3, result.output
    assert "hashes" in result.stderr and "model.onnx" in result.stderr
    with FleetRegistry.open(db) as registry:
        assert registry.bundles() == []
    store = db.with_name("fleet.bundles")
    assert not store.exists() or list(store.iterdir()) == []


def test_publish_refuses_other_content_under_a_published_id(
    db: Path, built_bundle: Path, key_dir: Path, same_id_other_content: Path
) -> None:
    assert same_id_other_content.name == built_bundle.name
    assert same_id_other_content.read_bytes() != built_bundle.read_bytes()
    first = fleet("publish", str(built_bundle), "--db", str(db), "--trust", str(key_dir))
    assert first.exit_code == 0, first.stderr
    result = fleet("publish", str(same_id_other_content), "--db", str(db), "--trust", str(key_dir))
    assert result.exit_code == 2, result.output
    assert "already published with other content" in result.stderr
    assert built_bundle.stem in result.stderr
    assert "--version" in result.stderr
    store = db.with_name("fleet.bundles")
    assert [p.name for p in store.iterdir()] == [built_bundle.name]
    assert (store / built_bundle.name).read_bytes() == built_bundle.read_bytes()
    with FleetRegistry.open(db) as registry:
        record = registry.bundle(built_bundle.stem)
    assert record is not None and record.sha256 == sha256_of(built_bundle)


# --- fleet bundles and devices ----------------------------------------------------------------


def test_bundles_lists_the_published_bundles(db: Path, bundle_id: str) -> None:
    result = fleet("bundles", "--db", str(db), "--json")
    assert result.exit_code == 0, result.stderr
    (document,) = json.loads(result.stdout)
    assert document["bundle_id"] == bundle_id
    assert {"profile", "version", "size", "sha256", "key_id", "published_at"} <= set(document)
    table = fleet("bundles", "--db", str(db))
    assert table.exit_code == 0, table.stderr
    assert "1 bundle(s)" in table.stdout


def test_devices_json_holds_the_contract_fields_and_health(
    db: Path, registry: FleetRegistry
) -> None:
    now = time.time()
    registry.record_status(
        status("pi-1", tags=("canary", "plant-3"), active=OLD, previous=OLDER), now - 5
    )
    registry.record_status(status("pi-2", active=None, online=False), now - 50)
    registry.add_windows(
        [
            window("pi-1", 1, OLD, requests=100, errors=1, p95=10.0, psi=0.1),
            window("pi-1", 2, OLD, requests=100, violations=1, p95=20.0, psi=0.3),
            window("pi-1", 3, OLDER, requests=50, errors=50, p95=99.0, psi=0.9),  # not active
        ],
        now,
    )
    result = fleet("devices", "--db", str(db), "--json")
    assert result.exit_code == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert DEVICE_FIELDS | {"health"} <= set(first)
    assert first["device_id"] == "pi-1"
    assert first["profile"] == PROFILE
    assert first["tags"] == ["canary", "plant-3"]
    assert (first["active"], first["previous"], first["online"]) == (OLD, OLDER, True)
    assert first["last_seen"] == pytest.approx(now - 5)
    assert first["health"] == {
        "windows": 2,
        "requests": 200,
        "error_rate": pytest.approx(0.01),
        "p95_ms": pytest.approx(15.0),
        "max_psi": pytest.approx(0.2),
    }
    assert second["device_id"] == "pi-2"
    assert (second["active"], second["online"]) == (None, False)
    assert second["health"] == {
        "windows": 0,
        "requests": 0,
        "error_rate": None,
        "p95_ms": None,
        "max_psi": None,
    }
    table = fleet("devices", "--db", str(db))
    assert table.exit_code == 0, table.stderr
    assert "pi-1" in table.stdout and "pi-2" in table.stdout


# --- fleet rollout start ----------------------------------------------------------------------


def test_rollout_start_of_an_unpublished_bundle_exits_2_naming_it(
    db: Path, registry: FleetRegistry
) -> None:
    result = fleet("rollout", "start", "cancer-9.9.9-raspberry-pi-4", "--db", str(db))
    assert result.exit_code == 2, result.output
    assert "cancer-9.9.9-raspberry-pi-4 is not published" in result.stderr
    assert registry.rollouts() == []


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--stages", "1,ten", "--stages: 'ten'"),
        ("--stages", "50%,10%", "--stages: 10% comes after the larger 50%"),
        ("--stages", "0", "--stages: '0'"),
        ("--target", "colour=red", "--target 'colour=red'"),
        ("--target", "tag=", "--target 'tag='"),
        ("--success-threshold", "2", "success-threshold must be in [0, 1]"),
        ("--error-threshold", "-0.5", "error-threshold must be in [0, 1]"),
    ],
)
def test_rollout_start_with_a_bad_option_exits_2_naming_it(
    db: Path, registry: FleetRegistry, bundle_id: str, option: str, value: str, named: str
) -> None:
    result = fleet("rollout", "start", bundle_id, "--db", str(db), option, value)
    assert result.exit_code == 2, result.output
    assert named in result.stderr
    assert registry.rollouts() == []


def test_rollout_start_to_another_profile_exits_2(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    result = fleet("rollout", "start", bundle_id, "--db", str(db), "--target", "profile=jetson")
    assert result.exit_code == 2, result.output
    assert "--target profile=jetson" in result.stderr
    assert f"is for profile {PROFILE}" in result.stderr
    assert registry.rollouts() == []


def test_rollout_start_json_prints_the_new_rollout_id(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    result = fleet(
        *("rollout", "start", bundle_id, "--db", str(db), "--stages", "1,50%,100%"),
        *("--target", "tag=plant-3", "--soak", "5", "--manual-approval", "--json"),
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"rollout_id"}
    record = registry.rollout(document["rollout_id"])
    assert record is not None
    assert (record.bundle_id, record.state) == (bundle_id, "running")
    assert record.document["stages"] == ["1", "50%", "100%"]
    assert record.document["target"] == ["tag=plant-3"]
    assert record.document["gates"]["soak_s"] == 5.0
    assert record.document["gates"]["manual_approval"] is True
    (created,) = registry.audit_log(rollout_id=document["rollout_id"])
    assert created.action == "rollout-created"


def test_rollout_start_without_json_prints_only_the_id(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    result = fleet("rollout", "start", bundle_id, "--db", str(db))
    assert result.exit_code == 0, result.stderr
    (record,) = registry.rollouts()
    assert result.stdout.strip() == record.rollout_id


def test_a_second_rollout_on_a_live_profile_exits_2_naming_the_live_one(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    first = fleet("rollout", "start", bundle_id, "--db", str(db), "--json")
    assert first.exit_code == 0, first.stderr
    live = json.loads(first.stdout)["rollout_id"]
    second = fleet("rollout", "start", bundle_id, "--db", str(db))
    assert second.exit_code == 2, second.output
    assert f"rollout {live}" in second.stderr
    assert f"fleet rollout abort {live}" in second.stderr
    assert [r.rollout_id for r in registry.rollouts()] == [live]


# --- fleet rollout list and status ------------------------------------------------------------


def test_rollout_list_json_lists_rollouts_newest_first(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    now = time.time()
    first = start_rollout(registry, bundle_id, [StageSize(count=1)], now=now - 10)
    engine_step(registry, first, now - 5, requests=(OperatorRequest(1, "abort"),))
    second = start_rollout(
        registry, bundle_id, [StageSize(count=1), StageSize(percent=100.0)], now=now
    )
    result = fleet("rollout", "list", "--db", str(db), "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["rollout_id"], r["state"]) for r in rows] == [
        (second.rollout_id, "running"),
        (first.rollout_id, "aborted"),
    ]
    assert rows[0]["bundle_id"] == bundle_id
    assert (rows[0]["stage"], rows[0]["stages"]) == (0, 2)
    table = fleet("rollout", "list", "--db", str(db))
    assert table.exit_code == 0, table.stderr
    assert "2 rollout(s)" in table.stdout


def test_rollout_status_json_holds_state_stages_devices_gates_and_audit(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    registry.record_status(status("pi-1", tags=("canary",)), time.time())
    rollout = started(registry, bundle_id, time.time())
    result = fleet("rollout", "status", rollout.rollout_id, "--db", str(db), "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["rollout_id"] == rollout.rollout_id
    assert document["state"] == "running"
    assert document["stages"][0]["outcome"] == "running"
    assert document["stages"][0]["states"] == {"sent": 1}
    (device,) = document["devices"]
    assert (device["device_id"], device["state"], device["from_bundle"]) == ("pi-1", "sent", OLD)
    assert set(document["gate_figures"]) == {"error-rate", "latency", "drift"}
    assert document["gate_figures"]["drift"]["threshold"] == 0.25
    assert [e["action"] for e in document["audit"]] == ["rollout-created"]
    assert document["pending_requests"] == []


def test_rollout_status_of_an_unknown_rollout_exits_2(db: Path, registry: FleetRegistry) -> None:
    result = fleet("rollout", "status", "ro-nothere", "--db", str(db))
    assert result.exit_code == 2, result.output
    assert "no rollout ro-nothere" in result.stderr


def test_rollout_status_table_renders_a_fresh_rollout(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    rollout = start_rollout(registry, bundle_id, [StageSize(count=1)], now=time.time())
    result = fleet("rollout", "status", rollout.rollout_id, "--db", str(db))
    assert result.exit_code == 0, result.output
    assert rollout.rollout_id in result.stdout
    assert "running" in result.stdout
    assert "pending" in result.stdout
    assert "not measured" in result.stdout


def test_rollout_status_table_renders_a_rolled_back_rollout(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    now = time.time()
    registry.record_status(status("pi-1", tags=("canary",), active=OLD), now)
    rollout = started(registry, bundle_id, now)
    command_id = rollout.devices["pi-1"].command_id
    failed = {command_id: CommandOutcome("failed", "self-test failed on golden row 2")}
    rollout, _ = engine_step(registry, rollout, now + 1, results=failed)
    assert rollout.state == "rolled-back"
    result = fleet("rollout", "status", rollout.rollout_id, "--db", str(db))
    assert result.exit_code == 0, result.output
    assert "rolled-back" in result.stdout
    assert "failure" in result.stdout
    as_json = fleet("rollout", "status", rollout.rollout_id, "--db", str(db), "--json")
    document = json.loads(as_json.stdout)
    assert document["state"] == "rolled-back"
    assert document["failure"]["gates"] == {"self-test": ["pi-1"]}
    # Settled (no device has to go back): --watch shows it and returns instead of refreshing.
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("--watch kept refreshing"))
    signal.alarm(20)
    try:
        watched = fleet(
            "rollout",
            "status",
            rollout.rollout_id,
            "--db",
            str(db),
            "--watch",
            "--interval",
            "0.01",
        )
    finally:
        signal.alarm(0)
    assert watched.exit_code == 0 and "rolled-back" in watched.stdout


# --- fleet rollout pause | resume | approve | abort -------------------------------------------


@pytest.mark.parametrize("action", ["pause", "resume", "approve", "abort"])
def test_an_operator_action_queues_a_request_for_the_service(
    db: Path, registry: FleetRegistry, bundle_id: str, action: str
) -> None:
    rollout = start_rollout(registry, bundle_id, [StageSize(count=1)], now=time.time())
    result = fleet(
        "rollout", action, rollout.rollout_id, "--db", str(db), "--reason", "night shift"
    )
    assert result.exit_code == 0, result.output
    assert f"{action} of {rollout.rollout_id} queued" in result.stderr
    (request,) = registry.pending_requests(rollout.rollout_id)
    assert (request.action, request.reason, request.actor) == (action, "night shift", "cli")
    assert registry.audit_log(rollout_id=rollout.rollout_id)[-1].action == f"{action}-requested"
    record = registry.rollout(rollout.rollout_id)
    assert record is not None and record.state == "running"  # the service acts, not the CLI
    as_json = fleet("rollout", action, rollout.rollout_id, "--db", str(db), "--json")
    assert json.loads(as_json.stdout) == {
        "rollout_id": rollout.rollout_id,
        "action": action,
        "request_id": request.request_id + 1,
    }


@pytest.mark.parametrize("action", ["pause", "resume", "approve", "abort"])
def test_an_operator_action_on_an_unknown_rollout_exits_2(
    db: Path, registry: FleetRegistry, action: str
) -> None:
    result = fleet("rollout", action, "ro-nothere", "--db", str(db))
    assert result.exit_code == 2, result.output
    assert "no rollout ro-nothere" in result.stderr
    assert registry.pending_requests() == []


@pytest.mark.parametrize("action", ["pause", "resume", "abort"])
def test_an_operator_action_on_an_ended_rollout_exits_2(
    db: Path, registry: FleetRegistry, bundle_id: str, action: str
) -> None:
    now = time.time()
    rollout = start_rollout(registry, bundle_id, [StageSize(count=1)], now=now)
    engine_step(registry, rollout, now, requests=(OperatorRequest(1, "abort"),))
    result = fleet("rollout", action, rollout.rollout_id, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert f"rollout {rollout.rollout_id} is aborted: nothing to {action}" in result.stderr
    assert registry.pending_requests() == []


# --- fleet rollback ---------------------------------------------------------------------------


def test_rollback_sends_previous_bundles_to_the_target_and_aborts_the_live_rollout(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    now = time.time()
    registry.record_status(status("pi-1", tags=("plant-3",), active=OLD, previous=OLDER), now)
    registry.record_status(status("pi-2", tags=("plant-3",), active=OLDER, previous=None), now)
    registry.record_status(status("pi-3", tags=("plant-4",), active=OLD, previous=OLDER), now)
    rollout = started(registry, bundle_id, now)  # reaches pi-1, the first by id
    assert set(rollout.devices) == {"pi-1"}
    result = fleet(
        *("rollback", "--db", str(db), "--target", "tag=plant-3"),
        *("--reason", "bad batch", "--json"),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"device_id": "pi-1", "active": OLD, "activate": OLDER},
        {"device_id": "pi-2", "active": OLDER, "activate": None, "note": "no previous bundle"},
    ]
    queued = [q for q in registry.unsent_commands() if q.command.kind == "activate"]
    assert [(q.device_id, q.command.bundle_id, q.reason) for q in queued] == [
        ("pi-1", OLDER, "bad batch")
    ]
    (abort,) = registry.pending_requests(rollout.rollout_id)
    assert (abort.action, abort.reason) == ("abort", "bad batch")
    actions = [(e.action, e.device_id, e.rollout_id) for e in registry.audit_log()]
    assert ("abort-requested", None, rollout.rollout_id) in actions
    assert ("rollback-sent", "pi-1", None) in actions
    assert all(e.device_id != "pi-3" for e in registry.audit_log())


def test_rollback_leaves_rollouts_that_do_not_reach_the_target_alone(
    db: Path, registry: FleetRegistry, bundle_id: str
) -> None:
    now = time.time()
    registry.record_status(status("pi-1", tags=("plant-4",), active=OLD, previous=OLDER), now)
    registry.record_status(status("pi-2", tags=("plant-3",), active=OLD, previous=OLDER), now)
    rollout = started(registry, bundle_id, now)  # reaches pi-1 only
    result = fleet("rollback", "--db", str(db), "--target", "tag=plant-3")
    assert result.exit_code == 0, result.output
    assert f"pi-2: {OLD} → {OLDER}" in result.stdout
    assert registry.pending_requests(rollout.rollout_id) == []


def test_rollback_without_a_target_exits_2(db: Path, registry: FleetRegistry) -> None:
    registry.record_status(status("pi-1", previous=OLDER), time.time())
    result = fleet("rollback", "--db", str(db))
    assert result.exit_code == 2, result.output
    assert "fleet rollback needs --target" in result.stderr
    assert registry.unsent_commands() == []


def test_rollback_of_a_target_without_devices_exits_2(db: Path, registry: FleetRegistry) -> None:
    registry.record_status(status("pi-1", previous=OLDER), time.time())
    result = fleet("rollback", "--db", str(db), "--target", "tag=nowhere")
    assert result.exit_code == 2, result.output
    assert "no device matches tag=nowhere" in result.stderr
    assert registry.unsent_commands() == []


# --- the installed entry point ----------------------------------------------------------------


def test_installed_entry_point_lists_bundles(db: Path, bundle_id: str) -> None:
    assert EDGEML.exists(), f"no edgeml script next to {sys.executable}"
    completed = subprocess.run(
        [str(EDGEML), "fleet", "bundles", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert [b["bundle_id"] for b in json.loads(completed.stdout)] == [bundle_id]


# --- trust push -------------------------------------------------------------------------------


def trust_document_file(folder: Path, key_dir: Path, other_key_dir: Path, signer: Path) -> Path:
    """Version 1 of a trust document naming both keys, rooted in ``key_dir``'s, signed by
    ``signer``'s private key."""
    from edgeml.toolkit.keys import load_private_key
    from edgeml.toolkit.trust import new_trust_document

    release, other = (
        load_public_key(key_dir / "edgeml.pub"),
        load_public_key(other_key_dir / "other.pub"),
    )
    document = new_trust_document([release, other], [release]).sign(load_private_key(signer))
    path = folder / "trust.json"
    path.write_bytes(document.to_bytes())
    return path


def test_trust_push_queues_a_trust_command_for_the_target_only(
    db: Path, registry: FleetRegistry, key_dir: Path, other_key_dir: Path, tmp_path: Path
) -> None:
    registry.record_status(status("pi-1", tags=("plant-3",)), 1.0)
    registry.record_status(status("pi-2"), 1.0)
    document = trust_document_file(tmp_path, key_dir, other_key_dir, key_dir / "edgeml.key")
    done = fleet(
        "trust", "push", str(document), "--db", str(db), "--target", "tag=plant-3", "--json"
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"devices": ["pi-1"]}
    queued = registry.unsent_commands()
    assert [(c.device_id, c.command.kind) for c in queued] == [("pi-1", "trust")]
    assert queued[0].command.trust_document == json.loads(document.read_text())
    assert [e.action for e in registry.audit_log()][-1] == "trust-pushed"


def test_trust_push_refuses_a_document_not_signed_by_its_own_root(
    db: Path, registry: FleetRegistry, key_dir: Path, other_key_dir: Path, tmp_path: Path
) -> None:
    registry.record_status(status("pi-1"), 1.0)
    document = trust_document_file(tmp_path, key_dir, other_key_dir, other_key_dir / "other.key")
    done = fleet("trust", "push", str(document), "--db", str(db))
    assert done.exit_code == 3, done.output
    assert "not signed by any of its own root keys" in done.stderr
    assert registry.unsent_commands() == []


def test_trust_push_without_a_matching_device_is_bad_usage(
    db: Path, registry: FleetRegistry, key_dir: Path, other_key_dir: Path, tmp_path: Path
) -> None:
    document = trust_document_file(tmp_path, key_dir, other_key_dir, key_dir / "edgeml.key")
    done = fleet("trust", "push", str(document), "--db", str(db), "--target", "tag=nowhere")
    assert done.exit_code == 2
    assert "no device matches tag=nowhere" in done.stderr
