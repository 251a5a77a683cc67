"""Broker access for a fleet: enroll devices, revoke them, write the broker's files.

- :func:`enroll_device` gives a device its broker account (user name = device id, a new random
  password whose hash goes into the registry) and writes the folder to copy onto the device:
  ``agent.toml``, ``broker-password`` (0600, the only copy of the plain password), an empty
  ``trust/`` to fill with release keys, and ``ca.crt`` when a CA is given.
- :func:`revoke_device` marks a device's account revoked (with an audit line); the next
  :func:`write_broker_files` leaves it out of the password file and the ACL, and a broker that
  re-reads them (SIGHUP) drops the device, connected or not.
- :func:`write_broker_files` writes ``mosquitto.conf``, ``passwords`` (0600) and ``acl`` from
  the registry, each atomically, and creates the fleet service's own account (``edgeml-fleet``)
  the first time, writing its password to ``fleet-password`` (0600).

The texts come from the pure functions of :mod:`edgeml.fleet.broker_config`; this module is the
shell that reads the registry and writes files. Plain passwords are never stored in the
registry, logged or returned: they go from the generator straight into a file created 0600.
The CLI (``edgeml fleet enroll | broker-config | revoke``) is a thin layer over this module.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgeml.fleet.broker_config import (
    FLEET_USERNAME,
    ListenerSettings,
    acl_text,
    generate_password,
    hash_password,
    mosquitto_conf_text,
    password_file_text,
)
from edgeml.fleet.records import EnrollmentRecord
from edgeml.fleet.registry import FleetRegistry
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.protocol import check_device_id

__all__ = [
    "BrokerFiles",
    "Enrollment",
    "agent_config_text",
    "check_broker_url",
    "enroll_device",
    "revoke_device",
    "write_broker_files",
]

CONFIG_FILE = "agent.toml"
PASSWORD_FILE = "broker-password"
CA_FILE = "ca.crt"
FLEET_PASSWORD_FILE = "fleet-password"
DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"
DEFAULT_TRUST = "trust"
DEFAULT_STATE_DIR = "/var/lib/edgeml"
DEFAULT_API_LISTEN = "127.0.0.1:8765"
MAX_TAGS = 64
MAX_CA_BYTES = 1024 * 1024


# ------------------------------------------------------------------------------- files


def _write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` atomically with a file created with ``mode`` from the start.

    The temporary file is opened with ``os.open(..., mode)`` (the umask can only take bits
    away) and, with ``owner``, given to that (uid, gid) before anything is written, so a
    secret is never readable by anyone else, not even for an instant; then fsync,
    ``os.replace`` and fsync of the folder.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                try:
                    os.fchown(handle.fileno(), *owner)
                except PermissionError:
                    raise InputError(
                        f"cannot give {path.name} to the broker's user (uid {owner[0]}): "
                        "run broker-config as root, or as that user without --broker-user"
                    ) from None
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _write_secret(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    _write_file(path, text.encode("utf-8"), 0o600, owner)


def _write_public(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    _write_file(path, text.encode("utf-8"), 0o644, owner)


def _make_folder(folder: Path, what: str, group: int | None = None) -> None:
    """Create ``folder`` (0700; 0750 with ``group``, for the broker's user to enter)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder} exists and is not a folder")
    if folder.is_dir():
        return
    try:
        folder.mkdir(parents=True, mode=0o700 if group is None else 0o750)
        if group is not None:
            os.chown(folder, -1, group)
    except OSError as error:
        raise InputError(f"cannot create {what} {folder}: {error.strerror}") from None


def _broker_owner(user: str | None) -> tuple[int, int] | None:
    """(uid, primary gid) of the user the broker runs as, or None."""
    if user is None:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise InputError(f"--broker-user {user!r}: no such user on this host") from None
    return entry.pw_uid, entry.pw_gid


# ------------------------------------------------------------------------ agent config


def check_broker_url(url: str) -> str:
    """A broker URL an agent can use: ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``.

    Raises:
        InputError: another scheme, no host, a bad port, or credentials inside the URL.
    """
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname or port == -1:
        raise InputError(f"--broker {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parsed.username or parsed.password:
        raise InputError(f"--broker {url!r} must not hold credentials")
    return url


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escaping, ASCII only, is valid TOML)."""
    return json.dumps(value)


def agent_config_text(
    device_id: str,
    profile: str,
    tags: Iterable[str] = (),
    *,
    broker_url: str = DEFAULT_BROKER_URL,
    trust: str = DEFAULT_TRUST,
    state_dir: str = DEFAULT_STATE_DIR,
    password_file: str = PASSWORD_FILE,
    ca_file: str | None = None,
    api_listen: str = DEFAULT_API_LISTEN,
) -> str:
    """The ``agent.toml`` of an enrolled device (the keys of DESIGN.md's agent config).

    Relative paths (``trust``, ``password_file``, ``ca_file``) are relative to the file
    itself, as the agent reads them, so the enrollment folder can be copied anywhere.

    Args:
        device_id: the device, which is also its broker user name.
        profile: its hardware profile.
        tags: its tags.
        broker_url: what the agent connects to.
        trust: a .pub file or a folder of them, as the agent will see it.
        state_dir: the agent's state folder on the device.
        password_file: the file holding the broker password.
        ca_file: the CA certificate the agent checks the broker against (mqtts), if any.
        api_listen: where the local API listens.
    """
    lines = [
        f"# edgeml agent configuration for {device_id}, written by `edgeml fleet enroll`.",
        f"device_id = {_toml_string(device_id)}",
        f"profile = {_toml_string(profile)}",
        f"tags = [{', '.join(_toml_string(t) for t in tags)}]",
        f"state_dir = {_toml_string(state_dir)}",
        f"trust = {_toml_string(trust)}",
        "",
        "[broker]",
        f"url = {_toml_string(broker_url)}",
        f"username = {_toml_string(device_id)}",
        f"password_file = {_toml_string(password_file)}",
    ]
    if ca_file is not None:
        lines.append(f"ca_file = {_toml_string(ca_file)}")
    lines += ["", "[api]", f"listen = {_toml_string(api_listen)}"]
    return "\n".join(lines) + "\n"


def _check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise InputError(f"--tag: at most {MAX_TAGS} tags, got {len(unique)}")
    for tag in unique:
        if not tag or len(tag) > 64 or tag != tag.strip():
            raise InputError(f"--tag {tag!r}: 1-64 characters, no leading or trailing blanks")
    return unique


def _read_ca(ca_file: Path) -> bytes:
    try:
        data = ca_file.read_bytes()
    except OSError as error:
        raise InputError(f"--ca-file {ca_file}: {error.strerror}") from None
    if len(data) > MAX_CA_BYTES or b"-----BEGIN CERTIFICATE-----" not in data:
        raise InputError(f"--ca-file {ca_file}: not a PEM certificate")
    return data


# ---------------------------------------------------------------------------- enroll


@dataclass(frozen=True)
class Enrollment:
    """What :func:`enroll_device` did.

    Attributes:
        record: the device's account as stored (hash only).
        folder: the folder to copy onto the device.
        config_file: its ``agent.toml``.
        password_file: its ``broker-password`` (0600).
        rotated: an existing account got a new password.
        reinstated: a revoked account was given access again (with a new password).
    """

    record: EnrollmentRecord
    folder: Path
    config_file: Path
    password_file: Path
    rotated: bool = False
    reinstated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (``fleet enroll --json``); never the password."""
        return {
            **self.record.to_dict(),
            "device_id": self.record.device_id,
            "folder": str(self.folder),
            "config_file": str(self.config_file),
            "password_file": str(self.password_file),
            "rotated": self.rotated,
            "reinstated": self.reinstated,
        }


def enroll_device(
    registry: FleetRegistry,
    device_id: str,
    profile: str,
    *,
    out: Path,
    now: float,
    tags: Iterable[str] = (),
    broker_url: str = DEFAULT_BROKER_URL,
    trust: str = DEFAULT_TRUST,
    ca_file: Path | None = None,
    state_dir: str = DEFAULT_STATE_DIR,
    api_listen: str = DEFAULT_API_LISTEN,
    rotate: bool = False,
    actor: str = "cli",
) -> Enrollment:
    """Give a device its broker account and write its agent folder.

    The registry row, the audit line and the files are one unit: the files are written inside
    the registry transaction, so a failure to write them stores nothing.

    Args:
        registry: the fleet registry.
        device_id: the device; its broker user name.
        profile: its hardware profile.
        out: the folder to write (created 0700 if missing).
        now: the fleet's clock.
        tags: its tags.
        broker_url: what the agent will connect to.
        trust: what the agent trusts (a path on the device; relative to ``agent.toml``). A
            relative path inside ``out`` is created as an empty folder, to fill with keys.
        ca_file: a CA certificate to copy into the folder (``ca.crt``) and name in the config.
        state_dir: the agent's state folder on the device.
        api_listen: where the agent's local API listens.
        rotate: replace the password of a device already enrolled (the old one stops working
            once the broker files are regenerated and reloaded); on a revoked device, enroll it
            again with a new password.
        actor: who, for the audit log.

    Returns:
        What was written; the password itself only ever lands in ``broker-password``.

    Raises:
        InputError: an invalid id, the fleet's own user name, an empty profile, bad tags, a bad
            broker URL, an unreadable CA file, a folder that cannot be written, or a device
            already enrolled (or revoked) without ``rotate``.
    """
    check_device_id(device_id)
    if device_id == FLEET_USERNAME:
        raise InputError(f"{FLEET_USERNAME!r} is the fleet service's broker user, not a device id")
    if not profile or profile != profile.strip():
        raise InputError(f"--profile {profile!r}: a non-empty hardware profile name")
    tags = _check_tags(tags)
    check_broker_url(broker_url)
    if not trust or "\n" in trust or "\n" in state_dir or not state_dir:
        raise InputError("--trust and --state-dir must be non-empty single-line paths")
    ca_bytes = None if ca_file is None else _read_ca(ca_file)

    password = generate_password()
    record = EnrollmentRecord(
        username=device_id,
        role="device",
        profile=profile,
        tags=tags,
        password_hash=hash_password(password),
        enrolled_at=now,
    )
    config = agent_config_text(
        device_id,
        profile,
        tags,
        broker_url=broker_url,
        trust=trust,
        state_dir=state_dir,
        ca_file=None if ca_bytes is None else CA_FILE,
        api_listen=api_listen,
    )
    folder = Path(out)
    with registry.transaction():
        existing = registry.enrollment(device_id)
        rotated = reinstated = False
        if existing is not None:
            if existing.role != "device":
                raise InputError(f"{device_id!r} is a broker account of the {existing.role}")
            if not rotate:
                state = "was revoked" if existing.revoked else "is already enrolled"
                raise InputError(
                    f"device {device_id} {state} in {registry.path}; --rotate-credentials "
                    "gives it a new password (the old one stops working at the next "
                    "broker-config and broker reload)"
                )
            rotated, reinstated = not existing.revoked, existing.revoked
            record = replace(record, enrolled_at=existing.enrolled_at, rotated_at=now)
        registry.save_enrollment(record)
        action = (
            "device-reinstated"
            if reinstated
            else "credentials-rotated"
            if rotated
            else "device-enrolled"
        )
        registry.audit(
            now,
            action,
            f"broker account for {device_id} ({profile})",
            actor=actor,
            device_id=device_id,
            details={"profile": profile, "tags": list(tags), "broker": broker_url},
        )
        _make_folder(folder, "enrollment folder")
        try:
            _write_secret(folder / PASSWORD_FILE, password + "\n")
            if ca_bytes is not None:
                _write_file(folder / CA_FILE, ca_bytes, 0o644)
            trust_path = Path(trust)
            if not trust_path.is_absolute():
                target = (folder / trust_path).resolve()
                if target.is_relative_to(folder.resolve()):
                    target.mkdir(parents=True, exist_ok=True)
            _write_public(folder / CONFIG_FILE, config)
        except OSError as error:
            raise InputError(f"cannot write the enrollment folder {folder}: {error}") from None
    return Enrollment(
        record, folder, folder / CONFIG_FILE, folder / PASSWORD_FILE, rotated, reinstated
    )


# ---------------------------------------------------------------------------- revoke


def revoke_device(
    registry: FleetRegistry, device_id: str, *, now: float, reason: str = "", actor: str = "cli"
) -> tuple[EnrollmentRecord, bool]:
    """Revoke a device's broker access.

    The broker keeps admitting the device until :func:`write_broker_files` has run and the
    broker re-read its files (SIGHUP): then it refuses the device's logins and disconnects it
    if connected.

    Returns:
        The device's account and whether it was revoked now (False: it was already revoked,
        and keeps its first revocation time and reason).

    Raises:
        InputError: the device is not enrolled, or the id is the fleet's own account.
    """
    if device_id == FLEET_USERNAME:
        raise InputError(
            f"{FLEET_USERNAME!r} is the fleet service's account: replace its password with "
            "broker-config --rotate-fleet-password"
        )
    with registry.transaction():
        existing = registry.enrollment(device_id)
        if existing is None or existing.role != "device":
            raise InputError(f"device {device_id} is not enrolled in {registry.path}")
        revoked = registry.revoke_enrollment(device_id, now, reason)
        if revoked:
            registry.audit(
                now,
                "device-revoked",
                reason or "revoked by an operator",
                actor=actor,
                device_id=device_id,
            )
        record = registry.enrollment(device_id)
    assert record is not None
    return record, revoked


# ---------------------------------------------------------------------- broker files


@dataclass(frozen=True)
class BrokerFiles:
    """What :func:`write_broker_files` wrote.

    Attributes:
        folder: the output folder.
        config_file: ``mosquitto.conf``.
        password_file: ``passwords`` (0600).
        acl_file: ``acl``.
        listener: the listener settings written.
        devices: the devices the broker admits, sorted.
        revoked: the revoked devices left out, sorted.
        fleet_password_file: ``fleet-password`` when the fleet's password was created (or
            rotated) by this run; None when it exists from an earlier run.
    """

    folder: Path
    config_file: Path
    password_file: Path
    acl_file: Path
    listener: ListenerSettings
    devices: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    fleet_password_file: Path | None = None
    fleet_username: str = field(default=FLEET_USERNAME)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (``fleet broker-config --json``)."""
        return {
            "folder": str(self.folder),
            "config_file": str(self.config_file),
            "password_file": str(self.password_file),
            "acl_file": str(self.acl_file),
            "fleet_username": self.fleet_username,
            "fleet_password_file": None
            if self.fleet_password_file is None
            else str(self.fleet_password_file),
            "devices": list(self.devices),
            "revoked": list(self.revoked),
            "listener": {
                "host": self.listener.host,
                "port": self.listener.port,
                "tls": self.listener.tls,
                "require_certificate": self.listener.require_certificate,
            },
        }


def _absolute(path: Path | None, option: str) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    return path.resolve()


def write_broker_files(
    registry: FleetRegistry,
    out: Path,
    listener: ListenerSettings,
    *,
    now: float,
    rotate_fleet_password: bool = False,
    broker_user: str | None = None,
    actor: str = "cli",
) -> BrokerFiles:
    """Write the broker's configuration, password file and ACL from the registry.

    The fleet service's account is created the first time (its password written to
    ``fleet-password``, 0600, and only its hash kept), or replaced with
    ``rotate_fleet_password``. Every file is written atomically; the config last.

    Args:
        registry: the fleet registry.
        out: the output folder (created 0700 if missing).
        listener: the listener and TLS settings; certificate paths must exist and are written
            as absolute paths.
        now: the fleet's clock.
        rotate_fleet_password: give the fleet service a new password.
        broker_user: the user the broker runs as (Debian's Mosquitto: ``mosquitto``):
            ``passwords``, ``acl`` and ``mosquitto.conf`` are given to it as they are created
            (the password file stays 0600), and a folder created here gets its group (0750).
            Needs root. Without it, the files belong to whoever runs this.
        actor: who, for the audit log.

    Returns:
        What was written.

    Raises:
        InputError: a certificate file is missing, the broker user is unknown or cannot be
            given the files, or the folder cannot be written.
    """
    listener = replace(
        listener,
        ca_file=_absolute(listener.ca_file, "--ca-file"),
        cert_file=_absolute(listener.cert_file, "--cert-file"),
        key_file=_absolute(listener.key_file, "--key-file"),
        crl_file=_absolute(listener.crl_file, "--crl-file"),
    )
    owner = _broker_owner(broker_user)
    folder = Path(out)
    _make_folder(folder, "broker folder", None if owner is None else owner[1])
    folder = folder.resolve()
    passwords, acl = folder / "passwords", folder / "acl"
    fleet_password_file = None
    try:
        with registry.transaction():
            fleet = registry.enrollment(FLEET_USERNAME)
            if fleet is None or rotate_fleet_password:
                password = generate_password()
                fleet = EnrollmentRecord(
                    username=FLEET_USERNAME,
                    role="fleet",
                    profile=None,
                    tags=(),
                    password_hash=hash_password(password),
                    enrolled_at=now if fleet is None else fleet.enrolled_at,
                    rotated_at=None if fleet is None else now,
                )
                registry.save_enrollment(fleet)
                registry.audit(
                    now,
                    "fleet-credentials-rotated" if fleet.rotated_at else "fleet-enrolled",
                    f"broker account for the fleet service ({FLEET_USERNAME})",
                    actor=actor,
                )
                fleet_password_file = folder / FLEET_PASSWORD_FILE
                _write_secret(fleet_password_file, password + "\n")
            accounts = registry.enrollments("device")
            active = [a for a in accounts if not a.revoked]
            _write_secret(
                passwords,
                password_file_text(
                    [(fleet.username, fleet.password_hash)]
                    + [(a.username, a.password_hash) for a in active]
                ),
                owner,
            )
            _write_public(acl, acl_text([a.device_id for a in active]), owner)
            _write_public(
                folder / "mosquitto.conf", mosquitto_conf_text(listener, passwords, acl), owner
            )
            registry.audit(
                now,
                "broker-config-written",
                f"{len(active)} device(s) admitted, {len(accounts) - len(active)} revoked left out",
                actor=actor,
                details={"folder": str(folder), "devices": len(active)},
            )
    except OSError as error:
        raise InputError(f"cannot write the broker files in {folder}: {error}") from None
    return BrokerFiles(
        folder=folder,
        config_file=folder / "mosquitto.conf",
        password_file=passwords,
        acl_file=acl,
        listener=listener,
        devices=tuple(a.device_id for a in active),
        revoked=tuple(a.device_id for a in accounts if a.revoked),
        fleet_password_file=fleet_password_file,
    )
