"""``edgeml build``: a model and validation data in, one signed bundle per profile out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeml.toolkit.cli.output import handles_errors, print_json, stderr, stdout, warn
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.keys import PASSPHRASE_ENV, load_private_key, private_key_is_exposed
from edgeml.toolkit.manifest import expiry_from_options
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
    train: Annotated[
        Path | None,
        typer.Option(
            "--train", help="Training rows (with the target) to fine-tune pruned models on."
        ),
    ] = None,
    trust_type: Annotated[
        list[str] | None,
        typer.Option("--trust-type", help="An extra type a .skops file may load; repeat."),
    ] = None,
    passphrase_env: Annotated[
        str,
        typer.Option("--passphrase-env", help="Environment variable holding the key's passphrase."),
    ] = PASSPHRASE_ENV,
    expires_in: Annotated[
        float | None,
        typer.Option(
            "--expires-in", help="Days until the bundles expire: devices then refuse to install."
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="When the bundles expire: YYYY-MM-DD (midnight UTC) or ISO-8601 UTC."
        ),
    ] = None,
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
    for flag, path in (("--calibration", calibration), ("--train", train)):
        if path is not None and not path.is_file():
            raise InputError(f"{flag} file {path} does not exist")
    if not validation.is_file():
        raise InputError(f"validation file {validation} does not exist")
    expires_at = expiry_from_options(expires_in, expires, time.time())
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
        train_path=train,
        trusted_types=tuple(trust_type or ()),
        expires_at=expires_at,
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
    print_build_tables(result)
    stdout.print(f"report: {result.report_md}")


def print_build_tables(result: Any) -> None:
    """One table of candidates per profile, the chosen one marked; the report has every figure."""
    from edgeml.converters.report import figure

    for build in result.builds:
        title = f"{build.profile.name}: {build.bundle_path.name if build.passed else 'FAILED'}"
        table = Table(title=title, title_justify="left")
        primary = "accuracy" if build.source_task == "classification" else "r2"
        for column in ("candidate", "status", primary, "drop", "bundle bytes", "p50 ms"):
            table.add_column(column, no_wrap=True)
        for candidate in build.candidates:
            style = "bold green" if candidate.status == "chosen" else None
            table.add_row(
                candidate.name,
                candidate.status,
                figure(candidate.metrics.get(primary)),
                figure(candidate.drop_points),
                figure(candidate.bundle_size or None),
                figure(candidate.latency.get("single_row_ms_p50")),
                style=style,
            )
        stdout.print(table)
        for candidate in build.candidates:
            if candidate.reason:
                stderr.print(
                    f"  {candidate.name} {candidate.status}: {escape(candidate.reason)}",
                    style="dim",
                    highlight=False,
                )
        if not build.passed:
            stderr.print(
                f"[red]{build.profile.name}:[/red] {escape(build.failure())}", highlight=False
            )
        for note in build.notes:
            stderr.print(f"note ({build.profile.name}): {escape(note)}", highlight=False)
