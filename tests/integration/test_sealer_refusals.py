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
from collections.abc import Iterable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bus.epoch import PartitionSeal
from bus.errors import Reason
from bus.note import key_name
from bus.seal import SealProposal, sign_proposal
from bus.store.final import FinalStore
from bus.topics import Topics
from nodes.demo.scenario import (
    ORGANIZATIONS,
    Scenario,
    build_scenario,
    node_subject,
    signed_reports,
)
from nodes.org_node.sealer import SealerConfig
from tests.final_rows import Pos, last_epoch, settled_verdicts
from tests.logcapture import capture_all_logs
from tests.sealers import Fleet, sealer_config, set_up_bus, whole_log_proposal

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
HONEST = [o for o in ORGS if o != "nato"]
WAIT_S = 120


def _now() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def topics() -> Topics:
    return Topics(f"f{uuid.uuid4().hex[:10]}.")


async def _honest_proposal(bootstrap: str, topics: Topics, sc: Scenario) -> SealProposal:
    """What an honest reader of the whole broker would propose for epoch 1 now."""
    proposal = await whole_log_proposal(bootstrap, topics, sc, "nato", _now())
    assert proposal.epoch == 1
    return proposal


def _config(bootstrap: str, topics: Topics, sc: Scenario, org: str, db: Path) -> SealerConfig:
    """A sealer of ``org`` with its accredited node key, sealing every 300 ms."""
    return sealer_config(bootstrap, topics, sc, org, db)


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
    producer = await set_up_bus(kafka_bootstrap, topics, sc, 3, 3)
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


async def _more_reports(
    producer: AIOKafkaProducer, topics: Topics, sc: Scenario, seed: int
) -> list[tuple[str, int, int]]:
    """One more report of every observer; their positions."""
    out = []
    for obs, _, raw in signed_reports(sc, 1, _now(), random.Random(seed)):
        md = await producer.send_and_wait(
            topics.reports(obs.org), raw, key=obs.observer_id.encode()
        )
        out.append((md.topic, md.partition, md.offset))
    return out


async def _until_settled(fleet: Fleet, dbs: Iterable[Path], positions: list[Pos]) -> None:
    """Until every final store in ``dbs`` holds a settled verdict on every position."""
    dbs = list(dbs)
    async with asyncio.timeout(WAIT_S):
        while not all(len(settled_verdicts(db, positions)) == len(positions) for db in dbs):
            fleet.check()
            await asyncio.sleep(0.3)


async def _until_epoch(fleet: Fleet, dbs: Iterable[Path], epoch: int) -> None:
    """Until every final store in ``dbs`` holds ``epoch`` (bounded; a stopped sealer fails)."""
    dbs = list(dbs)
    async with asyncio.timeout(WAIT_S):
        while not all(last_epoch(db) >= epoch for db in dbs):
            fleet.check()
            await asyncio.sleep(0.3)


async def test_a_node_key_nobody_accredited_is_named_once_and_votes_once_accredited(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    """SCO's node runs with a node key its organization has not accredited yet: it judges the
    sealed log like every node but cannot vote, and says so once (``seal_key_not_accredited``,
    naming the key and the command that fixes it) instead of staying silent, however many
    rounds it sees. Once SCO accredits the key, it votes in the epochs that trust it."""
    sc = build_scenario(_now(), observers_per_org=1)
    sco_acc = sc.node_accreditations[ORGS.index("sco")]
    sc.node_accreditations.remove(sco_acc)
    producer = await set_up_bus(kafka_bootstrap, topics, sc, 3, 3)
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
            # SCO accredits its node key; more reports arrive. Trust takes effect after the
            # epoch that seals it, so every sealer first judges that epoch...
            md = await producer.send_and_wait(topics.registry, sco_acc)
            first = await _more_reports(producer, topics, sc, 11)
            await _until_settled(fleet, dbs.values(), [(md.topic, md.partition, md.offset)])
            await _until_settled(fleet, dbs.values(), first)
            # ... then CSTO and NATO stop: with UN, OSCE, EU and SCO running and k = 4, no
            # later epoch is final without SCO's vote (and every later epoch trusts its key:
            # the accreditation's epoch is final everywhere).
            await fleet.stop("csto")
            await fleet.stop("nato")
            running = {org: db for org, db in dbs.items() if org in fleet.tasks}
            target = max(last_epoch(db) for db in running.values()) + 1
            second = await _more_reports(producer, topics, sc, 12)
            await _until_epoch(fleet, running.values(), target)
            # every running store at the epoch that holds the last report (none follows it)
            await _until_settled(fleet, running.values(), second)
            after = fleet.tasks["sco"][0].status()
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
    assert after["proposals_published"] + after["cosignatures_published"] > 0
    # Every running node, SCO's too, judged the same epochs alike (no record came after the
    # last one, so no later epoch).
    prints = set()
    for db in running.values():
        store = FinalStore(db, read_only=True)
        try:
            prints.add((store.last_epoch(), store.fingerprint()))
        finally:
            store.close()
    assert len(prints) == 1
