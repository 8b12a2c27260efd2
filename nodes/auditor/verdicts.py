"""The auditor's final verdicts, one row per sealed record, in a temporary SQLite file.

An audit judges every record of every sealed epoch; holding one row per record in memory made
the auditor's heap grow with the log (about 270 bytes a record). :class:`VerdictTable` keeps the
rows on disk instead, written as each epoch is judged (one transaction per epoch), so the audit
keeps in memory only what does not grow with the number of records. A later epoch's verdict on
a record (a deferred report judged at last) replaces the earlier row; a revocation that
withdraws an accepted report changes its row (:meth:`VerdictTable.change`).

Reads: one row by position, every row in (topic, partition, offset) order (an order that
depends on the log alone), counts by status, the rows whose verdict rejects the record, and the
report counts the audit prints (per topic, status, zone and observation day). The file lives in
its own temporary directory (under ``work_dir``, default the system's) until :meth:`close`, or
until the table is garbage-collected: it outlives the audit's index, since the result, and the
JSON written from it, are read after the audit has finished.
"""

from __future__ import annotations

import sqlite3
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bus.judge import RecordPos, Status
from bus.store.sqlite import open_db, sqlite_transaction

__all__ = ["FinalRow", "FlatRow", "VerdictTable"]

_SCHEMA: Final = """
    PRAGMA journal_mode=OFF; PRAGMA cache_size=-2048;
    CREATE TABLE verdicts (topic TEXT NOT NULL, partition INTEGER NOT NULL,
        "offset" INTEGER NOT NULL, epoch INTEGER NOT NULL, status TEXT NOT NULL,
        reason TEXT NOT NULL, detail TEXT NOT NULL, changed_at INTEGER, zone TEXT NOT NULL,
        day TEXT NOT NULL, PRIMARY KEY (topic, partition, "offset")) WITHOUT ROWID;
"""
_PUT: Final = (
    'INSERT OR REPLACE INTO verdicts (topic, partition, "offset", epoch, status, reason, detail,'
    " changed_at, zone, day) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_SELECT: Final = (
    'SELECT topic, partition, "offset", epoch, status, reason, detail, changed_at, zone, day'
    " FROM verdicts"
)
_CHANGE: Final = (
    "UPDATE verdicts SET status = ?, reason = '', detail = ?, changed_at = ?"
    ' WHERE topic = ? AND partition = ? AND "offset" = ?'
)
_REJECTED: Final = (Status.QUARANTINED.value, Status.REVOKED_AFTER_ACCEPTANCE.value)


@dataclass(frozen=True, slots=True)
class FinalRow:
    """The final verdict on one record.

    Args:
        epoch: the epoch the record was sealed in.
        status: a :class:`bus.judge.Status` value.
        reason: the reason code when quarantined, else "".
        detail: one sentence for humans.
        changed_at: for ``revoked_after_acceptance``, the epoch the revocation took effect at.
        zone: for a report the judge verified, the zone it names, else "".
        day: for a report whose content was read, the UTC day it was observed on (ISO 8601),
            else "" (a restricted report's content stays sealed to its recipients).
    """

    epoch: int
    status: str
    reason: str
    detail: str
    changed_at: int | None = None
    zone: str = ""
    day: str = ""


Row = tuple[RecordPos, FinalRow]
FlatRow = tuple[str, int, int, int, str, str, str, int | None, str, str]
"""A row as written: topic, partition, offset, then the fields of :class:`FinalRow`."""


def _row(r: Any) -> Row:
    t, p, o, epoch, status, reason, detail, changed, zone, day = r
    changed_at = None if changed is None else int(changed)
    row = FinalRow(
        int(epoch), str(status), str(reason), str(detail), changed_at, str(zone), str(day)
    )
    return (str(t), int(p), int(o)), row


def _close(db: sqlite3.Connection, tmp: tempfile.TemporaryDirectory[str]) -> None:
    db.close()
    tmp.cleanup()


class VerdictTable:
    """Final verdict rows by record position, on disk (module docstring).

    Raises:
        StoreError: the file cannot be created or written.
    """

    def __init__(self, work_dir: Path | None = None) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="obus-verdicts-", dir=work_dir)
        # A scratch file rebuilt by every audit: no journal and no syncs.
        self._db = open_db(
            Path(tmp.name) / "verdicts.db",
            what="audit verdicts",
            schema=_SCHEMA,
            synchronous="OFF",
            wal=False,
            timeout_s=5,
            # Used by one audit at a time, which may run in a worker thread, and closed by a
            # finalizer on whatever thread collects it.
            threads=True,
        )
        self._closer = weakref.finalize(self, _close, self._db, tmp)

    def close(self) -> None:
        """Remove the file (the table is unusable afterwards)."""
        self._closer()

    # -- writes --------------------------------------------------------------------------------

    def put(self, rows: Iterable[Row]) -> None:
        """Write rows in one transaction; a row at a position held replaces it."""
        self.put_flat(
            (*pos, r.epoch, r.status, r.reason, r.detail, r.changed_at, r.zone, r.day)
            for pos, r in rows
        )

    def put_flat(self, rows: Iterable[FlatRow]) -> None:
        """:meth:`put` of rows given flat (:data:`FlatRow`: no object per row)."""
        with sqlite_transaction(self._db, "audit verdicts") as db:
            db.executemany(_PUT, rows)

    def change(self, changes: Iterable[tuple[RecordPos, str, str, int]]) -> None:
        """Give held rows a new status, detail and ``changed_at`` epoch (reason cleared), in
        one transaction: (position, status, detail, epoch)."""
        with sqlite_transaction(self._db, "audit verdicts") as db:
            db.executemany(_CHANGE, ((s, d, e, *pos) for pos, s, d, e in changes))

    # -- reads ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM verdicts").fetchone()[0])

    def __getitem__(self, pos: RecordPos) -> FinalRow:
        found = self._db.execute(
            _SELECT + ' WHERE topic = ? AND partition = ? AND "offset" = ?',
            pos,
        ).fetchone()
        if found is None:
            raise KeyError(pos)
        return _row(found)[1]

    def items(self) -> Iterator[Row]:
        """Every row, in (topic, partition, offset) order, read lazily."""
        cur = self._db.execute(_SELECT + ' ORDER BY topic, partition, "offset"')
        return (_row(r) for r in cur)

    def by_status(self) -> Counter[str]:
        """How many records hold each final status."""
        rows = self._db.execute("SELECT status, count(*) FROM verdicts GROUP BY status")
        return Counter({str(s): int(n) for s, n in rows})

    def failed(self) -> Iterator[Row]:
        """Rows whose verdict rejects the record (quarantined, or accepted and withdrawn), in
        (topic, partition, offset) order."""
        cur = self._db.execute(
            _SELECT + ' WHERE status IN (?, ?) ORDER BY topic, partition, "offset"',
            _REJECTED,
        )
        return (_row(r) for r in cur)

    def counts(self) -> Iterator[tuple[str, str, str, str, int]]:
        """(topic, status, zone, day, records) for every combination held, sorted."""
        rows = self._db.execute(
            "SELECT topic, status, zone, day, count(*) FROM verdicts"
            " GROUP BY topic, status, zone, day ORDER BY topic, status, zone, day"
        )
        return ((str(t), str(s), str(z), str(d), int(n)) for t, s, z, d, n in rows)
