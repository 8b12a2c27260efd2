"""Trust lifecycle on a real Kafka broker: mandate rotation followed by nodes and the auditor,
revocation through `obus org revoke` quarantining later reports everywhere.

Every test uses its own topic prefix. Nodes run in this process as asyncio tasks, beside
sealers of k = 4 organizations (their accredited node keys) that seal the bus, so that the
auditor, which judges final verdicts only, has a verdict on every record. Where a trust change
must be in force for a later record, the test waits until the epoch that sealed the change is
final before logging the record: trust takes effect at the epoch after its own (:mod:`bus.judge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bus.judge import RecordPos as Pos
from bus.kafka.admin import end_offsets, ensure_topics
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
from nodes.org_node.sealer import Sealer, SealerConfig
from nodes.runtime.files import write_key
from tests.final_rows import settled_verdicts
from tests.mission import Mission, live_mission

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
REPO = Path(__file__).resolve().parents[2]
WEST = Zone("west", "Lowlands", 47.0, 35.0, 48.0, 37.0)
SEALING = ("un", "osce", "eu", "nato")  # k = 4 organizations' node keys seal the bus
SEAL_INTERVAL_MS = 300


@pytest.fixture
def topics() -> Topics:
    return Topics(f"t{uuid.uuid4().hex[:10]}.")


async def _setup(bootstrap: str, topics: Topics, m: Mission) -> AIOKafkaProducer:
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    # The observers' accreditations, and the node keys the sealers propose and cosign with.
    for raw in [*m.scenario.accreditations, *m.scenario.node_accreditations]:
        await producer.send_and_wait(topics.registry, raw)
    return producer


async def _publish(producer: AIOKafkaProducer, topics: Topics, raw: bytes) -> Pos:
    """Publish a report on its organization's topic; its position on the log."""
    rep = Report.decode(Envelope.decode(raw).payload)
    md = await producer.send_and_wait(
        topics.reports(rep.org),
        raw,
        key=rep.observer_id.encode(),
        headers=report_headers(rep.report_id, rep.org, rep.observer_id),
    )
    return md.topic, md.partition, md.offset


@contextlib.asynccontextmanager
async def _sealers(bootstrap: str, topics: Topics, m: Mission, tmp: Path) -> AsyncIterator[Path]:
    """Sealers of the :data:`SEALING` organizations alone (no node), with final stores of their
    own in ``tmp``; yields the first one's final store. Stopped and awaited on exit, a
    sealer's exception surfaced."""

    def config(org: str) -> SealerConfig:
        return SealerConfig(
            org=org, bootstrap=bootstrap, db_path=tmp / f"{org}.final.db",
            root=m.scenario.mandate, node_key=m.scenario.node_keys[org], topics=topics,
            interval_ms=SEAL_INTERVAL_MS, takeover_ms=SEAL_INTERVAL_MS, poll_timeout_ms=100,
            metadata_refresh_ms=1000,
        )  # fmt: skip

    running = [Sealer(config(org)) for org in SEALING]
    tasks = [asyncio.create_task(s.run()) for s in running]
    try:
        yield tmp / f"{SEALING[0]}.final.db"
        for task in tasks:
            if task.done():
                await task  # surface a sealer's exception
    finally:
        for s in running:
            s.stop()
        await asyncio.gather(*tasks)


async def _until_sealed(bootstrap: str, topics: Topics, final_db: Path) -> None:
    """Until every record now on the report, mandate and registry topics has a final verdict
    in ``final_db`` (epochs seal prefixes of each partition: its last record then suffices)."""
    pattern = "^" + re.escape(topics.prefix) + r"(reports\.[a-z0-9_-]+|mandate|registry)$"
    ends = await end_offsets(bootstrap, pattern)
    lasts = [(t, p, end - 1) for (t, p), end in ends.items() if end > 0]
    async with asyncio.timeout(120):
        while True:
            if len(await asyncio.to_thread(settled_verdicts, final_db, lasts)) == len(lasts):
                return
            await asyncio.sleep(0.2)


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
    async with _sealers(kafka_bootstrap, topics, m, tmp_path) as final_db:
        try:
            assert await _cli("mandate", "publish", str(v1_file), *common) == 0
            await _publish(producer, topics, m.next_report("un", 1))
            west_before = await _publish(producer, topics, _west_report(m, "un", 2))  # outside_zone
            # UN's node runs while only version 1 is on the bus: it judges both reports at once.
            un_db = tmp_path / "un.db"
            live = _node(kafka_bootstrap, topics, m, un_db, "un")
            live_task = asyncio.create_task(live.run())
            await _until_processed(un_db, 2, live_task)
            assert (
                await _cli("mandate", "publish", str(v2_file), "--previous", str(v1_file), *common)
                == 0
            )
            # Version 2 sealed: the west report logged from now on is judged under it.
            await _until_sealed(kafka_bootstrap, topics, final_db)
            west_after = await _publish(producer, topics, _west_report(m, "osce", 1))  # accepted
            # The forged v3 is refused by `publish` itself; push it raw as a hostile operator
            # would.
            forged_md = await producer.send_and_wait(
                topics.mandate, forged_file.read_bytes(), key=b"jmm-2026:3"
            )
            rollback_md = await producer.send_and_wait(
                topics.mandate, v1_file.read_bytes(), key=b"jmm-2026:1b"
            )
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
        await _until_sealed(kafka_bootstrap, topics, final_db)
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

    # The auditor judges the sealed log from version 1: version 2 applied; the forged version
    # and the rollback rejected; the west report logged before version 2 outside the zone, the
    # one logged after it accepted.
    result = await audit(kafka_bootstrap, v1, topics=topics, work_dir=tmp_path)
    assert result.final is not None
    assert result.final.mismatch is None and result.final.stuck is None
    assert not [u for u in result.final.not_sealed if topics.is_sealed(u.topic)]
    assert result.mandate_versions == [2]
    assert {(v.topic, v.partition, v.offset): v.reason for v in result.violations} == {
        west_before: "outside_zone",
        (forged_md.topic, forged_md.partition, forged_md.offset): "threshold_not_met",
        (rollback_md.topic, rollback_md.partition, rollback_md.offset): "mandate_rollback",
    }
    assert result.final.verdicts[west_after].status == "accepted"
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
    victim_at: dict[Pos, int] = {}  # the victim's reports: position -> seq
    async with _sealers(kafka_bootstrap, topics, m, tmp_path) as final_db:
        try:
            for seq in (1, 2, 3):
                victim_at[await _publish(producer, topics, m.next_report("un", 1))] = seq
                await _publish(producer, topics, m.next_report("osce", 1))
            # Two nodes run while seq 3 is accepted; the revocation reaches them afterwards.
            for org in ("un", "osce"):
                node = _node(kafka_bootstrap, topics, m, tmp_path / f"{org}.db", org)
                early[org] = (node, asyncio.create_task(node.run()))
            for org, (_, task) in early.items():
                await _until_processed(tmp_path / f"{org}.db", 6, task)
            # Seq 3 is also sealed, and so finally accepted, before the revocation is logged.
            await _until_sealed(kafka_bootstrap, topics, final_db)
            code = await _cli(
                "org", "revoke", "--org", "un", "--root-key", str(root_file), "--mandate",
                str(mandate_file), "--key-id", victim.key_id.hex(), "--last-valid-seq", "2",
                "--reason", "device seized", *common,
            )  # fmt: skip
            assert code == 0
            # The revocation sealed: seq 4 and 5, logged from now on, are judged under it.
            await _until_sealed(kafka_bootstrap, topics, final_db)
            for seq in (4, 5):  # revoked
                victim_at[await _publish(producer, topics, m.next_report("un", 1))] = seq
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
        await _until_sealed(kafka_bootstrap, topics, final_db)

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

    # The auditor's final verdicts on the sealed log: seq 3, sealed and accepted before the
    # revocation, withdrawn by it; seq 4 and 5, logged after it took effect, key_revoked (the
    # verdicts of the nodes that ran through the revocation); nothing else fails.
    result = await audit(kafka_bootstrap, m.scenario.mandate, topics=topics, work_dir=tmp_path)
    assert result.final is not None
    assert result.final.mismatch is None and result.final.stuck is None
    assert not [u for u in result.final.not_sealed if topics.is_sealed(u.topic)]
    audited = {victim_at[(v.topic, v.partition, v.offset)]: v.reason for v in result.violations}
    assert audited == states["un"]
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
    async with _sealers(kafka_bootstrap, topics, m, tmp_path) as final_db:
        try:
            for org in ("un", "osce", "eu"):
                root = tmp_path / f"{org}-root.key"
                write_key(root, m.scenario.org_roots[org])
                code = await _cli(
                    "org", "enckey", "--org", org, "--root-key", str(root), "--mandate",
                    str(mandate_file), "--private-out", str(tmp_path / f"{org}.x25519"),
                    "--plaintext-key", *common,
                )  # fmt: skip
                assert code == 0
            # The encryption keys sealed: the restricted report, logged from now on, is judged
            # with them in force.
            await _until_sealed(kafka_bootstrap, topics, final_db)
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
        await _until_sealed(kafka_bootstrap, topics, final_db)

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

    # The auditor's final verdicts: the three reports accepted, the restricted one verified
    # without reading its content.
    result = await audit(kafka_bootstrap, m.scenario.mandate, topics=topics, work_dir=tmp_path)
    assert result.final is not None
    assert not [u for u in result.final.not_sealed if topics.is_sealed(u.topic)]
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
