"""The ``edgeml`` command's Typer app: one Typer app per area, composed here.

The CLI is a thin shell: each command parses its arguments, calls an importable API and turns
``EdgeMLError`` into its exit code (DESIGN.md). Sides (converters, agent, fleet) are imported
lazily inside the commands that need them, so ``edgeml agent ...`` never loads the build stack.
Tables and status go to stdout (or one JSON document with ``--json``); progress, warnings and
errors go to stderr.
"""

from __future__ import annotations

import typer

from edgeml.toolkit.cli import agent as agent_cli
from edgeml.toolkit.cli import build as build_cli
from edgeml.toolkit.cli import bundles as bundles_cli
from edgeml.toolkit.cli import fleet as fleet_cli
from edgeml.toolkit.cli import fleet_access
from edgeml.toolkit.cli import keys as keys_cli
from edgeml.toolkit.cli import profiles as profiles_cli
from edgeml.toolkit.cli import score as score_cli

app = typer.Typer(
    name="edgeml",
    help="Build signed model bundles per hardware profile and deploy them to edge devices.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(keys_cli.app, name="keys")
app.add_typer(profiles_cli.app, name="profiles")
app.add_typer(agent_cli.app, name="agent")
app.add_typer(fleet_cli.app, name="fleet")
fleet_cli.app.command("enroll")(fleet_access.enroll)
fleet_cli.app.command("broker-config")(fleet_access.broker_config)
fleet_cli.app.command("revoke")(fleet_access.revoke)
app.command("build")(build_cli.build)
app.command("verify")(bundles_cli.verify)
app.command("inspect")(bundles_cli.inspect)
app.command("score")(score_cli.score)
