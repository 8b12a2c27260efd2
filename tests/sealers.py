"""Sealers in a broker test: started as asyncio tasks of the test's own process, with their
organizations' accredited node keys and their own final stores, and stopped and awaited
whatever the test's outcome; a plain reader of everything a seal covers; and the publishing
helpers broker tests share (:func:`set_up_bus`, :func:`publish_records`).

The broker tests of seals (``test_sealer``, ``test_sealer_refusals``, ``test_seal_liveness``,
``test_gateway_final_trust``, ``test_observer_inclusion``, ``test_node``,
``test_bad_inputs_on_broker``) share this instead of each keeping a copy. The ``fleet`` fixture
(an empty :class:`Fleet`, stopped at the end) is in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus.bus_reader import BusReader
from bus.kafka.admin import ensure_topics, topic_partitions
from bus.kafka.client import client_options, reliable_producer
from bus.seal import SealProposal
from bus.topics import Topics, standard_topics
from nodes.demo.scenario import ORGANIZATIONS, Scenario, signed_reports
from nodes.org_node.sealer import Sealer, SealerConfig


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sealer_config(
    bootstrap: str,
    topics: Topics,
    sc: Scenario,
    org: str,
    db: Path,
    *,
    interval_ms: int = 300,
    **overrides: Any,
) -> SealerConfig:
    """A sealer of ``org`` with its accredited node key (``sc.node_keys``) and its final store
    at ``db``, proposing ``interval_ms`` after the previous seal (a silent turn owner replaced
    as long again per organization), polling fast; ``overrides`` set any other field."""
    fields: dict[str, Any] = {
        "org": org,
        "bootstrap": bootstrap,
        "db_path": db,
        "root": sc.mandate,
        "node_key": sc.node_keys[org],
        "topics": topics,
        "interval_ms": interval_ms,
        "takeover_ms": interval_ms,
        "poll_timeout_ms": 100,
        "metadata_refresh_ms": 1000,
    }
    fields.update(overrides)
    return SealerConfig(**fields)


class Fleet:
    """Sealers running as tasks; :meth:`stop` stops and awaits them."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[Sealer, asyncio.Task[None]]] = {}

    def start(self, cfg: SealerConfig) -> Sealer:
        s = Sealer(cfg)
        self.tasks[cfg.org] = (s, asyncio.create_task(s.run()))
        return s

    async def stop(self, org: str | None = None) -> None:
        """Stop one organization's sealer, or all of them."""
        for o in [org] if org else list(self.tasks):
            s, task = self.tasks.pop(o)
            s.stop()
            await task

    def check(self) -> None:
        """Fail at once when a sealer stopped (its exception, if it raised one)."""
        for s, task in self.tasks.values():
            if task.done():
                task.result()
                raise AssertionError(f"sealer {s.config.org} stopped")


@contextlib.asynccontextmanager
async def running_sealers(
    bootstrap: str,
    topics: Topics,
    sc: Scenario,
    tmp: Path,
    orgs: Sequence[str],
    *,
    interval_ms: int = 300,
) -> AsyncIterator[Fleet]:
    """Sealers of ``orgs`` (no node) with final stores ``tmp/<org>.final.db``, for the block;
    a sealer's exception surfaces on exit."""
    fleet = Fleet()
    for org in orgs:
        fleet.start(
            sealer_config(
                bootstrap, topics, sc, org, tmp / f"{org}.final.db", interval_ms=interval_ms
            )
        )
    try:
        yield fleet
        fleet.check()
    finally:
        await fleet.stop()


async def read_sealed_log(
    bootstrap: str, topics: Topics
) -> dict[TopicPartition, list[bytes | None]]:
    """Every record of the seals topic and of every partition a seal covers (trust topics,
    statements, every organization's reports and decisions), from offset 0 to the end the
    broker reports now."""
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
    return values


async def publish_records(
    bootstrap: str, topics: Topics, records: list[tuple[str, bytes]], partitions: int = 1
) -> None:
    """The standard topics (``partitions`` each), then ``records`` (topic, value) in order,
    each acknowledged before the next."""
    orgs = [o for o, _ in ORGANIZATIONS]
    await ensure_topics(bootstrap, standard_topics(topics, orgs, partitions=partitions))
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for topic, value in records:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def set_up_bus(
    bootstrap: str, topics: Topics, sc: Scenario, per_observer: int, seed: int
) -> AIOKafkaProducer:
    """The standard topics (2 partitions each), every accreditation of ``sc`` (observers' and
    node keys') on the registry, and ``per_observer`` signed reports of every observer; returns
    the started producer (the caller stops it)."""
    orgs = [o.org for o in sc.mandate.organizations]
    await ensure_topics(bootstrap, standard_topics(topics, orgs, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        await producer.send_and_wait(topics.registry, raw)
    stream = signed_reports(sc, per_observer, now_ms(), random.Random(seed))
    sent = [
        await producer.send(topics.reports(obs.org), raw, key=obs.observer_id.encode())
        for obs, _, raw in stream
    ]
    await asyncio.gather(*sent)
    return producer


async def whole_log_proposal(
    bootstrap: str, topics: Topics, sc: Scenario, org: str, at_ms: int
) -> SealProposal:
    """What ``org`` would propose at ``at_ms`` for the next epoch, having read every sealed
    partition honestly (an epoch-1 proposal, since the seals topic is not read)."""
    reader = BusReader(sc.mandate, topics)
    for tp, got in (await read_sealed_log(bootstrap, topics)).items():
        if tp.topic != topics.seals:
            reader.offer_records((tp.topic, tp.partition), 0, got)
    proposal = reader.propose(org=org, now_ms=at_ms)
    assert proposal is not None, f"{org} has nothing to propose"
    return proposal
