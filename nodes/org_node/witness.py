"""An organization's witness: Merkle trees over every report partition, signed checkpoints,
cosignatures of consistent checkpoints and split-view alarms.

It runs next to the ingest loop of :mod:`nodes.org_node.ingest` but shares nothing with it: its
own consumer group (``<prefix>witness.<org>``) on the report topics, its own reader of the
checkpoints topic and of the registry, and its own SQLite file
(:class:`~nodes.org_node.witness_store.WitnessStore`). Decisions are made by the pure
:class:`bus.witness.WitnessCore`; this module moves bytes between Kafka, the core and SQLite.

Durability: one SQLite transaction per loop turn stores the new leaf hashes, the next offset of
every report partition and of the checkpoints topic, what was published, the attestations seen,
pending and rejected checkpoint records and new alarms. Checkpoints and cosignatures are sent
(acks=all) *before* that commit, so a crash in between only repeats them (checkpoints are
deterministic, a repeated cosignature is harmless). On restart the trees are rebuilt from the
stored leaf hashes and both consumers resume at the stored positions.

Alarms: a split view is logged (``split_view_detected``, level error), counted
(``Witness.counts["split_view_alarms"]``), stored in the ``alarms`` table and returned by
:func:`~nodes.org_node.witness_store.split_view_alarms` (for the dashboard and the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.checkpoint import NoteKeys, VerifiedCheckpoint, verify_checkpoint
from bus.crypto import SigningKey
from bus.errors import ConfigError, Reason, TransportError, VerificationError
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors, reliable_producer
from bus.lifecycle import TrustTimeline
from bus.model import Mandate, Role
from bus.topics import Topics
from bus.trust import KeyRing
from bus.witness import Review, Verdict, WitnessCore, WitnessPolicy
from nodes.org_node.witness_store import Turn, WitnessStore
from nodes.runtime.backoff import OutageBackoff, transient
from nodes.runtime.consumer import SeekToStore, commit_offsets
from nodes.runtime.trust_follower import TrustFollower

log = structlog.get_logger(__name__)

_CHECKPOINTS_PARTITION: Final = 0


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
            with kafka_errors("witnessing"):
                await producer.start()
                await checkpoints.start()
                checkpoints.assign([cp_tp])
                checkpoints.seek(cp_tp, self._positions.get((cp_tp.topic, cp_tp.partition), 0))
                await reports.start()
                reports.subscribe(
                    pattern=cfg.topics.reports_pattern, listener=SeekToStore(self.seek_to_store)
                )
                backoff = OutageBackoff(self._log, "witness", self._stopping)
                while not self._stopping.is_set():
                    try:
                        with kafka_errors("witnessing"):
                            await self._turn(reports, checkpoints, producer, cp_tp)
                    except TransportError as exc:
                        # The brokers are away (restart, partition): wait, never exit for it.
                        # The turn's leaves may be in the trees but not in the store.
                        if not transient(exc):
                            raise
                        self._restart_from_store(reports, checkpoints, cp_tp)
                        await backoff.wait(exc)
                        continue
                    backoff.reset()
        finally:
            for client in (reports, checkpoints, producer):
                with contextlib.suppress(TransportError), kafka_errors("stopping"):
                    await client.stop()
            await self.registry.stop()
            self.store.close()
            self._log.info("witness_stopped", **self.counts)

    def _restart_from_store(
        self, reports: AIOKafkaConsumer, checkpoints: AIOKafkaConsumer, cp_tp: TopicPartition
    ) -> None:
        """Start again from the store, exactly as a restart would: the trees are rebuilt from
        the stored leaves, both consumers seek to the stored positions."""
        self.core = None
        self._positions = self.store.positions()
        for tp in reports.assignment():
            reports.seek(tp, self._positions.get((tp.topic, tp.partition), 0))
        checkpoints.seek(cp_tp, self._positions.get((cp_tp.topic, cp_tp.partition), 0))

    async def _turn(
        self,
        reports: AIOKafkaConsumer,
        checkpoints: AIOKafkaConsumer,
        producer: Any,
        cp_tp: TopicPartition,
    ) -> None:
        cfg = self.config
        turn = Turn()
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
        # Only for operators' lag tooling (both consumers resume at the store's positions).
        commits = {
            TopicPartition(t, p): o for (t, p), o in turn.positions.items() if t != cp_tp.topic
        }
        await commit_offsets(reports, commits, self._log)

    def _checkpoint_record(
        self,
        core: WitnessCore,
        turn: Turn,
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
        turn: Turn,
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

    async def _send(self, producer: Any, turn: Turn) -> None:
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
