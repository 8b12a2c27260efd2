"""The bus reader: witnesses that propose and cosign seals over one log, each reading it in its
own random order, and an auditor reading everything in yet another order, all derive the same
final seals and the same final verdicts (state digests), across restarts. No broker: the log is
a dict of partitions and the seals topic a list, appended to as a Kafka topic would be."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.bus_reader import BusReader, final_from_json, final_to_json
from bus.checkpoint import key_name
from bus.epoch import PartitionRef
from bus.errors import SealedRootMismatchError
from bus.judge import Status
from bus.seal import cosign_seal, make_proposal, sign_proposal
from bus.topics import Topics
from nodes.demo.scenario import node_subject
from tests.mission import NOW_MS, make_mission

TOPICS = Topics("obus.")
REGISTRY: PartitionRef = (TOPICS.registry, 0)


@dataclass
class Bus:
    """The log: partitions of values and the seals topic."""

    parts: dict[PartitionRef, list[bytes | None]] = field(default_factory=lambda: defaultdict(list))
    seals: list[bytes] = field(default_factory=list)


@dataclass
class Witness:
    org: str
    reader: BusReader
    pos: dict[PartitionRef, int] = field(default_factory=dict)
    seal_pos: int = 0
    voted: dict[int, bytes] = field(default_factory=dict)
    digests: dict[int, bytes] = field(default_factory=dict)

    def read(self, bus: Bus, rng: random.Random) -> None:
        """Read a random amount of a random partition (or of the seals topic)."""
        refs = sorted(bus.parts)
        if bus.seals and (not refs or rng.random() < 0.3):
            end = min(len(bus.seals), self.seal_pos + rng.randint(1, 4))
            for off in range(self.seal_pos, end):
                self.take(self.reader.offer_seal(off, bus.seals[off]).epochs)
            self.seal_pos = max(self.seal_pos, end)
            return
        ref = rng.choice(refs)
        start = self.pos.get(ref, 0)
        values = bus.parts[ref][start : start + rng.randint(1, 6)]
        if values:
            self.take(self.reader.offer_records(ref, start, values).epochs)
            self.pos[ref] = start + len(values)

    def take(self, epochs: object) -> None:
        for ev in epochs:  # type: ignore[attr-defined]
            assert ev.epoch not in self.digests
            self.digests[ev.epoch] = ev.state_digest


M = make_mission(observers_per_org=1)
MANDATE = M.scenario.mandate
ORGS = [o.org for o in MANDATE.organizations]


def name(org: str) -> str:
    return key_name(org, node_subject(org))


def new_reader() -> BusReader:
    return BusReader(MANDATE, TOPICS)


def publish_trust(bus: Bus) -> None:
    for raw in [*M.scenario.accreditations, *M.scenario.node_accreditations]:
        bus.parts[REGISTRY].append(raw)


def publish_reports(bus: Bus, rng: random.Random, n: int) -> None:
    for _ in range(n):
        org = rng.choice(["un", "osce"])
        raw = M.next_report(org, 1)
        bus.parts[(TOPICS.reports(org), rng.randrange(2))].append(raw)


def step(
    witnesses: list[Witness], bus: Bus, rng: random.Random, clock: list[int], epoch_turns: int
) -> None:
    """One scheduling step: a witness reads, proposes when it is its turn, or cosigns."""
    w = rng.choice(witnesses)
    action = rng.random()
    if action < 0.7:
        w.read(bus, rng)
        return
    clock[0] += rng.randint(1, 50)
    key = M.scenario.node_keys[w.org]
    if action < 0.85:
        open_epoch = w.reader.chain.open_epoch
        turn = ORGS[open_epoch % len(ORGS)]
        if turn == w.org and open_epoch not in w.voted and not w.reader.chain.waiting:
            proposal = w.reader.propose(org=w.org, now_ms=clock[0])
            if proposal is not None:
                w.voted[proposal.epoch] = proposal.digest
                bus.seals.append(sign_proposal(proposal, key, name(w.org)))
        return
    voted = dict(w.voted)
    mine = w.reader.chain.votes().get(w.org)
    if mine is not None:
        voted[w.reader.chain.open_epoch] = mine
    proposal, _ = w.reader.cosign_candidate(
        org=w.org, now_ms=clock[0], tolerance_ms=10**9, voted=voted
    )
    if proposal is not None:
        w.voted[proposal.epoch] = proposal.digest
        bus.seals.append(cosign_seal(proposal.text(), key, name(w.org), now_ms=clock[0]))


def run_bus(seed: int, steps: int = 1500) -> tuple[Bus, list[Witness]]:
    rng = random.Random(seed)
    bus = Bus()
    publish_trust(bus)
    witnesses = [Witness(org, new_reader()) for org in ORGS]
    clock = [NOW_MS]
    for i in range(steps):
        if i % 40 == 0:
            publish_reports(bus, rng, rng.randint(0, 5))
        step(witnesses, bus, rng, clock, len(ORGS))
    # Everyone catches up on everything, in its own order.
    for w in witnesses:
        while any(w.pos.get(r, 0) < len(v) for r, v in bus.parts.items()) or w.seal_pos < len(
            bus.seals
        ):
            w.read(bus, rng)
    return bus, witnesses


def replay(bus: Bus, rng: random.Random, reader: BusReader | None = None) -> dict[int, bytes]:
    """An auditor: everything in a random interleaving, seals early or late."""
    reader = reader or new_reader()
    w = Witness("auditor", reader)
    while any(w.pos.get(r, 0) < len(v) for r, v in bus.parts.items()) or w.seal_pos < len(
        bus.seals
    ):
        w.read(bus, rng)
    return w.digests


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_witnesses_and_auditor_agree_on_every_epoch(seed: int) -> None:
    bus, witnesses = run_bus(seed)
    first = witnesses[0].digests
    assert len(first) >= 3, "seals must become final"
    for w in witnesses[1:]:
        assert w.digests == first
        assert w.reader.latest == witnesses[0].reader.latest
    for s in range(3):
        assert replay(bus, random.Random(seed * 100 + s)) == first


def test_seal_one_counts_node_keys_it_seals_itself() -> None:
    """The bootstrap: the root mandate accredits no node key; the first seal's signatures count
    under the node accreditations that very seal covers."""
    bus = Bus()
    publish_trust(bus)
    publish_reports(bus, random.Random(5), 3)
    readers = {org: new_reader() for org in ORGS}
    for r in readers.values():
        for ref, values in bus.parts.items():
            r.offer_records(ref, 0, values)
    p = readers["un"].propose(org="un", now_ms=NOW_MS)
    assert p is not None and p.epoch == 1
    bus.seals.append(sign_proposal(p, M.scenario.node_keys["un"], name("un")))
    for org in ORGS[1 : MANDATE.threshold]:
        bus.seals.append(cosign_seal(p.text(), M.scenario.node_keys[org], name(org), now_ms=NOW_MS))
    auditor = new_reader()
    for off, raw in enumerate(bus.seals):
        auditor.offer_seal(off, raw)
    assert auditor.latest is None  # records not read yet: the seal's trust is unknown
    update = None
    for ref, values in sorted(bus.parts.items()):
        update = auditor.offer_records(ref, 0, values)
    assert auditor.latest is not None and auditor.latest.epoch == 1
    assert auditor.judge.epoch == 1
    assert update is not None and update.epochs
    statuses = {v.status for ev in update.epochs for v in ev.verdicts}
    # Reports of epoch 1 by keys the same epoch accredits wait for epoch 2 (trust takes effect
    # at the next epoch), whatever read order: deferred, not quarantined.
    assert statuses == {Status.APPLIED, Status.DEFERRED}


def test_seal_one_without_sealed_node_keys_never_becomes_final() -> None:
    """Node keys accredited only after the first proposal's registry size do not count on it."""
    bus = Bus()
    for raw in M.scenario.accreditations:  # observers only
        bus.parts[REGISTRY].append(raw)
    reader = new_reader()
    reader.offer_records(REGISTRY, 0, bus.parts[REGISTRY])
    assert reader.propose(org="un", now_ms=NOW_MS) is None  # not electable: not proposed
    p = make_proposal(reader.view(), None, mandate_id=MANDATE.mandate_id, now_ms=NOW_MS)
    assert p is not None
    assert reader.electorate(p) == frozenset()
    seals = [sign_proposal(p, M.scenario.node_keys["un"], name("un"))]
    seals += [cosign_seal(p.text(), M.scenario.node_keys[o], name(o), now_ms=NOW_MS) for o in ORGS]
    for off, raw in enumerate(seals):
        reader.offer_seal(off, raw)
    assert reader.latest is None


def test_restart_from_snapshot_gives_the_same_digests() -> None:
    bus, witnesses = run_bus(11, steps=1200)
    want = witnesses[0].digests
    rng = random.Random(4)
    reader = new_reader()
    w = Witness("auditor", reader)
    # Read about half, snapshot, resume in a new reader, and continue from its positions.
    for _ in range(60):
        w.read(bus, rng)
    snap = reader.snapshot()
    resumed = BusReader.resume(snap, MANDATE, TOPICS)
    assert resumed.judge.digest == reader.judge.digest
    w2 = Witness("auditor2", resumed, pos=dict(resumed.positions()), seal_pos=resumed.seals_from)
    w2.digests = {e: d for e, d in w.digests.items() if e <= resumed.judge.epoch}
    while any(w2.pos.get(r, 0) < len(v) for r, v in bus.parts.items()) or w2.seal_pos < len(
        bus.seals
    ):
        w2.read(bus, rng)
    assert w2.digests == want


def test_altered_sealed_record_is_named() -> None:
    bus, witnesses = run_bus(21, steps=800)
    assert witnesses[0].reader.latest is not None
    sealed = witnesses[0].reader.latest
    ref = next(r for r in sorted(sealed.partitions) if r[0].startswith("obus.reports."))
    bus.parts[ref][0] = b"altered"
    with pytest.raises(SealedRootMismatchError) as exc:
        replay(bus, random.Random(3))
    assert exc.value.context["topic"] == ref[0]


def test_final_seal_json_round_trip() -> None:
    _bus, witnesses = run_bus(31, steps=600)
    latest = witnesses[0].reader.latest
    assert latest is not None
    assert final_from_json(final_to_json(latest)) == latest


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6))
def test_property_any_schedule_same_digests(seed: int) -> None:
    bus, witnesses = run_bus(seed, steps=700)
    want = witnesses[0].digests
    assert all(w.digests == want for w in witnesses)
    assert replay(bus, random.Random(seed + 1)) == want


def test_reports_deferred_by_the_last_epoch_get_an_epoch_when_nothing_new_arrives() -> None:
    """Reports of epoch 1 signed by keys epoch 1 accredits are deferred to epoch 2; with no
    new record, the next proposal is an epoch with no new record, and judges them."""
    bus = Bus()
    publish_trust(bus)
    fresh = make_mission(observers_per_org=1)  # the same keys, chains from seq 1
    for org in ("un", "osce", "un"):
        bus.parts[(TOPICS.reports(org), 0)].append(fresh.next_report(org, 1))
    reader = new_reader()
    for ref, values in bus.parts.items():
        reader.offer_records(ref, 0, values)
    p = reader.propose(org="un", now_ms=NOW_MS)
    assert p is not None
    seals = [sign_proposal(p, M.scenario.node_keys["un"], name("un"))]
    seals += [
        cosign_seal(p.text(), M.scenario.node_keys[o], name(o), now_ms=NOW_MS)
        for o in ORGS[1 : MANDATE.threshold]
    ]
    for off, raw in enumerate(seals):
        reader.offer_seal(off, raw)
    assert reader.judge.epoch == 1
    p2 = reader.propose(org="osce", now_ms=NOW_MS + 1000)
    assert p2 is not None and p2.epoch == 2
    assert {r: s.size for r, s in p2.partitions.items()} == {
        r: s.size for r, s in p.partitions.items()
    }
    seals = [sign_proposal(p2, M.scenario.node_keys["osce"], name("osce"))]
    seals += [
        cosign_seal(p2.text(), M.scenario.node_keys[o], name(o), now_ms=NOW_MS + 1000)
        for o in ORGS[2 : 2 + MANDATE.threshold - 1]
    ]
    epochs = [
        ev
        for i, raw in enumerate(seals)
        for ev in reader.offer_seal(len(seals) + i + 10, raw).epochs
    ]
    assert [ev.epoch for ev in epochs] == [2]
    assert {v.status for v in epochs[0].verdicts} == {Status.ACCEPTED}
    assert reader.propose(org="eu", now_ms=NOW_MS + 2000) is None  # nothing left: no epoch
