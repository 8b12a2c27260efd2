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

The chain never advances past a refused report. A refusal (:meth:`Outbox.mark_rejected`) of
the report at seq *s* rewinds the chain head to *s - 1* (the refused report's own seq and
previous digest): nothing after it was accepted, and the next report signed takes *s* again.
Reports queued after it were signed on a position that no longer exists: they are **held**
(still ``queued``, but their seq lies beyond the head) and are never sent as they are; each is
re-signed (:meth:`Outbox.resign`: same report id, same content, a new signing time, the next
seq and the new previous digest, its attachment rows moved along) before delivery. A refused
report is re-signed the same way when it is fixed or its refusal healed (a clock set right),
at the seq it had if nothing was signed in between; when another report takes its seq, the
refused one moves to the ``refused`` history (its attachments' bytes are released then).

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

from bus.errors import StoreError
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
-- Refused reports whose seq another report took (see the module docstring).
CREATE TABLE IF NOT EXISTS refused (
    report_id TEXT NOT NULL, seq INTEGER NOT NULL, envelope BLOB NOT NULL, digest BLOB NOT NULL,
    source TEXT NOT NULL, http_status INTEGER, reason TEXT NOT NULL, detail TEXT NOT NULL,
    done_at_ms INTEGER, PRIMARY KEY (digest)
);
-- The report inside a restricted envelope and the keys it was sealed to, so it can be
-- re-signed (the envelope alone cannot be opened by the observer).
CREATE TABLE IF NOT EXISTS drafts (
    report_id TEXT PRIMARY KEY, report BLOB NOT NULL, recipients TEXT NOT NULL
);
"""

# Called inside the append transaction with the current head; returns (report id, envelope).
SignNext = Callable[[ChainHead | None], tuple[str, bytes]]
# Called inside a transaction with an attachment's SHA-256 once no pending row needs its bytes.
Release = Callable[[bytes], None]
# Called inside the re-sign transaction with the entry and the head it is re-signed on; returns
# the new envelope bytes (same report id).
Resign = Callable[["Entry", ChainHead | None], bytes]


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
        draft: Callable[[], tuple[bytes, str] | None] | None = None,
        release: Release | None = None,
    ) -> Entry:
        """Sign the next report against the stored head and queue it, atomically.

        Args:
            sign_next: signs with the given head and returns (report id, envelope bytes).
            source: where the report came from (file name), for ``status``.
            now_ms: the queueing time.
            attachments: the report's attachments, each with whether this observer holds
                its bytes (``pending`` upload) or not (``external``).
            draft: called after ``sign_next``: for a restricted report, (the inner report's
                bytes, the recipients' keys as JSON), kept so that it can be re-signed.
            release: releases the bytes of a refused report moved to the history.

        Returns:
            The queued entry; it is on disk when this returns.

        Raises:
            StoreError: nothing was queued and the head did not move; or a held report
                occupies the next seq (re-sign the held reports first: :meth:`resign`).
            BusError: whatever ``sign_next`` raises (nothing was queued).
        """
        with self._tx() as db:
            head = self._read_head(db)
            seq = 1 if head is None else head.seq + 1
            self._free(db, seq, release)
            report_id, envelope = sign_next(head)
            digest = sha256(envelope)
            kept = None if draft is None else draft()
            if kept is not None:
                db.execute(
                    "INSERT OR REPLACE INTO drafts VALUES (?, ?, ?)", (report_id, kept[0], kept[1])
                )
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

    def _free(self, db: sqlite3.Connection, seq: int, release: Release | None) -> None:
        """Make ``seq`` free for a new signature: a refused report there moves to the history
        (its attachment rows go, their bytes are released when nothing else needs them).

        Raises:
            StoreError: a report that is not refused holds ``seq`` (a held report: re-sign
                the held reports first).
        """
        row = db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
        if row is None:
            return
        e = _entry(row)
        if e.state != REJECTED:
            raise StoreError(
                f"seq {seq} is held by report {e.report_id} ({e.state}): re-sign the held"
                " reports first (obus observer resign)"
            )
        db.execute(
            "INSERT OR REPLACE INTO refused VALUES (?,?,?,?,?,?,?,?,?)",
            (e.report_id, e.seq, e.envelope, e.digest, e.source, e.http_status, e.reason,
             e.detail, e.done_at_ms),
        )  # fmt: skip
        shas = [bytes(r[0]) for r in db.execute("SELECT sha256 FROM attachments WHERE seq = ?",
                                                (seq,))]  # fmt: skip
        db.execute("DELETE FROM attachments WHERE seq = ?", (seq,))
        db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        self._release_unneeded(db, shas, release)

    def resign(
        self,
        seq: int,
        sign: Resign,
        *,
        now_ms: int,
        holds: Callable[[bytes], bool] = lambda _sha: False,
        release: Release | None = None,
    ) -> Entry:
        """Re-sign a held or refused report at the next chain position, atomically: same
        report id, the envelope ``sign`` returns on the current head, the seq after the head
        (a refused report still there is moved to the history first), attempts reset. A
        refused report's attachment rows become ``pending`` again when ``holds`` says the bytes
        are still here, else ``external``.

        Returns:
            The entry at its new seq.

        Raises:
            StoreError: no held or refused report at ``seq``, or a report not refused holds
                the next seq.
            BusError: whatever ``sign`` raises (nothing changed).
        """
        with self._tx() as db:
            head = self._read_head(db)
            at = 0 if head is None else head.seq
            row = db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
            e = None if row is None else _entry(row)
            if e is None or not (e.state == REJECTED or (e.state == QUEUED and e.seq > at)):
                raise StoreError(f"no held or refused report at seq {seq}")
            new = at + 1
            if new != seq:
                self._free(db, new, release)
            envelope = sign(e, head)
            digest = sha256(envelope)
            db.execute(
                "UPDATE outbox SET seq = ?, envelope = ?, digest = ?, state = ?, attempts = 0,"
                " last_error = '', http_status = NULL, reason = '', detail = '',"
                " receipt = NULL, receipt_ok = NULL, done_at_ms = NULL, created_at_ms = ?"
                " WHERE seq = ?",
                (new, envelope, digest, QUEUED, now_ms, seq),
            )
            for (sha,) in db.execute(
                "SELECT sha256 FROM attachments WHERE seq = ? AND state = ?", (seq, DROPPED)
            ).fetchall():
                again = PENDING if holds(bytes(sha)) else EXTERNAL
                db.execute(
                    "UPDATE attachments SET state = ?, reason = '', done_at_ms = NULL"
                    " WHERE seq = ? AND sha256 = ?",
                    (again, seq, sha),
                )
            db.execute("UPDATE attachments SET seq = ? WHERE seq = ?", (new, seq))
            db.execute(
                "INSERT INTO chain_head VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE"
                " SET seq=excluded.seq, digest=excluded.digest",
                (new, digest),
            )
        entry = self.get(new)
        assert entry is not None
        return entry

    def set_head(self, head: ChainHead) -> None:
        """Continue a chain another device began (:func:`nodes.observer.device.continue_chain`):
        the head becomes ``head``, only while this outbox has signed nothing.

        Raises:
            StoreError: the outbox already holds reports or a head.
        """
        with self._tx() as db:
            if (
                self._read_head(db) is not None
                or db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone()
            ):
                raise StoreError("this outbox has signed reports already: its chain is its own")
            db.execute("INSERT INTO chain_head VALUES (1, ?, ?)", (head.seq, head.digest))

    def draft(self, report_id: str) -> tuple[bytes, str] | None:
        """The kept inner report and recipients (JSON) of a restricted report, or None."""
        row = self._db.execute(
            "SELECT report, recipients FROM drafts WHERE report_id = ?", (report_id,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), str(row[1]))

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
        prev: ChainHead | None = None,
    ) -> None:
        """Record the gateway's refusal: the report is not sent again as it is, its
        attachments are ``dropped`` (their bytes kept, in case it is re-signed), and the chain
        head rewinds to ``prev``, the position the refused report was signed on (None: it was
        seq 1), so the reports queued after it are held (module docstring)."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = ?, reason = ?, detail = ?, http_status = ?,"
                " attempts = attempts + 1, done_at_ms = ? WHERE seq = ?",
                (REJECTED, reason, detail[:2000], http_status, now_ms, seq),
            )
            db.execute(
                "UPDATE attachments SET state = ?, reason = 'report_rejected', done_at_ms = ?"
                " WHERE seq = ? AND state = ?",
                (DROPPED, now_ms, seq, PENDING),
            )
            head = self._read_head(db)
            if head is not None and head.seq >= seq:
                if prev is None:
                    db.execute("DELETE FROM chain_head")
                else:
                    db.execute(
                        "UPDATE chain_head SET seq = ?, digest = ? WHERE id = 1",
                        (prev.seq, prev.digest),
                    )

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

    def next_deliverable(self) -> Entry | None:
        """The oldest queued entry that is not held (its seq at or below the head), or None."""
        head = self.head()
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = ? AND seq <= ?"  # noqa: S608
            " ORDER BY seq LIMIT 1",
            (QUEUED, 0 if head is None else head.seq),
        ).fetchone()
        return None if row is None else _entry(row)

    def held(self) -> list[Entry]:
        """Queued entries signed on a chain position a refusal took away (seq beyond the
        head), in seq order: re-signed before delivery."""
        head = self.head()
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state = ? AND seq > ? ORDER BY seq",  # noqa: S608
            (QUEUED, 0 if head is None else head.seq),
        )
        return [_entry(r) for r in rows]

    def refused_history(self) -> list[tuple[str, int, str, str]]:
        """Refused reports another report's seq replaced: (report id, seq, reason, detail)."""
        return [
            (str(r[0]), int(r[1]), str(r[2]), str(r[3]))
            for r in self._db.execute(
                "SELECT report_id, seq, reason, detail FROM refused ORDER BY seq, report_id"
            )
        ]

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
