"""A self-contained HTML audit report: no script, no external file, charts as inline SVG.

Sections: the verdict; reports per organization, per zone and per day; violations by kind; the
witnessed log per report partition (records, checkpoints checked, the size a quorum of
organizations signed); and every violation with its position and reason.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Final

from nodes.auditor.run import AuditResult

_MAX_ROWS: Final = 5000  # violations listed in the page; the JSON report has all of them
_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2733;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.ok{background:#e6f4ea;border:1px solid #34a853}.bad{background:#fce8e6;border:1px solid #d93025}
.verdict{padding:.8rem 1rem;border-radius:6px;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1.5rem}
table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{border-bottom:1px solid #e1e4e8;padding:.3rem .5rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.bad td{background:#fdf0ef}
.muted{color:#57606a;font-size:.85rem}svg text{font-size:11px;fill:#1d2733}
svg{max-width:100%;height:auto}figure{margin:0}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def hbar_chart(title: str, items: list[tuple[str, int]], color: str = "#1a73e8") -> str:
    """A horizontal bar chart as an inline SVG element (labels left, values right)."""
    if not items:
        return f'<figure><figcaption>{_esc(title)}</figcaption><p class="muted">none</p></figure>'
    row, label_w, bar_w = 20, 130, 220
    height = row * len(items) + 10
    peak = max(v for _, v in items) or 1
    bars = []
    for i, (label, value) in enumerate(items):
        y = 5 + i * row
        w = max(1, round(bar_w * value / peak))
        bars.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_esc(label)}</text>'
            f'<rect x="{label_w}" y="{y + 2}" width="{w}" height="{row - 6}" fill="{color}">'
            f"<title>{_esc(label)}: {value}</title></rect>"
            f'<text x="{label_w + w + 4}" y="{y + 13}">{value}</text>'
        )
    return (
        f"<figure><figcaption>{_esc(title)}</figcaption>"
        f'<svg role="img" aria-label="{_esc(title)}" width="{label_w + bar_w + 60}"'
        f' height="{height}" viewBox="0 0 {label_w + bar_w + 60} {height}"'
        f' xmlns="http://www.w3.org/2000/svg">{"".join(bars)}</svg></figure>'
    )


def column_chart(title: str, items: list[tuple[str, int]], color: str = "#188038") -> str:
    """A column chart (one column per item, e.g. per day) as an inline SVG element."""
    if not items:
        return f'<figure><figcaption>{_esc(title)}</figcaption><p class="muted">none</p></figure>'
    col = max(8, min(40, 600 // len(items)))
    h, base = 160, 175
    peak = max(v for _, v in items) or 1
    cols = []
    for i, (label, value) in enumerate(items):
        x = 30 + i * col
        ch = max(1, round(h * value / peak))
        cols.append(
            f'<rect x="{x}" y="{base - ch}" width="{col - 3}" height="{ch}" fill="{color}">'
            f"<title>{_esc(label)}: {value}</title></rect>"
        )
    first, last = items[0][0], items[-1][0]
    width = 40 + col * len(items)
    return (
        f"<figure><figcaption>{_esc(title)}</figcaption>"
        f'<svg role="img" aria-label="{_esc(title)}" width="{max(width, 220) + 10}" height="200"'
        f' viewBox="0 0 {max(width, 220) + 10} 200" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="2" y="12">{peak}</text><line x1="28" y1="{base}" x2="{width}" y2="{base}"'
        f' stroke="#8c959f"/>{"".join(cols)}'
        f'<text x="30" y="195">{_esc(first)}</text>'
        f'<text x="{width}" y="195" text-anchor="end">{_esc(last)}</text></svg></figure>'
    )


def render_html(result: AuditResult) -> str:
    """The whole report as one HTML document."""
    total = sum(result.accepted.values())
    rejected = sum(result.rejected.values())
    verdict = (
        f'<p class="verdict ok">VERDICT: every record verified ({total} reports)</p>'
        if result.ok
        else f'<p class="verdict bad">VERDICT: {len(result.violations)} violation(s)</p>'
    )
    by_org = sorted(result.accepted.items())
    charts = [
        hbar_chart("Verified reports per organization", by_org),
        hbar_chart("Verified reports per zone", sorted(result.by_zone.items())),
        column_chart("Verified reports per day (observed)", sorted(result.by_day.items())),
        hbar_chart(
            "Violations by kind", sorted(result.violations_by_kind().items()), color="#d93025"
        ),
    ]
    witness_rows = "".join(
        f'<tr class="{"bad" if w["checkpoints_mismatched"] or w["unwitnessed"] else ""}">'
        f"<td>{_esc(w['topic'])}[{w['partition']}]</td><td class=n>{w['records']}</td>"
        f"<td class=n>{w['checkpoints_checked']}</td>"
        f"<td class=n>{w['checkpoints_mismatched']}</td><td class=n>{w['witnessed_size']}</td>"
        f"<td class=n>{w['unwitnessed']}</td><td>{_esc(', '.join(w['witnessed_by']))}</td>"
        f"<td><code>{_esc(w['root'][:16])}…</code></td></tr>"
        for w in result.witness
    )
    violation_rows = "".join(
        f"<tr><td>{_esc(v.topic)}</td><td class=n>{v.partition}</td><td class=n>{v.offset}</td>"
        f"<td><code>{_esc(v.reason)}</code></td><td>{_esc(v.detail)}</td></tr>"
        for v in result.violations[:_MAX_ROWS]
    )
    more = (
        f'<p class="muted">{len(result.violations) - _MAX_ROWS} more in the JSON report.</p>'
        if len(result.violations) > _MAX_ROWS
        else ""
    )
    trust = (
        "the mandate given to the auditor"
        if result.trust_root == "given"
        else "the mandate embedded in the export (no --mandate was given)"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>observer-bus audit</title>
<style>{_CSS}</style></head><body>
<h1>observer-bus audit</h1>
{verdict}
<p class="muted">Source: {_esc(result.source)}. Trust root: {_esc(trust)}.
Mandate versions applied from the log: {_esc(result.mandate_versions or "none")}.
Registry records: {result.registry_records}. Checkpoint records: {result.checkpoint_records}
({result.checkpoint_texts} distinct checkpoints). Reports verified: {total}; rejected: {rejected}.
Witness quorum: {result.quorum} organizations.</p>
<h2>Reports and violations</h2>
<div class="grid">{"".join(charts)}</div>
<h2>Witnessed log</h2>
<p class="muted">Per report partition: the records' RFC 6962 root is recomputed and compared with
every signed checkpoint of that partition; "witnessed up to" is the largest size whose checkpoint
a quorum of organizations signed or cosigned.</p>
<table><thead><tr><th>partition</th><th>records</th><th>checkpoints checked</th>
<th>mismatched</th><th>witnessed up to</th><th>unwitnessed</th><th>by</th><th>root</th></tr>
</thead><tbody>{witness_rows}</tbody></table>
<h2>Violations ({len(result.violations)})</h2>
<table><thead><tr><th>topic</th><th>partition</th><th>offset</th><th>reason</th><th>detail</th>
</tr></thead><tbody>{violation_rows}</tbody></table>{more}
</body></html>
"""


def write_html(result: AuditResult, path: Path) -> None:
    """Write the HTML report."""
    path.write_text(render_html(result), encoding="utf-8")
