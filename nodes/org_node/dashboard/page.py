"""The dashboard's HTML page and its SVG map, rendered from the Jinja2 templates in ``templates/``.

The environment escapes every value it places (``autoescape``) and refuses a name the template
does not get (``StrictUndefined``), so a report's narrative, a peer's decision summary or a
rejected record's detail is shown as text, never as markup. The page is self-contained: inline
style sheet, inline SVG, no script, nothing fetched from elsewhere.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final

import jinja2

from bus.errors import Reason
from bus.model import Category, Mandate
from bus.store.report_query import PARAMS, ReportPage, ReportRow
from nodes.org_node.dashboard.charts import MapPoint, daily_chart, legend, map_view, trend_chart
from nodes.org_node.dashboard.read_model import ReadModel, utc_minute
from nodes.org_node.dashboard.reports_view import feed_row

CHANGED_SHOWN: Final = 50  # changed verdicts listed on the page (the API pages through all)

_TEMPLATES: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("nodes.org_node.dashboard", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_page(
    model: ReadModel,
    status: dict[str, Any] | None,
    *,
    feed: ReportPage,
    reasons: Mapping[str, str],
    params: Mapping[str, Sequence[str]],
    user: str,
) -> str:
    """The whole dashboard page (server-rendered; no script): ``feed`` is the page of reports
    the query ``params`` (the filter form's fields) asked for, ``reasons`` why the reports that
    retracted some of them did; the map shows those reports."""
    cfg = model.config
    s = model.summary()
    rows = [feed_row(r, reasons) for r in feed.rows]
    final_only = model.accepted_only_finally()
    quarantine = model.quarantine()
    own = model.decisions()
    peers = model.peer_decisions()
    trends = model.trends()
    statements = model.statements()
    points = map_points(feed.rows)
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
        zones=[z.id for z in cfg.mandate.zones],
        orgs=[o.org for o in cfg.mandate.organizations],
        categories=[c.label for c in Category],
        reasons=sorted(r.value for r in Reason),
        form={k: (params[k][0] if params.get(k) else "") for k in PARAMS},
        filtered=any(k not in ("cursor", "limit", "order") and any(v) for k, v in params.items()),
        next_query=_next_query(params, feed.next_cursor),
        first_query=_query_without(params, "cursor"),
        export_query=_query_without(params, "cursor", "limit"),
        reports=rows,
        final_only=final_only,
        user=user,
        quarantine=quarantine,
        own=own,
        peers=peers,
        trend_charts=[(sr, trend_chart(sr)) for sr in trends["early_warning"]],
        daily_view=daily_chart(trends["daily"]),
        statements=statements,
        seals=seals,
        changed=changed,
    )


def map_points(rows: Sequence[ReportRow]) -> list[MapPoint]:
    """The listed reports whose position is shown, as map points."""
    return [
        (r.report_id, r.lat, r.lon, r.category, r.severity, r.place, r.observed_at_ms, _dot(r))
        for r in rows
        if r.lat is not None and r.lon is not None
    ]


def _dot(r: ReportRow) -> str:
    """A listed report's state on the map: its final status when final, else the node's."""
    if r.status == "revoked_after_acceptance":
        return "revoked"
    return "verified" if r.status == "accepted" else r.status


def _kept(params: Mapping[str, Sequence[str]], *drop: str) -> list[tuple[str, str]]:
    return [(k, v) for k, vs in params.items() if k not in drop for v in vs if v.strip()]


def _query_without(params: Mapping[str, Sequence[str]], *drop: str) -> str:
    """The filters' query string without the parameters ``drop``."""
    return urllib.parse.urlencode(_kept(params, *drop))


def _next_query(params: Mapping[str, Sequence[str]], cursor: int | None) -> str | None:
    """The query string of the next page (the same filters, after ``cursor``)."""
    if cursor is None:
        return None
    return urllib.parse.urlencode([*_kept(params, "cursor"), ("cursor", str(cursor))])


def render_map(mandate: Mandate, points: list[MapPoint]) -> str:
    """The map alone, as an SVG document (the same drawing as on the page)."""
    return _TEMPLATES.get_template("map.svg.j2").render(map_view=map_view(mandate, points))


def render_detail(org: str, found: dict[str, Any], *, user: str) -> str:
    """One report's page (:meth:`ReportsView.detail`)."""
    r: ReportRow = found["row"]
    return _TEMPLATES.get_template("detail.html.j2").render(
        org=org,
        r=r,
        v=found["verdict"],
        j=found["report"],
        prev=found["prev_digest"],
        attachments=found["attachment_views"],
        observed_at=utc_minute(r.observed_at_ms),
        signed_at=utc_minute(r.signed_at_ms),
        logged_at=utc_minute(r.log_time_ms),
        retracted_because=found["retracted_because"],
        user=user,
    )


def render_login(org: str, configured: bool, target: str, error: str) -> str:
    """The login page (``configured`` False: nobody can log in; it says how to add a user)."""
    return _TEMPLATES.get_template("login.html.j2").render(
        org=org, configured=configured, target=target, error=error
    )
