"""The build report: ``report.json`` and ``report.md`` beside the bundles.

The report holds what the signed bundles must not: host timings and everything about the
candidates and gates, including failures. Written atomically whether the build passed or not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeml.toolkit import __version__
from edgeml.toolkit.bundle import write_atomically

if TYPE_CHECKING:
    from edgeml.converters.pipeline import BuildResult


def report_document(result: BuildResult) -> dict[str, Any]:
    """The report as one JSON document."""
    request = result.request
    return {
        "edgeml_version": __version__,
        "model": str(request.model_path),
        "validation": str(request.validation_path),
        "target": request.target,
        "version": request.version,
        "passed": result.passed,
        "warnings": result.warnings,
        "profiles": [b.to_dict() for b in result.builds],
    }


def _figure(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def report_markdown(document: dict[str, Any]) -> str:
    """The report for people, as Markdown."""
    lines = [
        "# edgeml build report",
        "",
        f"- model: `{document['model']}`",
        f"- validation data: `{document['validation']}` (target `{document['target']}`)",
        f"- version: {document['version']}; edgeml {document['edgeml_version']}",
        f"- result: {'passed' if document['passed'] else 'FAILED: no bundle written'}",
        "",
    ]
    for warning in document["warnings"]:
        lines.append(f"> warning: {warning}")
    lines += [
        "",
        "| profile | bundle | precision | primary metric (source → bundled) | drop (points) "
        "| bundle size (bytes) | single-row p50 (ms) | batch rows/s | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in document["profiles"]:
        metrics = p["metrics"]
        primary = metrics.get("primary", "")
        source = metrics.get("source", {}).get(primary)
        bundled = metrics.get("bundled", {}).get(primary)
        latency = p["latency"]
        lines.append(
            f"| {p['profile']} | {p['bundle_id']} | {p['precision']} "
            f"| {primary} {_figure(source)} → {_figure(bundled)} "
            f"| {_figure(metrics.get('drop_points'))} | {p['bundle_bytes']} "
            f"| {_figure(latency.get('single_row_ms_p50'))} "
            f"| {_figure(latency.get('batch_rows_per_s'))} "
            f"| {'passed' if p['passed'] else 'FAILED'} |"
        )
    for p in document["profiles"]:
        lines += [
            "",
            f"## {p['profile']}",
            "",
            "| gate | result | figure | threshold | detail |",
            "|---|---|---|---|---|",
        ]
        for gate in p["gates"]:
            lines.append(
                f"| {gate['gate']} | {gate['status']} | {_figure(gate['figure'])} | "
                f"{_figure(gate['threshold'])} | {gate['detail']} |"
            )
        lines.append("")
        lines.append("Passes: " + ", ".join(pass_["name"] for pass_ in p["passes"]))
        for note in p["notes"]:
            lines.append(f"\n- note: {note}")
    return "\n".join(lines) + "\n"


def write_report(result: BuildResult) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into the build's output folder."""
    document = report_document(result)
    out = result.request.out_dir
    json_path, md_path = out / "report.json", out / "report.md"
    write_atomically(
        json_path, (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()
    )
    write_atomically(md_path, report_markdown(document).encode())
    return json_path, md_path
