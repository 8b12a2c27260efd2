"""Seals on a real Kafka broker: six organizations' sealers propose and cosign seals over the
whole bus, judge every sealed epoch, and hold byte-identical final stores; a sealer stopped in
the middle resumes from its own store and still agrees; an independent reader of the broker,
fetching the partitions in another order, derives the same state digest.

Every test uses its own topic prefix; the sealers run in this process as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus.bus_reader import BusReader
from bus.kafka.admin import ensure_topics, topic_partitions
from bus.kafka.client import client_options, reliable_producer
from bus.store.final import FinalStore
from bus.topics import Topics, TopicSpec, standard_topics
from nodes.demo.scenario import ORGANIZATIONS, Scenario, build_scenario, signed_reports
from nodes.org_node.sealer import Sealer, SealerConfig

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
WAIT_S = 120


@pytest.fixture
def topics() -> Topics:
    return Topics(f"s{uuid.uuid4().hex[:10]}.")


def _now() -> int:
    return time.time_ns() // 1_000_000


async def _setup(bootstrap: str, topics: Topics, sc: Scenario) -> AIOKafkaProducer:
    specs = standard_topics(topics, ORGS, partitions=2)
    if not any(s.name == topics.seals for s in specs):
        specs.append(TopicSpec(topics.seals, 1))
    await ensure_topics(bootstrap, specs)
    producer = reliable_producer(bootstrap)
    await producer.start()
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        await producer.send_and_wait(topics.registry, raw)
    return producer


async def _publish(producer: AIOKafkaProducer, topics: Topics, sc: Scenario, n: int) -> int:
    stream = signed_reports(sc, n, _now(), random.Random(n))
    futures = [
        await producer.send(topics.reports(obs.org), raw, key=obs.observer_id.encode())
        for obs, _, raw in stream
    ]
    await asyncio.gather(*futures)
    return len(stream)


def _config(bootstrap: str, topics: Topics, sc: Scenario, org: str, tmp: Path) -> SealerConfig:
    return SealerConfig(
        org=org,
        bootstrap=bootstrap,
        db_path=tmp / f"{org}.final.db",
        root=sc.mandate,
        node_key=sc.node_keys[org],
        topics=topics,
        interval_ms=300,
        takeover_ms=300,
        snapshot_every=2,
        poll_timeout_ms=100,
        metadata_refresh_ms=1000,
    )


class Fleet:
    """Sealers running as tasks; stop() stops and awaits them."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[Sealer, asyncio.Task[None]]] = {}

    def start(self, cfg: SealerConfig) -> Sealer:
        s = Sealer(cfg)
        self.tasks[cfg.org] = (s, asyncio.create_task(s.run()))
        return s

    async def stop(self, org: str | None = None) -> None:
        for o in [org] if org else list(self.tasks):
            s, task = self.tasks.pop(o)
            s.stop()
            await task

    def check(self) -> None:
        for s, task in self.tasks.values():
            if task.done():
                task.result()
                raise AssertionError(f"sealer {s.config.org} stopped")


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        await f.stop()


def _accepted(db: Path) -> int:
    store = FinalStore(db, read_only=True)
    try:
        return store.counts().get("accepted", 0)
    finally:
        store.close()


async def _until_judged(fleet: Fleet, dbs: list[Path], total: int) -> None:
    """Until every store holds a final verdict `accepted` for all ``total`` reports."""
    async with asyncio.timeout(WAIT_S):
        while True:
            fleet.check()
            if all(db.exists() and _accepted(db) == total for db in dbs):
                return
            await asyncio.sleep(0.3)


def _fingerprint(db: Path) -> bytes:
    store = FinalStore(db, read_only=True)
    try:
        return store.fingerprint()
    finally:
        store.close()


async def _read_broker(bootstrap: str, topics: Topics, sc: Scenario, seed: int) -> dict[int, bytes]:
    """An independent reader: every sealed partition fetched in a shuffled order and in
    random slices, the seals topic interleaved, all from offset 0; returns each epoch's state
    digest."""
    tps = await topic_partitions(
        bootstrap, [topics.seals, topics.registry, topics.mandate, topics.statements]
    )
    tps += await topic_partitions(bootstrap, pattern=topics.reports_pattern)
    tps += await topic_partitions(bootstrap, pattern=topics.decisions_pattern)
    values: dict[TopicPartition, list[bytes | None]] = {}
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, 0)
            got: list[bytes | None] = []
            while len(got) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                got.extend(r.value for r in batch.get(tp, []))
            values[tp] = got
    finally:
        await consumer.stop()
    rng = random.Random(seed)
    reader = BusReader(sc.mandate, topics)
    cursor = dict.fromkeys(values, 0)
    digests: dict[int, bytes] = {}
    while any(cursor[tp] < len(v) for tp, v in values.items()):
        tp = rng.choice([t for t in values if cursor[t] < len(values[t])])
        start = cursor[tp]
        chunk = values[tp][start : start + rng.randint(1, 7)]
        if tp.topic == topics.seals:
            updates = [reader.offer_seal(start + i, v) for i, v in enumerate(chunk)]
        else:
            updates = [reader.offer_records((tp.topic, tp.partition), start, chunk)]
        digests.update((ev.epoch, ev.state_digest) for u in updates for ev in u.epochs)
        cursor[tp] = start + len(chunk)
    return digests


async def test_six_sealers_agree_byte_for_byte_and_resume(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    sc = build_scenario(_now(), observers_per_org=2)
    producer = await _setup(kafka_bootstrap, topics, sc)
    dbs = [tmp_path / f"{org}.final.db" for org in ORGS]
    try:
        total = await _publish(producer, topics, sc, 4)
        for org in ORGS:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, tmp_path))
        await _until_judged(fleet, dbs, total)

        # One sealer stops while the bus grows, and resumes from its own store.
        await fleet.stop("osce")
        total += await _publish(producer, topics, sc, 3)
        await asyncio.sleep(1.0)
        fleet.start(_config(kafka_bootstrap, topics, sc, "osce", tmp_path))
        total += await _publish(producer, topics, sc, 2)
        await _until_judged(fleet, dbs, total)
        statuses = {o: s.status() for o, (s, _) in fleet.tasks.items()}
    finally:
        await producer.stop()
    await fleet.stop()

    prints = {db.name: _fingerprint(db) for db in dbs}
    assert len(set(prints.values())) == 1, prints
    assert all(s["alarm"] is None for s in statuses.values())
    assert sum(s["proposals_published"] for s in statuses.values()) >= 2
    assert all(
        s["proposals_published"] + s["cosignatures_published"] > 0 for s in statuses.values()
    )

    # An independent reader, fetching in another order, stands at the same state digest.
    store = FinalStore(dbs[0], read_only=True)
    try:
        last = store.last_epoch()
    finally:
        store.close()
    assert last is not None
    for seed in (1, 2):
        digests = await _read_broker(kafka_bootstrap, topics, sc, seed)
        assert digests[last[0]] == last[1]
