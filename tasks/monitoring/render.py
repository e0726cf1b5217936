"""The monitoring report as one self-contained HTML page, and where it is written.

One file: inline CSS, charts as inline SVG, no external URL and no user text
(only labels, counts and statistics), so it opens offline and can be mailed.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from slmops.tasks.monitoring.checks import pct
from slmops.tasks.monitoring.report import MonitoringReport, save_json
from slmops.tasks.monitoring.statistics import CONFIDENCE_BINS, shares

LATEST_HTML = "latest.html"
LATEST_JSON = "latest.json"

e = html.escape  # short: the page is mostly escaped f-strings


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2530;line-height:1.45;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.5rem 0}
th,td{border-bottom:1px solid #dde3ea;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .55rem;border-radius:.8rem;font-weight:600;
font-size:.8rem;color:#fff}.fired,.alert{background:#c62828}.ok{background:#2e7d32}
.skipped,.insufficient{background:#78909c}.note{background:#fff7e0;border-left:4px solid
#e0a800;padding:.5rem .8rem}.meta td:first-child{width:14rem;color:#52606d}
tr.spike td{background:#fdecea}.bar{display:block;height:.45rem;margin:1px 0;background:#d9822b}
.bar.ref{background:#8aa2c8}.muted{color:#52606d;font-size:.85rem}
svg.chart{max-width:100%;height:auto;font-family:inherit}
"""

HOW_TO_READ = """
<p>Every check compares the served model's <b>live predictions</b> in the window with its
own predictions on the frozen <b>test set</b> (the reference: what it said when the
promotion gate let it serve). No check needs labels except live accuracy. A check
<span class="badge fired">fired</span> only when its statistical test is significant at
the configured level <i>and</i> the effect reaches its threshold (<code>monitoring.*</code>
in <code>params.yaml</code>); <span class="badge ok">ok</span> means it did not;
<span class="badge skipped">skipped</span> means too little data to judge.</p>
<ul>
<li><b>Label distribution shift</b> (PSI of the predicted labels; chi-square test): users
ask about other things than the test set holds. Look at the label table: which labels
grew, which shrank. If the new mix is real and lasting, label recent traffic (the review
queue) and retrain so that the test set and the model follow it.</li>
<li><b>Label share spike</b>: one label's share jumped, for example complaints about one
product, or negative news about a company surging. Often a real-world event rather than
a model fault: tell the people who own that topic; check a sample of those predictions
(the review queue) to see whether the model is right about them.</li>
<li><b>Confidence drop</b>: the model is less sure than on the test set, the first sign of
texts unlike its training data (new products, a new language, a broken upstream that
sends empty or garbled text). Read the least confident predictions (<code>GET
/review</code>), label them, retrain.</li>
<li><b>Text length drift</b>: texts got longer or shorter (PSI over word-count buckets;
Kolmogorov-Smirnov test): a new channel (e-mail instead of chat), truncation upstream.
Accuracy on the new lengths is unknown: the test set's length slices in the evaluation
report show how the model did per length.</li>
<li><b>Live accuracy on feedback</b>: the share of reviewers' feedback that confirmed the
prediction, against a floor. Feedback is a biased sample (people correct wrong answers
more than they confirm right ones), so read it as a trend. Below the floor: ingest the
feedback (<code>slmops ingest-feedback</code>) and retrain.</li>
</ul>
<p>PSI (population stability index) is 0 for identical distributions; below 0.1 is
stable, 0.1-0.2 moderate, above 0.2 large. Two samples of one distribution still differ
by chance, more so with many labels and few predictions: the label-shift line gives that
noise level. "Not enough live predictions" means no check ran: wait for more traffic or
widen the window (<code>monitoring.window_hours</code>).</p>
"""


def svg_bars(
    names: list[str], reference: list[float], live: list[float], title: str, xlabel: str
) -> str:
    """A grouped bar chart (reference vs live shares) as inline SVG.

    Drawn by hand rather than with matplotlib: inline, the report stays one file
    that opens offline; it costs microseconds instead of a second per chart; and
    HTML5 needs no ``xmlns`` (no URL at all in the page).
    """
    width, height = 720, 250
    left, right, top, bottom = 48, 12, 34, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([*reference, *live, 1e-9])
    ymax = math.ceil(peak * 10) / 10 if peak > 0.1 else math.ceil(peak * 100) / 100
    group = plot_w / max(len(names), 1)
    bar = group * 0.38

    def y(v: float) -> float:
        return top + plot_h * (1 - v / ymax)

    out = [
        f'<svg class="chart" role="img" aria-label="{e(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">',
        f'<text x="{left}" y="18" font-size="13" font-weight="600">{e(title)}</text>',
        f'<rect x="{width - 250}" y="8" width="10" height="10" fill="#8aa2c8"/>'
        f'<text x="{width - 236}" y="17" font-size="11">reference (test set)</text>',
        f'<rect x="{width - 110}" y="8" width="10" height="10" fill="#d9822b"/>'
        f'<text x="{width - 96}" y="17" font-size="11">live</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        v = ymax * frac
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="#dde3ea"/><text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="10" '
            f'text-anchor="end">{100 * v:.0f}%</text>'
        )
    step = max(1, math.ceil(len(names) / 12))  # at most about 12 tick labels
    for i, name in enumerate(names):
        x0 = left + i * group + (group - 2 * bar) / 2
        for j, (v, colour) in enumerate(((reference[i], "#8aa2c8"), (live[i], "#d9822b"))):
            out.append(
                f'<rect x="{x0 + j * bar:.1f}" y="{y(v):.1f}" width="{bar:.1f}" '
                f'height="{top + plot_h - y(v):.1f}" fill="{colour}">'
                f"<title>{e(name)}: {100 * v:.1f}%</title></rect>"
            )
        if i % step == 0:
            out.append(
                f'<text x="{left + (i + 0.5) * group:.1f}" y="{top + plot_h + 14}" '
                f'font-size="10" text-anchor="middle">{e(name)}</text>'
            )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="11" '
        f'text-anchor="middle">{e(xlabel)}</text></svg>'
    )
    return "".join(out)


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _header(report: MonitoringReport) -> list[str]:
    """The page head, the verdict and the table of what was compared."""
    badge = {"alert": "ALERT", "ok": "OK", "insufficient": "NOT ENOUGH DATA"}[report.status]
    window = (
        f"last {report.window_hours:g} h ({_ts(report.window_start)} to {_ts(report.window_end)})"
        if report.window_hours is not None
        else f"no time limit (up to {_ts(report.window_end)})"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Monitoring: {e(report.model_name)} v{e(report.model_version)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Monitoring report: {e(report.model_name)} version {e(report.model_version)} "
        f'<span class="badge {report.status}">{badge}</span></h1>',
        f"<p>{e(report.message)}</p>",
        '<table class="meta">',
        f"<tr><td>generated</td><td>{_ts(report.created_at)}</td></tr>",
        f"<tr><td>live window</td><td>{e(window)}; at most {report.max_predictions} "
        "most recent predictions</td></tr>",
        f"<tr><td>live predictions</td><td>{report.live_predictions} (first "
        f"{_ts(report.first_prediction_at)}, last {_ts(report.last_prediction_at)})</td></tr>",
        f"<tr><td>feedback on them</td><td>{report.feedback_rows} row(s)</td></tr>",
        f"<tr><td>reference</td><td>{report.reference_rows} test-set predictions from "
        f"{e(report.reference_source)}</td></tr>",
        "</table>",
    ]
    if report.reference_note:
        parts.append(f'<p class="note">{e(report.reference_note)}</p>')
    return parts


def _checks(report: MonitoringReport) -> list[str]:
    """The table of checks: result, value, threshold and why."""
    parts = ["<h2>Checks</h2>"]
    if not report.checks:
        return [*parts, "<p>No check ran: see above.</p>"]
    parts.append(
        "<table><tr><th>check</th><th>result</th><th>value</th><th>threshold</th>"
        "<th>what it means</th></tr>"
    )
    for c in report.checks:
        value = "-" if c.value is None else f"{c.value:.4g}"
        parts.append(
            f"<tr><td>{e(c.title)}</td><td><span class='badge {c.status}'>{c.status}"
            f"</span></td><td class='num'>{value}</td><td class='num'>{c.threshold:g}</td>"
            f"<td>{e(c.explanation)}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _labels(report: MonitoringReport) -> list[str]:
    """Label shares live vs reference, with bars; a label that spiked is highlighted."""
    if not report.labels:
        return []
    spiked = {
        s["label"]
        for c in report.checks
        if c.name == "label_spike"
        for s in c.details.get("spikes", [])
    }
    top = max(
        [1e-9, *(r["live_share"] for r in report.labels)]
        + [r["reference_share"] for r in report.labels]
    )
    parts = [
        "<h2>Label shares, live vs reference</h2>",
        "<p class='muted'>Largest live gain first. Highlighted: a label that spiked.</p>",
        "<table><tr><th>label</th><th>reference</th><th>live</th><th>change</th><th></th></tr>",
    ]
    for r in report.labels:
        cls = " class='spike'" if r["label"] in spiked else ""
        ref_w = 120 * r["reference_share"] / top
        live_w = 120 * r["live_share"] / top
        parts.append(
            f"<tr{cls}><td>{e(r['label'])}</td>"
            f"<td class='num'>{pct(r['reference_share'])} ({r['reference_count']})</td>"
            f"<td class='num'>{pct(r['live_share'])} ({r['live_count']})</td>"
            f"<td class='num'>{100 * r['gain']:+.1f} pt</td>"
            f"<td><span class='bar ref' style='width:{ref_w:.1f}px'></span>"
            f"<span class='bar' style='width:{live_w:.1f}px'></span></td></tr>"
        )
    parts.append("</table>")
    return parts


def _charts(report: MonitoringReport) -> list[str]:
    """The confidence and text-length charts, when there are live predictions."""
    parts = []
    hist = report.confidence_histogram
    if hist.get("live"):
        names = [f"{i / CONFIDENCE_BINS:.2f}" for i in range(CONFIDENCE_BINS)]
        chart = svg_bars(
            names, hist["reference"], hist["live"], "Share of predictions", "confidence (bin start)"
        )
        parts += ["<h2>Confidence</h2>", chart]
    buckets = report.length_buckets
    if buckets.get("live"):
        names = list(buckets["reference"])
        ref_s, live_s = shares(buckets["reference"]), shares(buckets["live"])
        chart = svg_bars(
            names,
            [ref_s[n] for n in names],
            [live_s[n] for n in names],
            "Share of texts",
            "words per text",
        )
        parts += ["<h2>Text length</h2>", chart]
    return parts


def render_html(report: MonitoringReport) -> str:
    """The report as one self-contained HTML page: inline CSS, inline SVG charts, no
    external URL and no user text (only labels, counts and statistics)."""
    parts = [
        *_header(report),
        *_checks(report),
        *_labels(report),
        *_charts(report),
        "<h2>How to read this report</h2>",
        HOW_TO_READ,
        "</body></html>",
    ]
    return "\n".join(parts)


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: MonitoringReport, out_dir: Path) -> MonitoringReport:
    """Write ``report-<UTC time>.html``, ``latest.html`` and ``latest.json`` in ``out_dir``."""
    stamp = report.created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    report.html_path = out_dir / f"report-{stamp}.html"
    report.json_path = out_dir / LATEST_JSON
    page = render_html(report)
    _write_text_atomic(page, report.html_path)
    _write_text_atomic(page, out_dir / LATEST_HTML)
    save_json(report)
    return report
