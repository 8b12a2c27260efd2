"""A self-contained HTML audit report: no script, no external file, charts as inline SVG.

Sections: the header (:mod:`nodes.auditor.header`: audit time, tool version, command, mandate
digests, the audited file's SHA-256 or the live log's end positions) and the legend of encodings;
the verdict and the notes; the final verdicts (counts by status, the final state, what
is not sealed yet, a sealed record altered or deleted, seal equivocations); the final seals
(epoch, t_e, the organizations whose signatures made each final, digests); reports per
organization, per zone and per day and violations by kind, all by final verdicts; and every
violation with its position and reason.

The page is rendered from ``templates/report.html.j2`` with autoescaping, so every name, zone,
reason and detail taken from the audited log is shown as text, never as markup; the charts'
geometry is computed here (numbers only) and drawn by the template's macros.

The charts are hand-drawn SVG (no chart library: the page must show offline and carry no
script). Labels are drawn in a monospace font, so their width is known here: a bar chart's label
column is as wide as its longest label (a reason code is never clipped), and a column chart
labels every so many columns that no two labels overlap. The per-day chart has a column for every
day from the first to the last, days without reports as empty columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

import jinja2

from nodes.auditor.header import iso_ms
from nodes.auditor.run import AuditResult
from nodes.auditor.sealed import b64

_DAYS_NOTE: Final = (
    "The observation days span more than ten years: only the {n} days with reports are shown."
)
_MAX_ROWS: Final = 5000  # violations (and seals) listed in the page; the JSON report has all
_TEMPLATES: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("nodes.auditor", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


# Chart text is drawn in a monospace font at 11 px: a character is 0.6 em (6.6 px) wide, so
# CHAR px per character bounds every label's width and no label is clipped or overlaps.
CHAR: Final = 7
FONT_PX: Final = 11


def text_width(text: str) -> int:
    """The width, in pixels, a chart label of ``text`` takes at most."""
    return CHAR * len(text)


@dataclass(frozen=True, slots=True)
class Bar:
    """One item of a chart: a horizontal bar (``offset`` is its row's y, ``length`` its width)
    or a column (``offset`` is its x, ``length`` its height; 0 for a day without reports)."""

    label: str
    value: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class HBarChart:
    """Horizontal bars, labels left (in full: the label column is as wide as the longest) and
    values right; no bars: the figure says "none"."""

    ROW: ClassVar[int] = 20
    BAR_WIDTH: ClassVar[int] = 220  # the longest bar: the largest value

    title: str
    colour: str
    bars: list[Bar]
    label_width: int  # the label column, the longest label and a margin
    value_width: int  # room right of the longest bar for the largest value

    @property
    def width(self) -> int:
        """The drawing's width: labels, bars and values."""
        return self.label_width + self.BAR_WIDTH + self.value_width

    @property
    def height(self) -> int:
        """The drawing's height, one row per bar."""
        return self.ROW * len(self.bars) + 10


@dataclass(frozen=True, slots=True)
class Tick:
    """A label under a column chart's base line, its left edge at ``x``."""

    x: int
    label: str


@dataclass(frozen=True, slots=True)
class ColumnChart:
    """One column per item (e.g. per day, days without reports as empty columns) over a base
    line; under it a label every ``step`` columns, so labels ``x`` at least a label's width and
    a gap apart never overlap; no bars: the figure says "none" (``column`` and ``peak`` 0)."""

    HEIGHT: ClassVar[int] = 160  # the tallest column: the largest value
    BASE: ClassVar[int] = 175  # y of the base line
    GAP: ClassVar[int] = 8  # pixels at least between two labels

    title: str
    colour: str
    bars: list[Bar]
    column: int  # a column's pitch, 2 to 40 pixels
    peak: int  # the largest value (the scale's top)
    left: int  # x of the first column (room for the scale's numbers)
    ticks: list[Tick]
    note: str = ""  # said under the chart (e.g. days left out)

    @property
    def bar_width(self) -> int:
        """A column's drawn width: its pitch less a gap (at least 1 pixel)."""
        return max(1, self.column - max(1, self.column // 4))

    @property
    def axis_end(self) -> int:
        """x where the base line ends."""
        return self.left + self.column * len(self.bars)

    @property
    def width(self) -> int:
        """The drawing's width: every column and the last label in full."""
        last = max((t.x + text_width(t.label) for t in self.ticks), default=0)
        return max(self.axis_end, last) + 10


def hbar_chart(title: str, items: list[tuple[str, int]], colour: str = "#1a73e8") -> HBarChart:
    """A horizontal bar chart, bars scaled to the largest value, labels never cut."""
    peak = max((v for _, v in items), default=0) or 1
    bars = [
        Bar(label, value, 5 + i * HBarChart.ROW, max(1, round(HBarChart.BAR_WIDTH * value / peak)))
        for i, (label, value) in enumerate(items)
    ]
    label_width = max((text_width(label) for label, _ in items), default=0) + 12
    value_width = text_width(str(peak)) + 12
    return HBarChart(title, colour, bars, label_width, value_width)


def column_chart(
    title: str, items: list[tuple[str, int]], colour: str = "#188038", note: str = ""
) -> ColumnChart:
    """A column chart, one column per item in the order given (zero values as empty columns),
    scaled to the largest value, a label every so many columns that no two overlap."""
    if not items:
        return ColumnChart(title, colour, [], 0, 0, 0, [], note)
    col = max(2, min(40, 600 // len(items)))
    peak = max(v for _, v in items)
    left = max(30, text_width(str(peak)) + 8)
    bars = [
        Bar(label, value, left + i * col, round(ColumnChart.HEIGHT * value / (peak or 1)))
        for i, (label, value) in enumerate(items)
    ]
    widest = max(text_width(label) for label, _ in items)
    step = -(-(widest + ColumnChart.GAP) // col)  # columns per label, rounded up
    ticks = [Tick(b.offset, b.label) for b in bars[::step]]
    return ColumnChart(title, colour, bars, col, peak, left, ticks, note)


def render_html(result: AuditResult) -> str:
    """The whole report as one HTML document."""
    final = result.final
    days, every_day = result.days()
    return _TEMPLATES.get_template("report.html.j2").render(
        result=result,
        final_digest=result.final_digest(),
        final_counts=sorted(final.by_status().items()) if final else [],
        not_sealed=sum(u.records for u in final.not_sealed) if final else 0,
        total=sum(result.accepted.values()),
        rejected=sum(result.rejected.values()),
        by_org=hbar_chart("Verified reports per organization", sorted(result.accepted.items())),
        by_zone=hbar_chart("Verified reports per zone", sorted(result.by_zone.items())),
        by_day=column_chart(
            "Verified reports per day (observed, UTC)",
            days,
            note="" if every_day else _DAYS_NOTE.format(n=len(days)),
        ),
        by_kind=hbar_chart(
            "Violations by kind", sorted(result.violations_by_kind().items()), colour="#d93025"
        ),
        max_rows=_MAX_ROWS,
        b64=b64,
        header=result.header,
        iso_ms=iso_ms,
        font_px=FONT_PX,
    )


def write_html(result: AuditResult, path: Path) -> None:
    """Write the HTML report."""
    path.write_text(render_html(result), encoding="utf-8")
