"""A self-contained HTML audit report: no script, no external file, charts as inline SVG.

Sections: the verdict and the notes; the final verdicts (counts by status, the final state, what
is not sealed yet, a sealed record altered or deleted, seal equivocations); the final seals
(epoch, t_e, the organizations whose signatures made each final, digests); reports per
organization, per zone and per day and violations by kind, all by final verdicts; and every
violation with its position and reason.

The page is rendered from ``templates/report.html.j2`` with autoescaping, so every name, zone,
reason and detail taken from the audited log is shown as text, never as markup; the charts'
geometry is computed here (numbers only) and drawn by the template's macros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

import jinja2

from nodes.auditor.run import AuditResult
from nodes.auditor.sealed import b64

_MAX_ROWS: Final = 5000  # violations (and seals) listed in the page; the JSON report has all
_TEMPLATES: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("nodes.auditor", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass(frozen=True, slots=True)
class Bar:
    """One item of a chart: a horizontal bar (``offset`` is its row's y, ``length`` its width)
    or a column (``offset`` is its x, ``length`` its height)."""

    label: str
    value: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class HBarChart:
    """Horizontal bars, labels left and values right; no bars: the figure says "none"."""

    ROW: ClassVar[int] = 20
    LABEL_WIDTH: ClassVar[int] = 130
    BAR_WIDTH: ClassVar[int] = 220  # the longest bar: the largest value

    title: str
    colour: str
    bars: list[Bar]

    @property
    def width(self) -> int:
        """The drawing's width, room left for the largest value's number."""
        return self.LABEL_WIDTH + self.BAR_WIDTH + 60

    @property
    def height(self) -> int:
        """The drawing's height, one row per bar."""
        return self.ROW * len(self.bars) + 10


@dataclass(frozen=True, slots=True)
class ColumnChart:
    """One column per item (e.g. per day) over a base line, the first and last labels under it;
    no bars: the figure says "none" (and ``column`` and ``peak`` are 0)."""

    HEIGHT: ClassVar[int] = 160  # the tallest column: the largest value
    BASE: ClassVar[int] = 175  # y of the base line

    title: str
    colour: str
    bars: list[Bar]
    column: int  # a column's pitch, 8 to 40 pixels
    peak: int  # the largest value (the scale's top)

    @property
    def axis_end(self) -> int:
        """x where the base line (and the last label) ends."""
        return 40 + self.column * len(self.bars)

    @property
    def width(self) -> int:
        """The drawing's width (at least room for the two labels)."""
        return max(self.axis_end, 220) + 10


def hbar_chart(title: str, items: list[tuple[str, int]], colour: str = "#1a73e8") -> HBarChart:
    """A horizontal bar chart, bars scaled to the largest value."""
    peak = max((v for _, v in items), default=0) or 1
    bars = [
        Bar(label, value, 5 + i * HBarChart.ROW, max(1, round(HBarChart.BAR_WIDTH * value / peak)))
        for i, (label, value) in enumerate(items)
    ]
    return HBarChart(title, colour, bars)


def column_chart(title: str, items: list[tuple[str, int]], colour: str = "#188038") -> ColumnChart:
    """A column chart, columns scaled to the largest value."""
    if not items:
        return ColumnChart(title, colour, [], 0, 0)
    col = max(8, min(40, 600 // len(items)))
    peak = max(v for _, v in items) or 1
    bars = [
        Bar(label, value, 30 + i * col, max(1, round(ColumnChart.HEIGHT * value / peak)))
        for i, (label, value) in enumerate(items)
    ]
    return ColumnChart(title, colour, bars, col, peak)


def render_html(result: AuditResult) -> str:
    """The whole report as one HTML document."""
    final = result.final
    return _TEMPLATES.get_template("report.html.j2").render(
        result=result,
        final_digest=result.final_digest(),
        final_counts=sorted(final.by_status().items()) if final else [],
        not_sealed=sum(u.records for u in final.not_sealed) if final else 0,
        total=sum(result.accepted.values()),
        rejected=sum(result.rejected.values()),
        by_org=hbar_chart("Verified reports per organization", sorted(result.accepted.items())),
        by_zone=hbar_chart("Verified reports per zone", sorted(result.by_zone.items())),
        by_day=column_chart("Verified reports per day (observed)", sorted(result.by_day.items())),
        by_kind=hbar_chart(
            "Violations by kind", sorted(result.violations_by_kind().items()), colour="#d93025"
        ),
        max_rows=_MAX_ROWS,
        b64=b64,
    )


def write_html(result: AuditResult, path: Path) -> None:
    """Write the HTML report."""
    path.write_text(render_html(result), encoding="utf-8")
