"""The dashboard's read model: everything the page and the JSON API show, read from the store.

It reads the node's SQLite store through read-only connections (one per call; call it from a
worker thread) and never writes, so it stays decoupled from the ingest loop and from the
follow-up. Accepted reports are decoded once and kept in an index that grows with the store
(the store is append-only).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from bus.errors import BusError
from bus.model import Envelope, Report
from bus.policy import KIND_TREND, window_counts
from bus.store.node import NodeStore, evidence_from_json
from nodes.org_node import witness_store
from nodes.org_node.dashboard.config import DashboardConfig

FEED_LIMIT: Final = 200
TREND_WINDOWS: Final = 8  # windows shown per early-warning chart
DAILY_DAYS: Final = 14
DAY_MS: Final = 86_400_000


def utc_minute(ms: int | None) -> str:
    """A log or observation time as shown everywhere on the dashboard ("" for none)."""
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
            "observed_at": utc_minute(r.observed_at_ms),
            "place": r.location.place,
            "lat": r.location.lat,
            "lon": r.location.lon,
            "narrative": r.narrative,
            "casualties": {"killed": r.casualties.killed, "injured": r.casualties.injured},
            "envelope_digest": row.digest.hex(),
            "position": f"{row.topic}[{row.partition}]@{row.offset}",
            "logged_at": utc_minute(row.log_time_ms),
        }

    def quarantine(self, *, limit: int = 500) -> dict[str, Any]:
        """Rejected report records and rejected board (decision/statement) records."""
        with self._store() as store:
            rows = store.quarantine_detail(limit=limit)
            counts = store.quarantine_counts()
            board = store.board_rejected()
        for r in rows:
            r["logged_at"] = utc_minute(int(str(r["log_time_ms"])))
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
                    "window": [utc_minute(d.window_start_ms), utc_minute(d.window_end_ms)]
                    if d.window_end_ms
                    else None,
                    "decided_at": utc_minute(d.decided_at_ms),
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
            r["decided_at"] = utc_minute(int(str(r["decided_at_ms"])))
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
            s["created_at"] = utc_minute(int(str(s["created_at_ms"])))
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
                            "window_start": utc_minute(s),
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
        if path is None:
            path = witness_store.default_witness_db(self.config.db_path)
        if not path.exists():
            return {
                "available": False,
                "why": f"no witness runs for this node (no {path.name} next to its store)",
            }
        try:
            status = witness_store.witness_status(path, self.config.mandate.threshold)
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
