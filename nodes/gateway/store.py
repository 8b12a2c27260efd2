"""The gateway's own SQLite file: what it accepted, the chain heads, and the watermarks.

Every report the gateway accepted is a :class:`Row` (id, digest, envelope, state, position,
receipt). A report is committed ``publishing`` together with its observer's new chain head
before it is produced (the intent), and ``published`` with its position and signed receipt once
Kafka confirmed it. Per partition a *watermark* says below which offset every record of this
gateway is confirmed; it moves up only when no report at all is ``publishing``, so the read-back
that resolves a report left ``publishing`` starts there (:mod:`nodes.gateway.service` tells the
whole recovery). The file also keeps what accepted reports say about their attachments and the
answer given for each attachment published, and each accepted report's amendment link (which
report it corrects or retracts, if any): enough for the amendment rule of :mod:`bus.verify` on
this organization's chains, the only ones the gateway judges (:meth:`GatewayStore.amendable`).
A file from before the links were kept gets them from its stored envelopes when it is opened.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bus.model import Attachment, Envelope, Report
from bus.sealed import is_sealed
from bus.store.sqlite import open_db, sqlite_transaction
from bus.verify import Amendable, ChainHead

PUBLISHING: Final = "publishing"
PUBLISHED: Final = "published"


@dataclass(frozen=True, slots=True)
class Row:
    """One report the gateway accepted."""

    report_id: str
    observer_id: str
    seq: int
    digest: bytes
    envelope: bytes
    state: str
    receipt: bytes | None


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS reports (
    report_id TEXT PRIMARY KEY,
    observer_id TEXT NOT NULL, seq INTEGER NOT NULL,
    digest BLOB NOT NULL UNIQUE, envelope BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('publishing', 'published')),
    partition INTEGER, "offset" INTEGER, receipt BLOB, accepted_at_ms INTEGER NOT NULL,
    UNIQUE (observer_id, seq)
);
CREATE INDEX IF NOT EXISTS reports_state ON reports (state);
CREATE INDEX IF NOT EXISTS reports_position ON reports (partition, "offset");
CREATE TABLE IF NOT EXISTS chain_heads (
    observer_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS watermarks (
    partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL
);
-- What accepted reports say about their attachments (written with the report's intent), and
-- the attachments published.
CREATE TABLE IF NOT EXISTS attachment_refs (
    sha256 BLOB NOT NULL, report_id TEXT NOT NULL, size INTEGER NOT NULL,
    media_type TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (sha256, report_id)
);
CREATE TABLE IF NOT EXISTS attachments (
    sha256 BLOB PRIMARY KEY, size INTEGER NOT NULL, answer BLOB NOT NULL,
    published_at_ms INTEGER NOT NULL
);
-- Per accepted report (written with its intent): the report it corrects or retracts ('' for
-- neither; a restricted report never amends) and whether it is a retraction.
CREATE TABLE IF NOT EXISTS amend_links (
    report_id TEXT PRIMARY KEY REFERENCES reports (report_id),
    amends TEXT NOT NULL, retraction INTEGER NOT NULL CHECK (retraction IN (0, 1))
);
CREATE INDEX IF NOT EXISTS amend_links_amends ON amend_links (amends) WHERE amends != '';
"""
_ROW: Final = "report_id, observer_id, seq, digest, envelope, state, receipt"


def _row(r: tuple[object, ...]) -> Row:
    rid, oid, seq, dig, env, state, rec = r
    return Row(
        str(rid),
        str(oid),
        int(seq),  # type: ignore[call-overload]
        bytes(dig),  # type: ignore[call-overload]
        bytes(env),  # type: ignore[call-overload]
        str(state),
        None if rec is None else bytes(rec),  # type: ignore[call-overload]
    )


class GatewayStore:
    """The gateway's own SQLite state (see the module docstring).

    Raises:
        StoreError: the database cannot be opened or a transaction fails.
    """

    def __init__(self, path: Path) -> None:
        # synchronous=FULL: the intent must survive power loss. A write waits 5 s for a lock
        # (sqlite3's default): this process is the file's only writer.
        self._db = open_db(
            path, what="gateway store", schema=_SCHEMA, synchronous="FULL", timeout_s=5
        )
        self._link_unlinked()

    def _link_unlinked(self) -> None:
        """Amendment links for reports accepted before links were kept (read from their
        envelopes, which the gateway verified when it accepted them); nothing once done."""
        rows = self._db.execute(
            "SELECT report_id, envelope FROM reports"
            " WHERE report_id NOT IN (SELECT report_id FROM amend_links)"
        ).fetchall()
        if not rows:
            return
        links = []
        for rid, raw in rows:
            envelope = bytes(raw)
            if is_sealed(envelope):
                links.append((str(rid), "", 0))
                continue
            report = Report.decode(Envelope.decode(envelope).payload)
            links.append((str(rid), report.amends, int(bool(report.retracts))))
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO amend_links VALUES (?,?,?)", links)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite_transaction(self._db, "gateway store")

    def by_digest(self, digest: bytes) -> Row | None:
        """The accepted report with these exact envelope bytes, or None."""
        r = self._db.execute(f"SELECT {_ROW} FROM reports WHERE digest = ?", (digest,)).fetchone()  # noqa: S608
        return None if r is None else _row(r)

    def envelope_at(self, partition: int, offset: int) -> bytes | None:
        """The envelope published here at (partition, offset) of the topic, or None."""
        r = self._db.execute(
            'SELECT envelope FROM reports WHERE state = ? AND partition = ? AND "offset" = ?',
            (PUBLISHED, partition, offset),
        ).fetchone()
        return None if r is None else bytes(r[0])

    def digest_of(self, report_id: str) -> bytes | None:
        """Digest of an accepted report id, or None."""
        r = self._db.execute("SELECT digest FROM reports WHERE report_id = ?", (report_id,))
        row = r.fetchone()
        return None if row is None else bytes(row[0])

    def pending(self, observer_id: str | None = None) -> list[Row]:
        """Reports still ``publishing``, in chain order per observer."""
        sql = f"SELECT {_ROW} FROM reports WHERE state = ?"  # noqa: S608
        args: tuple[str, ...] = (PUBLISHING,)
        if observer_id is not None:
            sql += " AND observer_id = ?"
            args += (observer_id,)
        return [_row(r) for r in self._db.execute(sql + " ORDER BY observer_id, seq", args)]

    def heads(self) -> dict[str, ChainHead]:
        """Every observer's chain head as accepted here."""
        rows = self._db.execute("SELECT observer_id, seq, digest FROM chain_heads")
        return {o: ChainHead(int(s), bytes(d)) for o, s, d in rows}

    def heads_of(self, observer_id: str) -> ChainHead | None:
        """One observer's chain head as accepted here, or None."""
        row = self._db.execute(
            "SELECT seq, digest FROM chain_heads WHERE observer_id = ?", (observer_id,)
        ).fetchone()
        return None if row is None else ChainHead(int(row[0]), bytes(row[1]))

    def watermarks(self) -> dict[int, int]:
        """Per partition, the offset below which every record of this gateway is confirmed."""
        return {int(p): int(o) for p, o in self._db.execute("SELECT * FROM watermarks")}

    def counts(self) -> dict[str, int]:
        """Reports per state."""
        out = {PUBLISHING: 0, PUBLISHED: 0}
        for s, n in self._db.execute("SELECT state, count(*) FROM reports GROUP BY state"):
            out[str(s)] = int(n)
        return out

    def amendable(self, org: str, report_id: str) -> Amendable | None:
        """The amendment rule's view of an accepted report (:class:`bus.verify.Amendable`):
        its chain, whether it is a retraction, and the correction or retraction that amended
        it; None when this gateway accepted no report with that id.

        Args:
            org: this gateway's organization (every report here is one of its observers').
        """
        row = self._db.execute(
            "SELECT r.observer_id, l.retraction FROM reports r JOIN amend_links l"
            " USING (report_id) WHERE report_id = ?",
            (report_id,),
        ).fetchone()
        if row is None:
            return None
        by = {0: "", 1: ""}
        for rid, retraction in self._db.execute(
            "SELECT report_id, retraction FROM amend_links WHERE amends = ?", (report_id,)
        ):
            by[int(retraction)] = str(rid)
        return Amendable(
            org, str(row[0]), retraction=bool(row[1]), corrected_by=by[0], retracted_by=by[1]
        )

    def record_intent(
        self,
        row: Row,
        now_ms: int,
        attachments: tuple[Attachment, ...] = (),
        *,
        amends: str = "",
        retraction: bool = False,
    ) -> None:
        """Commit the report as ``publishing`` together with its observer's new chain head
        (and what it says about its attachments, and the report it corrects or retracts:
        ``amends``, a retraction when ``retraction``)."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO attachment_refs VALUES (?,?,?,?,?)",
                [(a.sha256, row.report_id, a.size, a.media_type, a.name) for a in attachments],
            )
            db.execute(
                "INSERT INTO reports (report_id, observer_id, seq, digest, envelope, state,"
                " accepted_at_ms) VALUES (?,?,?,?,?,?,?)",
                (row.report_id, row.observer_id, row.seq, row.digest, row.envelope, PUBLISHING,
                 now_ms),
            )  # fmt: skip
            db.execute(
                "INSERT INTO amend_links VALUES (?,?,?)",
                (row.report_id, amends, int(retraction)),
            )
            db.execute(
                "INSERT INTO chain_heads VALUES (?,?,?) ON CONFLICT(observer_id) DO UPDATE"
                " SET seq=excluded.seq, digest=excluded.digest",
                (row.observer_id, row.seq, row.digest),
            )

    def mark_published(
        self, report_id: str, partition: int, offset: int, receipt: bytes, confirmed: dict[int, int]
    ) -> None:
        """Commit the publication; when nothing is left ``publishing``, raise the watermarks.

        Args:
            confirmed: per partition, the highest offset confirmed in this process.
        """
        with self._tx() as db:
            db.execute(
                'UPDATE reports SET state = ?, partition = ?, "offset" = ?, receipt = ?'
                " WHERE report_id = ?",
                (PUBLISHED, partition, offset, receipt, report_id),
            )
            (left,) = db.execute(
                "SELECT count(*) FROM reports WHERE state = ?", (PUBLISHING,)
            ).fetchone()
            if left == 0:
                self._raise_watermarks(db, {p: o + 1 for p, o in confirmed.items()})

    def attachment_refs(self, digest: bytes) -> list[Attachment]:
        """What this organization's published reports say about an attachment."""
        rows = self._db.execute(
            "SELECT a.size, a.media_type, a.name FROM attachment_refs a JOIN reports r"
            " USING (report_id) WHERE a.sha256 = ? AND r.state = ?",
            (digest, PUBLISHED),
        )
        return [Attachment(digest, int(s), str(m), str(n)) for s, m, n in rows]

    def attachment_answer(self, digest: bytes) -> bytes | None:
        """The JSON answer given when an attachment was published, or None."""
        row = self._db.execute(
            "SELECT answer FROM attachments WHERE sha256 = ?", (digest,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def record_attachment(self, digest: bytes, size: int, answer: bytes, now_ms: int) -> None:
        """Commit an attachment's publication."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO attachments VALUES (?,?,?,?)", (digest, size, answer, now_ms)
            )

    def attachment_count(self) -> int:
        """Attachments published."""
        (n,) = self._db.execute("SELECT count(*) FROM attachments").fetchone()
        return int(n)

    def set_watermarks(self, marks: dict[int, int]) -> None:
        """Raise watermarks (never lowers one); only call with nothing ``publishing``."""
        with self._tx() as db:
            self._raise_watermarks(db, marks)

    @staticmethod
    def _raise_watermarks(db: sqlite3.Connection, marks: dict[int, int]) -> None:
        db.executemany(
            "INSERT INTO watermarks VALUES (?, ?) ON CONFLICT(partition) DO UPDATE"
            " SET next_offset = max(next_offset, excluded.next_offset)",
            list(marks.items()),
        )
