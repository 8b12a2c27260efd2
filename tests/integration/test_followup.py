"""Follow-up on a real Kafka broker: decisions on final verdicts and their publication naming
the seal they rest on, others' decisions read and shown (never acted upon) under the final
trust state, joint statements at k of n (a co-signature read after a restart counts), and the
dashboard's API.

Every test uses its own topic prefix; nodes run in this process as asyncio tasks with their
sealers and their dashboards on free 127.0.0.1 ports, beside sealers of other organizations so
that k = 4 of them seal the bus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from bus.crypto import SigningKey
from bus.decision import PublishedDecision, next_link, verify_decision
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.kafka.replay import replay
from bus.model import Category, Envelope, Report, Role, Signature, sha256
from bus.policy import Decision, decide_all, observation_from_stored
from bus.policy_file import load_policy
from bus.store.final_reads import FinalReads
from bus.store.node import NodeStore
from bus.topics import Topics, report_headers, standard_topics
from bus.verify import ChainHead
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.org_node.config import NodeConfig, SealSettings
from nodes.org_node.ingest import OrgNode
from nodes.org_node.process import build_node
from nodes.org_node.sealer import Sealer, SealerConfig
from nodes.org_node.statements import draft, read_board, sign
from tests.mission import Mission, make_mission
from tests.unit.test_dashboard_auth import dashboard_auth, logged_in

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "deploy" / "policies"
ORGS = [o for o, _ in ORGANIZATIONS]
HOUR = 3_600_000


@dataclass
class World:
    """A mission on the broker: topics, registry with node keys, a producer."""

    bootstrap: str
    topics: Topics
    m: Mission
    producer: AIOKafkaProducer
    tmp: Path
    node_keys: dict[str, SigningKey] = field(default_factory=dict)

    async def publish(self, raw: bytes, org: str | None = None) -> None:
        rep = Report.decode(Envelope.decode(raw).payload)
        await self.producer.send_and_wait(
            self.topics.reports(org or rep.org),
            raw,
            key=rep.observer_id.encode(),
            headers=report_headers(rep.report_id, rep.org, rep.observer_id),
        )

    def config(self, org: str, **changes: Any) -> NodeConfig:
        cfg = NodeConfig(
            org=org,
            bootstrap=self.bootstrap,
            db_path=self.tmp / f"{org}.db",
            mandate=self.m.scenario.mandate,
            policy=load_policy(POLICIES / f"{org}.toml"),
            topics=self.topics,
            poll_timeout_ms=200,
            node_key=self.node_keys[org],
            http_port=0,
            dashboard_auth=dashboard_auth(),
            seal=SealSettings(
                root=self.m.scenario.mandate,
                db_path=self.final_db(org),
                node_key=self.node_keys[org],
                interval_ms=SEAL_INTERVAL_MS,
            ),
        )
        return dataclasses.replace(cfg, **changes)

    def final_db(self, org: str) -> Path:
        return self.tmp / f"{org}.final.db"

    def sealer(self, org: str) -> SealerConfig:
        """A sealer of ``org`` alone (no node): it reads, proposes and cosigns seals."""
        return SealerConfig(
            org=org, bootstrap=self.bootstrap, db_path=self.final_db(org),
            root=self.m.scenario.mandate, node_key=self.node_keys[org], topics=self.topics,
            interval_ms=SEAL_INTERVAL_MS, takeover_ms=SEAL_INTERVAL_MS, poll_timeout_ms=100,
            metadata_refresh_ms=1000,
        )  # fmt: skip


SEAL_INTERVAL_MS = 300


@asynccontextmanager
async def sealers(w: World, *orgs: str) -> AsyncIterator[None]:
    """Sealers of other organizations, so that k = 4 of them seal beside the nodes."""
    running = [Sealer(w.sealer(org)) for org in orgs]
    tasks = [asyncio.create_task(s.run()) for s in running]
    try:
        yield
    finally:
        for s in running:
            s.stop()
        await asyncio.gather(*tasks)


@asynccontextmanager
async def world(bootstrap: str, tmp: Path) -> AsyncIterator[World]:
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    # The clock of now: the nodes and the final judge bound delivery lag against it.
    m = make_mission(now_ms=time.time_ns() // 1_000_000)
    keys = {org: demo_key(f"it:node:{org}") for org in ORGS}
    for org, key in keys.items():
        m.accredit(f"{org}-node", org, key, Role.NODE)
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for raw in [*m.scenario.accreditations, *m.registry]:
            await producer.send_and_wait(topics.registry, raw)
        yield World(bootstrap, topics, m, producer, tmp, keys)
    finally:
        await producer.stop()


@asynccontextmanager
async def running(*nodes: OrgNode) -> AsyncIterator[list[OrgNode]]:
    tasks = [asyncio.create_task(n.run()) for n in nodes]
    try:
        yield list(nodes)
    finally:
        for n in nodes:
            n.stop()
        await asyncio.gather(*tasks)


async def until(check: Callable[[], Any], timeout_s: float = 60, what: str = "") -> Any:
    """Poll check() (sync) until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                got = check()
            except Exception:  # noqa: BLE001 - the store may not exist yet
                got = None
            if got:
                return got
            await asyncio.sleep(0.2)
    raise AssertionError(what)


def read(db: Path, fn: Callable[[NodeStore], Any]) -> Any:
    store = NodeStore(db, read_only=True)
    try:
        return fn(store)
    finally:
        store.close()


def final_epoch(db: Path) -> int:
    """The last epoch a node's sealer judged and stored (0: none, or no store yet)."""
    if not db.exists():
        return 0
    reads = FinalReads(db)
    try:
        return reads.last_epoch()
    finally:
        reads.close()


async def settled(node: OrgNode) -> None:
    """Until the node's follow-up has evaluated every final epoch its sealer stored."""
    f = node.extras.followup
    seal = node.config.seal
    assert seal is not None

    def done() -> bool:
        return (
            f.started.is_set()
            and f.pending == 0
            and f.engine is not None
            and f.engine.final_epoch == final_epoch(seal.db_path)
        )

    await until(done, what="the follow-up evaluated every final epoch")


def dashboard_url(node: OrgNode) -> str:
    return str(node.extras.dashboard.url)


async def pattern_reports(w: World) -> list[bytes]:
    """Ceasefire violations by two observers of two organizations, one bad record."""
    m = w.m
    base = m.now - 2 * HOUR  # one 12-hour window, observed before signed
    raws = []
    for i, (org, n) in enumerate([("un", 1), ("osce", 1), ("un", 2), ("osce", 2)]):
        raw = m.next_report(
            org, n, category=Category.CEASEFIRE_VIOLATION, severity=3, observed_at_ms=base + i
        )
        await w.publish(raw)
        raws.append(raw)
    for org in ("eu", "nato"):
        raw = m.next_report(org, 1, category=Category.SHELLING, severity=5)
        await w.publish(raw)
        raws.append(raw)
    # a broken signature: quarantined as bad_signature by every node
    env = Envelope.decode(m.next_report("un", 1))
    s = env.signatures[0]
    bad = dataclasses.replace(
        env, signatures=(Signature(s.key_id, bytes([s.sig[0] ^ 1]) + s.sig[1:]),)
    )
    await w.publish(bad.encode(), "un")
    return raws


async def test_decisions_published_verified_and_shown_by_others_never_acted_upon(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with world(kafka_bootstrap, tmp_path) as w, sealers(w, "eu", "nato"):
        raws = await pattern_reports(w)
        osce, un = build_node(w.config("osce")), build_node(w.config("un"))
        async with running(osce, un):
            db_o, db_u = tmp_path / "osce.db", tmp_path / "un.db"
            await until(
                lambda: read(db_u, lambda s: [
                    d for d in s.peer_decisions() if d["org"] == "osce"
                ]), what="un sees osce's published decision",
            )  # fmt: skip
            await until(
                lambda: read(db_o, lambda s: [d for d in s.peer_decisions() if d["org"] == "un"]),
                what="osce sees un's published decisions",
            )
            async with (
                logged_in(dashboard_url(un)) as http,
                http.get(dashboard_url(un) + "api/decisions/others") as resp,
            ):
                assert resp.status == 200
                others = await resp.json()
            await settled(osce)
            await settled(un)
        own_o = read(db_o, lambda s: s.own_decisions())
        pattern = [sd for sd in own_o if sd.decision.rule == "ceasefire-pattern"]
        assert len(pattern) == 1
        d = pattern[0].decision
        assert d.kind == "aggregate" and d.publish and pattern[0].pub_state == "published"
        digests = dict(read(db_o, lambda s: s.accepted_digests()))
        assert len(d.evidence) == 3  # the window reached its count at the third report
        assert all(digests[e.report_id] == e.digest for e in d.evidence)
        # Final rules: the decision rests on a final seal, at its time, as a replay decides.
        assert d.final and d.decided_at_ms == _seal_time(w.final_db("osce"), d.seal_epoch)
        assert d in _replayed(w, "osce")
        # The published record is the signed decision, naming the seal it rests on.
        records = [r async for r in replay(kafka_bootstrap, [w.topics.decisions("osce")])]
        assert len(records) == sum(1 for sd in own_o if sd.decision.publish)
        vd = verify_decision(records[0].value, w.m.keyring, topic_org="osce")
        assert isinstance(vd.decision, PublishedDecision)
        assert {r.decision.decision_id for r in [vd]} <= {sd.decision.decision_id for sd in own_o}
        published = next(
            verify_decision(r.value, w.m.keyring, topic_org="osce").decision
            for r in records
            if r.value is not None
            and PublishedDecision.decode(Envelope.decode(r.value).payload).decision_id
            == d.decision_id
        )
        assert (published.seal_epoch, published.seal_digest) == (d.seal_epoch, d.seal_digest)
        assert published.seal_digest == _seal_digest(w.final_db("un"), d.seal_epoch)
        # UN shows osce's decision with its seal, the evidence checked against UN's own store ...
        seen = [o for o in others if o["org"] == "osce"]
        assert seen and seen[0]["evidence_check"] == {"matches": 3}
        assert all(o["seal_epoch"] > 0 and o["seal_digest"] for o in seen)
        # ... and never acts on it: UN's decisions are exactly what its own policy makes of
        # the sealed log, recomputed here from UN's stores.
        own_u = {sd.decision.decision_id for sd in read(db_u, lambda s: s.own_decisions())}
        assert own_u == {d.decision_id for d in _replayed(w, "un")}
        assert all(i.startswith("un:") for i in own_u)
        q = read(db_u, lambda s: s.quarantine_rows())
        assert [r[3] for r in q] == ["bad_signature"]
        assert len(raws) == read(db_u, lambda s: s.count_reports())


def _seal_time(final_db: Path, epoch: int) -> int:
    reads = FinalReads(final_db)
    try:
        [ref] = reads.seal_refs(epoch, epoch)
        return ref.time_ms
    finally:
        reads.close()


def _seal_digest(final_db: Path, epoch: int) -> bytes | None:
    reads = FinalReads(final_db)
    try:
        return reads.seal_digest(epoch)
    finally:
        reads.close()


def _replayed(w: World, org: str) -> list[Decision]:
    """The decisions a replay of the node's sealed log makes: every epoch of its final store,
    the accepted reports in the judge's order, their bytes from the node's store."""
    reads = FinalReads(w.final_db(org))
    store = NodeStore(w.tmp / f"{org}.db", read_only=True)
    try:
        last = reads.last_epoch()
        rows = reads.accepted_reports(1, last)
        contents = store.report_contents((r.topic, r.partition, r.offset) for r in rows)
        epochs = []
        for seal in reads.seal_refs(1, last):
            raws = [contents[(r.topic, r.partition, r.offset)] for r in rows
                    if r.judged_epoch == seal.epoch]  # fmt: skip
            seen = [observation_from_stored(raw, sha256(raw)) for raw in raws if raw]
            epochs.append((seal, [o for o in seen if o is not None]))
    finally:
        store.close()
        reads.close()
    return decide_all(load_policy(POLICIES / f"{org}.toml"), epochs)


async def test_restart_makes_no_decision_twice_and_publishes_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with world(kafka_bootstrap, tmp_path) as w, sealers(w, "osce", "eu", "nato"):
        await pattern_reports(w)
        db = tmp_path / "un.db"
        node = build_node(w.config("un", http_port=None))
        async with running(node):
            await until(lambda: read(db, lambda s: s.own_decisions()), what="un decides")
            await settled(node)
        first = read(db, lambda s: s.own_decisions())
        for _ in range(3):  # more reports after the restart
            await w.publish(w.m.next_report("nato", 2, severity=5))
        node = build_node(w.config("un", http_port=None))
        async with running(node):
            await until(
                lambda: len(read(db, lambda s: s.own_decisions())) > len(first),
                what="un decides on the new reports",
            )
            await until(
                lambda: all(sd.pub_state == "published"
                            for sd in read(db, lambda s: s.own_decisions()) if sd.decision.publish),
                what="un publishes them",
            )  # fmt: skip
            await settled(node)
        after = read(db, lambda s: s.own_decisions())
        ids = [sd.decision.decision_id for sd in after]
        assert len(ids) == len(set(ids))
        assert {sd.decision.decision_id for sd in first} <= set(ids)
        assert sorted(ids) == sorted(d.decision_id for d in _replayed(w, "un"))
        records = [r async for r in replay(kafka_bootstrap, [w.topics.decisions("un")])]
        published = [sd for sd in after if sd.pub_state == "published"]
        assert len(records) == len(published) == sum(1 for sd in after if sd.decision.publish)
        assert sorted(sd.pub_seq for sd in published) == list(range(1, len(published) + 1))
        # One chain on the topic, continued after the restart from the stored head.
        before = sum(1 for sd in first if sd.pub_state == "published")
        assert 0 < before < len(records)
        head = None
        for r in records:
            assert r.value is not None
            d = verify_decision(r.value, w.m.keyring, topic_org="un").decision
            assert (d.seq, d.prev_digest) == next_link(head)
            assert d.final  # the shipped policies act on final verdicts
            head = ChainHead(d.seq, sha256(r.value))


async def test_joint_statement_valid_at_four_of_six_and_blocks_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with world(kafka_bootstrap, tmp_path) as w, sealers(w, "un", "osce", "nato"):
        raws = await pattern_reports(w)
        detention = w.m.next_report("sco", 1, category=Category.DETENTION, severity=3)
        await w.publish(detention)  # the EU's own policy decides on this one
        raws.append(detention)
        db = tmp_path / "eu.db"
        mandate = w.m.scenario.mandate
        async with running(build_node(w.config("eu"))):
            await until(lambda: read(db, lambda s: s.count_reports() == len(raws)))
            # The node keys are accredited once the first epoch is final.
            await until(lambda: final_epoch(w.final_db("eu")) >= 1, what="a final seal")
            ids = [Report.decode(Envelope.decode(r).payload).report_id for r in raws[:4]]
            refs = tuple(
                sorted(
                    (e for e in (read(db, lambda s: s.accepted_digests()))),
                    key=lambda x: x[0],
                )
            )
            from bus.policy import Evidence  # noqa: PLC0415

            evidence = tuple(Evidence(r, d) for r, d in refs if r in ids)
            stmt = await draft(
                w.bootstrap, w.topics, mandate, org="un", key=w.node_keys["un"],
                title="Ceasefire violations north", text="Four violations in half a day.",
                references=evidence,
            )  # fmt: skip
            # While the statement is pending, the EU node keeps deciding on its own.
            await until(lambda: read(db, lambda s: s.own_decisions()), what="eu decides")
            await until(
                lambda: [s for s in read(db, lambda s: s.statements()) if s["signed_by"] == ["un"]],
                what="the eu node holds the draft, final",
            )
        # The EU node is down; three organizations co-sign, and somebody forges a fourth.
        for org in ("osce", "eu"):  # each with its own node's final trust state
            status = await sign(
                w.bootstrap, w.topics, mandate, statement_id=stmt.statement_id,
                key=w.node_keys[org], db=db, final_db=w.final_db(org),
            )  # fmt: skip
        assert status.state == "pending" and sorted(status.signed_by) == ["eu", "osce", "un"]
        from bus.statement import cosign  # noqa: PLC0415
        from nodes.org_node.statements import publish_statement_record  # noqa: PLC0415

        board = await read_board(w.bootstrap, w.topics, mandate, final_db=w.final_db("nato"))
        forged = cosign(board.drafts[stmt.statement_id], demo_key("forger"))
        await publish_statement_record(w.bootstrap, w.topics, forged)
        status = await sign(
            w.bootstrap, w.topics, mandate, statement_id=stmt.statement_id,
            key=w.node_keys["nato"], final_db=w.final_db("nato"),
        )  # fmt: skip
        assert status.valid and len(status.signed_by) == 4
        # Restarted, the EU node counts the co-signatures of the statement drafted before.
        node = build_node(w.config("eu"))
        async with running(node):
            rows = await until(
                lambda: [s for s in read(db, lambda s: s.statements()) if len(s["signed_by"]) == 4],
                what="the eu node shows 4 signatures",
            )
            assert sorted(rows[0]["signed_by"]) == ["eu", "nato", "osce", "un"]
            rejected = await until(lambda: read(db, lambda s: s.board_rejected()))
            assert [r[3] for r in rejected] == ["unknown_key"]
            async with (
                logged_in(dashboard_url(node)) as http,
                http.get(dashboard_url(node) + "api/statements") as resp,
            ):
                [st] = await resp.json()
        assert st["state"] == "valid" and st["threshold"] == 4 and st["organizations"] == 6
        # Another organization's final trust state gives the same: valid, and final.
        async with asyncio.timeout(60):
            while True:
                board = await read_board(
                    w.bootstrap, w.topics, mandate, final_db=w.final_db("nato")
                )
                final = board.final.get(stmt.statement_id)
                if final is not None and not board.unsealed:
                    break
                await asyncio.sleep(0.5)
        assert final.valid and sorted(final.signed_by) == ["eu", "nato", "osce", "un"]
        assert [r[1] for r in board.rejected] == ["unknown_key"]
        # A co-signer refuses references its own store does not hold.
        other = tmp_path / "empty.db"
        NodeStore(other).close()
        with pytest.raises(Exception, match="refusing to sign"):
            await sign(
                w.bootstrap, w.topics, mandate, statement_id=stmt.statement_id,
                key=w.node_keys["sco"], db=other, final_db=w.final_db("eu"),
            )  # fmt: skip


async def test_dashboard_api_health_and_metrics(kafka_bootstrap: str, tmp_path: Path) -> None:
    async with world(kafka_bootstrap, tmp_path) as w, sealers(w, "un", "eu", "nato"):
        raws = await pattern_reports(w)
        node = build_node(w.config("osce"))
        db = tmp_path / "osce.db"
        async with running(node):
            await until(
                lambda: read(db, lambda s: [d for d in s.own_decisions() if d.pub_state == "published"])
            )  # fmt: skip
            base = dashboard_url(node)
            assert base.startswith("http://127.0.0.1:")
            async with logged_in(base) as http:

                async def get(path: str) -> tuple[int, Any]:
                    async with http.get(base + path) as r:
                        body = await (r.json() if "json" in r.content_type else r.text())
                        return r.status, body

                status, summary = await get("api/summary")
                assert status == 200 and summary["reports_verified"] == len(raws)
                _, page = await get("api/reports?limit=3")
                reports = page["reports"]
                assert len(reports) == 3
                assert {r["provisional_status"] for r in reports} == {"accepted"}
                _, zone = await get("api/reports?zone=east")
                assert zone["reports"] == []
                assert (await get("api/reports?limit=x"))[0] == 400
                _, q = await get("api/quarantine")
                assert [r["reason"] for r in q["records"]] == ["bad_signature"]
                assert q["by_reason"] == {"bad_signature": 1}
                _, dec = await get("api/decisions")
                pattern = [d for d in dec if d["rule"] == "ceasefire-pattern"]
                assert pattern and pattern[0]["publication"] == "published"
                assert len(pattern[0]["evidence"]) == 3
                _, trends = await get("api/trends")
                assert {s["rule"] for s in trends["early_warning"]} <= {"ceasefire-escalation"}
                assert "north" in trends["daily"]["zones"]
                # Seals replace the checkpoint witness: its API is gone, and the seals panel
                # says "sealed" only over a final seal a quorum of organizations signed.
                assert (await get("api/checkpoints"))[0] == 404
                _, seals = await get("api/seals")
                assert seals["state"] == "sealed"
                assert len(set(seals["seals"][0]["signers"])) >= w.m.scenario.mandate.threshold
                # Health and metrics are on the ops port, never beside reports (test_ops).
                assert (await get("healthz"))[0] == 404
                assert (await get("metrics"))[0] == 404
                status, page = await get("")
                assert status == 200 and "bad_signature" in page and "<script" not in page
                assert "http://" not in page.replace(base, "").replace(
                    "http://www.w3.org/2000/svg", ""
                )
                status, svg = await get("map.svg")
                assert status == 200 and svg.count('class="report"') == len(raws)
