"""The dashboard map's offline basemap: countries and coastlines of Natural Earth, shipped with
the package and cut to the mandate's area at run time (nothing is fetched).

**Source.** Natural Earth 1:50m Admin 0 countries (public domain), version 4.1.0 as TopoJSON in
the npm package ``world-atlas`` 2.0.2 (ISC licence). ``make basemap`` fetches that package with
npm and runs :func:`build`, which keeps the topology's arcs (quantized, delta-encoded: how the
package stores them) and each country's name and rings, and writes
``data/countries-50m.json`` beside this module; that file is committed and shipped as package
data, so a node never needs npm or the network.

**At run time** (:func:`land`): the arcs are decoded once per process, each country whose
bounding box meets the map's is assembled into rings, every ring is clipped to the map's box
(Sutherland-Hodgman) and projected with the map's own projection, and the pieces become SVG
paths; a country's name is placed on its largest piece when that piece is large enough to hold
it. A map far from any land (or a package without the data file) gets no land: the graticule
and the zones still stand (:mod:`~nodes.org_node.dashboard.charts`).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

DATA: Final = Path(__file__).with_name("data") / "countries-50m.json"
SOURCE: Final = (
    "Natural Earth 1:50m Admin 0 countries 4.1.0 (public domain), via npm world-atlas 2.0.2"
)

Point = tuple[float, float]  # (lon, lat)
Box = tuple[float, float, float, float]  # lon0, lat0, lon1, lat1


def build(source: Path, out: Path) -> None:
    """Write the shipped basemap from world-atlas's ``countries-50m.json`` (module docstring).

    Raises:
        ValueError: the source is not that topology.
    """
    topo = json.loads(source.read_text(encoding="utf-8"))
    if topo.get("type") != "Topology" or "countries" not in topo.get("objects", {}):
        raise ValueError(f"{source} is not world-atlas's countries topology")
    countries = [
        {"name": g.get("properties", {}).get("name", ""), "type": g["type"], "arcs": g["arcs"]}
        for g in topo["objects"]["countries"]["geometries"]
        if g.get("type") in ("Polygon", "MultiPolygon")
    ]
    data = {
        "source": SOURCE,
        "transform": topo["transform"],
        "arcs": topo["arcs"],
        "countries": countries,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Country:
    """A country: its name, its rings (lists of arc indices), and its bounding box."""

    name: str
    rings: tuple[tuple[int, ...], ...]
    box: Box


@functools.cache
def _world() -> tuple[tuple[tuple[Point, ...], ...], tuple[Country, ...]]:
    """The decoded arcs and the countries (once per process; empty without the data file)."""
    try:
        data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (), ()
    (sx, sy), (tx, ty) = data["transform"]["scale"], data["transform"]["translate"]
    arcs = []
    for arc in data["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(tuple(points))
    countries = []
    for c in data["countries"]:
        polygons = c["arcs"] if c["type"] == "MultiPolygon" else [c["arcs"]]
        rings = tuple(tuple(ring) for polygon in polygons for ring in polygon)
        points = [p for ring in rings for i in ring for p in arcs[i if i >= 0 else ~i]]
        lons, lats = [p[0] for p in points], [p[1] for p in points]
        countries.append(Country(c["name"], rings, (min(lons), min(lats), max(lons), max(lats))))
    return tuple(arcs), tuple(countries)


def _ring(arcs: Sequence[Sequence[Point]], indices: Iterable[int]) -> list[Point]:
    """A ring's points from its arcs (a negative index is the arc reversed; shared end points
    once)."""
    out: list[Point] = []
    for i in indices:
        pts = list(arcs[i]) if i >= 0 else list(reversed(arcs[~i]))
        out.extend(pts[1:] if out else pts)
    return out


def clip(ring: Sequence[Point], box: Box) -> list[Point]:
    """``ring`` clipped to ``box`` (Sutherland-Hodgman; the result may be empty)."""
    lon0, lat0, lon1, lat1 = box
    edges: tuple[tuple[Callable[[Point], bool], Callable[[Point, Point], Point]], ...] = (
        (lambda p: p[0] >= lon0, lambda a, b: _at_lon(a, b, lon0)),
        (lambda p: p[0] <= lon1, lambda a, b: _at_lon(a, b, lon1)),
        (lambda p: p[1] >= lat0, lambda a, b: _at_lat(a, b, lat0)),
        (lambda p: p[1] <= lat1, lambda a, b: _at_lat(a, b, lat1)),
    )
    out = list(ring)
    for inside, cross in edges:
        if not out:
            break
        points, out = out, []
        prev = points[-1]
        for p in points:
            if inside(p):
                if not inside(prev):
                    out.append(cross(prev, p))
                out.append(p)
            elif inside(prev):
                out.append(cross(prev, p))
            prev = p
    return out


def _at_lon(a: Point, b: Point, lon: float) -> Point:
    t = (lon - a[0]) / (b[0] - a[0])
    return lon, a[1] + t * (b[1] - a[1])


def _at_lat(a: Point, b: Point, lat: float) -> Point:
    t = (lat - a[1]) / (b[1] - a[1])
    return a[0] + t * (b[0] - a[0]), lat


def _area(points: Sequence[tuple[float, float]]) -> float:
    return abs(
        sum(
            x0 * y1 - x1 * y0
            for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]], strict=True)
        )
        / 2
    )


@dataclass(frozen=True, slots=True)
class Land:
    """One country's land on the map: its SVG path, and its name's place (None: too small)."""

    name: str
    path: str
    label: tuple[float, float] | None


def land(box: Box, xy: Callable[[float, float], tuple[float, float]]) -> list[Land]:
    """The countries within ``box`` (lon0, lat0, lon1, lat1), clipped and projected with
    ``xy(lat, lon) -> (x, y)`` (module docstring)."""
    arcs, countries = _world()
    lon0, lat0, lon1, lat1 = box
    x0, y0 = xy(lat1, lon0)
    x1, y1 = xy(lat0, lon1)
    view_area = abs((x1 - x0) * (y1 - y0))
    out = []
    for c in countries:
        b = c.box
        if b[2] < lon0 or b[0] > lon1 or b[3] < lat0 or b[1] > lat1:
            continue
        pieces = []
        for ring in c.rings:
            cut = clip(_ring(arcs, ring), box)
            if len(cut) >= 3:
                pieces.append([xy(lat, lon) for lon, lat in cut])
        if not pieces:
            continue
        path = " ".join(
            "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in piece) + " Z" for piece in pieces
        )
        biggest = max(pieces, key=_area)
        label = None
        if _area(biggest) > view_area * 0.04 and c.name:
            xs, ys = [p[0] for p in biggest], [p[1] for p in biggest]
            label = (round(sum(xs) / len(xs), 1), round(sum(ys) / len(ys), 1))
        out.append(Land(c.name, path, label))
    return out


def main(argv: Sequence[str]) -> int:
    """``python -m nodes.org_node.dashboard.basemap SOURCE [OUT]`` (``make basemap``)."""
    if len(argv) not in (1, 2):
        print("usage: python -m nodes.org_node.dashboard.basemap countries-50m.json [OUT]")
        return 2
    out = Path(argv[1]) if len(argv) == 2 else DATA
    build(Path(argv[0]), out)
    print(f"basemap written: {out} ({out.stat().st_size} bytes) from {SOURCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
