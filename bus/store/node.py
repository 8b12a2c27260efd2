"""A node's durable store: accepted reports, quarantine, chain heads, decisions, log positions.

SQLite (WAL). One :meth:`NodeStore.commit_batch` call is one transaction: the reports and
quarantined records of a batch of Kafka records, the new chain heads, the decisions and the
next offset of every topic-partition the batch touched. The store, not Kafka's committed group
offsets, is the source of truth for where to resume, so a crash anywhere never loses a record
and never stores one twice. Quarantine and report rows are unique by (topic, partition, offset).

Quarantine rows (``quarantine``, and ``board_rejected`` for the decisions and statements topics)
are bounded (:mod:`bus.store.quarantine`): at most the record limit of bytes, only the first
4 KiB of a larger record, its exact ``size`` and ``sha256`` always, and no bytes at all once the
topic is past its quarantine quota (``over_quota``); the row and the position are stored either
way.

Amendments (:mod:`bus.verify`): a report row keeps what it ``corrects`` or ``retracts`` (with the
``retraction_reason``), and the row of its target the link back, ``corrected_by`` or
``retracted_by``, written in the same transaction; :meth:`NodeStore.amendment_of` answers the
node's :class:`~bus.verify.ChainBook` from them. Rows stored before these columns existed have
them empty.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bus.errors import StoreConflictError, StoreError
from bus.ingest import Accepted, AcceptedSealed, Outcome, Quarantined, RecordRef, kept_of
from bus.model import sha256
from bus.policy import Decision, Evidence
from bus.store.quarantine import (
    DEFAULT_QUARANTINE_QUOTA_BYTES,
    MAX_DETAIL_CHARS,
    MAX_KEY_BYTES,
    USAGE_SCHEMA,
    QuarantineBudget,
    QuarantineCharge,
    QuotaUsage,
    log_changes,
    reconcile,
    recount,
    settle_limits,
    usage,
)
from bus.store.sqlite import open_db, sqlite_transaction
from bus.verify import DEFAULT_MAX_RECORD_BYTES, Amendable, ChainHead

if TYPE_CHECKING:
    from bus.decision import VerifiedDecision
    from bus.statement import StatementStatus

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS reports (
    report_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    observer_id TEXT NOT NULL, org TEXT NOT NULL, seq INTEGER NOT NULL,
    zone TEXT NOT NULL, category TEXT NOT NULL, severity INTEGER NOT NULL,
    observed_at_ms INTEGER NOT NULL, log_time_ms INTEGER NOT NULL,
    digest BLOB NOT NULL, key_id BLOB NOT NULL, envelope BLOB NOT NULL,
    stored_at_ms INTEGER,
    UNIQUE (topic, partition, "offset"), UNIQUE (observer_id, seq)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, log_time_ms INTEGER NOT NULL,
    record_key BLOB, raw BLOB NOT NULL,
    size INTEGER, sha256 BLOB, over_quota INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic, partition, "offset")
);
CREATE TABLE IF NOT EXISTS chain_heads (
    observer_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY, org TEXT NOT NULL, rule TEXT NOT NULL, action TEXT NOT NULL,
    priority TEXT NOT NULL, zone TEXT NOT NULL, evidence TEXT NOT NULL,
    decided_at_ms INTEGER NOT NULL
);
-- Reports accepted before a revocation of their key reached this node, with seq above the
-- revocation's last_valid_seq: no longer valid (README "Revocation"), kept and marked here.
CREATE TABLE IF NOT EXISTS revoked_after_acceptance (
    report_id TEXT PRIMARY KEY, key_id BLOB NOT NULL, seq INTEGER NOT NULL,
    last_valid_seq INTEGER NOT NULL, revoking_org TEXT NOT NULL, detail TEXT NOT NULL
);
-- Restricted (sealed) reports this node accepted: who can read them and whether this node
-- could (README "Restricted reports"). Their `reports` row holds the clear fields, with
-- category 'sealed' and severity 0 when this node cannot read the content.
CREATE TABLE IF NOT EXISTS sealed_reports (
    report_id TEXT PRIMARY KEY, recipients TEXT NOT NULL, readability TEXT NOT NULL,
    detail TEXT NOT NULL, content BLOB
);
"""


# Follow-up (decisions, others' published decisions, joint statements). Kept in tables of their
# own so the base schema above stays as it is; `decisions` keeps one row per decision and
# `decision_details` adds what a decision rests on and its publication state.
_FOLLOWUP_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS decision_details (
    decision_id TEXT PRIMARY KEY, kind TEXT NOT NULL, grp TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL, window_end_ms INTEGER NOT NULL,
    evidence_json TEXT NOT NULL, summary TEXT NOT NULL, publish INTEGER NOT NULL,
    pub_state TEXT NOT NULL, pub_seq INTEGER UNIQUE, pub_envelope BLOB, pub_offset INTEGER,
    seal_epoch INTEGER NOT NULL DEFAULT 0, seal_digest BLOB
);
CREATE TABLE IF NOT EXISTS peer_decisions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    log_time_ms INTEGER NOT NULL, decision_id TEXT NOT NULL, org TEXT NOT NULL,
    node_id TEXT NOT NULL, seq INTEGER NOT NULL, rule TEXT NOT NULL, kind TEXT NOT NULL,
    action TEXT NOT NULL, priority TEXT NOT NULL, zone TEXT NOT NULL, grp TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL, window_end_ms INTEGER NOT NULL,
    evidence_json TEXT NOT NULL, decided_at_ms INTEGER NOT NULL, signed_at_ms INTEGER NOT NULL,
    summary TEXT NOT NULL, digest BLOB NOT NULL, envelope BLOB NOT NULL,
    seal_epoch INTEGER NOT NULL DEFAULT 0, seal_digest BLOB,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE TABLE IF NOT EXISTS statements (
    statement_id TEXT PRIMARY KEY, drafted_by TEXT NOT NULL, title TEXT NOT NULL,
    text TEXT NOT NULL, references_json TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
    digest BLOB NOT NULL, threshold INTEGER NOT NULL, organizations INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS statement_signatures (
    statement_id TEXT NOT NULL, org TEXT NOT NULL, signer TEXT NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    log_time_ms INTEGER NOT NULL,
    PRIMARY KEY (statement_id, org)
);
CREATE TABLE IF NOT EXISTS board_rejected (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, log_time_ms INTEGER NOT NULL, raw BLOB NOT NULL,
    size INTEGER, sha256 BLOB, over_quota INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, partition, "offset")
);
-- The board's state after the last sealed epoch it judged (bus.statement.SealedBoard), written
-- with the rows that epoch produced: a restart continues from it.
CREATE TABLE IF NOT EXISTS board_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), epoch INTEGER NOT NULL, state BLOB NOT NULL
);
"""


def _evidence_json(evidence: Iterable[Evidence]) -> str:
    return json.dumps([[e.report_id, e.digest.hex()] for e in evidence], separators=(",", ":"))


def evidence_from_json(text: str) -> tuple[Evidence, ...]:
    """Evidence stored by :func:`_evidence_json`."""
    return tuple(Evidence(r, bytes.fromhex(d)) for r, d in json.loads(text))


def _insert_decisions(db: sqlite3.Connection, decisions: Iterable[Decision]) -> list[Decision]:
    """Insert decisions not stored yet (ids are stable); returns the ones inserted."""
    new = []
    for d in decisions:
        cur = db.execute(
            "INSERT OR IGNORE INTO decisions VALUES (?,?,?,?,?,?,?,?)",
            (d.decision_id, d.org, d.rule, d.action, d.priority, d.zone, ",".join(d.report_ids),
             d.decided_at_ms),
        )  # fmt: skip
        if cur.rowcount:
            db.execute(
                "INSERT OR IGNORE INTO decision_details (decision_id, kind, grp, window_start_ms,"
                " window_end_ms, evidence_json, summary, publish, pub_state, seal_epoch,"
                " seal_digest) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (d.decision_id, d.kind, d.group, d.window_start_ms, d.window_end_ms,
                 _evidence_json(d.evidence), d.summary, int(d.publish),
                 PUB_PENDING if d.publish else PUB_LOCAL, d.seal_epoch, d.seal_digest or None),
            )  # fmt: skip
            new.append(d)
    return new


# Publication states of an own decision: kept locally (policy says publish = false); waiting
# to be signed; signed (envelope stored, maybe sent); published (the broker acknowledged it).
PUB_LOCAL: Final = "local"
PUB_PENDING: Final = "pending"
PUB_SIGNED: Final = "signed"
PUB_PUBLISHED: Final = "published"


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """One stored quarantine row: where, why, the record's size and SHA-256, the bytes kept
    (all, a prefix, or none when ``over_quota``)."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    size: int
    sha256: bytes
    raw: bytes
    over_quota: bool


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """An own decision with its publication state."""

    decision: Decision
    pub_state: str
    pub_seq: int | None
    pub_envelope: bytes | None
    pub_offset: int | None


# Page cache of a read-write connection (an upper bound, filled only as pages are read): a
# batch's commit appends ~4 MiB of ~1 KiB rows and walks the reports table's three unique
# indexes; with it instead of SQLite's 2 MiB, commit_batch took ~3 µs less CPU per stored
# report of the bench's 50k (25 -> 22; bench/README.md "Node ingest per CPU-second").
STORE_CACHE_MIB: Final = 32
# Page size of a store this code creates (an existing store keeps its own; the schema is the
# same): the bench's report inserts took ~2 µs less CPU each than with SQLite's 4 KiB pages.
STORE_PAGE_SIZE: Final = 16384
# Column order of the INSERT in commit_batch (explicit: stored_at_ms may have been added last by
# _add_missing_columns to a store created before it existed).
_REPORT_COLUMNS: Final = (
    'report_id, topic, partition, "offset", observer_id, org, seq, zone, category, severity,'
    " observed_at_ms, log_time_ms, digest, key_id, envelope, corrects, retracts,"
    " retraction_reason, stored_at_ms"
)
# Columns added after the first release: (table, column, declaration). CREATE TABLE IF NOT
# EXISTS never changes an existing table, so older stores get them through ALTER TABLE.
_ADDED_COLUMNS: Final = (
    ("reports", "stored_at_ms", "INTEGER"),
    ("reports", "corrects", "TEXT NOT NULL DEFAULT ''"),
    ("reports", "retracts", "TEXT NOT NULL DEFAULT ''"),
    ("reports", "retraction_reason", "TEXT NOT NULL DEFAULT ''"),
    ("reports", "corrected_by", "TEXT NOT NULL DEFAULT ''"),
    ("reports", "retracted_by", "TEXT NOT NULL DEFAULT ''"),
    ("quarantine", "size", "INTEGER"),
    ("quarantine", "sha256", "BLOB"),
    ("quarantine", "over_quota", "INTEGER NOT NULL DEFAULT 0"),
    ("board_rejected", "size", "INTEGER"),
    ("board_rejected", "sha256", "BLOB"),
    ("board_rejected", "over_quota", "INTEGER NOT NULL DEFAULT 0"),
    ("decision_details", "seal_epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("decision_details", "seal_digest", "BLOB"),
    ("peer_decisions", "seal_epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("peer_decisions", "seal_digest", "BLOB"),
)
# The quarantine tables and the SQL of the bytes one of their rows keeps (its quota cost).
_QUARANTINE_TABLES: Final = (
    ("quarantine", "length(raw) + coalesce(length(record_key), 0)"),
    ("board_rejected", "length(raw)"),
)


def _add_missing_columns(db: sqlite3.Connection) -> set[str]:
    """Add the columns an older store lacks; returns the tables that got any."""
    added = set()
    for table, column, decl in _ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            added.add(table)
    return added


def _bound_old_rows(db: sqlite3.Connection, table: str, limit: int) -> None:
    """Give quarantine rows stored before rows were bounded their size and SHA-256, and cut
    them to the bounds (one row in memory at a time)."""
    ids = [i for (i,) in db.execute(f"SELECT rowid FROM {table} WHERE size IS NULL")]  # noqa: S608
    has_key = table == "quarantine"
    for i in ids:
        raw, detail, key = db.execute(
            f"SELECT raw, detail, {'record_key' if has_key else 'NULL'} FROM {table}"  # noqa: S608
            " WHERE rowid = ?",
            (i,),
        ).fetchone()
        raw = bytes(raw)
        db.execute(
            f"UPDATE {table} SET raw = ?, detail = ?, size = ?, sha256 = ?"  # noqa: S608
            + (", record_key = ?" if has_key else "")
            + " WHERE rowid = ?",
            (kept_of(raw, limit), detail[:MAX_DETAIL_CHARS], len(raw), sha256(raw),
             *([None if key is None else bytes(key)[:MAX_KEY_BYTES]] if has_key else []), i),
        )  # fmt: skip


def _check_positions(
    db: sqlite3.Connection,
    positions: Mapping[tuple[str, int], int],
    expected: Mapping[tuple[str, int], int],
) -> None:
    for topic, partition in positions:
        row = db.execute(
            "SELECT next_offset FROM positions WHERE topic = ? AND partition = ?",
            (topic, partition),
        ).fetchone()
        have, want = (0 if row is None else row[0]), expected.get((topic, partition), 0)
        if have != want:
            raise StoreConflictError(
                f"{topic}[{partition}] is stored up to {have}, the batch started at {want}",
                topic=topic,
                partition=partition,
            )


def _check_heads(db: sqlite3.Connection, expected: Mapping[str, ChainHead | None]) -> None:
    for observer, head in expected.items():
        row = db.execute(
            "SELECT seq, digest FROM chain_heads WHERE observer_id = ?", (observer,)
        ).fetchone()
        have = None if row is None else ChainHead(row[0], bytes(row[1]))
        if have != head:
            raise StoreConflictError(
                f"chain head of {observer} changed since the batch read it", observer=observer
            )


class NodeStore:
    """SQLite store of one organization node. Not thread-safe: use from one thread at a time."""

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        max_record_bytes: int | None = None,
        quarantine_quota_bytes: int | None = None,
    ) -> None:
        """Open (and create) the store; ``read_only`` opens an existing one for reading only.

        ``max_record_bytes`` (the verification limit) and ``quarantine_quota_bytes`` (bytes kept
        per topic) bound the quarantine rows this store writes (:mod:`bus.store.quarantine`).
        The node passes them and they are recorded in the store; a writer that leaves them None
        (the follow-up) uses the recorded ones, or the defaults (256 KiB, 16 MiB) when none are.
        """
        self._path = str(path)
        self._limit = DEFAULT_MAX_RECORD_BYTES
        self._quota = DEFAULT_QUARANTINE_QUOTA_BYTES
        if read_only:
            self._db = open_db(path, what="store", read_only=True)
            return
        # timeout: how long a write waits for another process's transaction (workers of one
        # organization may share a store, see commit_batch). NORMAL in WAL mode survives
        # process crashes; a power loss may lose the last transactions, which are then read
        # again from Kafka (positions live here too).
        self._db = open_db(
            path,
            what="store",
            schema=_SCHEMA + _FOLLOWUP_SCHEMA + USAGE_SCHEMA,
            synchronous="NORMAL",
            threads=True,
            cache_mib=STORE_CACHE_MIB,
            page_size=STORE_PAGE_SIZE,
        )
        # One transaction, so that processes opening one store at once migrate it once.
        with self._tx() as db:
            self._limit, self._quota = settle_limits(
                db, max_record_bytes, quarantine_quota_bytes, default_limit=DEFAULT_MAX_RECORD_BYTES
            )
            older = _add_missing_columns(db) & {t for t, _ in _QUARANTINE_TABLES}
            for table in sorted(older):
                _bound_old_rows(db, table, self._limit)
            if older:
                recount(db, _QUARANTINE_TABLES)
            changes = reconcile(db, self._quota)
        log_changes(self._db, changes, quota_bytes=self._quota, store=self._path)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite_transaction(self._db, "store")

    def commit_batch(
        self,
        outcomes: Iterable[Outcome],
        heads: dict[str, ChainHead],
        decisions: Iterable[Decision],
        positions: dict[tuple[str, int], int],
        *,
        stored_at_ms: int | None = None,
        expect_positions: Mapping[tuple[str, int], int] | None = None,
        expect_heads: Mapping[str, ChainHead | None] | None = None,
    ) -> QuarantineCharge:
        """Store a batch atomically (see module docstring).

        ``stored_at_ms`` (default: now) is written to every report row of the batch: when this
        node had the report durably, for latency measurements (``make bench``).

        Several workers of one organization may share a store (``obus node --ingest-only``).
        Each batch is then judged against what its worker last read, and it commits only if
        that is still what the store holds: ``expect_positions`` gives the next offset the
        batch started from for every partition in ``positions`` (0: never stored), and
        ``expect_heads`` the chain head each changed observer had before the batch (None:
        none). Checked inside the write transaction, so committed batches form one serial
        history, each judged against exactly the state before it; a report id stored
        meanwhile by another worker is the same kind of conflict.

        Quarantined outcomes are stored bounded and charged against their topic's quota
        (:class:`~bus.store.quarantine.QuarantineBudget`); a topic this batch takes past its
        quota is logged once, ``quarantine_quota_exceeded``.

        Returns:
            What the quarantined records did to the quotas.

        Raises:
            StoreConflictError: another writer changed what the batch was judged against; nothing
                of the batch was stored (reload, seek back and judge again).
            StoreError: the transaction failed and nothing of the batch was stored.
        """
        reports, quarantined, sealed_rows = [], [], []
        # (the target's column, the amending report id, the target), in log order
        links: list[tuple[str, str, str]] = []
        for o in outcomes:
            ref = o.ref
            if isinstance(o, Accepted):
                r = o.verified.report
                reports.append(
                    (r.report_id, ref.topic, ref.partition, ref.offset, r.observer_id, r.org,
                     r.seq, r.zone, r.category.label, r.severity, r.observed_at_ms,
                     ref.log_time_ms, o.verified.envelope_digest, o.verified.key_id, o.raw,
                     r.corrects, r.retracts, r.retraction_reason)
                )  # fmt: skip
                if r.amends:
                    column = "retracted_by" if r.retracts else "corrected_by"
                    links.append((column, r.report_id, r.amends))
            elif isinstance(o, AcceptedSealed):
                s, inner, v = o.verified.sealed, o.verified.report, o.verified
                reports.append(
                    (s.report_id, ref.topic, ref.partition, ref.offset, s.observer_id, s.org,
                     s.seq, s.zone, inner.category.label if inner else "sealed",
                     inner.severity if inner else 0,
                     inner.observed_at_ms if inner else s.signed_at_ms, ref.log_time_ms,
                     v.envelope_digest, v.key_id, o.raw, "", "", "")
                )  # fmt: skip
                sealed_rows.append(
                    (s.report_id, ",".join(s.recipient_orgs), v.readability.value, v.detail,
                     v.content or None)
                )  # fmt: skip
            else:
                quarantined.append(o)
        with self._tx() as db:
            if expect_positions is not None:
                _check_positions(db, positions, expect_positions)
            if expect_heads is not None:
                _check_heads(db, expect_heads)
            stored = int(time.time() * 1000) if stored_at_ms is None else stored_at_ms
            try:
                db.executemany(
                    f"INSERT INTO reports ({_REPORT_COLUMNS}) VALUES ({','.join('?' * 19)})",  # noqa: S608
                    [(*row, stored) for row in reports],
                )
            except sqlite3.IntegrityError as exc:
                raise StoreConflictError(f"a report of the batch is already stored: {exc}") from exc
            db.executemany("INSERT INTO sealed_reports VALUES (?,?,?,?,?)", sealed_rows)
            for column, by, target in links:
                db.execute(
                    f"UPDATE reports SET {column} = ? WHERE report_id = ?",  # noqa: S608
                    (by, target),
                )
            budget = self._budget(db)
            rows = []
            for q in quarantined:  # in log order: the quota keeps the first ones' bytes
                b = budget.row(q)
                rows.append(
                    (q.ref.topic, q.ref.partition, q.ref.offset, q.reason, b.detail,
                     q.ref.log_time_ms, b.key, b.raw, b.size, b.sha256, int(b.over_quota))
                )  # fmt: skip
            db.executemany(
                'INSERT INTO quarantine (topic, partition, "offset", reason, detail, log_time_ms,'
                " record_key, raw, size, sha256, over_quota) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            charge = budget.flush()
            db.executemany(
                "INSERT INTO chain_heads VALUES (?,?,?) ON CONFLICT(observer_id) DO UPDATE"
                " SET seq=excluded.seq, digest=excluded.digest",
                [(o, h.seq, h.digest) for o, h in heads.items()],
            )
            _insert_decisions(db, decisions)
            db.executemany(
                "INSERT INTO positions VALUES (?,?,?) ON CONFLICT(topic, partition) DO UPDATE"
                " SET next_offset=excluded.next_offset",
                [(t, p, o) for (t, p), o in positions.items()],
            )
        self._alarm(charge)
        return charge

    def _budget(self, db: sqlite3.Connection) -> QuarantineBudget:
        return QuarantineBudget(db, self._quota, self._limit)

    def _alarm(self, charge: QuarantineCharge) -> None:
        """Log the topics a committed transaction took past their quota (once each)."""
        changes = [(t, True) for t in charge.exceeded]
        log_changes(self._db, changes, quota_bytes=self._quota, store=self._path)

    # -- reads -----------------------------------------------------------------------------

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to read per (topic, partition)."""
        rows = self._db.execute("SELECT topic, partition, next_offset FROM positions")
        return {(t, p): o for t, p, o in rows}

    def chain_heads(self) -> dict[str, ChainHead]:
        """Every observer's chain head."""
        rows = self._db.execute("SELECT observer_id, seq, digest FROM chain_heads")
        return {o: ChainHead(s, bytes(d)) for o, s, d in rows}

    def report_digest(self, report_id: str) -> bytes | None:
        """Envelope digest of a stored report, or None."""
        row = self._db.execute(
            "SELECT digest FROM reports WHERE report_id = ?", (report_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def amendment_of(self, org: str, observer_id: str, report_id: str) -> Amendable | None:
        """The stored report ``report_id`` as an amendment target (:data:`bus.verify.AmendLookup`;
        report ids are unique in this store, so ``org`` and ``observer_id`` pick nothing)."""
        del org, observer_id
        row = self._db.execute(
            "SELECT org, observer_id, retracts <> '', corrected_by, retracted_by FROM reports"
            " WHERE report_id = ?",
            (report_id,),
        ).fetchone()
        if row is None:
            return None
        return Amendable(str(row[0]), str(row[1]), bool(row[2]), str(row[3]), str(row[4]))

    def amendments(self) -> list[dict[str, str]]:
        """Every stored link, in storage order: ``report_id`` amended ``target`` (``kind``
        ``correction`` or ``retraction``, with the ``reason`` of a retraction)."""
        rows = self._db.execute(
            "SELECT report_id, corrects, retracts, retraction_reason FROM reports"
            " WHERE corrects <> '' OR retracts <> '' ORDER BY rowid"
        )
        return [
            {
                "report_id": rid,
                "target": retracts or corrects,
                "kind": "retraction" if retracts else "correction",
                "reason": reason,
            }
            for rid, corrects, retracts, reason in rows
        ]

    def report_ids(self) -> Iterator[str]:
        """Every stored report id (plain and sealed), in no particular order."""
        for (report_id,) in self._db.execute("SELECT report_id FROM reports"):
            yield report_id

    def envelopes(self) -> Iterator[bytes]:
        """Envelope bytes of every accepted plain report, in the order they were stored."""
        for (raw,) in self._db.execute(
            "SELECT envelope FROM reports WHERE report_id NOT IN"
            " (SELECT report_id FROM sealed_reports) ORDER BY rowid"
        ):
            yield bytes(raw)

    def sealed_reports(self) -> list[tuple[str, str, str]]:
        """(report id, recipient organizations, readability here) of every sealed report."""
        return list(
            self._db.execute(
                "SELECT report_id, recipients, readability FROM sealed_reports ORDER BY report_id"
            )
        )

    def sealed_content(self, report_id: str) -> bytes | None:
        """The decrypted ObserverReport bytes of a sealed report this node could read."""
        row = self._db.execute(
            "SELECT content FROM sealed_reports WHERE report_id = ?", (report_id,)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def count_reports(self) -> int:
        """Number of accepted reports."""
        return int(self._db.execute("SELECT count(*) FROM reports").fetchone()[0])

    def quarantine_rows(self) -> list[tuple[str, int, int, str, str]]:
        """(topic, partition, offset, reason, detail) of every quarantined record."""
        return list(
            self._db.execute(
                'SELECT topic, partition, "offset", reason, detail FROM quarantine'
                ' ORDER BY topic, partition, "offset"'
            )
        )

    def accepted_digests(self) -> list[tuple[str, bytes]]:
        """(report id, envelope digest) of every accepted report, ordered by report id."""
        rows = self._db.execute("SELECT report_id, digest FROM reports ORDER BY report_id")
        return [(r, bytes(d)) for r, d in rows]

    def mark_revoked(self, key_id: bytes, last_valid_seq: int, org: str, detail: str) -> list[str]:
        """Mark ``org``'s accepted reports signed by ``key_id`` with seq > ``last_valid_seq``.

        Only reports of the revoking organization: a revocation never reaches another
        organization's accreditation of the same key (bus.trust.KeyRing). Idempotent (a
        report is marked once, with the first revocation that reached it).

        Returns:
            The report ids newly marked.

        Raises:
            StoreError: the transaction failed.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT report_id, seq FROM reports WHERE key_id = ? AND org = ? AND seq > ?"
                " AND report_id NOT IN (SELECT report_id FROM revoked_after_acceptance)"
                " ORDER BY seq",
                (key_id, org, last_valid_seq),
            ).fetchall()
            db.executemany(
                "INSERT INTO revoked_after_acceptance VALUES (?,?,?,?,?,?)",
                [(r, key_id, s, last_valid_seq, org, detail) for r, s in rows],
            )
        return [r for r, _ in rows]

    def revoked_after_acceptance(self) -> list[tuple[str, int, int]]:
        """(report id, seq, last valid seq) of every report marked revoked after acceptance."""
        return list(
            self._db.execute(
                "SELECT report_id, seq, last_valid_seq FROM revoked_after_acceptance"
                " ORDER BY report_id"
            )
        )

    def decisions(self) -> list[tuple[str, str, str, str, str]]:
        """(rule, action, priority, zone, evidence) of every decision, oldest first."""
        return list(
            self._db.execute(
                "SELECT rule, action, priority, zone, evidence FROM decisions"
                " ORDER BY decided_at_ms, decision_id"
            )
        )

    # -- follow-up: own decisions and their publication -------------------------------------

    def add_decisions(self, decisions: Iterable[Decision]) -> list[Decision]:
        """Store decisions whose id is not stored yet; returns those, in the given order.

        Raises:
            StoreError: the transaction failed; nothing was stored.
        """
        with self._tx() as db:
            return _insert_decisions(db, decisions)

    def decision_ids(self) -> set[str]:
        """Ids of every stored own decision."""
        return {r for (r,) in self._db.execute("SELECT decision_id FROM decisions")}

    def log_records(self) -> Iterator[tuple[str, int, int, int, bytes | None, bytes | None]]:
        """Every stored report-topic record: (topic, partition, offset, log time, digest,
        envelope), digest and envelope None for quarantined ones; in offset order per partition.
        """
        rows = self._db.execute(
            'SELECT topic, partition, "offset", log_time_ms, digest, envelope FROM reports'
            ' UNION ALL SELECT topic, partition, "offset", log_time_ms, NULL, NULL'
            " FROM quarantine ORDER BY 1, 2, 3"
        )
        for topic, part, off, lt, digest, env in rows:
            yield (topic, part, off, lt, None if digest is None else bytes(digest),
                   None if env is None else bytes(env))  # fmt: skip

    def log_records_since(
        self, report_rowid: int, quarantine_id: int
    ) -> tuple[list[tuple[str, int, int, int, bytes | None, bytes | None]], int, int]:
        """Records stored after the given marks, from one snapshot of the store.

        Returns:
            ``(records, report_rowid, quarantine_id)``: the records as in :meth:`log_records`
            (in offset order per partition), except that a report's time is when this node
            stored it, by its own clock (``stored_at_ms``; the log time only for rows stored
            before that column existed), never a broker timestamp: the follow-up's provisional
            rules read it as "now". Then the marks to pass next time.
        """
        try:
            self._db.execute("BEGIN")  # one snapshot: a batch is seen whole or not at all
            reports = self._db.execute(
                'SELECT rowid, topic, partition, "offset", COALESCE(stored_at_ms, log_time_ms),'
                " digest, envelope FROM reports WHERE rowid > ?",
                (report_rowid,),
            ).fetchall()
            quarantined = self._db.execute(
                'SELECT id, topic, partition, "offset", log_time_ms FROM quarantine WHERE id > ?',
                (quarantine_id,),
            ).fetchall()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc
        rows: list[tuple[str, int, int, int, bytes | None, bytes | None]] = [
            (t, p, o, lt, bytes(d), bytes(e)) for _, t, p, o, lt, d, e in reports
        ]
        rows += [(t, p, o, lt, None, None) for _, t, p, o, lt in quarantined]
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        return (
            rows,
            max((r[0] for r in reports), default=report_rowid),
            max((q[0] for q in quarantined), default=quarantine_id),
        )

    def own_decisions(
        self, *, limit: int = 1_000_000, unpublished: bool = False
    ) -> list[StoredDecision]:
        """Own decisions, newest first; ``unpublished``: only those waiting to be published
        (oldest first then, the order they are published in)."""
        # A store opened read-only before its node added the seal columns: none rests on one.
        seal = (
            "dd.seal_epoch, dd.seal_digest"
            if self._has_column("decision_details", "seal_epoch")
            else "0, NULL"
        )
        rows = self._db.execute(
            "SELECT d.decision_id, d.org, d.rule, d.action, d.priority, d.zone, d.evidence,"  # noqa: S608
            " d.decided_at_ms, coalesce(dd.kind, 'report'), coalesce(dd.grp, d.zone),"
            " coalesce(dd.window_start_ms, 0), coalesce(dd.window_end_ms, 0), dd.evidence_json,"
            " coalesce(dd.summary, ''), coalesce(dd.publish, 0), coalesce(dd.pub_state, 'local'),"
            f" dd.pub_seq, dd.pub_envelope, dd.pub_offset, {seal}"
            " FROM decisions d LEFT JOIN decision_details dd USING (decision_id)"
            " WHERE ?1 = 0 OR dd.pub_state IN ('pending', 'signed')"
            # newest first to show; to publish: signed ones in seq order, then oldest first
            " ORDER BY CASE WHEN ?1 = 0 THEN -d.decided_at_ms END, dd.pub_seq IS NULL,"
            " dd.pub_seq, d.decided_at_ms, d.rowid LIMIT ?2",
            (int(unpublished), limit),
        )
        out = []
        for (_, org, rule, action, prio, zone, ev_ids, at, kind, grp, ws, we, ev_json, summary,
             publish, state, seq, env, offset, seal_epoch, seal_digest) in rows:  # fmt: skip
            evidence = (
                evidence_from_json(ev_json)
                if ev_json
                else tuple(Evidence(r, b"") for r in ev_ids.split(",") if r)
            )
            d = Decision(org, rule, kind, action, prio, zone, grp, ws, we, evidence, at, summary,
                         bool(publish), int(seal_epoch or 0),
                         b"" if seal_digest is None else bytes(seal_digest))  # fmt: skip
            out.append(StoredDecision(d, state, seq, None if env is None else bytes(env), offset))
        return out

    def _has_column(self, table: str, column: str) -> bool:
        """Whether ``table`` has ``column`` (a store opened read-only may predate it)."""
        cols = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        return column in cols

    def report_contents(
        self, positions: Iterable[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], bytes | None]:
        """The bytes this node read at report-topic positions, for the follow-up's final
        rules: the envelope of a report it accepted, or the record of one it quarantined when
        the row keeps all of it; None when it quarantined the record and kept only part of it
        (or none, past the quota). A position the node has not stored yet is absent."""
        out: dict[tuple[str, int, int], bytes | None] = {}
        bounded = self._bounded_rows()
        for pos in positions:
            row = self._db.execute(
                'SELECT envelope FROM reports WHERE topic = ? AND partition = ? AND "offset" = ?',
                pos,
            ).fetchone()
            if row is not None:
                out[pos] = bytes(row[0])
                continue
            size = "size" if bounded else "length(raw)"
            row = self._db.execute(
                f"SELECT raw, {size} FROM quarantine"  # noqa: S608
                ' WHERE topic = ? AND partition = ? AND "offset" = ?',
                pos,
            ).fetchone()
            if row is not None:
                raw = bytes(row[0])
                out[pos] = raw if row[1] is None or int(row[1]) == len(raw) else None
        return out

    def next_publication_seq(self) -> int:
        """The next per-node publication sequence number (1 for the first)."""
        row = self._db.execute("SELECT coalesce(max(pub_seq), 0) FROM decision_details")
        return int(row.fetchone()[0]) + 1

    def mark_signed(self, decision_id: str, seq: int, envelope: bytes) -> None:
        """Record the signed envelope of a decision before it is sent (resent as is on restart).

        Raises:
            StoreError: the transaction failed (e.g. seq already used).
        """
        with self._tx() as db:
            db.execute(
                "UPDATE decision_details SET pub_state = ?, pub_seq = ?, pub_envelope = ?"
                " WHERE decision_id = ? AND pub_state = ?",
                (PUB_SIGNED, seq, envelope, decision_id, PUB_PENDING),
            )

    def mark_published(self, decision_id: str, offset: int) -> None:
        """Record that the broker acknowledged the decision at ``offset``."""
        with self._tx() as db:
            db.execute(
                "UPDATE decision_details SET pub_state = ?, pub_offset = ? WHERE decision_id = ?",
                (PUB_PUBLISHED, offset, decision_id),
            )

    # -- follow-up: what other organizations publish ----------------------------------------

    def commit_board(
        self,
        decisions: Iterable[tuple[RecordRef, VerifiedDecision, bytes]],
        statements: Iterable[tuple[RecordRef, StatementStatus, list[str]]],
        rejected: Iterable[Quarantined],
        positions: dict[tuple[str, int], int],
        *,
        board_state: tuple[int, bytes] | None = None,
    ) -> QuarantineCharge:
        """Store verified decisions, statement signatures and rejected records of the decisions
        and statements topics, with their next offsets, in one transaction.

        Rejected records are bounded and charged against their topic's quota like the
        quarantine of :meth:`commit_batch`.

        Args:
            decisions, statements, rejected: the board's answers.
            positions: next offsets to store (the board on the sealed log keeps its position
                in ``board_state`` instead and passes none).
            board_state: (epoch, snapshot) of the board after the epochs these rows come from.

        Returns:
            What the rejected records did to the quotas.

        Raises:
            StoreError: the transaction failed and nothing was stored.
        """
        with self._tx() as db:
            if board_state is not None:
                db.execute(
                    "INSERT INTO board_state VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE"
                    " SET epoch = excluded.epoch, state = excluded.state",
                    board_state,
                )
            for ref, vd, raw in decisions:
                d = vd.decision
                db.execute(
                    'INSERT OR IGNORE INTO peer_decisions (topic, partition, "offset",'
                    " log_time_ms, decision_id, org, node_id, seq, rule, kind, action, priority,"
                    " zone, grp, window_start_ms, window_end_ms, evidence_json, decided_at_ms,"
                    " signed_at_ms, summary, digest, envelope, seal_epoch, seal_digest)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (ref.topic, ref.partition, ref.offset, ref.log_time_ms, d.decision_id, d.org,
                     vd.node_id, d.seq, d.rule, d.kind, d.action, d.priority, d.zone, d.group,
                     d.window_start_ms, d.window_end_ms, _evidence_json(d.evidence),
                     d.decided_at_ms, d.signed_at_ms, d.summary, sha256(raw), raw, d.seal_epoch,
                     d.seal_digest or None),
                )  # fmt: skip
            for ref, st, added in statements:
                s = st.statement
                db.execute(
                    "INSERT OR IGNORE INTO statements VALUES (?,?,?,?,?,?,?,?,?)",
                    (s.statement_id, s.drafted_by, s.title, s.text, _evidence_json(s.references),
                     s.created_at_ms, st.digest, st.threshold, st.organizations),
                )  # fmt: skip
                db.executemany(
                    "INSERT OR IGNORE INTO statement_signatures VALUES (?,?,?,?,?,?,?)",
                    [(s.statement_id, org, st.signed_by[org], ref.topic, ref.partition,
                      ref.offset, ref.log_time_ms) for org in added],
                )  # fmt: skip
            budget = self._budget(db)
            for q in rejected:
                stored = db.execute(
                    "SELECT 1 FROM board_rejected"
                    ' WHERE topic = ? AND partition = ? AND "offset" = ?',
                    (q.ref.topic, q.ref.partition, q.ref.offset),
                ).fetchone()
                if stored is not None:
                    continue  # read again after a restart: stored and charged once
                b = budget.row(q)
                db.execute(
                    'INSERT INTO board_rejected (topic, partition, "offset", reason, detail,'
                    " log_time_ms, raw, size, sha256, over_quota) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (q.ref.topic, q.ref.partition, q.ref.offset, q.reason, b.detail,
                     q.ref.log_time_ms, b.raw, b.size, b.sha256, int(b.over_quota)),
                )  # fmt: skip
            charge = budget.flush()
            db.executemany(
                "INSERT INTO positions VALUES (?,?,?) ON CONFLICT(topic, partition) DO UPDATE"
                " SET next_offset=excluded.next_offset",
                [(t, p, o) for (t, p), o in positions.items()],
            )
        self._alarm(charge)
        return charge

    def board_state(self) -> tuple[int, bytes] | None:
        """(epoch, snapshot) of the board as last committed, or None."""
        row = self._db.execute("SELECT epoch, state FROM board_state WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def reset_board(self) -> None:
        """Forget every row the board derived (others' decisions, statements and their
        signatures, rejected board records with their quota counts, its state), in one
        transaction: a board with no stored state judges the sealed log again from its first
        epoch, and rows judged under another trust state must not stay beside its own."""
        with self._tx() as db:
            topics = [t for (t,) in db.execute("SELECT DISTINCT topic FROM board_rejected")]
            db.executemany("DELETE FROM quarantine_usage WHERE topic = ?", [(t,) for t in topics])
            for table in ("peer_decisions", "statements", "statement_signatures",
                          "board_rejected", "board_state"):  # fmt: skip
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names

    def statement_rows(self) -> list[dict[str, Any]]:
        """Every stored statement with what rebuilds its status: its fields, the digest its
        signatures cover (hex), threshold, organizations and ``signers`` (org -> signer)."""
        out = _dicts(
            self._db.execute(
                "SELECT statement_id, drafted_by, title, text, references_json, created_at_ms,"
                " digest, threshold, organizations FROM statements ORDER BY statement_id"
            )
        )
        sigs: dict[str, dict[str, str]] = {}
        for sid, org, signer in self._db.execute(
            "SELECT statement_id, org, signer FROM statement_signatures"
        ):
            sigs.setdefault(sid, {})[org] = signer
        for s in out:
            s["signers"] = sigs.get(str(s["statement_id"]), {})
        return out

    def peer_decisions(self, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Published decisions read from the decisions topics, newest first; ``seal_epoch``
        and ``seal_digest`` (hex) name the final seal each rests on (0 and None: provisional)."""
        seal = (
            "seal_epoch, seal_digest"
            if self._has_column("peer_decisions", "seal_epoch")
            else "0 AS seal_epoch, NULL AS seal_digest"  # a read-only store of an older node
        )
        cur = self._db.execute(
            'SELECT topic, partition, "offset", log_time_ms, decision_id, org, node_id, seq, rule,'  # noqa: S608
            " kind, action, priority, zone, grp, window_start_ms, window_end_ms, evidence_json,"
            f" decided_at_ms, signed_at_ms, summary, {seal} FROM peer_decisions"
            ' ORDER BY log_time_ms DESC, topic, "offset" DESC LIMIT ?',
            (limit,),
        )
        return _dicts(cur)

    def peer_decision_counts(self) -> dict[str, int]:
        """Published decisions read from the decisions topics, per organization."""
        rows = self._db.execute("SELECT org, count(*) FROM peer_decisions GROUP BY org")
        return {o: int(n) for o, n in rows}

    def statements(self) -> list[dict[str, Any]]:
        """Joint statements with the organizations that signed them, oldest first."""
        out = _dicts(
            self._db.execute(
                "SELECT statement_id, drafted_by, title, text, references_json, created_at_ms,"
                " threshold, organizations FROM statements ORDER BY statement_id"
            )
        )
        sigs: dict[str, list[tuple[str, str]]] = {}
        for sid, org, signer in self._db.execute(
            'SELECT statement_id, org, signer FROM statement_signatures ORDER BY "offset", org'
        ):
            sigs.setdefault(sid, []).append((org, signer))
        for s in out:
            s["signed_by"] = [o for o, _ in sigs.get(str(s["statement_id"]), [])]
            s["signers"] = dict(sigs.get(str(s["statement_id"]), []))
        return out

    def board_rejected(self) -> list[tuple[str, int, int, str, str]]:
        """(topic, partition, offset, reason, detail) of rejected decision/statement records."""
        return list(
            self._db.execute(
                'SELECT topic, partition, "offset", reason, detail FROM board_rejected'
                ' ORDER BY topic, partition, "offset"'
            )
        )

    # -- follow-up: reads for the dashboard -------------------------------------------------

    def reports_since(
        self, rowid: int, *, limit: int = 10_000
    ) -> list[tuple[int, str, int, int, int, bytes, bytes]]:
        """(rowid, topic, partition, offset, log time, digest, envelope) of reports stored after
        ``rowid``, in storage order."""
        rows = self._db.execute(
            'SELECT rowid, topic, partition, "offset", log_time_ms, digest, envelope FROM reports'
            " WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )
        return [(i, t, p, o, lt, bytes(d), bytes(e)) for i, t, p, o, lt, d, e in rows]

    def quarantine_detail(self, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Quarantined records with reason, detail and log time, newest first: ``size`` is the
        record's, ``kept`` the bytes the row holds of it, ``sha256`` (hex) the record's digest,
        ``over_quota`` 1 when the topic's quota left it no bytes."""
        extra = (
            "coalesce(size, length(raw)) AS size, sha256, length(raw) AS kept, over_quota"
            if self._bounded_rows()
            else "length(raw) AS size, NULL AS sha256, length(raw) AS kept, 0 AS over_quota"
        )
        return _dicts(
            self._db.execute(
                'SELECT id, topic, partition, "offset", reason, detail, log_time_ms, record_key,'  # noqa: S608
                f" {extra} FROM quarantine ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        )

    def _bounded_rows(self) -> bool:
        """Whether the quarantine tables have their size columns (a store opened read-only may
        predate them until its node opens it)."""
        cols = {row[1] for row in self._db.execute("PRAGMA table_info(quarantine)")}
        return "over_quota" in cols

    def quarantine_records(self, *, board: bool = False) -> list[QuarantineRecord]:
        """Every row of the quarantine (``board``: of the rejected decision and statement
        records), in position order, with what it keeps."""
        table = "board_rejected" if board else "quarantine"
        if not self._bounded_rows():
            return [
                QuarantineRecord(t, p, o, r, d, len(raw), sha256(raw), bytes(raw), False)
                for t, p, o, r, d, raw in self._db.execute(
                    f'SELECT topic, partition, "offset", reason, detail, raw FROM {table}'  # noqa: S608
                    ' ORDER BY topic, partition, "offset"'
                )
            ]
        return [
            QuarantineRecord(t, p, o, r, d, n, bytes(h), bytes(raw), bool(q))
            for t, p, o, r, d, n, h, raw, q in self._db.execute(
                f'SELECT topic, partition, "offset", reason, detail, size, sha256, raw, over_quota'  # noqa: S608
                f' FROM {table} ORDER BY topic, partition, "offset"'
            )
        ]

    def quarantine_usage(self) -> dict[str, QuotaUsage]:
        """Per topic: quarantine rows, bytes kept, rows kept without bytes past the quota, and
        whether the topic is past its quota (what the metrics export)."""
        try:
            return usage(self._db)
        except sqlite3.OperationalError:  # a read-only store that predates the quotas
            return {}

    def quarantine_counts(self) -> dict[str, int]:
        """Quarantined records per reason code."""
        rows = self._db.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason")
        return {r: int(n) for r, n in rows}

    def decision_counts(self) -> list[tuple[str, str, str, int]]:
        """(rule, priority, publication state, count) over own decisions."""
        return list(
            self._db.execute(
                "SELECT d.rule, d.priority, coalesce(dd.pub_state, 'local'), count(*)"
                " FROM decisions d LEFT JOIN decision_details dd USING (decision_id)"
                " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            )
        )


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cur.description]
    return [
        {k: (v.hex() if isinstance(v, bytes) else v) for k, v in zip(names, row, strict=True)}
        for row in cur
    ]
