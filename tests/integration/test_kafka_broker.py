"""aiokafka 0.14 against the local Kafka broker (deploy/local/kafka.sh): the client features
observer-bus relies on, checked record by record.

Every test uses fresh topic and group names, so the tests also pass against a shared broker
(``OBUS_BOOTSTRAP``) that already holds other ``obus.*`` topics.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

import bus.kafka.client
from bus.errors import TransportError
from bus.kafka.admin import ensure_topics
from bus.kafka.replay import replay
from bus.topics import KEEP_FOREVER, Topics, TopicSpec, standard_topics
from tests.kafka_broker import LocalKafka, create_topics
from tests.logcapture import capture_all_logs

pytestmark = pytest.mark.kafka

WAIT_S = 60  # upper bound for waits on the broker; a slow machine only makes them slower

# what a record is for these tests: where it landed and what it carries
Row = tuple[str, int, int, bytes | None, bytes | None]  # topic, partition, offset, key, value


def run_id() -> str:
    return uuid.uuid4().hex[:12]


def row(record: ConsumerRecord[bytes, bytes]) -> Row:
    return (record.topic, record.partition, record.offset, record.key, record.value)


async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> list[Row]:
    """Send (key, value) pairs with an idempotent, acks=all producer; return where they landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        messages = list(messages)
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [
        (md.topic, md.partition, md.offset, key, value)
        for md, (key, value) in zip(metadata, messages, strict=True)
    ]


@asynccontextmanager
async def consumer(bootstrap: str, *topics: str, **config: Any) -> AsyncIterator[AIOKafkaConsumer]:
    config.setdefault("auto_offset_reset", "earliest")
    config.setdefault("enable_auto_commit", False)
    pattern = config.pop("pattern", None)
    client = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, **config)
    if pattern is not None:
        client.subscribe(pattern=pattern)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def poll(client: AIOKafkaConsumer) -> list[ConsumerRecord[bytes, bytes]]:
    """One fetch, as records in the order the consumer hands them out."""
    batches = await client.getmany(timeout_ms=500)
    return [record for records in batches.values() for record in records]


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[TopicPartition, int]:
    async with consumer(bootstrap) as client:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return dict(await client.end_offsets(tps))


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


def by_partition(rows: Iterable[Row]) -> dict[int, list[Row]]:
    out: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        out[r[1]].append(r)
    return dict(out)


async def test_idempotent_producer_writes_each_record_exactly_once(kafka_bootstrap: str) -> None:
    topic = f"obus.test.idempotence.{run_id()}"
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    sent = await produce(
        kafka_bootstrap, topic, [(f"k{i % 6}".encode(), f"v{i}".encode()) for i in range(60)]
    )

    # offsets in each partition are 0..n-1 in send order: nothing lost, duplicated or reordered
    for rows in by_partition(sent).values():
        assert [r[2] for r in rows] == list(range(len(rows)))
    # a key always lands in the same partition
    assert len({(r[3], r[1]) for r in sent}) == 6

    ends = await end_offsets(kafka_bootstrap, topic, 3)
    assert sum(ends.values()) == 60
    async with consumer(kafka_bootstrap) as client:
        client.assign(list(ends))
        await client.seek_to_beginning()
        received: list[Row] = []
        async with asyncio.timeout(WAIT_S):
            while len(received) < 60:
                received += [row(r) for r in await poll(client)]
    assert sorted(received) == sorted(sent)
    assert by_partition(received) == by_partition(sent)


async def test_restarted_consumer_resumes_after_the_committed_offset(kafka_bootstrap: str) -> None:
    topic = f"obus.test.commit.{run_id()}"
    group = f"obus-test-commit-{run_id()}"
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    sent = await produce(
        kafka_bootstrap, topic, [(f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(30)]
    )
    processed_first = 12

    # first consumer: process 12 records, commit exactly those, stop
    first: list[Row] = []
    async with consumer(kafka_bootstrap, topic, group_id=group) as client:
        async with asyncio.timeout(WAIT_S):
            while len(first) < processed_first:
                for record in await poll(client):
                    if len(first) == processed_first:
                        break  # fetched but not processed: must come again
                    first.append(row(record))
        commit = {
            TopicPartition(topic, p): rows[-1][2] + 1 for p, rows in by_partition(first).items()
        }
        await client.commit(commit)
        for tp, offset in commit.items():
            assert await client.committed(tp) == offset
    assert await committed_offsets(kafka_bootstrap, group) == commit

    # second consumer, same group: exactly the 18 records not yet committed, nothing else
    second: list[Row] = []
    async with consumer(kafka_bootstrap, topic, group_id=group) as client:
        async with asyncio.timeout(WAIT_S):
            while len(second) < len(sent) - processed_first:
                second += [row(r) for r in await poll(client)]
        assert len(second) == len(sent) - processed_first
        for p, rows in by_partition(second).items():
            assert rows[0][2] == commit.get(TopicPartition(topic, p), 0)
        await client.commit()

    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(sent)
    ends = await end_offsets(kafka_bootstrap, topic, 3)
    committed = await committed_offsets(kafka_bootstrap, group)
    assert {tp: committed.get(tp, 0) for tp in ends} == ends

    # a third start of the group finds nothing left: its positions are the end offsets
    async with consumer(kafka_bootstrap, topic, group_id=group) as client:
        async with asyncio.timeout(WAIT_S):
            while len(client.assignment()) < 3:
                assert await poll(client) == []
        for tp in client.assignment():
            assert await client.position(tp) == ends[tp]
        assert await poll(client) == []


async def test_pattern_subscription_follows_all_report_topics(kafka_bootstrap: str) -> None:
    rid = run_id()
    topics = [f"obus.reports.{rid}-{org}" for org in ("org1", "org2", "org3")]
    other = f"obus.audit.{rid}"  # does not match the pattern
    late = topics.pop()  # created after the consumer subscribed
    await create_topics(kafka_bootstrap, [*topics, other], partitions=3)
    sent: list[Row] = []
    for topic in [*topics, other]:
        sent += await produce(
            kafka_bootstrap, topic, [(f"k{i}".encode(), f"{topic}/{i}".encode()) for i in range(5)]
        )
    ours = {*topics, late}
    received: list[Row] = []

    async def receive_until(client: AIOKafkaConsumer, count: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while len(received) < count:
                records = await poll(client)
                # other obus.reports.* topics on a shared broker are read too, and ignored
                received.extend(row(r) for r in records if r.topic in ours | {other})
                if records:
                    # processed, so commit: the rebalance the late topic causes must not
                    # hand the same records out again
                    await client.commit()

    async with consumer(
        kafka_bootstrap,
        pattern=r"^obus\.reports\..*",
        group_id=f"obus-test-pattern-{rid}",
        metadata_max_age_ms=1000,  # see the late topic soon
    ) as client:
        await receive_until(client, 10)
        await create_topics(kafka_bootstrap, [late], partitions=3)
        sent += await produce(
            kafka_bootstrap, late, [(f"k{i}".encode(), f"{late}/{i}".encode()) for i in range(5)]
        )
        await receive_until(client, 15)
        subscription = client.subscription()
        assignment = client.assignment()

    assert ours <= subscription
    assert other not in subscription
    assert {TopicPartition(t, p) for t in ours for p in range(3)} <= assignment
    assert sorted(received) == sorted(r for r in sent if r[0] in ours)
    assert len(received) == 15


@pytest.mark.skipif(bool(os.environ.get("OBUS_BOOTSTRAP")), reason="checks our own broker")
async def test_broker_runs_with_the_local_settings(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
        missing = f"obus.test.never-created.{run_id()}"
        [described] = await admin.describe_topics([missing])
        topics = await admin.list_topics()
    finally:
        await admin.close()
    [(_code, _msg, _type, _name, entries)] = response.resources
    config = {entry[0]: entry[1] for entry in entries}
    assert {k: config[k] for k in EXPECTED_BROKER_CONFIG} == EXPECTED_BROKER_CONFIG
    # asking for a missing topic must not create it
    assert described["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    assert missing not in topics


EXPECTED_BROKER_CONFIG = {
    "auto.create.topics.enable": "false",
    "num.partitions": "3",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
}


@pytest.mark.skipif(bool(os.environ.get("OBUS_BOOTSTRAP")), reason="checks our own broker")
def test_kafka_sh_up_is_idempotent_and_status_reports(local_kafka: LocalKafka | None) -> None:
    assert local_kafka is not None
    data_dir = str(local_kafka.data_dir)
    again = local_kafka.run("up", "--port", str(local_kafka.port), "--data-dir", data_dir)
    assert again.returncode == 0, again.stdout
    assert "already running" in again.stdout
    status = local_kafka.run("status", "--data-dir", data_dir)
    assert status.returncode == 0, status.stdout
    assert f"127.0.0.1:{local_kafka.port}" in status.stdout


@pytest.mark.slow
def test_restart_keeps_topics_and_committed_offsets(tmp_path: Path) -> None:
    """down + up on the same data dir (and new ports): data and group offsets survive."""
    topic, group = "obus.test.restart", "obus-test-restart"
    with LocalKafka(tmp_path / "kafka") as kafka:
        bootstrap = kafka.bootstrap

        async def before() -> tuple[list[Row], dict[TopicPartition, int]]:
            await create_topics(bootstrap, [topic], partitions=1)
            sent = await produce(bootstrap, topic, [(b"k", f"v{i}".encode()) for i in range(10)])
            got: list[Row] = []
            async with consumer(bootstrap, topic, group_id=group) as client:
                async with asyncio.timeout(WAIT_S):
                    while len(got) < 4:
                        got += [row(r) for r in await poll(client)]
                await client.commit({TopicPartition(topic, 0): 4})
            return sent, await committed_offsets(bootstrap, group)

        sent, committed = asyncio.run(before())
        assert committed == {TopicPartition(topic, 0): 4}
        kafka.stop()
        assert kafka.run("status", "--data-dir", str(tmp_path / "kafka")).returncode == 3

        kafka.start()
        bootstrap = kafka.bootstrap  # on new ports

        async def after() -> list[Row]:
            rest: list[Row] = []
            async with consumer(bootstrap, topic, group_id=group) as client:
                async with asyncio.timeout(WAIT_S):
                    while len(rest) < 6:
                        rest += [row(r) for r in await poll(client)]
            return rest

        assert asyncio.run(after()) == sent[4:]


# -- bus.kafka.client against the broker: retention, topic creation errors, replay over deleted records


async def topic_configs(bootstrap: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each topic's effective configs, as the broker describes them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, message, _type, name, entries in response.resources:
            assert code == 0, (name, message)
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def delete_records(bootstrap: str, before: dict[TopicPartition, int]) -> None:
    """Delete every record below the given offsets (the broker raises the log start offset)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        low = await admin.delete_records({tp: RecordsToDelete(o) for tp, o in before.items()})
    finally:
        await admin.close()
    assert low == before


async def replayed(bootstrap: str, *topics: str, **kwargs: Any) -> list[Row]:
    async with asyncio.timeout(WAIT_S):
        return [row(r) async for r in replay(bootstrap, list(topics), **kwargs)]


@asynccontextmanager
async def kafka_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[list[MutableMapping[str, Any]]]:
    """bus.kafka.client's structlog events (a fresh logger: another test may have cached the old one)."""
    with capture_all_logs() as logs:
        monkeypatch.setattr(bus.kafka.client, "log", structlog.get_logger("bus.kafka.client"))
        yield logs


async def test_standard_topics_keep_every_record(kafka_bootstrap: str) -> None:
    topics = Topics(f"obus.test.{run_id()}.")
    specs = standard_topics(topics, ["org1", "org2"], partitions=2)
    # reports, decisions, attachments of each organization; the one-partition trust topics
    assert [s.name for s in specs] == [
        *(t for org in ("org1", "org2") for t in (
            topics.reports(org), topics.decisions(org), topics.attachments(org)
        )),
        topics.registry, topics.mandate, topics.statements, topics.seals,
    ]  # fmt: skip
    assert len(specs) == 10
    await ensure_topics(kafka_bootstrap, specs)
    described = await topic_configs(kafka_bootstrap, [s.name for s in specs])
    assert set(described) == {s.name for s in specs}
    for spec in specs:
        config = described[spec.name]
        # what the broker applies, not only what was asked: no 7-day default, no size limit
        assert config["retention.ms"] == "-1", spec.name
        assert config["retention.bytes"] == "-1", spec.name
        assert {k: config[k] for k, _ in spec.configs} == dict(spec.configs), spec.name
        assert set(KEEP_FOREVER) <= set(spec.configs)
    # none is compacted, the trust topics neither (tests/integration/test_topics_append_only.py)
    assert {name: c["cleanup.policy"] for name, c in described.items()} == dict.fromkeys(
        described, "delete"
    )
    # a second call finds them all and changes nothing
    await ensure_topics(kafka_bootstrap, specs)


@pytest.mark.skipif(bool(os.environ.get("OBUS_BOOTSTRAP")), reason="needs a single broker")
async def test_ensure_topics_raises_what_the_broker_refused(kafka_bootstrap: str) -> None:
    refused = TopicSpec(f"obus.test.refused.{run_id()}", 1, KEEP_FOREVER)
    with (
        structlog.testing.capture_logs() as events,
        pytest.raises(TransportError, match=re.escape(refused.name)) as caught,
    ):
        # replication 3 on the one test broker: the broker answers INVALID_REPLICATION_FACTOR
        await ensure_topics(kafka_bootstrap, [refused], replication=3)
    assert caught.value.retriable is False
    assert "InvalidReplicationFactorError" in str(caught.value)
    # refused at once: never retried (every retry is a kafka_retry event), so never waited for
    assert [e for e in events if e["event"] == "kafka_retry"] == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert refused.name not in await admin.list_topics()
    finally:
        await admin.close()


async def test_replay_over_deleted_records_returns_what_is_left(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = run_id()
    gone, half, empty = (f"obus.test.deleted.{rid}.{n}" for n in ("gone", "half", "empty"))
    await create_topics(kafka_bootstrap, [gone, half, empty], partitions=1)
    sent = {
        topic: await produce(
            kafka_bootstrap, topic, [(b"k", f"{topic}/{i}".encode()) for i in range(10)]
        )
        for topic in (gone, half)
    }
    await delete_records(kafka_bootstrap, {TopicPartition(gone, 0): 10, TopicPartition(half, 0): 5})

    # log start == end > 0: seek_to_beginning lands at the end; the replay must not wait for
    # records that will never come
    async with kafka_logs(monkeypatch) as logs:
        assert await replayed(kafka_bootstrap, gone) == []
    warnings = [e for e in logs if e["event"] == "replay_log_start_above_zero"]
    assert [(e["topic"], e["partition"], e["log_start_offset"]) for e in warnings] == [
        (gone, 0, 10)
    ]
    assert warnings[0]["log_level"] == "warning"

    # the first half deleted: exactly the second half, in offset order, and a warning
    async with kafka_logs(monkeypatch) as logs:
        assert await replayed(kafka_bootstrap, half) == sent[half][5:]
    assert [
        (e["topic"], e["log_start_offset"])
        for e in logs
        if e["event"] == "replay_log_start_above_zero"
    ] == [(half, 5)]

    # all three together (and an empty partition): one replay, nothing lost, nothing waited for
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await replayed(kafka_bootstrap, gone, half, empty) == sent[half][5:]
    assert loop.time() - started < 10


async def test_replay_goes_on_when_records_are_deleted_under_it(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"obus.test.deleted-midway.{run_id()}"
    await create_topics(kafka_bootstrap, [topic], partitions=1)
    # 100 KiB records: a replay fetch (256 KiB per partition) holds only a few of them
    big = 100 * 1024
    sent = await produce(kafka_bootstrap, topic, [(b"k", bytes([i]) * big) for i in range(20)])
    got: list[Row] = []
    async with kafka_logs(monkeypatch) as logs:
        async with asyncio.timeout(WAIT_S):
            async for rec in replay(kafka_bootstrap, [topic]):
                got.append(row(rec))
                if len(got) == 1:
                    await delete_records(kafka_bootstrap, {TopicPartition(topic, 0): 15})
    offsets = [r[2] for r in got]
    assert offsets == sorted(set(offsets))  # offset order, no record twice
    assert got[-5:] == sent[15:]  # everything that survived
    assert len(got) < 20  # records 1..14 went while the replay ran: they were not read
    assert all(r in sent for r in got)
    deleted = [e for e in logs if e["event"] == "replay_records_deleted_during_read"]
    assert len(deleted) == 1
    assert (deleted[0]["topic"], deleted[0]["log_start_offset"]) == (topic, 15)
    assert deleted[0]["from_offset"] < 15
