"""The whole catalog of named bad inputs, published to a real broker and judged by six nodes.

Each case of tests/unit/test_verify_table.py gets its own observers (a shifted view of one
mission at this machine's clock, which the nodes judge by), so all cases share one stream and
one set of topics. Every node and the auditor must quarantine exactly the last record of each
case with the case's reason code, accept
everything else, and keep running.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.store.node import NodeStore
from bus.topics import Topics, standard_topics
from nodes.auditor.run import audit
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from tests.mission import make_mission
from tests.unit.test_verify_table import CASES

pytestmark = [pytest.mark.kafka]
ORGS = ["un", "osce", "eu", "nato", "csto", "sco"]


async def test_every_named_bad_input_is_quarantined_by_every_node_and_the_auditor(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(f"bad{uuid.uuid4().hex[:8]}.")
    big = make_mission(observers_per_org=2 * len(CASES) + 2, now_ms=int(time.time() * 1000))
    await ensure_topics(kafka_bootstrap, standard_topics(topics, ORGS, partitions=2))

    plans = []
    for k, (name, (build, reason)) in enumerate(CASES.items()):
        records = build(big.view(2 * k))
        plans.append((name, reason.value, records))

    producer = reliable_producer(kafka_bootstrap)
    await producer.start()
    expected: dict[tuple[str, int, int], tuple[str, str]] = {}
    accepted = 0
    try:
        for raw in big.registry:
            await producer.send_and_wait(topics.registry, raw)
        for name, reason_code, records in plans:
            for i, (topic, value) in enumerate(records):
                real_topic = topics.prefix + topic.removeprefix("obus.")
                md = await producer.send_and_wait(real_topic, value, key=f"{name}".encode())
                if i == len(records) - 1:
                    expected[(md.topic, md.partition, md.offset)] = (name, reason_code)
                else:
                    accepted += 1
    finally:
        await producer.stop()
    total = accepted + len(expected)

    nodes = {
        org: build_node(
            NodeConfig(
                org=org,
                bootstrap=kafka_bootstrap,
                db_path=tmp_path / f"{org}.db",
                mandate=big.scenario.mandate,
                topics=topics,
                poll_timeout_ms=200,
            )
        )
        for org in ORGS
    }
    tasks = [asyncio.create_task(n.run()) for n in nodes.values()]
    try:
        async with asyncio.timeout(120):
            while True:
                for t in tasks:
                    if t.done():
                        await t
                done = []
                for org in ORGS:
                    reader = NodeStore(tmp_path / f"{org}.db", read_only=True)
                    done.append(sum(reader.positions().values()))
                    reader.close()
                if all(d >= total for d in done):
                    break
                await asyncio.sleep(0.3)
    finally:
        for n in nodes.values():
            n.stop()
        await asyncio.gather(*tasks)

    for org in ORGS:
        store = NodeStore(tmp_path / f"{org}.db", read_only=True)
        got = {(t, p, o): reason for t, p, o, reason, _ in store.quarantine_rows()}
        want = {pos: reason for pos, (_, reason) in expected.items()}
        wrong = {
            expected[pos][0]: (want[pos], got.get(pos)) for pos in want if got.get(pos) != want[pos]
        }
        assert not wrong, f"{org}: case -> (expected, got): {wrong}"
        assert set(got) == set(want), f"{org}: quarantined records outside the catalog"
        assert store.count_reports() == accepted

    result = await audit(kafka_bootstrap, big.scenario.mandate, topics=topics)
    audited = {(v.topic, v.partition, v.offset): v.reason for v in result.violations}
    assert audited == {pos: reason for pos, (_, reason) in expected.items()}
    assert sum(result.accepted.values()) == accepted
    assert len(expected) == len(CASES) >= 30
