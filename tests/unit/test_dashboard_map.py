"""The dashboard map's offline basemap (Natural Earth countries shipped with the package): cut
to the mandate's area, clipped and projected, drawn under the graticule and the zones; built
reproducibly from world-atlas's topology; nothing fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodes.org_node.dashboard import basemap
from nodes.org_node.dashboard.charts import grid_step, map_view
from nodes.org_node.dashboard.page import render_map
from tests.mission import make_mission


def test_clip_keeps_what_is_inside_the_box() -> None:
    square = [(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)]
    assert sorted(basemap.clip(square, (1, 1, 2, 2))) == sorted(
        [(1.0, 1.0), (2.0, 1.0), (2.0, 2.0), (1.0, 2.0)]
    )
    assert basemap.clip(square, (10, 10, 11, 11)) == []
    inside = [(1.5, 1.5), (1.8, 1.5), (1.6, 1.9)]
    assert basemap.clip(inside, (1, 1, 2, 2)) == inside
    # A triangle across the box's left edge: cut exactly at the edge.
    cut = basemap.clip([(0.0, 1.5), (1.5, 1.2), (1.5, 1.8)], (1, 1, 2, 2))
    assert all(1 <= x <= 2 and 1 <= y <= 2 for x, y in cut) and len(cut) == 4


def test_the_mandate_area_shows_its_countries_within_the_map() -> None:
    mandate = make_mission().scenario.mandate
    view = map_view(mandate, [])
    names = {land.name for land in view.land}
    assert {"Ukraine", "Russia"} <= names
    for land in view.land:
        numbers = [
            float(v) for part in land.path.split() for v in part.strip("MLZ").split(",") if v
        ]
        xs, ys = numbers[0::2], numbers[1::2]
        assert min(xs) >= -0.1 and max(xs) <= view.width + 0.1, land.name
        assert min(ys) >= -0.1 and max(ys) <= view.height + 0.1, land.name
    svg = render_map(mandate, [])
    assert 'class="land"' in svg and 'data-country="Ukraine"' in svg
    assert "basemap: Natural Earth" in svg and "http" not in svg.replace(
        "http://www.w3.org/2000/svg", ""
    )
    # The graticule over it, labelled in degrees.
    assert any(g.label.endswith("°N") for g in view.grid)
    assert any(g.label.endswith("°E") for g in view.grid)


def test_far_from_land_the_map_has_graticule_and_zones_only() -> None:
    def xy(lat: float, lon: float) -> tuple[float, float]:
        return lon, -lat

    assert basemap.land((-150.0, -10.0, -149.0, -9.0), xy) == []  # the mid-Pacific


def test_grid_steps_are_round() -> None:
    assert grid_step(2.4) == 0.5 and grid_step(0.3) == 0.05 and grid_step(40) == 10.0


def test_build_keeps_the_topology_and_refuses_anything_else(tmp_path: Path) -> None:
    topo = {
        "type": "Topology",
        "transform": {"scale": [0.5, 0.5], "translate": [10, 20]},
        "arcs": [[[0, 0], [4, 0], [0, 4], [-4, 0], [0, -4]]],
        "objects": {
            "countries": {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Polygon", "arcs": [[0]], "properties": {"name": "Squareland"}},
                    {"type": "Point", "coordinates": [0, 0]},
                ],
            },
            "land": {},
        },
    }
    src, out = tmp_path / "countries.json", tmp_path / "out.json"
    src.write_text(json.dumps(topo))
    basemap.build(src, out)
    built = json.loads(out.read_text())
    assert built["arcs"] == topo["arcs"] and built["transform"] == topo["transform"]
    assert built["countries"] == [{"name": "Squareland", "type": "Polygon", "arcs": [[0]]}]
    assert "Natural Earth" in built["source"]
    src.write_text(json.dumps({"type": "FeatureCollection"}))
    with pytest.raises(ValueError, match="not world-atlas"):
        basemap.build(src, out)


def test_the_shipped_basemap_is_package_data() -> None:
    assert basemap.DATA.is_file() and basemap.DATA.stat().st_size < 1_000_000
    data = json.loads(basemap.DATA.read_text())
    assert data["source"] == basemap.SOURCE and len(data["countries"]) > 200
