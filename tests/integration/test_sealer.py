"""Seals on a real Kafka broker: six organizations' sealers propose and cosign seals over the
whole bus, judge every sealed epoch, and hold byte-identical final stores; a sealer stopped in
the middle resumes from its own store and still agrees; an independent reader of the broker,
fetching the partitions in another order, derives the same state digest.

Every test uses its own topic prefix; the sealers run in this process as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bench.sealing import HonestSealer
from bus.bus_reader import BusReader
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.store.final import FinalStore
from bus.topics import Topics, TopicSpec, standard_topics
from nodes.demo.scenario import (
    ORGANIZATIONS,
    Scenario,
    build_scenario,
    signed_reports,
)
from nodes.org_node.sealer import SealerConfig
from tests.sealers import Fleet, read_sealed_log, sealer_config

pytestmark = [pytest.mark.kafka]
ORGS = [o for o, _ in ORGANIZATIONS]
WAIT_S = 120


@pytest.fixture
def topics() -> Topics:
    return Topics(f"s{uuid.uuid4().hex[:10]}.")


def _now() -> int:
    return time.time_ns() // 1_000_000


async def _setup(bootstrap: str, topics: Topics, sc: Scenario) -> AIOKafkaProducer:
    specs = standard_topics(topics, ORGS, partitions=2)
    if not any(s.name == topics.seals for s in specs):
        specs.append(TopicSpec(topics.seals, 1))
    await ensure_topics(bootstrap, specs)
    producer = reliable_producer(bootstrap)
    await producer.start()
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        await producer.send_and_wait(topics.registry, raw)
    return producer


async def _publish(producer: AIOKafkaProducer, topics: Topics, sc: Scenario, n: int) -> int:
    stream = signed_reports(sc, n, _now(), random.Random(n))
    futures = [
        await producer.send(topics.reports(obs.org), raw, key=obs.observer_id.encode())
        for obs, _, raw in stream
    ]
    await asyncio.gather(*futures)
    return len(stream)


def _config(bootstrap: str, topics: Topics, sc: Scenario, org: str, tmp: Path) -> SealerConfig:
    return sealer_config(bootstrap, topics, sc, org, tmp / f"{org}.final.db", snapshot_every=2)


def _accepted(db: Path) -> int:
    store = FinalStore(db, read_only=True)
    try:
        return store.counts().get("accepted", 0)
    finally:
        store.close()


async def _until_judged(fleet: Fleet, dbs: list[Path], total: int) -> None:
    """Until every store holds a final verdict `accepted` for all ``total`` reports."""
    async with asyncio.timeout(WAIT_S):
        while True:
            fleet.check()
            if all(db.exists() and _accepted(db) == total for db in dbs):
                return
            await asyncio.sleep(0.3)


def _fingerprint(db: Path) -> bytes:
    store = FinalStore(db, read_only=True)
    try:
        return store.fingerprint()
    finally:
        store.close()


async def _read_broker(bootstrap: str, topics: Topics, sc: Scenario, seed: int) -> dict[int, bytes]:
    """An independent reader: every sealed partition fetched in a shuffled order and in
    random slices, the seals topic interleaved, all from offset 0; returns each epoch's state
    digest."""
    values = await read_sealed_log(bootstrap, topics)
    rng = random.Random(seed)
    reader = BusReader(sc.mandate, topics)
    cursor = dict.fromkeys(values, 0)
    digests: dict[int, bytes] = {}
    while any(cursor[tp] < len(v) for tp, v in values.items()):
        tp = rng.choice([t for t in values if cursor[t] < len(values[t])])
        start = cursor[tp]
        chunk = values[tp][start : start + rng.randint(1, 7)]
        if tp.topic == topics.seals:
            updates = [reader.offer_seal(start + i, v) for i, v in enumerate(chunk)]
        else:
            updates = [reader.offer_records((tp.topic, tp.partition), start, chunk)]
        digests.update((ev.epoch, ev.state_digest) for u in updates for ev in u.epochs)
        cursor[tp] = start + len(chunk)
    return digests


async def test_six_sealers_agree_byte_for_byte_and_resume(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    sc = build_scenario(_now(), observers_per_org=2)
    producer = await _setup(kafka_bootstrap, topics, sc)
    dbs = [tmp_path / f"{org}.final.db" for org in ORGS]
    try:
        total = await _publish(producer, topics, sc, 4)
        for org in ORGS:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, tmp_path))
        await _until_judged(fleet, dbs, total)

        # One sealer stops while the bus grows, and resumes from its own store.
        osce_before = fleet.tasks["osce"][0].status()
        await fleet.stop("osce")
        total += await _publish(producer, topics, sc, 3)
        await asyncio.sleep(1.0)
        fleet.start(_config(kafka_bootstrap, topics, sc, "osce", tmp_path))
        total += await _publish(producer, topics, sc, 2)
        await _until_judged(fleet, dbs, total)
        statuses = {o: s.status() for o, (s, _) in fleet.tasks.items()}
    finally:
        await producer.stop()
    await fleet.stop()

    prints = {db.name: _fingerprint(db) for db in dbs}
    assert len(set(prints.values())) == 1, prints
    assert all(s["alarm"] is None for s in statuses.values())
    assert sum(s["proposals_published"] for s in statuses.values()) >= 2
    # Every organization took part. (OSCE over both of its lives: once restarted it may find
    # each later epoch final on four faster votes before it casts its own, which is no fault.)
    votes = {o: s["proposals_published"] + s["cosignatures_published"] for o, s in statuses.items()}
    votes["osce"] += osce_before["proposals_published"] + osce_before["cosignatures_published"]
    assert all(n > 0 for n in votes.values()), votes

    # An independent reader, fetching in another order, stands at the same state digest.
    store = FinalStore(dbs[0], read_only=True)
    try:
        last = store.last_epoch()
    finally:
        store.close()
    assert last is not None
    for seed in (1, 2):
        digests = await _read_broker(kafka_bootstrap, topics, sc, seed)
        assert digests[last[0]] == last[1]


def _verdicts(db: Path, topic: str) -> list[tuple[int, str, str]]:
    """(offset, status, reason) of every final verdict on ``topic``, by offset."""
    import sqlite3  # noqa: PLC0415

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(
            'SELECT "offset", status, reason FROM verdicts WHERE topic = ? ORDER BY "offset"',
            (topic,),
        )
        return [(o, s, r) for o, s, r in rows]


async def _until_epoch_covers(
    fleet: Fleet, dbs: list[Path], topic: str, partition: int, size: int
) -> None:
    """Until every store has judged an epoch whose seal covers ``size`` records of a partition."""
    import sqlite3  # noqa: PLC0415

    def covered(db: Path) -> bool:
        if not db.exists():
            return False
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            n = con.execute(
                "SELECT count(*) FROM verdicts WHERE topic = ? AND partition = ?",
                (topic, partition),
            ).fetchone()[0]
        return int(n) >= size

    async with asyncio.timeout(WAIT_S):
        while not all(covered(db) for db in dbs):
            fleet.check()
            await asyncio.sleep(0.3)


async def test_rotation_with_a_sealer_restarted_in_the_middle(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    """A mandate rotation (v2 adds a zone), a forged v3 and a replayed v1 on the mandate
    topic, and one sealer stopped before the rotation and restarted after it: every store
    holds the same final verdicts, byte for byte, and they are the rotation's rules: v2 in
    force from the epoch after the one that logged it."""
    import dataclasses  # noqa: PLC0415

    from bus.model import Location, Zone  # noqa: PLC0415
    from bus.sign import sign_mandate  # noqa: PLC0415
    from tests.mission import make_mission  # noqa: PLC0415

    m = make_mission(observers_per_org=2, now_ms=_now())
    sc = m.scenario
    roots = sc.org_roots
    v1 = sc.mandate
    west = Zone("west", "Lowlands", 47.0, 35.0, 48.0, 37.0)
    v2 = dataclasses.replace(v1, version=2, zones=(*v1.zones, west))
    v2_raw = sign_mandate(v2, [roots[o] for o in ("un", "osce", "eu", "csto")]).encode()
    forged = dataclasses.replace(v1, version=3, zones=(west,), threshold=1)
    forged_raw = sign_mandate(forged, [roots[o] for o in ("nato", "sco", "eu")]).encode()

    def west_report(org: str, i: int) -> bytes:
        return m.next_report(org, i, zone="west", location=Location(47.5, 36.0, 100, "Lowtown"))

    producer = await _setup(kafka_bootstrap, topics, sc)
    dbs = [tmp_path / f"{org}.final.db" for org in ORGS]
    mandate_topic = topics.mandate
    try:
        await producer.send_and_wait(mandate_topic, sc.mandate_envelope)
        for org in ORGS:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, tmp_path))
        await producer.send_and_wait(topics.reports("un"), m.next_report("un", 1), partition=0)
        await producer.send_and_wait(topics.reports("un"), west_report("un", 2), partition=0)
        await _until_epoch_covers(fleet, dbs, topics.reports("un"), 0, 2)
        await fleet.stop("nato")  # down across the rotation
        await producer.send_and_wait(mandate_topic, v2_raw)
        await producer.send_and_wait(mandate_topic, forged_raw)
        await producer.send_and_wait(mandate_topic, sc.mandate_envelope)
        live = [db for db in dbs if db.name != "nato.final.db"]
        await _until_epoch_covers(fleet, live, mandate_topic, 0, 4)
        # v2 is in force from the epoch after the one that sealed it: a west report now is in.
        await producer.send_and_wait(topics.reports("osce"), west_report("osce", 1), partition=0)
        fleet.start(_config(kafka_bootstrap, topics, sc, "nato", tmp_path))
        await producer.send_and_wait(topics.reports("eu"), m.next_report("eu", 1), partition=1)
        await _until_epoch_covers(fleet, dbs, topics.reports("eu"), 1, 1)
        await _until_epoch_covers(fleet, dbs, topics.reports("osce"), 0, 1)
    finally:
        await producer.stop()
    await fleet.stop()

    prints = {db.name: _fingerprint(db) for db in dbs}
    assert len(set(prints.values())) == 1, prints
    for db in dbs:
        assert _verdicts(db, mandate_topic) == [
            (0, "applied", ""),  # the root, published
            (1, "applied", ""),  # v2, signed by 4 of 6
            (2, "quarantined", "threshold_not_met"),  # v3 signed by 3 of v2's 6
            (3, "quarantined", "mandate_rollback"),  # v1 again
        ], db.name
        assert [v[1:] for v in _verdicts(db, topics.reports("un"))] == [
            ("accepted", ""),
            ("quarantined", "outside_zone"),  # before v2 took effect
        ]
        assert [v[1:] for v in _verdicts(db, topics.reports("osce"))] == [("accepted", "")]


async def test_a_large_epoch_is_judged_off_the_event_loop(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    """A sealer judges in a worker thread: while it judges a large final epoch (here 3,000
    reports sealed at once, as after a stall without a quorum), the process's event loop keeps
    running (Kafka heartbeats, ingest, the ops server), and status() answers from the snapshot
    taken before, never from a reader in the middle of a change."""
    sc = build_scenario(_now(), observers_per_org=5)
    producer = await _setup(kafka_bootstrap, topics, sc)
    witness = HonestSealer(sc, topics, _now())

    async def seal_what_is_new() -> None:
        """Six organizations seal everything published so far (bench/sealing.py)."""
        for tp, values in (await read_sealed_log(kafka_bootstrap, topics)).items():
            held = witness.held.get((tp.topic, tp.partition), 0)
            if tp.topic != topics.seals and len(values) > held:
                witness.read((tp.topic, tp.partition), held, values[held:])
        for raw in witness.seal():
            await producer.send_and_wait(topics.seals, raw, partition=0)

    try:
        await seal_what_is_new()  # epoch 1: the accreditations (trust takes effect after it)
        total = await _publish(producer, topics, sc, 100)
        await seal_what_is_new()  # epoch 2: 3,000 reports at once
    finally:
        await producer.stop()
    db = tmp_path / "osce.final.db"
    sealer = fleet.start(
        sealer_config(kafka_bootstrap, topics, sc, "osce", db, witness=False, max_batch=500)
    )
    seen: list[dict[str, object]] = []
    async with asyncio.timeout(WAIT_S):
        while _accepted_or_zero(db) < total:
            fleet.check()
            if sealer._reader_busy:  # the loop runs while the reader judges in its thread
                seen.append(sealer.status())
            await asyncio.sleep(0)
    await fleet.stop()
    assert seen, "the event loop never ran while the reader was judging"
    assert all({"judged_epoch", "final_epoch", "state_digest"} <= s.keys() for s in seen)
    assert {s["judged_epoch"] for s in seen} <= {0, 1, 2}
    assert _accepted(db) == total


def _accepted_or_zero(db: Path) -> int:
    """:func:`_accepted`, 0 while the sealer has not created its store yet."""
    try:
        return _accepted(db) if db.exists() else 0
    except sqlite3.Error:
        return 0
