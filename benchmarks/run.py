"""Run edgeml's benchmarks by hand and write their figures into docs/benchmarks.md.

Usage, from the repository root::

    .venv/bin/python benchmarks/run.py            # the real figures
    .venv/bin/python benchmarks/run.py --quick    # one repetition, short timings: a smoke run

Each benchmark measures in a temporary folder, prints a table, and rewrites only its own
section of the page (between its markers, ``docs_section``). The benchmarks are listed in
``BENCHMARKS``; each measures from the run's settings, then renders a markdown body and a
table from its figures and the environment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import agent_report
import fleet_report
import optimize_report
from bench_agent import AgentBenchmark, run_agent_benchmark
from bench_build import BuildBenchmark, run_build_benchmark
from bench_fleet import FleetBenchmark, FleetScale, run_fleet_benchmark
from bench_optimize import OptimizeBenchmark, run_optimize_benchmark
from build_report import markdown_body, rich_table
from docs_section import write_section
from machine import (
    BUSY_WARNING_CORES,
    CpuClock,
    Environment,
    describe_environment,
    wait_for_quiet,
)
from rich.console import Console
from rich.table import Table
from timing import TimingSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAGE = REPO_ROOT / "docs" / "benchmarks.md"
FULL_REPETITIONS = 3


@dataclass(frozen=True)
class RunSettings:
    """What every benchmark of one run shares."""

    repetitions: int
    timing: TimingSettings
    environment: Environment
    work: Path
    log: Callable[[str], None]


@dataclass(frozen=True)
class Outcome:
    """A benchmark's figures rendered: its page section and its terminal table."""

    markdown: str
    table: Table


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as the runner knows it: its marker name, its heading, how to measure and
    how to render what it measured (with the environment as it was around the measuring)."""

    name: str
    title: str
    measure: Callable[[RunSettings], Any]
    render: Callable[[Any, Environment], Outcome]


def measure_build(settings: RunSettings) -> BuildBenchmark:
    """The "build" benchmark's measurements (``bench_build``)."""
    return run_build_benchmark(settings.work, settings.repetitions, settings.timing, settings.log)


def render_build(result: BuildBenchmark, environment: Environment) -> Outcome:
    """The "build" benchmark's page section and table (``build_report``)."""
    return Outcome(markdown_body(result, environment), rich_table(result))


def measure_optimize(settings: RunSettings) -> OptimizeBenchmark:
    """The "optimize" benchmark's measurements (``bench_optimize``)."""
    return run_optimize_benchmark(settings.work, settings.timing, settings.log)


def render_optimize(result: OptimizeBenchmark, environment: Environment) -> Outcome:
    """The "optimize" benchmark's page section and table (``optimize_report``)."""
    return Outcome(
        optimize_report.markdown_body(result, environment), optimize_report.rich_table(result)
    )


def measure_agent(settings: RunSettings) -> AgentBenchmark:
    """The "agent" benchmark's measurements (``bench_agent``)."""
    return run_agent_benchmark(settings.work, settings.timing, settings.log)


def render_agent(result: AgentBenchmark, environment: Environment) -> Outcome:
    """The "agent" benchmark's page section and table (``agent_report``)."""
    return Outcome(agent_report.markdown_body(result, environment), agent_report.rich_table(result))


def measure_fleet(settings: RunSettings) -> FleetBenchmark:
    """The "fleet" benchmark's measurements (``bench_fleet``); --quick: 200 devices."""
    quick = settings.repetitions < FULL_REPETITIONS
    scale = FleetScale.quick() if quick else FleetScale()
    return run_fleet_benchmark(settings.work, scale, settings.log)


def render_fleet(result: FleetBenchmark, environment: Environment) -> Outcome:
    """The "fleet" benchmark's page section and table (``fleet_report``)."""
    return Outcome(fleet_report.markdown_body(result, environment), fleet_report.rich_table(result))


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "build",
        "Build: `edgeml build` and the bundled model's runtime",
        measure_build,
        render_build,
    ),
    Benchmark(
        "agent",
        "Agent: footprint and serving latency on a device profile",
        measure_agent,
        render_agent,
    ),
    Benchmark(
        "optimize",
        "Optimize: every pass against fp32, per reference model",
        measure_optimize,
        render_optimize,
    ),
    Benchmark(
        "fleet",
        "Fleet: a rollout to 1,000 simulated devices and the telemetry ingest",
        measure_fleet,
        render_fleet,
    ),
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one repetition and short timings (a smoke run; the figures are rough)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[b.name for b in BENCHMARKS],
        help="run only this benchmark (repeatable); default: all",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each benchmark, wait up to SECONDS for other processes to leave the CPUs",
    )
    parser.add_argument(
        "--page",
        type=Path,
        default=DEFAULT_PAGE,
        help=f"the markdown page to update (default: {DEFAULT_PAGE.relative_to(REPO_ROOT)})",
    )
    return parser.parse_args(argv)


def run_benchmark(benchmark: Benchmark, quick: bool, console: Console) -> Outcome:
    """Run one benchmark in a temporary folder, with the environment as it was around it."""
    environment = describe_environment(REPO_ROOT)
    clock = CpuClock.read()
    with tempfile.TemporaryDirectory(prefix=f"edgeml-bench-{benchmark.name}-") as work:
        settings = RunSettings(
            repetitions=1 if quick else FULL_REPETITIONS,
            timing=TimingSettings.quick() if quick else TimingSettings(),
            environment=environment,
            work=Path(work),
            log=lambda line: console.print(f"[dim]{line}[/dim]"),
        )
        result = benchmark.measure(settings)
    others = clock.others_busy_cores(CpuClock.read())
    if others is not None and others >= BUSY_WARNING_CORES:
        console.print(
            f"[yellow]warning: other processes kept {others:.2f} cores busy during "
            f"'{benchmark.name}'; its timings are skewed (try --wait-quiet 600)[/yellow]"
        )
    return benchmark.render(result, replace(environment, others_busy_cores=others))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks, print their tables, update the page."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    for benchmark in chosen:
        if args.wait_quiet > 0:
            wait_for_quiet(
                args.wait_quiet,
                lambda busy: console.print(
                    f"[dim]waiting: others keep {busy:.2f} cores busy[/dim]"
                ),
            )
        outcome = run_benchmark(benchmark, args.quick, console)
        Console().print(outcome.table)
        write_section(args.page, benchmark.name, benchmark.title, outcome.markdown)
        console.print(f"wrote section '{benchmark.name}' of {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
