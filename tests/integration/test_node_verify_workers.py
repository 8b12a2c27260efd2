"""A node with signature workers stores and quarantines exactly what a node without them does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bus.sign import ReportSigner
from bus.store.node import NodeStore
from bus.topics import Topics
from nodes.demo.scenario import demo_key
from nodes.org_node.process import build_node
from tests.integration import test_node
from tests.integration.test_node import ORGS, _config, _flip, _publish, _run_until, _setup
from tests.mission import live_mission

pytestmark = [pytest.mark.kafka]
topics = test_node.topics  # the fixture: a fresh topic prefix per test


async def test_verify_workers_give_the_same_store(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    m = live_mission()
    producer = await _setup(kafka_bootstrap, topics, m)
    try:
        for _ in range(20):  # 240 records: batches large enough for the pool (>= 64)
            for org in ORGS:
                for i in (1, 2):
                    await _publish(producer, topics, org, m.next_report(org, i))
        await _publish(producer, topics, "un", _flip(m.next_report("un", 1)))
        rogue = ReportSigner(demo_key("rogue")).sign(m.draft("eu", 1))
        await _publish(producer, topics, "eu", rogue)
    finally:
        await producer.stop()
    total = 240 + 2

    stores = {}
    for org, workers in (("osce", 0), ("eu", 2)):
        db = tmp_path / f"{org}-{workers}.db"
        cfg = dataclasses.replace(
            _config(kafka_bootstrap, topics, m, db, org), verify_workers=workers
        )
        await _run_until(build_node(cfg), db, total, timeout_s=120)
        stores[workers] = NodeStore(db, read_only=True)
    plain, pooled = stores[0], stores[2]
    assert pooled.accepted_digests() == plain.accepted_digests()
    assert len(plain.accepted_digests()) == 240
    assert pooled.quarantine_rows() == plain.quarantine_rows()
    assert sorted(r[3] for r in plain.quarantine_rows()) == ["bad_signature", "unknown_key"]
