"""Bounded quarantine rows and per-topic quarantine quotas, for every store that keeps rejected
records (the node's ``quarantine`` and ``board_rejected`` tables, the attachment store's
``quarantine``).

A row keeps what :func:`bus.ingest.kept_of` allows of a record's value (all of it within the
record limit, else its first :data:`~bus.ingest.QUARANTINE_PREFIX_BYTES`), the value's exact size
and SHA-256, at most :data:`MAX_KEY_BYTES` of its record key and :data:`MAX_DETAIL_CHARS` of its
detail. On top of that each topic has a budget of kept bytes (``quota_bytes``): the first row
that would take a topic past it turns the topic *exceeded*, and from then on that topic's rows
keep no bytes (``over_quota`` = 1) but still their reason, detail, size, SHA-256 and position,
so a record is never dropped and the store's positions still move past it. Raising the quota
above what a topic holds (at the next open) lets it keep bytes again.

The state of every topic is the ``quarantine_usage`` table of the same database, written in the
same transaction as the rows it counts, so it is exact after any crash and shared by every
process writing the store. Each change of state is logged once, by the writer whose transaction
made it: ``quarantine_quota_exceeded`` (warning) and ``quarantine_quota_restored`` (info). The
record limit and quota a node opened its store with are recorded there too
(``quarantine_limits``), so writers that have no configuration of their own (the follow-up)
bound their rows the same way (:func:`settle_limits`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import structlog

from bus.ingest import QUARANTINE_PREFIX_BYTES, Quarantined

log = structlog.get_logger(__name__)

# Bytes of rejected records a store keeps per topic before it keeps only their size, SHA-256
# and position: 64 records at the 256 KiB report limit, 4,096 oversized prefixes, ~16,000
# rejected reports of a usual 1 KiB.
DEFAULT_QUARANTINE_QUOTA_BYTES: Final = 16 * 1024 * 1024
# A record key is an observer id or a registry key (tens of bytes); anything longer is cut.
MAX_KEY_BYTES: Final = 1024
# Details are the verifier's own messages, but some quote the record (a field's value).
MAX_DETAIL_CHARS: Final = 2048

USAGE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS quarantine_usage (
    topic TEXT PRIMARY KEY, rows INTEGER NOT NULL, kept_bytes INTEGER NOT NULL,
    over_quota_rows INTEGER NOT NULL,
    exceeded_at_quota INTEGER  -- the quota in force when the topic went past it; NULL: within
);
-- The bounds the node last opened the store with, for its other writers (the follow-up).
CREATE TABLE IF NOT EXISTS quarantine_limits (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    record_limit_bytes INTEGER NOT NULL, quota_bytes INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """One topic's quarantine: rows stored, bytes kept, rows stored without bytes past the
    quota, and whether the topic is past its quota now."""

    rows: int
    kept_bytes: int
    over_quota_rows: int
    exceeded: bool


@dataclass(frozen=True, slots=True)
class QuarantineCharge:
    """What one transaction's rows did to the quotas.

    ``unkept``: positions (topic, partition, offset) stored without their bytes (quota);
    ``exceeded``: topics this transaction took past their quota (each logged once).
    """

    unkept: frozenset[tuple[str, int, int]] = frozenset()
    exceeded: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BoundedRow:
    """The fields of one quarantine row, bounded."""

    raw: bytes
    key: bytes | None
    detail: str
    size: int
    sha256: bytes
    over_quota: bool


@dataclass
class QuarantineBudget:
    """Bounds the rows of one transaction and charges them against the per-topic quotas.

    Use inside the transaction that inserts the rows: :meth:`row` for each, in log order, then
    :meth:`flush` before it commits, and :func:`log_changes` once it committed.

    Args:
        db: the connection, in its transaction.
        quota_bytes: bytes each topic may keep.
        limit: the record limit of these rows (:func:`bus.ingest.kept_of`).
    """

    db: sqlite3.Connection
    quota_bytes: int
    limit: int
    _usage: dict[str, list[int | None]] = field(default_factory=dict)
    _unkept: set[tuple[str, int, int]] = field(default_factory=set)
    _exceeded: list[str] = field(default_factory=list)

    def row(self, q: Quarantined) -> BoundedRow:
        """The row to store for ``q``: bounded, and without bytes once its topic is past its
        quota.

        An outcome built by :meth:`~bus.ingest.Quarantined.bounded` is within the bounds
        already; one built around a whole value is cut here (size and SHA-256 taken first).
        """
        size, digest = q.value_size, q.value_sha256
        cap = self.limit if size <= self.limit else min(QUARANTINE_PREFIX_BYTES, self.limit)
        raw = q.raw[:cap]  # no copy when it is within (bytes slices of the whole are the same)
        key = None if q.ref.key is None else q.ref.key[:MAX_KEY_BYTES]
        detail = q.detail[:MAX_DETAIL_CHARS]
        if self.keep(q.ref.topic, len(raw) + len(key or b"")):
            return BoundedRow(raw, key, detail, size, digest, over_quota=False)
        self._unkept.add((q.ref.topic, q.ref.partition, q.ref.offset))
        return BoundedRow(b"", None, detail, size, digest, over_quota=True)

    def keep(self, topic: str, cost: int) -> bool:
        """Count one row of ``topic`` that would keep ``cost`` bytes; False: keep none."""
        u = self._usage.get(topic)
        if u is None:
            got = self.db.execute(
                "SELECT rows, kept_bytes, over_quota_rows, exceeded_at_quota"
                " FROM quarantine_usage WHERE topic = ?",
                (topic,),
            ).fetchone()
            u = self._usage[topic] = [0, 0, 0, None] if got is None else list(got)
        rows, kept, over, exceeded_at = u
        assert rows is not None and kept is not None and over is not None
        u[0] = rows + 1
        if exceeded_at is None and kept + cost <= self.quota_bytes:
            u[1] = kept + cost
            return True
        u[2] = over + 1
        if exceeded_at is None:
            u[3] = self.quota_bytes
            self._exceeded.append(topic)
        return False

    def flush(self) -> QuarantineCharge:
        """Write the counts back (in the caller's transaction); what the rows did."""
        self.db.executemany(
            "INSERT INTO quarantine_usage VALUES (?,?,?,?,?) ON CONFLICT(topic) DO UPDATE SET"
            " rows = excluded.rows, kept_bytes = excluded.kept_bytes,"
            " over_quota_rows = excluded.over_quota_rows,"
            " exceeded_at_quota = excluded.exceeded_at_quota",
            [(t, *u) for t, u in self._usage.items()],
        )
        return QuarantineCharge(frozenset(self._unkept), tuple(self._exceeded))


def settle_limits(
    db: sqlite3.Connection,
    record_limit: int | None,
    quota_bytes: int | None,
    *,
    default_limit: int,
) -> tuple[int, int]:
    """The (record limit, quota) a writer uses, in the caller's transaction: the values given
    are recorded for the store's other writers; a value left None is the recorded one (the
    defaults when none is recorded)."""
    row = db.execute(
        "SELECT record_limit_bytes, quota_bytes FROM quarantine_limits WHERE id = 1"
    ).fetchone()
    have = (default_limit, DEFAULT_QUARANTINE_QUOTA_BYTES) if row is None else row
    limit = have[0] if record_limit is None else record_limit
    quota = have[1] if quota_bytes is None else quota_bytes
    if row is None or (limit, quota) != tuple(row):
        db.execute(
            "INSERT INTO quarantine_limits VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET"
            " record_limit_bytes = excluded.record_limit_bytes, quota_bytes = excluded.quota_bytes",
            (limit, quota),
        )
    return int(limit), int(quota)


def reconcile(db: sqlite3.Connection, quota_bytes: int) -> list[tuple[str, bool]]:
    """Bring each topic's state in line with ``quota_bytes`` (at open: the quota may have
    changed); in the caller's transaction.

    A topic past its quota is within again once the quota is raised above the one it went
    past; a topic within is past a quota lowered below what it keeps.

    Returns:
        (topic, past its quota now) of every topic whose state changed.
    """
    rows = db.execute(
        "SELECT topic, kept_bytes, exceeded_at_quota FROM quarantine_usage"
    ).fetchall()
    changes = [
        (t, at is None)
        for t, kept, at in rows
        if (at is None and kept > quota_bytes) or (at is not None and quota_bytes > at)
    ]
    db.executemany(
        "UPDATE quarantine_usage SET exceeded_at_quota = ? WHERE topic = ?",
        [(quota_bytes if now else None, t) for t, now in changes],
    )
    return changes


def recount(db: sqlite3.Connection, tables: Iterable[tuple[str, str]]) -> None:
    """Count the usage of rows stored before usage was kept, in the caller's transaction.

    ``tables`` are (table, SQL expression of a row's kept bytes) pairs; topics already counted
    keep their counts; :func:`reconcile` then sets their state.
    """
    parts = " UNION ALL ".join(
        f"SELECT topic, {cost} AS cost, over_quota FROM {table}"  # noqa: S608
        " WHERE topic IS NOT NULL"
        for table, cost in tables
    )
    db.execute(
        "INSERT OR IGNORE INTO quarantine_usage SELECT topic, count(*), coalesce(sum(cost), 0),"  # noqa: S608
        f" coalesce(sum(over_quota), 0), NULL FROM ({parts}) GROUP BY topic"
    )


def usage(db: sqlite3.Connection) -> dict[str, QuotaUsage]:
    """Every topic's quarantine usage, by topic."""
    rows = db.execute(
        "SELECT topic, rows, kept_bytes, over_quota_rows, exceeded_at_quota"
        " FROM quarantine_usage ORDER BY topic"
    )
    return {t: QuotaUsage(int(n), int(b), int(o), e is not None) for t, n, b, o, e in rows}


def log_changes(
    db: sqlite3.Connection, changes: Iterable[tuple[str, bool]], *, quota_bytes: int, store: str
) -> None:
    """Log each change of a topic's state once (after the transaction that made it)."""
    changes = list(changes)
    if not changes:
        return
    now = usage(db)
    for topic, exceeded in changes:
        u = now.get(topic)
        fields = {
            "topic": topic,
            "quota_bytes": quota_bytes,
            "kept_bytes": None if u is None else u.kept_bytes,
            "rows": None if u is None else u.rows,
            "store": store,
        }
        if exceeded:
            log.warning(
                "quarantine_quota_exceeded",
                **fields,
                then="this topic's rows keep reason, size, sha256 and position, no bytes",
            )
        else:
            log.info("quarantine_quota_restored", **fields)
