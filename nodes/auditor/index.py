"""The auditor's temporary on-disk index: the seals topic and every sealed partition, held for
the bus reader (:mod:`nodes.auditor.sealed`).

It keeps the audit's memory flat however long the log is (see :mod:`nodes.auditor.judge`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from bus.store.sqlite import open_db, sqlite_transaction

_SCHEMA: Final = """
    PRAGMA journal_mode=OFF; PRAGMA cache_size=-2048;
    CREATE TABLE seals ("offset" INTEGER PRIMARY KEY, value BLOB,
        conflicts INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE sealed (topic TEXT NOT NULL, partition INTEGER NOT NULL,
        "offset" INTEGER NOT NULL, value BLOB, conflicts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (topic, partition, "offset"));
"""

_MAX_OFFSET: Final = 2**63 - 1  # SQLite's largest integer

# A record read twice keeps its first value; a second read with other bytes is counted.
_ADD_SEAL: Final = (
    'INSERT INTO seals ("offset", value) VALUES (?, ?) ON CONFLICT ("offset") DO UPDATE'
    " SET conflicts = conflicts + 1 WHERE seals.value IS NOT excluded.value"
)
_ADD_SEALED: Final = (
    'INSERT INTO sealed (topic, partition, "offset", value) VALUES (?, ?, ?, ?)'
    ' ON CONFLICT (topic, partition, "offset") DO UPDATE SET conflicts = conflicts + 1'
    " WHERE sealed.value IS NOT excluded.value"
)


class AuditIndex:
    """Temporary on-disk tables: the records of the seals topic and of every sealed partition.

    The file lives in its own temporary directory (under ``work_dir``, default the system's)
    and is removed by :meth:`close`.

    Raises:
        StoreError: the index cannot be created.
    """

    def __init__(self, work_dir: Path | None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="obus-audit-", dir=work_dir)
        # A scratch file, rebuilt by every audit: no journal and no syncs (a crash loses only
        # the audit in progress), sqlite3's default 5 s lock wait.
        self.db = open_db(
            Path(self._tmp.name) / "index.db",
            what="audit index",
            schema=_SCHEMA,
            synchronous="OFF",
            wal=False,
            timeout_s=5,
        )

    def close(self) -> None:
        self.db.close()
        self._tmp.cleanup()

    # -- the seals topic and the sealed partitions ---------------------------------------------

    def add_seals(self, rows: Iterable[tuple[int, bytes | None]]) -> None:
        """Add (offset, value) records of the seals topic in one transaction; an offset read
        again keeps its first value (another value is counted, :meth:`conflicts`)."""
        with sqlite_transaction(self.db, "audit index") as db:
            db.executemany(_ADD_SEAL, rows)

    def add_sealed(self, rows: Iterable[tuple[str, int, int, bytes | None]]) -> None:
        """Add (topic, partition, offset, value) records of sealed partitions, as
        :meth:`add_seals` does."""
        with sqlite_transaction(self.db, "audit index") as db:
            db.executemany(_ADD_SEALED, rows)

    def seals_after(self, offset: int, limit: int) -> list[tuple[int, bytes | None]]:
        """Up to ``limit`` records of the seals topic after ``offset``, in offset order."""
        rows = self.db.execute(
            'SELECT "offset", value FROM seals WHERE "offset" > ? ORDER BY "offset" LIMIT ?',
            (offset, limit),
        )
        return [(int(o), None if v is None else bytes(v)) for o, v in rows]

    def count_seals(self) -> int:
        """Records of the seals topic held."""
        return int(self.db.execute("SELECT count(*) FROM seals").fetchone()[0])

    def sealed_partitions(self) -> list[tuple[str, int]]:
        """Every sealed partition with a record held, sorted."""
        rows = self.db.execute(
            "SELECT DISTINCT topic, partition FROM sealed ORDER BY topic, partition"
        )
        return [(str(t), int(p)) for t, p in rows]

    def sealed_rows(
        self, ref: tuple[str, int], start: int, end: int | None, limit: int
    ) -> list[tuple[int, bytes | None]]:
        """Up to ``limit`` records of a partition from ``start`` up to ``end`` (exclusive; None:
        no bound), in offset order: (offset, value)."""
        end = _MAX_OFFSET if end is None else min(end, _MAX_OFFSET)  # a seal may state 2^64-1
        rows = self.db.execute(
            'SELECT "offset", value FROM sealed WHERE topic = ? AND partition = ?'
            ' AND "offset" >= ? AND "offset" < ? ORDER BY "offset" LIMIT ?',
            (ref[0], ref[1], start, end, limit),
        )
        return [(int(o), None if v is None else bytes(v)) for o, v in rows]

    def sealed_tail(self, ref: tuple[str, int], start: int) -> tuple[int, int, int] | None:
        """(records, first offset, last offset) of a partition from ``start`` on, or None when
        it holds none there."""
        n, lo, hi = self.db.execute(
            'SELECT count(*), min("offset"), max("offset") FROM sealed'
            ' WHERE topic = ? AND partition = ? AND "offset" >= ?',
            (ref[0], ref[1], start),
        ).fetchone()
        return None if not n else (int(n), int(lo), int(hi))

    def conflicts(self) -> list[tuple[str | None, int, int, int]]:
        """Records read again with other bytes: (topic or None for the seals topic, partition,
        offset, times), sorted."""
        seals = self.db.execute(
            'SELECT NULL, 0, "offset", conflicts FROM seals WHERE conflicts > 0 ORDER BY "offset"'
        ).fetchall()
        sealed = self.db.execute(
            'SELECT topic, partition, "offset", conflicts FROM sealed WHERE conflicts > 0'
            ' ORDER BY topic, partition, "offset"'
        ).fetchall()
        return [(t, int(p), int(o), int(n)) for t, p, o, n in [*seals, *sealed]]
