"""``edgeml keys``: signing key pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeml.toolkit.cli.output import handles_errors, info, print_json
from edgeml.toolkit.keys import generate_key_pair, passphrase_from_env

app = typer.Typer(help="Create the Ed25519 keys that sign bundles.", no_args_is_help=True)


@app.command("generate")
@handles_errors
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write NAME.key and NAME.pub into.")],
    name: Annotated[str, typer.Option("--name", help="File stem of the key pair.")] = "edgeml",
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            "--passphrase-env",
            help="Encrypt the private key with the passphrase held in this environment variable "
            "(never pass a passphrase on the command line).",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Generate an Ed25519 key pair: DIR/NAME.key (0600) and DIR/NAME.pub."""
    generated = generate_key_pair(out, name, passphrase_from_env(passphrase_env))
    document = {
        "key_id": generated.key_id,
        "private_key": str(generated.private_path),
        "public_key": str(generated.public_path),
        "encrypted": passphrase_env is not None,
    }
    if json_output:
        print_json(document)
        return
    info(f"private key {generated.private_path} (0600{', encrypted' if passphrase_env else ''})")
    info(f"public key  {generated.public_path}")
    typer.echo(generated.key_id)
