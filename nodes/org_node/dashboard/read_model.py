"""An organization node's operator dashboard and read API (aiohttp), on 127.0.0.1 by default.

It reads the node's SQLite store through read-only connections (one per request, in a worker
thread) and never writes, so it stays decoupled from the ingest loop and from the follow-up.
Everything is served by this process: the page has no external script, style sheet, font or
map tile; the map and the charts are inline SVG.

Routes (JSON unless said otherwise):

====================================  =========================================================
``GET /``                             the dashboard (HTML)
``GET /healthz``                      ``{"status": "ok", ...}``; 503 when the store cannot be read
                                      or the node's follow-up stopped
``GET /metrics``                      Prometheus text format
``GET /api/summary``                  counts, mandate, policy
``GET /api/reports?limit=&zone=``     newest accepted reports with their verification state
``GET /api/quarantine``               rejected records with reason codes (reports and board)
``GET /api/decisions``                this organization's decisions, evidence, publication
``GET /api/decisions/others``         other organizations' published, verified decisions, with
                                      whether their evidence matches the reports stored here
``GET /api/trends``                   early-warning series per rule and group, reports per day
``GET /api/statements``               joint statements, who signed, valid at k of n
``GET /api/checkpoints``              the witness's checkpoint agreement (when it runs)
``GET /map.svg``                      the map alone (SVG)
====================================  =========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.errors import BusError, ConfigError, StoreError
from bus.model import Category, Envelope, Mandate, Report
from bus.policy import KIND_TREND, Policy, window_counts
from bus.store.node import NodeStore, evidence_from_json

log = structlog.get_logger(__name__)

FEED_LIMIT: Final = 200
TREND_WINDOWS: Final = 8  # windows shown per early-warning chart
DAILY_DAYS: Final = 14
DAY_MS: Final = 86_400_000
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
ZONE_COLOURS: Final = ("#4477aa", "#228833", "#aa3377", "#ccbb44", "#66ccee", "#ee6677")

Status = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class DashboardConfig:
    """Where the dashboard listens and what it reads.

    Args:
        org: this organization.
        db_path: the node's SQLite store.
        mandate: the verified mandate (zones for the map, k of n for statements).
        policy: this organization's policy (early-warning charts); None: none shown.
        host: listen address; 127.0.0.1 unless the operator decides otherwise.
        port: listen port (0: any free port; see :attr:`Dashboard.port`).
        witness_db: the witness's SQLite file; None: next to the node's, if it exists.
    """

    org: str
    db_path: Path
    mandate: Mandate
    policy: Policy | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    witness_db: Path | None = None


def _utc(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%MZ")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%d %b")


@dataclass(frozen=True, slots=True)
class _Row:
    rowid: int
    report: Report
    digest: bytes
    topic: str
    partition: int
    offset: int
    log_time_ms: int


@dataclass
class _Index:
    """Decoded accepted reports, grown incrementally (the store is append-only)."""

    rows: list[_Row] = field(default_factory=list)
    by_id: dict[str, _Row] = field(default_factory=dict)
    last_rowid: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReadModel:
    """Everything the page and the API show, read from the store (call from a worker thread)."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self._index = _Index()

    @contextlib.contextmanager
    def _store(self) -> Iterator[NodeStore]:
        store = NodeStore(self.config.db_path, read_only=True)
        try:
            yield store
        finally:
            store.close()

    def _refresh(self, store: NodeStore) -> _Index:
        idx = self._index
        with idx.lock:
            while True:
                batch = store.reports_since(idx.last_rowid, limit=5000)
                for rowid, topic, part, off, lt, digest, raw in batch:
                    r = Report.decode(Envelope.decode(raw).payload)
                    row = _Row(rowid, r, digest, topic, part, off, lt)
                    idx.rows.append(row)
                    idx.by_id[r.report_id] = row
                    idx.last_rowid = rowid
                if len(batch) < 5000:
                    return idx

    @staticmethod
    def _revoked(store: NodeStore) -> set[str]:
        try:
            return {r for r, _, _ in store.revoked_after_acceptance()}
        except (AttributeError, sqlite3.Error):
            return set()

    # -- API views ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts, the mandate and the policy in brief."""
        with self._store() as store:
            idx = self._refresh(store)
            q = store.quarantine_counts()
            own = store.decision_counts()
            peers = store.peer_decision_counts()
            stmts = store.statements()
            positions = store.positions()
        m = self.config.mandate
        p = self.config.policy
        return {
            "org": self.config.org,
            "mandate": {
                "id": m.mandate_id,
                "version": m.version,
                "threshold": m.threshold,
                "organizations": [o.org for o in m.organizations],
                "zones": [z.id for z in m.zones],
            },
            "policy": None
            if p is None
            else {
                "rules": [
                    {
                        "name": r.name,
                        "kind": r.kind,
                        "action": r.action,
                        "priority": r.priority,
                        "publish": r.publish,
                    }
                    for r in p.rules
                ],
                "digest": p.digest.hex(),
            },
            "reports_verified": len(idx.rows),
            "quarantined": sum(q.values()),
            "quarantined_by_reason": q,
            "decisions": sum(n for *_, n in own),
            "decisions_published": sum(n for _, _, s, n in own if s == "published"),
            "peer_decisions": sum(n for o, n in peers.items() if o != self.config.org),
            "statements": len(stmts),
            "statements_valid": sum(1 for s in stmts if len(s["signed_by"]) >= s["threshold"]),
            "records_consumed": sum(o for (t, _), o in positions.items() if ".reports." in t),
        }

    def reports(self, *, limit: int = FEED_LIMIT, zone: str | None = None) -> list[dict[str, Any]]:
        """Newest accepted reports first."""
        with self._store() as store:
            idx = self._refresh(store)
            revoked = self._revoked(store)
        rows = [r for r in reversed(idx.rows) if zone is None or r.report.zone == zone]
        return [self._report_json(r, revoked) for r in rows[:limit]]

    @staticmethod
    def _report_json(row: _Row, revoked: set[str]) -> dict[str, Any]:
        r = row.report
        return {
            "report_id": r.report_id,
            "state": "revoked_after_acceptance" if r.report_id in revoked else "verified",
            "org": r.org,
            "observer_id": r.observer_id,
            "seq": r.seq,
            "zone": r.zone,
            "category": r.category.label,
            "sub_type": r.sub_type,
            "severity": r.severity,
            "confidence": r.confidence,
            "observed_at_ms": r.observed_at_ms,
            "observed_at": _utc(r.observed_at_ms),
            "place": r.location.place,
            "lat": r.location.lat,
            "lon": r.location.lon,
            "narrative": r.narrative,
            "casualties": {"killed": r.casualties.killed, "injured": r.casualties.injured},
            "envelope_digest": row.digest.hex(),
            "position": f"{row.topic}[{row.partition}]@{row.offset}",
            "logged_at": _utc(row.log_time_ms),
        }

    def quarantine(self, *, limit: int = 500) -> dict[str, Any]:
        """Rejected report records and rejected board (decision/statement) records."""
        with self._store() as store:
            rows = store.quarantine_detail(limit=limit)
            counts = store.quarantine_counts()
            board = store.board_rejected()
        for r in rows:
            r["logged_at"] = _utc(int(str(r["log_time_ms"])))
            key = r.pop("record_key")
            r["record_key"] = bytes.fromhex(str(key)).decode(errors="replace") if key else ""
        return {
            "records": rows,
            "by_reason": counts,
            "board": [
                {"topic": t, "partition": p, "offset": o, "reason": r, "detail": d}
                for t, p, o, r, d in board
            ],
        }

    def decisions(self, *, limit: int = 500) -> list[dict[str, Any]]:
        """This organization's decisions, newest first."""
        with self._store() as store:
            idx = self._refresh(store)
            stored = store.own_decisions(limit=limit)
        out = []
        for sd in stored:
            d = sd.decision
            out.append(
                {
                    "decision_id": d.decision_id,
                    "rule": d.rule,
                    "kind": d.kind,
                    "action": d.action,
                    "priority": d.priority,
                    "zone": d.zone,
                    "group": d.group,
                    "window": [_utc(d.window_start_ms), _utc(d.window_end_ms)]
                    if d.window_end_ms
                    else None,
                    "decided_at": _utc(d.decided_at_ms),
                    "summary": d.summary,
                    "evidence": [
                        {"report_id": e.report_id, "envelope_digest": e.digest.hex()}
                        for e in d.evidence
                    ],
                    "evidence_places": sorted(
                        {
                            idx.by_id[e.report_id].report.location.place
                            for e in d.evidence
                            if e.report_id in idx.by_id
                        }
                    ),
                    "publish": d.publish,
                    "publication": sd.pub_state,
                    "publication_seq": sd.pub_seq,
                    "publication_offset": sd.pub_offset,
                }
            )
        return out

    def peer_decisions(self, *, limit: int = 500) -> list[dict[str, Any]]:
        """Other organizations' published decisions (verified), newest first; shown only."""
        with self._store() as store:
            idx = self._refresh(store)
            rows = store.peer_decisions(limit=limit)
        out = []
        for r in rows:
            if r["org"] == self.config.org:
                continue
            evidence = evidence_from_json(str(r.pop("evidence_json")))
            match = Counter(
                "unknown"
                if e.report_id not in idx.by_id
                else "matches"
                if idx.by_id[e.report_id].digest == e.digest
                else "differs"
                for e in evidence
            )
            r["evidence"] = [
                {"report_id": e.report_id, "envelope_digest": e.digest.hex()} for e in evidence
            ]
            r["evidence_check"] = dict(match)
            r["decided_at"] = _utc(int(str(r["decided_at_ms"])))
            r["verified"] = True
            out.append(r)
        return out

    def statements(self) -> list[dict[str, Any]]:
        """Joint statements with their signatures; valid at the mandate's threshold."""
        with self._store() as store:
            rows = store.statements()
        for s in rows:
            s["references"] = [
                {"report_id": e.report_id, "envelope_digest": e.digest.hex()}
                for e in evidence_from_json(str(s.pop("references_json")))
            ]
            signed = list(s["signed_by"])
            s["state"] = "valid" if len(signed) >= int(str(s["threshold"])) else "pending"
            s["created_at"] = _utc(int(str(s["created_at_ms"])))
        return rows

    def trends(self) -> dict[str, Any]:
        """Early-warning series (per trend rule and group) and reports per day per zone."""
        with self._store() as store:
            idx = self._refresh(store)
            fired = {
                (sd.decision.rule, sd.decision.group, sd.decision.window_start_ms)
                for sd in store.own_decisions()
                if sd.decision.kind == KIND_TREND
            }
        reports = [r.report for r in idx.rows]
        series = []
        for rule in self.config.policy.rules if self.config.policy else ():
            if rule.kind != KIND_TREND or rule.trend is None:
                continue
            t = rule.trend
            for group, counts in sorted(window_counts(rule, reports).items()):
                last = max(counts)
                starts = [last - k * rule.window_ms for k in range(TREND_WINDOWS - 1, -1, -1)]
                points = []
                for s in starts:
                    ks = range(1, t.baseline_windows + 1)
                    mean = sum(counts.get(s - k * rule.window_ms, 0) for k in ks) / len(ks)
                    points.append(
                        {
                            "window_start_ms": s,
                            "window_start": _utc(s),
                            "count": counts.get(s, 0),
                            "threshold": max(float(t.factor) * mean, t.min_count),
                            "alert": (rule.name, group, s) in fired,
                        }
                    )
                series.append(
                    {
                        "rule": rule.name,
                        "group": group,
                        "window_ms": rule.window_ms,
                        "factor": float(t.factor),
                        "min_count": t.min_count,
                        "points": points,
                    }
                )
        daily: dict[str, dict[int, int]] = {}
        for r in reports:
            day = r.observed_at_ms // DAY_MS * DAY_MS
            per = daily.setdefault(r.zone, {})
            per[day] = per.get(day, 0) + 1
        last_day = max((d for per in daily.values() for d in per), default=0)
        days = [last_day - k * DAY_MS for k in range(DAILY_DAYS - 1, -1, -1)]
        return {
            "early_warning": series,
            "daily": {
                "days": [_day(d) for d in days],
                "days_ms": days,
                "zones": {z: [per.get(d, 0) for d in days] for z, per in sorted(daily.items())},
            },
        }

    def checkpoints(self) -> dict[str, Any]:
        """The witness's view, or why there is none."""
        path = self.config.witness_db
        try:
            from nodes.org_node import witness  # noqa: PLC0415 - optional: the witnessed log (issue 5)
        except ImportError:
            return {
                "available": False,
                "why": "this build has no witness (nodes/org_node/witness.py)",
            }
        if path is None:
            path = witness.default_witness_db(self.config.db_path)
        if not path.exists():
            return {
                "available": False,
                "why": f"no witness runs for this node (no {path.name} next to its store)",
            }
        try:
            status = witness.witness_status(path, self.config.mandate.threshold)
        except (sqlite3.Error, BusError) as exc:
            return {"available": False, "why": f"witness store unreadable: {exc}"}
        return {"available": True, **status}

    def map_points(self) -> list[tuple[Report, str]]:
        """Every accepted report with its state (for the map)."""
        with self._store() as store:
            idx = self._refresh(store)
            revoked = self._revoked(store)
        return [
            (r.report, "revoked" if r.report.report_id in revoked else "verified") for r in idx.rows
        ]

    def metrics(self) -> dict[str, Any]:
        """What /metrics exports from the store."""
        with self._store() as store:
            idx = self._refresh(store)
            q = store.quarantine_counts()
            board = Counter(r for *_, r, _ in store.board_rejected())
            own = store.decision_counts()
            peers = {o: n for o, n in store.peer_decision_counts().items() if o != self.config.org}
            stmts = store.statements()
            positions = store.positions()
        return {
            "verified": len(idx.rows),
            "quarantined": q,
            "board_rejected": dict(board),
            "decisions": own,
            "peers": dict(peers),
            "statements": Counter(
                "valid" if len(s["signed_by"]) >= int(str(s["threshold"])) else "pending"
                for s in stmts
            ),
            "consumed": {
                "reports": sum(o for (t, _), o in positions.items() if ".reports." in t),
                "board": sum(o for (t, _), o in positions.items() if ".reports." not in t),
            },
        }


# ---------------------------------------------------------------------------------------------
# Prometheus


class _OneShot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def metrics_text(m: dict[str, Any], status: dict[str, Any] | None) -> bytes:
    """Prometheus exposition text of the store's counts and the node's live status."""
    fams: list[Metric] = []
    consumed = CounterMetricFamily(
        "obus_records_consumed", "Records read and stored, by topic kind", labels=["kind"]
    )
    for kind, n in sorted(m["consumed"].items()):
        consumed.add_metric([kind], n)
    fams.append(consumed)
    fams.append(
        CounterMetricFamily(
            "obus_reports_verified", "Report records that verified and were stored", m["verified"]
        )
    )
    q = CounterMetricFamily(
        "obus_records_quarantined", "Report records quarantined, by reason", labels=["reason"]
    )
    for reason, n in sorted(m["quarantined"].items()):
        q.add_metric([reason], n)
    fams.append(q)
    b = CounterMetricFamily(
        "obus_board_records_rejected",
        "Decision and statement records rejected, by reason",
        labels=["reason"],
    )
    for reason, n in sorted(m["board_rejected"].items()):
        b.add_metric([reason], n)
    fams.append(b)
    d = CounterMetricFamily(
        "obus_decisions",
        "This organization's decisions, by rule, priority and publication state",
        labels=["rule", "priority", "publication"],
    )
    for rule, prio, state, n in m["decisions"]:
        d.add_metric([rule, prio, state], n)
    fams.append(d)
    p = CounterMetricFamily(
        "obus_peer_decisions", "Verified published decisions of other organizations", labels=["org"]
    )
    for org, n in sorted(m["peers"].items()):
        p.add_metric([org], n)
    fams.append(p)
    s = GaugeMetricFamily("obus_statements", "Joint statements, by state", labels=["state"])
    for state in ("pending", "valid"):
        s.add_metric([state], m["statements"].get(state, 0))
    fams.append(s)
    if status is not None:
        lag = GaugeMetricFamily(
            "obus_consumer_lag",
            "Report records on the broker not yet stored (last fetch)",
            labels=["topic", "partition"],
        )
        for key, n in sorted(status.get("lag", {}).items()):
            topic, _, part = key.rpartition("/")
            lag.add_metric([topic, part], n)
        fams.append(lag)
        fams.append(
            GaugeMetricFamily(
                "obus_consumer_lag_records",
                "Sum of obus_consumer_lag",
                sum(status.get("lag", {}).values()),
            )
        )
        f = status.get("followup", {})
        fams.append(
            GaugeMetricFamily(
                "obus_policy_pending_reports",
                "Reports read but not yet evaluated (waiting for the watermark)",
                f.get("pending", 0),
            )
        )
        fams.append(
            CounterMetricFamily(
                "obus_policy_late_records",
                "Records that arrived below the released watermark",
                f.get("late", 0),
            )
        )
        fams.append(
            GaugeMetricFamily(
                "obus_followup_running", "1 while the follow-up runs", int(status.get("running", 0))
            )
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneShot(fams))
    return generate_latest(registry)


# ---------------------------------------------------------------------------------------------
# SVG


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def map_svg(mandate: Mandate, points: list[tuple[Report, str]], *, width: int = 640) -> str:
    """Zone outlines and report locations, equirectangular around the mandate's zones."""
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

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="map" role="img" viewBox="0 0 {width} '
        f'{height}" width="{width}" height="{height}" aria-label="Map of report locations">',
        f'<rect width="{width}" height="{height}" fill="#f4f1ea"/>',
    ]
    for i, z in enumerate(zones):
        x0, y0 = xy(z.max_lat, z.min_lon)
        x1, y1 = xy(z.min_lat, z.max_lon)
        colour = ZONE_COLOURS[i % len(ZONE_COLOURS)]
        out.append(
            f'<g class="zone" data-zone="{_esc(z.id)}"><rect x="{x0}" y="{y0}" '
            f'width="{round(x1 - x0, 1)}" height="{round(y1 - y0, 1)}" fill="{colour}" '
            f'fill-opacity="0.08" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{x0 + 6}" y="{y0 + 18}" font-size="13" fill="{colour}" '
            f'font-weight="bold">{_esc(z.id)}: {_esc(z.name)}</text></g>'
        )
    for r, state in points:
        x, y = xy(r.location.lat, r.location.lon)
        colour = CATEGORY_COLOURS.get(r.category, "#777")
        radius = 2 + r.severity
        stroke = ' stroke="#000" stroke-dasharray="2,1"' if state != "verified" else ""
        out.append(
            f'<circle class="report" cx="{x}" cy="{y}" r="{radius}" fill="{colour}" '
            f'fill-opacity="0.75"{stroke} data-report-id="{_esc(r.report_id)}"><title>'
            f"{_esc(r.category.label)} severity {r.severity}, {_esc(r.location.place)} "
            f"({_esc(r.org)} {_esc(r.observer_id)}, {_utc(r.observed_at_ms)}, {state})"
            "</title></circle>"
        )
    out.append("</svg>")
    return "".join(out)


def _legend() -> str:
    items = "".join(
        f'<span class="key"><svg width="12" height="12"><circle cx="6" cy="6" r="5" '
        f'fill="{c}"/></svg> {_esc(cat.label)}</span>'
        for cat, c in CATEGORY_COLOURS.items()
    )
    return f'<p class="legend">{items} <span class="key">size = severity</span></p>'


def trend_svg(series: dict[str, Any], *, width: int = 420, height: int = 170) -> str:
    """Bars per window, the alert threshold as a dashed step, alert windows in red."""
    pts = series["points"]
    top = max([p["count"] for p in pts] + [p["threshold"] for p in pts] + [1])
    left, bottom, plot_h = 28, 30, height - 50
    bw = (width - left - 10) / len(pts)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="trend" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="'
        f'{_esc(series["rule"])} {_esc(series["group"])}">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 5}" y2="{height - bottom}" '
        'stroke="#444"/>',
        f'<text x="2" y="{height - bottom - plot_h + 4}" font-size="10">{top:g}</text>',
    ]
    for i, p in enumerate(pts):
        h = p["count"] / top * plot_h
        x = left + i * bw
        fill = "#c0392b" if p["alert"] else "#5d7fa3"
        out.append(
            f'<rect class="{"alert" if p["alert"] else "bar"}" x="{x + 2:.1f}" '
            f'y="{height - bottom - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" fill="{fill}">'
            f"<title>{_esc(p['window_start'])}: {p['count']} reports, alert at "
            f"{p['threshold']:g}</title></rect>"
        )
        ty = height - bottom - p["threshold"] / top * plot_h
        out.append(
            f'<line x1="{x + 1:.1f}" y1="{ty:.1f}" x2="{x + bw - 1:.1f}" y2="{ty:.1f}" '
            'stroke="#222" stroke-dasharray="3,2"/>'
        )
        out.append(
            f'<text x="{x + bw / 2:.1f}" y="{height - bottom + 12}" font-size="9" '
            f'text-anchor="middle">{_esc(p["window_start"][5:10])}</text>'
            f'<text x="{x + bw / 2:.1f}" y="{height - bottom - h - 3:.1f}" font-size="9" '
            f'text-anchor="middle">{p["count"]}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def daily_svg(daily: dict[str, Any], *, width: int = 640, height: int = 180) -> str:
    """Reports per day per zone as lines."""
    zones = daily["zones"]
    top = max([max(v) for v in zones.values()] + [1])
    left, bottom, plot_h = 28, 28, height - 48
    n = len(daily["days"])
    step = (width - left - 90) / max(1, n - 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="daily" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="Reports per day and zone">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 90}" y2="{height - bottom}" '
        'stroke="#444"/>',
        f'<text x="2" y="{height - bottom - plot_h + 4}" font-size="10">{top}</text>',
    ]
    for i, label in enumerate(daily["days"]):
        if i % 2 == 0:
            out.append(
                f'<text x="{left + i * step:.1f}" y="{height - bottom + 14}" font-size="9" '
                f'text-anchor="middle">{_esc(label)}</text>'
            )
    for j, (zone, values) in enumerate(zones.items()):
        colour = ZONE_COLOURS[j % len(ZONE_COLOURS)]
        path = " ".join(
            f"{left + i * step:.1f},{height - bottom - v / top * plot_h:.1f}"
            for i, v in enumerate(values)
        )
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{width - 84}" y="{20 + 14 * j}" font-size="11" fill="{colour}">'
            f"{_esc(zone)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS: Final = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;
background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:12px 20px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;opacity:.85}nav{padding:6px 20px;background:#e8edf3}
nav a{margin-right:14px;color:#1f3a5f}main{padding:8px 20px 40px}
section{margin:18px 0}h2{font-size:17px;border-bottom:2px solid #1f3a5f;padding-bottom:3px}
.tiles{display:flex;flex-wrap:wrap;gap:10px}.tile{background:#fff;border:1px solid #ccd;
border-radius:6px;padding:8px 14px;min-width:120px}.tile b{display:block;font-size:22px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #d7dce2;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eef1f5}tr.rejected td{background:#fff1f0}code{font-size:12px}
.ok{color:#1e7b34;font-weight:bold}.bad{color:#b3261e;font-weight:bold}
.pending{color:#8a6d00;font-weight:bold}.muted{color:#667}.legend .key{margin-right:10px;
white-space:nowrap}.charts{display:flex;flex-wrap:wrap;gap:14px}.chart{background:#fff;
border:1px solid #ccd;border-radius:6px;padding:6px}.placeholder{background:#fff8e1;
border:1px solid #e6c200;padding:8px 12px;border-radius:6px}
.prio-critical{color:#b3261e;font-weight:bold}.prio-high{color:#c25e00;font-weight:bold}
"""


def _table(headers: list[str], rows: list[str], *, table_id: str, empty: str) -> str:
    if not rows:
        return f'<p class="muted" id="{table_id}-empty">{_esc(empty)}</p>'
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'  # noqa: E501


def _short(hexdigest: str) -> str:
    return hexdigest[:12] + "…"


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
    checkpoints = model.checkpoints()
    points = model.map_points()

    tiles = [
        ("reports verified", s["reports_verified"], "t-verified"),
        ("quarantined", s["quarantined"], "t-quarantined"),
        ("our decisions", s["decisions"], "t-decisions"),
        ("published", s["decisions_published"], "t-published"),
        ("others' decisions", s["peer_decisions"], "t-peers"),
        ("joint statements", f"{s['statements_valid']}/{s['statements']} valid", "t-statements"),
    ]
    if status is not None:
        tiles.append(("consumer lag", sum(status.get("lag", {}).values()), "t-lag"))
        tiles.append(("awaiting watermark", status.get("followup", {}).get("pending", 0), "t-pend"))
    tile_html = "".join(
        f'<div class="tile" id="{tid}"><b>{_esc(v)}</b>{_esc(k)}</div>' for k, v, tid in tiles
    )

    feed_rows = [
        f'<tr class="report" data-report-id="{_esc(r["report_id"])}">'
        f'<td class="{"ok" if r["state"] == "verified" else "bad"}">{_esc(r["state"])}</td>'
        f"<td>{_esc(r['observed_at'])}</td><td>{_esc(r['org'])}</td>"
        f"<td>{_esc(r['observer_id'])} #{r['seq']}</td><td>{_esc(r['zone'])}</td>"
        f"<td>{_esc(r['category'])}<br><span class=muted>{_esc(r['sub_type'])}</span></td>"
        f"<td>{r['severity']}</td><td>{_esc(r['place'])}</td>"
        f"<td>{_esc(r['narrative'][:140])}</td><td><code>{_short(r['envelope_digest'])}</code></td></tr>"
        for r in reports
    ]
    q_rows = [
        f'<tr class="rejected" data-reason="{_esc(q["reason"])}">'
        f'<td class="bad">{_esc(q["reason"])}</td><td>{_esc(q["detail"])}</td>'
        f"<td><code>{_esc(q['topic'])}[{q['partition']}]@{q['offset']}</code></td>"
        f"<td>{_esc(q['record_key'])}</td><td>{q['size']} bytes</td><td>{_esc(q['logged_at'])}</td></tr>"  # noqa: E501
        for q in quarantine["records"]
    ]
    q_rows += [
        f'<tr class="rejected" data-reason="{_esc(b["reason"])}">'
        f'<td class="bad">{_esc(b["reason"])}</td><td>{_esc(b["detail"])}</td>'
        f"<td><code>{_esc(b['topic'])}[{b['partition']}]@{b['offset']}</code></td>"
        "<td>(decision/statement record)</td><td></td><td></td></tr>"
        for b in quarantine["board"]
    ]
    by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(quarantine["by_reason"].items()))
    d_rows = [
        f'<tr class="decision" data-decision-id="{_esc(d["decision_id"])}">'
        f"<td>{_esc(d['decided_at'])}</td><td><b>{_esc(d['action'])}</b></td>"
        f'<td class="prio-{_esc(d["priority"])}">{_esc(d["priority"])}</td>'
        f"<td>{_esc(d['rule'])} <span class=muted>({_esc(d['kind'])})</span></td>"
        f"<td>{_esc(d['group'])}</td><td>{_esc(d['summary'])}</td>"
        f"<td>{len(d['evidence'])} report(s): "
        + ", ".join(f"<code>{_esc(e['report_id'][:13])}…</code>" for e in d["evidence"][:3])
        + ("…" if len(d["evidence"]) > 3 else "")
        + f"</td><td>{_esc(d['publication'])}"
        + (f" #{d['publication_seq']}" if d["publication_seq"] else "")
        + "</td></tr>"
        for d in own
    ]
    p_rows = [
        f'<tr class="peer-decision" data-org="{_esc(d["org"])}">'
        f"<td>{_esc(d['org'])}</td><td>{_esc(d['decided_at'])}</td>"
        f"<td><b>{_esc(d['action'])}</b></td>"
        f'<td class="prio-{_esc(d["priority"])}">{_esc(d["priority"])}</td>'
        f"<td>{_esc(d['rule'])}</td><td>{_esc(d['grp'])}</td><td>{_esc(d['summary'])}</td>"
        f'<td class="ok">signature verified ({_esc(d["node_id"])}, #{d["seq"]})</td>'
        f"<td>{_esc(', '.join(f'{k}: {v}' for k, v in sorted(d['evidence_check'].items())))}</td></tr>"  # noqa: E501
        for d in peers
    ]
    st_rows = [
        f'<tr class="statement" data-state="{_esc(st["state"])}">'
        f"<td><b>{_esc(st['title'])}</b><br>{_esc(st['text'])}</td>"
        f"<td>{_esc(st['drafted_by'])}</td>"
        f"<td>{_esc(', '.join(st['signed_by']))}</td>"
        f'<td class="{"ok" if st["state"] == "valid" else "pending"}">'
        f"{len(st['signed_by'])} of {st['organizations']} (k = {st['threshold']}): "
        f"{_esc(st['state'])}</td><td>{len(st['references'])}</td></tr>"
        for st in statements
    ]
    charts = "".join(
        f'<div class="chart" data-rule="{_esc(sr["rule"])}" data-group="{_esc(sr["group"])}">'
        f"<b>{_esc(sr['rule'])}</b> in <b>{_esc(sr['group'])}</b> "
        f'<span class="muted">alert at x{sr["factor"]:g} the baseline and at least '
        f"{sr['min_count']}</span><br>{trend_svg(sr)}</div>"
        for sr in trends["early_warning"]
    )
    if not charts:
        charts = '<p class="muted">This organization\'s policy has no early-warning rule.</p>'
    if checkpoints.get("available"):
        cp_rows = [
            f"<tr><td><code>{_esc(p['topic'])}[{p['partition']}]</code></td><td>{p['size']}</td>"
            f"<td>{p['published_size']}</td><td>{p['quorum_size']}</td>"
            f"<td>{_esc(', '.join(p['quorum_orgs']))}</td></tr>"
            for p in checkpoints["partitions"]
        ]
        alarms = checkpoints.get("alarms", [])
        cp_html = (
            f'<p class="{"bad" if alarms else "ok"}" id="split-view">'
            + (f"{len(alarms)} split-view alarm(s)!" if alarms else "no split-view alarm")
            + "</p>"
            + _table(
                ["partition", "our tree size", "we published", "quorum-signed size", "signed by"],
                cp_rows,
                table_id="checkpoints",
                empty="no checkpoint yet",
            )
        )
    else:
        cp_html = (
            '<p class="placeholder" id="checkpoints-placeholder">Checkpoint agreement is not '
            f"shown: {_esc(checkpoints['why'])}. When this node's witness runs, this panel lists "
            "each partition's tree size, the checkpoints signed by a quorum of organizations "
            "and any split-view alarm.</p>"
        )
    zones = " ".join(
        f'<a href="/?zone={_esc(z.id)}#reports">{_esc(z.id)}</a>' for z in cfg.mandate.zones
    )
    m = s["mandate"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_esc(cfg.org.upper())} node: observer-bus dashboard</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{_esc(cfg.org.upper())} node dashboard</h1>
<p>mandate {_esc(m["id"])} v{m["version"]}: {len(m["organizations"])} organizations,
threshold {m["threshold"]}; zones {_esc(", ".join(m["zones"]))}.
Page built {_utc(time.time_ns() // 1_000_000)} from this node's own store.</p></header>
<nav><a href="#summary">summary</a><a href="#map">map</a><a href="#reports">reports</a>
<a href="#quarantine">quarantine</a><a href="#decisions">our decisions</a>
<a href="#others">others' decisions</a><a href="#trends">early warning</a>
<a href="#statements">joint statements</a><a href="#checkpoints">checkpoints</a>
<a href="/metrics">metrics</a><a href="/api/summary">API</a></nav>
<main>
<section id="summary"><div class="tiles">{tile_html}</div></section>
<section><h2 id="map-title">Map of report locations</h2>{map_svg(cfg.mandate, points)}{_legend()}
</section>
<section id="reports"><h2>Reports feed ({len(reports)} newest{
        f" in zone {_esc(zone)}" if zone else ""
    }) <small>zone: {zones}
<a href="/#reports">all</a></small></h2>
{
        _table(
            [
                "verification",
                "observed",
                "org",
                "observer",
                "zone",
                "category",
                "sev.",
                "place",
                "narrative",
                "envelope",
            ],
            feed_rows,
            table_id="feed",
            empty="no report yet",
        )
    }</section>
<section id="quarantine"><h2>Quarantine: rejected records with their reason</h2>
<p>{_esc(by_reason) or "nothing quarantined"}</p>
{
        _table(
            ["reason", "detail", "position", "record key", "size", "logged"],
            q_rows,
            table_id="quarantine-table",
            empty="no rejected record",
        )
    }</section>
<section id="decisions"><h2>Our decisions ({_esc(cfg.org)}'s own policy)</h2>
{
        _table(
            [
                "decided (log time)",
                "action",
                "priority",
                "rule",
                "group",
                "why",
                "evidence",
                "publication",
            ],
            d_rows,
            table_id="own-decisions",
            empty="no decision yet",
        )
    }</section>
<section id="others"><h2>Other organizations' published decisions (shown, never acted upon)</h2>
{
        _table(
            [
                "org",
                "decided",
                "action",
                "priority",
                "rule",
                "group",
                "why",
                "verification",
                "evidence vs our store",
            ],
            p_rows,
            table_id="peer-decisions",
            empty="no published decision of another organization yet",
        )
    }</section>
<section id="trends"><h2>Early warning</h2><div class="charts">{charts}</div>
<h3>Reports per day and zone (observed time)</h3>{daily_svg(trends["daily"])}</section>
<section id="statements"><h2>Joint statements (valid at {m["threshold"]} of
{len(m["organizations"])} organizations)</h2>
{
        _table(
            ["statement", "drafted by", "signed by", "state", "reports"],
            st_rows,
            table_id="statements-table",
            empty="no joint statement yet",
        )
    }</section>
<section id="checkpoints"><h2>Checkpoint agreement across organizations</h2>{cp_html}</section>
</main></body></html>"""


# ---------------------------------------------------------------------------------------------
# Server


class Dashboard:
    """The HTTP server: ``await start()`` ... ``await stop()``.

    Args:
        config: where to listen and what to read.
        status: live counters of a running node (lag, counts); None when run on a store alone.
    """

    def __init__(self, config: DashboardConfig, status: Status | None = None) -> None:
        self.config = config
        self.model = ReadModel(config)
        self._status = status
        self._runner: web.AppRunner | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        """The dashboard's base URL."""
        return f"http://{self.config.host}:{self.port}/"

    def app(self) -> web.Application:
        """The aiohttp application (routes in the module docstring)."""
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/healthz", self._healthz),
                web.get("/metrics", self._metrics),
                web.get("/map.svg", self._map),
                web.get("/api/summary", self._json(lambda r: self.model.summary())),
                web.get("/api/reports", self._json(self._reports)),
                web.get("/api/quarantine", self._json(lambda r: self.model.quarantine())),
                web.get("/api/decisions", self._json(lambda r: self.model.decisions())),
                web.get("/api/decisions/others", self._json(lambda r: self.model.peer_decisions())),
                web.get("/api/trends", self._json(lambda r: self.model.trends())),
                web.get("/api/statements", self._json(lambda r: self.model.statements())),
                web.get("/api/checkpoints", self._json(lambda r: self.model.checkpoints())),
            ]
        )
        return app

    async def start(self) -> None:
        """Listen (binds ``host:port``; port 0 picks a free one).

        Raises:
            ConfigError: the address cannot be bound (names --http-port and the fix).
        """
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                "--http-port",
                f"cannot listen on {self.config.host}:{self.config.port} ({exc.strerror})",
                "choose a free port",
            ) from exc
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._runner = runner
        log.info("dashboard_listening", org=self.config.org, url=self.url)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _status_now(self) -> dict[str, Any] | None:
        return None if self._status is None else self._status()

    def _reports(self, request: web.Request) -> Any:
        try:
            limit = min(int(request.query.get("limit", FEED_LIMIT)), 10_000)
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be a whole number") from None
        return self.model.reports(limit=limit, zone=request.query.get("zone") or None)

    def _json(self, fn: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            try:
                data = await asyncio.to_thread(fn, request)
            except (StoreError, sqlite3.Error) as exc:
                return web.json_response({"error": str(exc)}, status=503)
            return web.json_response(data, dumps=lambda o: json.dumps(o, default=str))

        return handler

    async def _page(self, request: web.Request) -> web.Response:
        status = self._status_now()
        zone = request.query.get("zone") or None
        try:
            body = await asyncio.to_thread(render_page, self.model, status, zone=zone)
        except (StoreError, sqlite3.Error) as exc:
            return web.Response(status=503, text=f"store unavailable: {exc}")
        return web.Response(text=body, content_type="text/html")

    async def _map(self, request: web.Request) -> web.Response:
        points = await asyncio.to_thread(self.model.map_points)
        return web.Response(text=map_svg(self.config.mandate, points), content_type="image/svg+xml")

    async def _healthz(self, request: web.Request) -> web.Response:
        status = self._status_now()
        try:
            summary = await asyncio.to_thread(self.model.summary)
        except (StoreError, sqlite3.Error) as exc:
            return web.json_response({"status": "unavailable", "error": str(exc)}, status=503)
        running = True if status is None else bool(status.get("running", True))
        body = {
            "status": "ok" if running else "degraded",
            "org": self.config.org,
            "reports_verified": summary["reports_verified"],
            "quarantined": summary["quarantined"],
            "decisions": summary["decisions"],
            "node": status,
        }
        return web.json_response(body, status=200 if running else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        status = self._status_now()
        try:
            snapshot = await asyncio.to_thread(self.model.metrics)
        except (StoreError, sqlite3.Error) as exc:
            return web.Response(status=503, text=f"# store unavailable: {exc}\n")
        return web.Response(
            body=metrics_text(snapshot, status),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


async def serve(config: DashboardConfig) -> int:
    """Serve a store's dashboard alone (``obus dashboard``) until SIGINT/SIGTERM."""
    import signal  # noqa: PLC0415 - process entry point

    dash = Dashboard(config)
    await dash.start()
    print(f"dashboard of {config.org}: {dash.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await dash.stop()
    return 0
