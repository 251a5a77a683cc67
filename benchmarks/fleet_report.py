"""Render the "fleet" benchmark: a markdown section and a terminal table."""

from __future__ import annotations

from collections.abc import Callable

from bench_fleet import (
    STAGES,
    FleetBenchmark,
    IngestFigures,
    LoadFigures,
    ProcessFigures,
    StageTiming,
)
from machine import Environment, own_processes_note
from rich.table import Table


def _n(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _s(value: float | None) -> str:
    return "not within the time-out" if value is None else f"{value:.2f} s"


def _stage_rows(stages: tuple[StageTiming, ...]) -> list[tuple[str, str]]:
    """A row per stage of a rollout: its size, its devices, how long it took and how it ended."""
    return [
        (
            f"stage {stage.index + 1} (`{stage.size}`): {_n(stage.devices)} devices in all",
            f"{_s(stage.seconds)}, {stage.outcome}",
        )
        for stage in stages
    ]


def _cores(p: ProcessFigures | None) -> str:
    if p is None:
        return "—"
    return f"{p.cores:.2f} cores ({p.cpu_s:.2f} s CPU over {p.wall_s:.1f} s)"


def _per_window_us(p: ProcessFigures | None, windows: float | None) -> float | None:
    if p is None or not windows:
        return None
    return p.cpu_s / windows * 1e6


def _nominal(b: FleetBenchmark, ingest: IngestFigures) -> float:
    return b.scale.devices / ingest.interval_s


def rollout_rows(b: FleetBenchmark) -> list[tuple[str, str]]:
    """(figure, measured) rows of the rollout."""
    r = b.rollout
    rows = [
        ("devices", f"{b.scale.devices:,} ({b.scale.canaries} tagged canary)"),
        (
            "bundle",
            f"`{b.bundle_id}`, {b.bundle_bytes:,} bytes "
            f"({r.chunks_expected // b.scale.devices} chunk(s) per device)",
        ),
        ("state at the end", r.state),
        (
            "`edgeml fleet rollout start` to `succeeded` (wall clock)",
            f"**{r.seconds:.2f} s** (the command itself {r.command_s:.2f} s)",
        ),
        ("rollout created to its last stage passed (its stage log)", _s(r.document_s)),
    ]
    rows += _stage_rows(r.stages)
    rows += [
        ("install commands sent", f"{r.commands_sent:,}"),
        ("chunks served", f"{r.chunks:,} (expected {r.chunks_expected:,})"),
        (
            "installs succeeded / failed (devices' results)",
            f"{r.installs_succeeded:,} / {r.installs_failed:,}",
        ),
        ("devices installed in the rollout's document", f"{r.installed:,}"),
        (
            "telemetry meanwhile: windows sent / stored",
            f"{r.windows_offered:,} / {r.windows_stored:,}",
        ),
        ("fleet service CPU", _cores(r.fleet)),
        (
            "fleet service RSS: all devices registered / end of rollout / highest sampled",
            f"{b.fleet_rss_registered_mib:.1f} / {r.fleet.rss_mib:.1f} / "
            f"{r.fleet.rss_max_mib:.1f} MiB",
        ),
        ("bare subscriber CPU", _cores(r.bare)),
        ("Mosquitto CPU", _cores(r.broker)),
        (
            "simulator CPU (its driver thread)",
            f"{r.simulator_cpu_s / r.seconds:.2f} cores ({r.simulator_cpu_s:.2f} s)",
        ),
    ]
    return rows


def ingest_rows(b: FleetBenchmark) -> list[tuple[str, ...]]:
    """Rows of the steady ingest table: a figure, then one cell per interval."""

    def row(name: str, cell: Callable[[IngestFigures], str]) -> tuple[str, ...]:
        return (name, *(cell(i) for i in b.ingest))

    def cpu(p: ProcessFigures, rate: float) -> str:
        us = _per_window_us(p, rate * p.wall_s)
        return f"{p.cores:.2f} cores, {_n(us)} µs per window"

    def backlog(i: IngestFigures) -> str:
        return f"{i.stored_backlog:,} / {i.bare_backlog:,}"

    def catch_up(i: IngestFigures) -> str:
        return f"{_s(i.catch_up_s)} / {_s(i.bare_catch_up_s)}"

    return [
        row("nominal rate (devices / interval)", lambda i: f"{_nominal(b, i):,.0f}/s"),
        row(
            "offered: windows/s handed to the devices' clients",
            lambda i: f"{i.offered_per_s:,.0f}/s",
        ),
        row("**fleet: windows stored/s**", lambda i: f"**{i.stored_per_s:,.0f}/s**"),
        row("**bare subscriber: messages/s**", lambda i: f"**{i.bare_per_s:,.0f}/s**"),
        row("**fleet / bare**", lambda i: f"**{i.ratio:.3f}**"),
        row("backlog at the end of the span: fleet / bare (windows)", backlog),
        row("after the devices stopped, all there: fleet / bare", catch_up),
        row("fleet kept up", lambda i: "yes" if i.kept_up else "**no**"),
        row("fleet service CPU", lambda i: cpu(i.fleet, i.stored_per_s)),
        row("bare subscriber CPU", lambda i: cpu(i.bare, i.bare_per_s)),
        row(
            "fleet CPU per window / bare CPU per message",
            lambda i: _ratio_cpu(i.fleet, i.stored_per_s, i.bare, i.bare_per_s),
        ),
        row("Mosquitto CPU", lambda i: f"{i.broker.cores:.2f} cores"),
        row(
            "simulator CPU (its driver thread)",
            lambda i: f"{i.simulator_cpu_s / i.span_s:.2f} cores",
        ),
        row(
            "fleet service RSS: end of span / highest sampled",
            lambda i: f"{i.fleet.rss_mib:.1f} / {i.fleet.rss_max_mib:.1f} MiB",
        ),
        row("bare subscriber RSS", lambda i: f"{i.bare.rss_mib:.1f} MiB"),
    ]


def _ratio_cpu(
    fleet: ProcessFigures | None,
    fleet_rate: float | None,
    bare: ProcessFigures | None,
    bare_rate: float | None,
) -> str:
    if fleet is None or bare is None or not fleet_rate or not bare_rate:
        return "—"
    fleet_us = _per_window_us(fleet, fleet_rate * fleet.wall_s)
    bare_us = _per_window_us(bare, bare_rate * bare.wall_s)
    if not fleet_us or not bare_us:
        return "—"
    return f"{fleet_us / bare_us:.1f}x"


def drain_rows(b: FleetBenchmark) -> list[tuple[str, str, str]]:
    """(figure, fleet, bare) rows of the backlog drain."""
    d = b.drain
    fleet_us = _per_window_us(d.fleet, d.queued)
    bare_us = _per_window_us(d.bare, d.queued)
    return [
        ("windows queued by the broker", f"{d.queued:,}", f"{d.queued:,}"),
        ("first to last window received", _s(d.fleet_s), _s(d.bare_s)),
        ("**windows/s**", f"**{_n(d.fleet_per_s)}/s**", f"**{_n(d.bare_per_s)}/s**"),
        ("fleet / bare", f"{d.ratio:.3f}" if d.ratio else "—", ""),
        ("CPU", _cores(d.fleet), _cores(d.bare)),
        ("CPU per window", f"{_n(fleet_us)} µs", f"{_n(bare_us)} µs"),
        (
            "RSS at the end / process peak",
            f"{d.fleet.rss_mib:.1f} / {d.fleet.peak_mib:.1f} MiB" if d.fleet else "—",
            f"{d.bare.rss_mib:.1f} / {d.bare.peak_mib:.1f} MiB" if d.bare else "—",
        ),
    ]


GARBAGE_NOTES = {
    "not-json": "not UTF-8 JSON",
    "oversized": "300 KiB",
    "wrong-schema": "wrong schema",
    "huge-number": "huge numbers",
    "foreign-device": "another device's id",
    "duplicate-window": "a window again",
    "bogus-transfer": "transfer request, no command",
    "forged-result": "forged result",
}
MALFORMED = ("not-json", "oversized", "wrong-schema", "huge-number")


def _expected(load: LoadFigures, *kinds: str) -> int:
    return sum(load.garbage_by_kind.get(kind, 0) for kind in kinds)


def _slope_text(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f} MiB/min"


def _bounded_text(load: LoadFigures) -> str:
    verdict = load.rss_bounded
    if verdict is None:
        return "not judged (too few samples after the rollout)"
    return "yes" if verdict else "**no: it kept growing**"


def _after(load: LoadFigures) -> str:
    """What "after the rollout" means when the benchmark had to abort it."""
    return " (here: after the benchmark asked to abort it)" if load.aborted else ""


def _rss_series(load: LoadFigures, every_s: float = 5.0) -> str:
    """The fleet's RSS about every ``every_s`` seconds, in MiB."""
    picked, next_t = [], 0.0
    for sample in load.samples:
        if sample.t_s >= next_t:
            picked.append(f"{sample.fleet_rss_mib:.0f}")
            next_t = sample.t_s + every_s - 0.5
    return ", ".join(picked)


def load_rows(b: FleetBenchmark) -> list[tuple[str, str]]:
    """(figure, measured) rows of the load phase with misbehaving devices."""
    load = b.load
    clean = b.rollout
    steady = load.steady()
    rollout = f"**{load.seconds:.2f} s**, {load.state}"
    if load.aborted:
        rollout = (
            f"**not finished within {load.seconds:.0f} s** ({load.state}); aborted by the benchmark"
        )
    states = ", ".join(f"{n:,} {state}" for state, n in sorted(load.device_states.items()))
    installed = "; ".join(
        f"{role}: {done} of {total}"
        for role, (done, total) in load.misbehaving_installed.items()
        if total
    )
    kinds = ", ".join(
        f"{GARBAGE_NOTES.get(kind, kind)} {n:,}" for kind, n in load.garbage_by_kind.items()
    )
    rows = [
        (
            "devices",
            f"{b.scale.devices:,}, each a window every {load.interval_s:g} s "
            f"({b.scale.devices / load.interval_s:,.0f}/s nominal)",
        ),
        (
            "misbehaving",
            f"{load.garbage_devices} send garbage, {load.garbage_per_s:g} messages/s each; "
            f"{load.storm_devices} drop their connection every "
            f"{load.reconnect_every_s / 2:g} to {load.reconnect_every_s * 1.5:g} s and reconnect "
            f"at once; {load.flood_devices} send {load.flood_windows_per_s:g} windows/s",
        ),
        (
            "`edgeml fleet rollout start` to `succeeded`, under load",
            f"{rollout} (the clean rollout above: {clean.seconds:.2f} s, zero soak)",
        ),
        ("rollout created to its last stage passed (its stage log)", _s(load.document_s)),
    ]
    rows += _stage_rows(load.stages)
    rows += [
        ("the rollout's devices at the end", states or "—"),
        ("misbehaving devices that installed", installed or "—"),
        (
            "windows of the previous bundle received in the hour before the rollout",
            f"{load.baseline_windows:,}",
        ),
        (
            "**windows offered / stored per second** (first to last sample)",
            f"**{load.offered_per_s:,.0f}/s / {load.stored_per_s:,.0f}/s**",
        ),
        (
            "backlog (offered, not yet stored): at the end / highest sampled",
            f"{load.backlog_end:,} / {load.backlog_max:,} windows",
        ),
        (
            "after the devices stopped: every window stored",
            f"{_s(load.catch_up_s)}"
            + (f"; **{load.missing:,} of {load.offered:,} missing**" if load.missing else "")
            + f" ({load.offered:,} windows in the phase)",
        ),
        ("windows the devices' clients dropped (queue full)", f"{load.windows_dropped:,}"),
        ("garbage sent, by kind", f"{load.garbage_sent:,}: {kinds}"),
        (
            "the fleet logged as dropped: malformed / naming another device",
            f"{load.logged_dropped:,} (sent {_expected(load, *MALFORMED):,}) / "
            f"{load.logged_foreign:,} (sent {_expected(load, 'foreign-device'):,})",
        ),
        (
            "transfer requests refused (no such command)",
            f"{load.logged_bogus_transfers:,} (sent {_expected(load, 'bogus-transfer'):,})",
        ),
        (
            "connections dropped / reconnected",
            f"{load.connection_drops:,} / {load.reconnects:,}",
        ),
        (
            "fleet service at the end",
            ("running" if load.fleet_alive else "**exited**")
            + f", {load.logged_errors} errors logged",
        ),
        ("fleet service CPU", _cores(load.fleet)),
        ("Mosquitto CPU", _cores(load.broker)),
        (
            "simulator CPU (its driver thread)",
            f"{load.simulator_cpu_s / load.span_s:.2f} cores ({load.simulator_cpu_s:.2f} s)",
        ),
        (
            "**fleet service RSS**: start / highest during the rollout / highest / end",
            f"**{load.rss_start_mib:.1f} / {load.rss_rollout_max_mib:.1f} / "
            f"{load.rss_max_mib:.1f} / {load.rss_end_mib:.1f} MiB**",
        ),
        (
            f"fleet service RSS after the rollout{_after(load)} ({len(steady)} samples): trend; "
            "bounded",
            f"{_slope_text(load.rss_slope_mib_per_min)}; {_bounded_text(load)}",
        ),
        ("fleet service RSS about every 5 s (MiB)", _rss_series(load)),
        (
            "Mosquitto RSS: start / end",
            (
                f"{load.samples[0].broker_rss_mib:.1f} / {load.samples[-1].broker_rss_mib:.1f} MiB"
                if load.samples
                else "—"
            ),
        ),
    ]
    return rows


def load_findings(b: FleetBenchmark) -> list[str]:
    """What the load phase's figures say."""
    load = b.load
    lines = []
    if load.state == "succeeded":
        floor = len(load.stages) * (load.soak_s + b.scale.tick_s)
        lines.append(
            f"Under load, with {load.garbage_devices + load.storm_devices + load.flood_devices} "
            f"devices misbehaving, the rollout of `{load.bundle_id}` succeeded in "
            f"{load.seconds:.1f} s, against {b.rollout.seconds:.1f} s for the clean rollout "
            f"with zero soak and no health figures needed; {len(load.stages)} stages with a "
            f"{load.soak_s:g} s soak take at least about {floor:g} s."
        )
    else:
        lines.append(
            f"**Under load the rollout of `{load.bundle_id}` did not succeed**: "
            f"`{load.state}` after {load.seconds:.0f} s"
            + (" (the benchmark aborted it)" if load.aborted else "")
            + f". The registry held {load.baseline_windows:,} windows of the previous bundle "
            "from the hour before, the span the service reads for each device's latency "
            "baseline."
        )
    if load.kept_up:
        lines.append(
            f"The fleet kept up: {load.stored_per_s:,.0f} windows stored per second against "
            f"{load.offered_per_s:,.0f} offered, every one of the {load.offered:,} windows "
            f"stored {_s(load.catch_up_s)} after the devices stopped, on "
            f"{load.fleet.cores:.2f} cores."
        )
    else:
        at = load.backlog_max_at_s
        when = ""
        if at is not None:
            during = load.rollout_from_s <= at <= load.rollout_to_s
            when = f", {at:.0f} s into the phase{', while the rollout ran' if during else ''}"
        seconds = load.backlog_max / load.offered_per_s if load.offered_per_s else 0.0
        lines.append(
            f"**The fleet fell behind**: up to {load.backlog_max:,} windows "
            f"({seconds:.0f} s of telemetry) waited to be stored{when}; "
            f"{load.backlog_end:,} at the end of the phase "
            f"({load.stored_per_s:,.0f} stored per second against {load.offered_per_s:,.0f} "
            "offered over the whole phase), "
            + (
                f"all stored {_s(load.catch_up_s)} after the devices stopped."
                if load.missing == 0
                else f"and {load.missing:,} still not stored "
                f"{b.scale.load_catch_up_timeout_s:g} s after the devices stopped."
            )
        )
    malformed, foreign = _expected(load, *MALFORMED), _expected(load, "foreign-device")
    if (load.logged_dropped, load.logged_foreign) == (malformed, foreign):
        lines.append(
            f"Every malformed message ({malformed:,}) and every window naming another device "
            f"({foreign:,}) was dropped and logged; duplicates were stored once, and transfer "
            f"requests under commands never sent got no chunk "
            f"({load.logged_bogus_transfers:,} logged)"
            + (
                f"; {_expected(load, 'forged-result'):,} forged results did not keep the "
                "rollout from succeeding."
                if load.state == "succeeded"
                else "."
            )
        )
    else:
        lines.append(
            f"The fleet logged {load.logged_dropped:,} malformed messages dropped "
            f"(sent {malformed:,}) and {load.logged_foreign:,} windows naming another device "
            f"(sent {foreign:,})."
        )
    verdict = load.rss_bounded
    slope = load.rss_slope_mib_per_min
    grew = load.rss_rollout_max_mib > 2 * load.rss_start_mib
    memory = (
        f"The fleet's RSS went from {load.rss_start_mib:,.0f} MiB to at most "
        f"{load.rss_max_mib:,.0f} MiB "
        + (
            f"(**{load.rss_rollout_max_mib:,.0f} MiB while the rollout ran**) "
            if grew
            else f"({load.rss_rollout_max_mib:,.0f} MiB while the rollout ran) "
        )
        + f"and ended at {load.rss_end_mib:,.0f} MiB"
    )
    after = (
        "after the benchmark asked to abort the rollout (the service acts on it at its next tick)"
        if load.aborted
        else "after the rollout"
    )
    if verdict is None:
        memory += f"; too few samples {after} to judge a trend."
    elif verdict and slope is not None and slope < -2.0:
        memory += (
            f"; {after} it came down ({_slope_text(slope)} over {len(load.steady())} "
            "samples): no upward trend."
        )
    elif verdict:
        memory += (
            f"; {after} it stayed flat ({_slope_text(slope)} over {len(load.steady())} "
            "samples): bounded."
        )
    else:
        memory += f"; **{after} it still grew** ({_slope_text(slope)})."
    lines.append(memory)
    if not load.fleet_alive or load.logged_errors:
        lines.append(
            f"**The fleet service {'exited' if not load.fleet_alive else 'kept running'} and "
            f"logged {load.logged_errors} errors.**"
        )
    return lines


def findings(b: FleetBenchmark, cores: int) -> list[str]:
    """What the figures say, written from them on every run."""
    lines = []
    r = b.rollout
    tick = b.scale.tick_s
    floor = len(r.stages) * tick
    if r.state == "succeeded":
        slow = [s for s in r.stages if s.seconds is not None and s.seconds > tick * 1.5]
        text = (
            f"The rollout reached all {b.scale.devices:,} devices in {r.seconds:.1f} s from the "
            f"command; the engine steps once per tick ({tick:g} s), so {len(r.stages)} stages "
            f"with zero soak take at least about {floor:g} s."
        )
        if slow:
            took = "; ".join(
                f"stage {s.index + 1} ({_n(s.devices)} devices in all) took {s.seconds:.1f} s"
                for s in slow
            )
            text += " S" + took[1:]
            text += (
                ": more than a tick, the time the fleet took to send the commands, serve the "
                "chunks and hear the devices' results and statuses."
            )
        lines.append(text)
    else:
        lines.append(f"**The rollout did not succeed**: it ended `{r.state}` after {r.seconds} s.")
    if r.chunks != r.chunks_expected:
        lines.append(
            f"The fleet served {r.chunks:,} chunks where {r.chunks_expected:,} would do "
            "(a device asked again, or a command was sent twice)."
        )
    for i in b.ingest:
        nominal = _nominal(b, i)
        fleet_us = _per_window_us(i.fleet, i.stored_per_s * i.fleet.wall_s)
        text = (
            f"Every {i.interval_s:g} s: the fleet stored {i.stored_per_s:,.0f} windows/s, "
            f"{i.ratio:.2f}x what the bare subscriber received, "
        )
        if i.kept_up:
            text += (
                f"and kept up with what was offered (everything stored {_s(i.catch_up_s)} "
                f"after the devices stopped), using {i.fleet.cores:.2f} cores "
                f"({_n(fleet_us)} µs of CPU per window)."
            )
        else:
            text += (
                f"and **fell behind** what was offered ({i.offered_per_s:,.0f}/s; backlog "
                f"{i.stored_backlog:,} windows at the end of the span, all stored "
                f"{_s(i.catch_up_s)} after the devices stopped)."
            )
        if i.offered_per_s < 0.95 * nominal:
            text += (
                f" The devices offered only {i.offered_per_s:,.0f} of the nominal "
                f"{nominal:,.0f} windows/s: the simulator's one thread got "
                f"{i.simulator_cpu_s / i.span_s:.2f} cores of the machine's "
                f"{cores} shared ones, so this rate is the simulator's limit "
                "on this machine, not the fleet's."
            )
        lines.append(text)
    d = b.drain
    if d.fleet_per_s and d.bare_per_s:
        fleet_us = _per_window_us(d.fleet, d.queued)
        bare_us = _per_window_us(d.bare, d.queued)
        lines.append(
            f"The fleet's ceiling, draining a backlog of {d.queued:,} windows alone: "
            f"{d.fleet_per_s:,.0f} windows/s on {d.fleet.cores if d.fleet else 0:.2f} cores "
            f"({_n(fleet_us)} µs of CPU per window) against the bare subscriber's "
            f"{d.bare_per_s:,.0f} messages/s ({_n(bare_us)} µs per message): "
            f"{d.ratio:.2f}x. The fleet validates each window against the protocol's schema "
            "and writes it to SQLite (one transaction per batch); the bare subscriber only "
            "parses the JSON. Both are one Python process whose threads share one interpreter "
            "lock, so about one core is either's ceiling."
        )
    elif d.fleet_per_s is None:
        lines.append(
            f"**The fleet did not drain a backlog of {d.queued:,} windows within "
            f"{b.scale.catch_up_timeout_s:g} s.**"
        )
    return lines + load_findings(b)


def _environment_note(b: FleetBenchmark, env: Environment) -> str:
    return own_processes_note(
        "Mosquitto, the fleet service, the bare subscriber and the `edgeml` command-line calls",
        b.children_cpu_s,
        b.total_s,
        env.others_busy_cores,
    )


def markdown_body(b: FleetBenchmark, env: Environment) -> str:
    """The section between the fleet benchmark's markers."""
    s = b.scale
    intervals = " and ".join(f"{i:g} s" for i in s.ingest_intervals_s)
    lines = [
        f"One fleet service (`edgeml fleet serve --tick {s.tick_s:g}`, a child process), one "
        f"Mosquitto on loopback and {s.devices:,} simulated devices "
        "(`edgeml.fleet.simulator`: they speak the protocol, status, commands, chunked "
        "transfer and telemetry, but run no model; one epoll thread in the benchmark's process "
        f"drives them all), profile `raspberry-pi-4`, {s.canaries} tagged `canary`. Against it, "
        "in the same run and on the same broker, a bare paho subscriber (a child process: one "
        "`mqtt.Client` with `loop_start()`, subscribed to `edgeml/v1/devices/+/telemetry` at "
        "QoS 1, `json.loads` on each message and nothing else). **The simulator, the broker, "
        f"the fleet and the bare subscriber share this machine's {env.usable_cores} cores**: "
        "every figure here includes that contention.",
        "",
        *env.markdown_lines(),
        _environment_note(b, env),
        "",
        f"### Rollout to {s.devices:,} devices",
        "",
        f"`edgeml fleet rollout start {b.bundle_id} --stages {STAGES} --soak 0 "
        "--min-requests 0`, the devices sending a telemetry window every "
        f"{s.rollout_interval_s:g} s meanwhile; timed from the command until the registry says "
        "`succeeded` (polled every 0.1 s). CPU is utime + stime from `/proc/PID/stat` over "
        "the same span; RSS is `VmRSS`, sampled every 0.5 s.",
        "",
        "| figure | measured |",
        "|---|---|",
        *[f"| {a} | {m} |" for a, m in rollout_rows(b)],
        "",
        "### Telemetry ingest",
        "",
        f"The same devices (reconnected) send a window every {intervals}: "
        f"{s.ingest_warmup_s:g} s of warm-up, then {s.ingest_span_s:g} s measured. *Stored* "
        "is the growth of the registry's telemetry table (one row per new window, duplicates "
        "dropped), *offered* the windows the simulated devices handed to their MQTT clients, "
        "*bare* the messages the bare subscriber received, all over the same span. Then the "
        "devices stop, and the time until every window sent is stored (fleet) or received "
        "(bare) is the catch-up.",
        "",
        "| figure | " + " | ".join(f"every {i.interval_s:g} s" for i in b.ingest) + " |",
        "|---|" + "---|" * len(b.ingest),
        *["| " + " | ".join(cells) + " |" for cells in ingest_rows(b)],
        "",
        "### Backlog drain: the fleet's ceiling",
        "",
        "The simulator and the fleet compete for the same cores, so the steady rates above "
        "stop where the simulator does. To see how fast the fleet itself ingests, it and the "
        "bare subscriber are stopped (both keep a persistent session), the devices send a "
        f"window every {b.drain.interval_s:g} s for {b.drain.fill_s:g} s, which the broker "
        "queues, the devices stop, and then each subscriber is started alone and drains the "
        "queue: windows per second from the first window counted to the last (the fleet's "
        "from the registry, polled every 0.1 s; the bare subscriber's timed by itself).",
        "",
        "| figure | fleet service | bare subscriber |",
        "|---|---|---|",
        *[f"| {a} | {f} | {m} |" for a, f, m in drain_rows(b)],
        "",
        "### Load with misbehaving devices",
        "",
        f"The same devices send a window every {s.load_interval_s:g} s while a second bundle, "
        f"`{b.load.bundle_id}` (the same model as a new version), is rolled out: "
        f"`--stages {STAGES} --soak {s.load_soak_s:g}` with the default health gates "
        "(`--min-requests 20`: each device's error rate, latency against the bundle it ran "
        "before, drift). Meanwhile some devices misbehave "
        "(`edgeml.fleet.simulator.Misbehaviour`), spread over the fleet, none a canary: "
        "*garbage* senders publish on their own status, telemetry and events topics, in "
        "turn, bytes that are not JSON, 300 KiB messages (this broker has no "
        "`max_packet_size`; the one `fleet broker-config` writes would refuse them), JSON of "
        "the wrong schema, windows with numbers past any range (`1e999`, 10^40, 5,000 "
        "digits), windows naming another device, their own windows again, transfer requests "
        "under commands never sent and forged install results; *storm* devices shut their "
        "socket without a DISCONNECT (the broker publishes their last will) and connect "
        "again at once; *flood* devices send windows far faster than the interval. "
        f"{s.load_before_s:g} s of this before the rollout, {s.load_after_s:g} s after it "
        f"(a rollout still running after {s.load_rollout_timeout_s:g} s is aborted). The "
        "bare subscriber is gone (a subscriber that only `json.loads` would die on the "
        "first garbage), and so is its session. RSS and windows are sampled every second; "
        "*dropped* is counted from the fleet's log lines.",
        "",
        "| figure | measured |",
        "|---|---|",
        *[f"| {a} | {m} |" for a, m in load_rows(b)],
        "",
        "### Findings",
        "",
        *[f"- {line}" for line in findings(b, env.usable_cores)],
        "",
        f"Peak RSS over the whole run (`VmHWM`): fleet service {b.fleet_peak_mib:.1f} MiB "
        f"before the drain, Mosquitto {b.broker_peak_mib:.1f} MiB (its queues held the "
        "backlog). Every device reported "
        f"telemetry: {b.telemetry_devices:,} devices in the registry's telemetry table.",
    ]
    return "\n".join(lines)


def rich_table(b: FleetBenchmark) -> Table:
    """The headline figures for the terminal."""
    table = Table(title=f"fleet: {b.scale.devices:,} simulated devices")
    table.add_column("figure", overflow="fold")
    table.add_column("measured", overflow="fold")
    r = b.rollout
    table.add_row("rollout to succeeded", f"{r.seconds:.2f} s ({r.state})")
    table.add_row("rollout: fleet CPU", _cores(r.fleet))
    for i in b.ingest:
        table.add_row(
            f"every {i.interval_s:g} s: offered / fleet / bare",
            f"{i.offered_per_s:,.0f} / {i.stored_per_s:,.0f} / {i.bare_per_s:,.0f} per s "
            f"(fleet/bare {i.ratio:.2f}, kept up: {'yes' if i.kept_up else 'no'})",
        )
        table.add_row(
            f"every {i.interval_s:g} s: fleet / bare CPU",
            f"{i.fleet.cores:.2f} / {i.bare.cores:.2f} cores",
        )
    d = b.drain
    table.add_row(
        "backlog drain: fleet / bare",
        f"{_n(d.fleet_per_s)} / {_n(d.bare_per_s)} per s",
    )
    table.add_row("fleet peak RSS", f"{b.fleet_peak_mib:.1f} MiB")
    load = b.load
    table.add_row(
        "load: rollout with misbehaving devices",
        f"{load.seconds:.2f} s ({load.state}{', aborted' if load.aborted else ''})",
    )
    table.add_row(
        "load: offered / stored, backlog at the end",
        f"{load.offered_per_s:,.0f} / {load.stored_per_s:,.0f} per s, {load.backlog_end:,}",
    )
    table.add_row(
        "load: fleet RSS start / max / end, after the rollout",
        f"{load.rss_start_mib:.0f} / {load.rss_max_mib:.0f} / {load.rss_end_mib:.0f} MiB, "
        f"{_slope_text(load.rss_slope_mib_per_min)}",
    )
    return table
