"""Four attacks on the product's promise, replayed on a real broker against the sealed path.

Every test runs six organizations' sealers (:class:`~nodes.org_node.sealer.Sealer`, in this
process) on a topic prefix of its own, publishes an attack, and waits until every sealer holds a
final verdict on every record of it. Then it stops the fleet and checks that everyone who reads
the log comes to the same answer: the six final stores are byte-identical, a sealer started late
from an empty store (after everything was published) derives the same store, and an independent
:class:`~bus.bus_reader.BusReader` fed the broker's partitions in two different shuffled
interleavings holds the same verdicts, reason codes, chain heads and state digest. Only then
are the attack's own verdicts asserted.

1. Trust records cannot be erased: the trust topics are append-only, and a null record or
   another organization's accreditation of a revoked key is quarantined, never applied.
2. Report ids are scoped per (organization, observer, report id): another organization reusing
   a report id conflicts with nothing.
5. Broker timestamps decide nothing: on CreateTime topics with timestamps set at will, the
   same bytes get the same verdicts; the clock is the sealed *t_e*.
7. A byte-identical copy on another partition is ``replayed`` wherever it sits, at every reader
   the same one, and the observer's chain goes on.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord

from bus.bus_reader import BusReader
from bus.epoch import GENESIS_DIGEST, PartitionSeal
from bus.kafka.admin import align_topic_configs, ensure_topics, topic_partitions
from bus.kafka.client import client_options, reliable_producer
from bus.model import Accreditation, Report, Revocation, Role, sha256
from bus.note import key_name
from bus.seal import SealProposal, sign_proposal
from bus.sign import ReportSigner, sign_accreditation, sign_revocation
from bus.store.final import FinalStore
from bus.topics import DELETE_POLICY, Topics, TopicSpec, standard_topics
from nodes.demo.scenario import (
    DAY_MS,
    ORGANIZATIONS,
    ObserverIdentity,
    Scenario,
    build_scenario,
    draft_report,
    node_subject,
)
from nodes.org_node.sealer import Sealer, SealerConfig
from tests.final_rows import last_epoch

pytestmark = [pytest.mark.kafka]

ORGS: Final = [o for o, _ in ORGANIZATIONS]
WAIT_S: Final = 90
HOUR_MS: Final = 3_600_000
# How long every store must stand at the same last epoch before the fleet counts as settled.
SETTLE_S: Final = 1.0
LONG_MAX: Final = str(2**63 - 1)

Pos = tuple[str, int, int]
"""(topic, partition, offset)."""


def _now() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Judged:
    """What one reader of a bus holds after its last final epoch.

    Args:
        verdicts: (epoch, status, reason) of every sealed record.
        heads: every observer chain's (seq, digest).
        last_epoch: the last epoch judged.
        state_digest: the state digest after it.
    """

    verdicts: dict[Pos, tuple[int, str, str]]
    heads: dict[tuple[str, str], tuple[int, bytes]]
    last_epoch: int
    state_digest: bytes

    def of(self, pos: Pos) -> tuple[str, str]:
        """(status, reason) of one record."""
        _, status, reason = self.verdicts[pos]
        return status, reason


def _store_judged(db: Path) -> tuple[Judged, bytes]:
    """A final store's verdicts and heads (from its canonical dump), and its fingerprint."""
    store = FinalStore(db, read_only=True)
    try:
        verdicts: dict[Pos, tuple[int, str, str]] = {}
        heads: dict[tuple[str, str], tuple[int, bytes]] = {}
        for line in store.dump():
            row = json.loads(line)
            if row[0] == "verdicts":
                topic, partition, offset, epoch, _judged, status, reason = row[1:8]
                verdicts[(topic, partition, offset)] = (epoch, status, reason)
            elif row[0] == "heads":
                org, observer_id, seq, digest = row[1:5]
                heads[(org, observer_id)] = (seq, base64.b64decode(digest))
        last = store.last_epoch()
        assert last is not None
        return Judged(verdicts, heads, last[0], last[1]), store.fingerprint()
    finally:
        store.close()


def _verdict(db: Path, pos: Pos) -> dict[str, Any] | None:
    if not db.exists():
        return None
    store = FinalStore(db, read_only=True)
    try:
        return store.verdict(*pos)
    finally:
        store.close()


@dataclass(frozen=True)
class Fetched:
    """Every record of every sealed partition and of the seals topic, from offset 0."""

    records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    beginnings: dict[TopicPartition, int]

    def values(self, topic: str, partition: int = 0) -> list[bytes | None]:
        return [r.value for r in self.records[TopicPartition(topic, partition)]]


async def _fetch(bootstrap: str, topics: Topics) -> Fetched:
    """Read the whole bus of one prefix straight from the broker (no sealer involved)."""
    everything = await topic_partitions(bootstrap, pattern="^" + re.escape(topics.prefix))
    tps = [tp for tp in everything if tp.topic == topics.seals or topics.is_sealed(tp.topic)]
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in tps:
            consumer.seek(tp, 0)
            got: list[ConsumerRecord[bytes, bytes]] = []
            while len(got) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                got.extend(batch.get(tp, []))
            records[tp] = got
    finally:
        await consumer.stop()
    return Fetched(records, beginnings)


def _read(fetched: Fetched, topics: Topics, root: Any, seed: int) -> Judged:
    """An independent reader: the partitions interleaved in a shuffled order, in random slices
    (the seals topic among them), everything from offset 0."""
    values = {tp: [r.value for r in recs] for tp, recs in fetched.records.items()}
    rng = random.Random(seed)
    reader = BusReader(root, topics)
    cursor = dict.fromkeys(values, 0)
    verdicts: dict[Pos, tuple[int, str, str]] = {}
    while any(cursor[tp] < len(v) for tp, v in values.items()):
        tp = rng.choice(sorted(t for t in values if cursor[t] < len(values[t])))
        start = cursor[tp]
        chunk = values[tp][start : start + rng.randint(1, 5)]
        if tp.topic == topics.seals:
            updates = [reader.offer_seal(start + i, v) for i, v in enumerate(chunk)]
        else:
            updates = [reader.offer_records((tp.topic, tp.partition), start, chunk)]
        for u in updates:
            for ev in u.epochs:
                for v in ev.verdicts:  # a deferred report's final verdict comes later
                    verdicts[v.pos] = (v.epoch, v.status.value, v.reason)
        cursor[tp] = start + len(chunk)
    judge = reader.judge
    heads = {k: (h.seq, h.digest) for k, h in judge.heads().items()}
    return Judged(verdicts, heads, judge.epoch, judge.digest)


class Bus:
    """One topic prefix on the broker: its topics, a producer, and six organizations' sealers.

    Use :meth:`open`, publish with :meth:`send`, wait with :meth:`until_final`, and finish
    with :meth:`settle`, which checks that every reader agrees and returns what they hold.
    """

    def __init__(self, bootstrap: str, sc: Scenario, tmp: Path, *, create_time: bool) -> None:
        self.bootstrap = bootstrap
        self.sc = sc
        self.topics = Topics(f"a{uuid.uuid4().hex[:10]}.")
        self.tmp = tmp / self.topics.prefix.rstrip(".")
        self.tmp.mkdir(parents=True)
        self.create_time = create_time
        self.producer: AIOKafkaProducer | None = None
        self.sealers: dict[str, tuple[Sealer, asyncio.Task[None]]] = {}
        self.sent: list[tuple[Pos, bytes | None, int | None]] = []  # (pos, value, timestamp)

    def db(self, org: str) -> Path:
        return self.tmp / f"{org}.final.db"

    @property
    def fleet_dbs(self) -> list[Path]:
        return [self.db(org) for org in ORGS]

    def config(self, org: str, *, late: bool = False) -> SealerConfig:
        return SealerConfig(
            org=org,
            bootstrap=self.bootstrap,
            db_path=self.tmp / f"{org}.late.db" if late else self.db(org),
            root=self.sc.mandate,
            node_key=None if late else self.sc.node_keys[org],
            topics=self.topics,
            interval_ms=300,
            takeover_ms=300,
            snapshot_every=2,
            poll_timeout_ms=100,
            metadata_refresh_ms=1000,
            witness=not late,
        )

    async def open(
        self,
        registry_timestamps: Iterable[int] | None = None,
        before_start: Callable[[], Awaitable[None]] | None = None,
    ) -> list[Pos]:
        """Create the topics (CreateTime ones when asked), publish every accreditation, start
        the fleet and wait until the accreditations are final. Returns their positions.

        The accreditations are on the broker before any sealer starts, so that the first
        proposal seals every node key: one that seals only k of them could become final only
        with all k votes."""
        specs = standard_topics(self.topics, ORGS, partitions=2)
        await ensure_topics(self.bootstrap, specs)
        if self.create_time:
            # What a hostile operator may do: clients set every timestamp, any distance away.
            configs = (
                ("message.timestamp.type", "CreateTime"),
                ("message.timestamp.before.max.ms", LONG_MAX),
                ("message.timestamp.after.max.ms", LONG_MAX),
            )
            switched = [
                TopicSpec(s.name, s.partitions, configs)
                for s in specs
                if self.topics.org_of_report_topic(s.name) or s.name == self.topics.registry
            ]
            changes = await align_topic_configs(self.bootstrap, switched)
            assert {(c.topic, c.name) for c in changes} >= {
                (s.name, "message.timestamp.type") for s in switched
            }
        self.producer = reliable_producer(self.bootstrap)
        await self.producer.start()
        stamps = list(registry_timestamps or [])
        trust = [*self.sc.accreditations, *self.sc.node_accreditations]
        positions = [
            await self.send(self.topics.registry, raw, timestamp_ms=stamps[i] if stamps else None)
            for i, raw in enumerate(trust)
        ]
        if before_start is not None:
            await before_start()
        for org in ORGS:
            self.start(org, self.config(org))
        await self.until_final(positions)
        return positions

    def start(self, name: str, cfg: SealerConfig) -> None:
        s = Sealer(cfg)
        self.sealers[name] = (s, asyncio.create_task(s.run()))

    async def stop(self, name: str | None = None) -> None:
        for n in [name] if name else list(self.sealers):
            s, task = self.sealers.pop(n)
            s.stop()
            await task

    def check_running(self) -> None:
        for s, task in self.sealers.values():
            if task.done():
                task.result()
                raise AssertionError(f"sealer {s.config.org} stopped")

    async def close(self) -> None:
        try:
            await self.stop()
        finally:
            if self.producer is not None:
                await self.producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int = 0,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
    ) -> Pos:
        """Publish one record (to the partition named: never left to a partitioner)."""
        assert self.producer is not None
        md = await self.producer.send_and_wait(
            topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms
        )
        pos = (md.topic, md.partition, md.offset)
        self.sent.append((pos, value, timestamp_ms))
        return pos

    async def until_final(self, positions: Sequence[Pos]) -> None:
        """Until every fleet store holds a final (not deferred) verdict on every position."""

        def final(db: Path, pos: Pos) -> bool:
            v = _verdict(db, pos)
            return v is not None and v["status"] != "deferred"

        async with asyncio.timeout(WAIT_S):
            while True:
                self.check_running()
                if all(final(db, p) for db in self.fleet_dbs for p in positions):
                    return
                await asyncio.sleep(0.2)

    async def settle(self) -> tuple[Judged, Fetched]:
        """Stop the fleet once every store stands at one last epoch; check that the six stores,
        a late sealer from an empty store and two shuffled independent readers agree; return
        what they hold and what the broker holds."""
        async with asyncio.timeout(WAIT_S):
            last, since = -1, time.monotonic()
            while True:
                self.check_running()
                epochs = {last_epoch(db) for db in self.fleet_dbs}
                current = epochs.pop() if len(epochs) == 1 else -1
                now = time.monotonic()
                if current < 0 or current != last:
                    last, since = current, now
                elif now - since >= SETTLE_S:
                    break
                await asyncio.sleep(0.2)
        statuses = {org: s.status() for org, (s, _) in self.sealers.items()}
        await self.stop()
        assert all(s["alarm"] is None for s in statuses.values()), statuses

        stores = {db.name: _store_judged(db) for db in self.fleet_dbs}
        prints = {name: fp for name, (_, fp) in stores.items()}
        assert len(set(prints.values())) == 1, prints
        judged, fingerprint = stores[self.fleet_dbs[0].name]
        assert judged.last_epoch == last

        # A node that starts after everything was published, from an empty store.
        late = self.config("un", late=True)
        self.start("late", late)
        async with asyncio.timeout(WAIT_S):
            while last_epoch(late.db_path) < last:
                self.check_running()
                await asyncio.sleep(0.2)
        await self.stop("late")
        late_judged, late_print = _store_judged(late.db_path)
        assert late_judged == judged
        assert late_print == fingerprint

        # Auditors reading the broker themselves, in two different interleavings.
        fetched = await _fetch(self.bootstrap, self.topics)
        for seed in (1, 2):
            assert _read(fetched, self.topics, self.sc.mandate, seed) == judged, seed
        return judged, fetched


@pytest.fixture
async def buses() -> AsyncIterator[list[Bus]]:
    """The buses a test opens (:func:`_bus`): every one is closed at the end."""
    made: list[Bus] = []
    try:
        yield made
    finally:
        for bus in made:
            await bus.close()


def _bus(
    buses: list[Bus], bootstrap: str, sc: Scenario, tmp: Path, *, create_time: bool = False
) -> Bus:
    bus = Bus(bootstrap, sc, tmp, create_time=create_time)
    buses.append(bus)
    return bus


def _observer(sc: Scenario, observer_id: str) -> ObserverIdentity:
    return next(o for o in sc.observers if o.observer_id == observer_id)


@dataclass
class Reports:
    """Signed reports of a scenario's observers, each chain continued by its own signer."""

    sc: Scenario
    now: int
    rng: random.Random = field(default_factory=lambda: random.Random(14))

    def draft(self, who: str, **changes: Any) -> Report:
        """A draft of observer ``who``'s next report, with ``changes`` applied."""
        obs = _observer(self.sc, who)
        draft = draft_report(self.rng, obs, self.sc.mandate, self.now)
        draft = dataclasses.replace(draft, signed_at_ms=min(draft.signed_at_ms, self.now))
        return dataclasses.replace(draft, **changes)

    def sign(self, who: str, **changes: Any) -> tuple[Report, bytes]:
        """Observer ``who``'s next report, signed by its own signer: (draft, record)."""
        draft = self.draft(who, **changes)
        raw = self.sc.signers[who].sign(draft)
        return draft, raw


# -- 1 --------------------------------------------------------------------------------------


async def _topic_configs(bootstrap: str, names: Sequence[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, message, _type, name, entries in response.resources:
            assert code == 0, (name, message)
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def test_attack_1_trust_records_cannot_be_erased(
    kafka_bootstrap: str, tmp_path: Path, buses: list[Bus]
) -> None:
    """UN revokes an observer key; EU then publishes, on the registry, a null record under the
    revocation's old compaction key and its own accreditation of the revoked key (under the
    honest accreditation key), and a null record on the mandate topic. Nothing is erased and
    nothing of EU's is applied: the revoked key's later reports are ``key_revoked`` at every
    reader, a node started later included."""
    now = _now()
    sc = build_scenario(now, observers_per_org=2)
    bus = _bus(buses, kafka_bootstrap, sc, tmp_path)
    t = bus.topics
    await bus.open()
    reports = Reports(sc, now)
    victim = _observer(sc, "un-obs-1")
    key_id = victim.key.key_id

    _, r1 = reports.sign("un-obs-1")
    _, r2 = reports.sign("un-obs-1")
    _, other1 = reports.sign("un-obs-2")
    before = [
        await bus.send(t.reports("un"), r1),
        await bus.send(t.reports("un"), r2),
        await bus.send(t.reports("un"), other1, partition=1),
    ]
    await bus.until_final(before)

    revocation = Revocation(
        org="un",
        key_id=key_id,
        last_valid_seq=2,
        revoked_at_ms=now,
        reason="device lost",
        serial=1,
        mandate_id=sc.mandate.mandate_id,
    )
    revoked = await bus.send(
        t.registry,
        sign_revocation(revocation, sc.org_roots["un"]).encode(),
        key=b"rev:" + key_id.hex().encode(),
    )
    await bus.until_final([revoked])

    eu_root = sc.org_roots["eu"]

    def eu_accreditation(subject_id: str) -> bytes:
        acc = Accreditation(
            subject_id=subject_id,
            org="eu",
            role=Role.OBSERVER,
            public_key=victim.key.public_key,
            not_before_ms=sc.mandate.not_before_ms,
            not_after_ms=sc.mandate.not_after_ms,
            serial=9,
            mandate_id=sc.mandate.mandate_id,
        )
        return sign_accreditation(acc, eu_root).encode()

    acc_key = b"acc:" + key_id.hex().encode()
    null_registry = await bus.send(t.registry, None, key=b"rev:" + key_id.hex().encode())
    eu_own_subject = await bus.send(t.registry, eu_accreditation("eu-obs-9"), key=acc_key)
    eu_un_subject = await bus.send(t.registry, eu_accreditation("un-obs-1"), key=acc_key)
    null_mandate = await bus.send(t.mandate, None, key=f"{sc.mandate.mandate_id}:1".encode())
    attack = [null_registry, eu_own_subject, eu_un_subject, null_mandate]
    await bus.until_final(attack)

    _, r3 = reports.sign("un-obs-1")
    _, r4 = reports.sign("un-obs-1")
    _, other2 = reports.sign("un-obs-2")
    # The revoked key reporting under the name EU tried to give it, on EU's topic.
    stolen = ReportSigner(victim.key).sign(
        reports.draft("eu-obs-1", observer_id="eu-obs-9", org="eu")
    )
    after = [
        await bus.send(t.reports("un"), r3),
        await bus.send(t.reports("un"), r4, partition=1),
        await bus.send(t.reports("un"), other2, partition=1),
        await bus.send(t.reports("eu"), stolen),
    ]
    await bus.until_final(after)
    judged, fetched = await bus.settle()

    assert [judged.of(p) for p in before] == [("accepted", "")] * 3
    assert judged.of(revoked) == ("applied", "")
    assert [judged.of(p) for p in attack] == [
        ("quarantined", "malformed"),
        ("quarantined", "duplicate_conflict"),
        ("quarantined", "wrong_org"),
        ("quarantined", "malformed"),
    ]
    assert [judged.of(p) for p in after] == [
        ("quarantined", "key_revoked"),
        ("quarantined", "key_revoked"),
        ("accepted", ""),
        ("quarantined", "subject_mismatch"),
    ]
    assert judged.heads[("un", "un-obs-1")] == (2, sha256(r2))
    assert judged.heads[("un", "un-obs-2")] == (2, sha256(other2))
    assert ("eu", "eu-obs-9") not in judged.heads

    # Nothing can be erased: both trust topics say delete (never compact), keep everything, and
    # the broker holds every record published, from offset 0, byte for byte.
    configs = await _topic_configs(kafka_bootstrap, [t.registry, t.mandate])
    for name in (t.registry, t.mandate):
        assert configs[name]["cleanup.policy"] == DELETE_POLICY[1], name
        assert configs[name]["retention.ms"] == "-1", name
    specs = [s for s in standard_topics(t, ORGS, partitions=2) if s.name in configs]
    assert await align_topic_configs(kafka_bootstrap, specs) == []
    for name in (t.registry, t.mandate):
        published = [value for (topic, _, _), value, _ in bus.sent if topic == name]
        assert fetched.beginnings[TopicPartition(name, 0)] == 0
        assert fetched.values(name) == published, name
    assert len(fetched.values(t.registry)) == len(sc.accreditations) + len(ORGS) + 4


# -- 2 --------------------------------------------------------------------------------------


async def test_attack_2_report_id_squatting(
    kafka_bootstrap: str, tmp_path: Path, buses: list[Bus]
) -> None:
    """EU's observer reuses UN report ids: one already published, one UN has yet to publish
    (squatted in an earlier epoch), one in the same epoch. Report ids are scoped per
    (organization, observer, report id): every report is accepted at every reader and UN's
    observer's chain goes on without a gap."""
    now = _now()
    sc = build_scenario(now, observers_per_org=2)
    bus = _bus(buses, kafka_bootstrap, sc, tmp_path)
    t = bus.topics
    await bus.open()
    reports = Reports(sc, now)

    u1, raw_u1 = reports.sign("un-obs-1")
    u2_draft = reports.draft("un-obs-1")  # signed later; EU learns its id early
    _, raw_e1 = reports.sign("eu-obs-1", report_id=u1.report_id)
    _, raw_e2 = reports.sign("eu-obs-1", report_id=u2_draft.report_id)
    first = [
        await bus.send(t.reports("un"), raw_u1),
        await bus.send(t.reports("eu"), raw_e1),
        await bus.send(t.reports("eu"), raw_e2, partition=1),
    ]
    await bus.until_final(first)

    raw_u2 = sc.signers["un-obs-1"].sign(u2_draft)
    u3, raw_u3 = reports.sign("un-obs-1")
    _, raw_e3 = reports.sign("eu-obs-1", report_id=u3.report_id)
    _, raw_u4 = reports.sign("un-obs-1")
    second = [
        await bus.send(t.reports("eu"), raw_e3),  # the same epoch as UN's, and first
        await bus.send(t.reports("un"), raw_u2, partition=1),
        await bus.send(t.reports("un"), raw_u3),
        await bus.send(t.reports("un"), raw_u4, partition=1),
    ]
    await bus.until_final(second)
    judged, _ = await bus.settle()

    assert [judged.of(p) for p in first + second] == [("accepted", "")] * 7
    assert judged.heads[("un", "un-obs-1")] == (4, sha256(raw_u4))
    assert judged.heads[("eu", "eu-obs-1")] == (3, sha256(raw_e3))
    assert not any(s == "quarantined" for _, s, _ in judged.verdicts.values())

    # Each final store names both reports of a shared id, each under its own observer.
    store = FinalStore(bus.db("un"), read_only=True)
    try:
        rows = [json.loads(line) for line in store.dump()]
    finally:
        store.close()
    by_id: dict[str, set[tuple[str, str, str]]] = {}
    for row in rows:
        if row[0] == "verdicts" and row[11] is not None:
            by_id.setdefault(row[11], set()).add((row[9], row[10], row[6]))
    for rid in (u1.report_id, u2_draft.report_id, u3.report_id):
        assert by_id[rid] == {("un", "un-obs-1", "accepted"), ("eu", "eu-obs-1", "accepted")}


# -- 5 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedRecord:
    """A report record and the broker timestamp each of two runs gives it."""

    topic_org: str
    partition: int
    value: bytes
    stamps: tuple[int, int]


async def test_attack_5_broker_timestamps_decide_nothing(
    kafka_bootstrap: str, tmp_path: Path, buses: list[Bus]
) -> None:
    """The operator switches the report and registry topics to CreateTime, so clients set every
    broker timestamp. The same bytes are published to two prefixes with timestamps that differ
    everywhere (far past, far future, 'just now' on a backdated report, the signer's own
    claimed time on a report from the future). The verdicts come out identical, and they follow
    the sealed clock: a report signed more than the mandate's delivery lag before *t_e* is
    ``delivery_lag``, one signed beyond the clock skew after it is ``clock_skew``."""
    now = _now()
    sc = build_scenario(now, observers_per_org=1)
    lag = sc.mandate.delivery_lag_ms
    reports = Reports(sc, now)
    past, future = now - 400 * DAY_MS, now + 300 * DAY_MS

    honest = [reports.sign("un-obs-1")[1] for _ in range(3)]
    backdated = now - lag - DAY_MS
    _, late = reports.sign("eu-obs-1", observed_at_ms=backdated - HOUR_MS, signed_at_ms=backdated)
    ahead = now + HOUR_MS
    _, early = reports.sign("osce-obs-1", observed_at_ms=now - 600_000, signed_at_ms=ahead)
    _, honest_eu = reports.sign("nato-obs-1")
    timed = [
        # run A: the broker would call the honest reports stale or from the future, the
        # backdated one fresh and the early one on time; run B stamps everything otherwise.
        TimedRecord("un", 0, honest[0], (past, future)),
        TimedRecord("un", 1, honest[1], (now - 10 * DAY_MS, now + 50 * 60_000)),
        TimedRecord("un", 0, honest[2], (future, 1)),
        TimedRecord("eu", 0, late, (now, backdated)),
        TimedRecord("osce", 1, early, (ahead, past)),
        TimedRecord("nato", 0, honest_eu, (1, now)),
    ]
    trust_count = len(sc.accreditations) + len(sc.node_accreditations)
    registry_stamps = ([past] * trust_count, [future - i for i in range(trust_count)])

    runs: list[tuple[Bus, list[Pos], list[Pos], Judged, Fetched]] = []
    for run in (0, 1):
        bus = _bus(buses, kafka_bootstrap, sc, tmp_path, create_time=True)
        trust = await bus.open(registry_timestamps=registry_stamps[run])
        positions = [
            await bus.send(
                bus.topics.reports(r.topic_org), r.value, partition=r.partition,
                timestamp_ms=r.stamps[run],
            )
            for r in timed
        ]  # fmt: skip
        await bus.until_final(positions)
        judged, fetched = await bus.settle()
        runs.append((bus, trust, positions, judged, fetched))
        # The attack is real: the broker kept the timestamps the clients chose.
        for pos, _value, stamp in bus.sent:
            rec = fetched.records[TopicPartition(pos[0], pos[1])][pos[2]]
            assert (rec.timestamp_type, rec.timestamp) == (0, stamp), pos

    a, b = runs
    for _, trust, positions, judged, _ in runs:
        assert [judged.of(p) for p in trust] == [("applied", "")] * trust_count
        assert [judged.of(p) for p in positions] == [
            ("accepted", ""),
            ("accepted", ""),
            ("accepted", ""),
            ("quarantined", "delivery_lag"),
            ("quarantined", "clock_skew"),
            ("accepted", ""),
        ]
        assert judged.heads[("un", "un-obs-1")] == (3, sha256(honest[2]))

    def columns(bus: Bus, judged: Judged) -> dict[Pos, tuple[str, str]]:
        n = len(bus.topics.prefix)
        return {(tp[n:], part, off): v[1:] for (tp, part, off), v in judged.verdicts.items()}

    assert a[2] != [] and [p[1:] for p in a[2]] == [p[1:] for p in b[2]]
    assert columns(a[0], a[3]) == columns(b[0], b[3])
    assert a[3].heads == b[3].heads


# -- 7 --------------------------------------------------------------------------------------


async def test_attack_7_copies_on_another_partition(
    kafka_bootstrap: str, tmp_path: Path, buses: list[Bus]
) -> None:
    """Byte-identical copies of a genuine report on the other partition of its topic: one in
    an epoch before the original, one in the same batch as it, one in an epoch after. Of each
    pair exactly one is accepted and the other is ``replayed``, the same one at every reader
    (the first in the sealed order), and the observer's chain goes on to its last report."""
    now = _now()
    sc = build_scenario(now, observers_per_org=1)
    bus = _bus(buses, kafka_bootstrap, sc, tmp_path)
    topic = bus.topics.reports("un")
    await bus.open()
    reports = Reports(sc, now)
    raw = [reports.sign("un-obs-1")[1] for _ in range(4)]

    copy1 = await bus.send(topic, raw[0], partition=1)  # sealed before the original exists
    await bus.until_final([copy1])
    orig1 = await bus.send(topic, raw[0], partition=0)
    orig2 = await bus.send(topic, raw[1], partition=0)
    copy2 = await bus.send(topic, raw[1], partition=1)
    orig3 = await bus.send(topic, raw[2], partition=1)
    await bus.until_final([orig1, orig2, copy2, orig3])
    copy3 = await bus.send(topic, raw[2], partition=0)  # after the original was sealed
    orig4 = await bus.send(topic, raw[3], partition=0)
    await bus.until_final([copy3, orig4])
    judged, _ = await bus.settle()

    accepted, replayed = ("accepted", ""), ("quarantined", "replayed")
    assert judged.of(copy1) == accepted
    assert judged.of(orig1) == replayed
    # Same batch: whichever the seals put first (earlier epoch, then lower partition) counts.
    first, second = sorted([orig2, copy2], key=lambda p: (judged.verdicts[p][0], p))
    assert (judged.of(first), judged.of(second)) == (accepted, replayed)
    assert judged.of(orig3) == accepted
    assert judged.of(copy3) == replayed
    assert judged.of(orig4) == accepted
    assert judged.heads[("un", "un-obs-1")] == (4, sha256(raw[3]))
    assert judged.verdicts[copy3][0] > judged.verdicts[orig3][0]
    assert judged.verdicts[orig1][0] > judged.verdicts[copy1][0]


# -- seal 1 ---------------------------------------------------------------------------------


async def test_seal_one_a_bogus_first_proposal_blocks_nobody(
    kafka_bootstrap: str, tmp_path: Path, buses: list[Bus]
) -> None:
    """Before any sealer starts, EU publishes the first record of the seals topic: an epoch-1
    proposal claiming 10^9 registry records (carrying every genuine node accreditation, so it
    looks electable). Its votes' trust is a function of its text, so no reader waits on it;
    every sealer asks the broker for the registry's end and refuses it (seal_beyond_log); the
    honest proposal becomes final, and every reader agrees (six stores, a late sealer, two
    shuffled auditors)."""
    now = _now()
    sc = build_scenario(now, observers_per_org=1)
    bus = _bus(buses, kafka_bootstrap, sc, tmp_path)
    t = bus.topics

    async def bogus() -> None:
        claim = SealProposal(
            sc.mandate.mandate_id,
            1,
            now,
            GENESIS_DIGEST,
            {(t.registry, 0): PartitionSeal(10**9, bytes(32))},
            1,
            tuple(sc.node_accreditations),
        )
        record = sign_proposal(claim, sc.node_keys["eu"], key_name("eu", node_subject("eu")))
        await bus.send(t.seals, record)

    await bus.open(before_start=bogus)
    reports = Reports(sc, now)
    _, raw = reports.sign("un-obs-1")
    pos = await bus.send(t.reports("un"), raw)
    await bus.until_final([pos])
    refusals = {org: s.status()["refusals"] for org, (s, _) in bus.sealers.items()}
    assert all(n >= 1 for n in refusals.values()), refusals
    judged, _ = await bus.settle()
    assert judged.of(pos) == ("accepted", "")
