"""``edgeml keys``: signing key pairs, and the signed trust documents that rotate and revoke them.

The trust commands are a thin shell over ``edgeml.toolkit.trust``: they read keys, build the
document (``new_trust_document`` / ``next_trust_document``), sign it, check it the way a device
would (``verify_root``, ``verify_successor``) and write it atomically, never over a file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeml.toolkit.cli.output import handles_errors, info, print_json, warn
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.keys import (
    PASSPHRASE_ENV,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
    passphrase_from_env,
    private_key_is_exposed,
)
from edgeml.toolkit.manifest import expiry_from_options

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgeml.toolkit.trust import TrustDocument

app = typer.Typer(
    help="Ed25519 keys that sign bundles, and the trust documents that rotate and revoke them.",
    no_args_is_help=True,
)
trust_app = typer.Typer(
    help="Signed trust documents: which keys sign bundles, rotation and revocation.",
    no_args_is_help=True,
)
app.add_typer(trust_app, name="trust")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
SignWith = Annotated[
    list[Path],
    typer.Option(
        "--sign-with",
        help="A private key (.key) that signs the document; repeat for several.",
    ),
]
OutOption = Annotated[
    Path, typer.Option("--out", help="Where to write the document (never over a file).")
]
ExpiresIn = Annotated[
    float | None,
    typer.Option("--expires-in", help="Days until devices refuse to take this document."),
]
Expires = Annotated[
    str | None,
    typer.Option("--expires", help="When devices refuse to take it: YYYY-MM-DD or ISO-8601 UTC."),
]
PassphraseEnv = Annotated[
    str,
    typer.Option("--passphrase-env", help="Environment variable holding the keys' passphrase."),
]


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
    json_output: JsonOption = False,
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


# ------------------------------------------------------------------------------ trust


def _signers(paths: list[Path], passphrase_env: str) -> list[Ed25519PrivateKey]:
    if not paths:
        raise InputError("give at least one --sign-with KEY")
    keys = []
    for path in paths:
        keys.append(load_private_key(path, passphrase_env))
        if private_key_is_exposed(path):
            warn(f"{path} can be read by other users; chmod 600 it")
    return keys


def _key_ids(values: list[str] | None) -> list[str]:
    """Key ids given as ids or as ``.pub`` files."""
    from edgeml.toolkit.trust import KEY_ID_PATTERN

    ids = []
    for value in values or ():
        if KEY_ID_PATTERN.match(value):
            ids.append(value)
        elif Path(value).is_file():
            ids.append(key_id(load_public_key(Path(value))))
        else:
            raise InputError(f"{value!r} is neither a key id (16 hex digits) nor a .pub file")
    return ids


def _write_document(document: TrustDocument, out: Path) -> None:
    from edgeml.toolkit.bundle import write_atomically

    if out.exists():
        raise InputError(f"{out} already exists; refusing to overwrite a trust document")
    write_atomically(out, document.to_bytes())


def _summary(document: TrustDocument, out: Path | None = None) -> dict[str, Any]:
    from edgeml.toolkit.trust import TrustStore

    summary = TrustStore.from_document(document).describe()
    summary["signed_by"] = sorted(s.key_id for s in document.signatures)
    if out is not None:
        summary["file"] = str(out)
    return summary


def _report(document: TrustDocument, json_output: bool, out: Path | None = None) -> None:
    """Print a trust document's summary: one JSON document, or lines for people."""
    summary = _summary(document, out)
    if json_output:
        print_json(summary)
    else:
        _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    written = f" written to {summary['file']}" if "file" in summary else ""
    typer.echo(f"trust version {summary['version']}{written}")
    typer.echo(f"  keys       {', '.join(summary['keys'])}")
    typer.echo(f"  root keys  {', '.join(summary['root_keys'])}")
    typer.echo(f"  revoked    {', '.join(summary['revoked']) or 'none'}")
    typer.echo(f"  expires    {summary['expires_at'] or 'never'}")
    typer.echo(f"  signed by  {', '.join(summary['signed_by'])}")


@trust_app.command("init")
@handles_errors
def trust_init(
    key: Annotated[
        list[Path], typer.Option("--key", help="A public key (.pub) that signs bundles; repeat.")
    ],
    sign_with: SignWith,
    out: OutOption,
    root: Annotated[
        list[Path] | None,
        typer.Option(
            "--root",
            help="A root key (.pub) that may sign the next version; repeat. Default: the "
            "--sign-with keys.",
        ),
    ] = None,
    previous: Annotated[
        Path | None,
        typer.Option(
            "--previous",
            help="The trust devices hold now (.pub, folder, or document): check they take it.",
        ),
    ] = None,
    version: Annotated[int, typer.Option("--version", help="The document's version.")] = 1,
    expires_in: ExpiresIn = None,
    expires: Expires = None,
    passphrase_env: PassphraseEnv = PASSPHRASE_ENV,
    json_output: JsonOption = False,
) -> None:
    """Write a first signed trust document: the keys that sign bundles and the root keys."""
    from edgeml.toolkit.trust import (
        load_trust_store,
        new_trust_document,
        verify_root,
        verify_successor,
    )

    now = time.time()
    signers = _signers(sign_with, passphrase_env)
    roots = [load_public_key(p) for p in root] if root else [k.public_key() for k in signers]
    document = new_trust_document(
        [load_public_key(p) for p in key],
        roots,
        version=version,
        expires_at=expiry_from_options(expires_in, expires, now),
    ).sign(*signers)
    verify_root(document)
    if previous is not None:
        verify_successor(load_trust_store(previous), document, now=now)
    _write_document(document, out)
    _report(document, json_output, out)


@trust_app.command("update")
@handles_errors
def trust_update(
    document: Annotated[Path, typer.Argument(help="The trust document devices hold now.")],
    sign_with: SignWith,
    out: OutOption,
    add: Annotated[
        list[Path] | None, typer.Option("--add", help="A public key (.pub) to trust; repeat.")
    ] = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", help="A key (id or .pub) to stop trusting, not revoked; repeat."),
    ] = None,
    revoke: Annotated[
        list[str] | None,
        typer.Option("--revoke", help="A key (id or .pub) to revoke, for good; repeat."),
    ] = None,
    add_root: Annotated[
        list[Path] | None, typer.Option("--add-root", help="A root key (.pub) to add; repeat.")
    ] = None,
    remove_root: Annotated[
        list[str] | None,
        typer.Option("--remove-root", help="A root key (id or .pub) to remove; repeat."),
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="The new version (default: one more).")
    ] = None,
    expires_in: ExpiresIn = None,
    expires: Expires = None,
    passphrase_env: PassphraseEnv = PASSPHRASE_ENV,
    json_output: JsonOption = False,
) -> None:
    """Write the next version of a trust document: add, remove or revoke keys, rotate roots.

    The new version is checked the way a device holding DOCUMENT checks it (signed by one of
    its root keys and by one of the new version's); exit 3 names what a device would refuse.
    """
    from edgeml.toolkit.trust import (
        next_trust_document,
        read_trust_document,
        verify_root,
        verify_successor,
    )

    now = time.time()
    current = verify_root(read_trust_document(document))
    signers = _signers(sign_with, passphrase_env)
    assert current.document is not None
    new = next_trust_document(
        current.document,
        add=[load_public_key(p) for p in add or ()],
        remove=_key_ids(remove),
        revoke=_key_ids(revoke),
        add_roots=[load_public_key(p) for p in add_root or ()],
        remove_roots=_key_ids(remove_root),
        version=version,
        expires_at=expiry_from_options(expires_in, expires, now),
    ).sign(*signers)
    verify_successor(current, new, now=now)
    _write_document(new, out)
    _report(new, json_output, out)


@trust_app.command("show")
@handles_errors
def trust_show(
    document: Annotated[Path, typer.Argument(help="A trust document.")],
    previous: Annotated[
        Path | None,
        typer.Option(
            "--previous",
            help="The trust devices hold now (.pub, folder, or document): check they take it.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Verify a trust document and show its version, keys, root keys, revocations and expiry."""
    from edgeml.toolkit.trust import (
        load_trust_store,
        read_trust_document,
        verify_root,
        verify_successor,
    )

    parsed = read_trust_document(document)
    verify_root(parsed)
    if previous is not None:
        verify_successor(load_trust_store(previous), parsed, now=time.time())
    _report(parsed, json_output)
    if not json_output:
        typer.echo(f"trust version {parsed.version} verifies")
