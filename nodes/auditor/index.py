"""The auditor's temporary on-disk index: report ids seen, and verified checkpoint attestations.

It keeps the audit's memory flat however long the log is (see :mod:`nodes.auditor.judge`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from bus.store.sqlite import open_db, sqlite_transaction

_SCHEMA: Final = """
    PRAGMA journal_mode=OFF; PRAGMA cache_size=-2048;
    CREATE TABLE ids (report_id TEXT PRIMARY KEY, digest BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE texts (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,
        size INTEGER NOT NULL, root BLOB NOT NULL, "offset" INTEGER NOT NULL,
        UNIQUE (origin, size, root));
    CREATE TABLE atts (text_id INTEGER NOT NULL, org TEXT NOT NULL,
        PRIMARY KEY (text_id, org)) WITHOUT ROWID;
"""


class AuditIndex:
    """Temporary on-disk tables: report ids seen, and every verified checkpoint attestation.

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

    def add_checkpoint(
        self, origin: str, size: int, root: bytes, offset: int, orgs: set[str]
    ) -> None:
        self.db.execute(
            'INSERT OR IGNORE INTO texts (origin, size, root, "offset") VALUES (?,?,?,?)',
            (origin, size, root, offset),
        )
        (tid,) = self.db.execute(
            "SELECT id FROM texts WHERE origin = ? AND size = ? AND root = ?", (origin, size, root)
        ).fetchone()
        self.db.executemany(
            "INSERT OR IGNORE INTO atts VALUES (?, ?)", [(tid, o) for o in sorted(orgs)]
        )

    def next_size(self, origin: str, above: int) -> int | None:
        (size,) = self.db.execute(
            "SELECT min(size) FROM texts WHERE origin = ? AND size > ?", (origin, above)
        ).fetchone()
        return None if size is None else int(size)

    def roots_at(self, origin: str, size: int) -> list[tuple[bytes, list[str], int]]:
        """(root, signing orgs, first offset) of every checkpoint of origin at size."""
        rows = self.db.execute(
            'SELECT t.root, group_concat(a.org), t."offset" FROM texts t JOIN atts a'
            " ON a.text_id = t.id WHERE t.origin = ? AND t.size = ? GROUP BY t.id",
            (origin, size),
        )
        return [(bytes(r), sorted(set(orgs.split(","))), off) for r, orgs, off in rows]

    def split_views(self) -> Iterator[tuple[str, int]]:
        rows = self.db.execute(
            "SELECT origin, size FROM texts GROUP BY origin, size HAVING count(*) > 1"
            " ORDER BY origin, size"
        )
        yield from rows.fetchall()

    def origins(self) -> list[tuple[str, int]]:
        """(origin, largest signed size) of every origin with a checkpoint."""
        return list(self.db.execute("SELECT origin, max(size) FROM texts GROUP BY origin"))

    def count_texts(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM texts").fetchone()[0])
