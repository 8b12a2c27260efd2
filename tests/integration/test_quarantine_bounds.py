"""A decompression bomb on a real broker: one gzip-compressed record of 50 MiB of zeros costs a
node a 4 KiB quarantine row, not 50 MiB of store, and the node goes on accepting reports."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from pathlib import Path

import pytest

from bus.errors import Reason
from bus.ingest import QUARANTINE_PREFIX_BYTES
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.store.node import NodeStore
from bus.topics import Topics, standard_topics
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from tests.mission import make_mission

pytestmark = [pytest.mark.kafka]
ORGS = ["un", "osce"]
BOMB_BYTES = 50 * 1024 * 1024


def _store_bytes(db: Path) -> int:
    """The store's size on disk: database, WAL and shared memory."""
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def test_gzip_bomb_of_50_mib_is_quarantined_as_oversized_with_a_bounded_row(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(f"bomb{uuid.uuid4().hex[:8]}.")
    mission = make_mission(now_ms=int(time.time() * 1000))
    await ensure_topics(kafka_bootstrap, standard_topics(topics, ORGS, partitions=1))
    producer = reliable_producer(kafka_bootstrap)
    await producer.start()
    try:
        for raw in mission.registry:
            await producer.send_and_wait(topics.registry, raw)
    finally:
        await producer.stop()

    # What an accredited organization's client can write to its own report topic: the batch
    # is ~51 KB compressed, under every default broker and topic limit.
    bomb = reliable_producer(
        kafka_bootstrap, compression_type="gzip", max_request_size=2 * BOMB_BYTES
    )
    await bomb.start()
    try:
        md_bomb = await bomb.send_and_wait(topics.reports("un"), bytes(BOMB_BYTES), key=b"bomb")
        genuine = mission.next_report("un")
        md_genuine = await bomb.send_and_wait(topics.reports("un"), genuine, key=b"un-obs-1")
    finally:
        await bomb.stop()

    db = tmp_path / "osce.db"
    node = build_node(
        NodeConfig(
            org="osce",
            bootstrap=kafka_bootstrap,
            db_path=db,
            mandate=mission.scenario.mandate,
            topics=topics,
            poll_timeout_ms=200,
        )
    )
    task = asyncio.create_task(node.run())
    try:
        async with asyncio.timeout(120):
            while True:
                if task.done():
                    await task
                reader = NodeStore(db, read_only=True)
                stored = reader.positions().get((md_genuine.topic, md_genuine.partition), 0)
                reader.close()
                if stored > md_genuine.offset:
                    break
                await asyncio.sleep(0.2)
    finally:
        node.stop()
        await task

    store = NodeStore(db, read_only=True)
    (row,) = store.quarantine_records()
    assert (row.topic, row.partition, row.offset) == (md_bomb.topic, 0, md_bomb.offset)
    assert row.reason == Reason.OVERSIZED.value
    assert row.size == BOMB_BYTES
    assert row.sha256 == hashlib.sha256(bytes(BOMB_BYTES)).digest()
    assert row.raw == bytes(QUARANTINE_PREFIX_BYTES) and not row.over_quota
    assert store.count_reports() == 1  # the genuine report after it was accepted
    assert node.counts["quarantined"] == 1 and node.counts["accepted"] == 1
    usage = store.quarantine_usage()[md_bomb.topic]
    assert (usage.rows, usage.kept_bytes, usage.exceeded) == (1, QUARANTINE_PREFIX_BYTES + 4, False)
    store.close()
    size = _store_bytes(db)
    print(f"\nstore after a {BOMB_BYTES}-byte gzip bomb: {size} bytes")
    assert size < 2 * 1024 * 1024
