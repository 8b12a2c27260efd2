"""A node's durable store: accepted reports, quarantine, chain heads, decisions, log positions.

SQLite (WAL). One :meth:`NodeStore.commit_batch` call is one transaction: the reports and
quarantined records of a batch of Kafka records, the new chain heads, the decisions and the
next offset of every topic-partition the batch touched. The store, not Kafka's committed group
offsets, is the source of truth for where to resume, so a crash anywhere never loses a record
and never stores one twice. Quarantine and report rows are unique by (topic, partition, offset).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bus.errors import StoreError
from bus.policy import Decision
from bus.sealed import VerifiedSealed
from bus.verify import ChainHead, VerifiedReport

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


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Where a Kafka record sits in the log, plus the broker's timestamp and record key."""

    topic: str
    partition: int
    offset: int
    log_time_ms: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A record that verified and extended its chain."""

    ref: RecordRef
    verified: VerifiedReport
    raw: bytes


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A rejected record, kept with its reason code and raw bytes."""

    ref: RecordRef
    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class AcceptedSealed:
    """A restricted report that verified and extended its chain (readable or not here)."""

    ref: RecordRef
    verified: VerifiedSealed
    raw: bytes


Outcome = Accepted | Quarantined | AcceptedSealed


# Column order of the INSERT in commit_batch (explicit: stored_at_ms may have been added last by
# _add_missing_columns to a store created before it existed).
_REPORT_COLUMNS: Final = (
    'report_id, topic, partition, "offset", observer_id, org, seq, zone, category, severity,'
    " observed_at_ms, log_time_ms, digest, key_id, envelope, stored_at_ms"
)
# Columns added after the first release: (table, column, declaration). CREATE TABLE IF NOT
# EXISTS never changes an existing table, so older stores get them through ALTER TABLE.
_ADDED_COLUMNS: Final = (("reports", "stored_at_ms", "INTEGER"),)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, column, decl in _ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


class NodeStore:
    """SQLite store of one organization node. Not thread-safe: use from one thread at a time."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        """Open (and create) the store; ``read_only`` opens an existing one for reading only."""
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10
                )
                return
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives process crashes; a power loss may lose the last
            # transactions, which are then read again from Kafka (positions live here too).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}", path=str(path)) from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"store transaction failed: {exc}") from exc

    def commit_batch(
        self,
        outcomes: Iterable[Outcome],
        heads: dict[str, ChainHead],
        decisions: Iterable[Decision],
        positions: dict[tuple[str, int], int],
        *,
        stored_at_ms: int | None = None,
    ) -> None:
        """Store a batch atomically (see module docstring).

        ``stored_at_ms`` (default: now) is written to every report row of the batch: when this
        node had the report durably, for latency measurements (``make bench``).

        Raises:
            StoreError: the transaction failed and nothing of the batch was stored.
        """
        reports, quarantine, sealed_rows = [], [], []
        for o in outcomes:
            ref = o.ref
            if isinstance(o, Accepted):
                r = o.verified.report
                reports.append(
                    (r.report_id, ref.topic, ref.partition, ref.offset, r.observer_id, r.org,
                     r.seq, r.zone, r.category.label, r.severity, r.observed_at_ms,
                     ref.log_time_ms, o.verified.envelope_digest, o.verified.key_id, o.raw)
                )  # fmt: skip
            elif isinstance(o, AcceptedSealed):
                s, inner, v = o.verified.sealed, o.verified.report, o.verified
                reports.append(
                    (s.report_id, ref.topic, ref.partition, ref.offset, s.observer_id, s.org,
                     s.seq, s.zone, inner.category.label if inner else "sealed",
                     inner.severity if inner else 0,
                     inner.observed_at_ms if inner else s.signed_at_ms, ref.log_time_ms,
                     v.envelope_digest, v.key_id, o.raw)
                )  # fmt: skip
                sealed_rows.append(
                    (s.report_id, ",".join(s.recipient_orgs), v.readability.value, v.detail,
                     v.content or None)
                )  # fmt: skip
            else:
                quarantine.append(
                    (ref.topic, ref.partition, ref.offset, o.reason, o.detail, ref.log_time_ms,
                     ref.key, o.raw)
                )  # fmt: skip
        with self._tx() as db:
            stored = int(time.time() * 1000) if stored_at_ms is None else stored_at_ms
            db.executemany(
                f"INSERT INTO reports ({_REPORT_COLUMNS}) VALUES ({','.join('?' * 16)})",  # noqa: S608
                [(*row, stored) for row in reports],
            )
            db.executemany("INSERT INTO sealed_reports VALUES (?,?,?,?,?)", sealed_rows)
            db.executemany(
                'INSERT INTO quarantine (topic, partition, "offset", reason, detail, log_time_ms,'
                " record_key, raw) VALUES (?,?,?,?,?,?,?,?)",
                quarantine,
            )
            db.executemany(
                "INSERT INTO chain_heads VALUES (?,?,?) ON CONFLICT(observer_id) DO UPDATE"
                " SET seq=excluded.seq, digest=excluded.digest",
                [(o, h.seq, h.digest) for o, h in heads.items()],
            )
            db.executemany(
                "INSERT OR IGNORE INTO decisions VALUES (?,?,?,?,?,?,?,?)",
                [
                    (d.decision_id, d.org, d.rule, d.action, d.priority, d.zone,
                     ",".join(d.evidence), d.decided_at_ms)
                    for d in decisions
                ],
            )  # fmt: skip
            db.executemany(
                "INSERT INTO positions VALUES (?,?,?) ON CONFLICT(topic, partition) DO UPDATE"
                " SET next_offset=excluded.next_offset",
                [(t, p, o) for (t, p), o in positions.items()],
            )

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
        """Mark accepted reports signed by ``key_id`` with seq > ``last_valid_seq`` as revoked.

        Idempotent (a report is marked once, with the first revocation that reached it).

        Returns:
            The report ids newly marked.

        Raises:
            StoreError: the transaction failed.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT report_id, seq FROM reports WHERE key_id = ? AND seq > ? AND report_id"
                " NOT IN (SELECT report_id FROM revoked_after_acceptance) ORDER BY seq",
                (key_id, last_valid_seq),
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
