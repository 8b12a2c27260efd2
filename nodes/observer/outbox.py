"""The observer's durable outbox: signed reports, the chain head and delivery state in SQLite.

Crash safety rests on two rules:

* :meth:`Outbox.append` signs the next report **inside** one write transaction that reads the
  chain head, inserts the envelope and stores the new head. Either all three are on disk or
  none is; two submits can never sign the same ``seq`` (the transaction holds SQLite's write
  lock while signing). ``submit`` reports success only after the commit returns.
* A delivery outcome (receipt or rejection) is written in one transaction per report. A report
  whose receipt is stored is never sent again; one that was sent but whose answer was lost
  (crash, dropped link) is sent again with the **same bytes**, and the gateway's idempotency
  answers with the same receipt.

``synchronous=FULL`` because the outbox lives on a field device that may lose power: a submit
the person saw succeed must survive it.

Attachments. The bytes live in the observer's blob directory (``<home>/blobs/<sha256 hex>``,
written and fsynced before the report is signed); this database keeps one ``attachments`` row
per (report, SHA-256), inserted in the report's own transaction. A row is ``pending`` until the
gateway confirmed publication (``uploaded``) or refused it with a reason (``refused``); the rows
of a report the gateway refused become ``dropped``; ``external`` marks a reference given by
SHA-256 alone, whose bytes this observer does not hold (e.g. a photo delivered earlier). Rows
are uploaded only once their report is delivered, oldest report first. A blob is released
(deleted) inside the transaction that leaves no ``pending`` row needing it, and submit checks
inside its own transaction that its blobs still exist, so a concurrent sync can never delete
the bytes of a report being queued.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bus.model import Attachment, sha256
from bus.store.sqlite import open_db, sqlite_transaction
from bus.verify import ChainHead

QUEUED: Final = "queued"
DELIVERED: Final = "delivered"
REJECTED: Final = "rejected"
# Attachment states (see the module docstring).
PENDING: Final = "pending"
UPLOADED: Final = "uploaded"
REFUSED: Final = "refused"
DROPPED: Final = "dropped"
EXTERNAL: Final = "external"
ATTACHMENT_STATES: Final = (PENDING, UPLOADED, REFUSED, DROPPED, EXTERNAL)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    report_id TEXT NOT NULL UNIQUE,
    envelope BLOB NOT NULL,
    digest BLOB NOT NULL,
    source TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'rejected')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    http_status INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    receipt BLOB,
    receipt_ok INTEGER,
    done_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, seq);
CREATE TABLE IF NOT EXISTS node_accreditations (
    key_id BLOB PRIMARY KEY, envelope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    seq INTEGER NOT NULL REFERENCES outbox (seq),
    sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('pending', 'uploaded', 'refused', 'dropped', 'external')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    http_status INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    done_at_ms INTEGER,
    PRIMARY KEY (seq, sha256)
);
CREATE INDEX IF NOT EXISTS attachments_state ON attachments (state, seq);
"""

# Called inside the append transaction with the current head; returns (report id, envelope).
SignNext = Callable[[ChainHead | None], tuple[str, bytes]]
# Called inside a transaction with an attachment's SHA-256 once no pending row needs its bytes.
Release = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class Entry:
    """One outbox row."""

    seq: int
    report_id: str
    envelope: bytes
    digest: bytes
    source: str
    created_at_ms: int
    state: str
    attempts: int
    last_error: str
    http_status: int | None
    reason: str
    detail: str
    receipt: bytes | None
    receipt_ok: bool | None
    done_at_ms: int | None


_COLUMNS: Final = (
    "seq, report_id, envelope, digest, source, created_at_ms, state, attempts, last_error,"
    " http_status, reason, detail, receipt, receipt_ok, done_at_ms"
)


@dataclass(frozen=True, slots=True)
class Upload:
    """One attachment row: which report, which bytes, and how its upload went."""

    seq: int
    report_id: str
    sha256: bytes
    size: int
    media_type: str
    name: str
    state: str
    attempts: int
    last_error: str
    http_status: int | None
    reason: str
    detail: str


_UPLOAD_COLUMNS: Final = (
    "a.seq, o.report_id, a.sha256, a.size, a.media_type, a.name, a.state, a.attempts,"
    " a.last_error, a.http_status, a.reason, a.detail"
)


def _upload(row: tuple[object, ...]) -> Upload:
    seq, rid, digest, size, media, name, state, attempts, err, status, reason, detail = row
    return Upload(
        seq=int(seq),  # type: ignore[call-overload]
        report_id=str(rid),
        sha256=bytes(digest),  # type: ignore[call-overload]
        size=int(size),  # type: ignore[call-overload]
        media_type=str(media),
        name=str(name),
        state=str(state),
        attempts=int(attempts),  # type: ignore[call-overload]
        last_error=str(err),
        http_status=None if status is None else int(status),  # type: ignore[call-overload]
        reason=str(reason),
        detail=str(detail),
    )


def _entry(row: tuple[object, ...]) -> Entry:
    (seq, rid, env, dig, src, created, state, attempts, err, status, reason, detail, rec, ok,
     done) = row  # fmt: skip
    return Entry(
        seq=int(seq),  # type: ignore[call-overload]
        report_id=str(rid),
        envelope=bytes(env),  # type: ignore[call-overload]
        digest=bytes(dig),  # type: ignore[call-overload]
        source=str(src),
        created_at_ms=int(created),  # type: ignore[call-overload]
        state=str(state),
        attempts=int(attempts),  # type: ignore[call-overload]
        last_error=str(err),
        http_status=None if status is None else int(status),  # type: ignore[call-overload]
        reason=str(reason),
        detail=str(detail),
        receipt=None if rec is None else bytes(rec),  # type: ignore[call-overload]
        receipt_ok=None if ok is None else bool(ok),
        done_at_ms=None if done is None else int(done),  # type: ignore[call-overload]
    )


class Outbox:
    """SQLite outbox of one observer. One connection per process; not thread-safe.

    Raises:
        StoreError: the database cannot be opened or a transaction fails.
    """

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self._db = open_db(
            path, what="outbox", schema=_SCHEMA, read_only=read_only, synchronous="FULL"
        )

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite_transaction(self._db, "outbox")

    # -- writes ------------------------------------------------------------------------------

    def append(
        self,
        sign_next: SignNext,
        *,
        source: str,
        now_ms: int,
        attachments: Sequence[tuple[Attachment, bool]] = (),
    ) -> Entry:
        """Sign the next report against the stored head and queue it, atomically.

        Args:
            sign_next: signs with the given head and returns (report id, envelope bytes).
            source: where the report came from (file name), for ``status``.
            now_ms: the queueing time.
            attachments: the report's attachments, each with whether this observer holds
                its bytes (``pending`` upload) or not (``external``).

        Returns:
            The queued entry; it is on disk when this returns.

        Raises:
            StoreError: nothing was queued and the head did not move.
            BusError: whatever ``sign_next`` raises (nothing was queued).
        """
        with self._tx() as db:
            head = self._read_head(db)
            report_id, envelope = sign_next(head)
            digest = sha256(envelope)
            seq = 1 if head is None else head.seq + 1
            db.execute(
                "INSERT INTO outbox (seq, report_id, envelope, digest, source, created_at_ms,"
                " state) VALUES (?,?,?,?,?,?,?)",
                (seq, report_id, envelope, digest, source, now_ms, QUEUED),
            )
            db.executemany(
                "INSERT OR IGNORE INTO attachments (seq, sha256, size, media_type, name, state)"
                " VALUES (?,?,?,?,?,?)",
                [
                    (seq, a.sha256, a.size, a.media_type, a.name, PENDING if held else EXTERNAL)
                    for a, held in attachments
                ],
            )
            db.execute(
                "INSERT INTO chain_head VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE"
                " SET seq=excluded.seq, digest=excluded.digest",
                (seq, digest),
            )
        entry = self.get(seq)
        assert entry is not None
        return entry

    def record_failure(self, seq: int, error: str) -> None:
        """Count a failed delivery attempt of a queued report (it stays queued)."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
                (error[:500], seq),
            )

    def mark_delivered(
        self, seq: int, *, receipt: bytes, receipt_ok: bool, http_status: int, now_ms: int
    ) -> None:
        """Store the receipt; the report is never sent again."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = ?, receipt = ?, receipt_ok = ?, http_status = ?,"
                " attempts = attempts + 1, done_at_ms = ?, last_error = '' WHERE seq = ?",
                (DELIVERED, receipt, int(receipt_ok), http_status, now_ms, seq),
            )

    def mark_rejected(
        self,
        seq: int,
        *,
        reason: str,
        detail: str,
        http_status: int,
        now_ms: int,
        release: Release | None = None,
    ) -> None:
        """Record the gateway's refusal; the report is not sent again, nor its attachments."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = ?, reason = ?, detail = ?, http_status = ?,"
                " attempts = attempts + 1, done_at_ms = ? WHERE seq = ?",
                (REJECTED, reason, detail[:2000], http_status, now_ms, seq),
            )
            shas = [
                bytes(r[0])
                for r in db.execute(
                    "SELECT sha256 FROM attachments WHERE seq = ? AND state = ?", (seq, PENDING)
                )
            ]
            db.execute(
                "UPDATE attachments SET state = ?, reason = 'report_rejected', done_at_ms = ?"
                " WHERE seq = ? AND state = ?",
                (DROPPED, now_ms, seq, PENDING),
            )
            self._release_unneeded(db, shas, release)

    # -- attachments -------------------------------------------------------------------------

    @staticmethod
    def _release_unneeded(
        db: sqlite3.Connection, shas: Sequence[bytes], release: Release | None
    ) -> None:
        if release is None:
            return
        for digest in shas:
            (left,) = db.execute(
                "SELECT count(*) FROM attachments WHERE sha256 = ? AND state = ?",
                (digest, PENDING),
            ).fetchone()
            if left == 0:
                release(digest)

    def next_upload(self) -> Upload | None:
        """The oldest pending attachment of a delivered report, or None."""
        row = self._db.execute(
            f"SELECT {_UPLOAD_COLUMNS} FROM attachments a JOIN outbox o USING (seq)"  # noqa: S608
            " WHERE a.state = ? AND o.state = ? ORDER BY a.seq, a.rowid LIMIT 1",
            (PENDING, DELIVERED),
        ).fetchone()
        return None if row is None else _upload(row)

    def record_upload_failure(self, seq: int, digest: bytes, error: str) -> None:
        """Count a failed upload attempt (the attachment stays pending)."""
        with self._tx() as db:
            db.execute(
                "UPDATE attachments SET attempts = attempts + 1, last_error = ?"
                " WHERE seq = ? AND sha256 = ?",
                (error[:500], seq, digest),
            )

    def finish_upload(
        self,
        seq: int,
        digest: bytes,
        *,
        state: str,
        http_status: int | None,
        now_ms: int,
        reason: str = "",
        detail: str = "",
        release: Release | None = None,
    ) -> None:
        """Record an upload's end (``uploaded`` or ``refused`` with the reason).

        Every other pending row of the same SHA-256 ends the same way (the gateway's answer
        is about the bytes, whichever report referenced them); ``release`` is called, inside
        the transaction, when no pending row needs the bytes any more.
        """
        if state not in (UPLOADED, REFUSED):
            raise ValueError(f"an upload ends uploaded or refused, not {state}")
        with self._tx() as db:
            db.execute(
                "UPDATE attachments SET state = ?, http_status = ?, reason = ?, detail = ?,"
                " attempts = attempts + (seq = ?), done_at_ms = ?, last_error = ''"
                " WHERE sha256 = ? AND state = ? AND seq IN"
                " (SELECT seq FROM outbox WHERE state = ?)",
                (state, http_status, reason, detail[:2000], seq, now_ms, digest, PENDING,
                 DELIVERED),
            )  # fmt: skip
            self._release_unneeded(db, [digest], release)

    def uploads(self, state: str | None = None) -> list[Upload]:
        """Attachment rows in report order, optionally of one state."""
        sql = f"SELECT {_UPLOAD_COLUMNS} FROM attachments a JOIN outbox o USING (seq)"  # noqa: S608
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE a.state = ?"
            args = (state,)
        return [_upload(r) for r in self._db.execute(sql + " ORDER BY a.seq, a.rowid", args)]

    def upload_counts(self) -> dict[str, int]:
        """Number of attachment rows per state (every state present, zero included)."""
        out = dict.fromkeys(ATTACHMENT_STATES, 0)
        for state, n in self._db.execute("SELECT state, count(*) FROM attachments GROUP BY state"):
            out[str(state)] = int(n)
        return out

    def needs_blob(self, digest: bytes) -> bool:
        """Whether a pending attachment row needs these bytes."""
        row = self._db.execute(
            "SELECT 1 FROM attachments WHERE sha256 = ? AND state = ? LIMIT 1", (digest, PENDING)
        ).fetchone()
        return row is not None

    def add_node_accreditation(self, key_id: bytes, envelope: bytes) -> None:
        """Keep a (verified) node accreditation envelope for checking receipts offline."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO node_accreditations VALUES (?, ?)", (key_id, envelope)
            )

    # -- reads -------------------------------------------------------------------------------

    @staticmethod
    def _read_head(db: sqlite3.Connection) -> ChainHead | None:
        row = db.execute("SELECT seq, digest FROM chain_head WHERE id = 1").fetchone()
        return None if row is None else ChainHead(int(row[0]), bytes(row[1]))

    def head(self) -> ChainHead | None:
        """The chain head (last signed report), or None before the first."""
        return self._read_head(self._db)

    def get(self, seq: int) -> Entry | None:
        """The entry at a sequence number."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
        return None if row is None else _entry(row)

    def next_queued(self) -> Entry | None:
        """The oldest queued entry (lowest seq), or None."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = ? ORDER BY seq LIMIT 1",  # noqa: S608
            (QUEUED,),
        ).fetchone()
        return None if row is None else _entry(row)

    def entries(self, state: str | None = None) -> list[Entry]:
        """Entries in seq order, optionally of one state."""
        if state is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox ORDER BY seq")  # noqa: S608
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE state = ? ORDER BY seq",  # noqa: S608
                (state,),
            )
        return [_entry(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of entries per state (every state present, zero included)."""
        out = {QUEUED: 0, DELIVERED: 0, REJECTED: 0}
        for state, n in self._db.execute("SELECT state, count(*) FROM outbox GROUP BY state"):
            out[str(state)] = int(n)
        return out

    def node_accreditations(self) -> list[bytes]:
        """Stored node accreditation envelopes."""
        return [bytes(r[0]) for r in self._db.execute("SELECT envelope FROM node_accreditations")]
