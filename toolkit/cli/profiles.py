"""``edgeml profiles``: list the built-in hardware profiles and show one.

A thin shell over :mod:`edgeml.toolkit.profiles`: it loads, renders and maps ``ProfileError``
to exit code 2 through ``handles_errors``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from edgeml.toolkit.cli.output import handles_errors, print_json, stdout
from edgeml.toolkit.profiles import Budgets, HardwareProfile, list_profiles, load_profile

app = typer.Typer(
    help="List and show hardware profiles: the targets a bundle is built for.",
    no_args_is_help=True,
)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of a table.")
]


def _number(value: float) -> str:
    return f"{value:g}"


def _format_budgets(budgets: Budgets) -> str:
    """One line for people: ``size ≤ 50 MB, accuracy drop ≤ 1 pt, latency ≤ 10 ms``."""
    parts = []
    if budgets.max_size_mb is not None:
        parts.append(f"size ≤ {_number(budgets.max_size_mb)} MB")
    if budgets.max_accuracy_drop is not None:
        parts.append(f"accuracy drop ≤ {_number(budgets.max_accuracy_drop)} pt")
    if budgets.max_latency_ms is not None:
        parts.append(f"latency ≤ {_number(budgets.max_latency_ms)} ms")
    return ", ".join(parts) if parts else "no limits"


def _budgets_cell(budgets: Budgets) -> str:
    figures = (
        (budgets.max_size_mb, "MB"),
        (budgets.max_accuracy_drop, "pt"),
        (budgets.max_latency_ms, "ms"),
    )
    return " / ".join(
        "-" if value is None else f"{_number(value)} {unit}" for value, unit in figures
    )


def _short_provider(name: str) -> str:
    return name.removesuffix("ExecutionProvider")


@app.command("list")
@handles_errors
def list_command(json_output: JsonOption = False) -> None:
    """List the built-in hardware profiles."""
    profiles = list_profiles()
    if json_output:
        print_json([profile.to_dict() for profile in profiles])
        return
    table = Table(
        title="Hardware profiles",
        caption="budgets: bundle size / accuracy drop / single-row p50 latency; - is no limit",
    )
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("arch", no_wrap=True)
    table.add_column("providers")
    table.add_column("precisions", no_wrap=True)
    table.add_column("budgets", no_wrap=True)
    for profile in profiles:
        table.add_row(
            Text(profile.name),
            Text(profile.architecture),
            Text(", ".join(_short_provider(p) for p in profile.execution_providers)),
            Text(", ".join(profile.precisions)),
            Text(_budgets_cell(profile.budgets)),
        )
    stdout.print(table)


def _render(profile: HardwareProfile) -> Table:
    quantization = profile.quantization
    tolerance = profile.tolerance
    rows = [
        ("description", profile.description or "-"),
        ("source", profile.source),
        ("architecture", profile.architecture),
        ("execution providers", ", ".join(profile.execution_providers)),
        ("precisions", ", ".join(profile.precisions) + "  (in order of preference)"),
        ("max opset", str(profile.max_opset)),
        ("threads", str(profile.threads) if profile.threads else "0 (all cores)"),
        ("graph optimization", profile.graph_optimization_level),
        (
            "quantization",
            f"{quantization.mode}, weights {quantization.weight_type}, "
            f"activations {quantization.activation_type}, "
            f"per-channel {'yes' if quantization.per_channel else 'no'}, "
            f"reduce-range {'yes' if quantization.reduce_range else 'no'}, "
            f"calibration {quantization.calibration_method}",
        ),
        (
            "tolerance",
            f"label agreement ≥ {_number(tolerance.label_agreement)}, "
            f"probability atol {_number(tolerance.probability_atol)}, "
            f"value rtol {_number(tolerance.value_rtol)}, "
            f"value atol {_number(tolerance.value_atol)}",
        ),
        ("budgets", _format_budgets(profile.budgets)),
    ]
    grid = Table.grid(padding=(0, 2))
    grid.title = profile.name
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, value in rows:
        grid.add_row(Text(label), Text(value))
    return grid


@app.command("show")
@handles_errors
def show_command(
    name_or_path: Annotated[
        str,
        typer.Argument(
            metavar="NAME_OR_PATH",
            help="A built-in profile's name, or the path to a profile .toml file of your own.",
        ),
    ],
    json_output: JsonOption = False,
) -> None:
    """Show one hardware profile, built-in or from a TOML file, every default filled in."""
    profile = load_profile(name_or_path)
    if json_output:
        print_json(profile.to_dict())
        return
    stdout.print(_render(profile))
