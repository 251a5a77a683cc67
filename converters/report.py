"""The build report: ``report.json`` and ``report.md`` beside the bundles.

The report holds what the signed bundles must not: host timings, and every candidate of every
profile with its figures and gates, failures included. Written atomically whether the build
passed or not.
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
        "train": str(request.train_path) if request.train_path else None,
        "calibration": str(request.calibration_path) if request.calibration_path else None,
        "target": request.target,
        "version": request.version,
        "passed": result.passed,
        "warnings": result.warnings,
        "profiles": [b.to_dict() for b in result.builds],
    }


def figure(value: Any) -> str:
    """A figure for a table cell."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def candidate_row(candidate: dict[str, Any], primary: str) -> list[str]:
    """One candidate as table cells: name, status, metric, drop, sizes, latency, reason."""
    latency = candidate["latency"]
    return [
        candidate["name"],
        candidate["status"],
        figure(candidate["metrics"].get(primary)),
        figure(candidate["drop_points"]),
        figure(candidate["model_bytes"]) if candidate["model_bytes"] else "—",
        figure(candidate["bundle_bytes"]) if candidate["bundle_bytes"] else "—",
        figure(latency.get("single_row_ms_p50")),
        figure(latency.get("batch_rows_per_s")),
        candidate["reason"],
    ]


CANDIDATE_COLUMNS = (
    "candidate",
    "status",
    "metric",
    "drop (points)",
    "model bytes",
    "bundle bytes",
    "p50 ms (host)",
    "batch rows/s (host)",
    "why",
)


def report_markdown(document: dict[str, Any]) -> str:
    """The report for people, as Markdown."""
    lines = [
        "# edgeml build report",
        "",
        f"- model: `{document['model']}`",
        f"- validation data: `{document['validation']}` (target `{document['target']}`)",
        f"- training rows for fine-tuning: {document['train'] or 'none'}",
        f"- calibration rows: {document['calibration'] or 'none (validation rows)'}",
        f"- version: {document['version']}; edgeml {document['edgeml_version']}",
        f"- result: {'passed' if document['passed'] else 'FAILED: no bundle written'}",
        "",
    ]
    lines += [f"> warning: {w}" for w in document["warnings"]]
    for p in document["profiles"]:
        lines += ["", f"## {p['profile']}", ""]
        if p["passed"]:
            lines.append(
                f"Chosen: **{p['chosen']}** → `{p['bundle_id']}` ({p['bundle_bytes']} bytes)"
            )
        else:
            lines.append(f"**FAILED**: {p['failure']}")
        conversion = p["conversion"]
        if conversion:
            lines += ["", f"Conversion check: {conversion['status']}: {conversion['detail']}"]
        primary = "accuracy" if any("accuracy" in c["metrics"] for c in p["candidates"]) else "r2"
        lines += [
            "",
            f"| {' | '.join(CANDIDATE_COLUMNS).replace('metric', primary)} |",
            "|" + "---|" * len(CANDIDATE_COLUMNS),
        ]
        for candidate in p["candidates"]:
            cells = candidate_row(candidate, primary)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        for candidate in p["candidates"]:
            if not candidate["gates"]:
                continue
            gates = "; ".join(
                f"{g['gate']} {g['status']} ({figure(g['figure'])} vs {figure(g['threshold'])})"
                for g in candidate["gates"]
            )
            passes = ", ".join(step["name"] for step in candidate["passes"])
            lines.append(f"\n- {candidate['name']}: passes {passes}; gates: {gates}")
        lines += [f"\n- note: {note}" for note in p["notes"]]
    return "\n".join(lines) + "\n"


def write_report(result: BuildResult) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into the build's output folder."""
    document = report_document(result)
    out = result.request.out_dir
    json_path, md_path = out / "report.json", out / "report.md"
    text = json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(json_path, text.encode())
    write_atomically(md_path, report_markdown(document).encode())
    return json_path, md_path
