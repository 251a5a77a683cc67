"""``edgeml score``: score a file with a verified bundle, offline, and summarise the drift."""

from __future__ import annotations

import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from edgeml.toolkit.batch_io import DEFAULT_BATCH_SIZE
from edgeml.toolkit.batch_scoring import (
    DRIFT_SAMPLE,
    ON_INVALID,
    ScoreOptions,
    ScoreProgress,
    score_file,
)
from edgeml.toolkit.cli.output import handles_errors, print_json, stderr, stdout, warn
from edgeml.toolkit.errors import InputError
from edgeml.toolkit.scoring import ScoringEngine


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C does, so temporary files are removed on the way out."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (a test runner): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@handles_errors
def score(
    bundle: Annotated[Path, typer.Argument(help="The .edgeml bundle.")],
    input_file: Annotated[
        Path, typer.Argument(metavar="INPUT", help="CSV, TSV, JSON Lines, Parquet or .npy.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Where the predictions go; the format follows the extension."
        ),
    ],
    trust: Annotated[
        Path, typer.Option("--trust", help="A .pub file, a folder of them, or a trust document.")
    ],
    on_invalid: Annotated[
        str,
        typer.Option(
            "--on-invalid",
            help="What invalid rows do: fail (exit 2, no output), skip, or quarantine "
            "(written with their reasons to a side file).",
        ),
    ] = "fail",
    strict_range: Annotated[
        bool,
        typer.Option(
            "--strict-range", help="A value outside the validation range makes its row invalid."
        ),
    ] = False,
    id_column: Annotated[
        str | None,
        typer.Option("--id-column", help="A column copied, as written, to the output."),
    ] = None,
    quarantine: Annotated[
        Path | None,
        typer.Option(
            "--quarantine",
            help="The side file of --on-invalid quarantine "
            "(default: OUTPUT's stem + .quarantine.jsonl).",
        ),
    ] = None,
    drift_report: Annotated[
        Path | None,
        typer.Option("--drift-report", help="Write an HTML drift report to this file."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Rows per batch; memory grows with it.")
    ] = DEFAULT_BATCH_SIZE,
    drift_sample: Annotated[
        int,
        typer.Option(
            "--drift-sample",
            help="Rows of each batch counted for drift, spread evenly (0: every row).",
        ),
    ] = DRIFT_SAMPLE,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="Cores the model uses (default: the profile's; 0: all): on CPU, that many "
            "parts of each batch run at once, one thread each.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON document.")
    ] = False,
) -> None:
    """Score INPUT with a verified bundle into OUTPUT, checking every row against the contract.

    The bundle is verified before any row is read (exit 3 if it does not). Invalid rows stop
    the run (exit 2, no output) unless --on-invalid skips or quarantines them. The output is
    written to a temporary file and renamed at the end. The summary gives rows, rows/s,
    invalid rows and the drift of every feature against the bundle's baseline.
    """
    if on_invalid not in ON_INVALID:
        raise InputError(f"--on-invalid must be one of {', '.join(ON_INVALID)}, got {on_invalid!r}")
    if quarantine is not None and on_invalid != "quarantine":
        raise InputError("--quarantine FILE goes with --on-invalid quarantine")
    if threads is not None and threads < 0:
        raise InputError(f"--threads must be 0 (every core) or more, got {threads}")
    options = ScoreOptions(
        on_invalid=on_invalid,
        strict_range=strict_range,
        id_column=id_column,
        batch_size=batch_size,
        quarantine_path=quarantine,
        drift_report=drift_report,
        drift_sample=drift_sample,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        engine = ScoringEngine.open(bundle, trust, threads=threads, split_batches=True)
    for warning in caught:
        warn(str(warning.message))
    with (
        _terminate_as_exit(),
        Progress(
            TextColumn("scoring {task.fields[name]}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]:,} rows"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("score", total=None, name=input_file.name, rows=0)

        def on_progress(update: ScoreProgress) -> None:
            progress.update(task, completed=update.done, total=update.total, rows=update.rows)

        summary = score_file(engine, input_file, output, options, on_progress)
    for note in summary.warnings:
        warn(note)
    if json_output:
        print_json(summary.to_dict())
        return
    _print_summary(summary)


def _print_summary(summary: Any) -> None:
    facts = Table(title=f"scored {summary.input} with {summary.bundle_id}", show_header=False)
    facts.add_column("what")
    facts.add_column("value", justify="right")
    facts.add_row("rows", f"{summary.rows:,}")
    facts.add_row("rows/s", f"{summary.rows_per_second:,.0f}")
    facts.add_row("seconds", f"{summary.seconds:.2f}")
    facts.add_row("scored", f"{summary.scored:,}")
    facts.add_row("invalid rows", f"{summary.invalid_rows:,} ({summary.on_invalid})")
    facts.add_row("output", summary.output)
    runs = f", {summary.concurrent_runs} parts at once" if summary.concurrent_runs > 1 else ""
    facts.add_row("model", f"{', '.join(summary.providers)}{runs}")
    if summary.quarantine:
        facts.add_row("quarantine", summary.quarantine)
    if summary.drift_report:
        facts.add_row("drift report", summary.drift_report)
    if summary.unknown_columns:
        facts.add_row("unknown columns (passed over)", ", ".join(summary.unknown_columns))
    stdout.print(facts)
    drift = summary.drift
    if drift is None:
        return
    table = Table(
        title=f"drift against the baseline over {drift.rows:,} rows "
        f"(flag: PSI above {drift.threshold})"
    )
    for column in ("feature", "PSI", "KS", "missing", "out of range", "flag"):
        table.add_column(column, justify="left" if column in ("feature", "flag") else "right")
    for feature in drift.features:
        out = summary.out_of_range.get(feature.name)
        table.add_row(
            feature.name,
            "—" if feature.psi is None else f"{feature.psi:.3f}",
            "—" if feature.ks is None else f"{feature.ks:.3f}",
            f"{feature.missing_actual:.1%}",
            f"{out.total:,}" if out else "0",
            "[bold red]drifted[/bold red]" if feature.drifted else "",
        )
    if drift.prediction is not None:
        p = drift.prediction
        table.add_row(
            "(predictions)",
            "—" if p.psi is None else f"{p.psi:.3f}",
            "—" if p.ks is None else f"{p.ks:.3f}",
            "",
            "",
            "[bold red]drifted[/bold red]" if p.drifted else "",
        )
    stdout.print(table)
