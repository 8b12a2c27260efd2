"""Provisional and final verdicts side by side: the node's store joined to its final store.

A node judges every record twice. Its ingest loop judges a report record the moment it reads
it, and its follow-up a decision or statement record: the node store's *provisional* verdicts
(``reports``, marked in ``revoked_after_acceptance`` when a revocation reached the node;
``quarantine``; ``peer_decisions``; ``board_rejected``). Its sealer judges the same records
again once a quorum of organizations sealed their epoch, on the sealed log alone: the *final*
verdicts of :mod:`bus.store.final` (``verdicts``, and ``changes`` for accepted reports a
revocation withdrew). Every honest node holds the same final verdicts; a provisional one may
differ (a registry record that reached this node late, a broker timestamp that lied about the
clock, bytes served differently to the ingest and to the sealer).

Both are joined by the record's position, (topic, partition, offset), over one connection: the
node store opened read-only with the final store ``ATTACH``-ed read-only (``mode=ro``), so the
dashboard can write neither file.

**The rules** (:func:`verdict_json`):

* A record is ``final`` once the final store holds a settled verdict on it: its epoch was judged
  and the verdict is not ``deferred`` (a deferred report is judged again with the next epoch).
  Its final status is ``revoked_after_acceptance`` when a revocation withdrew it, else the
  verdict's status (``accepted``, ``quarantined``; ``not_judged`` for a record of a topic the
  final judge does not judge, such as statements: the seal fixes its place and no final verdict
  contradicts the node's).
* Until then it is ``provisional``: the node's own verdict is all there is.
* A final verdict is ``changed`` when it differs from the node's provisional one: another
  status (accepted provisionally, quarantined or withdrawn finally; quarantined provisionally,
  accepted finally), another reason code, or, for a report accepted both times, another report
  id at that position (the node and the sealer were not served the same record).

A record the node has not read yet has no provisional verdict and is never ``changed``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bus.judge import Status
from bus.store.sqlite import open_db

Pos = tuple[str, int, int]

ACCEPTED: Final = Status.ACCEPTED.value
QUARANTINED: Final = Status.QUARANTINED.value
DEFERRED: Final = Status.DEFERRED.value
NOT_JUDGED: Final = Status.NOT_JUDGED.value
REVOKED: Final = Status.REVOKED_AFTER_ACCEPTANCE.value

# Every provisional verdict of the node store, one row per record: kind ("report" for the
# report topics, "board" for the decisions and statements topics), position, status, reason,
# the report id, org, observer and seq of an accepted report, and the broker's log time.
_PROVISIONAL: Final = """
SELECT 'report' AS kind, r.topic, r.partition, r."offset",
       CASE WHEN x.report_id IS NULL THEN 'accepted' ELSE 'revoked_after_acceptance' END AS status,
       '' AS reason, r.report_id, r.org, r.observer_id, r.seq, r.log_time_ms
  FROM main.reports r LEFT JOIN main.revoked_after_acceptance x USING (report_id)
UNION ALL
SELECT 'report', topic, partition, "offset", 'quarantined', reason, NULL, NULL, NULL, NULL,
       log_time_ms
  FROM main.quarantine
UNION ALL
SELECT 'board', topic, partition, "offset", 'accepted', '', NULL, NULL, NULL, NULL, log_time_ms
  FROM main.peer_decisions
UNION ALL
SELECT 'board', topic, partition, "offset", 'quarantined', reason, NULL, NULL, NULL, NULL,
       log_time_ms
  FROM main.board_rejected
"""

# Every final verdict with the epoch a revocation withdrew it at (NULL: never), and its status
# once that withdrawal is taken into account.
_FINAL: Final = """
SELECT v.topic, v.partition, v."offset", v.epoch, v.judged_epoch, v.status, v.reason, v.detail,
       v.org, v.observer_id, v.report_id, v.seq, c.at_epoch AS revoked_at,
       CASE WHEN c.at_epoch IS NULL THEN v.status ELSE 'revoked_after_acceptance' END AS effective,
       CASE WHEN c.at_epoch IS NULL THEN v.reason ELSE '' END AS effective_reason
  FROM final.verdicts v LEFT JOIN (
      SELECT topic, partition, "offset", min(at_epoch) AS at_epoch FROM final.changes
       GROUP BY topic, partition, "offset"
  ) c ON c.topic = v.topic AND c.partition = v.partition AND c."offset" = v."offset"
"""

# The columns of a _FINAL row that make a FinalRow: after the position, up to "revoked_at".
_ROW: Final = slice(3, 13)

# Records with both verdicts where the settled final one differs (the rules of the docstring).
_CHANGED: Final = (
    "WITH p AS (" + _PROVISIONAL + "), f AS (" + _FINAL + ")"
    """
SELECT p.kind, p.status AS p_status, p.reason AS p_reason, p.report_id AS p_report_id,
       p.org AS p_org, p.observer_id AS p_observer_id, p.seq AS p_seq, p.log_time_ms, f.*
  FROM p JOIN f ON f.topic = p.topic AND f.partition = p.partition AND f."offset" = p."offset"
 WHERE f.status NOT IN ('deferred', 'not_judged')
   AND (p.status <> f.effective OR p.reason <> f.effective_reason
        OR (p.report_id IS NOT NULL AND f.report_id IS NOT NULL AND p.report_id <> f.report_id))
"""
)


@dataclass(frozen=True, slots=True)
class Provisional:
    """The node's own verdict on a record, made when it read it.

    Args:
        status: ``accepted``, ``quarantined`` or ``revoked_after_acceptance``.
        reason: the reason code of a quarantined record, else "".
        report_id: the id of the report the node accepted at that position, if any.
    """

    status: str
    reason: str = ""
    report_id: str | None = None


@dataclass(frozen=True, slots=True)
class FinalRow:
    """One row of the final store's verdicts, with the epoch a revocation withdrew it at."""

    epoch: int
    judged_epoch: int
    status: str
    reason: str
    detail: str
    org: str | None
    observer_id: str | None
    report_id: str | None
    seq: int | None
    revoked_at_epoch: int | None

    @classmethod
    def of(cls, row: Iterable[Any]) -> FinalRow:
        """From the columns of ``_FINAL`` after the position (epoch ... revoked_at)."""
        e, je, status, reason, detail, org, observer_id, report_id, seq, revoked = row
        return cls(e, je, status, reason, detail, org, observer_id, report_id, seq, revoked)

    @property
    def settled(self) -> bool:
        """Whether this is the record's final verdict (a deferred one is judged again)."""
        return self.status != DEFERRED

    @property
    def effective_status(self) -> str:
        """The final status once a revocation that withdrew the record is counted."""
        return REVOKED if self.revoked_at_epoch is not None else self.status

    @property
    def effective_reason(self) -> str:
        """The reason code that goes with :attr:`effective_status`."""
        return "" if self.revoked_at_epoch is not None else self.reason


def _describe(status: str, reason: str) -> str:
    return f"{status} ({reason})" if reason else status


def change_of(prov: Provisional | None, fin: FinalRow | None) -> str:
    """How a settled final verdict differs from the provisional one; "" when it does not (or
    when either is missing, or the final judge does not judge the record)."""
    if prov is None or fin is None or not fin.settled or fin.status == NOT_JUDGED:
        return ""
    status, reason = fin.effective_status, fin.effective_reason
    if (prov.status, prov.reason) != (status, reason):
        return f"{_describe(prov.status, prov.reason)} → {_describe(status, reason)}"
    if prov.report_id and fin.report_id and prov.report_id != fin.report_id:
        return f"the sealed record at this position is report {fin.report_id}, not {prov.report_id}"
    return ""


def verdict_json(prov: Provisional | None, fin: FinalRow | None) -> dict[str, Any]:
    """A record's verdict as the API and the page show it (rules: module docstring).

    Keys: ``state`` (``final`` or ``provisional``), ``status`` and ``reason`` (the final ones
    when final, else the provisional ones), ``epoch`` (the epoch the record was sealed in;
    None while no final seal covers it), ``changed`` and ``change`` (how, in words),
    ``provisional`` (the node's own status and reason; None when it has not read the record),
    ``deferred`` (sealed, judged again with the next epoch), ``revoked_at_epoch`` and
    ``detail`` (the final judge's sentence).
    """
    own = None if prov is None else {"status": prov.status, "reason": prov.reason}
    if fin is None or not fin.settled:
        return {
            "state": "provisional",
            "status": None if prov is None else prov.status,
            "reason": None if prov is None else prov.reason,
            "epoch": None if fin is None else fin.epoch,
            "changed": False,
            "change": "",
            "provisional": own,
            "deferred": fin is not None,
            "revoked_at_epoch": None,
            "detail": "",
        }
    change = change_of(prov, fin)
    return {
        "state": "final",
        "status": fin.effective_status,
        "reason": fin.effective_reason,
        "epoch": fin.epoch,
        "changed": bool(change),
        "change": change,
        "provisional": own,
        "deferred": False,
        "revoked_at_epoch": fin.revoked_at_epoch,
        "detail": fin.detail,
    }


def _b64(raw: bytes) -> str:
    return base64.b64encode(bytes(raw)).decode()


class FinalView:
    """Reads over one read-only connection: the node store (``main``) and the final store
    (``final``). Use from the thread that opened it (:func:`open_final_view`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def final_at(self, positions: Iterable[Pos]) -> dict[Pos, FinalRow]:
        """The final store's verdict rows at ``positions`` (absent: its epoch is not judged)."""
        out: dict[Pos, FinalRow] = {}
        query = _FINAL + 'WHERE v.topic = ? AND v.partition = ? AND v."offset" = ?'
        for pos in positions:
            row = self._db.execute(query, pos).fetchone()
            if row is not None:
                out[pos] = FinalRow.of(row[_ROW])
        return out

    def accepted_only_finally(self, limit: int) -> list[tuple[Pos, int, str, FinalRow]]:
        """Report records the node quarantined and the final judge accepted, newest first:
        (position, log time, the node's reason code, final row)."""
        rows = self._db.execute(
            "WITH f AS (" + _FINAL + ') SELECT q.topic, q.partition, q."offset", q.log_time_ms,'  # noqa: S608 - constant fragments
            " q.reason, f.epoch, f.judged_epoch, f.status, f.reason, f.detail, f.org,"
            " f.observer_id, f.report_id, f.seq, f.revoked_at FROM main.quarantine q JOIN f"
            ' ON f.topic = q.topic AND f.partition = q.partition AND f."offset" = q."offset"'
            " WHERE f.status = 'accepted' ORDER BY q.log_time_ms DESC, q.id DESC LIMIT ?",
            (limit,),
        )
        return [((t, p, o), lt, reason, FinalRow.of(rest)) for t, p, o, lt, reason, *rest in rows]

    def changed(self, *, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """Records whose final verdict differs from the provisional one, newest epoch first."""
        rows = self._db.execute(
            _CHANGED + 'ORDER BY f.epoch DESC, f.topic, f.partition, f."offset" LIMIT ? OFFSET ?',
            (limit, offset),
        )
        out = []
        for row in rows:
            kind, p_status, p_reason, p_report, p_org, p_observer, p_seq, log_time_ms = row[:8]
            t, part, off = row[8:11]
            prov = Provisional(p_status, p_reason, p_report)
            fin = FinalRow.of(row[11:21])
            # Who: the final judge's view of the claims (a quarantined report has no seq
            # there), else the report this node accepted at that position.
            org = fin.org if fin.org is not None else p_org
            observer_id = fin.observer_id if fin.observer_id is not None else p_observer
            seq = fin.seq if fin.seq is not None else p_seq
            out.append(
                {
                    "kind": kind,
                    "topic": t,
                    "partition": part,
                    "offset": off,
                    "position": f"{t}[{part}]@{off}",
                    "log_time_ms": log_time_ms,
                    "org": org,
                    "observer_id": observer_id,
                    "report_id": fin.report_id or p_report,
                    "seq": seq,
                    "verdict": verdict_json(prov, fin),
                }
            )
        return out

    def changed_counts(self) -> dict[str, int]:
        """How many records' final verdicts differ from the provisional ones, by kind."""
        counts = {"report": 0, "board": 0}
        rows = self._db.execute("SELECT kind, count(*) FROM (" + _CHANGED + ") GROUP BY kind")  # noqa: S608 - constant fragments
        for kind, n in rows:
            counts[str(kind)] = int(n)
        return counts

    def changed_states(self) -> dict[Pos, str]:
        """The final status of every report the node accepted whose final verdict is no longer
        ``accepted`` (for the map)."""
        rows = self._db.execute(
            'SELECT topic, partition, "offset", effective FROM (' + _CHANGED + ")"  # noqa: S608 - constant fragments
            " WHERE kind = 'report' AND p_status <> 'quarantined' AND effective <> 'accepted'"
        )
        return {(t, p, o): str(s) for t, p, o, s in rows}

    def provisional_counts(self) -> dict[str, int]:
        """The node's records with no final verdict yet (epoch not judged, or deferred), by
        kind."""
        counts = {"report": 0, "board": 0}
        rows = self._db.execute(
            "SELECT p.kind, count(*) FROM (" + _PROVISIONAL + ") p WHERE NOT EXISTS ("  # noqa: S608 - constant fragments
            " SELECT 1 FROM final.verdicts v WHERE v.topic = p.topic AND"
            ' v.partition = p.partition AND v."offset" = p."offset"'
            " AND v.status <> 'deferred'"
            ") GROUP BY p.kind"
        )
        for kind, n in rows:
            counts[str(kind)] = int(n)
        return counts

    def seals(self, limit: int) -> list[dict[str, Any]]:
        """The newest final seals, newest first (digests in base64, signers sorted)."""
        rows = self._db.execute(
            "SELECT epoch, digest, time_ms, seal_offset, signers, state_digest, mandate_version,"
            " records FROM final.seals ORDER BY epoch DESC LIMIT ?",
            (limit,),
        )
        return [
            {
                "epoch": e,
                "time_ms": t,
                "signers": s.split(",") if s else [],
                "digest": _b64(d),
                "state_digest": _b64(sd),
                "seal_offset": o,
                "mandate_version": mv,
                "records": n,
            }
            for e, d, t, o, s, sd, mv, n in rows
        ]

    def equivocations(self, limit: int = 100) -> list[dict[str, Any]]:
        """Evidence of organizations that signed two seal texts for one epoch, newest first:
        org, epoch, the seals-topic offsets of both signatures, and the evidence itself."""
        out = []
        for org, epoch, evidence in self._db.execute(
            "SELECT org, epoch, evidence FROM final.equivocations ORDER BY epoch DESC, org LIMIT ?",
            (limit,),
        ):
            try:
                doc = json.loads(evidence)
            except ValueError:
                doc = {}
            doc = doc if isinstance(doc, dict) else {}
            offsets = [
                part.get("offset") if isinstance(part, dict) else None
                for part in (doc.get("first"), doc.get("second"))
            ]
            out.append({"org": org, "epoch": epoch, "offsets": offsets, "evidence": doc})
        return out


_TABLES: Final = ("seals", "verdicts", "changes", "equivocations")


def _attach(db: sqlite3.Connection, final_db: Path) -> bool:
    """Attach the final store read-only as ``final``; False when it is absent or incomplete."""
    if not final_db.exists():
        return False
    uri = "file:" + urllib.parse.quote(str(final_db.resolve())) + "?mode=ro"
    try:
        db.execute("ATTACH DATABASE ? AS final", (uri,))
        found = db.execute(
            "SELECT count(*) FROM final.sqlite_master WHERE type = 'table' AND name IN"
            " (?, ?, ?, ?)",
            _TABLES,
        ).fetchone()[0]
    except sqlite3.Error:
        return False
    return int(found) == len(_TABLES)


@contextlib.contextmanager
def open_final_view(node_db: Path, final_db: Path) -> Iterator[FinalView | None]:
    """The node store with the final store attached, both read-only; None while the final store
    does not exist or lacks its tables (its sealer has not created it yet).

    Raises:
        StoreError: the node store cannot be opened.
    """
    db = open_db(node_db, what="store", read_only=True)
    try:
        yield FinalView(db) if _attach(db, final_db) else None
    finally:
        db.close()
