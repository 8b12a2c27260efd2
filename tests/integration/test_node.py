"""Organization nodes and the auditor against a real Kafka broker.

Every test uses its own topic prefix, so tests share one broker without seeing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus.judge import RecordPos as Pos
from bus.kafka.admin import align_topic_configs, ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import Envelope, Location, Report, Signature, Zone
from bus.policy_file import load_policy
from bus.sign import ReportSigner, sign_mandate
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.topics import Topics, TopicSpec, report_headers, standard_topics
from nodes.auditor.run import audit
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.org_node.config import NodeConfig, SealSettings
from nodes.org_node.ingest import OrgNode
from nodes.org_node.process import build_node
from tests.final_rows import settled_verdicts
from tests.mission import Mission, live_mission
from tests.sealers import running_sealers

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]
ORGS = [o for o, _ in ORGANIZATIONS]
SEAL_INTERVAL_MS = 300
T = TypeVar("T")


@pytest.fixture
def topics() -> Topics:
    return Topics(f"t{uuid.uuid4().hex[:10]}.")


async def _setup(bootstrap: str, topics: Topics, m: Mission) -> AIOKafkaProducer:
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    for raw in m.registry:
        await producer.send_and_wait(topics.registry, raw)
    return producer


async def _publish(producer: AIOKafkaProducer, topics: Topics, org: str, raw: bytes) -> None:
    rep = Report.decode(Envelope.decode(raw).payload)
    await producer.send_and_wait(
        topics.reports(org),
        raw,
        key=rep.observer_id.encode(),
        headers=report_headers(rep.report_id, rep.org, rep.observer_id),
    )


async def _run_until(node: OrgNode, db: Path, processed: int, timeout_s: float = 60) -> None:
    """Run the node until its store has consumed `processed` records in total, then stop it."""
    task = asyncio.create_task(node.run())
    reader = NodeStore(db, read_only=True)
    try:
        async with asyncio.timeout(timeout_s):
            while sum(reader.positions().values()) < processed:
                if task.done():
                    await task  # surface the node's exception
                await asyncio.sleep(0.2)
    finally:
        reader.close()
        node.stop()
        await task


def _config(bootstrap: str, topics: Topics, m: Mission, db: Path, org: str = "osce") -> NodeConfig:
    # A lone node, with no sealers beside it to make verdicts final: its rules act on
    # provisional verdicts.
    policy = load_policy(REPO / "deploy" / "policies" / f"{org}.toml")
    rules = tuple(dataclasses.replace(r, verdicts="provisional") for r in policy.rules)
    return NodeConfig(
        org=org,
        bootstrap=bootstrap,
        db_path=db,
        mandate=m.scenario.mandate,
        policy=dataclasses.replace(policy, rules=rules),
        topics=topics,
        poll_timeout_ms=200,
    )


def _sealing_config(
    bootstrap: str, topics: Topics, m: Mission, db: Path, final_db: Path, org: str = "osce"
) -> NodeConfig:
    """A node with its own sealer, which proposes and cosigns seals with the organization's
    accredited node key; the shipped policy, whose rules act on final verdicts."""
    key = m.scenario.node_keys[org]
    return NodeConfig(
        org=org,
        bootstrap=bootstrap,
        db_path=db,
        mandate=m.scenario.mandate,
        policy=load_policy(REPO / "deploy" / "policies" / f"{org}.toml"),
        topics=topics,
        poll_timeout_ms=200,
        node_key=key,
        seal=SealSettings(
            root=m.scenario.mandate, db_path=final_db, node_key=key, interval_ms=SEAL_INTERVAL_MS
        ),
    )


def _read(db: Path, fn: Callable[[NodeStore], T]) -> T:
    store = NodeStore(db, read_only=True)
    try:
        return fn(store)
    finally:
        store.close()


def _flip(raw: bytes) -> bytes:
    env = Envelope.decode(raw)
    s = env.signatures[0]
    return dataclasses.replace(
        env, signatures=(Signature(s.key_id, bytes([s.sig[0] ^ 4]) + s.sig[1:]),)
    ).encode()


async def _publish_at(
    producer: AIOKafkaProducer, topics: Topics, org: str, raw: bytes
) -> tuple[str, int, int]:
    """Publish like :func:`_publish`; the record's position on the log."""
    rep = Report.decode(Envelope.decode(raw).payload)
    md = await producer.send_and_wait(
        topics.reports(org),
        raw,
        key=rep.observer_id.encode(),
        headers=report_headers(rep.report_id, rep.org, rep.observer_id),
    )
    return md.topic, md.partition, md.offset


async def test_node_stores_genuine_reports_and_quarantines_bad_ones(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """An OSCE node, its sealer and sealers of three more organizations (k = 4) seal the log:
    the node stores every genuine report and quarantines the three bad records; its final
    verdicts, and the auditor's over the same sealed log, accept every genuine report and
    reject exactly those three records, with the node's reasons."""
    m = live_mission()
    sc = m.scenario
    # The node keys that propose and cosign seals, accredited by their organizations.
    sealing = ["osce", "un", "eu", "nato"]
    assert len(sealing) == sc.mandate.threshold
    producer = await _setup(kafka_bootstrap, topics, m)
    genuine: list[Pos] = []
    bad: dict[Pos, str] = {}
    try:
        for raw in sc.node_accreditations:
            await producer.send_and_wait(topics.registry, raw)
        for _ in range(5):
            genuine += [
                await _publish_at(producer, topics, org, m.next_report(org, i))
                for org in ORGS
                for i in (1, 2)
            ]
        flipped = _flip(m.next_report("un", 1))
        bad[await _publish_at(producer, topics, "un", flipped)] = "bad_signature"
        rogue = ReportSigner(demo_key("rogue")).sign(m.draft("eu", 1))
        bad[await _publish_at(producer, topics, "eu", rogue)] = "unknown_key"
        misplaced = m.next_report("sco", 1)  # on the wrong topic
        bad[await _publish_at(producer, topics, "nato", misplaced)] = "wrong_topic"
    finally:
        await producer.stop()

    db, final_db = tmp_path / "osce.db", tmp_path / "osce.final.db"
    node = build_node(_sealing_config(kafka_bootstrap, topics, m, db, final_db))
    everything = [*genuine, *bad]
    async with running_sealers(
        kafka_bootstrap, topics, m.scenario, tmp_path, sealing[1:], interval_ms=SEAL_INTERVAL_MS
    ):
        task = asyncio.create_task(node.run())
        try:
            async with asyncio.timeout(120):
                # Every record covered by a final seal and judged, and the OSCE policy's
                # decision made on those final verdicts.
                while len(settled_verdicts(final_db, everything)) < len(everything) or not (
                    db.exists() and _read(db, NodeStore.decisions)
                ):
                    if task.done():
                        await task  # surface the node's exception
                    await asyncio.sleep(0.2)
        finally:
            node.stop()
            await task

    store = NodeStore(db, read_only=True)
    try:
        assert store.count_reports() == len(genuine)
        node_q = {(t, p, o): r for t, p, o, r, _ in store.quarantine_rows()}
        heads = store.chain_heads()
        assert store.decisions(), "the OSCE policy decides on this data"
    finally:
        store.close()
    assert node_q == bad
    assert all(heads[f"{org}-obs-{i}"].seq == 5 for org in ORGS for i in (1, 2))

    # The node's final verdicts: the same as its provisional ones.
    final = settled_verdicts(final_db, everything)
    assert final == {**dict.fromkeys(genuine, ("accepted", "")), **{
        pos: ("quarantined", reason) for pos, reason in bad.items()
    }}  # fmt: skip
    fs = FinalStore(final_db, read_only=True)
    try:
        last = fs.last_epoch()
    finally:
        fs.close()
    assert last is not None

    # The auditor replays the same log: every report is sealed, every genuine one accepted,
    # and the violations are exactly the node's quarantined positions, with its reasons.
    result = await audit(kafka_bootstrap, sc.mandate, topics=topics, work_dir=tmp_path)
    assert result.final is not None
    assert result.final.mismatch is None and result.final.stuck is None
    assert not [u for u in result.final.not_sealed if topics.org_of_report_topic(u.topic)]
    assert sum(result.accepted.values()) == len(genuine)
    assert {(v.topic, v.partition, v.offset): v.reason for v in result.violations} == node_q
    audited = {pos: result.final.verdicts[pos] for pos in everything}
    assert {pos: (r.status, r.reason) for pos, r in audited.items()} == final
    # ... from the same final state as the node's sealer at the node's last epoch.
    states = {row.epoch: row.state_digest for row in result.final.epochs}
    assert states[last[0]] == last[1]


async def test_restart_resumes_with_nothing_lost_or_doubled(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    m = live_mission()
    producer = await _setup(kafka_bootstrap, topics, m)
    db = tmp_path / "un.db"
    try:
        for _ in range(10):
            await _publish(producer, topics, "un", m.next_report("un", 1))
        await _run_until(build_node(_config(kafka_bootstrap, topics, m, db, "un")), db, 10)
        for _ in range(10):
            await _publish(producer, topics, "un", m.next_report("un", 1))
    finally:
        await producer.stop()

    # Simulate a crash after the store commit but before Kafka's offset commit: rewind the
    # group's committed offsets to 0. The store's own positions must win.
    group = f"{topics.prefix}node.un"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topics.reports("un"), p) for p in (0, 1)]
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()

    await _run_until(build_node(_config(kafka_bootstrap, topics, m, db, "un")), db, 20)
    store = NodeStore(db, read_only=True)
    assert store.count_reports() == 20
    assert store.quarantine_rows() == []
    assert store.chain_heads()["un-obs-1"].seq == 20


async def test_demo_command_runs_against_the_test_broker(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`obus demo` end to end (six node processes, injections, auditor) on this broker, in a
    working directory of its own (never another run's stores)."""
    env = {**os.environ, "OBUS_BOOTSTRAP": kafka_bootstrap, "OBUS_LOG_JSON": "1"}
    work = tmp_path / "demo"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.cli", "demo", "--reports-per-observer", "4",
        "--dir", str(work),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "all six nodes hold the identical set of reports" in text
    assert "DEMO OK" in text
    assert "all 6 final stores are identical" in text
    assert "the auditor derived the same final state as the six nodes" in text
    assert "the offline audit derived the same final state as the six nodes" in text
    # The observer on UN's web form (when Chromium and the built form are there) delivers
    # reports of its own, genuine like the rest; without them the demo says it skipped the form.
    delivered = re.search(r"(\d+) reports filled in, signed in the browser", text)
    assert delivered or "web form skipped" in text
    web = int(delivered[1]) if delivered else 0
    # The six final stores, read here: one final state, every report final, each seal made
    # final by 4 organizations at least.
    states = set()
    for org, _ in ORGANIZATIONS:
        path = work / f"{org}.final.db"
        store = FinalStore(path, read_only=True)
        try:
            states.add((store.last_epoch(), store.fingerprint()))
            seals = store.seals(limit=1000)
        finally:
            store.close()
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            reports = dict(
                con.execute(
                    "SELECT status || ':' || reason, count(*) FROM verdicts"
                    " WHERE topic LIKE '%.reports.%' GROUP BY status, reason"
                ).fetchall()
            )
        # 18 observers x 4 reports, the 12 of the escalation and the web form's; the 2
        # injected records
        assert reports == {
            "accepted:": 84 + web,
            "quarantined:bad_signature": 1,
            "quarantined:unknown_key": 1,
        }, org
        assert seals and all(len(s["signers"]) >= 4 for s in seals), org
    assert len(states) == 1, states


LONG_MAX = str(2**63 - 1)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
WEST = Zone("west", "Lowlands", 47.0, 35.0, 48.0, 37.0)


async def _create_time_topics(bootstrap: str, topics: Topics) -> None:
    """The bus's topics, then what a hostile operator may do: the report and trust topics
    switched to CreateTime, so clients set every broker timestamp, any distance away."""
    specs = standard_topics(topics, ORGS, partitions=2)
    await ensure_topics(bootstrap, specs)
    configs = (
        ("message.timestamp.type", "CreateTime"),
        ("message.timestamp.before.max.ms", LONG_MAX),
        ("message.timestamp.after.max.ms", LONG_MAX),
    )
    trust = (topics.registry, topics.mandate)
    switched = [
        TopicSpec(s.name, s.partitions, configs)
        for s in specs
        if topics.org_of_report_topic(s.name) or s.name in trust
    ]
    changes = await align_topic_configs(bootstrap, switched)
    assert {(c.topic, c.name) for c in changes} >= {
        (s.name, "message.timestamp.type") for s in switched
    }


async def test_broker_timestamps_decide_no_provisional_verdict(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The same records (registry, a mandate version and reports) are published to two
    prefixes on CreateTime topics, with broker timestamps that differ everywhere (0, far past,
    far future, "just now" on a backdated report, the signer's claimed time on a report from
    the future, a mandate version stamped after its own end). A node reads each prefix: it
    applies the version in both runs, and every record gets the same provisional verdict, the
    one its own clock gives (``clock_skew`` beyond the skew; a report beyond the delivery lag
    is accepted provisionally, the lag being the final judge's), with the same chain heads. The timestamps are stored as they came, as
    information."""
    m = live_mission()
    now, lag = m.now, m.scenario.mandate.delivery_lag_ms
    past, future = now - 400 * DAY_MS, now + 300 * DAY_MS
    v1 = m.scenario.mandate
    v2 = dataclasses.replace(v1, version=2, zones=(*v1.zones, WEST))
    v2_raw = sign_mandate(v2, [m.scenario.org_roots[o] for o in ORGS[:4]]).encode()
    honest = [m.next_report("un", 1) for _ in range(3)]
    backdated = now - lag - DAY_MS
    late = m.next_report("eu", 1, observed_at_ms=backdated - HOUR_MS, signed_at_ms=backdated)
    ahead = now + HOUR_MS
    early = m.next_report("osce", 1, observed_at_ms=now - 600_000, signed_at_ms=ahead)
    west = m.next_report("nato", 1, zone="west", location=Location(47.5, 36.0, 100, "Lowtown"))
    # (organization, record, its broker timestamp in run 0 and in run 1)
    timed = [
        ("un", honest[0], (past, future)),
        ("un", honest[1], (0, now + 50 * 60_000)),
        ("un", honest[2], (future, 1)),
        ("eu", late, (now, backdated)),
        ("osce", early, (ahead, past)),
        ("nato", west, (1, now)),
    ]
    expected = [
        ("accepted", ""),
        ("accepted", ""),
        ("accepted", ""),
        ("accepted", ""),
        ("quarantined", "clock_skew"),
        ("accepted", ""),
    ]
    runs = []
    for run in (0, 1):
        topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
        await _create_time_topics(kafka_bootstrap, topics)
        producer = reliable_producer(kafka_bootstrap)
        await producer.start()
        sent: list[tuple[str, int, int]] = []
        try:
            for i, raw in enumerate(m.registry):
                stamp = past + i if run == 0 else future - i
                await producer.send_and_wait(topics.registry, raw, timestamp_ms=stamp)
            # Stamped after version 2's end in run 0, at 0 in run 1.
            await producer.send_and_wait(topics.mandate, v2_raw, timestamp_ms=(2**63 - 1, 0)[run])
            for org, raw, stamps in timed:
                md = await producer.send_and_wait(
                    topics.reports(org), raw, partition=0, timestamp_ms=stamps[run]
                )
                sent.append((md.topic, md.partition, md.offset))
        finally:
            await producer.stop()
        db = tmp_path / f"run{run}.db"
        node = build_node(_config(kafka_bootstrap, topics, m, db))
        await _run_until(node, db, len(timed))
        assert node.trust.mandate.version == 2
        assert dict(node.registry.alarms) == {}
        store = NodeStore(db, read_only=True)
        try:
            quarantined = {(t, p, o): r for t, p, o, r, _ in store.quarantine_rows()}
            logged = {(t, p, o): lt for t, p, o, lt, _, _ in store.log_records()}
            heads = store.chain_heads()
        finally:
            store.close()
        verdicts = [
            ("quarantined", quarantined[pos]) if pos in quarantined else ("accepted", "")
            for pos in sent
        ]
        assert verdicts == expected, run
        # Kept as the broker gave them: information, decided nothing.
        assert [logged[pos] for pos in sent] == [s[run] for _, _, s in timed]
        runs.append(heads)
    assert runs[0] == runs[1]
    assert runs[0]["un-obs-1"].seq == 3
