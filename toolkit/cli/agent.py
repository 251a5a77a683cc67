"""``edgeml agent``: run the device daemon, read its state, side-load a bundle or a trust
document.

Loads only the agent and the kernel (never the build stack); each command imports its side
lazily so that ``edgeml --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeml.toolkit.cli.output import handles_errors, info, print_json, stdout

app = typer.Typer(
    help="The device agent: run it, read its state, side-load a bundle or a trust document.",
    no_args_is_help=True,
)

ConfigOption = Annotated[Path, typer.Option("--config", help="The agent's agent.toml.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")]
STATUS_FRESH_S = 10.0


@app.command("run")
@handles_errors
def run(
    config: ConfigOption,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
) -> None:
    """Run the agent until SIGTERM or Ctrl-C: local API, broker link, installs, telemetry."""
    from edgeml.agent.entry import run_agent

    run_agent(config, verbose=verbose, announce=info)


def status_document(config_path: Path) -> dict[str, Any]:
    """What ``agent status`` shows: the state folder's view, and the daemon's if it runs."""
    from edgeml.agent.config import load_config
    from edgeml.agent.daemon import STATUS_FILE
    from edgeml.agent.outbox import TelemetryOutbox
    from edgeml.agent.slots import read_state
    from edgeml.agent.trust import load_device_trust
    from edgeml.toolkit.errors import EdgeMLError

    config = load_config(config_path)
    state = read_state(config.state_dir)
    try:
        trust: dict[str, Any] = load_device_trust(config.state_dir, config.trust).describe()
    except EdgeMLError as error:
        trust = {"error": str(error)}
    daemon: dict[str, Any] = {}
    status_file = config.state_dir / STATUS_FILE
    if status_file.exists():
        try:
            daemon = json.loads(status_file.read_text())
        except (OSError, json.JSONDecodeError):
            daemon = {}
    running = bool(daemon) and time.time() - float(daemon.get("updated_at", 0)) < STATUS_FRESH_S
    outbox: dict[str, Any] = {}
    if config.outbox_path.exists():
        box = TelemetryOutbox(config.outbox_path, readonly=True)
        try:
            outbox = box.stats().to_dict()
        finally:
            box.close()
    return {
        "device_id": config.device_id,
        "profile": config.profile,
        "tags": list(config.tags),
        "active": state.active.bundle_id if state.active else None,
        "previous": state.previous.bundle_id if state.previous else None,
        "running": running,
        "connected": bool(running and daemon.get("connected")),
        "state": daemon.get("state") if running else "stopped",
        "detail": daemon.get("detail", "") if running else "",
        "api": daemon.get("api") if running else config.api.listen,
        "trust": trust,
        "telemetry_outbox": outbox,
    }


@app.command("status")
@handles_errors
def status(config: ConfigOption, json_output: JsonOption = False) -> None:
    """Show the active and previous bundles, the daemon's connection and the telemetry buffer."""
    document = status_document(config)
    if json_output:
        print_json(document)
        return
    table = Table(title=f"agent {document['device_id']}", show_header=False)
    for key in ("profile", "active", "previous", "running", "connected", "state", "api", "detail"):
        table.add_row(key, str(document[key]))
    trust = document["trust"]
    if "error" in trust:
        table.add_row("trust", f"cannot be loaded: {trust['error']}")
    else:
        table.add_row("trust version", str(trust["version"]))
        table.add_row("trusted keys", ", ".join(trust["keys"]))
        table.add_row("revoked keys", ", ".join(trust["revoked"]) or "none")
    for key, value in document["telemetry_outbox"].items():
        table.add_row(f"outbox {key}", str(value))
    stdout.print(table)


@app.command("install")
@handles_errors
def install(
    bundle: Annotated[Path, typer.Argument(help="The .edgeml bundle to install.")],
    config: ConfigOption,
    json_output: JsonOption = False,
) -> None:
    """Side-load a bundle (air-gapped devices): verify, self-test, switch atomically.

    Works whether or not the daemon runs: installs share one lock, and a running daemon
    serves the new bundle within a second.
    """
    from edgeml.agent.config import ensure_state_dir, load_config
    from edgeml.agent.install import install_bundle
    from edgeml.agent.trust import current_trust

    settings = load_config(config)
    ensure_state_dir(settings)
    result = install_bundle(
        bundle,
        settings.state_dir,
        lambda: current_trust(settings.state_dir, settings.trust),
        settings.profile,
    )
    if json_output:
        print_json(result.to_dict())
        return
    active = result.active.bundle_id if result.active else None
    previous = result.previous.bundle_id if result.previous else None
    if result.changed:
        stdout.print(f"[green]installed[/green] {active} (previous: {previous})")
    else:
        stdout.print(f"{active} is already active")


@app.command("trust-update")
@handles_errors
def trust_update(
    document: Annotated[Path, typer.Argument(help="The signed trust document (trust.json).")],
    config: ConfigOption,
    json_output: JsonOption = False,
) -> None:
    """Side-load a newer trust document (air-gapped devices): rotate or revoke keys.

    The document must verify against the device's current trust (exit 3 naming why not). The
    held bundles are verified again: a bundle signed by a key that is now revoked is dropped,
    and the device falls back to its previous bundle, or serves nothing. Works whether or not
    the daemon runs; a running daemon takes the new trust within a second.
    """
    from edgeml.agent.config import ensure_state_dir, load_config
    from edgeml.agent.trust import update_trust
    from edgeml.toolkit.trust import read_trust_document

    settings = load_config(config)
    ensure_state_dir(settings)
    result = update_trust(settings.state_dir, settings.trust, read_trust_document(document))
    if json_output:
        print_json(result.to_dict())
        return
    typer.echo(result.describe())
