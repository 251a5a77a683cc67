"""Render the "agent" benchmark: a markdown section and a terminal table."""

from __future__ import annotations

from bench_agent import AgentBenchmark
from machine import Environment, own_processes_note
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

    def rounds(which: int) -> str:
        ratios = sorted(r[which] for r in b.round_ratios)
        return f"; rounds {ratios[0]:.2f}-{ratios[-1]:.2f}x" if len(ratios) > 1 else ""

    return [
        ("bare onnxruntime, 1-row p50", f"{b.bare.single_row_ms_p50:.4f} ms", "—", "—"),
        ("bare onnxruntime, batch 1,024", f"{b.bare.batch_rows_per_s:,.0f} rows/s", "—", "—"),
        (
            "scoring engine (Python API), 1-row p50",
            f"{b.engine.single_row_ms_p50:.4f} ms ({engine_p50:.2f}x bare{rounds(0)})",
            f"≤ {TARGETS['engine_p50']}x bare",
            met(engine_p50 <= TARGETS["engine_p50"]),
        ),
        (
            "scoring engine, batch 1,024",
            f"{b.engine.batch_rows_per_s:,.0f} rows/s ({engine_batch:.2f}x bare{rounds(1)})",
            f"≥ {TARGETS['engine_batch']}x bare",
            met(engine_batch >= TARGETS["engine_batch"]),
        ),
        (
            "local API over loopback HTTP, 1-row p50 end to end (a minimal keep-alive client)",
            f"{b.raw_single_p50_ms:.3f} ms ({b.http_calls} calls)",
            f"≤ {TARGETS['http_p50_ms']} ms",
            met(b.raw_single_p50_ms <= TARGETS["http_p50_ms"]),
        ),
        (
            "the same through Python's http.client",
            f"{b.http_single_p50_ms:.3f} ms ({b.http_calls} calls)",
            "—",
            "—",
        ),
        (
            "`GET /v1/health` (a cached answer: HTTP over loopback and nothing else)",
            f"{b.raw_health_p50_ms:.3f} ms",
            "—",
            "—",
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
        "scoring engine in the benchmark's own process, in the same run, taking turns over three "
        "rounds (the medians of the rounds count; each round's own ratio is shown beside "
        "them). This host is x86-64, not a Raspberry Pi: the ratios carry over, the absolute "
        "figures do not.",
        "",
        *env.markdown_lines(),
        own_processes_note(
            "the agent, Mosquitto and the `edgeml agent install` call",
            b.children_cpu_s,
            b.total_s,
            env.others_busy_cores,
        ),
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
        *[f"| {a} | {m} | {t} | {ok} |" for a, m, t, ok in rows(b)],
        "",
        "The HTTP figures are p50 over one connection each, each kind of call making runs of "
        "calls in turn with the others, over four rounds. *A minimal keep-alive client* sends "
        "the request's bytes (prepared once) and reads the answer by its Content-Length, as a "
        "program in C or `curl` would: the figure is the agent and the loopback, with next to "
        "nothing of the client. Python's `http.client` adds its own request building and "
        "header parsing (an email parser) to every call; a caller written with it pays that "
        "too. `GET /v1/health` answers a cached document: the round trip of HTTP over loopback "
        "(two threads woken, two system calls each way) that every call pays before any "
        "scoring.",
        "",
        "RSS is the daemon's `VmRSS`. It checks signatures (the active bundle's at start, each "
        "new bundle's) in a short-lived child process (`edgeml.toolkit.signatures`, about 50 ms "
        "here), so it never loads `cryptography`, which held about 8 MiB of it for as long as "
        'it ran (82.8 MiB loaded, 70.2 idle before; docs/agent.md, "Footprint").',
    ]
    return "\n".join(lines)


def rich_table(b: AgentBenchmark) -> Table:
    table = Table(title="agent footprint and latency")
    for column in ("figure", "measured", "target", "met"):
        table.add_column(column, overflow="fold")
    for cells in rows(b):
        table.add_row(*cells)
    return table
