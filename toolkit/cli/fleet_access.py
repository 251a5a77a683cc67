"""``edgeml fleet enroll | broker-config | revoke``: who may use the fleet's broker.

A thin shell over :mod:`edgeml.fleet.enrollment` (imported lazily): parse the options, call
it, print what was written. Registered on the ``fleet`` app in ``edgeml.toolkit.cli``.
Passwords are never printed: they exist only in the 0600 files the commands write.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from edgeml.toolkit.cli.output import handles_errors, info, print_json, stdout, warn

DbOption = Annotated[Path, typer.Option("--db", help="The fleet registry (a SQLite file).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")]


@handles_errors
def enroll(
    device_id: Annotated[str, typer.Argument(help="The device's id ([A-Za-z0-9._-], 1-64).")],
    profile: Annotated[str, typer.Option("--profile", help="The device's hardware profile.")],
    db: DbOption,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A tag (rollout targets); repeatable.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder to write for the device (default: enrolled/ID)."),
    ] = None,
    broker: Annotated[
        str, typer.Option("--broker", help="What the agent connects to: mqtt:// or mqtts://.")
    ] = "mqtt://127.0.0.1:1883",
    trust: Annotated[
        str,
        typer.Option(
            "--trust",
            help="What the agent trusts, as a path on the device (relative to its config).",
        ),
    ] = "trust",
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="CA certificate of the broker, copied in as ca.crt."),
    ] = None,
    state_dir: Annotated[
        str, typer.Option("--state-dir", help="The agent's state folder on the device.")
    ] = "/var/lib/edgeml",
    api_listen: Annotated[
        str,
        typer.Option(
            "--api-listen", help="Where the agent's local API listens (HOST:PORT or unix:PATH)."
        ),
    ] = "127.0.0.1:8765",
    rotate_credentials: Annotated[
        bool,
        typer.Option(
            "--rotate-credentials",
            help="Give an enrolled (or revoked) device a new password instead of refusing.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Create a device's broker credentials and agent config, and register them.

    Writes agent.toml, broker-password (0600) and trust/ into --out. The broker admits the
    device after the next broker-config and a broker reload. Enrolling an id twice is refused
    (exit 2) unless --rotate-credentials.
    """
    from edgeml.fleet.enrollment import enroll_device
    from edgeml.fleet.registry import FleetRegistry

    folder = out if out is not None else Path("enrolled") / device_id
    with FleetRegistry.open(db) as registry:
        enrollment = enroll_device(
            registry,
            device_id,
            profile,
            out=folder,
            now=time.time(),
            tags=tag or (),
            broker_url=broker,
            trust=trust,
            ca_file=ca_file,
            state_dir=state_dir,
            api_listen=api_listen,
            rotate=rotate_credentials,
        )
    if broker.startswith("mqtt://"):
        warn(f"{broker} is not TLS: the device's password crosses the network in clear")
    if json_output:
        print_json(enrollment.to_dict())
    else:
        verb = (
            "re-enrolled (was revoked)"
            if enrollment.reinstated
            else "new password for"
            if enrollment.rotated
            else "enrolled"
        )
        stdout.print(f"{verb} {device_id}: {enrollment.folder}", highlight=False)
    info(
        f"copy {enrollment.folder} to the device (e.g. /etc/edgeml), put the release keys in "
        "its trust folder, then run `edgeml fleet broker-config` and reload the broker"
    )


@handles_errors
def broker_config(
    db: DbOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for mosquitto.conf, passwords, acl.")],
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="HOST:PORT to listen on (default: 0.0.0.0:8883 with TLS, else 0.0.0.0:1883).",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="CA that client certificates chain to.")
    ] = None,
    cert_file: Annotated[
        Path | None, typer.Option("--cert-file", help="The broker's certificate: turns TLS on.")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="The broker's private key.")
    ] = None,
    crl_file: Annotated[
        Path | None, typer.Option("--crl-file", help="Revocation list for client certificates.")
    ] = None,
    require_certificate: Annotated[
        bool,
        typer.Option("--require-certificate", help="Clients must present a certificate."),
    ] = False,
    use_identity_as_username: Annotated[
        bool,
        typer.Option(
            "--use-identity-as-username",
            help="User name from the client certificate's CN (passwords are then not used).",
        ),
    ] = False,
    rotate_fleet_password: Annotated[
        bool,
        typer.Option("--rotate-fleet-password", help="Give the fleet service a new password."),
    ] = False,
    broker_user: Annotated[
        str | None,
        typer.Option(
            "--broker-user",
            help="The user Mosquitto runs as (e.g. mosquitto): it gets the files (needs root).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Write the Mosquitto config, password file and per-device ACL from the registry.

    Revoked devices are left out. The first run also creates the fleet service's account
    (edgeml-fleet) and writes its password to DIR/fleet-password (0600).
    """
    from edgeml.fleet.broker_config import ListenerSettings, parse_listen
    from edgeml.fleet.enrollment import FLEET_PASSWORD_FILE, write_broker_files
    from edgeml.fleet.registry import FleetRegistry

    tls = cert_file is not None
    host, port = parse_listen(listen or "0.0.0.0", tls=tls)
    listener = ListenerSettings(
        host=host,
        port=port,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        crl_file=crl_file,
        require_certificate=require_certificate,
        use_identity_as_username=use_identity_as_username,
    )
    with FleetRegistry.open(db) as registry:
        files = write_broker_files(
            registry,
            out,
            listener,
            now=time.time(),
            rotate_fleet_password=rotate_fleet_password,
            broker_user=broker_user,
        )
    if not listener.tls and not listener.loopback:
        warn(
            f"listener {host}:{port} without TLS: passwords cross the network in clear; "
            "give --cert-file and --key-file"
        )
    fleet_password = files.fleet_password_file or files.folder / FLEET_PASSWORD_FILE
    if files.fleet_password_file is None and not fleet_password.exists():
        warn(
            f"the fleet's password was written by an earlier broker-config, not to {out}; "
            "--rotate-fleet-password makes a new one here"
        )
    if json_output:
        print_json(files.to_dict())
    else:
        stdout.print(
            f"wrote {files.config_file}, {files.password_file.name}, {files.acl_file.name}: "
            f"{len(files.devices)} device(s), {len(files.revoked)} revoked left out",
            highlight=False,
        )
    info(
        f"reload a running broker to apply: systemctl reload mosquitto (or kill -HUP its pid); "
        f"it re-reads passwords and acl and drops revoked devices. Listener or TLS changes "
        f"need a restart. The broker's user must be able to read {files.password_file} "
        f"(--broker-user).\n"
        f"fleet service: edgeml fleet serve --username {files.fleet_username} "
        f"--password-file {fleet_password} ..."
    )


@handles_errors
def revoke(
    device_id: Annotated[str, typer.Argument(help="The enrolled device to shut out.")],
    db: DbOption,
    reason: Annotated[str, typer.Option("--reason", help="Why; written to the audit log.")] = "",
    json_output: JsonOption = False,
) -> None:
    """Revoke a device's broker access (exit 2 if it is not enrolled).

    The next broker-config leaves it out of the password file and ACL; reloading the broker
    then refuses its logins and disconnects it.
    """
    from edgeml.fleet.enrollment import revoke_device
    from edgeml.fleet.registry import FleetRegistry

    with FleetRegistry.open(db) as registry:
        record, revoked_now = revoke_device(registry, device_id, now=time.time(), reason=reason)
    if json_output:
        print_json({**record.to_dict(), "revoked_now": revoked_now})
    elif revoked_now:
        stdout.print(f"revoked {device_id}", highlight=False)
    else:
        stdout.print(f"{device_id} was already revoked", highlight=False)
    info("run `edgeml fleet broker-config` and reload the broker to shut it out")
