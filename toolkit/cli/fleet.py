"""``edgeml fleet``: run the fleet service, publish bundles, list devices, stage rollouts.

A thin shell over :mod:`edgeml.fleet.operations` and :mod:`edgeml.fleet.service`, imported
lazily. Commands other than ``serve`` touch only the registry file; the running service
carries out what they queue on its next tick.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from edgeml.toolkit.cli.output import handles_errors, info, print_json, stdout
from edgeml.toolkit.foreground import run_until_signalled

app = typer.Typer(
    help="The fleet service: devices, bundles, staged rollouts with health gates.",
    no_args_is_help=True,
)
rollout_app = typer.Typer(
    help="Stage a bundle across devices: start, watch, pause, approve, abort.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")
trust_app = typer.Typer(
    help="Send devices a new signed trust document: rotate or revoke keys, no re-flashing.",
    no_args_is_help=True,
)
app.add_typer(trust_app, name="trust")

DbOption = Annotated[Path, typer.Option("--db", help="The fleet registry (a SQLite file).")]
TrustOption = Annotated[
    Path,
    typer.Option(
        "--trust", help="The release keys: a .pub file, a folder of them, or a trust document."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")]
TargetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--target", help="profile=P, tag=T or device=ID; several narrow the target (AND)."
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why; written to the audit log.")]


def _registry(db: Path) -> Any:
    from edgeml.fleet.registry import FleetRegistry

    return FleetRegistry.open(db)


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    age = time.time() - timestamp
    if age < 120:
        return f"{age:.0f} s ago"
    if age < 7200:
        return f"{age / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _figure(value: Any, fmt: str = "{:.3g}") -> str:
    return "-" if value is None else fmt.format(value)


@app.command("serve")
@handles_errors
def serve(
    db: DbOption,
    broker: Annotated[str, typer.Option("--broker", help="mqtt://HOST:PORT, or mqtts:// for TLS.")],
    trust: TrustOption,
    username: Annotated[str | None, typer.Option(help="Broker user name.")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="File whose first line is the broker password.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate for mqtts://.")] = None,
    cert_file: Annotated[Path | None, typer.Option(help="Client certificate (mqtts).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="Client key (mqtts).")] = None,
    tick: Annotated[float, typer.Option(help="Seconds between rollout steps.")] = 1.0,
    health_every: Annotated[
        float, typer.Option(help="Seconds between recomputing devices' health figures.")
    ] = 2.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """Run the fleet service until SIGTERM or Ctrl-C: registry, transfers, rollouts."""
    from edgeml.fleet.service import BrokerConnection, FleetService
    from edgeml.toolkit.protocol import broker_address
    from edgeml.toolkit.trust import load_trust_store

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    password = None
    if password_file is not None:
        password = password_file.read_text(encoding="utf-8").splitlines()[0].strip()
    broker_address(broker)  # a malformed --broker is bad usage (exit 2), not a hang
    connection = BrokerConnection(
        broker, username, password, ca_file, cert_file, key_file, client_id="edgeml-fleet"
    )
    service = FleetService(
        db, connection, load_trust_store(trust), tick_s=tick, health_every_s=health_every
    )
    info(f"fleet service on {broker} with registry {db}")
    run_until_signalled(service.run, service.stop)


@app.command("publish")
@handles_errors
def publish(
    bundle: Annotated[Path, typer.Argument(help="The .edgeml bundle to publish.")],
    db: DbOption,
    trust: TrustOption,
    json_output: JsonOption = False,
) -> None:
    """Verify a bundle against the trust store and register it (exit 3 if it fails)."""
    from edgeml.fleet.publishing import publish_bundle
    from edgeml.toolkit.trust import load_trust_store

    with _registry(db) as registry:
        record, new = publish_bundle(registry, bundle, load_trust_store(trust))
    if json_output:
        print_json({**record.to_dict(), "new": new})
    else:
        verb = "published" if new else "already published:"
        stdout.print(f"{verb} {record.bundle_id} ({record.size} bytes, key {record.key_id})")


@app.command("devices")
@handles_errors
def devices(db: DbOption, json_output: JsonOption = False) -> None:
    """List devices as they report themselves: versions, online, health."""
    from edgeml.fleet.operations import device_overview

    with _registry(db) as registry:
        overview = device_overview(registry)
    if json_output:
        print_json(overview)
        return
    table = Table(title=f"{len(overview)} device(s)")
    for column in ("device", "profile", "tags", "active", "previous", "online", "last seen"):
        table.add_column(column)
    for column in ("requests", "error rate", "p95 ms", "max PSI"):
        table.add_column(column, justify="right")
    for d in overview:
        health = d["health"]
        table.add_row(
            d["device_id"],
            d["profile"] or "-",
            ",".join(d["tags"]),
            d["active"] or "-",
            d["previous"] or "-",
            "[red]revoked[/red]"
            if d["revoked"]
            else "[green]yes[/green]"
            if d["online"]
            else "[red]no[/red]",
            _when(d["last_seen"]),
            str(health["requests"]),
            _figure(health["error_rate"], "{:.2%}"),
            _figure(health["p95_ms"]),
            _figure(health["max_psi"]),
        )
    stdout.print(table)


@app.command("bundles")
@handles_errors
def bundles(db: DbOption, json_output: JsonOption = False) -> None:
    """List published bundles."""
    with _registry(db) as registry:
        records = registry.bundles()
    if json_output:
        print_json([r.to_dict() for r in records])
        return
    table = Table(title=f"{len(records)} bundle(s)")
    for column in ("bundle", "profile", "version", "size", "key", "published"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.bundle_id, r.profile, r.version, str(r.size), r.key_id, _when(r.published_at)
        )
    stdout.print(table)


@app.command("rollback")
@handles_errors
def rollback(
    db: DbOption,
    target: TargetOption = None,
    reason: ReasonOption = "",
    json_output: JsonOption = False,
) -> None:
    """Tell the target's devices to go back to their previous bundle.

    Live rollouts that reach those devices are aborted first.
    """
    from edgeml.fleet.operations import roll_back_devices
    from edgeml.fleet.rollout import parse_selector

    selectors = [parse_selector(t) for t in target or ()]
    with _registry(db) as registry:
        plan = roll_back_devices(registry, selectors, reason=reason)
    if json_output:
        print_json(plan)
        return
    for entry in plan:
        if entry["activate"]:
            stdout.print(f"{entry['device_id']}: {entry['active']} → {entry['activate']}")
        else:
            stdout.print(f"{entry['device_id']}: left on {entry['active']} ({entry['note']})")


# ------------------------------------------------------------------------------- rollouts


@rollout_app.command("start")
@handles_errors
def rollout_start(
    bundle_id: Annotated[str, typer.Argument(help="A published bundle id.")],
    db: DbOption,
    stages: Annotated[
        str, typer.Option(help="Cumulative stage sizes: counts or shares, e.g. 1,10%,50%,100%.")
    ] = "1,10%,50%,100%",
    target: TargetOption = None,
    soak: Annotated[float, typer.Option("--soak", help="Seconds each stage must hold.")] = 300.0,
    success_threshold: Annotated[
        float, typer.Option(help="Share of a stage's devices that must be healthy.")
    ] = 0.95,
    error_threshold: Annotated[
        float, typer.Option(help="Share of the devices that may fail before rolling back.")
    ] = 0.05,
    max_error_rate: Annotated[
        float, typer.Option(help="Failed predictions + contract refusals over requests.")
    ] = 0.01,
    max_latency_ratio: Annotated[
        float, typer.Option(help="p95 on the new bundle over p95 on the previous one.")
    ] = 1.5,
    max_psi: Annotated[float, typer.Option(help="Largest feature or prediction PSI.")] = 0.25,
    manual_approval: Annotated[
        bool, typer.Option("--manual-approval", help="Wait for approve between stages.")
    ] = False,
    stage_timeout: Annotated[
        float, typer.Option(help="Seconds a stage waits for its devices.")
    ] = 1800.0,
    min_requests: Annotated[
        int, typer.Option(help="Requests a device serves before its health is judged.")
    ] = 20,
    json_output: JsonOption = False,
) -> None:
    """Start a staged rollout of a published bundle; prints its id."""
    from edgeml.fleet.gates import Gates
    from edgeml.fleet.operations import start_rollout
    from edgeml.fleet.rollout import parse_selector, parse_stages

    gates = Gates(
        soak_s=soak,
        success_threshold=success_threshold,
        error_threshold=error_threshold,
        max_error_rate=max_error_rate,
        max_latency_ratio=max_latency_ratio,
        max_psi=max_psi,
        manual_approval=manual_approval,
        stage_timeout_s=stage_timeout,
        min_requests=min_requests,
    )
    selectors = [parse_selector(t) for t in target or ()]
    with _registry(db) as registry:
        rollout = start_rollout(
            registry, bundle_id, parse_stages(stages), target=selectors, gates=gates
        )
    if json_output:
        print_json({"rollout_id": rollout.rollout_id})
    else:
        stdout.print(rollout.rollout_id)


@rollout_app.command("list")
@handles_errors
def rollout_list(db: DbOption, json_output: JsonOption = False) -> None:
    """List rollouts, newest first."""
    with _registry(db) as registry:
        records = registry.rollouts()
    rows = [
        {
            "rollout_id": r.rollout_id,
            "bundle_id": r.bundle_id,
            "state": r.state,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "stage": r.document.get("stage_index", -1) + 1,
            "stages": len(r.document.get("stages", ())),
        }
        for r in records
    ]
    if json_output:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} rollout(s)")
    for column in ("rollout", "bundle", "state", "stage", "created"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["rollout_id"],
            r["bundle_id"],
            r["state"],
            f"{r['stage']}/{r['stages']}",
            _when(r["created_at"]),
        )
    stdout.print(table)


def status_table(document: dict[str, Any]) -> Table:
    """A rollout's status as a table: stages, devices per state, gate figures, failure."""
    title = (
        f"rollout {document['rollout_id']}: {document['bundle_id']} — "
        f"[bold]{document['state']}[/bold] ({document['reason']})"
    )
    table = Table(title=title, title_justify="left")
    for column in ("stage", "size", "devices in all", "outcome", "its new devices"):
        table.add_column(column)
    for stage in document["stages"]:
        states = ", ".join(f"{k} {v}" for k, v in stage["states"].items()) or "-"
        table.add_row(
            str(stage["index"] + 1),
            stage["size"],
            _figure(stage["devices"], "{}"),
            stage["outcome"],
            states,
        )
    table.add_section()
    for gate, figures in document["gate_figures"].items():
        worst = figures["worst"]
        broken = worst is not None and worst > figures["threshold"]
        mark = "[red]broken[/red]" if broken else "ok" if worst is not None else "not measured"
        table.add_row(
            f"gate {gate}",
            f"≤ {figures['threshold']:g}",
            figures["device_id"] or "-",
            mark,
            f"worst {_figure(worst)}",
        )
    failure = document.get("failure")
    if failure:
        table.add_section()
        table.add_row("failure", "", "", "[red]rolled back[/red]", failure["reason"])
    return table


@rollout_app.command("status")
@handles_errors
def rollout_status(
    rollout_id: Annotated[str, typer.Argument(help="The rollout's id.")],
    db: DbOption,
    json_output: JsonOption = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh the table until the rollout settles.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Show a rollout: stages, devices per state, gate figures, and why.

    With --watch the table refreshes until the rollout settles (succeeded, aborted, or
    rolled back with every device back) or Ctrl-C.
    """
    from edgeml.fleet.operations import rollout_status as read_status
    from edgeml.fleet.rollout import is_settled

    with _registry(db) as registry:
        document = read_status(registry, rollout_id)
        if json_output:
            print_json(document)
            return
        if not watch:
            stdout.print(status_table(document))
            return
        with Live(status_table(document), console=stdout, refresh_per_second=4) as live:
            try:
                while not is_settled(document):
                    time.sleep(interval)
                    document = read_status(registry, rollout_id)
                    live.update(status_table(document))
            except KeyboardInterrupt:
                return


def _operator_command(action: str, help_text: str) -> None:
    @handles_errors
    def command(
        rollout_id: Annotated[str, typer.Argument(help="The rollout's id.")],
        db: DbOption,
        reason: ReasonOption = "",
        json_output: JsonOption = False,
    ) -> None:
        from edgeml.fleet.operations import request_action

        with _registry(db) as registry:
            request_id = request_action(registry, rollout_id, action, reason=reason)
        if json_output:
            print_json({"rollout_id": rollout_id, "action": action, "request_id": request_id})
        info(f"{action} of {rollout_id} queued: the fleet service acts on its next tick")

    command.__doc__ = help_text
    rollout_app.command(action)(command)


_operator_command("pause", "Stop starting new stages and sending installs (gates still act).")
_operator_command("resume", "Go on with a paused rollout.")
_operator_command("approve", "Start the next stage of a rollout waiting for approval.")
_operator_command("abort", "Stop a rollout; devices keep what they run (see fleet rollback).")


@trust_app.command("push")
@handles_errors
def trust_push(
    document: Annotated[Path, typer.Argument(help="The trust document (keys trust init|update).")],
    db: DbOption,
    target: TargetOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send a trust document to the target's devices (all devices without --target).

    Each device takes it only if its signatures follow from the trust it holds; the result
    of each command is in the audit log and the device's status.
    """
    from edgeml.fleet.operations import push_trust
    from edgeml.fleet.rollout import parse_selector

    selectors = [parse_selector(t) for t in target or ()]
    with _registry(db) as registry:
        devices = push_trust(registry, document, selectors)
    if json_output:
        print_json({"devices": devices})
    else:
        info(f"trust document queued for {len(devices)} device(s); the service sends it")
