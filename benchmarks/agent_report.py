"""Render the "agent" benchmark: a markdown section and a terminal table."""

from __future__ import annotations

from bench_agent import AgentBenchmark
from machine import Environment
from rich.table import Table

TARGETS = {
    "engine_p50": 2.0,
    "engine_batch": 0.9,
    "http_p50_ms": 0.3,
    "rss_mib": 80.0,
    "first_answer_s": 2.0,
}


def rows(b: AgentBenchmark) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, met) rows."""
    engine_p50 = b.engine.single_row_ms_p50 / b.bare.single_row_ms_p50
    engine_batch = b.engine.batch_rows_per_s / b.bare.batch_rows_per_s

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return [
        ("bare onnxruntime, 1-row p50", f"{b.bare.single_row_ms_p50:.4f} ms", "—", "—"),
        ("bare onnxruntime, batch 1,024", f"{b.bare.batch_rows_per_s:,.0f} rows/s", "—", "—"),
        (
            "scoring engine (Python API), 1-row p50",
            f"{b.engine.single_row_ms_p50:.4f} ms ({engine_p50:.2f}x bare)",
            f"≤ {TARGETS['engine_p50']}x bare",
            met(engine_p50 <= TARGETS["engine_p50"]),
        ),
        (
            "scoring engine, batch 1,024",
            f"{b.engine.batch_rows_per_s:,.0f} rows/s ({engine_batch:.2f}x bare)",
            f"≥ {TARGETS['engine_batch']}x bare",
            met(engine_batch >= TARGETS["engine_batch"]),
        ),
        (
            "local API over loopback HTTP, 1-row p50 end to end (http.client, keep-alive)",
            f"{b.http_single_p50_ms:.3f} ms ({b.http_calls} calls)",
            f"≤ {TARGETS['http_p50_ms']} ms",
            met(b.http_single_p50_ms <= TARGETS["http_p50_ms"]),
        ),
        ("agent RSS, idle (no bundle)", f"{b.rss_idle_mib:.1f} MiB", "—", "—"),
        (
            "agent RSS, MLP loaded, after serving",
            f"{b.rss_loaded_mib:.1f} MiB",
            f"≤ {TARGETS['rss_mib']:.0f} MiB",
            met(b.rss_loaded_mib <= TARGETS["rss_mib"]),
        ),
        (
            "start to first answered prediction",
            f"{b.first_answer_s:.2f} s",
            f"≤ {TARGETS['first_answer_s']:.0f} s",
            met(b.first_answer_s <= TARGETS["first_answer_s"]),
        ),
    ]


def markdown_body(b: AgentBenchmark, env: Environment) -> str:
    """The section between the agent benchmark's markers."""
    lines = [
        f"The device agent serving `{b.bundle_id}` (the reference MLP (256, 128) on digits, "
        "built for raspberry-pi-4: int8), run as a real `edgeml agent run` process with a real "
        "Mosquitto on loopback and measured from outside; the bare onnxruntime session and the "
        "scoring engine in the benchmark's own process, in the same run. This host is x86-64, "
        "not a Raspberry Pi: the ratios carry over, the absolute figures do not.",
        "",
        *env.markdown_lines(),
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
        *[f"| {a} | {m} | {t} | {ok} |" for a, m, t, ok in rows(b)],
        "",
        "The HTTP figure includes the client's own request building and response parsing "
        "(`http.client`), which is a good part of it; a device's own caller pays it too.",
    ]
    return "\n".join(lines)


def rich_table(b: AgentBenchmark) -> Table:
    table = Table(title="agent footprint and latency")
    for column in ("figure", "measured", "target", "met"):
        table.add_column(column, overflow="fold")
    for cells in rows(b):
        table.add_row(*cells)
    return table
