"""One self-contained HTML page: title, generation time, the table, the figures inline.

Figures are embedded as base64 ``data:`` URIs so the page can be mailed or
attached to an issue as a single file.
"""

from __future__ import annotations

import base64
from html import escape

from bdsel.report.render import Report, display_table

FIGURE_CAPTIONS = {
    "accuracy_vs_epoch.png": "Test accuracy against epoch; dotted lines mark the targets. "
    "Groups of seeds: mean with a ± std band.",
    "accuracy_vs_time.png": "Test accuracy against training wall time (selection included).",
    "noise_in_selection.png": "Proportion of noisy labels among the selected points per "
    "epoch (solid) against the base rate of the training set (dashed).",
    "bayesian_terms.png": "Terms of the Bayesian selection objective and α, batch means per epoch.",
    "selection_scores.png": "The baselines' selection scores: selected points vs all candidates.",
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; }
.meta { color: #666; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.4rem; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; white-space: normal; vertical-align: bottom; }
td.wrap { white-space: normal; overflow-wrap: anywhere; max-width: 14rem; }
.scroll { overflow-x: auto; }  /* a very wide table scrolls itself, not the page */
td.text, th.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
.note { color: #555; font-size: 0.85rem; max-width: 60rem; }
.warnings { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5rem 1rem; }
figure { margin: 2rem 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
code { font-size: 0.85rem; }
"""

TEXT_COLUMNS = {"method", "dataset", "noise", "config", "seeds"}
WRAPPED_COLUMNS = {"config"}  # long key=value lists break anywhere; the rest keep their words


def _table_html(report: Report) -> str:
    headers, body = display_table(report.rows, report.targets)
    kinds = ["text" if h in TEXT_COLUMNS else "num" for h in headers]
    kinds = [
        f"{k} wrap" if h in WRAPPED_COLUMNS else k for h, k in zip(headers, kinds, strict=True)
    ]
    head = "".join(f'<th class="{k}">{escape(h)}</th>' for h, k in zip(headers, kinds, strict=True))
    rows = [
        "<tr>"
        + "".join(f'<td class="{k}">{escape(c)}</td>' for c, k in zip(cells, kinds, strict=True))
        + "</tr>"
        for cells in body
    ]
    return (
        f'<div class="scroll"><table id="results">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody>\n</table></div>"
    )


def _figure_html(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = FIGURE_CAPTIONS.get(name, "")
    return (
        f'<figure id="{escape(name)}">\n'
        f'<img src="data:image/png;base64,{data}" alt="{escape(name)}">\n'
        f"<figcaption><code>{escape(name)}</code> {escape(caption)}</figcaption>\n</figure>"
    )


def _runs_html(report: Report) -> str:
    items = []
    for run in report.runs:
        status = "complete" if run.complete else "unfinished"
        items.append(
            f"<li><code>{escape(str(run.path))}</code>: {escape(run.name)}, "
            f"seed {escape(str(run.seed))}, {run.epochs_run} epochs, {status}</li>"
        )
    return f"<details><summary>{len(report.runs)} runs</summary><ul>{''.join(items)}</ul></details>"


def render_html(report: Report, figures: dict[str, bytes]) -> str:
    """The whole page as a string; ``figures`` maps file names to PNG bytes."""
    title = escape(report.title)
    warnings = ""
    if report.warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in report.warnings)
        warnings = f'<div class="warnings"><strong>Warnings</strong><ul>{items}</ul></div>'
    note = (
        "Epochs to a target: first epoch whose test accuracy is at least the target; "
        "&ldquo;-&rdquo; never reached, with the final accuracy in parentheses; for several "
        "seeds the mean over the seeds that reached it, with &ldquo;k/n&rdquo; when not all "
        "did. <em>acc at T of training</em>: each run's test accuracy at its last evaluation "
        "within T seconds of training, T the shortest run's training time (every run on one "
        "clock). Accuracies: mean &plusmn; std over seeds. <em>selecting</em>: share of wall time "
        "spent selecting. <em>noisy</em>: mean fraction of noisy labels among the selected "
        "points against the base rate."
    )
    figs = "\n".join(_figure_html(name, png) for name, png in figures.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<p class="meta">Generated {escape(report.generated_at)} by <code>bdsel report</code>.</p>
{warnings}
<h2>Epochs to target accuracy</h2>
{_table_html(report)}
<p class="note">{note}</p>
{_runs_html(report)}
<h2>Figures</h2>
{figs}
</body>
</html>
"""
