"""The auditor's temporary on-disk index: report ids seen, verified checkpoint attestations, and
the mandate records held back until the registry reaches their log time.

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
"""

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
