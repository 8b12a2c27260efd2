"""An organization's node: subscribe to every report topic, verify, store, quarantine, decide.

Resumption: the node's SQLite store holds the next offset of every topic-partition, written in
the same transaction as the records it covers. On every partition assignment the consumer
seeks to the store's position (0 when unknown), so a crash between the store commit and the
Kafka offset commit never loses or doubles a record. Kafka group offsets (of stored records
only) are committed at most once a second, and on stop, so that operators' lag tooling sees
progress.

Pipelining: batch N+1 is judged while batch N is written (one commit in flight, on a second
SQLite connection, in a thread); N+1 is judged against the state N leaves and is committed
only after N's commit succeeded (see :meth:`OrgNode._process`).

Provisional verdicts: every batch is judged the moment it is read (:mod:`bus.ingest`) under the
trust this node knows then, the newest mandate version and the registry as read to their ends
just before the batch (:meth:`OrgNode._catch_up_trust`), and on this machine's clock. A record's
broker timestamp is stored (``log_time_ms``: when the broker says it appended the record) and
never decides a verdict. The node's sealer makes the final verdicts, in the sealed order on the
sealed clock, and logs each provisional verdict that changes.

Follow-up (this organization's decisions, their publication, others' decisions and joint
statements) and the dashboard run beside the ingest loop and read the store on their own
(:mod:`nodes.org_node.followup`, :mod:`nodes.org_node.dashboard`). The full node also checks
who in its consumer group reads each report partition, and the real lag of every one
(:mod:`nodes.org_node.health`); its consumer's client id says which members are its own.

Hostile records: aiokafka hands over each record's value decompressed (whole batches are
decompressed at once); the fetch limits below bound how many *compressed* bytes one fetch
brings, not what they decompress to. A value larger than the record limit is judged on its
length before anything else reads it (:meth:`bus.ingest.Ingestor.judge`), is never sent to the
verify workers, and is stored as its size, SHA-256 and first 4 KiB, within the topic's
quarantine quota (:mod:`bus.store.quarantine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.errors import (
    StoreConflictError,
    StoreError,
    TransportError,
)
from bus.idfilter import IdFilter
from bus.ingest import Ingestor, Outcome, Quarantined, record_ref
from bus.kafka.client import client_options, kafka_errors
from bus.lifecycle import TrustTimeline
from bus.model import Revocation, Role
from bus.store.node import NodeStore
from bus.store.quarantine import MAX_DETAIL_CHARS, QuarantineCharge
from bus.trust import KeyRing
from bus.verify import ChainBatch, ChainBook
from nodes.org_node.config import NodeConfig
from nodes.org_node.health import GroupCheck, own_client_ids
from nodes.runtime.backoff import OutageBackoff, transient
from nodes.runtime.consumer import SeekToStore, commit_offsets
from nodes.runtime.preverify import PreVerifier
from nodes.runtime.trust_follower import TrustFollower

log = structlog.get_logger(__name__)

# A worker that keeps losing commit races stops instead of spinning (see _lost_race).
_MAX_CONFLICTS_IN_A_ROW = 100
# Kafka group offsets (lag tooling only) are committed at most this often.
OFFSET_COMMIT_INTERVAL_S = 1.0
# Compressed bytes one fetch may bring, in partition-fetch sizes (twice the record limit each):
# 16 x 512 KiB = 8 MiB by default instead of aiokafka's 50 MiB. A batch larger than the
# partition limit still comes whole when it is the first of its fetch (so that the consumer
# progresses); the topic's max.message.bytes bounds that one.
FETCH_MAX_PARTITION_FETCHES = 16
# The collector's gen-0 threshold while a node ingests (see ingest_collections).
GC_GEN0: Final = 10_000

Batch = dict[TopicPartition, list]  # type: ignore[type-arg]  # aiokafka's getmany() result


class _Collections:
    """How many nodes of this process are ingesting, and the collector's threshold before."""

    running = 0
    before: tuple[int, int, int] = (700, 10, 10)


@contextlib.contextmanager
def ingest_collections(gen0: int = GC_GEN0) -> Iterator[None]:
    """Fewer and shorter garbage collections while nodes of this process ingest.

    Judging a batch allocates tens of objects per record that stay alive until the batch is
    stored (outcomes, decoded reports), so with the interpreter's defaults the collector ran
    every ~90 records, and its full collections walked every object of the process (modules,
    the mandate, aiokafka's state): ~13 µs of CPU per record (bench/README.md, "Node ingest
    per CPU-second"). On entry of the first node: one collection (start-up's garbage is not
    kept), :func:`gc.freeze` (what is alive then is left out of every later collection) and
    the gen-0 threshold raised to at least ``gen0``; on exit of the last, :func:`gc.unfreeze`
    and the threshold as it was. Cycles are still collected, only less often.
    """
    if _Collections.running == 0:
        _Collections.before = before = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(max(before[0], gen0), *before[1:])
    _Collections.running += 1
    try:
        yield
    finally:
        _Collections.running -= 1
        if _Collections.running == 0:
            gc.unfreeze()
            gc.set_threshold(*_Collections.before)


class Extras(Protocol):
    """What runs beside the ingest loop: started before it, stopped after it."""

    async def start(self) -> None:
        """Start (raises when it cannot, e.g. a dashboard port taken)."""

    async def stop(self) -> None:
        """Stop; re-raises the failure that stopped it, if any."""


ExtrasFactory = Callable[["OrgNode"], Extras]


class OrgNode:
    """One organization's subscriber: ``run()`` until ``stop()``.

    Raises StoreError (from run) when the store cannot commit: it then stops consuming and
    commits no offset for what it could not store.
    """

    def __init__(self, config: NodeConfig, *, extras: ExtrasFactory | None = None) -> None:
        self.config = config
        self.store = self._open_store()
        # Mandate versions and key state as read from the trust topics (README "Mandate
        # versions"); provisional verdicts use the newest (see _process).
        self.trust = TrustTimeline(config.mandate)
        self.registry = TrustFollower(
            config.bootstrap,
            config.topics.mandate,
            config.topics.registry,
            self.trust,
            security=config.security,
        )
        # Report-id idempotency asks the store only for ids the filter cannot rule out.
        self.known_ids = IdFilter(self.store.report_digest, self.store.report_ids)
        self.chain = ChainBook(self.store.chain_heads(), self.known_ids, self.store.amendment_of)
        self.ingestor = Ingestor(self.keyring, self.chain, {}, config.limits)
        self._positions = self.store.positions()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        # Who reads the report partitions (the full node only; its workers share its group).
        self.group_check: GroupCheck | None = None
        # quarantine_over_quota: rows stored without bytes (their topic past its quota);
        # quarantine_quota_alarms: topics this process's commits took past their quota.
        self.counts: dict[str, int] = {
            "accepted": 0,
            "quarantined": 0,
            "quarantine_over_quota": 0,
            "quarantine_quota_alarms": 0,
        }
        self._log = log.bind(org=config.org)
        # What runs beside the ingest loop (follow-up, dashboard), built in run() by the factory
        # the composition root passed (nodes.org_node.process.NodeExtras); None: ingest only.
        self._make_extras = extras
        self.extras: Any = None  # an Extras; Any lets callers reach its follow-up and dashboard
        self.ingestor.decryption_keys = {k.key_id: k for k in config.decryption_keys}
        self.counts["revoked_after_acceptance"] = 0
        self._preverifier: PreVerifier | None = None
        # Held around each store commit; rebalance callbacks wait for it (see SeekToStore).
        self.commit_lock = asyncio.Lock()
        # Set when partitions were (re)assigned or a batch lost a commit race: batches fetched
        # before are dropped and state is read again from the store (shared-store workers).
        self._resync = False
        self._stale_heads = False
        # The batch commit in flight (judging the next batch overlaps it); its own connection.
        self._writer = self._open_store()
        self._inflight: _Inflight | None = None
        self._stored: dict[tuple[str, int], int] = {}  # stored, group offsets not committed
        self._offsets_committed_at = 0.0
        self.conflicts = 0
        self._conflicts_in_a_row = 0

    def _open_store(self) -> NodeStore:
        return NodeStore(
            self.config.db_path,
            max_record_bytes=self.config.limits.max_record_bytes,
            quarantine_quota_bytes=self.config.quarantine_quota_bytes,
        )

    @property
    def keyring(self) -> KeyRing:
        """The key ring of the newest mandate version."""
        return self.trust.current

    async def _mark_revoked(self, revocations: list[Revocation]) -> None:
        # A revocation that reached this node after reports it invalidates: mark them (never
        # silently keep them valid). Idempotent, so replaying the registry on restart is safe.
        for rev in revocations:
            ids = await asyncio.to_thread(
                self.store.mark_revoked, rev.key_id, rev.last_valid_seq, rev.org, rev.reason
            )
            if ids:
                self.counts["revoked_after_acceptance"] += len(ids)
                self._log.warning(
                    "reports_revoked_after_acceptance",
                    key_id=rev.key_id.hex(),
                    last_valid_seq=rev.last_valid_seq,
                    report_ids=ids,
                )

    def stop(self) -> None:
        """Ask run() to finish its current batch and return."""
        self._stopping.set()

    def seek_to_store(self, assigned: list[TopicPartition]) -> None:
        """Position the consumer at the store's next offset for each assigned partition.

        Positions are read from the store again: a worker sharing it may have stored more of
        these partitions while another worker owned them.
        """
        assert self._consumer is not None
        self._positions = self.store.positions()
        for tp in assigned:
            self._consumer.seek(tp, self._positions.get((tp.topic, tp.partition), 0))
        # Chain heads are read again before the next batch is judged (not now: a batch judged
        # against the old heads may be waiting to commit; the store fences it if they moved).
        self._stale_heads = True
        self._log.info("partitions_assigned", count=len(assigned))
        if self.group_check is not None:
            self.group_check.poke()

    def _reload(self) -> None:
        """Drop the judged batch and start again from the store (a lost commit race)."""
        assert self._consumer is not None
        self._positions = self.store.positions()
        self.chain.reload(self.store.chain_heads())
        self.known_ids.rebuild()  # with the ids other workers stored meanwhile
        for tp in self._consumer.assignment():
            self._consumer.seek(tp, self._positions.get((tp.topic, tp.partition), 0))
        self._resync = True

    @property
    def group_id(self) -> str:
        """The node's consumer group (shared by its ``ingest_only`` workers)."""
        return self.config.group_id or f"{self.config.topics.prefix}node.{self.config.org}"

    def lag(self) -> dict[tuple[str, int], int]:
        """Records on the broker not yet stored, per assigned partition (as of the last fetch)."""
        consumer = self._consumer
        out: dict[tuple[str, int], int] = {}
        if consumer is None:
            return out
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is not None:
                stored = self._positions.get((tp.topic, tp.partition), 0)
                out[(tp.topic, tp.partition)] = max(0, hw - stored)
        return out

    async def run(self) -> None:
        """Consume until stop(); every batch is stored before its offsets are committed."""
        cfg = self.config
        make = None if cfg.ingest_only else self._make_extras
        extras = None if make is None else make(self)
        self.extras = extras
        partition_fetch = 2 * cfg.limits.max_record_bytes
        node_id, worker_id = own_client_ids(cfg.org)
        consumer = AIOKafkaConsumer(
            **client_options(cfg.bootstrap, cfg.security),
            # How the group check tells this node's workers from foreign members (a label,
            # not an authentication: see nodes.org_node.health).
            client_id=worker_id if cfg.ingest_only else node_id,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=cfg.metadata_max_age_ms,
            max_partition_fetch_bytes=partition_fetch,
            fetch_max_bytes=FETCH_MAX_PARTITION_FETCHES * partition_fetch,
            fetch_min_bytes=cfg.fetch_min_bytes,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
        )
        self._consumer = consumer
        try:  # from here on, whatever fails, everything started below is stopped again
            with kafka_errors("consuming reports"):
                await self._consume(consumer, extras)
        finally:
            try:
                if self.group_check is not None:
                    await self.group_check.stop()
                await consumer.stop()
                if self._preverifier is not None:
                    await asyncio.to_thread(self._preverifier.close)
                await self.registry.stop()
                if extras is not None:
                    await extras.stop()  # re-raises a failed follow-up's error
            finally:
                self.store.close()
                self._writer.close()
                self._log.info("node_stopped", **self.counts)

    async def _consume(self, consumer: AIOKafkaConsumer, extras: Extras | None) -> None:
        """Start what runs beside the loop, then judge and store batches until stop()."""
        cfg = self.config
        if extras is not None:
            await extras.start()
        await self._mark_revoked(await self.registry.start())
        self._log.info("node_started", accredited_keys=len(self.keyring), db=str(cfg.db_path))
        if cfg.verify_workers > 0:
            self._preverifier = PreVerifier(cfg.verify_workers)
            await self._preverifier.start()
        await consumer.start()
        # A store commit in flight finishes before its partitions go to another worker.
        listener = SeekToStore(self.seek_to_store, lock=self.commit_lock, log=log)
        consumer.subscribe(pattern=cfg.topics.reports_pattern, listener=listener)
        if not cfg.ingest_only:  # the full node answers for its workers (/healthz, /metrics)
            self.group_check = GroupCheck(
                consumer,
                bootstrap=cfg.bootstrap,
                security=cfg.security,
                group_id=self.group_id,
                pattern=cfg.topics.reports_pattern,
                positions=self.store.positions,
                own=own_client_ids(cfg.org),
            )
            self.group_check.start()
        # With verify workers, the next batch's signatures are checked while this process
        # judges and stores the current one (one batch ahead; dropped unjudged on stop, so
        # it is simply read again on restart).
        ahead: tuple[Batch, asyncio.Task[set[tuple[bytes, bytes]]] | None] | None = None
        with ingest_collections():
            try:
                while not self._stopping.is_set():
                    # Nothing buffered while a commit is in flight: settle it (below) at once
                    # rather than after a whole poll timeout.
                    busy = ahead is not None or self._inflight is not None
                    batch = await consumer.getmany(
                        timeout_ms=0 if busy else cfg.poll_timeout_ms, max_records=cfg.max_batch
                    )
                    current, ahead = ahead, None
                    if batch and self._preverifier is not None:
                        ahead = (batch, asyncio.create_task(self._preverify(batch)))
                    elif batch:
                        current = current or (batch, None)
                    if current is not None:
                        await self._process(consumer, current[0], current[1])
                    elif self._inflight is not None and not batch:
                        await self._settle()  # idle: let the last batch land now
                    if self._resync and ahead is not None:
                        # The batch before it lost a commit race: the consumer now reads
                        # again from the store's positions, so this one is read again too.
                        if ahead[1] is not None:
                            ahead[1].cancel()
                        ahead = None
                    self._resync = False
            finally:
                if ahead is not None and ahead[1] is not None:
                    ahead[1].cancel()
                if self._inflight is not None:  # never leave a commit behind on stop
                    await self._settle()
                await self._commit_offsets(force=True)

    def _lost_race(self, exc: StoreConflictError, records: int) -> None:
        # Another worker sharing the store committed first what this batch was judged against
        # (a partition it owned before a rebalance, an observer whose reports it also read, a
        # report id it stored). Nothing of the batch was stored: read the store's state again
        # and judge these records again from there.
        self.conflicts += 1
        self._conflicts_in_a_row += 1
        self._log.info("batch_lost_commit_race", records=records, detail=exc.message)
        if self._conflicts_in_a_row > _MAX_CONFLICTS_IN_A_ROW:
            raise StoreError(
                f"{self._conflicts_in_a_row} batches in a row lost their commit to other "
                f"writers of {self.config.db_path}; is another organization's node or a "
                "second full node using this store? Give each node its own --db",
                db=str(self.config.db_path),
            ) from exc
        self._reload()

    async def _preverify(self, batch: Batch) -> set[tuple[bytes, bytes]]:
        assert self._preverifier is not None
        keys = {a.key_id: a.public_key for a in self.keyring.accreditations(Role.OBSERVER)}
        limit = self.config.limits.max_record_bytes
        # Oversized values are judged on their length alone: never pickled to a worker.
        raws = [
            r.value
            for records in batch.values()
            for r in records
            if r.value and len(r.value) <= limit
        ]
        return await self._preverifier.verdicts(raws, keys)

    async def _process(
        self,
        consumer: AIOKafkaConsumer,
        batch: Batch,
        preverified: asyncio.Task[set[tuple[bytes, bytes]]] | None = None,
    ) -> None:
        """Judge a batch, wait for the previous batch's commit, then start this one's.

        The batch is judged while the previous one is still being written (SQLite works in a
        thread, without the GIL), against the state that previous batch leaves: positions,
        chain heads and report ids it holds in memory until its commit lands. If that commit
        is lost to another worker (:class:`StoreConflictError`), this batch is dropped unstored
        too and both are read again from the store's positions.
        """
        caught_up = await self._catch_up_trust()
        if caught_up is None:
            return  # stopping while the brokers are away: the batch is read again on restart
        revocations = caught_up
        if revocations:
            # Reports of the batch in flight were judged before these revocations were known:
            # it must be stored before they are marked (revoked after acceptance).
            if not await self._settle():
                return  # that batch was not stored: this one, read after it, goes too
            await self._mark_revoked(revocations)
        # The trust this node knows now judges the batch (a new version applied by the
        # catch-up above replaces the key ring; registry records extend it in place).
        self.ingestor.keyring = self.keyring
        if preverified is not None:
            self.ingestor.preverified = await preverified
        if self._stale_heads:  # partitions moved: other workers may have extended chains
            if not await self._settle():
                return
            self._stale_heads = False
            self.chain.reload(await asyncio.to_thread(self.store.chain_heads))
        outcomes: list[Outcome] = []
        touched: dict[tuple[str, int], int] = {}
        started: dict[tuple[str, int], int] = {}
        judge, org_of = self.ingestor.judge, self.config.topics.org_of_report_topic
        for tp, fetched in batch.items():
            topic, partition = tp.topic, tp.partition
            key = (topic, partition)
            start = self._positions.get(key, 0)
            # A fetch returns each partition's records in offset order: what was stored before
            # a crash or rebalance is a prefix of them, skipped (never stored twice).
            if not fetched or fetched[-1].offset < start:
                continue
            records = fetched
            if records[0].offset < start:
                records = [r for r in fetched if r.offset >= start]
            org = org_of(topic)
            # The broker's timestamp is stored as information; no verdict reads it.
            add = outcomes.append
            for r in records:
                add(judge(record_ref(topic, partition, r.offset, r.timestamp, r.key), r.value, org))
            touched[key] = records[-1].offset + 1
            started[key] = start
        self.ingestor.preverified = frozenset()
        if not touched:
            return
        self._positions.update(touched)  # judged up to here; the store follows at commit
        sealed = self.chain.seal()
        if not await self._settle():
            return  # judged on top of a batch that was not stored: read both again
        write = functools.partial(
            self._writer.commit_batch,
            outcomes,
            sealed.changed,
            [],
            touched,
            expect_positions=started,
            expect_heads=sealed.bases,
        )
        self._inflight = _Inflight(
            asyncio.create_task(self._commit(write)), outcomes, sealed, touched
        )

    async def _catch_up_trust(self) -> list[Revocation] | None:
        """The trust topics read to their end before a batch is judged; None when stopping.

        A batch is never judged on trust state that could not be brought up to date: while
        the brokers cannot be reached (a cluster restart, a network partition), the node
        waits with a growing backoff and logs ``broker_unavailable_waiting``, instead of
        exiting. Refusals (e.g. authorization) still stop it.
        """
        backoff = OutageBackoff(self._log, "trust catch-up", self._stopping)
        while True:
            try:
                return await self.registry.catch_up()
            except TransportError as exc:
                if not transient(exc):
                    raise
                if self._stopping.is_set():
                    return None
                await backoff.wait(exc)

    async def _commit(self, write: Callable[[], QuarantineCharge]) -> QuarantineCharge:
        async with self.commit_lock:  # rebalance callbacks wait for a commit in flight
            return await asyncio.to_thread(write)

    async def _settle(self) -> bool:
        """Wait for the batch commit in flight, if any; False when it lost a commit race.

        Raises:
            StoreError: the store failed; the node stops without committing offsets for it.
        """
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return True
        outcomes = inflight.outcomes
        try:
            charge = await inflight.task
        except StoreConflictError as exc:
            self._lost_race(exc, len(outcomes))
            return False
        except StoreError:
            self._log.exception("store_failed_stopping", pending=len(outcomes))
            raise
        self._conflicts_in_a_row = 0
        self.known_ids.add_many(inflight.sealed.report_ids)
        self.chain.stored(inflight.sealed)
        self._stored.update(inflight.touched)
        self.counts["quarantine_over_quota"] += len(charge.unkept)
        self.counts["quarantine_quota_alarms"] += len(charge.exceeded)  # the store logged each
        quarantined = [o for o in outcomes if isinstance(o, Quarantined)]
        self.counts["quarantined"] += len(quarantined)
        self.counts["accepted"] += len(outcomes) - len(quarantined)
        for o in quarantined:
            self._log.warning(
                "record_quarantined",
                topic=o.ref.topic,
                partition=o.ref.partition,
                offset=o.ref.offset,
                reason=o.reason,
                detail=o.detail[:MAX_DETAIL_CHARS],
                size=o.value_size,
                sha256=o.value_sha256.hex(),
                over_quota=(o.ref.topic, o.ref.partition, o.ref.offset) in charge.unkept,
            )
        self._log.debug("batch_stored", records=len(outcomes), **self.counts)
        await self._commit_offsets()
        return True

    async def _commit_offsets(self, *, force: bool = False) -> None:
        # Group offsets are only for operators' lag tooling (the store says where to resume),
        # so they are committed at most once per OFFSET_COMMIT_INTERVAL_S, not per batch.
        now = time.monotonic()
        consumer = self._consumer
        if (
            consumer is None
            or not self._stored
            or (not force and now - self._offsets_committed_at < OFFSET_COMMIT_INTERVAL_S)
        ):
            return
        # Only partitions still assigned: others moved to another worker, which commits them.
        assigned = consumer.assignment()
        offsets = {
            tp: o for (t, p), o in self._stored.items() if (tp := TopicPartition(t, p)) in assigned
        }
        self._stored.clear()
        self._offsets_committed_at = now
        await commit_offsets(consumer, offsets, self._log)  # bounded; a failure costs nothing


@dataclass(frozen=True, slots=True)
class _Inflight:
    """A batch whose store commit is running: what its completion updates."""

    task: asyncio.Task[QuarantineCharge]
    outcomes: list[Outcome]
    sealed: ChainBatch
    touched: dict[tuple[str, int], int]
