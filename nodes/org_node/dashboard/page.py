"""The dashboard's HTML page and its SVG map, rendered from the Jinja2 templates in ``templates/``.

The environment escapes every value it places (``autoescape``) and refuses a name the template
does not get (``StrictUndefined``), so a report's narrative, a peer's decision summary or a
rejected record's detail is shown as text, never as markup. The page is self-contained: inline
style sheet, inline SVG, no script, nothing fetched from elsewhere.
"""

from __future__ import annotations

import time
from typing import Any, Final

import jinja2

from bus.model import Mandate, Report
from nodes.org_node.dashboard.charts import daily_chart, legend, map_view, trend_chart
from nodes.org_node.dashboard.read_model import ReadModel, utc_minute

CHANGED_SHOWN: Final = 50  # changed verdicts listed on the page (the API pages through all)

_TEMPLATES: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("nodes.org_node.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_page(model: ReadModel, status: dict[str, Any] | None, *, zone: str | None = None) -> str:
    """The whole dashboard page (server-rendered; no script)."""
    cfg = model.config
    s = model.summary()
    reports = model.reports(zone=zone)
    quarantine = model.quarantine()
    own = model.decisions()
    peers = model.peer_decisions()
    trends = model.trends()
    statements = model.statements()
    points = model.map_points()
    seals = model.seals(None if status is None else status.get("seal"))
    changed = model.verdict_changes(limit=CHANGED_SHOWN)

    tiles: list[tuple[str, object, str]] = [
        ("reports verified", s["reports_verified"], "t-verified"),
        ("quarantined", s["quarantined"], "t-quarantined"),
        ("our decisions", s["decisions"], "t-decisions"),
        ("published", s["decisions_published"], "t-published"),
        ("others' decisions", s["peer_decisions"], "t-peers"),
        ("joint statements", f"{s['statements_valid']}/{s['statements']} valid", "t-statements"),
    ]
    if seals["state"] != "no_sealer":
        tiles.append(("final epoch", seals["final_epoch"] or "none yet", "t-final"))
        tiles.append(("verdicts changed by sealing", changed["total"], "t-changed"))
    if status is not None:
        tiles.append(("consumer lag", sum(status.get("lag", {}).values()), "t-lag"))
        followup = status.get("followup", {})
        tiles.append(("final epochs awaiting our policy", followup.get("pending", 0), "t-pend"))
        tiles.append(("finally accepted reports not kept", followup.get("late", 0), "t-late"))
    return _TEMPLATES.get_template("page.html.j2").render(
        org=cfg.org,
        m=s["mandate"],
        built=utc_minute(time.time_ns() // 1_000_000),
        tiles=tiles,
        map_view=map_view(cfg.mandate, points),
        legend_keys=legend(),
        zone=zone,
        zones=[z.id for z in cfg.mandate.zones],
        reports=reports,
        quarantine=quarantine,
        own=own,
        peers=peers,
        trend_charts=[(sr, trend_chart(sr)) for sr in trends["early_warning"]],
        daily_view=daily_chart(trends["daily"]),
        statements=statements,
        seals=seals,
        changed=changed,
    )


def render_map(mandate: Mandate, points: list[tuple[Report, str]]) -> str:
    """The map alone, as an SVG document (the same drawing as on the page)."""
    return _TEMPLATES.get_template("map.svg.j2").render(map_view=map_view(mandate, points))
