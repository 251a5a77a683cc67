"""``edgeml build``: a model and validation data in, one signed bundle per profile out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeml.toolkit.cli.output import handles_errors, print_json, stderr, stdout, warn
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.keys import PASSPHRASE_ENV, load_private_key, private_key_is_exposed
from edgeml.toolkit.profiles import load_profile


@handles_errors
def build(
    model: Annotated[
        Path, typer.Argument(help="A scikit-learn model (.skops, .joblib, .pkl) or an .onnx file.")
    ],
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile", help="Hardware profile name or path to a .toml file; repeat for several."
        ),
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="The private key (.key) that signs the bundles.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the bundles and the build report.")
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            "--validation", help="Validation data (CSV, JSON Lines, Parquet) with the target."
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="The target column in the validation data.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Bundle name (default: the model file's stem).")
    ] = None,
    version: Annotated[
        str, typer.Option("--version", help="Bundle version, e.g. 1.2.0.")
    ] = "1.0.0",
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Rows for static quantization calibration.")
    ] = None,
    trust_type: Annotated[
        list[str] | None,
        typer.Option("--trust-type", help="An extra type a .skops file may load; repeat."),
    ] = None,
    passphrase_env: Annotated[
        str,
        typer.Option("--passphrase-env", help="Environment variable holding the key's passphrase."),
    ] = PASSPHRASE_ENV,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the build report as JSON.")
    ] = False,
) -> None:
    """Convert MODEL to ONNX, prove it matches, and write a signed bundle per hardware profile."""
    from edgeml.converters.pipeline import BuildRequest, build_bundles
    from edgeml.converters.report import report_document

    if validation is None or target is None:
        raise InputError(
            "--validation FILE and --target COLUMN are required: the data contract, the drift "
            "baseline, the golden self-test rows and the quality gates all come from them"
        )
    missing = [
        flag
        for flag, value in (("--profile", profile), ("--key", key), ("--out", out))
        if not value
    ]
    if missing:
        raise InputError(f"missing {', '.join(missing)}")
    assert profile is not None and key is not None and out is not None
    if calibration is not None and not calibration.is_file():
        raise InputError(f"calibration file {calibration} does not exist")
    if not validation.is_file():
        raise InputError(f"validation file {validation} does not exist")
    profiles = [load_profile(p) for p in profile]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise InputError(f"a profile is given twice: {', '.join(names)}")
    signing_key = load_private_key(key, passphrase_env)
    if private_key_is_exposed(key):
        warn(f"{key} can be read by other users; chmod 600 it")
    request = BuildRequest(
        model_path=model,
        profiles=profiles,
        signing_key=signing_key,
        out_dir=out,
        validation_path=validation,
        target=target,
        name=name,
        version=version,
        calibration_path=calibration,
        trusted_types=tuple(trust_type or ()),
    )
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as progress:
        task = progress.add_task("building", total=None)

        def on_step(profile_name: str, step: str) -> None:
            progress.update(
                task, description=f"{profile_name + ': ' if profile_name else ''}{step}"
            )

        result = build_bundles(request, on_step=on_step, warn=warn)
    if json_output:
        print_json(report_document(result))
        return
    table = Table(title="bundles")
    for column in (
        "profile",
        "bundle",
        "precision",
        "metric (source → bundled)",
        "size",
        "p50 ms",
        "gates",
    ):
        table.add_column(column)
    for b in result.builds:
        primary = b.metrics["primary"]
        failed = [g.gate for g in b.gates if g.status == "failed"]
        unchecked = [g.gate for g in b.gates if g.status == "not checked"]
        gates = "failed: " + ", ".join(failed) if failed else "all passed"
        if unchecked:
            gates += f" ({', '.join(unchecked)} not checked)"
        table.add_row(
            b.profile.name,
            b.bundle_path.name,
            b.precision,
            f"{primary} {b.metrics['source'][primary]:.4f} → {b.metrics['bundled'][primary]:.4f}",
            f"{b.bundle_size:,} B",
            f"{b.latency.get('single_row_ms_p50', float('nan')):.3f}",
            gates,
        )
    stdout.print(table)
    for b in result.builds:
        for note in b.notes:
            stderr.print(f"note ({b.profile.name}): {note}", highlight=False)
    stdout.print(f"report: {result.report_md}")
