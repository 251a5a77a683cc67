"""Enrollment and broker files: the pure texts of ``edgeml.fleet.broker_config``, the registry's
enrollments, ``edgeml.fleet.enrollment`` on real files, and ``edgeml fleet enroll |
broker-config | revoke`` through the CLI.

What a real Mosquitto makes of the files is tested in tests/fleet/test_broker_acl.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from edgeml.agent.config import load_config
from edgeml.fleet.broker_config import (
    FLEET_USERNAME,
    MAX_PACKET_BYTES,
    ListenerSettings,
    acl_text,
    generate_password,
    hash_password,
    mosquitto_conf_text,
    parse_listen,
    password_file_text,
    verify_password,
)
from edgeml.fleet.enrollment import (
    agent_config_text,
    check_broker_url,
    enroll_device,
    revoke_device,
    write_broker_files,
)
from edgeml.fleet.records import EnrollmentRecord
from edgeml.fleet.registry import MIGRATION_SET, FleetRegistry
from edgeml.toolkit.cli import app
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.protocol import ProtocolError

runner = CliRunner()
EDGEML = Path(sys.executable).with_name("edgeml")
PROFILE = "raspberry-pi-4"
NOW = 1_700_000_000.0

# `mosquitto_passwd -b pw alice secret` (Mosquitto 2.0.11) wrote this line.
MOSQUITTO_PASSWD_LINE = (
    "alice:$7$101$98apcfHfCNIW4zMy$MYg16AcoMejerutKJ0qxDcjL27dws4q+U0L9iRaiRntLt7P4ZkXKhXh7O0L"
    "fqvTwVF2vaL8gxw0DxpoxmIzjFg=="
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[FleetRegistry]:
    with FleetRegistry.open(tmp_path / "fleet.db") as registry:
        yield registry


# ----------------------------------------------------------------------- passwords


def test_hash_matches_what_mosquitto_passwd_writes() -> None:
    _user, hashed = MOSQUITTO_PASSWD_LINE.split(":", 1)
    salt = base64.b64decode(hashed.split("$")[3])
    assert hash_password("secret", salt=salt, iterations=101) == hashed
    assert verify_password("secret", hashed)
    assert not verify_password("Secret", hashed)


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="no mosquitto_passwd")
def test_hashes_check_out_both_ways_with_the_installed_mosquitto_passwd(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(file), "bob", "hunter2"], check=True)
    user, hashed = file.read_text().strip().split(":", 1)
    assert user == "bob" and verify_password("hunter2", hashed)
    ours = hash_password("hunter2")
    assert ours.startswith("$7$1000$") and verify_password("hunter2", ours)


def test_generated_passwords_are_long_random_and_safe_in_files() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) >= 43
        assert not set(password) & set(":\n\r $#")


def test_each_hash_has_its_own_salt_and_bad_hashes_never_verify() -> None:
    first, second = hash_password("same"), hash_password("same")
    assert first != second and verify_password("same", first) and verify_password("same", second)
    for bad in ("", "plain", "$6$abc$def", "$7$x$AAAA$BBBB", "$7$10$not base64!$AAAA"):
        assert not verify_password("same", bad)
    with pytest.raises(InputError):
        hash_password("")
    with pytest.raises(InputError, match="12 bytes"):
        hash_password("x", salt=b"short")


def test_password_file_is_sorted_and_refuses_bad_entries() -> None:
    text = password_file_text([("pi-b", hash_password("b")), (FLEET_USERNAME, hash_password("f"))])
    assert [line.split(":")[0] for line in text.splitlines()] == [FLEET_USERNAME, "pi-b"]
    with pytest.raises(InputError, match="twice"):
        password_file_text([("pi-a", hash_password("a")), ("pi-a", hash_password("a"))])
    with pytest.raises(ProtocolError):
        password_file_text([("pi:a", hash_password("a"))])
    with pytest.raises(InputError, match="PBKDF2"):
        password_file_text([("pi-a", "plaintext")])


# ---------------------------------------------------------------------------- ACL


def test_acl_grants_each_device_only_its_own_topics() -> None:
    text = acl_text(["pi-b", "pi-a"])
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        f"user {FLEET_USERNAME}",
        "topic read edgeml/v1/devices/+/status",
        "topic read edgeml/v1/devices/+/telemetry",
        "topic read edgeml/v1/devices/+/events",
        "topic write edgeml/v1/devices/+/commands",
        "topic write edgeml/v1/devices/+/transfer",
        "user pi-a",
        "topic write edgeml/v1/devices/pi-a/status",
        "topic write edgeml/v1/devices/pi-a/telemetry",
        "topic write edgeml/v1/devices/pi-a/events",
        "topic read edgeml/v1/devices/pi-a/commands",
        "topic read edgeml/v1/devices/pi-a/transfer",
        "user pi-b",
        "topic write edgeml/v1/devices/pi-b/status",
        "topic write edgeml/v1/devices/pi-b/telemetry",
        "topic write edgeml/v1/devices/pi-b/events",
        "topic read edgeml/v1/devices/pi-b/commands",
        "topic read edgeml/v1/devices/pi-b/transfer",
    ]
    assert "pattern" not in text and "readwrite" not in text


def test_acl_with_no_devices_has_only_the_fleet_and_refuses_bad_ids() -> None:
    assert acl_text([]).count("user ") == 1
    with pytest.raises(InputError, match="fleet"):
        acl_text([FLEET_USERNAME])
    with pytest.raises(InputError, match="twice"):
        acl_text(["pi-a", "pi-a"])
    for bad in ("pi/a", "+", "#", "pi a", ""):
        with pytest.raises(ProtocolError):
            acl_text([bad])


# ------------------------------------------------------------------------- config


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0", tls=True) == ("0.0.0.0", 8883)
    assert parse_listen("0.0.0.0", tls=False) == ("0.0.0.0", 1883)
    assert parse_listen("1884", tls=False) == ("0.0.0.0", 1884)
    assert parse_listen("10.0.0.1:8884", tls=True) == ("10.0.0.1", 8884)
    assert parse_listen("[::]:8883", tls=True) == ("::", 8883)
    for bad in (":1883", "host:0", "host:70000", "host:x"):
        with pytest.raises(InputError, match="--listen"):
            parse_listen(bad, tls=False)


def test_plain_config_turns_anonymous_access_off_and_pins_client_ids() -> None:
    text = mosquitto_conf_text(ListenerSettings(), Path("/etc/m/passwords"), Path("/etc/m/acl"))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "per_listener_settings false",
        "allow_anonymous false",
        "password_file /etc/m/passwords",
        "acl_file /etc/m/acl",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "listener 1883 0.0.0.0",
        "use_username_as_clientid true",
    ]


def test_tls_config_names_the_certificates_and_client_certificate_options() -> None:
    listener = ListenerSettings(
        port=8883,
        ca_file=Path("/pki/ca.crt"),
        cert_file=Path("/pki/broker.crt"),
        key_file=Path("/pki/broker.key"),
        crl_file=Path("/pki/crl.pem"),
        require_certificate=True,
        use_identity_as_username=True,
    )
    text = mosquitto_conf_text(listener, Path("/p"), Path("/a"))
    listener_part = text.split("listener 8883 0.0.0.0\n", 1)[1].splitlines()
    assert listener_part == [
        "use_username_as_clientid true",
        "cafile /pki/ca.crt",
        "certfile /pki/broker.crt",
        "keyfile /pki/broker.key",
        "tls_version tlsv1.2",
        "crlfile /pki/crl.pem",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    with pytest.raises(InputError, match="line break"):
        mosquitto_conf_text(ListenerSettings(), Path("/p\nacl_file /x"), Path("/a"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cert_file": Path("c")}, "both --cert-file and --key-file"),
        ({"require_certificate": True}, "need TLS"),
        ({"ca_file": Path("ca")}, "need TLS"),
        ({"cert_file": Path("c"), "key_file": Path("k"), "require_certificate": True}, "--ca-file"),
        (
            {"cert_file": Path("c"), "key_file": Path("k"), "use_identity_as_username": True},
            "--require-certificate",
        ),
        ({"port": 0}, "1-65535"),
    ],
)
def test_listener_settings_refuse_incoherent_tls(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ListenerSettings(**options)


def test_broker_urls() -> None:
    assert check_broker_url("mqtts://broker.example:8883")
    for bad in ("http://x", "mqtt://", "mqtt://user:pw@host:1883", "mqtt://host:99999"):
        with pytest.raises(InputError, match="--broker"):
            check_broker_url(bad)


def test_agent_config_text_is_what_the_agent_loads(tmp_path: Path) -> None:
    (tmp_path / "trust").mkdir()
    (tmp_path / "broker-password").write_text("pw\n")
    os.chmod(tmp_path / "broker-password", 0o600)
    text = agent_config_text(
        "pi-0001", PROFILE, ["canary", 'plant "3"'], broker_url="mqtts://b.example:8883"
    )
    (tmp_path / "agent.toml").write_text(text)
    config = load_config(tmp_path / "agent.toml")
    assert (config.device_id, config.profile, config.tags) == (
        "pi-0001",
        PROFILE,
        ("canary", 'plant "3"'),
    )
    assert config.broker.username == "pi-0001" and config.broker.tls
    assert config.broker.password() == "pw"
    assert config.trust == (tmp_path / "trust").resolve()


# ---------------------------------------------------------------------- registry


def test_enrollments_are_a_named_migration_and_round_trip(registry: FleetRegistry) -> None:
    names = [
        row[0]
        for row in registry._database().execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]
        )
    ]
    assert "0002_create_enrollments" in names
    record = EnrollmentRecord("pi-a", "device", PROFILE, ("x",), hash_password("p"), NOW)
    registry.save_enrollment(record)
    assert registry.enrollment("pi-a") == record
    assert registry.revoke_enrollment("pi-a", NOW + 1, "lost")
    assert not registry.revoke_enrollment("pi-a", NOW + 2, "again")
    revoked = registry.enrollment("pi-a")
    assert revoked is not None and revoked.revoked_at == NOW + 1
    assert revoked.revoke_reason == "lost"
    assert registry.enrollments(include_revoked=False) == []
    assert "password_hash" not in revoked.to_dict() and revoked.to_dict()["revoked"]
    with pytest.raises(InputError, match="not enrolled"):
        registry.revoke_enrollment("pi-z", NOW)
    with pytest.raises(InputError, match="role"):
        registry.save_enrollment(EnrollmentRecord("x", "admin", None, (), "h", NOW))


def test_a_registry_from_before_enrollments_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    FleetRegistry.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE enrollments")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0002_create_enrollments'")
    with FleetRegistry.open(path) as registry:
        assert registry.enrollments() == []


# -------------------------------------------------------------------- enrollment


def test_enroll_writes_a_loadable_config_and_a_private_password(
    registry: FleetRegistry, tmp_path: Path
) -> None:
    old_umask = os.umask(0)  # the password file is 0600 however permissive the umask
    try:
        enrollment = enroll_device(
            registry, "pi-a", PROFILE, out=tmp_path / "pi-a", now=NOW, tags=["canary"]
        )
    finally:
        os.umask(old_umask)
    folder = tmp_path / "pi-a"
    assert mode(folder / "broker-password") == 0o600
    assert mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["agent.toml", "broker-password", "trust"]
    password = (folder / "broker-password").read_text().strip()
    config = load_config(enrollment.config_file)
    assert config.broker.password() == password
    assert config.tags == ("canary",) and config.broker.username == "pi-a"

    record = registry.enrollment("pi-a")
    assert record is not None and verify_password(password, record.password_hash)
    assert password not in json.dumps(enrollment.to_dict())
    registry.close()  # the plain password is nowhere in the database or its journal
    for file in tmp_path.glob("fleet.db*"):
        assert password.encode() not in file.read_bytes()
    assert [e.action for e in FleetRegistry.open(tmp_path / "fleet.db").audit_log()] == [
        "device-enrolled"
    ]


def test_enroll_copies_the_ca_and_names_it_in_the_config(
    registry: FleetRegistry, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    enrollment = enroll_device(
        registry,
        "pi-a",
        PROFILE,
        out=tmp_path / "out",
        now=NOW,
        broker_url="mqtts://broker:8883",
        ca_file=ca,
    )
    config = load_config(enrollment.config_file)
    assert config.broker.ca_file == (tmp_path / "out" / "ca.crt").resolve()
    assert config.broker.ca_file.read_text() == ca.read_text()
    (tmp_path / "junk").write_text("not a certificate")
    with pytest.raises(InputError, match="PEM"):
        enroll_device(
            registry, "pi-b", PROFILE, out=tmp_path / "b", now=NOW, ca_file=tmp_path / "junk"
        )


def test_enrolling_twice_is_refused_unless_rotating(
    registry: FleetRegistry, tmp_path: Path
) -> None:
    enroll_device(registry, "pi-a", PROFILE, out=tmp_path / "a", now=NOW)
    first = (tmp_path / "a" / "broker-password").read_text()
    with pytest.raises(InputError, match=r"already enrolled.*--rotate-credentials"):
        enroll_device(registry, "pi-a", PROFILE, out=tmp_path / "a", now=NOW + 1)
    assert (tmp_path / "a" / "broker-password").read_text() == first  # untouched

    rotated = enroll_device(registry, "pi-a", PROFILE, out=tmp_path / "a", now=NOW + 2, rotate=True)
    second = (tmp_path / "a" / "broker-password").read_text()
    assert rotated.rotated and second != first
    record = registry.enrollment("pi-a")
    assert record is not None and (record.enrolled_at, record.rotated_at) == (NOW, NOW + 2)
    assert verify_password(second.strip(), record.password_hash)
    assert not verify_password(first.strip(), record.password_hash)


def test_a_revoked_device_comes_back_only_with_new_credentials(
    registry: FleetRegistry, tmp_path: Path
) -> None:
    enroll_device(registry, "pi-a", PROFILE, out=tmp_path / "a", now=NOW)
    record, now = revoke_device(registry, "pi-a", now=NOW + 1, reason="stolen")
    assert now and record.revoked
    assert revoke_device(registry, "pi-a", now=NOW + 2)[1] is False
    with pytest.raises(InputError, match="was revoked"):
        enroll_device(registry, "pi-a", PROFILE, out=tmp_path / "a", now=NOW + 3)
    back = enroll_device(registry, "pi-a", PROFILE, out=tmp_path / "a", now=NOW + 4, rotate=True)
    assert back.reinstated and not back.record.revoked
    actions = [(e.action, e.reason) for e in registry.audit_log(device_id="pi-a")]
    assert actions[1] == ("device-revoked", "stolen") and actions[-1][0] == "device-reinstated"


def test_enroll_refuses_bad_input(registry: FleetRegistry, tmp_path: Path) -> None:
    out = tmp_path / "x"
    with pytest.raises(InputError, match="fleet service"):
        enroll_device(registry, FLEET_USERNAME, PROFILE, out=out, now=NOW)
    with pytest.raises(ProtocolError):
        enroll_device(registry, "pi/a", PROFILE, out=out, now=NOW)
    with pytest.raises(InputError, match="--profile"):
        enroll_device(registry, "pi-a", "", out=out, now=NOW)
    with pytest.raises(InputError, match="--tag"):
        enroll_device(registry, "pi-a", PROFILE, out=out, now=NOW, tags=[""])
    with pytest.raises(InputError, match="--broker"):
        enroll_device(registry, "pi-a", PROFILE, out=out, now=NOW, broker_url="tcp://h")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="not a folder"):
        enroll_device(registry, "pi-a", PROFILE, out=tmp_path / "file", now=NOW)
    assert registry.enrollments() == [] and not out.exists()


def test_revoking_an_unknown_device_or_the_fleet_is_refused(registry: FleetRegistry) -> None:
    with pytest.raises(InputError, match="not enrolled"):
        revoke_device(registry, "pi-z", now=NOW)
    with pytest.raises(InputError, match="rotate-fleet-password"):
        revoke_device(registry, FLEET_USERNAME, now=NOW)


# ------------------------------------------------------------------ broker files


def test_broker_files_admit_active_devices_and_create_the_fleet_once(
    registry: FleetRegistry, tmp_path: Path
) -> None:
    for device_id in ("pi-a", "pi-b", "pi-c"):
        enroll_device(registry, device_id, PROFILE, out=tmp_path / device_id, now=NOW)
    revoke_device(registry, "pi-b", now=NOW)
    out = tmp_path / "broker"
    files = write_broker_files(registry, out, ListenerSettings(), now=NOW)
    assert (files.devices, files.revoked) == (("pi-a", "pi-c"), ("pi-b",))
    assert files.fleet_password_file == out.resolve() / "fleet-password"
    assert mode(files.password_file) == mode(files.fleet_password_file) == 0o600
    users = [line.split(":")[0] for line in files.password_file.read_text().splitlines()]
    assert users == [FLEET_USERNAME, "pi-a", "pi-c"]
    assert "pi-b" not in files.acl_file.read_text()
    conf = files.config_file.read_text()
    assert f"password_file {files.password_file}" in conf and f"acl_file {files.acl_file}" in conf
    fleet_password = files.fleet_password_file.read_text().strip()
    fleet = registry.enrollment(FLEET_USERNAME)
    assert fleet is not None and verify_password(fleet_password, fleet.password_hash)
    assert sorted(p.name for p in out.iterdir()) == [
        "acl",
        "fleet-password",
        "mosquitto.conf",
        "passwords",
    ]  # no temporary files left

    again = write_broker_files(registry, out, ListenerSettings(), now=NOW + 1)
    assert again.fleet_password_file is None
    assert registry.enrollment(FLEET_USERNAME) == fleet
    rotated = write_broker_files(
        registry, out, ListenerSettings(), now=NOW + 2, rotate_fleet_password=True
    )
    assert rotated.fleet_password_file is not None
    assert rotated.fleet_password_file.read_text().strip() != fleet_password


def test_broker_files_need_existing_certificates(registry: FleetRegistry, tmp_path: Path) -> None:
    listener = ListenerSettings(cert_file=tmp_path / "missing.crt", key_file=tmp_path / "k")
    with pytest.raises(InputError, match=r"--cert-file .*no such file"):
        write_broker_files(registry, tmp_path / "out", listener, now=NOW)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_broker_files_can_be_given_to_the_brokers_user(
    registry: FleetRegistry, tmp_path: Path
) -> None:
    import pwd

    user = next((u for u in ("mosquitto", "nobody") if _has_user(u)), None)
    assert user is not None, "neither the mosquitto user (apt) nor nobody exists on this host"
    entry = pwd.getpwnam(user)
    files = write_broker_files(
        registry, tmp_path / "out", ListenerSettings(), now=NOW, broker_user=user
    )
    for path in (files.password_file, files.acl_file, files.config_file):
        assert (path.stat().st_uid, path.stat().st_gid) == (entry.pw_uid, entry.pw_gid)
    assert mode(files.password_file) == 0o600
    assert files.folder.stat().st_gid == entry.pw_gid and mode(files.folder) == 0o750
    assert files.fleet_password_file is not None
    assert files.fleet_password_file.stat().st_uid == os.geteuid()  # the fleet's, not the broker's
    with pytest.raises(InputError, match="no such user"):
        write_broker_files(
            registry, tmp_path / "out", ListenerSettings(), now=NOW, broker_user="no-such-user-x"
        )


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --------------------------------------------------------------------------- CLI


def fleet(*args: str) -> Result:
    return runner.invoke(app, ["fleet", *args])


def test_cli_enroll_writes_the_device_folder(tmp_path: Path) -> None:
    db, out = str(tmp_path / "fleet.db"), tmp_path / "pi-a"
    result = fleet(
        "enroll", "pi-a", "--profile", PROFILE, "--tag", "canary", "--tag", "plant-3",
        "--db", db, "--out", str(out), "--broker", "mqtts://broker.example:8883", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["device_id"] == "pi-a" and document["tags"] == ["canary", "plant-3"]
    assert not document["revoked"] and "password_hash" not in document
    assert mode(out / "broker-password") == 0o600
    password = (out / "broker-password").read_text().strip()
    assert password not in result.output
    config = load_config(out / "agent.toml")
    assert config.broker.url == "mqtts://broker.example:8883"
    assert 'password_file = "broker-password"' in (out / "agent.toml").read_text()


def test_cli_enroll_defaults_to_enrolled_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = fleet("enroll", "pi-a", "--profile", PROFILE, "--db", "fleet.db")
    assert result.exit_code == 0, result.output
    assert "not TLS" in result.stderr
    assert load_config(tmp_path / "enrolled" / "pi-a" / "agent.toml").device_id == "pi-a"


def test_cli_enroll_twice_exits_2_unless_rotating(tmp_path: Path) -> None:
    args = ("enroll", "pi-a", "--profile", PROFILE, "--db", str(tmp_path / "fleet.db"))
    args += ("--out", str(tmp_path / "pi-a"))
    assert fleet(*args).exit_code == 0
    twice = fleet(*args)
    assert twice.exit_code == 2
    assert "already enrolled" in twice.stderr and "--rotate-credentials" in twice.stderr
    rotated = fleet(*args, "--rotate-credentials")
    assert rotated.exit_code == 0 and "new password for pi-a" in rotated.stdout


def test_cli_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "fleet.db")
    unknown = fleet("revoke", "pi-z", "--db", db)
    assert unknown.exit_code == 2 and "pi-z is not enrolled" in unknown.stderr
    fleet("enroll", "pi-a", "--profile", PROFILE, "--db", db, "--out", str(tmp_path / "a"))
    revoked = fleet("revoke", "pi-a", "--db", db, "--reason", "stolen", "--json")
    assert revoked.exit_code == 0, revoked.output
    document = json.loads(revoked.stdout)
    assert document["revoked"] and document["revoked_now"]
    assert document["revoke_reason"] == "stolen"
    assert "broker-config" in revoked.stderr
    assert "already revoked" in fleet("revoke", "pi-a", "--db", db).stdout


def test_cli_broker_config_writes_the_files(tmp_path: Path) -> None:
    db, out = str(tmp_path / "fleet.db"), tmp_path / "broker"
    for device_id in ("pi-a", "pi-b"):
        fleet(
            "enroll",
            device_id,
            "--profile",
            PROFILE,
            "--db",
            db,
            "--out",
            str(tmp_path / device_id),
        )
    fleet("revoke", "pi-b", "--db", db)
    result = fleet("broker-config", "--db", db, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["devices"] == ["pi-a"] and document["revoked"] == ["pi-b"]
    assert document["fleet_username"] == FLEET_USERNAME
    assert document["listener"] == {
        "host": "0.0.0.0",
        "port": 1883,
        "tls": False,
        "require_certificate": False,
    }
    assert mode(out / "passwords") == mode(out / "fleet-password") == 0o600
    assert "kill -HUP" in result.stderr and "--password-file" in result.stderr
    assert "in clear" in result.stderr  # no TLS on every interface
    assert (out / "fleet-password").read_text().strip() not in result.output

    again = fleet("broker-config", "--db", db, "--out", str(tmp_path / "elsewhere"))
    assert again.exit_code == 0 and "--rotate-fleet-password" in again.stderr


def test_cli_broker_config_refuses_half_a_tls_setup(tmp_path: Path) -> None:
    cert = tmp_path / "broker.crt"
    cert.write_text("x")
    result = fleet(
        "broker-config", "--db", str(tmp_path / "fleet.db"), "--out", str(tmp_path / "o"),
        "--cert-file", str(cert),
    )  # fmt: skip
    assert result.exit_code == 2 and "--key-file" in result.stderr
    listen = fleet(
        "broker-config", "--db", str(tmp_path / "fleet.db"), "--out", str(tmp_path / "o"),
        "--listen", "host:99999",
    )  # fmt: skip
    assert listen.exit_code == 2 and "--listen" in listen.stderr


@pytest.mark.skipif(not EDGEML.exists(), reason="the edgeml entry point is not installed")
def test_installed_entry_point_revoke_unknown_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(EDGEML), "fleet", "revoke", "pi-z", "--db", str(tmp_path / "fleet.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not enrolled" in done.stderr
