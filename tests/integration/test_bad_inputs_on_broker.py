"""The whole catalog of named bad inputs, published to a real broker and judged by six nodes.

Each case of tests/unit/test_verify_table.py gets its own observers (a shifted view of one
mission at this machine's clock, which the nodes judge by), so all cases share one stream and
one set of topics. Every node (alone, judging provisionally on its own clock) must quarantine
exactly the last record of each case with the case's reason code, accept everything else, and
keep running. Sealers of k = 4 organizations seal the same log beside the nodes; their final
verdicts and the auditor's, over the sealed log, must name the same records with the same
reasons.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from bus.judge import RecordPos as Pos
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.topics import Topics, standard_topics
from nodes.auditor.run import audit
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from tests.final_rows import settled_verdicts
from tests.mission import make_mission
from tests.sealers import running_sealers
from tests.unit.test_verify_table import CASES

pytestmark = [pytest.mark.kafka]
ORGS = ["un", "osce", "eu", "nato", "csto", "sco"]
SEALING = ["un", "osce", "eu", "nato"]  # k of them: their node keys propose and cosign seals
SEAL_INTERVAL_MS = 300


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
    expected: dict[Pos, tuple[str, str]] = {}
    genuine: list[Pos] = []
    try:
        for raw in [*big.registry, *big.scenario.node_accreditations]:
            await producer.send_and_wait(topics.registry, raw)
        for name, reason_code, records in plans:
            for i, (topic, value) in enumerate(records):
                real_topic = topics.prefix + topic.removeprefix("obus.")
                md = await producer.send_and_wait(real_topic, value, key=f"{name}".encode())
                if i == len(records) - 1:
                    expected[(md.topic, md.partition, md.offset)] = (name, reason_code)
                else:
                    genuine.append((md.topic, md.partition, md.offset))
    finally:
        await producer.stop()
    accepted = len(genuine)
    total = accepted + len(expected)
    everything = [*genuine, *expected]
    final_dbs = tmp_path / "sealers"
    final_dbs.mkdir()

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
    async with running_sealers(
        kafka_bootstrap, topics, big.scenario, final_dbs, SEALING, interval_ms=SEAL_INTERVAL_MS
    ):
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
                    # ... and every record covered by a final seal and judged by every sealer
                    sealed = [
                        len(settled_verdicts(final_dbs / f"{org}.final.db", everything))
                        for org in SEALING
                    ]
                    if all(d >= total for d in done) and all(n == total for n in sealed):
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

    # The sealers' final verdicts: every genuine record accepted, the last of each case
    # quarantined with the case's reason, the same at every sealing organization.
    want_final = {
        **dict.fromkeys(genuine, ("accepted", "")),
        **{pos: ("quarantined", reason) for pos, (_, reason) in expected.items()},
    }
    for org in SEALING:
        final = settled_verdicts(final_dbs / f"{org}.final.db", everything)
        wrong_final = {
            expected[pos][0] if pos in expected else f"genuine {pos}": (want, final.get(pos))
            for pos, want in want_final.items()
            if final.get(pos) != want
        }
        assert not wrong_final, f"{org} final: case -> (expected, got): {wrong_final}"
    last_epochs = set()
    for org in SEALING:
        fs = FinalStore(final_dbs / f"{org}.final.db", read_only=True)
        try:
            last_epochs.add(fs.last_epoch())
        finally:
            fs.close()

    # The auditor replays the sealed log and names exactly the same records and reasons.
    result = await audit(kafka_bootstrap, big.scenario.mandate, topics=topics, work_dir=tmp_path)
    assert result.final is not None
    assert result.final.mismatch is None and result.final.stuck is None
    assert not [u for u in result.final.not_sealed if topics.org_of_report_topic(u.topic)]
    audited = {(v.topic, v.partition, v.offset): v.reason for v in result.violations}
    assert audited == {pos: reason for pos, (_, reason) in expected.items()}
    assert sum(result.accepted.values()) == accepted
    final_audited = {pos: result.final.verdicts[pos] for pos in everything}
    assert {pos: (r.status, r.reason) for pos, r in final_audited.items()} == want_final
    # ... from the same final state as every sealer at its last epoch.
    states = {row.epoch: row.state_digest for row in result.final.epochs}
    for last in last_epochs:
        assert last is not None
        assert states[last[0]] == last[1]
    assert len(expected) == len(CASES) >= 30
