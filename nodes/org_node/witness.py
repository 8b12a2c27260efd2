"""An organization's witness: Merkle trees over every report partition, signed checkpoints,
cosignatures of consistent checkpoints and split-view alarms (issue 5).

It runs next to the ingest loop of :mod:`nodes.org_node.ingest` but shares nothing with it: its own
consumer group (``<prefix>witness.<org>``) on the report topics, its own reader of the
checkpoints topic and of the registry, and its own SQLite file. Decisions are made by the pure
:class:`bus.witness.WitnessCore`; this module moves bytes between Kafka, the core and SQLite.

Durability: one SQLite transaction per loop turn stores the new leaf hashes, the next offset of
every report partition and of the checkpoints topic, what was published, the attestations seen,
pending and rejected checkpoint records and new alarms. Checkpoints and cosignatures are sent
(acks=all) *before* that commit, so a crash in between only repeats them (checkpoints are
deterministic, a repeated cosignature is harmless). On restart the trees are rebuilt from the
stored leaf hashes and both consumers resume at the stored positions.

Alarms: a split view is logged (``split_view_detected``, level error), counted
(``Witness.counts["split_view_alarms"]``), stored in the ``alarms`` table and returned by
:func:`split_view_alarms` (for the dashboard and the API).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from bus.checkpoint import NoteKeys, VerifiedCheckpoint, verify_checkpoint
from bus.crypto import SigningKey
from bus.errors import ConfigError, Reason, StoreError, TransportError, VerificationError
from bus.kafka.client import KafkaSecurity, client_options, reliable_producer, wrap
from bus.lifecycle import TrustTimeline
from bus.merkle import MerkleTree
from bus.model import Mandate, Role
from bus.topics import Topics
from bus.trust import KeyRing
from bus.witness import Review, SplitViewAlarm, Verdict, WitnessCore, WitnessPolicy
from nodes.runtime.backoff import OutageBackoff, transient
from nodes.runtime.trust_follower import TrustFollower

log = structlog.get_logger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    UNIQUE (topic, partition)
);
CREATE TABLE IF NOT EXISTS leaves (
    pid INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (pid, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS published (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attestations (
    "offset" INTEGER NOT NULL, origin TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL,
    org TEXT NOT NULL, kind TEXT NOT NULL, line BLOB NOT NULL,
    PRIMARY KEY ("offset", org, kind)
);
CREATE INDEX IF NOT EXISTS attestations_by_tree ON attestations (origin, size, root);
CREATE TABLE IF NOT EXISTS pending (
    "offset" INTEGER PRIMARY KEY, origin TEXT NOT NULL, size INTEGER NOT NULL,
    log_time_ms INTEGER NOT NULL, raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_origin ON pending (origin, size);
CREATE TABLE IF NOT EXISTS rejected (
    "offset" INTEGER PRIMARY KEY, reason TEXT NOT NULL, detail TEXT NOT NULL,
    log_time_ms INTEGER NOT NULL, raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, topic TEXT NOT NULL,
    partition INTEGER NOT NULL, size INTEGER NOT NULL, their_root BLOB NOT NULL,
    our_root BLOB NOT NULL, signed_by TEXT NOT NULL, "offset" INTEGER NOT NULL,
    detected_at_ms INTEGER NOT NULL, UNIQUE (origin, size, their_root, signed_by)
);
"""
_CHECKPOINTS_PARTITION: Final = 0
# Group offsets of the report consumer are for lag tooling only; a commit still retrying after
# this long (aiokafka retries while the coordinator is unknown) is given up.
OFFSET_COMMIT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class WitnessConfig:
    """Everything a witness needs; built by the CLI.

    Args:
        org: this organization.
        bootstrap: Kafka bootstrap servers.
        db_path: the witness's own SQLite file.
        mandate: the verified mandate.
        node_key: this node's key; it must be accredited by ``org`` with role NODE.
        topics: topic naming.
        policy: when to publish checkpoints.
        poll_timeout_ms: longest wait for report records per loop turn.
        max_batch: most records handled per loop turn.
        metadata_max_age_ms: how soon new report topics are discovered.
        security: how to authenticate to the brokers (the node's; None: PLAINTEXT).
    """

    org: str
    bootstrap: str
    db_path: Path
    mandate: Mandate
    node_key: SigningKey
    topics: Topics = field(default_factory=Topics)
    policy: WitnessPolicy = field(default_factory=WitnessPolicy)
    poll_timeout_ms: int = 500
    max_batch: int = 2000
    metadata_max_age_ms: int = 5000
    security: KafkaSecurity | None = None


@dataclass
class _Turn:
    """What one loop turn will commit."""

    leaves: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    published: dict[str, tuple[int, int]] = field(default_factory=dict)
    attestations: list[tuple[int, str, int, bytes, str, str, bytes]] = field(default_factory=list)
    pending_add: list[tuple[int, str, int, int, bytes]] = field(default_factory=list)
    pending_done: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str, str, int, bytes]] = field(default_factory=list)
    alarms: list[SplitViewAlarm] = field(default_factory=list)
    outgoing: list[tuple[str, bytes, str]] = field(default_factory=list)  # (origin, note, kind)


class WitnessStore:
    """The witness's SQLite file. One writer; readers may open it read-only at any time."""

    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open witness store {path}: {exc}", path=str(path)) from exc
        self._pids: dict[tuple[str, int], int] = {
            (t, p): i for i, t, p in self._db.execute("SELECT id, topic, partition FROM partitions")
        }

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def check_identity(self, org: str, mandate_id: str) -> None:
        """Bind the file to one organization and mandate; refuse to mix.

        Raises:
            ConfigError: the file belongs to another organization or mandate.
        """
        for key, value in (("org", org), ("mandate_id", mandate_id)):
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
            elif row[0] != value:
                raise ConfigError(
                    "witness db", f"belongs to {key} {row[0]!r}, not {value!r}", "use its own file"
                )

    def trees(self) -> Iterator[tuple[str, int, list[bytes]]]:
        """(topic, partition, leaf hashes in order) of every partition with leaves."""
        for (topic, partition), pid in sorted(self._pids.items()):
            rows = self._db.execute("SELECT hash FROM leaves WHERE pid = ? ORDER BY idx", (pid,))
            yield topic, partition, [bytes(h) for (h,) in rows]

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset per (topic, partition), report topics and the checkpoints topic."""
        rows = self._db.execute("SELECT topic, partition, next_offset FROM positions")
        return {(t, p): o for t, p, o in rows}

    def published(self) -> dict[str, tuple[int, int]]:
        """origin -> (size, time) of the last checkpoint this witness published."""
        rows = self._db.execute("SELECT origin, size, at_ms FROM published")
        return {o: (s, t) for o, s, t in rows}

    def pending_upto(self, origin: str, size: int) -> list[tuple[int, int, bytes]]:
        """(offset, log time, raw) of pending checkpoint records of origin with size <= size."""
        rows = self._db.execute(
            'SELECT "offset", log_time_ms, raw FROM pending WHERE origin = ? AND size <= ?'
            ' ORDER BY "offset"',
            (origin, size),
        )
        return [(o, t, bytes(r)) for o, t, r in rows]

    def _pid(self, db: sqlite3.Connection, topic: str, partition: int) -> int:
        pid = self._pids.get((topic, partition))
        if pid is None:
            cur = db.execute(
                "INSERT INTO partitions (topic, partition) VALUES (?, ?)", (topic, partition)
            )
            pid = int(cur.lastrowid or 0)
            self._pids[(topic, partition)] = pid
        return pid

    def commit(self, turn: _Turn) -> None:
        """Store one loop turn atomically.

        Raises:
            StoreError: nothing of the turn was stored.
        """
        pids_before = dict(self._pids)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._write(turn)
            except BaseException:
                self._db.execute("ROLLBACK")
                self._pids = pids_before
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"witness store transaction failed: {exc}") from exc

    def _write(self, turn: _Turn) -> None:
        db = self._db
        db.executemany(
            "INSERT INTO leaves VALUES (?, ?, ?)",
            [(self._pid(db, t, p), i, h) for t, p, i, h in turn.leaves],
        )
        db.executemany(
            "INSERT INTO positions VALUES (?,?,?) ON CONFLICT(topic, partition) DO UPDATE"
            " SET next_offset = excluded.next_offset",
            [(t, p, o) for (t, p), o in turn.positions.items()],
        )
        db.executemany(
            "INSERT INTO published VALUES (?,?,?) ON CONFLICT(origin) DO UPDATE"
            " SET size = excluded.size, at_ms = excluded.at_ms",
            [(o, s, t) for o, (s, t) in turn.published.items()],
        )
        db.executemany(
            "INSERT OR IGNORE INTO attestations VALUES (?,?,?,?,?,?,?)", turn.attestations
        )
        db.executemany("INSERT OR IGNORE INTO pending VALUES (?,?,?,?,?)", turn.pending_add)
        db.executemany('DELETE FROM pending WHERE "offset" = ?', [(o,) for o in turn.pending_done])
        db.executemany("INSERT OR IGNORE INTO rejected VALUES (?,?,?,?,?)", turn.rejected)
        db.executemany(
            "INSERT OR IGNORE INTO alarms (origin, topic, partition, size, their_root, our_root,"
            ' signed_by, "offset", detected_at_ms) VALUES (?,?,?,?,?,?,?,?,?)',
            [
                (a.origin, a.topic, a.partition, a.size, a.their_root, a.our_root,
                 ",".join(a.signed_by), a.offset, a.detected_at_ms)
                for a in turn.alarms
            ],
        )  # fmt: skip


class _SeekToStore(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, witness: Witness) -> None:
        self._witness = witness

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._witness.seek_to_store(assigned)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Witness:
    """One organization's witness: ``run()`` until ``stop()``.

    Raises (from run): ConfigError when the node key is accredited to another organization or
    role; StoreError when the SQLite file cannot commit; TransportError on broker failures.
    """

    def __init__(self, config: WitnessConfig) -> None:
        self.config = config
        self.store = WitnessStore(config.db_path)
        self.store.check_identity(config.org, config.mandate.mandate_id)
        # Mandate versions and key state over log time, followed like the node does.
        self.trust = TrustTimeline(config.mandate)
        self.registry = TrustFollower(
            config.bootstrap,
            config.topics.mandate,
            config.topics.registry,
            self.trust,
            security=config.security,
        )
        self._keys: dict[int, NoteKeys] = {}  # per key ring (one per mandate version)
        self._positions = self.store.positions()
        self._stopping = asyncio.Event()
        self._reports: AIOKafkaConsumer | None = None
        self.core: WitnessCore | None = None
        self.counts: dict[str, int] = {
            "leaves": 0,
            "checkpoints_published": 0,
            "cosignatures_published": 0,
            "checkpoints_verified": 0,
            "checkpoints_rejected": 0,
            "checkpoints_pending": 0,
            "split_view_alarms": 0,
        }
        self._log = log.bind(org=config.org)

    @property
    def keyring(self) -> KeyRing:
        """The key ring of the newest mandate version."""
        return self.trust.current

    def stop(self) -> None:
        """Ask run() to finish its current turn and return."""
        self._stopping.set()

    def seek_to_store(self, assigned: list[TopicPartition]) -> None:
        """Position the report consumer at the store's next offset of each partition."""
        assert self._reports is not None
        for tp in assigned:
            self._reports.seek(tp, self._positions.get((tp.topic, tp.partition), 0))

    def _node_subject(self) -> str | None:
        """The accredited subject id of the node key, or None while it is not accredited yet.

        Raises:
            ConfigError: accredited by another organization or for another role.
        """
        cfg = self.config
        try:
            acc = self.keyring.lookup(cfg.node_key.key_id)
        except VerificationError:
            return None
        if acc.org != cfg.org or acc.role != Role.NODE:
            raise ConfigError(
                "node key",
                f"key {cfg.node_key.key_id.hex()[:16]} is accredited as {acc.org}/{acc.role.name}",
                f"accredit it with role NODE by {cfg.org} (obus org accredit --role node)",
            )
        try:
            # A node key's revocation counts from a checkpoints-topic position; this witness
            # publishes at positions not known yet, so any revocation at all retires the key.
            self.keyring.check_usable(acc, role=Role.NODE, at_ms=_now_ms(), seq=2**63)
        except VerificationError as exc:
            raise ConfigError("node key", exc.message, "accredit a current node key") from exc
        return acc.subject_id

    def _ensure_core(self) -> WitnessCore | None:
        if self.core is not None:
            return self.core
        subject = self._node_subject()
        if subject is None:
            return None
        cfg = self.config
        core = WitnessCore(
            org=cfg.org,
            subject_id=subject,
            key=cfg.node_key,
            mandate_id=cfg.mandate.mandate_id,
            is_report_topic=lambda t: cfg.topics.org_of_report_topic(t) is not None,
            policy=cfg.policy,
            started_ms=_now_ms(),
        )
        for topic, partition, hashes in self.store.trees():
            core.load(topic, partition, hashes)
        core.published.update(self.store.published())
        self.core = core
        self._log.info(
            "witness_ready",
            node_key_id=cfg.node_key.key_id.hex()[:16],
            key_name=core.name,
            partitions=len(core.trees),
            leaves=sum(t.size for t in core.trees.values()),
        )
        return core

    async def run(self) -> None:
        """Witness until stop()."""
        cfg = self.config
        await self.registry.start()
        core = self._ensure_core()
        if core is None:
            self._log.warning(
                "witness_waiting_for_accreditation",
                node_key_id=cfg.node_key.key_id.hex()[:16],
                fix=f"publish an accreditation of this key with role NODE by {cfg.org}",
            )
        reports = AIOKafkaConsumer(
            **client_options(cfg.bootstrap, cfg.security),
            group_id=f"{cfg.topics.prefix}witness.{cfg.org}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=cfg.metadata_max_age_ms,
        )
        checkpoints = AIOKafkaConsumer(**client_options(cfg.bootstrap, cfg.security), group_id=None)
        producer = reliable_producer(cfg.bootstrap, security=cfg.security)
        self._reports = reports
        cp_tp = TopicPartition(cfg.topics.checkpoints, _CHECKPOINTS_PARTITION)
        try:
            await producer.start()
            await checkpoints.start()
            checkpoints.assign([cp_tp])
            checkpoints.seek(cp_tp, self._positions.get((cp_tp.topic, cp_tp.partition), 0))
            await reports.start()
            reports.subscribe(pattern=cfg.topics.reports_pattern, listener=_SeekToStore(self))
            backoff = OutageBackoff(self._log, "witness", self._stopping)
            while not self._stopping.is_set():
                try:
                    await self._turn(reports, checkpoints, producer, cp_tp)
                except (KafkaError, TransportError) as exc:
                    # The brokers are away (restart, partition): wait, never exit for it.
                    # The turn's leaves may be in the trees but not in the store: start again
                    # from the store, exactly as a restart would.
                    if not transient(exc):
                        raise
                    self.core = None
                    self._positions = self.store.positions()
                    for tp in reports.assignment():
                        reports.seek(tp, self._positions.get((tp.topic, tp.partition), 0))
                    checkpoints.seek(cp_tp, self._positions.get((cp_tp.topic, cp_tp.partition), 0))
                    await backoff.wait(exc)
                    continue
                backoff.reset()
        except KafkaError as exc:
            raise wrap(exc, "witnessing") from exc
        finally:
            for client in (reports, checkpoints, producer):
                with contextlib.suppress(KafkaError):
                    await client.stop()
            await self.registry.stop()
            self.store.close()
            self._log.info("witness_stopped", **self.counts)

    async def _turn(
        self,
        reports: AIOKafkaConsumer,
        checkpoints: AIOKafkaConsumer,
        producer: Any,
        cp_tp: TopicPartition,
    ) -> None:
        cfg = self.config
        turn = _Turn()
        batch = await reports.getmany(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_batch)
        cp_batch = await checkpoints.getmany(cp_tp, timeout_ms=0, max_records=cfg.max_batch)
        core = self.core or self._ensure_core()
        if core is None:
            # Not accredited yet: nothing is consumed for good; read the registry again.
            await self.registry.catch_up()
            for tp in batch:
                reports.seek(tp, self._positions.get((tp.topic, tp.partition), 0))
            checkpoints.seek(cp_tp, self._positions.get((cp_tp.topic, cp_tp.partition), 0))
            await asyncio.sleep(cfg.poll_timeout_ms / 1000)
            return
        grown: set[tuple[str, int]] = set()
        for tp, records in batch.items():
            key = (tp.topic, tp.partition)
            for rec in records:
                expected = self._positions.get(key, 0)
                if rec.offset < expected:
                    continue  # already in the tree (rebalance or restart)
                if rec.offset > expected:
                    # Report topics keep every record; a gap means the tree's leaf index no
                    # longer equals the offset. Logged, and the tree follows the log as read.
                    self._log.warning(
                        "witness_offset_gap", topic=tp.topic, partition=tp.partition,
                        expected=expected, offset=rec.offset,
                    )  # fmt: skip
                tree = core.trees.get(key)
                index = 0 if tree is None else tree.size
                turn.leaves.append((tp.topic, tp.partition, index, core.append(*key, rec.value)))
                self._positions[key] = turn.positions[key] = rec.offset + 1
                grown.add(key)
        self.counts["leaves"] += len(turn.leaves)
        now = _now_ms()
        records = cp_batch.get(cp_tp, [])
        if records:
            await self.registry.catch_up()
        for rec in records:
            self._checkpoint_record(
                core, turn, offset=rec.offset, log_time_ms=rec.timestamp,
                raw=rec.value or b"", now_ms=now,
            )  # fmt: skip
            self._positions[(cp_tp.topic, cp_tp.partition)] = rec.offset + 1
            turn.positions[(cp_tp.topic, cp_tp.partition)] = rec.offset + 1
        for key in sorted(grown):
            origin = core.origin(*key)
            for offset, log_time, raw in self.store.pending_upto(origin, core.trees[key].size):
                turn.pending_done.append(offset)
                self._checkpoint_record(
                    core, turn, offset=offset, log_time_ms=log_time, raw=raw, now_ms=now,
                    again=True,
                )  # fmt: skip
        for cp, note in core.due(now):
            turn.outgoing.append((cp.origin, note, "checkpoint"))
            turn.published[cp.origin] = core.published[cp.origin]
        if not (turn.leaves or turn.positions or turn.outgoing):
            return
        await self._send(producer, turn)
        await asyncio.to_thread(self.store.commit, turn)
        if turn.positions:
            commits = {
                TopicPartition(t, p): o for (t, p), o in turn.positions.items() if t != cp_tp.topic
            }
            if commits:
                # Only for operators' lag tooling (both consumers resume at the store's
                # positions): a failed commit, or one aiokafka still retries after
                # OFFSET_COMMIT_TIMEOUT_S (coordinator unknown, broker down), is logged and the
                # loop goes on.
                try:
                    await asyncio.wait_for(reports.commit(commits), OFFSET_COMMIT_TIMEOUT_S)
                except (KafkaError, TimeoutError) as exc:
                    self._log.warning(
                        "offset_commit_failed", error=repr(exc), partitions=len(commits)
                    )

    def _checkpoint_record(
        self,
        core: WitnessCore,
        turn: _Turn,
        *,
        offset: int,
        log_time_ms: int,
        raw: bytes,
        now_ms: int,
        again: bool = False,
    ) -> None:
        keyring = self.trust.at(log_time_ms)  # the mandate version in effect then
        keys = self._keys.get(id(keyring))
        if keys is None or keys.stale():
            keys = self._keys[id(keyring)] = NoteKeys(keyring)
        try:
            vc = verify_checkpoint(raw, keyring, at_ms=log_time_ms, seq=offset + 1, keys=keys)
        except VerificationError as exc:
            self.counts["checkpoints_rejected"] += 1
            turn.rejected.append((offset, exc.reason.value, exc.message, log_time_ms, raw))
            self._log.warning(
                "checkpoint_rejected", offset=offset, reason=exc.reason.value, detail=exc.message
            )
            return
        if not again:
            self.counts["checkpoints_verified"] += 1
            cp = vc.checkpoint
            turn.attestations.extend(
                (offset, cp.origin, cp.size, cp.root, a.org, a.kind, a.line)
                for a in vc.attestations
            )
        review = core.review(vc, offset=offset, now_ms=now_ms)
        self._apply_review(vc, review, turn, offset=offset, log_time_ms=log_time_ms, raw=raw)

    def _apply_review(
        self,
        vc: VerifiedCheckpoint,
        review: Review,
        turn: _Turn,
        *,
        offset: int,
        log_time_ms: int,
        raw: bytes,
    ) -> None:
        cp = vc.checkpoint
        if review.verdict is Verdict.PENDING:
            self.counts["checkpoints_pending"] += 1
            turn.pending_add.append((offset, cp.origin, cp.size, log_time_ms, raw))
        elif review.verdict is Verdict.UNKNOWN_ORIGIN:
            self.counts["checkpoints_rejected"] += 1
            detail = f"origin {cp.origin} is not a report partition of this bus"
            reason = Reason.CHECKPOINT_UNKNOWN_ORIGIN.value
            turn.rejected.append((offset, reason, detail, log_time_ms, raw))
            self._log.warning("checkpoint_rejected", offset=offset, reason=reason, detail=detail)
        elif review.alarm is not None:
            a = review.alarm
            self.counts["split_view_alarms"] += 1
            turn.alarms.append(a)
            self._log.error(
                "split_view_detected",
                origin=a.origin, topic=a.topic, partition=a.partition, size=a.size,
                their_root=a.their_root.hex(), our_root=a.our_root.hex(),
                signed_by=list(a.signed_by), offset=a.offset,
            )  # fmt: skip
        elif review.cosignature is not None:
            turn.outgoing.append((cp.origin, review.cosignature, "cosignature"))

    async def _send(self, producer: Any, turn: _Turn) -> None:
        topic = self.config.topics.checkpoints
        futures = [
            await producer.send(topic, note, key=origin.encode())
            for origin, note, _ in turn.outgoing
        ]
        if futures:
            await asyncio.gather(*futures)
        for origin, note, kind in turn.outgoing:
            self.counts[f"{kind}s_published"] += 1
            size = note.split(b"\n", 2)[1].decode()
            self._log.info(f"{kind}_published", origin=origin, size=int(size))


# ---------------------------------------------------------------------------------------------
# Read side: what the dashboard (issue 6) and the API show.


def _read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)


def split_view_alarms(db_path: Path) -> list[dict[str, Any]]:
    """Every split-view alarm a witness raised, oldest first (JSON-ready dicts).

    Keys: origin, topic, partition, size, their_root, our_root (hex), signed_by (list of
    organizations whose signature the contradicting checkpoint carried), offset (on the
    checkpoints topic), detected_at_ms.
    """
    if not db_path.exists():
        return []
    with contextlib.closing(_read_only(db_path)) as db:
        rows = db.execute(
            'SELECT origin, topic, partition, size, their_root, our_root, signed_by, "offset",'
            " detected_at_ms FROM alarms ORDER BY id"
        ).fetchall()
    return [
        SplitViewAlarm(o, t, p, s, bytes(tr), bytes(orr), tuple(sb.split(",")), off, at).to_json()
        for o, t, p, s, tr, orr, sb, off, at in rows
    ]


def witness_status(db_path: Path, threshold: int) -> dict[str, Any]:
    """Per partition: own tree size and root, last published size, and the largest checkpoint
    signed or cosigned by at least ``threshold`` organizations; plus pending, rejected and
    alarm counts. JSON-ready.
    """
    if not db_path.exists():
        return {"partitions": [], "pending": 0, "rejected": 0, "alarms": []}
    with contextlib.closing(_read_only(db_path)) as db:
        sizes = {
            (t, p): n
            for t, p, n in db.execute(
                "SELECT topic, partition, count(*) FROM leaves JOIN partitions ON pid = id"
                " GROUP BY topic, partition"
            )
        }
        published = dict(db.execute("SELECT origin, size FROM published"))
        quorum: dict[str, tuple[int, bytes, list[str]]] = {}
        for origin, size, root, orgs in db.execute(
            "SELECT origin, size, root, group_concat(DISTINCT org) FROM attestations"
            " GROUP BY origin, size, root HAVING count(DISTINCT org) >= ? ORDER BY size",
            (threshold,),
        ):
            quorum[origin] = (size, bytes(root), sorted(orgs.split(",")))
        pending = db.execute("SELECT count(*) FROM pending").fetchone()[0]
        rejected = db.execute("SELECT count(*) FROM rejected").fetchone()[0]
        mandate = db.execute("SELECT value FROM meta WHERE key = 'mandate_id'").fetchone()
    mandate_id = mandate[0] if mandate else ""
    parts = []
    for (topic, partition), n in sorted(sizes.items()):
        origin = f"obus/{mandate_id}/{topic}/{partition}"
        q = quorum.get(origin)
        parts.append(
            {
                "origin": origin,
                "topic": topic,
                "partition": partition,
                "size": n,
                "published_size": published.get(origin, 0),
                "quorum_size": q[0] if q else 0,
                "quorum_root": base64.b64encode(q[1]).decode() if q else None,
                "quorum_orgs": q[2] if q else [],
            }
        )
    return {
        "partitions": parts,
        "pending": pending,
        "rejected": rejected,
        "alarms": split_view_alarms(db_path),
    }


def default_witness_db(node_db: Path) -> Path:
    """The witness's own SQLite file next to the node's: ``<node db stem>.witness.db``."""
    return node_db.with_name(node_db.stem + ".witness.db")


def witness_fingerprint(db_path: Path) -> str:
    """A short digest of every partition's (topic, partition, size, root), for comparisons."""
    h = hashlib.sha256()
    with contextlib.closing(_read_only(db_path)) as db:
        parts = db.execute("SELECT id, topic, partition FROM partitions ORDER BY topic, partition")
        for pid, topic, partition in parts.fetchall():
            tree = MerkleTree(store_leaves=False)
            for (leaf,) in db.execute("SELECT hash FROM leaves WHERE pid = ? ORDER BY idx", (pid,)):
                tree.append_leaf_hash(bytes(leaf))
            h.update(f"{topic}/{partition}/{tree.size}/".encode() + tree.root())
    return h.hexdigest()[:16]
