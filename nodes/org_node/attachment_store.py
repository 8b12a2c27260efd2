"""A node's attachment store: the chunks read from the attachments topics, the attachments they
amount to, and the content-addressed files of those kept.

Written by the reassembler (:class:`nodes.org_node.attachments.AttachmentNode`): per batch of
records, in **one** transaction, the chunks (deduplicated by layout, index and chunk digest) and
the next offset of every partition, so a restart resumes exactly. Then each touched attachment
is settled (:meth:`AttachmentStore.settle`):

* chunks missing: it waits; after ``incomplete_ttl_ms`` (node clock, from its first chunk) it is
  quarantined ``attachment_incomplete``;
* complete: :meth:`bus.attachment.Assembly.resolve` tries the candidates; none hashes to the
  SHA-256 -> ``attachment_hash_mismatch`` (the chunks stay, a genuine re-publication still
  completes it);
* verified: checked against the references of the reports this node accepted (read from the
  node's ``reports`` table, read-only; a report later marked revoked keeps its reference, the
  bytes being what it committed to either way; sealed reports are skipped): none yet -> it
  waits for the report (the node reads reports with another consumer), and after
  ``unreferenced_ttl_ms`` it is quarantined ``attachment_unreferenced``; another size ->
  ``attachment_size_mismatch``; a match -> the bytes are written to a temporary file, fsynced
  and renamed to their content address (``<blob dir>/<aa>/<sha256 hex>``), then recorded, and
  the chunks are dropped.

A quarantined attachment keeps its chunks, and is settled again whenever a chunk or a reference
arrives: quarantine is a verdict on what was there at the time, never a deletion. Records that
are not chunks (``malformed``, ``invalid_field``, ``oversized``) and chunks contradicting an
attachment already stored are quarantined with their raw bytes, bounded like a node's
quarantine (:mod:`bus.store.quarantine`): whole up to the chunk record limit, the first 4 KiB of
a larger record, always its ``record_size`` and ``record_sha256``, and no bytes once the topic is
past its quarantine quota (``over_quota``). A chunk of an attachment already stored that matches
its bytes is a duplicate (the gateway re-publishes after a crash) and is dropped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from bus.attachment import (
    CHUNK_OVERHEAD_BYTES,
    MAX_CANDIDATES,
    MAX_CHUNK_BYTES,
    Assembly,
    AttachmentLimits,
    Chunk,
    Layout,
    check_reference,
)
from bus.errors import BusError, Reason, StoreError, VerificationError
from bus.ingest import Quarantined, RecordRef, kept_of
from bus.model import PAYLOAD_REPORT, Attachment, Envelope, Report, sha256
from bus.store.quarantine import (
    DEFAULT_QUARANTINE_QUOTA_BYTES,
    MAX_DETAIL_CHARS,
    USAGE_SCHEMA,
    QuarantineBudget,
    log_changes,
    reconcile,
    recount,
)
from bus.store.sqlite import open_db, sqlite_transaction

log = structlog.get_logger(__name__)

PARTIAL: Final = "partial"
VERIFIED: Final = "verified"  # bytes hash right; waiting for a referencing report
QUARANTINED: Final = "quarantined"
# The largest record an attachments topic may carry (Chunk.decode refuses larger ones).
RECORD_LIMIT_BYTES: Final = MAX_CHUNK_BYTES + CHUNK_OVERHEAD_BYTES


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS chunks (
    sha256 BLOB NOT NULL, total_size INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    idx INTEGER NOT NULL, digest BLOB NOT NULL, data BLOB NOT NULL,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sha256, total_size, chunk_size, idx, digest)
);
CREATE TABLE IF NOT EXISTS assemblies (
    sha256 BLOB NOT NULL, total_size INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('partial', 'verified', 'quarantined')),
    reason TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '',
    first_seen_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (sha256, total_size, chunk_size)
);
CREATE TABLE IF NOT EXISTS attachments (
    sha256 BLOB PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT NOT NULL,
    name TEXT NOT NULL, report_id TEXT NOT NULL, path TEXT NOT NULL,
    stored_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    sha256 BLOB NOT NULL, report_id TEXT NOT NULL, size INTEGER NOT NULL,
    media_type TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (sha256, report_id)
);
CREATE TABLE IF NOT EXISTS ref_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1), last_rowid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 BLOB, reason TEXT NOT NULL, detail TEXT NOT NULL,
    topic TEXT, partition INTEGER, "offset" INTEGER, at_ms INTEGER NOT NULL, raw BLOB,
    record_size INTEGER, record_sha256 BLOB, over_quota INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""
# Columns added after the first release (older stores get them through ALTER TABLE).
_ADDED_COLUMNS: Final = (
    ("quarantine", "record_size", "INTEGER"),
    ("quarantine", "record_sha256", "BLOB"),
    ("quarantine", "over_quota", "INTEGER NOT NULL DEFAULT 0"),
)


@dataclass(frozen=True, slots=True)
class Stored:
    """An attachment kept by a node: verified against a report it accepted."""

    sha256: bytes
    size: int
    media_type: str
    name: str
    report_id: str
    path: Path


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """One quarantine event: an attachment (or a record) and why."""

    sha256: bytes | None
    reason: str
    detail: str
    topic: str | None
    partition: int | None
    offset: int | None


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A record read from an attachments topic."""

    topic: str
    partition: int
    offset: int
    value: bytes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _layout(row: Sequence[Any]) -> Layout:
    return Layout(bytes(row[0]), int(row[1]), int(row[2]))


def _write_file(path: Path, data: bytes) -> None:
    """Write, fsync and rename into place (then fsync the directory). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AttachmentStore:
    """A node's attachment state (SQLite) and content-addressed files. Not thread-safe.

    Args:
        db_path: its own SQLite file.
        read_only: open an existing store only to read it.
        blob_dir: where verified attachments are kept, ``<aa>/<sha256 hex>``.
        node_db_path: the node's store, read (read-only) for the references of accepted
            reports; None: no references (everything waits, then is ``unreferenced``).
        limits: sizes and waiting times.
        quarantine_quota_bytes: bytes of rejected records kept per topic.

    Raises:
        StoreError: the database cannot be opened or a transaction fails.
    """

    def __init__(
        self,
        db_path: Path,
        blob_dir: Path,
        node_db_path: Path | None,
        limits: AttachmentLimits | None = None,
        *,
        read_only: bool = False,
        quarantine_quota_bytes: int = DEFAULT_QUARANTINE_QUOTA_BYTES,
    ) -> None:
        self.blob_dir = blob_dir
        self.node_db_path = node_db_path
        self.limits = limits or AttachmentLimits()
        self.quarantine_quota_bytes = quarantine_quota_bytes
        self._path = str(db_path)
        if read_only:  # to look at a running node's state (tests, operators)
            self._db = open_db(db_path, what="attachment store", read_only=True)
            return
        try:
            blob_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open attachment store {db_path}: {exc}") from exc
        # The node runs store calls in a worker thread (asyncio.to_thread), one at a time.
        self._db = open_db(
            db_path,
            what="attachment store",
            schema=_SCHEMA + USAGE_SCHEMA,
            synchronous="FULL",
            threads=True,
        )
        with sqlite_transaction(self._db, "attachment store") as db:
            if self._add_missing_columns(db):
                self._bound_old_rows(db)
                recount(db, [("quarantine", "coalesce(length(raw), 0)")])
            changes = reconcile(db, quarantine_quota_bytes)
        log_changes(self._db, changes, quota_bytes=quarantine_quota_bytes, store=self._path)

    @staticmethod
    def _add_missing_columns(db: sqlite3.Connection) -> bool:
        added = False
        for table, column, decl in _ADDED_COLUMNS:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                added = True
        return added

    @staticmethod
    def _bound_old_rows(db: sqlite3.Connection) -> None:
        """Size, SHA-256 and the bound for rows stored before rows were bounded (one row in
        memory at a time)."""
        ids = [
            i
            for (i,) in db.execute(
                "SELECT id FROM quarantine WHERE raw IS NOT NULL AND record_size IS NULL"
            )
        ]
        for i in ids:
            raw, detail = db.execute(
                "SELECT raw, detail FROM quarantine WHERE id = ?", (i,)
            ).fetchone()
            raw = bytes(raw)
            db.execute(
                "UPDATE quarantine SET raw = ?, detail = ?, record_size = ?, record_sha256 = ?"
                " WHERE id = ?",
                (kept_of(raw, RECORD_LIMIT_BYTES), detail[:MAX_DETAIL_CHARS], len(raw),
                 sha256(raw), i),
            )  # fmt: skip

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def path_of(self, digest: bytes) -> Path:
        """Content address of an attachment's file."""
        h = digest.hex()
        return self.blob_dir / h[:2] / h

    # -- records -----------------------------------------------------------------------------

    def ingest(self, records: Sequence[ChunkRecord], *, now_ms: int | None = None) -> set[Layout]:
        """Store a batch of chunk records and the positions after them, in one transaction.

        Returns:
            The layouts that received a new chunk (to :meth:`settle`).
        """
        now = _now_ms() if now_ms is None else now_ms
        touched: set[Layout] = set()
        positions: dict[tuple[str, int], int] = {}
        with sqlite_transaction(self._db, "attachment store") as db:
            budget = QuarantineBudget(db, self.quarantine_quota_bytes, RECORD_LIMIT_BYTES)
            for rec in records:
                positions[(rec.topic, rec.partition)] = rec.offset + 1
                layout = self._ingest_one(db, rec, now, budget)
                if layout is not None:
                    touched.add(layout)
            db.executemany(
                "INSERT INTO positions VALUES (?,?,?) ON CONFLICT(topic, partition) DO UPDATE"
                " SET next_offset = excluded.next_offset",
                [(t, p, o) for (t, p), o in positions.items()],
            )
            charge = budget.flush()
        log_changes(
            self._db,
            [(t, True) for t in charge.exceeded],
            quota_bytes=self.quarantine_quota_bytes,
            store=self._path,
        )
        return touched

    def _ingest_one(
        self, db: sqlite3.Connection, rec: ChunkRecord, now: int, budget: QuarantineBudget
    ) -> Layout | None:
        where = (rec.topic, rec.partition, rec.offset)
        try:
            chunk = Chunk.decode(rec.value, max_total_bytes=self.limits.max_bytes)
        except VerificationError as exc:
            sha = exc.context.get("sha256")
            digest = bytes.fromhex(sha) if sha else None
            self._quarantine(db, digest, exc, now, where=where, raw=rec.value, budget=budget)
            return None
        lay = chunk.layout
        stored = db.execute(
            "SELECT size FROM attachments WHERE sha256 = ?", (lay.sha256,)
        ).fetchone()
        if stored is not None:
            if not self._matches_stored(chunk, int(stored[0])):
                err = VerificationError(
                    Reason.ATTACHMENT_HASH_MISMATCH,
                    f"chunk {chunk.index} contradicts stored attachment {lay.hex}",
                )
                self._quarantine(
                    db, lay.sha256, err, now, where=where, raw=rec.value, budget=budget
                )
            return None
        key = (lay.sha256, lay.total_size, lay.chunk_size, chunk.index)
        digest = chunk.digest
        seen = db.execute(
            "SELECT 1 FROM chunks WHERE sha256=? AND total_size=? AND chunk_size=? AND idx=?"
            " AND digest=?",
            (*key, digest),
        ).fetchone()
        if seen is not None:
            return None  # the same chunk again (a re-publication)
        (held,) = db.execute(
            "SELECT count(*) FROM chunks WHERE sha256=? AND total_size=? AND chunk_size=?"
            " AND idx=?",
            key,
        ).fetchone()
        if held >= MAX_CANDIDATES:
            err = VerificationError(
                Reason.ATTACHMENT_HASH_MISMATCH,
                f"chunk {chunk.index} of {lay.hex} has more than {MAX_CANDIDATES} versions",
            )
            self._quarantine(db, lay.sha256, err, now, where=where, raw=rec.value, budget=budget)
            return None
        db.execute(
            "INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?)",
            (*key, digest, chunk.data, *where, now),
        )
        db.execute(
            "INSERT INTO assemblies (sha256, total_size, chunk_size, state, first_seen_ms,"
            " updated_ms) VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET updated_ms = ?",
            (*key[:3], PARTIAL, now, now, now),
        )
        return lay

    def _matches_stored(self, chunk: Chunk, size: int) -> bool:
        """Whether a chunk of a stored attachment holds the stored file's bytes.

        Raises:
            StoreError: the stored file is missing or unreadable. The database says it was
                kept, so the blob directory was lost or restored without the database: no
                verdict on the chunk can be made from it, and quarantining a genuine chunk as
                contradicting would be a false one.
        """
        lay = chunk.layout
        if lay.total_size != size:
            return False
        start, end = lay.span(chunk.index)
        path = self.path_of(lay.sha256)
        try:
            with path.open("rb") as f:
                f.seek(start)
                return f.read(end - start) == chunk.data
        except OSError as exc:
            raise StoreError(
                f"stored attachment {lay.hex} cannot be read from {path}: {exc};"
                f" fix: restore {self.blob_dir} from the same backup as the attachment database,"
                " or move both away to have the node rebuild them from the attachments topics",
                path=str(path),
                blob_dir=str(self.blob_dir),
            ) from exc

    @staticmethod
    def _quarantine(
        db: sqlite3.Connection,
        digest: bytes | None,
        exc: VerificationError,
        now: int,
        *,
        where: tuple[str, int, int] | None = None,
        raw: bytes | None = None,
        budget: QuarantineBudget | None = None,
    ) -> None:
        """One quarantine event; a record's bytes (``raw`` at ``where``) are kept bounded and
        charged to ``budget``."""
        if where is None or raw is None or budget is None:  # a verdict on a whole attachment
            db.execute(
                "INSERT INTO quarantine (sha256, reason, detail, at_ms) VALUES (?,?,?,?)",
                (digest, exc.reason.value, exc.message[:MAX_DETAIL_CHARS], now),
            )
            log.warning(
                "attachment_quarantined",
                sha256=None if digest is None else digest.hex(),
                reason=exc.reason.value,
                detail=exc.message,
            )
            return
        topic, partition, offset = where
        q = Quarantined(
            RecordRef(topic, partition, offset, now), exc.reason.value, exc.message, raw
        )
        b = budget.row(q)
        db.execute(
            'INSERT INTO quarantine (sha256, reason, detail, topic, partition, "offset", at_ms,'
            " raw, record_size, record_sha256, over_quota) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (digest, exc.reason.value, b.detail, topic, partition, offset, now, b.raw, b.size,
             b.sha256, int(b.over_quota)),
        )  # fmt: skip
        log.warning(
            "attachment_quarantined",
            sha256=None if digest is None else digest.hex(),
            reason=exc.reason.value,
            detail=b.detail,
            topic=topic,
            partition=partition,
            offset=offset,
            size=b.size,
            record_sha256=b.sha256.hex(),
            over_quota=b.over_quota,
        )

    # -- settling ------------------------------------------------------------------------------

    def _assembly(self, layout: Layout) -> Assembly:
        asm = Assembly(layout)
        rows = self._db.execute(
            "SELECT idx, data FROM chunks WHERE sha256=? AND total_size=? AND chunk_size=?"
            " ORDER BY rowid",
            (layout.sha256, layout.total_size, layout.chunk_size),
        )
        for idx, data in rows:
            asm.add(Chunk(layout, int(idx), bytes(data)))
        return asm

    def _row(self, layout: Layout) -> tuple[str, str, int] | None:
        row = self._db.execute(
            "SELECT state, reason, first_seen_ms FROM assemblies WHERE sha256=? AND"
            " total_size=? AND chunk_size=?",
            (layout.sha256, layout.total_size, layout.chunk_size),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

    def _missing(self, layout: Layout) -> int:
        (present,) = self._db.execute(
            "SELECT count(DISTINCT idx) FROM chunks WHERE sha256=? AND total_size=? AND"
            " chunk_size=?",
            (layout.sha256, layout.total_size, layout.chunk_size),
        ).fetchone()
        return layout.count - int(present)

    def _set_state(
        self, layout: Layout, state: str, exc: VerificationError | None, now: int
    ) -> str:
        """Record a state when it changed; a new quarantine verdict is also an event."""
        before = self._row(layout)
        reason = "" if exc is None else exc.reason.value
        if before is not None and before[:2] == (state, reason):
            return state
        with sqlite_transaction(self._db, "attachment store") as db:
            db.execute(
                "UPDATE assemblies SET state = ?, reason = ?, detail = ?, updated_ms = ?"
                " WHERE sha256=? AND total_size=? AND chunk_size=?",
                (state, reason, "" if exc is None else exc.message, now, layout.sha256,
                 layout.total_size, layout.chunk_size),
            )  # fmt: skip
            if exc is not None and state == QUARANTINED:
                self._quarantine(db, layout.sha256, exc, now)
        return state

    def settle(self, layout: Layout, *, now_ms: int | None = None) -> str:
        """Decide what an attachment's chunks amount to now (see the module docstring).

        Called when a chunk of it arrived; the bytes are reassembled only when every index
        holds a chunk.

        Returns:
            ``stored``, ``partial``, ``verified`` or ``quarantined``.
        """
        now = _now_ms() if now_ms is None else now_ms
        row = self._row(layout)
        if row is None:
            return "stored" if self.stored(layout.sha256) is not None else PARTIAL
        missing = self._missing(layout)
        if missing:
            if now - row[2] < self.limits.incomplete_ttl_ms:
                return self._set_state(layout, PARTIAL, None, now)
            err = VerificationError(
                Reason.ATTACHMENT_INCOMPLETE,
                f"{missing} of {layout.count} chunks of {layout.hex} missing",
            )
            return self._set_state(layout, QUARANTINED, err, now)
        try:
            data = self._assembly(layout).resolve()
        except VerificationError as exc:
            return self._set_state(layout, QUARANTINED, exc, now)
        return self._check_and_keep(layout, data, row[2], now)

    def _check_and_keep(self, layout: Layout, data: bytes | None, first: int, now: int) -> str:
        """Check verified bytes (``data``, or None to reassemble them) against references."""
        try:
            ref = check_reference(layout.sha256, layout.total_size, self.refs(layout.sha256))
        except VerificationError as exc:
            waiting = now - first < self.limits.unreferenced_ttl_ms
            if exc.reason is Reason.ATTACHMENT_UNREFERENCED and waiting:
                return self._set_state(layout, VERIFIED, None, now)
            return self._set_state(layout, QUARANTINED, exc, now)
        if data is None:
            data = self._assembly(layout).resolve()
        self._keep(layout, data, ref, now)
        return "stored"

    def _keep(self, layout: Layout, data: bytes, ref: Attachment, now: int) -> None:
        path = self.path_of(layout.sha256)
        try:
            _write_file(path, data)
        except OSError as exc:  # disk full, read-only, directory gone: the node must stop
            raise StoreError(
                f"cannot write attachment {layout.hex} to {path}: {exc};"
                f" fix: free space in or make {self.blob_dir} writable, then restart the node",
                path=str(path),
                blob_dir=str(self.blob_dir),
            ) from exc
        report_id = self._db.execute(
            "SELECT report_id FROM refs WHERE sha256 = ? AND size = ? ORDER BY rowid LIMIT 1",
            (layout.sha256, ref.size),
        ).fetchone()[0]
        with sqlite_transaction(self._db, "attachment store") as db:
            db.execute(
                "INSERT OR IGNORE INTO attachments VALUES (?,?,?,?,?,?,?)",
                (layout.sha256, len(data), ref.media_type, ref.name, report_id,
                 str(path.relative_to(self.blob_dir)), now),
            )  # fmt: skip
            db.execute("DELETE FROM chunks WHERE sha256 = ?", (layout.sha256,))
            db.execute("DELETE FROM assemblies WHERE sha256 = ?", (layout.sha256,))
        log.info(
            "attachment_stored", sha256=layout.hex, size=len(data), media_type=ref.media_type,
            report_id=report_id,
        )  # fmt: skip

    def sweep(self, *, now_ms: int | None = None) -> dict[str, int]:
        """Settle again what may have changed without a new chunk: a reference arrived, or a
        waiting time ran out (bytes are reassembled only for an attachment being stored, or
        complete but never settled, e.g. after a crash).

        Returns:
            How many open attachments ended in each state.
        """
        now = _now_ms() if now_ms is None else now_ms
        out: dict[str, int] = {}
        rows = self._db.execute(
            "SELECT sha256, total_size, chunk_size, state, reason, first_seen_ms FROM assemblies"
        ).fetchall()
        for row in rows:
            layout, state, reason, first = _layout(row), str(row[3]), str(row[4]), int(row[5])
            if state == PARTIAL:
                new = self.settle(layout, now_ms=now)
            elif state == VERIFIED or reason in (
                Reason.ATTACHMENT_UNREFERENCED.value,
                Reason.ATTACHMENT_SIZE_MISMATCH.value,
            ):
                new = self._check_and_keep(layout, None, first, now)
            else:
                new = state  # hash mismatch or incomplete: only a new chunk changes that
            out[new] = out.get(new, 0) + 1
        return out

    # -- references ----------------------------------------------------------------------------

    def refresh_refs(self, *, max_reports: int = 5000) -> int:
        """Read the attachments of reports the node accepted since the last call.

        Returns:
            How many reports were read. Sealed (restricted) reports are skipped: their
            attachments are not visible to the gateway either (README "Attachments").
        """
        if self.node_db_path is None or not self.node_db_path.exists():
            return 0
        row = self._db.execute("SELECT last_rowid FROM ref_cursor WHERE id = 1").fetchone()
        last = 0 if row is None else int(row[0])
        try:
            with contextlib.closing(
                open_db(self.node_db_path, what="node store", read_only=True)
            ) as node:
                # The node's `reports` table (bus/store/node.py): accepted reports only.
                rows = node.execute(
                    "SELECT rowid, report_id, envelope FROM reports WHERE rowid > ?"
                    " ORDER BY rowid LIMIT ?",
                    (last, max_reports),
                ).fetchall()
        except (StoreError, sqlite3.Error) as exc:
            log.warning("node_store_unreadable", path=str(self.node_db_path), error=str(exc))
            return 0
        refs: list[tuple[bytes, str, int, str, str]] = []
        for rowid, report_id, envelope in rows:
            last = int(rowid)
            try:
                env = Envelope.decode(bytes(envelope))
                if env.payload_type != PAYLOAD_REPORT:
                    continue
                report = Report.decode(env.payload)
            except BusError:
                continue  # the node accepted it, so this cannot happen; never stop for it
            refs.extend(
                (a.sha256, str(report_id), a.size, a.media_type, a.name) for a in report.attachments
            )
        if rows:
            with sqlite_transaction(self._db, "attachment store") as db:
                db.executemany("INSERT OR IGNORE INTO refs VALUES (?,?,?,?,?)", refs)
                db.execute(
                    "INSERT INTO ref_cursor VALUES (1, ?) ON CONFLICT(id) DO UPDATE"
                    " SET last_rowid = excluded.last_rowid",
                    (last,),
                )
        return len(rows)

    def refs(self, digest: bytes) -> list[Attachment]:
        """What accepted reports say about an attachment."""
        rows = self._db.execute(
            "SELECT size, media_type, name FROM refs WHERE sha256 = ? ORDER BY rowid", (digest,)
        )
        return [Attachment(digest, int(s), str(m), str(n)) for s, m, n in rows]

    # -- reads ---------------------------------------------------------------------------------

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to read per (topic, partition)."""
        rows = self._db.execute("SELECT topic, partition, next_offset FROM positions")
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def stored(self, digest: bytes) -> Stored | None:
        """A kept attachment, or None."""
        row = self._db.execute(
            "SELECT sha256, size, media_type, name, report_id, path FROM attachments"
            " WHERE sha256 = ?",
            (digest,),
        ).fetchone()
        return None if row is None else self._stored(row)

    def _stored(self, row: Sequence[Any]) -> Stored:
        return Stored(
            bytes(row[0]), int(row[1]), str(row[2]), str(row[3]), str(row[4]),
            self.blob_dir / str(row[5]),
        )  # fmt: skip

    def all_stored(self) -> list[Stored]:
        """Every kept attachment, in the order they were kept."""
        rows = self._db.execute(
            "SELECT sha256, size, media_type, name, report_id, path FROM attachments ORDER BY rowid"
        )
        return [self._stored(r) for r in rows]

    def quarantine_rows(self) -> list[QuarantineRow]:
        """Every quarantine event, oldest first."""
        rows = self._db.execute(
            'SELECT sha256, reason, detail, topic, partition, "offset" FROM quarantine ORDER BY id'
        )
        return [
            QuarantineRow(None if d is None else bytes(d), str(r), str(t), tp, p, o)
            for d, r, t, tp, p, o in rows
        ]

    def open_assemblies(self) -> list[tuple[Layout, str, str]]:
        """Attachments not stored: (layout, state, reason)."""
        rows = self._db.execute(
            "SELECT sha256, total_size, chunk_size, state, reason FROM assemblies ORDER BY rowid"
        )
        return [(_layout(r), str(r[3]), str(r[4])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Stored attachments, open ones per state, quarantine events."""
        out = {"stored": 0, PARTIAL: 0, VERIFIED: 0, QUARANTINED: 0, "quarantine_events": 0}
        (out["stored"],) = self._db.execute("SELECT count(*) FROM attachments").fetchone()
        for state, n in self._db.execute("SELECT state, count(*) FROM assemblies GROUP BY state"):
            out[str(state)] = int(n)
        (out["quarantine_events"],) = self._db.execute("SELECT count(*) FROM quarantine").fetchone()
        return out

    def verify_file(self, item: Stored) -> bool:
        """Whether a kept file still hashes to its address (for audits and tests).

        A missing file does not hold the attachment: False.

        Raises:
            StoreError: the file exists but cannot be read (names the path).
        """
        h = hashlib.sha256()
        try:
            with item.path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(
                f"cannot read attachment file {item.path}: {exc.strerror}", path=str(item.path)
            ) from exc
        return h.digest() == item.sha256
