"""The auditor's temporary on-disk index: report ids seen, verified checkpoint attestations, the
mandate records held back until the registry reaches their log time, and the seals topic and
every sealed partition, held for the bus reader (:mod:`nodes.auditor.sealed`).

It keeps the audit's memory flat however long the log is (see :mod:`nodes.auditor.judge`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bus.export import LogRecord
from bus.store.sqlite import open_db, sqlite_transaction

_SCHEMA: Final = """
    PRAGMA journal_mode=OFF; PRAGMA cache_size=-2048;
    CREATE TABLE ids (report_id TEXT PRIMARY KEY, digest BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE texts (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,
        size INTEGER NOT NULL, root BLOB NOT NULL, "offset" INTEGER NOT NULL,
        UNIQUE (origin, size, root));
    CREATE TABLE atts (text_id INTEGER NOT NULL, org TEXT NOT NULL, line BLOB NOT NULL,
        "offset" INTEGER NOT NULL, PRIMARY KEY (text_id, org)) WITHOUT ROWID;
    CREATE TABLE mandate (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL,
        partition INTEGER NOT NULL, "offset" INTEGER NOT NULL, time_ms INTEGER NOT NULL,
        key BLOB, value BLOB);
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

_TEXTS: Final = (
    'SELECT t.size, t.root, group_concat(a.org), t."offset" FROM texts t'
    " JOIN atts a ON a.text_id = t.id WHERE t.origin = ? AND t.size {} ? GROUP BY t.id"
    " ORDER BY t.size, t.id"
)
_TEXTS_AT: Final = _TEXTS.format("=")
_TEXTS_ABOVE: Final = _TEXTS.format(">")


@dataclass(frozen=True, slots=True)
class Text:
    """One distinct checkpoint text of an origin: its size, root, signing organizations and the
    offset of the first checkpoint record that carried it."""

    size: int
    root: bytes
    orgs: tuple[str, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class Attestation:
    """One organization's first verified signature line on a text, and the offset of the
    checkpoint record that carried it."""

    org: str
    line: bytes
    offset: int


class AuditIndex:
    """Temporary on-disk tables: report ids seen, every verified checkpoint attestation, and the
    mandate records waiting for their turn (:class:`nodes.auditor.trust_feed.MandateQueue`).

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

    # -- report ids ----------------------------------------------------------------------------

    def digest(self, report_id: str) -> bytes | None:
        row = self.db.execute("SELECT digest FROM ids WHERE report_id = ?", (report_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def ids(self) -> Iterator[str]:
        """Every report id added so far."""
        for (report_id,) in self.db.execute("SELECT report_id FROM ids"):
            yield report_id

    def add_ids(self, rows: list[tuple[str, bytes]]) -> None:
        """Add (report id, envelope digest) rows in one transaction (StoreError when it fails)."""
        with sqlite_transaction(self.db, "audit index") as db:
            db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?)", rows)

    # -- mandate records held back -------------------------------------------------------------

    def push(self, rec: LogRecord) -> None:
        """Hold a mandate record back (read order is kept)."""
        self.db.execute(
            'INSERT INTO mandate (topic, partition, "offset", time_ms, key, value)'
            " VALUES (?,?,?,?,?,?)",
            (rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, rec.value),
        )

    def take_until(self, log_time_ms: int | None) -> Iterator[LogRecord]:
        """Remove and yield held mandate records in read order while their log time is <=
        ``log_time_ms`` (all when None)."""
        while True:
            row = self.db.execute(
                'SELECT seq, topic, partition, "offset", time_ms, key, value FROM mandate'
                " ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None or (log_time_ms is not None and row[4] > log_time_ms):
                return
            seq, topic, partition, offset, time_ms, key, value = row
            self.db.execute("DELETE FROM mandate WHERE seq = ?", (seq,))
            yield LogRecord(
                "mandate", topic, partition, offset, time_ms,
                None if key is None else bytes(key), None if value is None else bytes(value),
            )  # fmt: skip

    # -- checkpoints ---------------------------------------------------------------------------

    def add_checkpoint(
        self, origin: str, size: int, root: bytes, offset: int, lines: Iterable[tuple[str, bytes]]
    ) -> None:
        """Index one verified checkpoint record: its text and each (org, signature line)."""
        self.db.execute(
            'INSERT OR IGNORE INTO texts (origin, size, root, "offset") VALUES (?,?,?,?)',
            (origin, size, root, offset),
        )
        (tid,) = self.db.execute(
            "SELECT id FROM texts WHERE origin = ? AND size = ? AND root = ?", (origin, size, root)
        ).fetchone()
        self.db.executemany(
            "INSERT OR IGNORE INTO atts VALUES (?, ?, ?, ?)",
            [(tid, org, line, offset) for org, line in lines],
        )

    def next_size(self, origin: str, above: int) -> int | None:
        (size,) = self.db.execute(
            "SELECT min(size) FROM texts WHERE origin = ? AND size > ?", (origin, above)
        ).fetchone()
        return None if size is None else int(size)

    def _texts(self, query: str, args: tuple[object, ...]) -> list[Text]:
        return [
            Text(int(size), bytes(root), tuple(sorted(set(orgs.split(",")))), int(offset))
            for size, root, orgs, offset in self.db.execute(query, args)
        ]

    def roots_at(self, origin: str, size: int) -> list[Text]:
        """Every text of origin at size."""
        return self._texts(_TEXTS_AT, (origin, size))

    def texts_above(self, origin: str, size: int) -> list[Text]:
        """Every text of origin whose size exceeds ``size``, smallest first."""
        return self._texts(_TEXTS_ABOVE, (origin, size))

    def attestation(self, origin: str, size: int, root: bytes, org: str) -> Attestation:
        """An organization's first verified line on one text (which must exist)."""
        line, offset = self.db.execute(
            'SELECT a.line, a."offset" FROM texts t JOIN atts a ON a.text_id = t.id'
            " WHERE t.origin = ? AND t.size = ? AND t.root = ? AND a.org = ?",
            (origin, size, root, org),
        ).fetchone()
        return Attestation(org, bytes(line), int(offset))

    def split_views(self) -> Iterator[tuple[str, int]]:
        """(origin, size) of every pair of texts that share both and differ in root."""
        rows = self.db.execute(
            "SELECT origin, size FROM texts GROUP BY origin, size HAVING count(*) > 1"
            " ORDER BY origin, size"
        )
        yield from rows.fetchall()

    def origins(self) -> list[str]:
        """Every origin with a checkpoint."""
        return [o for (o,) in self.db.execute("SELECT DISTINCT origin FROM texts ORDER BY origin")]

    def count_texts(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM texts").fetchone()[0])

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
