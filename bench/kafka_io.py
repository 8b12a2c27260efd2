"""Kafka side of the bench: topics, bulk publishing with producer batches, paced publishing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from bench.gen import GenSpec, read
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.topics import Topics, standard_topics
from nodes.demo.scenario import ORGANIZATIONS

ORGS = [o for o, _ in ORGANIZATIONS]
PARTITIONS = 3


def bulk_producer(bootstrap: str) -> AIOKafkaProducer:
    """The node's reliable producer (idempotent, acks=all), tuned for throughput."""
    return reliable_producer(
        bootstrap, linger_ms=20, max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024
    )


async def prepare(bootstrap: str, topics: Topics, spec: GenSpec) -> None:
    """Create the topics and publish the scenario's accreditations (observers' and node keys')
    on the registry."""
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=PARTITIONS))
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        sc = spec.scenario()
        for raw in [*sc.accreditations, *sc.node_accreditations]:
            await producer.send_and_wait(topics.registry, raw)
    finally:
        await producer.stop()


async def publish(bootstrap: str, topics: Topics, spec: GenSpec, parts: list[Path]) -> float:
    """Publish the whole set with explicit producer batches; returns records per second.

    Keys are observer ids, so each observer's chain lands in one partition in order (the same
    partition aiokafka's default partitioner would choose).
    """
    producer = bulk_producer(bootstrap)
    await producer.start()
    ids = spec.observers
    keys = [i.encode() for i in ids]
    all_parts = list(range(PARTITIONS))
    dest = [
        (topics.reports(i.split("-obs-")[0]), DefaultPartitioner()(k, all_parts, all_parts))
        for i, k in zip(ids, keys, strict=True)
    ]
    batches: dict[tuple[str, int], Any] = {}
    inflight: list[asyncio.Future[object]] = []
    sent = 0
    t0 = time.perf_counter()
    try:
        for i, raw in read(parts):
            d = dest[i]
            b = batches.get(d)
            if b is None:
                b = batches[d] = producer.create_batch()
            if b.append(key=keys[i], value=raw, timestamp=None) is None:
                inflight.append(await producer.send_batch(b, d[0], partition=d[1]))
                b = batches[d] = producer.create_batch()
                b.append(key=keys[i], value=raw, timestamp=None)
            sent += 1
            if len(inflight) > 64:
                await asyncio.gather(*inflight)
                inflight.clear()
        for d, b in batches.items():
            if b.record_count():
                inflight.append(await producer.send_batch(b, d[0], partition=d[1]))
        await asyncio.gather(*inflight)
    finally:
        await producer.stop()
    return sent / (time.perf_counter() - t0)


async def paced(
    producer: AIOKafkaProducer,
    records: Iterable[tuple[str, bytes, bytes]],
    rate: float,
) -> list[tuple[str, int, int, float]]:
    """Send (topic, key, value) at a fixed rate; returns (topic, partition, offset, sent_ms).

    ``sent_ms`` is the wall-clock time of the ``send`` call: publish as the observer's gateway
    sees it. Sends are scheduled on an absolute timetable, so a slow tick is caught up.
    """
    futs: list[tuple[float, asyncio.Future[Any]]] = []
    start = time.perf_counter()
    for n, (topic, key, value) in enumerate(records):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_ms = time.time() * 1000
        futs.append((sent_ms, await producer.send(topic, value, key=key)))
    out = []
    for sent_ms, f in futs:
        md = await f
        out.append((md.topic, md.partition, md.offset, sent_ms))
    return out
