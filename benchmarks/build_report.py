"""Render the build benchmark's figures: the markdown section of docs/benchmarks.md and a rich
table for the terminal. Findings (agreement under the profile's floor, refused builds, bundles
that differ between runs, a slow first build, onnxruntime slower than scikit-learn) are
derived from the figures here, so the page states them on every run. Measuring is
``bench_build``'s job.
"""

from __future__ import annotations

from bench_build import DASH, Agreement, BuildBenchmark, ModelFigures
from machine import Environment
from rich.table import Table

COLD_FACTOR = 1.5
"""A first build this many times slower than the median is reported as a cold start."""
SPREAD_FACTOR = 1.5
"""Timing repetitions whose highest and lowest differ by this factor are reported as noisy."""
REFUSED_MARK = " †"


# ------------------------------------------------------------------------------ cells


def _bytes(value: int | None) -> str:
    return DASH if not value else f"{value:,}"


def _accuracy(value: float | None) -> str:
    return DASH if value is None else f"{value:.4f}"


def _percent(share: float) -> str:
    return f"{share:.2%}" if share < 1 else "100%"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _row_word(kind: str, found: Agreement) -> str:
    return f"{kind} row" if len(found.disagreeing_rows) == 1 else f"{kind} rows"


def _agreement(found: Agreement | None) -> str:
    if found is None:
        return DASH
    share = _percent(found.label_agreement)
    wrong = len(found.disagreeing_rows)
    notes = [_plural(wrong, "row differs", "rows differ")] if wrong else []
    if found.ties and found.ties_accepted:
        notes.append(_plural(found.ties, "tie accepted", "ties accepted"))
    elif found.ties:
        notes.append("of which a tie" if found.ties == 1 else f"of which {found.ties} ties")
    shown = f"**{share}**" if wrong else share
    return f"{shown} of {found.rows}" + (f" ({', '.join(notes)})" if notes else "")


def _short_agreement(found: Agreement | None) -> str:
    if found is None:
        return DASH
    shown = _percent(found.label_agreement)
    if not found.disagreeing_rows:
        return shown
    return f"[bold red]{shown} ({len(found.disagreeing_rows)}/{found.rows})[/bold red]"


def _prob_diff(found: Agreement | None) -> str:
    return DASH if found is None else f"{found.max_probability_diff:.2g}"


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.3g}"


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.1f}x" if denominator else DASH


def _dataset(m: ModelFigures) -> str:
    return f"{m.dataset} ({m.n_features} features, {m.n_classes} classes)"


def _deterministic(m: ModelFigures) -> str:
    if m.deterministic is None:
        return DASH
    return "yes" if m.deterministic else "**no**"


def _model_name(m: ModelFigures, name: str) -> str:
    return name if m.runtime_model == "bundle" else name + REFUSED_MARK


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _timing_cells(m: ModelFigures) -> list[str]:
    """p50 of each side, speed-up, rows/s of each side, ratio; dashes when not measured."""
    ort_t, skl_t = m.onnxruntime, m.sklearn
    if ort_t is None or skl_t is None:
        return [DASH] * 6
    return [
        _ms(ort_t.single_row_ms_p50),
        _ms(skl_t.single_row_ms_p50),
        _ratio(skl_t.single_row_ms_p50, ort_t.single_row_ms_p50),
        f"{ort_t.batch_rows_per_s:,.0f}",
        f"{skl_t.batch_rows_per_s:,.0f}",
        _ratio(ort_t.batch_rows_per_s, skl_t.batch_rows_per_s),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# ------------------------------------------------------------------------------ tables


def build_table(bench: BuildBenchmark) -> list[str]:
    """Build time, chosen candidate, sizes, determinism and gates, one row per model."""
    rows = []
    for m in bench.models:
        if m.failure or m.outcome is None:
            rows.append([m.label, _dataset(m), "failed", *[DASH] * 6])
            continue
        rows.append(
            [
                m.label,
                _dataset(m),
                f"{m.build_median_s:.2f}",
                f"{m.cold_s:.2f}",
                m.outcome.chosen,
                _bytes(m.outcome.bundle_bytes),
                _bytes(m.outcome.model_bytes),
                _deterministic(m),
                "**refused**" if m.refused else "passed",
            ]
        )
    header = [
        "model",
        "dataset",
        f"build time, median of {bench.repetitions} (s)",
        "first run (s)",
        "chosen candidate",
        "bundle (bytes)",
        "model.onnx (bytes)",
        "deterministic",
        "gates",
    ]
    return _table(header, rows)


def conversion_table(bench: BuildBenchmark) -> list[str]:
    """Agreement with scikit-learn and accuracy, one row per model."""
    rows = []
    for m in bench.models:
        outcome = m.outcome
        rows.append(
            [
                m.label,
                _agreement(outcome and outcome.agreement),
                _prob_diff(outcome and outcome.agreement),
                _agreement(m.all_rows_agreement),
                _prob_diff(m.all_rows_agreement),
                _accuracy(outcome and outcome.source_accuracy),
                _accuracy(outcome and outcome.bundled_accuracy),
            ]
        )
    header = [
        "model",
        "label agreement (build, validation rows)",
        "max prob. diff (build)",
        "label agreement (all rows)",
        "max prob. diff (all rows)",
        "accuracy, source",
        "accuracy, bundled",
    ]
    return _table(header, rows)


def runtime_table(bench: BuildBenchmark) -> list[str]:
    """onnxruntime against scikit-learn, one row per model, and a note on refused builds."""
    rows = [
        [_model_name(m, m.label), *_timing_cells(m), _ms(m.outcome and m.outcome.p50_ms)]
        for m in bench.models
    ]
    size = bench.timing.batch_size
    header = [
        "model",
        "1-row p50, onnxruntime (ms)",
        "1-row p50, scikit-learn (ms)",
        "speed-up",
        f"batch {size}, onnxruntime (rows/s)",
        f"batch {size}, scikit-learn (rows/s)",
        "ratio",
        "build's p50 (ms)",
    ]
    lines = _table(header, rows)
    if any(m.runtime_model != "bundle" for m in bench.models):
        lines += [
            "",
            f"{REFUSED_MARK.strip()} No bundle: the gates refused the build. The runtimes are "
            "measured on the plain conversion the build judged (skl2onnx at the profile's "
            "opset, normalised, before any optimization pass).",
        ]
    return lines


def step_table(bench: BuildBenchmark) -> list[str]:
    """Median seconds per build step (as the build's progress callback names them)."""
    built = [m for m in bench.models if not m.failure]
    steps = list(dict.fromkeys(s for m in built for s in m.steps_s))
    rows = [[m.label] + [f"{m.steps_s.get(s, 0.0):.3f}" for s in steps] for m in built]
    return _table(["model", *steps], rows)


# ------------------------------------------------------------------------------ words


def build_agreement_findings(m: ModelFigures, floor: float) -> list[str]:
    """The build's own check: under the profile's floor, or passing thanks to ties."""
    found = m.outcome.agreement if m.outcome else None
    if found is None:
        return []
    lines = []
    if found.label_agreement < floor:
        rows = ", ".join(str(r) for r in found.disagreeing_rows[:10])
        lines.append(
            f"{m.label}: the build's conversion check finds labels agreeing on "
            f"{found.label_agreement:.4%} of {found.rows} validation rows, under the profile's "
            f"{floor:.1%} ({_row_word('validation', found)} {rows}, 0-based)."
        )
    if found.ties:
        lines.append(
            f"{m.label}: the build's conversion check counts "
            f"{_plural(found.ties, 'validation row', 'validation rows')} where the ONNX model "
            "picks another label than scikit-learn as agreeing, because scikit-learn's "
            "probabilities tie there (either label is accepted)."
        )
    return lines


def strict_agreement_findings(m: ModelFigures, floor: float, margin: float) -> list[str]:
    """The benchmark's own check, where every differing label counts: precisely which rows."""
    found = m.all_rows_agreement
    if found is None or not found.disagreeing_rows:
        return []
    rows = ", ".join(str(r) for r in found.disagreeing_rows[:10])
    line = (
        f"{m.label}: on every dataset row, the bundled model's label differs from "
        f"scikit-learn's on {len(found.disagreeing_rows)} of {found.rows} rows "
        f"({_row_word('dataset', found)} {rows}, "
        "0-based, training rows first): strict label agreement "
        f"{found.label_agreement:.4%}, largest probability difference "
        f"{found.max_probability_diff:.2g}."
    )
    if found.ties:
        line += (
            f" {_plural(found.ties, 'of them is a tie', 'of them are ties')} in scikit-learn's "
            "probabilities (within "
            f"{margin:g}): scikit-learn's argmax takes the first class, the float32 ONNX "
            "model's rounding tips the other way. Counting ties as agreement, as the build "
            f"does: {found.agreement_with_ties:.4%}."
        )
    if found.agreement_with_ties < floor:
        line += f" That is under the profile's {floor:.1%}."
    return [line]


def accuracy_findings(m: ModelFigures, budget: float | None) -> list[str]:
    """A bundled accuracy that is not the source's, against the profile's budget."""
    outcome = m.outcome
    if outcome is None or outcome.source_accuracy is None or outcome.bundled_accuracy is None:
        return []
    drop = (outcome.source_accuracy - outcome.bundled_accuracy) * 100
    if abs(drop) < 1e-9:
        return []
    line = (
        f"{m.label}: the bundled model's accuracy is {outcome.bundled_accuracy:.4f} against "
        f"the source's {outcome.source_accuracy:.4f}, {drop:.2f} points lower on "
        f"{m.validation_rows} validation rows (one row is {100 / m.validation_rows:.2f} points)"
    )
    if budget is not None:
        line += f"; the profile's max_accuracy_drop is {budget:g}"
    return [line + "."]


def model_findings(m: ModelFigures, bench: BuildBenchmark) -> list[str]:
    """What a reader should notice about one model."""
    if m.failure or m.outcome is None:
        return [f"{m.label}: the benchmark could not build it: {m.failure}"]
    tolerance = bench.profile.tolerance
    found = build_agreement_findings(m, tolerance.label_agreement)
    found += strict_agreement_findings(m, tolerance.label_agreement, tolerance.probability_atol)
    found += accuracy_findings(m, bench.profile.budgets.max_accuracy_drop)
    if m.outcome.refusal:
        found.append(f"{m.label}: the gates refused the bundle: {m.outcome.refusal}.")
    if m.deterministic is False:
        found.append(f"{m.label}: the bundles of the {len(m.build_s)} runs differ in bytes.")
    if len(m.build_s) > 1 and m.cold_s > COLD_FACTOR * m.build_median_s:
        found.append(
            f"{m.label}: the first build took {m.cold_s:.2f} s against a median of "
            f"{m.build_median_s:.2f} s (cold start)."
        )
    found += spread_findings(m)
    if m.onnxruntime and m.sklearn:
        if m.onnxruntime.single_row_ms_p50 > m.sklearn.single_row_ms_p50:
            found.append(f"{m.label}: onnxruntime is slower than scikit-learn on one row.")
        if m.onnxruntime.batch_rows_per_s < m.sklearn.batch_rows_per_s:
            found.append(f"{m.label}: onnxruntime is slower than scikit-learn on a batch.")
    return found


def spread_findings(m: ModelFigures) -> list[str]:
    """Timings whose repetitions disagree by more than ``SPREAD_FACTOR``."""
    lines = []
    for side, timing in (("onnxruntime", m.onnxruntime), ("scikit-learn", m.sklearn)):
        if timing is None:
            continue
        for what, spread, span, unit, shown in (
            (
                "single-row p50",
                timing.single_row_spread,
                timing.single_row_ms_range,
                "ms",
                "{:.3g}",
            ),
            (
                "batch throughput",
                timing.batch_spread,
                timing.batch_rows_per_s_range,
                "rows/s",
                "{:,.0f}",
            ),
        ):
            if span is not None and spread >= SPREAD_FACTOR:
                low, high = (shown.format(v) for v in span)
                lines.append(
                    f"{m.label}: {side}'s {what} varied {spread:.1f}x across the "
                    f"{timing.repetitions} repetitions ({low} to {high} {unit}); "
                    "the median is shown."
                )
    return lines


def findings(bench: BuildBenchmark) -> list[str]:
    """What a reader should notice, derived from the figures."""
    found = [line for m in bench.models for line in model_findings(m, bench)]
    return found or ["Nothing out of the ordinary."]


def method_lines(bench: BuildBenchmark) -> list[str]:
    """How the figures were made, for a reader who wants to reproduce or question them."""
    t = bench.timing
    return [
        f"- Each model is built {_times(bench.repetitions)} for profile `{bench.profile.name}` "
        "through `build_bundles` (the API behind `edgeml build`), in one process, each run "
        "into a fresh folder. *Build time* is the median wall time; *first run* is the first "
        "of them, which pays one-time imports (skl2onnx, onnx) for the first model. "
        "*Deterministic*: the runs' bundle files are byte-identical.",
        "- Models are trained on 70% of the shuffled dataset (seed 0); the other 30% is the "
        "validation CSV the build reads. *Agreement (build)* is `ProfileBuild.agreement`, the "
        "build's comparison of the bundled ONNX model with the source model on the validation "
        "rows. *Agreement (all rows)* is a bare onnxruntime session on the bundle's "
        "`model.onnx` against scikit-learn on every row of the dataset, training rows first.",
        "- Runtimes: the bundle is verified as a device would, and its `model.onnx` loaded into "
        "an `onnxruntime.InferenceSession` with default options on `CPUExecutionProvider` "
        "(float32 input). It is compared with the source estimator's `predict_proba` (float64 "
        "input) in the same process on the same validation rows, the two sides in turn, "
        f"{_times(bench.repetitions)} each; the tables show each side's median repetition. "
        "Inputs are prepared before "
        f"timing; each side is warmed up ({t.warmup_calls} calls). *Single-row p50*: median of "
        f"up to {t.single_max_calls} calls (or {t.single_budget_s:g} s), one validation row "
        f"each, cycling. *Batch*: {t.batch_size} rows (validation rows repeated), rows/s of "
        f"the median of {t.batch_min_runs} to {t.batch_max_runs} runs "
        f"(or {t.batch_budget_s:g} s).",
        "- Both sides use the library's default threading: onnxruntime an intra-op pool over "
        "the cores; scikit-learn OpenMP for HistGradientBoosting, BLAS threads for the MLP and "
        "the logistic regression, one thread for the random forest (`n_jobs=None`).",
        "- *Speed-up* is scikit-learn's p50 over onnxruntime's; *ratio* is onnxruntime's "
        "rows/s over scikit-learn's (above 1x: onnxruntime is faster). *Build's p50* is the "
        "single-row p50 the build itself measured for its latency gate (same row repeated, "
        "the profile's session options).",
    ]


# ------------------------------------------------------------------------------ outputs


def markdown_body(bench: BuildBenchmark, env: Environment) -> str:
    """The section of docs/benchmarks.md between the build benchmark's markers."""
    lines = [
        "What `edgeml build` costs and what its bundle gives, for four reference models, "
        f"profile `{bench.profile.name}`; and the bundled model in a bare onnxruntime session "
        "against scikit-learn, measured in the same run.",
        "",
        *env.markdown_lines(),
        "",
        "### Build",
        "",
        *build_table(bench),
        "",
        "### Conversion: bundled ONNX against scikit-learn",
        "",
        *conversion_table(bench),
        "",
        "### Runtime: onnxruntime on the bundled model.onnx against scikit-learn",
        "",
        *runtime_table(bench),
        "",
        "### Where the build time goes (median seconds per step)",
        "",
        *step_table(bench),
        "",
        "### Findings",
        "",
        *[f"- {line}" for line in findings(bench)],
        "",
        "### Method",
        "",
        *method_lines(bench),
    ]
    return "\n".join(lines)


def rich_table(bench: BuildBenchmark) -> Table:
    """The main figures as one table for the terminal (details are on the page)."""
    title = f"edgeml build, profile {bench.profile.name}, {_times(bench.repetitions)}"
    table = Table(title=title)
    headings = (
        "model",
        "build s",
        "first s",
        "bundle B",
        "onnx B",
        "agree build",
        "agree all",
        "acc src/onnx",
        "1-row ms ort/skl",
        "1-row x",
        "batch x",
        "gates",
    )
    for heading in headings:
        table.add_column(heading, overflow="fold")
    for m in bench.models:
        outcome = m.outcome
        if m.failure or outcome is None:
            table.add_row(m.kind, "[red]failed[/red]", *[DASH] * (len(headings) - 2))
            continue
        cells = _timing_cells(m)
        table.add_row(
            _model_name(m, m.kind),
            f"{m.build_median_s:.2f}",
            f"{m.cold_s:.2f}",
            _bytes(outcome.bundle_bytes),
            _bytes(outcome.model_bytes),
            _short_agreement(outcome.agreement),
            _short_agreement(m.all_rows_agreement),
            f"{_accuracy(outcome.source_accuracy)}/{_accuracy(outcome.bundled_accuracy)}",
            f"{cells[0]} / {cells[1]}",
            cells[2],
            cells[5],
            "[bold red]refused[/bold red]" if m.refused else "passed",
        )
    return table
