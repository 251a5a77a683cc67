"""The broker files of ``edgeml fleet broker-config`` in a real Mosquitto: passwords, ACL, TLS,
revocation.

Devices are enrolled and the files written through :mod:`edgeml.fleet.enrollment`, exactly as
the CLI does; a real Mosquitto runs the generated configuration (all of it but the listener
line: tests/broker.py writes its own listener on a free loopback port, and the generated
listener options then apply to it); raw paho clients play devices (honest and hostile) and
the fleet service. Every "never delivered" is shown with a barrier, not a sleep: a message that
*is* allowed is sent after the forbidden ones, through the same broker, and once it arrived
the forbidden ones would have arrived before it.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import waiting
from broker import MosquittoBroker

from edgeml.fleet.broker_config import FLEET_USERNAME, ListenerSettings
from edgeml.fleet.enrollment import (
    FLEET_PASSWORD_FILE,
    BrokerFiles,
    enroll_device,
    revoke_device,
    write_broker_files,
)
from edgeml.fleet.registry import FleetRegistry

PREFIX = "edgeml/v1/devices"
DEVICE_REPORTS = ("status", "telemetry", "events")
FLEET_ORDERS = ("commands", "transfer")
PROFILE_NAME = "raspberry-pi-4"


wait_for = functools.partial(waiting.wait_for, timeout=5.0, interval=0.01)


class Peer:
    """A raw paho client (MQTT 3.1.1): records its CONNACK, disconnects and messages."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        will_topic: str | None = None,
        will_payload: bytes = b"offline",
    ) -> None:
        self.connack: Any = None
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeml-{username}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(
                ca_certs=str(ca_file),
                certfile=None if cert_file is None else str(cert_file),
                keyfile=None if key_file is None else str(key_file),
            )
        if will_topic is not None:
            self.client.will_set(will_topic, will_payload, qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=30, max_delay=60)  # no retry during a test
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def wait_connack(self) -> Any:
        """The broker's answer to CONNECT."""
        return wait_for(lambda: self.connack, "a CONNACK")

    @property
    def accepted(self) -> bool:
        return not self.wait_connack().is_failure

    def subscribe(self, *topics: str) -> None:
        self._subscribed.clear()
        self.client.subscribe([(topic, 1) for topic in topics])
        wait_for(self._subscribed.is_set, f"SUBACK for {topics}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK (sent for denied messages too)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), f"no PUBACK for {topic}"

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def wait_message(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Wait until (topic, payload) arrived; every message received so far."""
        wait_for(lambda: (topic, payload) in self.received(), f"{payload!r} on {topic}")
        return self.received()

    def vanish(self) -> None:
        """Drop the connection without DISCONNECT, as a device losing power: the broker
        sends the last will."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def not_authorized(peer: Peer) -> bool:
    reason = peer.wait_connack()
    return reason.is_failure and str(reason) == "Not authorized"


def generated_broker_config(files: BrokerFiles) -> str:
    """The generated mosquitto.conf without its listener line (tests/broker.py writes one).

    Run as root (a container), Mosquitto would drop to its ``mosquitto`` user, which cannot
    enter pytest's private temporary folders: there it stays root (``user root``). A real
    deployment gives the files to the broker's user instead (``--broker-user``).
    """
    lines = files.config_file.read_text().splitlines()
    assert sum(line.startswith("listener ") for line in lines) == 1
    kept = [line for line in lines if not line.startswith("listener ")]
    if os.geteuid() == 0:
        kept.append("user root")
    return "\n".join(kept) + "\n"


@dataclass
class Site:
    """A registry with enrolled devices, the broker files, and a Mosquitto running them."""

    tmp: Path
    registry: FleetRegistry
    files: BrokerFiles
    broker: MosquittoBroker
    listener: ListenerSettings
    peers: list[Peer]

    def password(self, device_id: str) -> str:
        return (self.tmp / "enrolled" / device_id / "broker-password").read_text().strip()

    @property
    def fleet_password(self) -> str:
        return (self.files.folder / FLEET_PASSWORD_FILE).read_text().strip()

    def peer(self, username: str | None, password: str | None = None, **options: Any) -> Peer:
        if password is None and username is not None:
            password = (
                self.fleet_password if username == FLEET_USERNAME else self.password(username)
            )
        peer = Peer(self.broker.port, username, password, **options)
        self.peers.append(peer)
        return peer

    def device(self, device_id: str, **options: Any) -> Peer:
        """A device connected with its own credentials."""
        peer = self.peer(device_id, **options)
        assert peer.accepted, f"{device_id} was refused: {peer.connack}"
        return peer

    def fleet(self) -> Peer:
        """The fleet service's client, subscribed to every device's reports."""
        peer = self.peer(FLEET_USERNAME)
        assert peer.accepted, f"the fleet was refused: {peer.connack}"
        peer.subscribe(*(f"{PREFIX}/+/{kind}" for kind in DEVICE_REPORTS))
        return peer

    def regenerate_and_reload(self, reloaded: Callable[[], bool] | None = None) -> None:
        """``fleet broker-config`` again, then SIGHUP: Mosquitto re-reads passwords and ACL.

        Returns once ``reloaded()`` holds. By default: a probe device gets a new password with
        each regeneration, and the broker accepts it only after re-reading the files.
        """
        probe = enroll_device(
            self.registry,
            "probe",
            PROFILE_NAME,
            out=self.tmp / "enrolled" / "probe",
            now=time.time(),
            rotate=True,
        )
        password = probe.password_file.read_text().strip()
        self.files = write_broker_files(
            self.registry, self.files.folder, self.listener, now=time.time()
        )
        assert self.broker.process is not None
        self.broker.process.send_signal(signal.SIGHUP)

        def new_password_accepted() -> bool:
            peer = Peer(
                self.broker.port,
                "probe",
                password,
                client_id="probe",
                ca_file=self.listener.ca_file if self.listener.tls else None,
            )
            try:
                return not peer.wait_connack().is_failure
            finally:
                peer.close()

        wait_for(reloaded or new_password_accepted, "the broker to reload its files")


def make_site(tmp: Path, listener: ListenerSettings, devices: tuple[str, ...]) -> Site:
    registry = FleetRegistry.open(tmp / "fleet.db")
    for device_id in devices:
        enroll_device(
            registry,
            device_id,
            "raspberry-pi-4",
            out=tmp / "enrolled" / device_id,
            now=time.time(),
        )
    files = write_broker_files(registry, tmp / "broker-files", listener, now=time.time())
    broker = MosquittoBroker(tmp / "broker", extra_config=generated_broker_config(files))
    broker.start()
    return Site(tmp, registry, files, broker, listener, [])


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """Devices pi-a and pi-b enrolled, a broker running the generated plain-TCP config."""
    site = make_site(tmp_path, ListenerSettings(host="127.0.0.1"), ("pi-a", "pi-b"))
    yield site
    for peer in site.peers:
        peer.close()
    site.broker.stop()
    site.registry.close()


# ------------------------------------------------------------------------ passwords


def test_enrolled_devices_and_the_fleet_log_in_with_their_generated_passwords(site: Site) -> None:
    assert site.peer("pi-a").accepted
    assert site.peer("pi-b").accepted
    assert site.peer(FLEET_USERNAME).accepted


def test_a_wrong_password_an_unknown_user_and_anonymous_clients_are_refused(site: Site) -> None:
    assert not_authorized(site.peer("pi-a", "not-the-password"))
    assert not_authorized(site.peer("pi-a", site.password("pi-b"), client_id="x"))
    assert not_authorized(site.peer("pi-c", site.password("pi-a")))
    assert not_authorized(site.peer(None, client_id="anonymous"))


# ------------------------------------------------------------------------------ ACL


def test_a_device_cannot_publish_as_another_device(site: Site) -> None:
    fleet = site.fleet()
    a = site.device("pi-a")
    for kind in DEVICE_REPORTS:
        a.publish(f"{PREFIX}/pi-b/{kind}", b"forged by pi-a", retain=kind == "status")
    for kind in DEVICE_REPORTS:  # the barrier: pi-a's own reports do reach the fleet
        a.publish(f"{PREFIX}/pi-a/{kind}", f"own {kind}".encode())
    received = fleet.wait_message(f"{PREFIX}/pi-a/events", b"own events")
    assert received == [
        (f"{PREFIX}/pi-a/{kind}", f"own {kind}".encode()) for kind in DEVICE_REPORTS
    ]

    # Nor was a forged status retained for a later subscriber (the fleet after a restart).
    late = site.peer(FLEET_USERNAME, client_id="ignored")  # takes over the fleet's client id
    assert late.accepted
    late.subscribe(f"{PREFIX}/+/status")
    a.publish(f"{PREFIX}/pi-a/status", b"barrier")
    assert late.wait_message(f"{PREFIX}/pi-a/status", b"barrier") == [
        (f"{PREFIX}/pi-a/status", b"barrier")
    ]


def test_a_device_cannot_send_commands_or_chunks_to_others_or_to_itself(site: Site) -> None:
    fleet = site.fleet()
    a, b = site.device("pi-a"), site.device("pi-b")
    for peer, device_id in ((a, "pi-a"), (b, "pi-b")):
        peer.subscribe(*(f"{PREFIX}/{device_id}/{kind}" for kind in FLEET_ORDERS))
    for target in ("pi-b", "pi-a"):
        for kind in FLEET_ORDERS:
            a.publish(f"{PREFIX}/{target}/{kind}", b"forged command")

    for device_id in ("pi-a", "pi-b"):  # the barrier: the fleet's own orders do arrive
        for kind in FLEET_ORDERS:
            fleet.publish(f"{PREFIX}/{device_id}/{kind}", b"from the fleet")
    for peer, device_id in ((a, "pi-a"), (b, "pi-b")):
        received = peer.wait_message(f"{PREFIX}/{device_id}/transfer", b"from the fleet")
        assert received == [
            (f"{PREFIX}/{device_id}/{kind}", b"from the fleet") for kind in FLEET_ORDERS
        ]


def test_a_device_cannot_read_another_devices_orders_or_reports(site: Site) -> None:
    fleet = site.fleet()
    a, b = site.device("pi-a"), site.device("pi-b")
    a.subscribe(
        f"{PREFIX}/pi-b/commands",
        f"{PREFIX}/pi-b/transfer",
        f"{PREFIX}/+/status",
        f"{PREFIX}/pi-a/commands",
        "#",
    )
    fleet.publish(f"{PREFIX}/pi-b/commands", b"for pi-b only")
    fleet.publish(f"{PREFIX}/pi-b/transfer", b"pi-b's chunk")
    b.publish(f"{PREFIX}/pi-b/status", b"pi-b is online", retain=True)
    fleet.publish(f"{PREFIX}/pi-a/commands", b"for pi-a")  # the barrier
    assert a.wait_message(f"{PREFIX}/pi-a/commands", b"for pi-a") == [
        (f"{PREFIX}/pi-a/commands", b"for pi-a")
    ]


def test_the_fleet_cannot_impersonate_a_device_either(site: Site) -> None:
    fleet = site.fleet()
    a = site.device("pi-a")
    fleet.publish(f"{PREFIX}/pi-a/status", b"forged by the fleet")
    a.publish(f"{PREFIX}/pi-a/status", b"barrier")
    assert fleet.wait_message(f"{PREFIX}/pi-a/status", b"barrier") == [
        (f"{PREFIX}/pi-a/status", b"barrier")
    ]


def test_a_device_cannot_push_another_off_by_reusing_its_client_id(site: Site) -> None:
    fleet = site.fleet()
    b = site.device("pi-b")  # client id edgeml-pi-b, as the agent names itself
    b.subscribe(f"{PREFIX}/pi-b/commands")
    intruder = site.device("pi-a", client_id="edgeml-pi-b")  # the broker renames it pi-a
    intruder.subscribe(f"{PREFIX}/pi-b/commands")
    fleet.publish(f"{PREFIX}/pi-b/commands", b"install")
    assert b.wait_message(f"{PREFIX}/pi-b/commands", b"install")
    assert not b.disconnected.is_set()
    assert intruder.received() == []


def test_a_device_cannot_plant_its_last_will_on_another_devices_status(site: Site) -> None:
    fleet = site.fleet()
    hostile = site.peer(  # accepted, but its will is never delivered
        "pi-a", will_topic=f"{PREFIX}/pi-b/status", will_payload=b"forged offline"
    )
    assert hostile.accepted
    honest = site.device("pi-b", will_topic=f"{PREFIX}/pi-b/status")
    hostile.vanish()
    # Once pi-a logs in again, the broker has done with the vanished connection and its will.
    assert site.peer("pi-a", client_id="again").accepted
    honest.vanish()  # the barrier: pi-b's own last will reaches the fleet
    assert fleet.wait_message(f"{PREFIX}/pi-b/status", b"offline") == [
        (f"{PREFIX}/pi-b/status", b"offline")
    ]


# ------------------------------------------------------------------ revocation, rotation


def test_a_revoked_device_is_disconnected_and_refused_after_the_reload(site: Site) -> None:
    fleet = site.fleet()
    a, b = site.device("pi-a"), site.device("pi-b")
    revoke_device(site.registry, "pi-a", now=time.time(), reason="stolen")
    assert "pi-a:" in site.files.password_file.read_text()  # nothing changes until...
    site.regenerate_and_reload()
    assert site.files.revoked == ("pi-a",)
    assert "pi-a" not in site.files.password_file.read_text()
    assert "pi-a" not in site.files.acl_file.read_text()

    assert a.disconnected.wait(5), "the connected revoked device was not dropped"
    assert not_authorized(site.peer("pi-a", client_id="again"))
    b.publish(f"{PREFIX}/pi-b/telemetry", b"still here")
    assert fleet.wait_message(f"{PREFIX}/pi-b/telemetry", b"still here")


def test_rotated_credentials_replace_the_old_password_at_the_reload(site: Site) -> None:
    old = site.password("pi-a")
    enroll_device(
        site.registry,
        "pi-a",
        "raspberry-pi-4",
        out=site.tmp / "enrolled" / "pi-a",
        now=time.time(),
        rotate=True,
    )
    new = site.password("pi-a")
    assert new != old
    site.regenerate_and_reload()
    assert not_authorized(site.peer("pi-a", old, client_id="old"))
    assert site.peer("pi-a", new).accepted


# ------------------------------------------------------------------------------- TLS


class Pki:
    """A throwaway CA (EC P-256) that issues server and client certificates into ``folder``."""

    def __init__(self, folder: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeml test CA")])
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self._write_cert("ca.crt", cert)

    def _builder(self, subject: Any, public_key: Any) -> Any:
        from cryptography import x509

        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write_cert(self, name: str, cert: Any) -> Path:
        from cryptography.hazmat.primitives import serialization

        path = self.folder / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, common_name: str, *, server: bool) -> tuple[Path, Path]:
        """A certificate for ``common_name`` (a server's for 127.0.0.1 and localhost, or a
        client's) and its key: (cert file, key file)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key())
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert_file = self._write_cert(f"{common_name}.crt", builder.sign(self.key, hashes.SHA256()))
        key_file = self.folder / f"{common_name}.key"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file


def close_site(site: Site) -> None:
    for peer in site.peers:
        peer.close()
    site.broker.stop()
    site.registry.close()


def test_tls_listener_admits_verified_clients_only(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    cert_file, key_file = pki.issue("localhost", server=True)
    listener = ListenerSettings(
        host="127.0.0.1", port=8883, ca_file=pki.ca_file, cert_file=cert_file, key_file=key_file
    )
    site = make_site(tmp_path, listener, ("pi-a",))
    try:
        conf = site.files.config_file.read_text()
        assert f"certfile {cert_file.resolve()}" in conf
        assert "tls_version tlsv1.2" in conf

        fleet = site.peer(FLEET_USERNAME, ca_file=pki.ca_file)
        assert fleet.accepted
        fleet.subscribe(f"{PREFIX}/+/status")
        a = site.peer("pi-a", ca_file=pki.ca_file)
        assert a.accepted
        a.publish(f"{PREFIX}/pi-a/status", b"over TLS")
        assert fleet.wait_message(f"{PREFIX}/pi-a/status", b"over TLS")
        assert not_authorized(site.peer("pi-a", "wrong", client_id="w", ca_file=pki.ca_file))

        plain = site.peer("pi-a", client_id="plain")  # MQTT in clear on the TLS port
        assert plain.disconnected.wait(3), "a client without TLS was not cut off"
        assert plain.connack is None

        stranger = Pki(tmp_path / "other-pki")
        with pytest.raises(ssl.SSLError):  # a broker certificate the client does not trust
            Peer(site.broker.port, "pi-a", site.password("pi-a"), ca_file=stranger.ca_file)
    finally:
        close_site(site)


def test_client_certificates_as_identity_and_revocation_through_the_acl(tmp_path: Path) -> None:
    """With ``use_identity_as_username`` the CN is the user name and passwords are not used:
    revoking leaves a device with a valid certificate able to connect, but with no rights."""
    pki = Pki(tmp_path / "pki")
    cert_file, key_file = pki.issue("localhost", server=True)
    listener = ListenerSettings(
        host="127.0.0.1",
        port=8883,
        ca_file=pki.ca_file,
        cert_file=cert_file,
        key_file=key_file,
        require_certificate=True,
        use_identity_as_username=True,
    )
    site = make_site(tmp_path, listener, ("pi-a", "pi-b"))
    try:

        def client(cn: str | None) -> Peer:
            """Connected with a certificate for ``cn`` (None: without one), no password."""
            cert, key = (None, None) if cn is None else pki.issue(cn, server=False)
            peer = Peer(
                site.broker.port,
                None,
                None,
                client_id=cn or "anonymous",
                ca_file=pki.ca_file,
                cert_file=cert,
                key_file=key,
            )
            site.peers.append(peer)
            return peer

        fleet = client(FLEET_USERNAME)
        assert fleet.accepted
        fleet.subscribe(*(f"{PREFIX}/+/{kind}" for kind in DEVICE_REPORTS))
        a, b = client("pi-a"), client("pi-b")
        a.publish(f"{PREFIX}/pi-b/status", b"forged by pi-a")
        a.publish(f"{PREFIX}/pi-a/status", b"pi-a by certificate")
        assert fleet.wait_message(f"{PREFIX}/pi-a/status", b"pi-a by certificate") == [
            (f"{PREFIX}/pi-a/status", b"pi-a by certificate")
        ]
        assert a.accepted and b.accepted
        no_certificate = client(None)  # TLS 1.3: refused just after the handshake
        assert no_certificate.disconnected.wait(3) and no_certificate.connack is None

        probe = client("probe")  # not enrolled yet: no rights until the reload

        def probe_admitted() -> bool:
            token = secrets.token_hex(8).encode()
            probe.publish(f"{PREFIX}/probe/status", token)
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                if (f"{PREFIX}/probe/status", token) in fleet.received():
                    return True
                time.sleep(0.01)
            return False

        assert not probe_admitted()
        revoke_device(site.registry, "pi-a", now=time.time(), reason="stolen")
        site.regenerate_and_reload(probe_admitted)
        a.publish(f"{PREFIX}/pi-a/telemetry", b"after revocation")
        b.publish(f"{PREFIX}/pi-b/telemetry", b"barrier")
        received = fleet.wait_message(f"{PREFIX}/pi-b/telemetry", b"barrier")
        assert (f"{PREFIX}/pi-a/telemetry", b"after revocation") not in received
    finally:
        close_site(site)


# ------------------------------------------------------- the real agent and fleet service


def test_the_real_agent_and_fleet_service_talk_over_tls_with_enrolled_credentials(
    tmp_path: Path, key_dir: Path
) -> None:
    """``fleet enroll``'s folder, as is, drives the agent's real MQTT link; the fleet service
    logs in with ``fleet-password``; both through the generated TLS config and ACL."""
    from edgeml.agent.config import load_config
    from edgeml.agent.mqtt_link import AgentLink
    from edgeml.fleet.service import BrokerConnection, FleetService
    from edgeml.toolkit.protocol import Command, Message, Status
    from edgeml.toolkit.trust import load_trust_store

    pki = Pki(tmp_path / "pki")
    cert_file, key_file = pki.issue("localhost", server=True)
    broker = MosquittoBroker(tmp_path / "broker")  # its port is chosen now, started below
    registry = FleetRegistry.open(tmp_path / "fleet.db")
    enrollment = enroll_device(
        registry,
        "pi-a",
        "raspberry-pi-4",
        out=tmp_path / "enrolled" / "pi-a",
        now=time.time(),
        broker_url=f"mqtts://127.0.0.1:{broker.port}",
        ca_file=pki.ca_file,
        state_dir=str(tmp_path / "state"),
    )
    listener = ListenerSettings(
        host="127.0.0.1", port=8883, ca_file=pki.ca_file, cert_file=cert_file, key_file=key_file
    )
    files = write_broker_files(registry, tmp_path / "broker-files", listener, now=time.time())
    broker.extra_config = generated_broker_config(files)
    broker.start()

    assert files.fleet_password_file is not None
    service = FleetService(
        registry.path,
        BrokerConnection(
            f"mqtts://127.0.0.1:{broker.port}",
            FLEET_USERNAME,
            files.fleet_password_file.read_text().strip(),
            ca_file=pki.ca_file,
        ),
        load_trust_store(key_dir),
        tick_s=0.1,
        health_every_s=0.1,
    )
    thread = threading.Thread(target=service.run, name="fleet-service", daemon=True)
    commands: list[Message] = []
    config = load_config(enrollment.config_file)

    def status(online: bool) -> Status:
        return Status(device_id="pi-a", online=online, sent_at=time.time(), profile=PROFILE_NAME)

    link = AgentLink(config, lambda _kind, message: commands.append(message), status)
    try:
        thread.start()
        wait_for(service.connected.is_set, "the fleet service's connection")
        link.start()
        wait_for(link.connected.is_set, "the agent's connection")
        device = wait_for(lambda: registry.device("pi-a"), "the agent's status in the registry")
        assert device.online and device.profile == PROFILE_NAME
        registry.queue_command(
            Command(command_id="ping-1", kind="ping", issued_at=time.time()),
            "pi-a",
            "test",
            time.time(),
        )
        wait_for(lambda: commands, "the fleet's ping at the agent")
        assert isinstance(commands[0], Command) and commands[0].command_id == "ping-1"
    finally:
        link.stop()
        service.stop()
        thread.join(timeout=10)
        broker.stop()
        registry.close()
