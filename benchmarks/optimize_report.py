"""Render the "optimize" benchmark: a markdown section and a terminal table."""

from __future__ import annotations

from bench_optimize import ModelVariants, OptimizeBenchmark, Variant
from machine import Environment
from rich.table import Table

MLP = "StandardScaler + MLP (256, 128)"
INT8_SIZE_TARGET = 0.30
PRUNED_THROUGHPUT_TARGET = 1.6
DROP_TARGET = 1.0

COLUMNS = (
    "model",
    "pass (settings of)",
    "size x fp32",
    "deflated x fp32",
    "accuracy Δ (points)",
    "1-row p50 x fp32",
    "batch throughput x fp32",
)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "—"


def rows(models: list[ModelVariants]) -> list[list[str]]:
    """One row per variant, ratios against the model's fp32 conversion."""
    table = []
    for m in models:
        base = m.baseline
        assert base.timing is not None and base.accuracy is not None
        table.append(
            [
                m.model,
                f"fp32: {base.model_bytes:,} B, accuracy {base.accuracy:.4f}, "
                f"p50 {base.timing.single_row_ms_p50:.4f} ms, "
                f"{base.timing.batch_rows_per_s:,.0f} rows/s",
                "1.00x",
                "1.00x",
                "0",
                "1.00x",
                "1.00x",
            ]
        )
        for v in m.variants:
            table.append([m.model, f"{v.name} ({v.profile})", *_cells(v, base)])
    return table


def _cells(v: Variant, base: Variant) -> list[str]:
    if v.status != "applied":
        return [v.status, "", "", "", ""]
    assert (
        v.timing is not None
        and base.timing is not None
        and v.accuracy is not None
        and base.accuracy is not None
    )
    return [
        _ratio(v.model_bytes, base.model_bytes),
        _ratio(v.deflated_bytes, base.deflated_bytes),
        f"{(v.accuracy - base.accuracy) * 100:+.2f}",
        _ratio(v.timing.single_row_ms_p50, base.timing.single_row_ms_p50),
        _ratio(v.timing.batch_rows_per_s, base.timing.batch_rows_per_s),
    ]


def _find(models: list[ModelVariants], model: str, name: str) -> tuple[Variant, Variant] | None:
    for m in models:
        if m.model == model:
            for v in m.variants:
                if v.name == name and v.status == "applied":
                    return v, m.baseline
    return None


def targets(bench: OptimizeBenchmark) -> list[str]:
    """The issue's targets for the reference MLP, each met or missed, with its figures."""
    lines = []
    found = _find(bench.models, MLP, "int8 dynamic, per-channel")
    if found:
        v, base = found
        size = v.model_bytes / base.model_bytes
        drop = (base.accuracy - v.accuracy) * 100  # type: ignore[operator]
        met = size <= INT8_SIZE_TARGET and drop <= DROP_TARGET
        lines.append(
            f"MLP int8 size ≤ {INT8_SIZE_TARGET:.2f}x fp32 with accuracy drop "
            f"≤ {DROP_TARGET:g} point: **{'met' if met else 'missed'}** "
            f"({size:.3f}x, drop {drop:.2f} points)"
        )
    found = _find(bench.models, MLP, "50% of hidden units, fine-tuned")
    if found:
        v, base = found
        assert v.timing is not None and base.timing is not None
        speed = v.timing.batch_rows_per_s / base.timing.batch_rows_per_s
        drop = (base.accuracy - v.accuracy) * 100  # type: ignore[operator]
        met = speed >= PRUNED_THROUGHPUT_TARGET and drop <= DROP_TARGET
        lines.append(
            "MLP structured pruning of 50% of hidden units: batch throughput "
            f"≥ {PRUNED_THROUGHPUT_TARGET}x fp32 with accuracy drop ≤ {DROP_TARGET:g} point "
            f"after fine-tuning: **{'met' if met else 'missed'}** "
            f"({speed:.2f}x, drop {drop:.2f} points)"
        )
    return lines


def markdown_body(bench: OptimizeBenchmark, env: Environment) -> str:
    """The section between the optimize benchmark's markers."""
    header = "| " + " | ".join(COLUMNS) + " |"
    lines = [
        "Each optimization pass applied on its own to each reference model's fp32 conversion, "
        "measured against that fp32 model in the same run (bare onnxruntime session, CPU "
        "provider, this host's cores). Sizes are model.onnx bytes; *deflated* is what a bundle "
        "holds. Accuracy is on the validation rows (30% of the data set).",
        "",
        *env.markdown_lines(),
        "",
        "### Targets (reference MLP)",
        "",
        *[f"- {line}" for line in targets(bench)],
        "",
        "### Every pass on every model",
        "",
        header,
        "|" + "---|" * len(COLUMNS),
        *["| " + " | ".join(cells) + " |" for cells in rows(bench.models)],
        "",
        "### Reading the figures",
        "",
        "- fp16 is measured on this host's CPU provider, which has few fp16 kernels and casts: "
        "the gain it is built for is on a GPU (TensorRT/CUDA), which this host lacks. Its size "
        "halving is real everywhere.",
        "- Magnitude pruning leaves the matrices dense: onnxruntime runs them as fast as before. "
        "Its only gain is the deflated size.",
        "- Dynamic int8 scales activations per batch at run time; its single-row latency carries "
        "that cost. Static QDQ does not.",
        "- Tree ensembles and the logistic regression (skl2onnx's LinearClassifier) have no "
        "MatMul to quantize or fp16 arithmetic to convert: those passes say so and do nothing.",
    ]
    return "\n".join(lines)


def rich_table(bench: OptimizeBenchmark) -> Table:
    """The same figures for the terminal."""
    table = Table(title="optimization passes against fp32")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for cells in rows(bench.models):
        table.add_row(*cells)
    return table
