"""Every node's attachment reassembler: the chunks of ``<prefix>attachments.<org>`` topics put
back together and kept when a report the node accepted references them.

The gateway publishes an attachment's verified bytes as chunks (:mod:`bus.kafka.attachments`).
:class:`AttachmentNode`, run by ``obus node`` beside the node unless ``--no-attachments``, reads
them with its own consumer group (``<prefix><org>.attachments``, inside the organization's own
group namespace of :mod:`bus.acl`) on every attachments topic, into its own store
(:class:`~nodes.org_node.attachment_store.AttachmentStore`: ``<node db stem>.attachments.db``
and the content-addressed directory ``<node db stem>.attachments/<aa>/<sha256 hex>``). Each
batch of records is stored, with the next offset of every partition, in one transaction before
anything is settled or committed, so a restart resumes exactly (positions come from this store,
as for the node). What the chunks amount to (kept, waiting or quarantined) is decided by the
store (:mod:`nodes.org_node.attachment_store`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.attachment import AttachmentLimits
from bus.kafka.client import KafkaSecurity, client_options, kafka_errors
from bus.topics import Topics
from nodes.org_node.attachment_store import AttachmentStore, ChunkRecord
from nodes.runtime.consumer import SeekToStore, commit_offsets

if TYPE_CHECKING:
    from nodes.org_node.config import NodeConfig

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AttachmentNodeConfig:
    """What a node's attachment reassembler needs; built from the node's configuration."""

    org: str
    bootstrap: str
    db_path: Path
    blob_dir: Path
    node_db_path: Path | None
    topics: Topics = field(default_factory=Topics)
    limits: AttachmentLimits = field(default_factory=AttachmentLimits)
    poll_timeout_ms: int = 500
    # Records per batch: 64 chunks of 512 KiB is at most 32 MiB in memory.
    max_batch: int = 64
    # How often accepted reports are read for references and waiting attachments re-settled.
    refs_interval_s: float = 1.0
    metadata_max_age_ms: int = 5000
    security: KafkaSecurity | None = None


def default_paths(node_db: Path) -> tuple[Path, Path]:
    """``<node db stem>.attachments.db`` and ``<node db stem>.attachments/`` beside the node's."""
    return (
        node_db.with_name(node_db.stem + ".attachments.db"),
        node_db.with_name(node_db.stem + ".attachments"),
    )


def config_for_node(
    node: NodeConfig, limits: AttachmentLimits | None = None
) -> AttachmentNodeConfig:
    """The reassembler's configuration beside an organization node."""
    db, blobs = default_paths(node.db_path)
    return AttachmentNodeConfig(
        org=node.org,
        bootstrap=node.bootstrap,
        db_path=db,
        blob_dir=blobs,
        node_db_path=node.db_path,
        topics=node.topics,
        limits=limits or AttachmentLimits(),
        security=node.security,
    )


class AttachmentNode:
    """Consumes every attachments topic and reassembles: ``run()`` until ``stop()``.

    Raises StoreError (from run) when the store cannot commit: it then stops consuming.
    """

    def __init__(self, config: AttachmentNodeConfig) -> None:
        self.config = config
        self.store = AttachmentStore(
            config.db_path, config.blob_dir, config.node_db_path, config.limits
        )
        self._positions = self.store.positions()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._log = log.bind(org=config.org)

    def stop(self) -> None:
        """Ask run() to return after its current batch."""
        self._stopping.set()

    def seek_to_store(self, assigned: list[TopicPartition]) -> None:
        """Position the consumer at the store's next offset for each assigned partition."""
        assert self._consumer is not None
        for tp in assigned:
            self._consumer.seek(tp, self._positions.get((tp.topic, tp.partition), 0))

    async def run(self) -> None:
        """Consume until stop(); a batch is stored before anything is settled or committed."""
        cfg = self.config
        await asyncio.to_thread(self._catch_up)
        consumer = AIOKafkaConsumer(
            **client_options(cfg.bootstrap, cfg.security),
            group_id=f"{cfg.topics.prefix}{cfg.org}.attachments",  # the org's namespace
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=cfg.metadata_max_age_ms,
        )
        self._consumer = consumer
        self._log.info("attachment_node_started", db=str(cfg.db_path), **self.store.counts())
        last_refs = time.monotonic()
        try:
            with kafka_errors("consuming attachments"):
                await consumer.start()
                consumer.subscribe(
                    pattern=cfg.topics.attachments_pattern,
                    listener=SeekToStore(self.seek_to_store),
                )
                while not self._stopping.is_set():
                    batch = await consumer.getmany(
                        timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_batch
                    )
                    records = [
                        ChunkRecord(tp.topic, tp.partition, r.offset, r.value or b"")
                        for tp, recs in batch.items()
                        for r in recs
                        if r.offset >= self._positions.get((tp.topic, tp.partition), 0)
                    ]
                    if records:
                        await asyncio.to_thread(self._process, records)
                        await self._commit(consumer)
                    if time.monotonic() - last_refs >= cfg.refs_interval_s:
                        await asyncio.to_thread(self._catch_up)
                        last_refs = time.monotonic()
        finally:
            await consumer.stop()
            self._log.info("attachment_node_stopped", **self.store.counts())
            self.store.close()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        # The store says where to resume (seek_to_store): group offsets are for lag tooling only.
        mine = consumer.assignment()
        offsets = {
            tp: o for (t, p), o in self._positions.items() if (tp := TopicPartition(t, p)) in mine
        }
        await commit_offsets(consumer, offsets, self._log)

    def _process(self, records: list[ChunkRecord]) -> None:
        touched = self.store.ingest(records)
        for rec in records:
            key = (rec.topic, rec.partition)
            self._positions[key] = max(self._positions.get(key, 0), rec.offset + 1)
        if touched:
            self.store.refresh_refs()
        for layout in touched:
            self.store.settle(layout)

    def _catch_up(self) -> None:
        """Read new references, then settle everything still open."""
        while self.store.refresh_refs() > 0:
            pass
        self.store.sweep()
