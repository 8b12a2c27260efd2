"""Trust lifecycle on a real Kafka broker: mandate rotation followed by nodes and the auditor,
revocation through `obus org revoke` quarantining later reports everywhere.

Every test uses its own topic prefix. Nodes run in this process as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import Envelope, Location, Report, Zone
from bus.sign import sign_mandate
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.topics import Topics, report_headers, standard_topics
from nodes.auditor.run import audit
from nodes.cli.main import main
from nodes.cli.trust import read_decryption_key
from nodes.demo.scenario import ORGANIZATIONS
from nodes.org_node.config import NodeConfig
from nodes.org_node.ingest import OrgNode
from nodes.org_node.process import build_node
from nodes.runtime.files import write_key
from tests.mission import Mission, live_mission

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
REPO = Path(__file__).resolve().parents[2]
WEST = Zone("west", "Lowlands", 47.0, 35.0, 48.0, 37.0)


@pytest.fixture
def topics() -> Topics:
    return Topics(f"t{uuid.uuid4().hex[:10]}.")


async def _setup(bootstrap: str, topics: Topics, m: Mission) -> AIOKafkaProducer:
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    for raw in m.scenario.accreditations:
        await producer.send_and_wait(topics.registry, raw)
    return producer


async def _publish(producer: AIOKafkaProducer, topics: Topics, raw: bytes) -> None:
    rep = Report.decode(Envelope.decode(raw).payload)
    await producer.send_and_wait(
        topics.reports(rep.org),
        raw,
        key=rep.observer_id.encode(),
        headers=report_headers(rep.report_id, rep.org, rep.observer_id),
    )


def _node(
    bootstrap: str, topics: Topics, m: Mission, db: Path, org: str, keys: tuple[Path, ...] = ()
) -> OrgNode:
    return build_node(
        NodeConfig(
            org=org,
            bootstrap=bootstrap,
            db_path=db,
            mandate=m.scenario.mandate,
            topics=topics,
            poll_timeout_ms=200,
            decryption_keys=tuple(read_decryption_key(k, org) for k in keys),
        )
    )


async def _until_processed(
    db: Path, n: int, task: asyncio.Task[None], timeout_s: float = 60
) -> None:
    reader = None
    async with asyncio.timeout(timeout_s):
        while True:
            if task.done():
                await task  # surface the node's exception
            if await asyncio.to_thread(db.exists):
                reader = reader or NodeStore(db, read_only=True)
                if sum(reader.positions().values()) >= n:
                    break
            await asyncio.sleep(0.2)
    if reader is not None:
        reader.close()


async def _cli(*argv: str) -> int:
    # The CLI runs its own event loop: give it a thread.
    return await asyncio.to_thread(main, list(argv))


def _west_report(m: Mission, org: str, i: int) -> bytes:
    loc = Location(47.5, 36.0, 100, "Lowtown")
    return m.next_report(org, i, zone="west", location=loc)


async def test_nodes_and_auditor_follow_a_rotation_signed_by_four_of_six(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    m = live_mission()
    roots = m.scenario.org_roots
    v1 = m.scenario.mandate
    v2 = dataclasses.replace(v1, version=2, zones=(*v1.zones, WEST))
    v2_file = tmp_path / "v2.bin"
    v2_file.write_bytes(sign_mandate(v2, [roots[o] for o in ("un", "osce", "eu", "csto")]).encode())
    forged = dataclasses.replace(v1, version=3, zones=(WEST,), threshold=1)
    forged_file = tmp_path / "v3.bin"
    forged_file.write_bytes(
        sign_mandate(forged, [roots[o] for o in ("nato", "sco", "eu")]).encode()
    )
    v1_file = tmp_path / "v1.bin"
    v1_file.write_bytes(m.scenario.mandate_envelope)
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topics.prefix]

    producer = await _setup(kafka_bootstrap, topics, m)
    live = None
    try:
        assert await _cli("mandate", "publish", str(v1_file), *common) == 0
        await _publish(producer, topics, m.next_report("un", 1))
        await _publish(producer, topics, _west_report(m, "un", 2))  # before v2: outside_zone
        # UN's node runs while only version 1 is on the bus: it judges both reports at once.
        un_db = tmp_path / "un.db"
        live = _node(kafka_bootstrap, topics, m, un_db, "un")
        live_task = asyncio.create_task(live.run())
        await _until_processed(un_db, 2, live_task)
        assert (
            await _cli("mandate", "publish", str(v2_file), "--previous", str(v1_file), *common) == 0
        )
        await _publish(producer, topics, _west_report(m, "osce", 1))  # after v2: accepted
        # The forged v3 is refused by `publish` itself; push it raw as a hostile operator would.
        await producer.send_and_wait(topics.mandate, forged_file.read_bytes(), key=b"jmm-2026:3")
        await producer.send_and_wait(topics.mandate, v1_file.read_bytes(), key=b"jmm-2026:1b")
        await _publish(producer, topics, m.next_report("eu", 1))
        await _until_processed(un_db, 4, live_task)
    finally:
        await producer.stop()
        if live is not None:
            live.stop()
            await live_task

    # NATO's node starts only now: it reads version 2 before any report.
    nato_db = tmp_path / "nato.db"
    late = _node(kafka_bootstrap, topics, m, nato_db, "nato")
    task = asyncio.create_task(late.run())
    await _until_processed(nato_db, 4, task)
    late.stop()
    await task
    # Provisional verdicts use the trust each node knew when it judged, never a log time: the
    # west report logged before version 2 is outside_zone at the node that judged it before
    # version 2 existed, and accepted at the node that already knew version 2 (its final
    # verdict, in the sealed order, is version 1's at every node).
    quarantined = {"un": ["outside_zone"], "nato": []}
    for org, node in (("un", live), ("nato", late)):
        assert node is not None
        assert node.trust.mandate.version == 2
        assert [v.mandate.version for v in node.trust.versions] == [1, 2]
        assert dict(node.registry.alarms) == {"threshold_not_met": 1, "mandate_rollback": 1}
        store = NodeStore(tmp_path / f"{org}.db", read_only=True)
        assert store.count_reports() == 4 - len(quarantined[org])
        assert [r[3] for r in store.quarantine_rows()] == quarantined[org]
        store.close()

    result = await audit(kafka_bootstrap, v1, topics=topics)
    assert result.mandate_versions == [2]
    reasons = sorted(v.reason for v in result.violations)
    assert reasons == ["mandate_rollback", "outside_zone", "threshold_not_met"]
    assert sum(result.accepted.values()) == 3


async def test_revocation_quarantines_later_reports_at_every_node_and_in_the_audit(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    m = live_mission()
    root_file = tmp_path / "un-root.key"
    write_key(root_file, m.scenario.org_roots["un"])
    mandate_file = tmp_path / "mandate.bin"
    mandate_file.write_bytes(m.scenario.mandate_envelope)
    victim_id, victim = m.observer("un", 1)
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topics.prefix]

    producer = await _setup(kafka_bootstrap, topics, m)
    early: dict[str, tuple[OrgNode, asyncio.Task[None]]] = {}
    try:
        for _ in range(3):
            await _publish(producer, topics, m.next_report("un", 1))  # seq 1, 2, 3
            await _publish(producer, topics, m.next_report("osce", 1))
        # Two nodes run while seq 3 is accepted; the revocation reaches them afterwards.
        for org in ("un", "osce"):
            node = _node(kafka_bootstrap, topics, m, tmp_path / f"{org}.db", org)
            early[org] = (node, asyncio.create_task(node.run()))
        for org, (_, task) in early.items():
            await _until_processed(tmp_path / f"{org}.db", 6, task)
        code = await _cli(
            "org", "revoke", "--org", "un", "--root-key", str(root_file), "--mandate",
            str(mandate_file), "--key-id", victim.key_id.hex(), "--last-valid-seq", "2",
            "--reason", "device seized", *common,
        )  # fmt: skip
        assert code == 0
        for _ in range(2):
            await _publish(producer, topics, m.next_report("un", 1))  # seq 4, 5: revoked
            await _publish(producer, topics, m.next_report("osce", 1))
    finally:
        await producer.stop()

    for org, (node, task) in early.items():
        await _until_processed(tmp_path / f"{org}.db", 10, task)
        node.stop()
        await task
    # A third node starts only now: it reads the revocation before any report.
    late = _node(kafka_bootstrap, topics, m, tmp_path / "eu.db", "eu")
    task = asyncio.create_task(late.run())
    await _until_processed(tmp_path / "eu.db", 10, task)
    late.stop()
    await task

    def invalid_seqs(store: NodeStore) -> dict[int, str]:
        out = {}
        for _t, _p, _o, reason, _d, raw in _quarantined_raw(store):
            rep = Report.decode(Envelope.decode(raw).payload)
            assert rep.observer_id == victim_id
            out[rep.seq] = reason
        by_id = {rid: seq for rid, seq, _ in store.revoked_after_acceptance()}
        out.update(dict.fromkeys(by_id.values(), "revoked_after_acceptance"))
        return out

    states = {}
    for org in ("un", "osce", "eu"):
        store = NodeStore(tmp_path / f"{org}.db", read_only=True)
        states[org] = invalid_seqs(store)
        valid = _seqs_of(store, victim_id) - {s for _, s, _ in store.revoked_after_acceptance()}
        assert {1, 2} <= valid
        assert {3, 4, 5}.isdisjoint(valid)
        store.close()
    assert (
        states["un"]
        == states["osce"]
        == {3: "revoked_after_acceptance", 4: "key_revoked", 5: "key_revoked"}
    )
    assert states["eu"] == {3: "key_revoked", 4: "key_revoked", 5: "key_revoked"}
    # Every node ends with the same verdict: seq 1-2 valid, seq 3-5 not.
    assert {frozenset(s) for s in states.values()} == {frozenset({3, 4, 5})}

    result = await audit(kafka_bootstrap, m.scenario.mandate, topics=topics)
    revoked = [v for v in result.violations if v.reason == "key_revoked"]
    assert len(revoked) == 3
    assert len(result.violations) == 3
    assert sum(result.accepted.values()) == 7


def _quarantined_raw(store: NodeStore) -> list[tuple[str, int, int, str, str, bytes]]:
    rows = store._db.execute(
        'SELECT topic, partition, "offset", reason, detail, raw FROM quarantine'
    ).fetchall()
    return [(t, p, o, r, d, bytes(raw)) for t, p, o, r, d, raw in rows]


def _seqs_of(store: NodeStore, observer_id: str) -> set[int]:
    rows = store._db.execute("SELECT seq FROM reports WHERE observer_id = ?", (observer_id,))
    return {int(seq) for (seq,) in rows}


async def test_restricted_report_is_readable_by_two_organizations_only(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    from bus.kafka.replay import replay  # noqa: PLC0415
    from bus.trust import KeyRing  # noqa: PLC0415

    m = live_mission()
    mandate_file = tmp_path / "mandate.bin"
    mandate_file.write_bytes(m.scenario.mandate_envelope)
    common = ["--bootstrap", kafka_bootstrap, "--topic-prefix", topics.prefix]
    producer = await _setup(kafka_bootstrap, topics, m)
    try:
        for org in ("un", "osce", "eu"):
            root = tmp_path / f"{org}-root.key"
            write_key(root, m.scenario.org_roots[org])
            code = await _cli(
                "org", "enckey", "--org", org, "--root-key", str(root), "--mandate",
                str(mandate_file), "--private-out", str(tmp_path / f"{org}.x25519"), *common,
            )  # fmt: skip
            assert code == 0
        # The observer takes the recipients' current keys from the registry.
        ring = KeyRing(m.scenario.mandate)
        async for rec in replay(kafka_bootstrap, [topics.registry]):
            ring.apply(Envelope.decode(rec.value))
        recipients = [ring.encryption_key("un"), ring.encryption_key("osce")]
        assert all(r is not None for r in recipients)
        await _publish(producer, topics, m.next_report("un", 1))
        sealed_raw = m.signer("un", 1).sign_sealed(
            m.draft("un", 1, narrative="Names of detainees: restricted."),
            [r for r in recipients if r is not None],
        )
        await _publish_sealed(producer, topics, sealed_raw)
        await _publish(producer, topics, m.next_report("un", 1))
    finally:
        await producer.stop()

    readability, prints = {}, set()
    for org in ("un", "osce", "eu", "nato"):
        db = tmp_path / f"{org}.db"
        keys = (tmp_path / f"{org}.x25519",) if org != "nato" else ()
        node = _node(kafka_bootstrap, topics, m, db, org, keys)
        task = asyncio.create_task(node.run())
        await _until_processed(db, 3, task)
        node.stop()
        await task
        store = NodeStore(db, read_only=True)
        assert store.count_reports() == 3
        assert store.quarantine_rows() == []
        [(rid, recips, state)] = store.sealed_reports()
        readability[org] = state
        assert recips == "un,osce"
        content = store.sealed_content(rid)
        if state == "readable":
            assert content is not None
            assert Report.decode(content).narrative == "Names of detainees: restricted."
        else:
            assert content is None
        prints.add(tuple(store.accepted_digests()))
        store.close()
    assert readability == {
        "un": "readable", "osce": "readable", "eu": "not_recipient", "nato": "not_recipient"
    }  # fmt: skip
    assert len(prints) == 1  # every node holds the same reports, sealed or not

    result = await audit(kafka_bootstrap, m.scenario.mandate, topics=topics)
    assert result.violations == []
    assert result.sealed_verified == 1
    assert sum(result.accepted.values()) == 3


async def _publish_sealed(producer: AIOKafkaProducer, topics: Topics, raw: bytes) -> None:
    from bus.model import SealedReport  # noqa: PLC0415

    s = SealedReport.decode(Envelope.decode(raw).payload)
    await producer.send_and_wait(
        topics.reports(s.org),
        raw,
        key=s.observer_id.encode(),
        headers=report_headers(s.report_id, s.org, s.observer_id),
    )


async def test_trust_demo_runs_against_the_test_broker(kafka_bootstrap: str) -> None:
    """`make demo-trust` end to end (six node processes, the ceremony CLI, auditor)."""
    env = {**os.environ, "OBUS_BOOTSTRAP": kafka_bootstrap, "OBUS_LOG_JSON": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.demo.trust_mission",
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "agree that seq 3-5 of un-obs-2 do not count" in text
    assert "DEMO-TRUST OK" in text
    assert "all 6 final stores are identical" in text
    assert "the auditor derived the same final state as the six nodes" in text
    # The six final stores, read here (SCO's node restarted from version 2 among them): one
    # final state; version 2 in force after the epoch that sealed it; reports 3-5 of the
    # revoked key void (3 revoked after acceptance, 4-5 key_revoked).
    states = set()
    for org, _ in ORGANIZATIONS:
        store = FinalStore(REPO / "var" / "demo-trust" / f"{org}.final.db", read_only=True)
        try:
            states.add((store.last_epoch(), store.fingerprint()))
            counts = store.counts()
            versions = [s["mandate_version"] for s in reversed(store.seals(limit=1000))]
        finally:
            store.close()
        assert counts["revoked_after_acceptance"] == 1, org
        assert counts["quarantined:key_revoked"] == 2, org
        assert counts["quarantined:unknown_key"] == 1, org
        assert counts["quarantined:threshold_not_met"] == 1, org
        assert counts["quarantined:mandate_rollback"] == 1, org
        assert counts.get("deferred", 0) == 0, org
        assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions), org
    assert len(states) == 1, states
