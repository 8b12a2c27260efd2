"""Several ingest workers of one organization: one consumer group, one shared store.

Workers join and leave while reports are still being published, so partitions move between
them mid-stream (each move a real group rebalance on the broker). However the batches
interleave, the shared store must end exactly as the store of one node that read the same log
alone: every genuine report once, every bad record quarantined once, the same chain heads.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from bus.store.node import NodeStore
from bus.topics import Topics
from nodes.org_node.ingest import OrgNode
from nodes.org_node.process import build_node
from tests.integration import test_node
from tests.integration.test_node import ORGS, _config, _publish, _run_until, _setup
from tests.mission import Mission, live_mission

pytestmark = [pytest.mark.kafka]
topics = test_node.topics  # the fixture: a fresh topic prefix per test


async def _publish_round(producer, topics: Topics, m: Mission, rounds: int) -> int:  # type: ignore[no-untyped-def]
    n = 0
    for _ in range(rounds):
        for org in ORGS:
            for i in (1, 2):
                await _publish(producer, topics, org, m.next_report(org, i))
                n += 1
    return n


async def _stored(db: Path) -> int:
    reader = NodeStore(db, read_only=True)
    try:
        return sum(reader.positions().values())
    finally:
        reader.close()


async def test_workers_joining_and_leaving_store_exactly_what_one_node_stores(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    m = live_mission()
    shared = tmp_path / "un-shared.db"

    def worker(ingest_only: bool) -> OrgNode:
        cfg = _config(kafka_bootstrap, topics, m, shared, "un")
        # Small batches: many commits, so partitions move between workers mid-batch.
        return build_node(dataclasses.replace(cfg, ingest_only=ingest_only, max_batch=15))

    producer = await _setup(kafka_bootstrap, topics, m)
    total = 0
    workers: list[tuple[OrgNode, asyncio.Task[None]]] = []
    try:
        total += await _publish_round(producer, topics, m, 10)
        await producer.send_and_wait(topics.reports("osce"), b"not an envelope", key=b"x")
        again = m.next_report("eu", 2)
        await _publish(producer, topics, "eu", again)
        total += 2
        for ingest_only in (False, True):
            w = worker(ingest_only)
            workers.append((w, asyncio.create_task(w.run())))
        total += await _publish_round(producer, topics, m, 10)
        # A third worker joins while the first two are busy; then the full node leaves.
        while await _stored(shared) < total // 3:  # noqa: ASYNC110 - polls the store file
            await asyncio.sleep(0.05)
        w = worker(True)
        workers.append((w, asyncio.create_task(w.run())))
        total += await _publish_round(producer, topics, m, 10)
        await _publish(producer, topics, "eu", again)  # replayed
        total += 1
        while await _stored(shared) < 2 * total // 3:  # noqa: ASYNC110 - polls the store file
            await asyncio.sleep(0.05)
        workers[0][0].stop()
        await workers[0][1]
        total += await _publish_round(producer, topics, m, 5)
        async with asyncio.timeout(180):
            while await _stored(shared) < total:
                for _, task in workers:
                    if task.done():
                        await task  # surface a worker's exception
                await asyncio.sleep(0.1)
    finally:
        await producer.stop()
        for w, _ in workers:
            w.stop()
        await asyncio.gather(*(task for _, task in workers))

    solo = tmp_path / "un-solo.db"
    await _run_until(build_node(_config(kafka_bootstrap, topics, m, solo, "un")), solo, total, 120)
    a, b = NodeStore(shared, read_only=True), NodeStore(solo, read_only=True)
    genuine = 6 * 2 * 35 + 1
    assert a.count_reports() == genuine
    assert a.accepted_digests() == b.accepted_digests()
    assert a.quarantine_rows() == b.quarantine_rows()
    assert sorted(r[3] for r in a.quarantine_rows()) == ["malformed", "replayed"]
    assert a.chain_heads() == b.chain_heads()
    assert a.positions() == b.positions()
    assert sum(w.counts["accepted"] for w, _ in workers) >= genuine


async def test_two_groups_on_one_store_race_every_batch_and_still_store_each_record_once(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """A misconfiguration that maximizes commit races: two workers in different consumer
    groups share one store, so both read every partition and judge the same records. Every
    batch the slower one judged is refused at commit (StoreConflictError), dropped with the
    batch judged behind it, and read again from the store: the store still ends as one
    node's."""
    m = live_mission()
    shared = tmp_path / "un-shared.db"

    def worker(group: str) -> OrgNode:
        cfg = _config(kafka_bootstrap, topics, m, shared, "un")
        return build_node(dataclasses.replace(cfg, ingest_only=True, max_batch=7, group_id=group))

    producer = await _setup(kafka_bootstrap, topics, m)
    total = 0
    workers = [worker(f"{topics.prefix}a"), worker(f"{topics.prefix}b")]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        total += await _publish_round(producer, topics, m, 8)
        again = m.next_report("nato", 1)
        await _publish(producer, topics, "nato", again)
        await producer.send_and_wait(topics.reports("sco"), b"\x00junk", key=b"x")
        total += await _publish_round(producer, topics, m, 8)
        await _publish(producer, topics, "nato", again)  # replayed
        total += 3
        async with asyncio.timeout(180):
            while await _stored(shared) < total:
                for task in tasks:
                    if task.done():
                        await task
                await asyncio.sleep(0.1)
    finally:
        await producer.stop()
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks)

    solo = tmp_path / "un-solo.db"
    await _run_until(build_node(_config(kafka_bootstrap, topics, m, solo, "un")), solo, total, 120)
    a, b = NodeStore(shared, read_only=True), NodeStore(solo, read_only=True)
    assert a.count_reports() == 6 * 2 * 16 + 1
    assert a.accepted_digests() == b.accepted_digests()
    assert a.quarantine_rows() == b.quarantine_rows()
    assert sorted(r[3] for r in a.quarantine_rows()) == ["malformed", "replayed"]
    assert a.chain_heads() == b.chain_heads()
    assert a.positions() == b.positions()
    print("lost commit races:", [w.conflicts for w in workers])
    assert sum(w.conflicts for w in workers) > 0
