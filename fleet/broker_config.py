"""The broker's access files for a fleet, as text: Mosquitto passwords, the ACL, the config.

Pure functions of data (no disk, no registry, no clock): :mod:`edgeml.fleet.enrollment` reads
the registry and writes what these return. Written against Mosquitto 2.0 and checked against
a real one (tests/fleet/test_broker_acl.py):

- **Passwords** use Mosquitto 2's own format, ``USER:$7$ITERATIONS$SALT$HASH``: PBKDF2 with
  HMAC-SHA512, a 12-byte random salt, a 64-byte digest, both standard base64 (what
  ``mosquitto_passwd`` writes). Passwords are generated here, 32 random bytes each, so key
  stretching is not what protects them; the iteration count only sets what each CONNECT
  costs the broker.
- **The ACL** grants each client only what its own ``user`` section lists; once an ACL file is
  given, Mosquitto denies everything else. A device (user name = device id) may write its own
  ``status``, ``telemetry`` and ``events`` and read its own ``commands`` and ``transfer``; it
  can never write commands or chunks, not even to itself. The fleet user reads every device's
  status, telemetry and events and writes every device's commands and transfer. Per-user
  sections rather than ``pattern ... %u`` lines, so that a revoked device has no rights at all
  once the broker re-reads the files, even while still connected or when it logs in with a
  client certificate instead of a password (``use_identity_as_username``).
- **The config** turns anonymous access off, names the two files, pins each client's id to its
  user name (``use_username_as_clientid``: no device can take over another's session or push
  it off the broker by reusing its client id), bounds packets to what the protocol allows,
  and sets TLS up when certificates are given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeml.toolkit.errors import InputError
from edgeml.toolkit.protocol import (
    DEVICE_PUBLISHES,
    FLEET_PUBLISHES,
    MAX_MESSAGE_BYTES,
    PREFIX,
    check_device_id,
)

__all__ = [
    "FLEET_USERNAME",
    "MAX_PACKET_BYTES",
    "PBKDF2_ITERATIONS",
    "ListenerSettings",
    "acl_text",
    "generate_password",
    "hash_password",
    "mosquitto_conf_text",
    "parse_listen",
    "password_file_text",
    "verify_password",
]

FLEET_USERNAME = "edgeml-fleet"
"""The fleet service's broker user; no device may be enrolled under this id."""

PBKDF2_ITERATIONS = 1000
"""PBKDF2 rounds per password: about a millisecond per CONNECT on the broker."""
SALT_BYTES = 12
"""Salt length, as ``mosquitto_passwd`` uses."""
PASSWORD_BYTES = 32
"""Random bytes per generated password (43 URL-safe characters)."""

MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + 4096
"""``max_packet_size``: the largest protocol message plus room for the topic and headers. A
client that sends a bigger packet is disconnected by the broker before anyone parses it."""

_HASH_ID = "7"  # Mosquitto's id for PBKDF2-SHA512


# ---------------------------------------------------------------------------- passwords


def generate_password() -> str:
    """A new broker password: 32 random bytes, URL-safe base64 (no ``:`` and no newline)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Hash a password the way Mosquitto 2 stores it in a password file.

    Args:
        password: the plain password.
        salt: 12 bytes; random when None (pass one only to reproduce a known hash).
        iterations: PBKDF2 rounds.

    Returns:
        ``$7$ITERATIONS$SALT_B64$HASH_B64``, the part after ``USER:`` in the file.

    Raises:
        InputError: an empty password, a salt of another length, or fewer than one round.
    """
    if not password:
        raise InputError("a broker password must not be empty")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if len(salt) != SALT_BYTES:
        raise InputError(f"a password salt has {SALT_BYTES} bytes, got {len(salt)}")
    if iterations < 1:
        raise InputError(f"PBKDF2 iterations must be at least 1, got {iterations}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    encode = base64.b64encode
    return f"${_HASH_ID}${iterations}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a hash :func:`hash_password` (or ``mosquitto_passwd``)
    wrote; False for a hash in any other format."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != _HASH_ID or not parts[2].isdigit():
        return False
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except (binascii.Error, ValueError):
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]))
    return hmac.compare_digest(digest, expected)


def _check_username(username: str) -> str:
    if username != FLEET_USERNAME:
        check_device_id(username)
    return username


def password_file_text(users: Iterable[tuple[str, str]]) -> str:
    """A Mosquitto password file: one ``USER:HASH`` line per user, sorted by user.

    Args:
        users: (user name, hash from :func:`hash_password`) pairs; user names are device ids
            or :data:`FLEET_USERNAME`.

    Raises:
        InputError: a user name is not a device id, a user is listed twice, or a hash is not
            in Mosquitto's PBKDF2 format.
    """
    seen: dict[str, str] = {}
    for username, hashed in users:
        _check_username(username)
        if username in seen:
            raise InputError(f"broker user {username!r} is listed twice")
        if not hashed.startswith(f"${_HASH_ID}$") or len(hashed.split("$")) != 5:
            raise InputError(f"broker user {username!r}: not a Mosquitto PBKDF2 password hash")
        seen[username] = hashed
    return "".join(f"{user}:{seen[user]}\n" for user in sorted(seen))


# ---------------------------------------------------------------------------------- ACL


def _device_topics(device_id: str) -> Iterable[tuple[str, str]]:
    """(access, topic) lines of one device: write its own reports, read its own orders."""
    for kind in DEVICE_PUBLISHES:
        yield "write", f"{PREFIX}/{device_id}/{kind}"
    for kind in FLEET_PUBLISHES:
        yield "read", f"{PREFIX}/{device_id}/{kind}"


def _fleet_topics() -> Iterable[tuple[str, str]]:
    """(access, topic) lines of the fleet: read every device's reports, write their orders."""
    for kind in DEVICE_PUBLISHES:
        yield "read", f"{PREFIX}/+/{kind}"
    for kind in FLEET_PUBLISHES:
        yield "write", f"{PREFIX}/+/{kind}"


def acl_text(device_ids: Iterable[str], fleet_username: str = FLEET_USERNAME) -> str:
    """A Mosquitto ACL file: the fleet's section, then one section per device, sorted.

    No ``topic`` line comes before the first ``user`` line (those would be anonymous
    clients' rights) and no ``pattern`` line is used (patterns apply to every user): a user
    without a section here, a revoked device for instance, may neither publish nor receive.

    Args:
        device_ids: the devices allowed on the broker (enrolled, not revoked).
        fleet_username: the fleet service's user.

    Raises:
        InputError: an id is not a valid device id, is listed twice, or is the fleet's user.
    """
    devices = sorted(check_device_id(d) for d in device_ids)
    if len(set(devices)) != len(devices):
        raise InputError("a device is listed twice in the ACL")
    if fleet_username in devices:
        raise InputError(f"{fleet_username!r} is the fleet's broker user, not a device")
    lines = [
        "# Mosquitto ACL for an edgeml fleet, written by `edgeml fleet broker-config`:",
        "# regenerate it rather than editing it. Default deny: a client may do only what its",
        "# own section grants; revoked devices have no section.",
        "",
        f"user {fleet_username}",
        *(f"topic {access} {topic}" for access, topic in _fleet_topics()),
    ]
    for device_id in devices:
        lines += ["", f"user {device_id}"]
        lines += [f"topic {access} {topic}" for access, topic in _device_topics(device_id)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- config


def parse_listen(text: str, *, tls: bool) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``PORT`` as (host, port).

    Args:
        text: what ``--listen`` said.
        tls: whether the listener uses TLS (a bare host gets port 8883, else 1883).

    Raises:
        InputError: the port is not 1-65535 or the host is empty or holds a space.
    """
    host, port_text = "0.0.0.0", text.strip()
    if not port_text.isdigit():
        host, sep, port_text = port_text.rpartition(":")
        if not sep:
            host, port_text = port_text, str(8883 if tls else 1883)
        host = host.strip("[]")
    if not host or any(c.isspace() for c in host):
        raise InputError(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8883")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"--listen {text!r}: the port must be 1-65535")
    return host, int(port_text)


@dataclass(frozen=True)
class ListenerSettings:
    """The broker's one listener: where it listens and how it does TLS.

    Attributes:
        host: the address to bind (``0.0.0.0``: every interface).
        port: the TCP port.
        ca_file: CA certificate(s) that clients' certificates are checked against (needed
            with ``require_certificate``).
        cert_file: the broker's certificate (PEM); with ``key_file`` it turns TLS on.
        key_file: the broker's private key (PEM).
        crl_file: a certificate revocation list for client certificates.
        require_certificate: clients must present a certificate signed by ``ca_file``.
        use_identity_as_username: take the user name from the client certificate's CN
            (Mosquitto then ignores the password file on this listener).

    Raises:
        InputError: (from the constructor) a certificate without its key or the other way
            round, or a client-certificate option without TLS or without a CA.
    """

    host: str = "0.0.0.0"
    port: int = 1883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    crl_file: Path | None = None
    require_certificate: bool = False
    use_identity_as_username: bool = False

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise InputError("TLS needs both --cert-file and --key-file (the broker's own)")
        if not self.tls and (
            self.require_certificate
            or self.use_identity_as_username
            or self.crl_file
            or self.ca_file
        ):
            raise InputError(
                "--ca-file, --crl-file, --require-certificate and --use-identity-as-username "
                "need TLS: give --cert-file and --key-file"
            )
        if self.require_certificate and self.ca_file is None:
            raise InputError("--require-certificate needs --ca-file to check clients against")
        if self.use_identity_as_username and not self.require_certificate:
            raise InputError("--use-identity-as-username needs --require-certificate")
        if not 0 < self.port < 65536:
            raise InputError(f"listener port must be 1-65535, got {self.port}")

    @property
    def tls(self) -> bool:
        """Whether the listener uses TLS."""
        return self.cert_file is not None

    @property
    def loopback(self) -> bool:
        """Whether only this host can reach the listener."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in "\n\r") or text != text.strip():
        raise InputError(
            f"path {text!r} cannot be written into mosquitto.conf: it holds a line break or "
            "blanks at an end"
        )
    return text


def mosquitto_conf_text(listener: ListenerSettings, password_file: Path, acl_file: Path) -> str:
    """``mosquitto.conf`` for the fleet: one listener, no anonymous access, passwords, ACL,
    client ids pinned to user names, packet size bounded, TLS when certificates are given.

    Args:
        listener: the listener and its TLS settings.
        password_file: where the broker reads the password file (absolute).
        acl_file: where the broker reads the ACL file (absolute).

    Returns:
        The file's text. Global options come first, then the ``listener`` line and the
        options that belong to it.

    Raises:
        InputError: a path holds a line break or leading/trailing blanks.
    """
    lines = [
        "# Mosquitto 2 configuration for an edgeml fleet, written by `edgeml fleet broker-config`.",
        "# Regenerate it rather than editing it. After a regeneration, SIGHUP the broker",
        "# (systemctl reload mosquitto): it re-reads the password and ACL files. Listener and",
        "# TLS changes need a restart. Persistence and logging are yours to add; the fleet",
        "# service keeps a durable session, which `persistence true` carries over restarts.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {_path(password_file)}",
        f"acl_file {_path(acl_file)}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "",
        f"listener {listener.port} {listener.host}",
        "use_username_as_clientid true",
    ]
    if listener.tls:
        assert listener.cert_file is not None and listener.key_file is not None
        if listener.ca_file is not None:
            lines.append(f"cafile {_path(listener.ca_file)}")
        lines += [
            f"certfile {_path(listener.cert_file)}",
            f"keyfile {_path(listener.key_file)}",
            "tls_version tlsv1.2",
        ]
        if listener.crl_file is not None:
            lines.append(f"crlfile {_path(listener.crl_file)}")
        if listener.require_certificate:
            lines.append("require_certificate true")
        if listener.use_identity_as_username:
            lines.append("use_identity_as_username true")
    return "\n".join(lines) + "\n"
