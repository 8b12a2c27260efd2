"""A forged seal on a real Kafka broker: what the checkpoint witness's split-view alarm did, the
sealers do for the whole bus.

NATO's genuinely accredited node key publishes, first on the seals topic, a proposal for epoch 1
that states another root for a report partition at a size every node holds (what a node shown
another copy of the partition, or a lying organization, would sign). Every other
organization's sealer refuses it with ``seal_root_mismatch`` (logged once, counted), nobody
cosigns it, and epoch 1 becomes final on an honest proposal with the same final store at every
node. Every test uses its own topic prefix; the sealers run in this process as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bus.bus_reader import BusReader
from bus.epoch import PartitionSeal
from bus.errors import Reason
from bus.kafka.admin import ensure_topics, topic_partitions
from bus.kafka.client import client_options, reliable_producer
from bus.note import key_name
from bus.seal import SealProposal, sign_proposal
from bus.store.final import FinalStore
from bus.topics import Topics, standard_topics
from nodes.demo.scenario import (
    ORGANIZATIONS,
    Scenario,
    build_scenario,
    node_subject,
    signed_reports,
)
from nodes.org_node.sealer import Sealer, SealerConfig
from tests.final_rows import last_epoch
from tests.logcapture import capture_all_logs

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
HONEST = [o for o in ORGS if o != "nato"]
WAIT_S = 120


def _now() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def topics() -> Topics:
    return Topics(f"f{uuid.uuid4().hex[:10]}.")


async def _setup(bootstrap: str, topics: Topics, sc: Scenario) -> AIOKafkaProducer:
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        await producer.send_and_wait(topics.registry, raw)
    stream = signed_reports(sc, 3, _now(), random.Random(3))
    sent = [
        await producer.send(topics.reports(obs.org), raw, key=obs.observer_id.encode())
        for obs, _, raw in stream
    ]
    await asyncio.gather(*sent)
    return producer


async def _honest_proposal(bootstrap: str, topics: Topics, sc: Scenario) -> SealProposal:
    """What an honest reader of the whole broker would propose for epoch 1 now."""
    tps = await topic_partitions(bootstrap, [topics.registry, topics.mandate, topics.statements])
    tps += await topic_partitions(bootstrap, pattern=topics.reports_pattern)
    reader = BusReader(sc.mandate, topics)
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
            reader.offer_records((tp.topic, tp.partition), 0, got)
    finally:
        await consumer.stop()
    proposal = reader.propose(org="nato", now_ms=_now())
    assert proposal is not None and proposal.epoch == 1
    return proposal


class Fleet:
    """Sealers running as tasks; stop() stops and awaits them."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[Sealer, asyncio.Task[None]]] = {}

    def start(self, cfg: SealerConfig) -> None:
        s = Sealer(cfg)
        self.tasks[cfg.org] = (s, asyncio.create_task(s.run()))

    async def stop(self) -> None:
        for org in list(self.tasks):
            s, task = self.tasks.pop(org)
            s.stop()
            await task

    def check(self) -> None:
        for s, task in self.tasks.values():
            if task.done():
                task.result()
                raise AssertionError(f"sealer {s.config.org} stopped")


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        await f.stop()


def _config(bootstrap: str, topics: Topics, sc: Scenario, org: str, db: Path) -> SealerConfig:
    """A sealer of ``org`` with its accredited node key, sealing every 300 ms."""
    return SealerConfig(
        org=org, bootstrap=bootstrap, db_path=db, root=sc.mandate, node_key=sc.node_keys[org],
        topics=topics, interval_ms=300, takeover_ms=300, poll_timeout_ms=100,
        metadata_refresh_ms=1000,
    )  # fmt: skip


def _first_seal(db: Path) -> dict[str, object] | None:
    if not db.exists():
        return None
    store = FinalStore(db, read_only=True)
    try:
        seals = store.seals(limit=1_000)
        fingerprint = store.fingerprint()
    finally:
        store.close()
    first = [s for s in seals if s["epoch"] == 1]
    return {**first[0], "fingerprint": fingerprint} if first else None


async def test_a_forged_seal_is_refused_by_every_sealer_and_never_final(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    sc = build_scenario(_now(), observers_per_org=1)
    producer = await _setup(kafka_bootstrap, topics, sc)
    try:
        honest = await _honest_proposal(kafka_bootstrap, topics, sc)
        ref = next(r for r in honest.partitions if topics.org_of_report_topic(r[0]) is not None)
        size = honest.partitions[ref].size
        forged = dataclasses.replace(
            honest, partitions={**honest.partitions, ref: PartitionSeal(size, bytes(32))}
        )
        note = sign_proposal(forged, sc.node_keys["nato"], key_name("nato", node_subject("nato")))
        md = await producer.send_and_wait(topics.seals, note)
    finally:
        await producer.stop()
    dbs = {org: tmp_path / f"{org}.final.db" for org in HONEST}
    with capture_all_logs() as logs:
        for org in HONEST:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, dbs[org]))
        async with asyncio.timeout(WAIT_S):
            while not all(_first_seal(db) for db in dbs.values()):
                fleet.check()
                await asyncio.sleep(0.3)
        statuses = {o: s.status() for o, (s, _) in fleet.tasks.items()}
    await fleet.stop()

    # Every sealer refused the forged text once, naming the partition's root.
    refusals = [e for e in logs if e["event"] == "seal_refused" and e["offset"] == md.offset]
    assert sorted(e["org"] for e in refusals) == sorted(HONEST)
    assert {e["reason"] for e in refusals} == {Reason.SEAL_ROOT_MISMATCH.value}
    assert all(s["refusals"] >= 1 and s["alarm"] is None for s in statuses.values())
    assert all(s["equivocations"] == 0 for s in statuses.values())
    # Epoch 1 is final on another text, signed by k organizations (NATO's proposal is no vote),
    # and every node holds the same final store.
    firsts = [_first_seal(db) for db in dbs.values()]
    assert all(f is not None for f in firsts)
    assert len({(f["digest"], f["fingerprint"]) for f in firsts if f}) == 1
    first = firsts[0]
    assert first is not None and first["digest"] != base64.b64encode(forged.digest).decode()
    signers = first["signers"]
    assert isinstance(signers, list) and "nato" not in signers
    assert len(signers) >= sc.mandate.threshold


async def test_a_node_key_nobody_accredited_is_named_once_and_votes_once_accredited(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    """SCO's node runs with a node key its organization has not accredited yet: it judges the
    sealed log like every node but cannot vote, and says so once (``seal_key_not_accredited``,
    naming the key and the command that fixes it) instead of staying silent, however many
    rounds it sees. Once SCO
    accredits the key, it votes from the first epoch that trusts it."""
    sc = build_scenario(_now(), observers_per_org=1)
    sco_acc = sc.node_accreditations[ORGS.index("sco")]
    sc.node_accreditations.remove(sco_acc)
    producer = await _setup(kafka_bootstrap, topics, sc)
    dbs = {org: tmp_path / f"{org}.final.db" for org in ORGS}
    try:
        with capture_all_logs() as logs:
            # SCO's sealer alone first: at its turn to propose epoch 1 (the others are silent,
            # so the turn reaches it) it finds its key cannot sign, and says so.
            fleet.start(_config(kafka_bootstrap, topics, sc, "sco", dbs["sco"]))
            async with asyncio.timeout(WAIT_S):
                while not any(e["event"] == "seal_key_not_accredited" for e in logs):
                    fleet.check()
                    await asyncio.sleep(0.1)
            for org in ORGS:
                if org != "sco":
                    fleet.start(_config(kafka_bootstrap, topics, sc, org, dbs[org]))
            async with asyncio.timeout(WAIT_S):
                while not all(last_epoch(db) >= 1 for db in dbs.values()):
                    fleet.check()
                    await asyncio.sleep(0.3)
            before = fleet.tasks["sco"][0].status()
            # SCO accredits its node key; more reports arrive, then more again once the
            # epoch holding the accreditation is final (trust takes effect after its epoch).
            await producer.send_and_wait(topics.registry, sco_acc)
            for round_ in (1, 2):
                target = max(last_epoch(db) for db in dbs.values()) + 1
                for obs, _, raw in signed_reports(sc, 1, _now(), random.Random(10 + round_)):
                    await producer.send_and_wait(
                        topics.reports(obs.org), raw, key=obs.observer_id.encode()
                    )
                async with asyncio.timeout(WAIT_S):
                    while not all(last_epoch(db) >= target for db in dbs.values()):
                        fleet.check()
                        await asyncio.sleep(0.3)
            async with asyncio.timeout(WAIT_S):
                while True:
                    fleet.check()
                    after = fleet.tasks["sco"][0].status()
                    if after["proposals_published"] + after["cosignatures_published"] > 0:
                        break
                    await asyncio.sleep(0.3)
    finally:
        await producer.stop()
    await fleet.stop()

    assert before["proposals_published"] + before["cosignatures_published"] == 0
    named = [e for e in logs if e["event"] == "seal_key_not_accredited"]
    assert [e["org"] for e in named] == ["sco"], named
    assert named[0]["why"] == Reason.UNKNOWN_KEY.value
    assert named[0]["key_id"] == sc.node_keys["sco"].key_id.hex()
    assert "obus org accredit --org sco" in named[0]["fix"]
    assert [e["org"] for e in logs if e["event"] == "seal_key_accredited"] == ["sco"]
    # Every node, SCO's too, judged the same epochs alike.
    prints = set()
    for db in dbs.values():
        store = FinalStore(db, read_only=True)
        try:
            prints.add((store.last_epoch(), store.fingerprint()))
        finally:
            store.close()
    assert len(prints) == 1
