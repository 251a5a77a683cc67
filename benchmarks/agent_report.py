"""Render the "agent" benchmark: a markdown section and a terminal table."""

from __future__ import annotations

from bench_agent import BATCH_PER_TURN, SINGLE_PER_TURN, AgentBenchmark
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
    c = b.comparison

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    def spread(ratio: tuple[float, float, float]) -> str:
        return f"{ratio[0]:.2f}x; turns {ratio[1]:.2f}-{ratio[2]:.2f}x"

    return [
        (
            "bare onnxruntime: the engine's own session, `session.run` on float32 rows: 1-row p50",
            f"{c.bare.single_row_ms_p50:.4f} ms",
            "—",
            "—",
        ),
        (
            "the same session, batch 1,024",
            f"{c.bare.batch_rows_per_s:,.0f} rows/s",
            "—",
            "—",
        ),
        (
            "scoring engine (Python API), 1-row p50",
            f"{c.engine.single_row_ms_p50:.4f} ms ({spread(c.single_ratio)} bare)",
            f"≤ {TARGETS['engine_p50']}x bare",
            met(c.single_ratio[0] <= TARGETS["engine_p50"]),
        ),
        (
            "scoring engine, batch 1,024",
            f"{c.engine.batch_rows_per_s:,.0f} rows/s ({spread(c.batch_ratio)} bare)",
            f"≥ {TARGETS['engine_batch']}x bare",
            met(c.batch_ratio[0] >= TARGETS["engine_batch"]),
        ),
        (
            "scoring engine given float64 rows (it converts them): 1-row p50 / batch 1,024",
            f"{c.engine_float64.single_row_ms_p50:.4f} ms ({c.single_ratio_float64[0]:.2f}x) / "
            f"{c.engine_float64.batch_rows_per_s:,.0f} rows/s "
            f"({c.batch_ratio_float64[0]:.2f}x)",
            "—",
            "—",
        ),
        (
            "bare session with onnxruntime's default options (idle workers spin), timed on its "
            "own: 1-row p50 / batch 1,024",
            f"{c.bare_spinning.single_row_ms_p50:.4f} ms / "
            f"{c.bare_spinning.batch_rows_per_s:,.0f} rows/s",
            "—",
            "—",
        ),
        (
            "CPU time per 1,024-row request, requests 2 ms apart: the engine's options / "
            "onnxruntime's defaults",
            f"{c.cpu_ms_per_batch_sleeping:.2f} ms / {c.cpu_ms_per_batch_spinning:.2f} ms",
            "—",
            "—",
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
    c = b.comparison
    lines = [
        f"The device agent serving `{b.bundle_id}` (the reference MLP (256, 128) on digits, "
        "built for raspberry-pi-4: int8), run as a real `edgeml agent run` process with a real "
        "Mosquitto on loopback and measured from outside; the scoring engine's Python API "
        "against bare onnxruntime sessions on the same model, in the benchmark's own process, "
        "in the same run. This host is x86-64, not a Raspberry Pi: the ratios carry over, the "
        "absolute figures do not.",
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
        "",
        "*Engine against bare.* The engine's `predict` and its own onnxruntime session called "
        f"bare (`session.run` on a prepared array; {b.comparison.threads} intra-op threads, as "
        "the profile says; idle workers that sleep) take turns on the same float32 rows (the "
        f"model's input type): {SINGLE_PER_TURN} single-row calls or {BATCH_PER_TURN} batch "
        "runs each, the "
        "order alternating, over "
        f"{b.comparison.turns[0]} and {b.comparison.turns[1]} turns. A ratio is the median of "
        "the turns' ratios (each turn's medians, both sides within milliseconds of each other, "
        "so that a host whose speed moves from second to second moves both); the 10th and 90th "
        "percentiles of the turns' ratios are beside it. One session on both sides: the ratio "
        "is what the engine adds to a run (the contract check, the packaging of the answer), "
        "not a difference between two sessions or their thread pools.",
        "",
        "*Idle workers.* onnxruntime's default lets its workers spin for a while after each "
        "run, waiting for more work; the engine's sessions let them sleep "
        "(`edgeml.toolkit.scoring.scoring_session`). Back to back, spinning may save the time "
        "it takes to wake them (timed on its own, because spinning workers take the cores from "
        "whatever runs next: here its batch throughput was "
        f"{c.bare_spinning.batch_rows_per_s / c.bare.batch_rows_per_s:.2f}x the sleeping "
        "session's; on this host it has moved between about 1x and 1.5x from run to run); on a "
        "device that answers requests one at a time, the workers spin after every request, "
        f"which cost {c.cpu_ms_per_batch_spinning / c.cpu_ms_per_batch_sleeping:.1f}x the CPU "
        "time per request here (the CPU line, requests 2 ms apart).",
        "",
        "Until 2026-11-29 the bare side was a separate session with onnxruntime's default "
        "options (spinning workers), the engine was given float64 rows, and the two were timed "
        "one after the other in three rounds; figures on this page from before that day are "
        "not comparable with these.",
    ]
    return "\n".join(lines)


def rich_table(b: AgentBenchmark) -> Table:
    table = Table(title="agent footprint and latency")
    for column in ("figure", "measured", "target", "met"):
        table.add_column(column, overflow="fold")
    for cells in rows(b):
        table.add_row(*cells)
    return table
