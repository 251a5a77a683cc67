"""The HTML drift report of a scoring run: a table of every feature and a plot per drifted one.

One self-contained HTML page: no script, no stylesheet or font from elsewhere, plots drawn as
inline SVG here (grouped bars of the baseline's share per bin against the batch's), so the
report opens offline and the device install needs no plotting library. Every text that comes
from a bundle or a file (feature names, class labels) is escaped.

What this module leaves to others: computing the figures (``edgeml.toolkit.drift``) and
writing the file (``edgeml.toolkit.batch_scoring``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from edgeml.toolkit.drift import DriftSummary, bin_labels

if TYPE_CHECKING:
    from edgeml.toolkit.batch_scoring import ScoreSummary

BASELINE_COLOUR = "#8c8c8c"
BATCH_COLOUR = "#d9480f"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.drifted td { background: #fff4e6; font-weight: 600; }
.flag { color: #d9480f; }
figure { margin: 1.5em 0; }
figcaption { font-weight: 600; margin-bottom: 0.3em; }
.legend span { display: inline-block; width: 0.8em; height: 0.8em; margin: 0 0.3em 0 1em; }
"""


def bar_chart_svg(
    labels: Sequence[str],
    expected: Sequence[float],
    actual: Sequence[float],
    *,
    title: str,
    width: int = 720,
    height: int = 280,
) -> str:
    """Grouped bars, baseline against batch, one group per bin, as an inline SVG element.

    Args:
        labels: one label per bin.
        expected: the baseline's share per bin.
        actual: the batch's share per bin.
        title: the chart's accessible title.
    """
    left, right, top, bottom = 48, 12, 12, 84
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([*expected, *actual, 0.01])
    scale = plot_h / peak
    group = plot_w / max(len(labels), 1)
    bar = group * 0.38
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for step in range(5):
        share = peak * step / 4
        y = top + plot_h - share * scale
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{share:.0%}</text>"
        )
    for i, label in enumerate(labels):
        x0 = left + i * group + group * 0.1
        for offset, share, colour, who in (
            (0.0, expected[i], BASELINE_COLOUR, "baseline"),
            (bar, actual[i], BATCH_COLOUR, "batch"),
        ):
            h = share * scale
            parts.append(
                f'<rect x="{x0 + offset:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(label)}: {who} '
                f"{share:.1%}</title></rect>"
            )
        cx = left + i * group + group / 2
        ty = top + plot_h + 12
        parts.append(
            f'<text x="{cx:.1f}" y="{ty:.1f}" font-size="10" text-anchor="end" '
            f'transform="rotate(-35 {cx:.1f} {ty:.1f})">{escape(label)}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        'stroke="#888"/></svg>'
    )
    return "".join(parts)


def _figure(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_drift(drift: DriftSummary, *, title: str, facts: Sequence[tuple[str, str]]) -> str:
    """The report page for a drift summary.

    Args:
        drift: the figures.
        title: the page's heading.
        facts: (name, value) lines shown under the heading (bundle, input, rows, ...).
    """
    rows = []
    for f in sorted(drift.features, key=lambda f: -(f.psi or 0.0)):
        rows.append(
            f'<tr class="{"drifted" if f.drifted else ""}"><td>{escape(f.name)}</td>'
            f"<td>{_figure(f.psi)}</td><td>{_figure(f.ks)}</td>"
            f"<td>{f.missing_expected:.1%}</td><td>{f.missing_actual:.1%}</td>"
            f"<td>{f.present:,}</td>"
            f'<td class="flag">{"drifted" if f.drifted else ""}</td></tr>'
        )
    figures = []
    for f in drift.features:
        if f.drifted:
            chart = bar_chart_svg(
                bin_labels(f.edges), f.expected, f.actual, title=f"{f.name}: share per bin"
            )
            figures.append(
                f"<figure><figcaption>{escape(f.name)}: PSI {_figure(f.psi)}, "
                f"KS {_figure(f.ks)}</figcaption>{chart}</figure>"
            )
    prediction = ""
    if drift.prediction is not None:
        p = drift.prediction
        what = "class shares" if p.kind == "classes" else "value histogram"
        chart = bar_chart_svg(p.labels, p.expected, p.actual, title=f"predictions: {what}")
        flag = ' <span class="flag">drifted</span>' if p.drifted else ""
        prediction = (
            f"<h2>Predictions</h2><figure><figcaption>{what}: PSI {_figure(p.psi)}"
            f"{'' if p.ks is None else ', KS ' + _figure(p.ks)}{flag}</figcaption>"
            f"{chart}</figure>"
        )
    drifted = drift.drifted
    verdict = (
        f"{len(drifted)} of {len(drift.features)} features drifted (PSI above "
        f"{drift.threshold}): {escape(', '.join(drifted))}."
        if drifted
        else f"No feature drifted (PSI above {drift.threshold})."
    )
    fact_lines = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(value)}</td></tr>" for name, value in facts
    )
    legend = (
        f'<p class="legend"><span style="background:{BASELINE_COLOUR}"></span>baseline '
        f'(validation data)<span style="background:{BATCH_COLOUR}"></span>this batch</p>'
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><table>{fact_lines}</table>"
        f"<p>{verdict}</p>"
        "<h2>Features</h2><table><tr><th>feature</th><th>PSI</th><th>KS</th>"
        "<th>missing, baseline</th><th>missing, batch</th><th>values</th><th></th></tr>"
        f"{''.join(rows)}</table>"
        f"<p>PSI: population stability index over the baseline's bins. KS: the largest gap "
        f"between the cumulative shares at the baseline's bin edges.</p>"
        f"{legend if figures or prediction else ''}"
        f"{'<h2>Drifted features</h2>' + ''.join(figures) if figures else ''}"
        f"{prediction}</body></html>\n"
    )


def render_report(summary: ScoreSummary) -> str:
    """The drift report of a ``score_file`` run."""
    assert summary.drift is not None
    facts = [
        ("bundle", summary.bundle_id),
        ("input", summary.input),
        ("rows", f"{summary.rows:,}"),
        ("rows scored", f"{summary.scored:,}"),
        ("invalid rows", f"{summary.invalid_rows:,}"),
    ]
    return render_drift(summary.drift, title=f"Drift: {summary.bundle_id}", facts=facts)
