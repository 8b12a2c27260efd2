"""An organization's ingest gateway: observers POST signed reports, the gateway publishes them.

``POST /v1/reports`` (body: the envelope bytes, at most ``max_body_bytes``):

======  ============================================================================  ==========
status  when                                                                          body
======  ============================================================================  ==========
201     verified, chained and published (acks=all)                                   receipt
200     the same bytes were published before (same report id, same digest)           same receipt
400     ``malformed``, ``missing_signature``, ``wrong_payload_type``                 JSON
403     key/organization problems: ``unknown_key``, ``bad_signature``,               JSON
        ``key_expired``, ``key_revoked``, ``wrong_role``, ``wrong_org``,
        ``wrong_topic`` (an observer of another organization), ``subject_mismatch``
409     ``duplicate_conflict`` (same id, other bytes), ``chain_gap``, ``chain_fork``   JSON
413     ``oversized``                                                                 JSON
422     every other verification reason (``outside_zone``, ``clock_skew``, ...)      JSON
429     ``rate_limited`` (token bucket per observer), with ``Retry-After``           JSON
503     ``unavailable``: Kafka did not confirm; retry (with ``Retry-After``)          JSON
======  ============================================================================  ==========

``PUT /v1/attachments/<sha256 hex>`` (body: the attachment's bytes) publishes an attachment
that a report of this organization, already published here, references (README "Attachments"):

======  ============================================================================  ==========
status  when                                                                          body
======  ============================================================================  ==========
201     verified (SHA-256 and size as the report says) and its chunks published      JSON
200     published before (the body is not read again)                                same JSON
400     ``malformed``: the path is not a lower-case hex SHA-256                       JSON
413     ``oversized``: larger than ``attachments.max_bytes``                          JSON
422     ``attachment_unreferenced`` (no published report of this organization        JSON
        references it), ``attachment_hash_mismatch``, ``attachment_size_mismatch``
503     ``unavailable``: the attachments topic is missing or Kafka did not confirm    JSON
======  ============================================================================  ==========

No authentication is needed: the bytes are bound by hash to a report signed by an accredited
observer of this organization, so only bytes such an observer committed to are ever published;
repeating an upload is answered from the store. The chunks go to ``<prefix>attachments.<org>``
(:func:`nodes.org_node.attachments.publish_attachment`); a crash between publishing them and recording
them only means they are published again on the next upload, and nodes drop identical chunks.

A receipt is a signed envelope (``application/protobuf``; see :mod:`bus.receipt`); JSON error
bodies are ``{"reason": code, "detail": text}`` with the stable codes of
:class:`bus.errors.Reason`. ``GET /v1/node`` returns the gateway's node-key accreditation (so an
observer can check receipts offline); ``GET /healthz`` returns counts.

Verification is :func:`bus.verify.verify_report` with this organization as the expected one and
the gateway's clock as the reference, against a :class:`~bus.trust.KeyRing` kept current by
:class:`~nodes.org_node.ingest.RegistryFollower`; the per-observer chain is checked with
:class:`~bus.verify.ChainBook` against what this gateway already published.

Crash safety (exactly once on the topic). The gateway keeps a small SQLite file: every report it
accepted (id, digest, envelope, state, position, receipt), the chain heads, and per partition a
*watermark*. Before producing, it commits the report in state ``publishing`` together with the
new chain head (the intent); after Kafka confirms, it commits ``published`` with the position
and the signed receipt. The idempotent producer removes duplicates from its own retries, but
only within one producer session, so a report left ``publishing`` (process killed, or a send
that failed with an unknown outcome) is resolved by **reading the topic back**: every record
from the partition's watermark to the current end is hashed, and a record with the report's
exact digest is taken as the publication (its real position goes into the receipt); only a
report not found is produced again. This runs at start-up before the gateway listens, and
in-session whenever a retry meets an unresolved report. The watermark bounds the scan: it moves
up (to just past the highest confirmed offset) only at moments when no report at all is
``publishing``, so no unconfirmed record can lie below it. Assumes one gateway process per
organization (the topic's only writer, DESIGN §4).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bus.attachment import CHUNK_OVERHEAD_BYTES, AttachmentLimits, check_upload, parse_hex_digest
from bus.crypto import SigningKey
from bus.errors import BusError, ConfigError, Reason, StoreError, VerificationError
from bus.kafka.admin import topic_partitions
from bus.kafka.attachments import publish_attachment, topic_message_limit
from bus.kafka.client import KafkaSecurity, client_options, reliable_producer, wrap
from bus.kafka.replay import read_until, replay
from bus.model import (
    PAYLOAD_ACCREDITATION,
    Accreditation,
    Attachment,
    Envelope,
    Mandate,
    Receipt,
    Role,
    sha256,
)
from bus.receipt import sign_receipt
from bus.store.sqlite import sqlite_transaction
from bus.topics import Topics, registry_key, report_headers
from bus.trust import KeyRing, verify_accreditation
from bus.verify import (
    DEFAULT_MAX_RECORD_BYTES,
    ChainBook,
    ChainHead,
    Limits,
    VerifiedReport,
    verify_report,
)
from nodes.runtime.trust_follower import RegistryFollower

log = structlog.get_logger(__name__)

PUBLISHING: Final = "publishing"
PUBLISHED: Final = "published"
UNAVAILABLE: Final = "unavailable"  # not a Reason: nothing wrong with the input, retry
RECEIPT_CONTENT_TYPE: Final = "application/protobuf"

_STATUS: Final = {
    Reason.MALFORMED: 400,
    Reason.MISSING_SIGNATURE: 400,
    Reason.WRONG_PAYLOAD_TYPE: 400,
    Reason.OVERSIZED: 413,
    Reason.RATE_LIMITED: 429,
    Reason.DUPLICATE_CONFLICT: 409,
    Reason.CHAIN_GAP: 409,
    Reason.CHAIN_FORK: 409,
    Reason.REPLAYED: 409,
    **dict.fromkeys(
        (
            Reason.BAD_SIGNATURE,
            Reason.MALFORMED_KEY,
            Reason.UNKNOWN_KEY,
            Reason.KEY_REVOKED,
            Reason.KEY_EXPIRED,
            Reason.WRONG_ROLE,
            Reason.WRONG_ORG,
            Reason.WRONG_TOPIC,
            Reason.SUBJECT_MISMATCH,
        ),
        403,
    ),
}


def http_status(reason: Reason) -> int:
    """The HTTP status the gateway answers a refusal with (422 when not listed)."""
    return _STATUS.get(reason, 422)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway needs; built by the CLI, never read from the environment here.

    ``exit_after_publishes`` is fault injection for crash tests: the process exits abruptly
    (``os._exit``, like SIGKILL) right after Kafka confirmed that many publications and before
    the gateway recorded the last one, the worst moment for exactly-once.
    """

    org: str
    bootstrap: str
    db_path: Path
    mandate: Mandate
    node_key: SigningKey
    topics: Topics = field(default_factory=Topics)
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    port: int = 8480
    max_body_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # Per observer: a burst covers a day of reports delivered after coming back online;
    # the rate covers steady work. Both far above any person's writing speed.
    rate_per_s: float = 10.0
    burst: int = 500
    registry_refresh_s: float = 5.0
    exit_after_publishes: int | None = None
    # Attachments: size limit and chunk size (bus/attachment.py).
    attachments: AttachmentLimits = field(default_factory=AttachmentLimits)
    # How the gateway authenticates to the brokers (None: PLAINTEXT); see bus.kafka.client.KafkaSecurity.
    security: KafkaSecurity | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes > self.limits.max_record_bytes:
            raise ConfigError(
                "max_body_bytes",
                f"{self.max_body_bytes} exceeds the verifier's record limit",
                f"use at most {self.limits.max_record_bytes}",
            )
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ConfigError("rate", "rate_per_s must be > 0 and burst >= 1", "fix the limits")


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, independent of the web framework."""

    status: int
    body: bytes
    content_type: str = RECEIPT_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def error(cls, status: int, reason: str, detail: str, retry_after_s: float = 0) -> Reply:
        """A JSON ``{"reason", "detail"}`` answer."""
        body = json.dumps({"reason": reason, "detail": detail}).encode()
        headers = (("Retry-After", str(max(1, math.ceil(retry_after_s)))),) if retry_after_s else ()
        return cls(status, body, "application/json", headers)


class TokenBuckets:
    """A token bucket per key: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now_s: float) -> float:
        """Take a token; returns 0 on success, else the seconds until one is available."""
        tokens, last = self._state.get(key, (self._burst, now_s))
        tokens = min(self._burst, tokens + (now_s - last) * self._rate)
        if tokens >= 1:
            self._state[key] = (tokens - 1, now_s)
            return 0.0
        self._state[key] = (tokens, now_s)
        return (1 - tokens) / self._rate


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
    """The gateway's own SQLite state (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # the intent must survive power loss
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open gateway store {path}: {exc}", path=str(path)) from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite_transaction(self._db, "gateway store")

    def by_digest(self, digest: bytes) -> Row | None:
        """The accepted report with these exact envelope bytes, or None."""
        r = self._db.execute(f"SELECT {_ROW} FROM reports WHERE digest = ?", (digest,)).fetchone()  # noqa: S608
        return None if r is None else _row(r)

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

    def watermarks(self) -> dict[int, int]:
        """Per partition, the offset below which every record of this gateway is confirmed."""
        return {int(p): int(o) for p, o in self._db.execute("SELECT * FROM watermarks")}

    def counts(self) -> dict[str, int]:
        """Reports per state."""
        out = {PUBLISHING: 0, PUBLISHED: 0}
        for s, n in self._db.execute("SELECT state, count(*) FROM reports GROUP BY state"):
            out[str(s)] = int(n)
        return out

    def record_intent(
        self, row: Row, now_ms: int, attachments: tuple[Attachment, ...] = ()
    ) -> None:
        """Commit the report as ``publishing`` together with its observer's new chain head
        (and what it says about its attachments)."""
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


class Gateway:
    """The gateway's logic and its Kafka clients; :func:`make_app` puts HTTP in front of it."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.topic = config.topics.reports(config.org)
        self.store = GatewayStore(config.db_path)
        self.keyring = KeyRing(config.mandate)
        self.chain = ChainBook(self.store.heads(), self.store.digest_of)
        self.buckets = TokenBuckets(config.rate_per_s, config.burst)
        self.node_accreditation: bytes = b""
        self.node: Accreditation | None = None
        self._registry: RegistryFollower | None = None
        self._registry_lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: set[str] = set()
        self._confirmed: dict[int, int] = {}
        self._published_here = 0
        self._refresher: asyncio.Task[None] | None = None
        self._log = log.bind(org=config.org, topic=self.topic)
        self.attachment_topic = config.topics.attachments(config.org)
        self._attachments_ok = False
        self._attachment_locks: dict[bytes, asyncio.Lock] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the registry, find this node's accreditation, connect, resolve pending reports.

        Raises:
            ConfigError: the node key is not accredited by this organization as NODE.
            TransportError: Kafka is unreachable.
        """
        cfg = self.config
        self.node_accreditation, self.node = await self._find_node_accreditation()
        self._registry = RegistryFollower(
            cfg.bootstrap, cfg.topics.registry, self.keyring, security=cfg.security
        )
        try:
            await self._registry.start()
            # linger 0: one observer sends one report at a time, so waiting to batch is pure
            # latency; concurrent observers still share batches while a request is in flight.
            # max_request_size: room for one attachment chunk record (at least the default).
            request_max = max(1_048_576, cfg.attachments.chunk_bytes + CHUNK_OVERHEAD_BYTES)
            self._producer = reliable_producer(
                cfg.bootstrap, security=cfg.security, linger_ms=0, max_request_size=request_max
            )
            await self._producer.start()
        except KafkaError as exc:
            raise wrap(exc, "starting the gateway") from exc
        await self._check_attachment_topic()
        await self.recover()
        self._refresher = asyncio.create_task(self._refresh_registry_forever())
        self._log.info(
            "gateway_started", node_id=self.node.subject_id, accredited_keys=len(self.keyring),
            **self.store.counts(),
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop the Kafka clients and close the store."""
        if self._refresher is not None:
            self._refresher.cancel()
        if self._producer is not None:
            await self._producer.stop()
        if self._registry is not None:
            await self._registry.stop()
        self.store.close()
        self._log.info("gateway_stopped", published_here=self._published_here)

    async def _check_attachment_topic(self) -> bool:
        """Whether the attachments topic exists and takes a chunk record (cached once true).

        Raises:
            ConfigError: the topic's max.message.bytes is smaller than a chunk record.
            TransportError: the broker cannot be asked.
        """
        if self._attachments_ok:
            return True
        cfg = self.config
        limit = await topic_message_limit(
            cfg.bootstrap, self.attachment_topic, security=cfg.security
        )
        if limit is None:
            self._log.warning("attachments_topic_missing", attachment_topic=self.attachment_topic)
            return False
        need = cfg.attachments.chunk_bytes + CHUNK_OVERHEAD_BYTES
        if limit < need:
            raise ConfigError(
                "attachments.chunk_bytes",
                f"chunk records of up to {need} bytes exceed {self.attachment_topic}'s"
                f" max.message.bytes = {limit}",
                f"use chunks of at most {limit - CHUNK_OVERHEAD_BYTES} bytes, or raise the"
                " topic's max.message.bytes",
            )
        self._attachments_ok = True
        return True

    async def _find_node_accreditation(self) -> tuple[bytes, Accreditation]:
        cfg = self.config
        wanted = registry_key(PAYLOAD_ACCREDITATION, cfg.node_key.key_id)
        raw = None
        async for rec in replay(cfg.bootstrap, [cfg.topics.registry], security=cfg.security):
            if rec.key == wanted:
                raw = rec.value  # compacted topic: the last one for the key counts
        fix = (
            f"publish an accreditation of key {cfg.node_key.key_id.hex()} with role NODE,"
            f" signed by the {cfg.org} root key, on {cfg.topics.registry}"
        )
        if raw is None:
            raise ConfigError("node key", "is not accredited on the registry", fix)
        try:
            acc = verify_accreditation(Envelope.decode(raw), cfg.mandate)
        except VerificationError as exc:
            raise ConfigError("node key", f"accreditation does not verify: {exc}", fix) from exc
        if acc.org != cfg.org or acc.role != Role.NODE or acc.key_id != cfg.node_key.key_id:
            raise ConfigError("node key", f"accredited as {acc.org}/{acc.role.name}", fix)
        return raw, acc

    async def _catch_up_registry(self) -> None:
        assert self._registry is not None
        async with self._registry_lock:
            try:
                read = await self._registry.catch_up()
            except KafkaError as exc:
                self._log.warning("registry_catch_up_failed", error=repr(exc))
                return
        if read:
            self._log.info("registry_updated", records=read, accredited_keys=len(self.keyring))

    async def _refresh_registry_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.registry_refresh_s)
            await self._catch_up_registry()

    # -- the request -------------------------------------------------------------------------

    async def submit(self, body: bytes) -> Reply:
        """Judge and publish one envelope (see the module docstring for the answers)."""
        digest = sha256(body)
        known = self.store.by_digest(digest)
        if known is not None:
            return await self._again(known)
        try:
            vr = await self._verify(body)
        except VerificationError as exc:
            return self.refuse(exc)
        report = vr.report
        wait = self.buckets.take(report.observer_id, time.monotonic())
        if wait > 0:
            return self.refuse(
                VerificationError(Reason.RATE_LIMITED, "too many reports; slow down"),
                retry_after_s=wait,
            )
        async with self._lock(report.observer_id):
            known = self.store.by_digest(digest)
            if known is not None:  # a concurrent duplicate got here first
                return await self._again(known)
            unresolved = self.store.pending(report.observer_id)
            if unresolved and not await self._resolve(unresolved):
                return Reply.error(503, UNAVAILABLE, "Kafka unavailable", retry_after_s=1)
            try:
                self.chain.accept(vr)
            except VerificationError as exc:
                return self.refuse(exc)
            row = Row(report.report_id, report.observer_id, report.seq, digest, body,
                      PUBLISHING, None)  # fmt: skip
            try:
                self.store.record_intent(row, _now_ms(), report.attachments)
            except StoreError:
                self.chain = ChainBook(self.store.heads(), self.store.digest_of)
                raise
            self.chain.flushed()
            receipt = await self._publish(row)
            if receipt is None:
                return Reply.error(503, UNAVAILABLE, "Kafka did not confirm", retry_after_s=1)
            return Reply(201, receipt)

    def attachment_limit(self, hex_digest: str) -> tuple[int, Reply | None]:
        """Before reading an upload's body: how many bytes to accept, or the refusal.

        The limit is the largest size a published report gives this SHA-256 (never more than
        ``attachments.max_bytes``), so an upload nobody committed to is refused unread.
        """
        try:
            digest = parse_hex_digest(hex_digest)
        except VerificationError as exc:
            return 0, self.refuse(exc)
        answer = self.store.attachment_answer(digest)
        if answer is not None:
            return 0, Reply(200, answer, "application/json")
        refs = self.store.attachment_refs(digest)
        if not refs:
            return 0, self.refuse(
                VerificationError(
                    Reason.ATTACHMENT_UNREFERENCED,
                    f"no report of {self.config.org} published here references {hex_digest}",
                )
            )
        return min(self.config.attachments.max_bytes, max(r.size for r in refs)), None

    async def put_attachment(self, hex_digest: str, body: bytes) -> Reply:
        """Check and publish one attachment (see the module docstring for the answers)."""
        max_bytes = self.config.attachments.max_bytes
        try:
            digest = parse_hex_digest(hex_digest)
            ref = check_upload(
                hex_digest, body, self.store.attachment_refs(digest), max_bytes=max_bytes
            )
        except VerificationError as exc:
            return self.refuse(exc)
        async with self._attachment_locks.setdefault(digest, asyncio.Lock()):
            answer = self.store.attachment_answer(digest)
            if answer is not None:
                return Reply(200, answer, "application/json")
            if not await self._check_attachment_topic():
                return Reply.error(
                    503, UNAVAILABLE, f"{self.attachment_topic} does not exist", retry_after_s=5
                )
            assert self._producer is not None
            try:
                # As for reports: never wrap in a timeout (the producer's own timeouts decide).
                where = await publish_attachment(
                    self._producer, self.attachment_topic, body,
                    chunk_size=self.config.attachments.chunk_bytes, org=self.config.org,
                )  # fmt: skip
            except KafkaError as exc:
                self._log.warning("attachment_publish_failed", sha256=hex_digest, error=repr(exc))
                return Reply.error(503, UNAVAILABLE, "Kafka did not confirm", retry_after_s=1)
            doc = {
                "sha256": hex_digest, "size": len(body), "media_type": ref.media_type,
                "topic": where.topic, "partition": where.partition, "chunks": where.chunks,
                "first_offset": where.first_offset, "last_offset": where.last_offset,
            }  # fmt: skip
            answer = json.dumps(doc).encode()
            self.store.record_attachment(digest, len(body), answer, _now_ms())
            self._log.info("attachment_published", **doc)
            return Reply(201, answer, "application/json")

    async def _verify(self, body: bytes) -> VerifiedReport:
        if len(body) > self.config.max_body_bytes:
            raise VerificationError(
                Reason.OVERSIZED, f"{len(body)} bytes > limit {self.config.max_body_bytes}"
            )
        for attempt in (1, 2):
            try:
                return verify_report(
                    body,
                    expected_org=self.config.org,
                    keyring=self.keyring,
                    reference_ms=_now_ms(),
                    limits=self.config.limits,
                )
            except VerificationError as exc:
                if exc.reason is not Reason.UNKNOWN_KEY or attempt == 2:
                    raise
                await self._catch_up_registry()  # maybe accredited a moment ago
        raise AssertionError("unreachable")  # pragma: no cover

    def refuse(self, exc: VerificationError, retry_after_s: float = 0) -> Reply:
        """The JSON refusal for a verification error (logged with its reason)."""
        self._log.info("report_refused", reason=exc.reason.value, detail=exc.message)
        return Reply.error(http_status(exc.reason), exc.reason.value, exc.message, retry_after_s)

    async def _again(self, row: Row) -> Reply:
        if row.state == PUBLISHED and row.receipt is not None:
            self._log.info("report_duplicate", report_id=row.report_id, observer_id=row.observer_id)
            return Reply(200, row.receipt)
        async with self._lock(row.observer_id):
            fresh = self.store.by_digest(row.digest)
            if fresh is not None and fresh.state == PUBLISHED and fresh.receipt is not None:
                return Reply(200, fresh.receipt)
            if not await self._resolve(self.store.pending(row.observer_id)):
                return Reply.error(503, UNAVAILABLE, "Kafka unavailable", retry_after_s=1)
            fresh = self.store.by_digest(row.digest)
            assert fresh is not None and fresh.receipt is not None
            return Reply(200, fresh.receipt)

    def _lock(self, observer_id: str) -> asyncio.Lock:
        return self._locks.setdefault(observer_id, asyncio.Lock())

    # -- publishing ----------------------------------------------------------------------------

    async def _publish(self, row: Row) -> bytes | None:
        """Produce, then record the publication; None when Kafka did not confirm."""
        assert self._producer is not None
        org = self.config.org
        self._inflight.add(row.report_id)
        try:
            # Never wrap this await in a timeout: cancelling it would not cancel the batch,
            # and a later re-publish could double it. The producer's own timeouts decide.
            fut = await self._producer.send(
                self.topic,
                row.envelope,
                key=row.observer_id.encode(),
                headers=report_headers(row.report_id, org, row.observer_id),
            )
            md = await fut
        except KafkaError as exc:
            self._log.warning("publish_failed", report_id=row.report_id, error=repr(exc))
            return None
        finally:
            self._inflight.discard(row.report_id)
        self._published_here += 1
        if self.config.exit_after_publishes == self._published_here:
            self._log.warning("fault_injection_exit", report_id=row.report_id)
            os._exit(86)
        return self._record(row, md.partition, md.offset, md.timestamp)

    def _record(self, row: Row, partition: int, offset: int, logged_at_ms: int) -> bytes:
        assert self.node is not None
        receipt = sign_receipt(
            Receipt(
                report_id=row.report_id,
                envelope_digest=row.digest,
                topic=self.topic,
                partition=partition,
                offset=offset,
                logged_at_ms=max(logged_at_ms, 0),
                issued_at_ms=_now_ms(),
                org=self.config.org,
                node_id=self.node.subject_id,
                node_key_id=self.config.node_key.key_id,
                observer_id=row.observer_id,
                seq=row.seq,
                mandate_id=self.config.mandate.mandate_id,
            ),
            self.config.node_key,
        )
        self._confirmed[partition] = max(self._confirmed.get(partition, -1), offset)
        self.store.mark_published(row.report_id, partition, offset, receipt, self._confirmed)
        self._log.info(
            "report_published", report_id=row.report_id, observer_id=row.observer_id,
            seq=row.seq, partition=partition, offset=offset,
        )  # fmt: skip
        return receipt

    # -- recovery ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Resolve every report left ``publishing``, then raise the watermarks to the end.

        Raises:
            TransportError: Kafka is unreachable (the gateway must not serve then).
        """
        pending = self.store.pending()
        if pending and not await self._resolve(pending):
            raise wrap(KafkaError("could not resolve pending publications"), "recovering")
        if not self.store.pending():
            self.store.set_watermarks(await self._end_offsets())

    async def _resolve(self, rows: list[Row]) -> bool:
        """Find each row on the topic (by digest) or produce it again; False on Kafka trouble."""
        rows = [r for r in rows if r.report_id not in self._inflight]
        if not rows:
            return True
        try:
            found = await self._scan({r.digest for r in rows})
        except KafkaError as exc:
            self._log.warning("resolve_scan_failed", error=repr(exc))
            return False
        for r in rows:
            if r.digest in found:
                partition, offset, ts = found[r.digest]
                self._log.warning(
                    "pending_found_on_topic", report_id=r.report_id, partition=partition,
                    offset=offset,
                )  # fmt: skip
                self._record(r, partition, offset, ts)
            else:
                self._log.warning("pending_not_on_topic_republishing", report_id=r.report_id)
                if await self._publish(r) is None:
                    return False
        return True

    async def _scan(self, digests: set[bytes]) -> dict[bytes, tuple[int, int, int]]:
        """Read every partition from its watermark to the end; positions of matching records.

        A partition is done when the consumer's position reaches the end offset read at the
        start, so records deleted below it (a watermark under the log start offset, or records
        deleted during the scan) end the scan instead of hanging it.

        Raises:
            KafkaError: Kafka failed, or the scan made no progress for ``READ_STALL_S``.
        """
        consumer = AIOKafkaConsumer(
            **client_options(self.config.bootstrap, self.config.security),
            group_id=None,
            enable_auto_commit=False,
            # deleted under the scan: go on from the new log start, not from the end
            auto_offset_reset="earliest",
        )
        found: dict[bytes, tuple[int, int, int]] = {}
        marks = self.store.watermarks()
        tps = await self._partitions()
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
            for tp in tps:
                mark = marks.get(tp.partition, 0)
                if mark < starts[tp]:
                    # the records in [mark, log start) are gone: a pending report among them
                    # cannot be found, and is published again
                    self._log.warning(
                        "scan_watermark_below_log_start", partition=tp.partition,
                        watermark=mark, log_start_offset=starts[tp], end_offset=ends[tp],
                    )  # fmt: skip
                consumer.seek(tp, min(max(mark, starts[tp]), ends[tp]))
            scanned = 0
            async for rec in read_until(consumer, ends, max_records=5000):
                scanned += 1
                d = sha256(rec.value or b"")
                if d in digests:
                    found[d] = (rec.partition, rec.offset, rec.timestamp)
            self._log.info("topic_scanned", records=scanned, looked_for=len(digests),
                           found=len(found), from_offsets=marks)  # fmt: skip
        except BusError as exc:  # read_until: no progress (TransportError)
            raise KafkaError(f"scanning {self.topic}: {exc}") from exc
        finally:
            await consumer.stop()
        return found

    async def _partitions(self) -> list[TopicPartition]:
        tps = await topic_partitions(
            self.config.bootstrap, [self.topic], security=self.config.security
        )
        if not tps:
            raise KafkaError(f"topic {self.topic} has no partitions")
        return tps

    async def _end_offsets(self) -> dict[int, int]:
        consumer = AIOKafkaConsumer(
            **client_options(self.config.bootstrap, self.config.security), group_id=None
        )
        tps = await self._partitions()
        await consumer.start()
        try:
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return {tp.partition: o for tp, o in ends.items()}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# HTTP


def make_app(gateway: Gateway) -> web.Application:
    """The aiohttp application: POST /v1/reports, PUT /v1/attachments/<sha256>, GET /v1/node,
    GET /healthz."""
    limit = gateway.config.max_body_bytes

    async def post_report(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > limit:
            reply = gateway.refuse(
                VerificationError(Reason.OVERSIZED, f"{request.content_length} bytes > {limit}")
            )
            return _response(reply)
        chunks, total = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > limit:
                return _response(
                    gateway.refuse(
                        VerificationError(Reason.OVERSIZED, f"body larger than {limit} bytes")
                    )
                )
            chunks.append(chunk)
        try:
            reply = await gateway.submit(b"".join(chunks))
        except BusError as exc:
            log.exception("gateway_error", error=exc.diagnostics())
            reply = Reply.error(503, UNAVAILABLE, exc.message, retry_after_s=1)
        except Exception:  # a bug of ours: answer (retriable) and log it loudly
            log.exception("gateway_internal_error")
            reply = Reply.error(500, Reason.INTERNAL_ERROR.value, "internal error", 1)
        return _response(reply)

    async def get_node(_: web.Request) -> web.Response:
        return web.Response(body=gateway.node_accreditation, content_type=RECEIPT_CONTENT_TYPE)

    async def put_attachment(request: web.Request) -> web.Response:
        hex_digest = request.match_info["sha256"]
        most, refusal = gateway.attachment_limit(hex_digest)
        if refusal is not None:
            return _response(refusal)
        size_limit = gateway.config.attachments.max_bytes
        if request.content_length is not None and request.content_length > size_limit:
            exc = VerificationError(
                Reason.OVERSIZED, f"{request.content_length} bytes > {size_limit}"
            )
            return _response(gateway.refuse(exc))
        chunks, total = [], 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            total += len(chunk)
            if total > most:  # larger than any report says: refuse without reading it all
                reason = Reason.OVERSIZED if total > size_limit else Reason.ATTACHMENT_SIZE_MISMATCH
                detail = f"more than {most} bytes, the size the report gives"
                return _response(gateway.refuse(VerificationError(reason, detail)))
            chunks.append(chunk)
        try:
            reply = await gateway.put_attachment(hex_digest, b"".join(chunks))
        except BusError as exc:
            log.exception("gateway_error", error=exc.diagnostics())
            reply = Reply.error(503, UNAVAILABLE, exc.message, retry_after_s=1)
        except Exception:  # a bug of ours: answer (retriable) and log it loudly
            log.exception("gateway_internal_error")
            reply = Reply.error(500, Reason.INTERNAL_ERROR.value, "internal error", 1)
        return _response(reply)

    async def healthz(_: web.Request) -> web.Response:
        counts = gateway.store.counts()
        return web.json_response(
            {"org": gateway.config.org, "topic": gateway.topic, **counts,
             "attachments": gateway.store.attachment_count()}
        )  # fmt: skip

    app = web.Application(client_max_size=limit + 1)
    app.router.add_put("/v1/attachments/{sha256}", put_attachment)
    app.router.add_post("/v1/reports", post_report)
    app.router.add_get("/v1/node", get_node)
    app.router.add_get("/healthz", healthz)
    return app


def _response(reply: Reply) -> web.Response:
    resp = web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
    for k, v in reply.headers:
        resp.headers[k] = v
    return resp


class GatewayServer:
    """A started gateway listening on ``host:port``: ``async with GatewayServer(cfg) as gw``."""

    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = Gateway(config)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Start the gateway (recovery included), then listen."""
        await self.gateway.start()
        self._runner = web.AppRunner(make_app(self.gateway), access_log=None)
        await self._runner.setup()
        cfg = self.gateway.config
        await web.TCPSite(self._runner, cfg.host, cfg.port).start()
        log.info("gateway_listening", url=f"http://{cfg.host}:{cfg.port}")

    async def stop(self) -> None:
        """Stop listening, then stop the gateway."""
        if self._runner is not None:
            await self._runner.cleanup()
        await self.gateway.stop()

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_gateway(config: GatewayConfig) -> int:
    """Serve until SIGINT/SIGTERM; returns a process exit code."""
    import signal  # noqa: PLC0415 - only the process entry point handles signals

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    server = GatewayServer(config)
    try:
        await server.start()
    except BusError as exc:
        log.error("gateway_failed", org=config.org, error=exc.diagnostics())  # noqa: TRY400
        await server.gateway.stop()
        return 1
    try:
        await stopping.wait()
    finally:
        await server.stop()
    return 0
