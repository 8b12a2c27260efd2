"""Broker faults on a three-node KRaft cluster while reports are published and ingested.

Replication factor 3, min.insync.replicas=2, unclean leader election off; the publisher is the
idempotent acks=all producer every component uses. Six organization nodes run as processes
during the whole test. Afterwards the log and every node must hold exactly the published
reports: none lost, none doubled, nothing quarantined, every chain at its last seq, and no node
may have exited or hung. The figures go to var/faults/<fault>.json and the test output.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bus.topics import Topics
from tests.faults.harness import (
    NodeProcesses,
    PublishResult,
    Stream,
    count_log,
    fault_producer,
    figures,
    prepare_topics,
    publish_with_fault,
    snapshot,
)
from tests.kafka_cluster import LocalKafkaCluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(3600)]

# The cluster fences a broker that missed heartbeats for broker.session.timeout.ms (9 s,
# cluster.sh) and a consumer group drops a member after session_timeout_ms (aiokafka default
# 10 s). A freeze must outlast both to force a leader change and a group rebalance.
BROKER_SESSION_TIMEOUT_S = 9
CONSUMER_SESSION_TIMEOUT_S = 10
FREEZE_S = max(BROKER_SESSION_TIMEOUT_S, CONSUMER_SESSION_TIMEOUT_S) + 10
# Nodes must store everything within this bound after publishing ends (far above what the
# 2-core CI machine needs; a hang fails here instead of blocking forever).
INGEST_TIMEOUT_S = 2400


async def _run_fault(
    name: str,
    cluster: LocalKafkaCluster,
    stream: Stream,
    tmp_path: Path,
    fault: Callable[[int], Awaitable[dict[str, object]]],
) -> dict[str, object]:
    """Publish the stream with `fault(leader)` starting a third of the way in; check everything."""
    topics = Topics(f"f{uuid.uuid4().hex[:8]}.")
    await prepare_topics(cluster.bootstrap, topics, stream)
    leader, isr = (await cluster.leaders(topics.reports("un")))[0]
    assert len(isr) == 3, f"replicas not in sync before the fault: {isr}"
    nodes = NodeProcesses(cluster.bootstrap, topics, stream.mandate_file, tmp_path)
    details: dict[str, object] = {"node": leader}
    producer = fault_producer(cluster.bootstrap)
    try:
        nodes.start()
        async with asyncio.timeout(900):
            await producer.start()
            try:
                published = PublishResult()

                async def inject() -> None:
                    details["sent_when_fault_began"] = published.sent
                    details.update(await fault(leader))
                    details["sent_when_fault_ended"] = published.sent

                await publish_with_fault(
                    producer, topics, stream, len(stream.records) // 3, inject, published
                )
            finally:
                await producer.stop()
        assert published.failed == [], f"sends failed: {published.failed[:5]}"
        await asyncio.to_thread(
            cluster.restart
        )  # the killed node comes back; a no-op after a freeze
        await cluster.wait_isr(topics.reports("un"), 3)
        await nodes.wait_for(len(stream.records), INGEST_TIMEOUT_S)
    finally:
        codes = nodes.stop()
    assert all(c == 0 for c in codes.values()), f"node exit codes {codes}:\n{nodes.tails(codes)}"

    log = await count_log(cluster.bootstrap, topics)
    stores = {org: snapshot(nodes.db(org)) for org in nodes.orgs}
    out = figures(name, stream, log, stores, **details)
    assert out["log_lost"] == 0 and out["log_doubled"] == 0, out
    assert log.records == len(stream.records), out
    expected, heads = stream.expected, stream.last_seq
    for org, snap in stores.items():
        assert snap.reports == expected, f"{org}: {out['nodes']}"
        assert snap.quarantine == {}, f"{org} quarantined {list(snap.quarantine.items())[:5]}"
        assert {o: s for o, (s, _) in snap.heads.items()} == heads
    first = next(iter(stores.values()))
    assert all(s.heads == first.heads for s in stores.values()), "chain heads differ"
    return out


async def test_kill_9_partition_leader_during_publishing(
    healthy_cluster: LocalKafkaCluster, stream: Stream, tmp_path: Path
) -> None:
    async def kill(leader: int) -> dict[str, object]:
        await asyncio.to_thread(healthy_cluster.kill, leader)
        return {"killed_node": leader}

    await _run_fault("kill9_leader", healthy_cluster, stream, tmp_path, kill)


async def test_sigstop_broker_longer_than_session_timeout(
    healthy_cluster: LocalKafkaCluster, stream: Stream, tmp_path: Path
) -> None:
    async def freeze(leader: int) -> dict[str, object]:
        await asyncio.to_thread(healthy_cluster.freeze, leader)
        try:
            await asyncio.sleep(FREEZE_S)
        finally:
            await asyncio.to_thread(healthy_cluster.thaw, leader)
        return {"frozen_node": leader, "frozen_s": FREEZE_S}

    await _run_fault("sigstop_leader", healthy_cluster, stream, tmp_path, freeze)


# Longer than every client-side bound: aiokafka's request timeout (40 s consumers) and
# bus.kafka.client.RETRY_S (60 s) for admin and offset look-ups.
CLUSTER_OUTAGE_S = 75


def _logs_with(work: Path, event: str) -> list[str]:
    """The node logs in work that contain the event."""
    return [p.name for p in work.glob("*.log") if f'"{event}"' in p.read_text()]


async def test_whole_cluster_down_longer_than_every_client_timeout(
    healthy_cluster: LocalKafkaCluster, stream: Stream, tmp_path: Path
) -> None:
    """Every broker killed at once for 75 s (a power cut, the cluster restarted by its
    operators), then brought back. Nodes must wait it out (`broker_unavailable_waiting`), not
    exit: a node that exits on an outage stays down wherever nothing restarts it. Before
    this, the follow-up's topic look-up gave up after 60 s and stopped every node."""
    waited: list[str] = []

    async def kill_all(_leader: int) -> dict[str, object]:
        # An outage while they run, not at start-up (a node that cannot reach any broker at
        # start exits with the error: more likely a wrong --bootstrap than an outage).
        async with asyncio.timeout(180):
            while len(await asyncio.to_thread(_logs_with, tmp_path, "partitions_assigned")) < 6:  # noqa: ASYNC110 - files written by other processes
                await asyncio.sleep(0.5)
        brokers = list(range(1, healthy_cluster.brokers + 1))
        for b in brokers:
            await asyncio.to_thread(healthy_cluster.kill, b)
        await asyncio.sleep(CLUSTER_OUTAGE_S)
        # Before the brokers return: every node is still running, and waiting.
        waited.extend(await asyncio.to_thread(_logs_with, tmp_path, "broker_unavailable_waiting"))
        await asyncio.to_thread(healthy_cluster.restart)
        return {"killed_nodes": brokers, "down_s": CLUSTER_OUTAGE_S}

    out = await _run_fault("kill9_whole_cluster", healthy_cluster, stream, tmp_path, kill_all)
    assert waited, f"no node waited for the brokers: {out}"
