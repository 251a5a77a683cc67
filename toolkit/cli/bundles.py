"""``edgeml verify`` and ``edgeml inspect``: check a bundle, show what it holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgeml.toolkit.bundle import check_bundle, read_manifest_unverified
from edgeml.toolkit.cli.output import handles_errors, print_json, stdout
from edgeml.toolkit.errors import BundleError
from edgeml.toolkit.trust import load_trust_store

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")]


@handles_errors
def verify(
    bundle: Annotated[Path, typer.Argument(help="The .edgeml bundle.")],
    trust: Annotated[
        Path,
        typer.Option("--trust", help="A .pub file, a folder of them, or a trust document."),
    ],
    json_output: JsonOption = False,
) -> None:
    """Verify a bundle's key (trusted, not revoked), signature, entries, sizes, hashes and
    expiry (exit 3 naming the failed check)."""
    store = load_trust_store(trust)
    report, verified = check_bundle(bundle, store, now=time.time())
    if json_output:
        print_json(report.to_dict())
    else:
        table = Table(title=f"verify {bundle.name}", show_lines=False)
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for check in report.checks:
            table.add_row(
                check.name,
                "[green]ok[/green]" if check.passed else "[red]FAILED[/red]",
                check.detail,
            )
        stdout.print(table)
    if verified is None:
        failure = report.failure
        assert failure is not None
        raise BundleError(f"{bundle}: refused, check '{failure.name}' failed: {failure.detail}")
    if not json_output:
        stdout.print(
            f"[green]verified[/green] {verified.bundle_id}, signed by key {verified.key_id}"
        )


def _inspect_document(bundle: Path) -> dict[str, Any]:
    manifest, key_id = read_manifest_unverified(bundle)
    document = manifest.to_dict()
    document["key_id"] = key_id
    document["file"] = str(bundle)
    document["file_bytes"] = bundle.stat().st_size
    document["verified"] = False
    return document


@handles_errors
def inspect(
    bundle: Annotated[Path, typer.Argument(help="The .edgeml bundle.")],
    json_output: JsonOption = False,
) -> None:
    """Show a bundle's name, version, profile, key, schema, contract, metrics and provenance.

    Inspection does not verify: use ``edgeml verify`` before trusting what it shows.
    """
    document = _inspect_document(bundle)
    if json_output:
        print_json(document)
        return
    stdout.print(
        f"[bold]{document['bundle_id']}[/bold]  ({document['task']}, {document['precision']})"
    )
    stdout.print(f"signed by key {document['key_id']}; not verified here (use edgeml verify)")
    stdout.print(f"expires: {document.get('expires_at') or 'never'}")
    entries = Table(title="entries")
    for column in ("entry", "bytes", "sha256"):
        entries.add_column(column)
    for name, digest in document["entries"].items():
        entries.add_row(name, str(digest["size"]), digest["sha256"][:16] + "…")
    stdout.print(entries)
    contract = Table(title="inputs and data contract")
    for column in ("feature", "kind", "nullable", "min", "max"):
        contract.add_column(column)
    for feature in document["contract"]["features"]:
        contract.add_row(
            feature["name"],
            feature["kind"],
            str(feature["nullable"]),
            str(feature["min"]),
            str(feature["max"]),
        )
    stdout.print(contract)
    outputs = ", ".join(f"{o['name']} ({o['dtype']})" for o in document["outputs"])
    stdout.print(f"outputs: {outputs}")
    if document.get("classes") is not None:
        stdout.print(f"classes: {document['classes']}")
    metrics = document["metrics"]
    stdout.print(f"metrics: source {metrics.get('source')}, bundled {metrics.get('bundled')}")
    stdout.print("passes: " + ", ".join(p["name"] for p in document["passes"]))
    if document.get("candidates"):
        candidates = Table(title="candidates the build tried")
        for column in ("candidate", "precision", "model bytes", "metrics", "outcome"):
            candidates.add_column(column, overflow="fold")
        for c in document["candidates"]:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in (c.get("metrics") or {}).items())
            candidates.add_row(
                c["name"], c["precision"], str(c["model_bytes"]), metrics, c["outcome"]
            )
        stdout.print(candidates)
    provenance = document["provenance"]
    stdout.print(f"source model: {provenance.get('source_model')}")
    stdout.print(f"versions: {provenance.get('versions')}")
