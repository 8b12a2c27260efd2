"""Geometry of the dashboard's inline SVG: the map of report locations and the two charts.

Numbers only: positions, sizes and colours are computed here, from the read model's data; the
markup is in ``templates/charts.svg.j2``, which places every text through autoescaping. Nothing
here is fetched from elsewhere: no map tile. The basemap is Natural Earth's countries and
coastlines shipped with the package (:mod:`~nodes.org_node.dashboard.basemap`), cut to the
mandate's area, under a graticule (parallels and meridians at a round step, labelled in
degrees) and the zones' outlines and names, so every report's position reads against borders,
coasts and the coordinates an observer's device shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from bus.model import Category, Mandate
from nodes.org_node.dashboard.basemap import Land, land
from nodes.org_node.dashboard.read_model import utc_minute

# One colour per category (the legend says which); a colour-blind-safe palette (Okabe-Ito).
CATEGORY_COLOURS: Final = {
    Category.ARMED_CLASH: "#d55e00",
    Category.SHELLING: "#cc0000",
    Category.CEASEFIRE_VIOLATION: "#e69f00",
    Category.TROOP_MOVEMENT: "#0072b2",
    Category.HEAVY_WEAPONS: "#56b4e9",
    Category.CIVILIAN_CASUALTIES: "#8b0057",
    Category.HUMANITARIAN_ACCESS: "#009e73",
    Category.DETENTION: "#6a3d9a",
    Category.PROTEST: "#999933",
    Category.OTHER: "#777777",
}
_COLOUR_BY_LABEL: Final = {c.label: colour for c, colour in CATEGORY_COLOURS.items()}
ZONE_COLOURS: Final = ("#4477aa", "#228833", "#aa3377", "#ccbb44", "#66ccee", "#ee6677")


@dataclass(frozen=True, slots=True)
class MapZone:
    """A zone's outline (top-left corner and size, in pixels)."""

    zone_id: str
    name: str
    x: float
    y: float
    width: float
    height: float
    colour: str


# A report on the map: report id, lat, lon, category label, severity, place, observed at
# (Unix ms), state (verified, revoked, quarantined). Category, severity, place and time are
# None when its content is not shown.
MapPoint = tuple[str, float, float, str | None, int | None, str | None, int | None, str]


@dataclass(frozen=True, slots=True)
class MapDot:
    """A report's location: a dot sized by severity, dashed unless its state is verified."""

    report_id: str
    category: str
    severity: int
    place: str
    state: str
    observed_at: str
    x: float
    y: float
    radius: int
    colour: str


@dataclass(frozen=True, slots=True)
class GridLine:
    """One graticule line (a parallel or a meridian) and its label."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    label_x: float
    label_y: float


@dataclass(frozen=True, slots=True)
class MapView:
    """The map: graticule, zone outlines and report dots on a ``width`` x ``height`` canvas."""

    width: int
    height: int
    zones: list[MapZone]
    dots: list[MapDot]
    grid: list[GridLine]
    land: list[Land]


_STEPS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0)


def grid_step(span: float, lines: int = 6) -> float:
    """The round step (degrees) giving about ``lines`` lines over ``span`` degrees."""
    return next((s for s in _STEPS if span / s <= lines), _STEPS[-1])


def _degrees(value: float, pos: str, neg: str, step: float) -> str:
    digits = 0 if step >= 1 else 1 if step >= 0.1 else 2
    return f"{abs(value):.{digits}f}°{pos if value >= 0 else neg}"


def map_view(mandate: Mandate, points: list[MapPoint], *, width: int = 640) -> MapView:
    """Graticule, zone outlines and report locations, equirectangular around the mandate's
    zones."""
    zones = mandate.zones
    lat0 = min(z.min_lat for z in zones)
    lat1 = max(z.max_lat for z in zones)
    lon0 = min(z.min_lon for z in zones)
    lon1 = max(z.max_lon for z in zones)
    pad_lat, pad_lon = (lat1 - lat0) * 0.06, (lon1 - lon0) * 0.06
    lat0, lat1, lon0, lon1 = lat0 - pad_lat, lat1 + pad_lat, lon0 - pad_lon, lon1 + pad_lon
    kx = math.cos(math.radians((lat0 + lat1) / 2))  # metres per degree of longitude shrink
    scale = width / ((lon1 - lon0) * kx)
    height = round((lat1 - lat0) * scale)

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return round((lon - lon0) * kx * scale, 1), round((lat1 - lat) * scale, 1)

    outlines = []
    for i, z in enumerate(zones):
        x0, y0 = xy(z.max_lat, z.min_lon)
        x1, y1 = xy(z.min_lat, z.max_lon)
        colour = ZONE_COLOURS[i % len(ZONE_COLOURS)]
        outlines.append(MapZone(z.id, z.name, x0, y0, round(x1 - x0, 1), round(y1 - y0, 1), colour))
    dots = []
    for report_id, lat, lon, category, severity, place, observed, state in points:
        x, y = xy(lat, lon)
        colour = _COLOUR_BY_LABEL.get(category or "", "#777777")
        sev = severity or 1
        dots.append(
            MapDot(
                report_id, category or "restricted", sev, place or "", state,
                utc_minute(observed), x, y, 2 + sev, colour,
            )
        )  # fmt: skip
    grid = []
    step = grid_step(max(lat1 - lat0, lon1 - lon0))
    lat = math.ceil(lat0 / step) * step
    while lat <= lat1:
        _, y = xy(lat, lon0)
        grid.append(GridLine(0, y, width, y, _degrees(lat, "N", "S", step), 3, y - 3))
        lat += step
    lon = math.ceil(lon0 / step) * step
    while lon <= lon1:
        x, _ = xy(lat0, lon)
        grid.append(GridLine(x, 0, x, height, _degrees(lon, "E", "W", step), x + 3, height - 4))
        lon += step
    return MapView(width, height, outlines, dots, grid, land((lon0, lat0, lon1, lat1), xy))


def legend() -> list[tuple[str, str]]:
    """The map's key: (category label, colour) for every category."""
    return [(cat.label, colour) for cat, colour in CATEGORY_COLOURS.items()]


@dataclass(frozen=True, slots=True)
class TrendBar:
    """One window of an early-warning chart: its bar, its threshold step and its labels."""

    window_start: str
    count: int
    threshold: float
    alert: bool
    x: float  # the bar
    y: float
    width: float
    height: float
    step_x1: float  # the alert threshold, a dashed step over the bar
    step_x2: float
    step_y: float
    label_x: float  # the window's date under the bar, its count above it
    count_y: float


@dataclass(frozen=True, slots=True)
class TrendChart:
    """An early-warning chart: bars per window, scaled to ``top``."""

    rule: str
    group: str
    width: int
    height: int
    left: int
    axis_y: int
    top: float
    top_y: int
    bars: list[TrendBar]


def trend_chart(series: dict[str, Any], *, width: int = 420, height: int = 170) -> TrendChart:
    """Bars per window, the alert threshold as a dashed step, alert windows in red."""
    pts = series["points"]
    top = max([p["count"] for p in pts] + [p["threshold"] for p in pts] + [1])
    left, bottom, plot_h = 28, 30, height - 50
    bw = (width - left - 10) / len(pts)
    bars = []
    for i, p in enumerate(pts):
        h = p["count"] / top * plot_h
        x = left + i * bw
        bars.append(
            TrendBar(
                window_start=p["window_start"],
                count=p["count"],
                threshold=p["threshold"],
                alert=p["alert"],
                x=x + 2,
                y=height - bottom - h,
                width=bw - 4,
                height=h,
                step_x1=x + 1,
                step_x2=x + bw - 1,
                step_y=height - bottom - p["threshold"] / top * plot_h,
                label_x=x + bw / 2,
                count_y=height - bottom - h - 3,
            )
        )
    return TrendChart(
        rule=series["rule"],
        group=series["group"],
        width=width,
        height=height,
        left=left,
        axis_y=height - bottom,
        top=top,
        top_y=height - bottom - plot_h + 4,
        bars=bars,
    )


@dataclass(frozen=True, slots=True)
class DailyLine:
    """One zone's reports per day: the polyline's points and the zone's label."""

    zone: str
    colour: str
    points: str
    label_y: int


@dataclass(frozen=True, slots=True)
class DailyChart:
    """Reports per day per zone as lines; a day's label under every second day."""

    width: int
    height: int
    left: int
    axis_y: int
    axis_x2: int
    top: int
    top_y: int
    ticks: list[tuple[float, str]]
    lines: list[DailyLine]


def daily_chart(daily: dict[str, Any], *, width: int = 640, height: int = 180) -> DailyChart:
    """Reports per day per zone as lines."""
    zones = daily["zones"]
    top = max([max(v) for v in zones.values()] + [1])
    left, bottom, plot_h = 28, 28, height - 48
    n = len(daily["days"])
    step = (width - left - 90) / max(1, n - 1)
    ticks = [(left + i * step, label) for i, label in enumerate(daily["days"]) if i % 2 == 0]
    lines = []
    for j, (zone, values) in enumerate(zones.items()):
        path = " ".join(
            f"{left + i * step:.1f},{height - bottom - v / top * plot_h:.1f}"
            for i, v in enumerate(values)
        )
        lines.append(DailyLine(zone, ZONE_COLOURS[j % len(ZONE_COLOURS)], path, 20 + 14 * j))
    return DailyChart(
        width=width,
        height=height,
        left=left,
        axis_y=height - bottom,
        axis_x2=width - 90,
        top=top,
        top_y=height - bottom - plot_h + 4,
        ticks=ticks,
        lines=lines,
    )
