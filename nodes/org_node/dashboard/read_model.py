"""The dashboard's read model: what the page and the JSON API show beside the reports feed
(counts, quarantine, decisions, statements, trends, seals), read from the store. The feed and
a report's detail are :mod:`~nodes.org_node.dashboard.reports_view`'s.

It reads the node's SQLite store, and the sealer's final store when the node runs one, through
read-only connections (one per call; call it from a worker thread) and never writes, so it stays
decoupled from the ingest loop, the follow-up and the sealer. Accepted reports are decoded once
and kept in an index that grows with the store (the store is append-only).

Every record shown carries its verdict, provisional or final, and whether sealing changed it
(:mod:`~nodes.org_node.dashboard.final_view`).
"""

from __future__ import annotations

import base64
import contextlib
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from bus.model import PAYLOAD_REPORT, Envelope, Report, SealedReport
from bus.policy import KIND_TREND, window_counts
from bus.store.node import NodeStore, evidence_from_json
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.final_view import (
    QUARANTINED,
    FinalRow,
    FinalView,
    Pos,
    Provisional,
    open_final_view,
    verdict_json,
)

FEED_LIMIT: Final = 200
SEALS_SHOWN: Final = 20  # final seals on the page and in /api/seals
CHANGED_LIMIT: Final = 100  # changed verdicts per page of /api/verdicts/changed (default)
TREND_WINDOWS: Final = 8  # windows shown per early-warning chart
DAILY_DAYS: Final = 14
DAY_MS: Final = 86_400_000


def utc_minute(ms: int | None) -> str:
    """A log or observation time as shown everywhere on the dashboard ("" for none)."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%MZ")


def utc_second(ms: int) -> str:
    """A seal's time *t_e*, to the second (seals may be seconds apart)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


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
    """Decoded accepted reports, grown incrementally (the store is append-only). Restricted
    (sealed) reports are counted and their envelope digests kept (``sealed``: report id ->
    digest), their content never: the counts and charts are of plain reports, and the feed
    (:mod:`~nodes.org_node.dashboard.reports_view`) shows what this node may show of the rest."""

    rows: list[_Row] = field(default_factory=list)
    by_id: dict[str, _Row] = field(default_factory=dict)
    sealed: dict[str, bytes] = field(default_factory=dict)
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
                    env = Envelope.decode(raw)
                    idx.last_rowid = rowid
                    if env.payload_type != PAYLOAD_REPORT:
                        idx.sealed[SealedReport.decode(env.payload).report_id] = digest
                        continue
                    r = Report.decode(env.payload)
                    row = _Row(rowid, r, digest, topic, part, off, lt)
                    idx.rows.append(row)
                    idx.by_id[r.report_id] = row
                if len(batch) < 5000:
                    return idx

    @contextlib.contextmanager
    def _final(self) -> Iterator[FinalView | None]:
        """The node store joined to the final store; None when the node runs no sealer or its
        final store does not exist yet."""
        if self.config.final_db is None:
            yield None
            return
        with open_final_view(self.config.db_path, self.config.final_db) as view:
            yield view

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
            "reports_verified": len(idx.rows) + len(idx.sealed),
            "quarantined": sum(q.values()),
            "quarantined_by_reason": q,
            "decisions": sum(n for *_, n in own),
            "decisions_published": sum(n for _, _, s, n in own if s == "published"),
            "peer_decisions": sum(n for o, n in peers.items() if o != self.config.org),
            "statements": len(stmts),
            "statements_valid": sum(1 for s in stmts if len(s["signed_by"]) >= s["threshold"]),
            "records_consumed": sum(o for (t, _), o in positions.items() if ".reports." in t),
        }

    def accepted_only_finally(self, *, limit: int = FEED_LIMIT) -> list[dict[str, Any]]:
        """Reports this node quarantined and the final judge accepted, newest first, each with
        its ``verdict`` and without content (``content_verified`` False, content fields
        None): the node's copy is the one it quarantined, and nothing here vouches for those
        bytes; its org, observer, seq and id are the final judge's. The paged feed lists the
        reports this node accepted (:mod:`~nodes.org_node.dashboard.reports_view`); these
        are shown beside it."""
        with self._final() as final:
            extra = [] if final is None else final.accepted_only_finally(limit)
        return [_final_only_json(*x) for x in extra]

    def quarantine(self, *, limit: int = 500) -> dict[str, Any]:
        """Rejected report records and rejected board (decision/statement) records, each with
        its ``verdict`` (quarantined provisionally; final once its epoch is judged)."""
        with self._store() as store:
            rows = store.quarantine_detail(limit=limit)
            counts = store.quarantine_counts()
            board = [
                {"topic": t, "partition": p, "offset": o, "reason": r, "detail": d}
                for t, p, o, r, d in store.board_rejected()
            ]
        with self._final() as final:
            finals = {} if final is None else final.final_at(_pos(r) for r in [*rows, *board])
        for r in rows:
            r["logged_at"] = utc_minute(int(str(r["log_time_ms"])))
            key = r.pop("record_key")
            r["record_key"] = bytes.fromhex(str(key)).decode(errors="replace") if key else ""
        for r in [*rows, *board]:
            own = Provisional(QUARANTINED, str(r["reason"]))
            r["verdict"] = verdict_json(own, finals.get(_pos(r)))
        return {"records": rows, "by_reason": counts, "board": board}

    def verdict_changes(self, *, limit: int = CHANGED_LIMIT, offset: int = 0) -> dict[str, Any]:
        """Records whose final verdict differs from this node's provisional one, newest epoch
        first (``kind``: report, or board for the decisions topics), one page of them."""
        page: dict[str, Any] = {"limit": limit, "offset": offset}
        with self._final() as final:
            if final is None:
                return {
                    **page,
                    "available": False,
                    "why": self._no_final_why(),
                    "total": 0,
                    "by_kind": {},
                    "records": [],
                }
            counts = final.changed_counts()
            records = final.changed(limit=limit, offset=offset)
        for r in records:
            r["logged_at"] = utc_minute(int(r["log_time_ms"]))
        return {
            **page,
            "available": True,
            "why": "",
            "total": sum(counts.values()),
            "by_kind": counts,
            "records": records,
        }

    def _no_final_why(self) -> str:
        path = self.config.final_db
        if path is None:
            return "this node runs no sealer: every verdict shown is provisional"
        return f"no final store yet ({path.name}): its sealer has not judged an epoch"

    def seals(
        self, sealer: Mapping[str, Any] | None, *, limit: int = SEALS_SHOWN
    ) -> dict[str, Any]:
        """The seals panel: the newest final seals, the sealer's live status (``sealer``: the
        node's ``status()["seal"]``, None when unknown) and one honest ``state``.

        ``state`` is ``alarm`` (the sealer found a sealed record altered or deleted),
        ``equivocation`` (an organization signed two seal texts for one epoch), ``no_sealer``,
        ``unsealed`` (no final seal judged yet: every verdict is provisional) or ``sealed``,
        in that order of precedence: never ``sealed`` without a final seal, nor while an alarm
        or an equivocation stands. ``alarms`` says each one in words.
        """
        live = dict(sealer) if sealer else None
        view: dict[str, Any] = {
            "seals": [],
            "equivocations": [],
            "provisional_records": None,
            "verdicts_changed": None,
        }
        with self._final() as final:
            if final is not None:
                view = {
                    "seals": final.seals(limit),
                    "equivocations": final.equivocations(),
                    "provisional_records": final.provisional_counts(),
                    "verdicts_changed": final.changed_counts(),
                }
        for s in view["seals"]:
            s["time"] = utc_second(int(s["time_ms"]))
        alarms = []
        alarm = None if live is None else live.get("alarm")
        if alarm:
            alarms.append(
                "sealed log broken: "
                + ": ".join(str(alarm[k]) for k in ("reason", "detail") if alarm.get(k))
                + "; judging stopped"
            )
        alarms += [
            f"equivocation: {e['org']} signed two seal texts for epoch {e['epoch']}"
            for e in view["equivocations"]
        ]
        unrecorded = 0 if live is None else int(live.get("equivocations", 0))
        if unrecorded and not view["equivocations"]:
            alarms.append(f"equivocation: the sealer found {unrecorded}, not in its store yet")
        seals = view["seals"]
        if alarm:
            state = "alarm"
        elif alarms:
            state = "equivocation"
        elif self.config.final_db is None:
            state = "no_sealer"
        elif not seals:
            state = "unsealed"
        else:
            state = "sealed"
        return {
            "state": state,
            "alarms": alarms,
            "why": "" if seals else self._no_final_why(),
            "final_epoch": seals[0]["epoch"] if seals else 0,
            "final_time": seals[0]["time"] if seals else "",
            **view,
            "sealer": live,
        }

    def decisions(self, *, limit: int = 500) -> list[dict[str, Any]]:
        """This organization's decisions, newest first.

        Each names what it rests on: a final rule's decision the final seal of the epoch whose
        verdicts made it fire (``seal_epoch``, ``seal_digest`` in base64, ``verdicts``
        ``final``); a provisional rule's none (``seal_epoch`` 0, ``seal_digest`` None,
        ``verdicts`` ``provisional``).
        """
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
                    "verdicts": "final" if d.final else "provisional",
                    "seal_epoch": d.seal_epoch,
                    "seal_digest": base64.b64encode(d.seal_digest).decode() if d.final else None,
                }
            )
        return out

    def peer_decisions(self, *, limit: int = 500) -> list[dict[str, Any]]:
        """Other organizations' published decisions (verified), newest first; shown only."""
        with self._store() as store:
            idx = self._refresh(store)
            rows = store.peer_decisions(limit=limit)
        out = []
        sealed = idx.sealed
        for r in rows:
            if r["org"] == self.config.org:
                continue
            evidence = evidence_from_json(str(r.pop("evidence_json")))
            digests = {
                e.report_id: idx.by_id[e.report_id].digest
                if e.report_id in idx.by_id
                else sealed.get(e.report_id)
                for e in evidence
            }
            match = Counter(
                "unknown"
                if digests[e.report_id] is None
                else "matches"
                if digests[e.report_id] == e.digest
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


def _pos(row: _Row | Mapping[str, Any]) -> Pos:
    """A row's position, (topic, partition, offset)."""
    if isinstance(row, _Row):
        return row.topic, row.partition, row.offset
    return str(row["topic"]), int(row["partition"]), int(row["offset"])


def _final_only_json(pos: Pos, log_time_ms: int, reason: str, final: FinalRow) -> dict[str, Any]:
    """A report this node quarantined and the final judge accepted: what the final judge says
    of it, and no content (:meth:`ReadModel.reports`)."""
    topic, partition, offset = pos
    return {
        "report_id": final.report_id,
        "state": "quarantined",
        "verdict": verdict_json(Provisional(QUARANTINED, reason), final),
        "content_verified": False,
        "org": final.org,
        "observer_id": final.observer_id,
        "seq": final.seq,
        "zone": None,
        "category": None,
        "sub_type": None,
        "severity": None,
        "confidence": None,
        "observed_at_ms": None,
        "observed_at": "",
        "place": None,
        "lat": None,
        "lon": None,
        "narrative": None,
        "casualties": None,
        "envelope_digest": None,
        "position": f"{topic}[{partition}]@{offset}",
        "logged_at": utc_minute(log_time_ms),
        "log_time_ms": log_time_ms,
    }
