"""The bus reader: witnesses that propose and cosign seals over one log, each reading it in its
own random order, and an auditor reading everything in yet another order, all derive the same
final seals and the same final verdicts (state digests), across restarts, also when proposers
propose at once (every witness, the proposers included, cosigns the first proposal: no round
splits) and when split votes kill a round so that the next one opens. No broker: the log is a
dict of partitions and the seals topic a list, appended to as a Kafka topic would be."""

from __future__ import annotations

import base64
import dataclasses
import random
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bus.bus_reader import BusReader, BusUpdate, final_from_json, final_to_json
from bus.epoch import PartitionRef
from bus.errors import Reason, SealedRootMismatchError
from bus.judge import Status
from bus.model import Accreditation, Envelope
from bus.note import key_name
from bus.seal import (
    Cosign,
    SealAlarm,
    SealProposal,
    SealWithdrawal,
    cosign_seal,
    decide_cosign,
    make_proposal,
    sign_proposal,
    sign_withdrawal,
)
from bus.topics import Topics
from nodes.demo.scenario import node_subject
from tests.mission import NOW_MS, make_mission

TOPICS = Topics("obus.")
REGISTRY: PartitionRef = (TOPICS.registry, 0)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


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
    voted: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (epoch, round) -> text
    proposed: set[tuple[int, int]] = field(default_factory=set)  # (epoch, round) proposed in
    digests: dict[int, bytes] = field(default_factory=dict)
    rounds: list[tuple[int, int, int]] = field(default_factory=list)  # (epoch, round, offset)
    alarms: list[SealAlarm] = field(default_factory=list)

    def read(self, bus: Bus, rng: random.Random) -> None:
        """Read a random amount of a random partition (or of the seals topic)."""
        refs = sorted(bus.parts)
        if bus.seals and (not refs or rng.random() < 0.3):
            end = min(len(bus.seals), self.seal_pos + rng.randint(1, 4))
            for off in range(self.seal_pos, end):
                self.take(self.reader.offer_seal(off, bus.seals[off]))
            self.seal_pos = max(self.seal_pos, end)
            return
        ref = rng.choice(refs)
        start = self.pos.get(ref, 0)
        values = bus.parts[ref][start : start + rng.randint(1, 6)]
        if values:
            self.take(self.reader.offer_records(ref, start, values))
            self.pos[ref] = start + len(values)

    def catch_up(self, bus: Bus, rng: random.Random) -> None:
        """Read everything on the bus, in random pieces."""
        while self.seal_pos < len(bus.seals) or any(
            self.pos.get(r, 0) < len(v) for r, v in bus.parts.items()
        ):
            self.read(bus, rng)

    def take(self, update: BusUpdate) -> None:
        # A seal record may wait for its epoch's trust state: rounds open, and epochs are
        # judged, as records of any topic arrive.
        self.rounds += [(r.epoch, r.round, r.offset) for r in update.rounds_opened]
        self.alarms += update.alarms
        for ev in update.epochs:
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


def turn_of(reader: BusReader) -> str:
    """The first proposer of the open round: organization (epoch + round - 1) mod n."""
    chain = reader.chain
    return ORGS[(chain.open_epoch + chain.open_round - 1) % len(ORGS)]


def propose(w: Witness, bus: Bus, now_ms: int) -> SealProposal | None:
    """``w`` proposes in the round open at its reader, once per round and not after it voted
    there. Proposing is no vote: ``w`` then cosigns the first proposal, like every witness."""
    chain = w.reader.chain
    at = (chain.open_epoch, chain.open_round)
    if at in w.proposed or at in w.voted or chain.votes().get(w.org) is not None or chain.waiting:
        return None
    proposal = w.reader.propose(org=w.org, now_ms=now_ms)
    if proposal is not None:
        w.proposed.add(at)
        bus.seals.append(sign_proposal(proposal, M.scenario.node_keys[w.org], name(w.org)))
    return proposal


def cosign(
    w: Witness, bus: Bus, now_ms: int, ends: dict[PartitionRef, int] | None = None
) -> SealProposal | None:
    """``w`` cosigns the proposal of its open round its reader says it should, if any
    (``ends``: the partitions' end offsets, as the broker tells a sealer)."""
    voted = dict(w.voted)
    chain = w.reader.chain
    mine = chain.votes().get(w.org)
    if mine is not None:
        voted[(chain.open_epoch, chain.open_round)] = mine
    proposal, _ = w.reader.cosign_candidate(
        org=w.org, now_ms=now_ms, tolerance_ms=10**9, voted=voted, ends=ends
    )
    if proposal is not None:
        w.voted[(proposal.epoch, proposal.round)] = proposal.digest
        key = M.scenario.node_keys[w.org]
        bus.seals.append(cosign_seal(proposal.text(), key, name(w.org), now_ms=now_ms))
    return proposal


def step(
    witnesses: list[Witness], bus: Bus, rng: random.Random, clock: list[int], together: float
) -> None:
    """One scheduling step: a witness reads, proposes when it is its turn (with probability
    ``together`` other witnesses propose in the same step, each from what it has read, before
    any reads another's proposal), or cosigns."""
    w = rng.choice(witnesses)
    action = rng.random()
    if action < 0.7:
        w.read(bus, rng)
        return
    clock[0] += rng.randint(1, 50)
    if action < 0.85:
        if turn_of(w.reader) == w.org:
            proposers = [w]
            if rng.random() < together:
                others = [x for x in witnesses if x is not w]
                proposers += rng.sample(others, rng.randint(1, len(others)))
            for i, p in enumerate(proposers):
                propose(p, bus, clock[0] + i)  # their clocks differ: each its own text
        return
    cosign(w, bus, clock[0])


def settle(witnesses: list[Witness], bus: Bus, rng: random.Random, clock: list[int]) -> None:
    """Proposers stop colliding: with something new on the bus, one proposer proposes (the
    turn's owner, or the next organization in turn order when it cannot, as a takeover would)
    and every witness, the proposer included, cosigns, until the epoch open now is final
    everywhere."""
    publish_reports(bus, rng, 1)
    for w in witnesses:
        w.catch_up(bus, rng)
    target = witnesses[0].reader.chain.open_epoch
    for _ in range(len(ORGS)):
        if all(w.reader.judge.epoch >= target for w in witnesses):
            return
        clock[0] += 1000
        first = ORGS.index(turn_of(witnesses[0].reader))
        for place in range(len(ORGS)):
            org = ORGS[(first + place) % len(ORGS)]
            if propose(next(w for w in witnesses if w.org == org), bus, clock[0]) is not None:
                break
        for w in rng.sample(witnesses, len(witnesses)):
            w.catch_up(bus, rng)
            cosign(w, bus, clock[0])
        for w in witnesses:
            w.catch_up(bus, rng)
    raise AssertionError(f"epoch {target} did not become final")


def run_bus(seed: int, steps: int = 1500, together: float = 0.0) -> tuple[Bus, list[Witness]]:
    """Witnesses run ``steps`` random steps (proposers at once with probability ``together``),
    then :func:`settle`; every witness has read everything."""
    rng = random.Random(seed)
    bus = Bus()
    publish_trust(bus)
    witnesses = [Witness(org, new_reader()) for org in ORGS]
    clock = [NOW_MS]
    for i in range(steps):
        if i % 40 == 0:
            publish_reports(bus, rng, rng.randint(0, 5))
        step(witnesses, bus, rng, clock, together)
    settle(witnesses, bus, rng, clock)
    return bus, witnesses


def replay(bus: Bus, rng: random.Random, reader: BusReader | None = None) -> dict[int, bytes]:
    """An auditor: everything in a random interleaving, seals early or late."""
    w = Witness("auditor", reader or new_reader())
    w.catch_up(bus, rng)
    return w.digests


@pytest.mark.parametrize(
    ("seed", "together"), [(1, 0.0), (2, 0.0), (3, 0.0), (2, 0.3), (4, 0.6), (5, 1.0)]
)
def test_witnesses_and_auditor_agree_on_every_epoch(seed: int, together: float) -> None:
    bus, witnesses = run_bus(seed, together=together)
    first = witnesses[0].digests
    assert len(first) >= 3, "seals must become final"
    for w in witnesses[1:]:
        assert w.digests == first
        assert w.reader.latest == witnesses[0].reader.latest
        assert w.rounds == witnesses[0].rounds  # the same rounds, opened at the same records
    # Proposers at once split no round: every witness cosigns the first proposal in topic order.
    assert witnesses[0].rounds == []
    for s in range(3):
        assert replay(bus, random.Random(seed * 100 + s)) == first


def test_seal_one_counts_node_keys_it_seals_itself() -> None:
    """The bootstrap: the root mandate accredits no node key; the first seal's signatures count
    under the node accreditations its text carries, so it is final from the seals topic alone,
    before any record is read; reading the records then judges epoch 1."""
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
    for org in ORGS[: MANDATE.threshold]:  # the proposer too: its proposal is no vote
        bus.seals.append(cosign_seal(p.text(), M.scenario.node_keys[org], name(org), now_ms=NOW_MS))
    auditor = new_reader()
    for off, raw in enumerate(bus.seals):
        auditor.offer_seal(off, raw)
    assert p.carried == tuple(sorted(M.scenario.node_accreditations, key=_b64))
    assert auditor.latest is not None and auditor.latest.carried == p.carried
    assert auditor.judge.epoch == 0  # final, not judged: no record read yet
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
    w2.catch_up(bus, rng)
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
@given(st.integers(0, 10**6), st.sampled_from([0.0, 0.3, 1.0]))
def test_property_any_schedule_same_digests(seed: int, together: float) -> None:
    """Random schedules, proposers at once some of the time: every witness and a replay in
    another order hold the same final seals, rounds and verdicts, and seals become final."""
    bus, witnesses = run_bus(seed, steps=700, together=together)
    want = witnesses[0].digests
    event(f"rounds opened: {min(len(witnesses[0].rounds), 2)}")
    assert want, "seals must become final"
    assert all(w.digests == want and w.rounds == witnesses[0].rounds for w in witnesses)
    assert all(w.reader.latest == witnesses[0].reader.latest for w in witnesses)
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
        for o in ORGS[: MANDATE.threshold]
    ]
    for off, raw in enumerate(seals):
        reader.offer_seal(off, raw)
    assert reader.judge.epoch == 1
    assert reader.judge.deferred == 3  # the three reports, deferred to epoch 2
    p2 = reader.propose(org="osce", now_ms=NOW_MS + 1000)
    assert p2 is not None and p2.epoch == 2
    assert {r: s.size for r, s in p2.partitions.items()} == {
        r: s.size for r, s in p.partitions.items()
    }
    seals = [sign_proposal(p2, M.scenario.node_keys["osce"], name("osce"))]
    seals += [
        cosign_seal(p2.text(), M.scenario.node_keys[o], name(o), now_ms=NOW_MS + 1000)
        for o in ORGS[1 : 1 + MANDATE.threshold]
    ]
    epochs = [
        ev
        for i, raw in enumerate(seals)
        for ev in reader.offer_seal(len(seals) + i + 10, raw).epochs
    ]
    assert [ev.epoch for ev in epochs] == [2]
    assert {v.status for v in epochs[0].verdicts} == {Status.ACCEPTED}
    assert reader.judge.deferred == 0
    assert reader.propose(org="eu", now_ms=NOW_MS + 2000) is None  # nothing left: no epoch


def test_two_proposals_at_once_both_proposers_cosign_the_first() -> None:
    """Two organizations propose epoch 1 back to back, each before reading the other's
    proposal (their turns placed them apart, their clocks did not); CSTO and SCO are down.
    Every running witness, both proposers included, cosigns the first proposal in topic order:
    it is final in round 1 with k = 4 of 6, and no round opens."""
    rng = random.Random(17)
    bus = Bus()
    publish_trust(bus)
    publish_reports(bus, rng, 4)
    witnesses = [Witness(org, new_reader()) for org in ORGS]
    for w in witnesses:
        w.catch_up(bus, rng)
    first, second = witnesses[0], witnesses[1]
    a = propose(first, bus, NOW_MS)
    b = propose(second, bus, NOW_MS + 100)
    assert a is not None and b is not None and a.digest != b.digest
    running = witnesses[:4]
    cosigned = []
    for w in [second, first, *running[2:]]:
        w.catch_up(bus, rng)
        assert [d for _, _, d in w.reader.proposals()] == [a.digest, b.digest]
        if w in (first, second):
            assert propose(w, bus, NOW_MS + 200) is None  # one proposal per round at most
        cosigned.append(cosign(w, bus, NOW_MS + 200))
    assert cosigned == [a, a, a, a]
    for w in witnesses:
        w.catch_up(bus, rng)
        latest = w.reader.latest
        assert latest is not None and (latest.digest, latest.round) == (a.digest, 1)
        assert latest.signers == frozenset(ORGS[:4])
        assert w.rounds == [] and w.reader.chain.equivocations == []
    assert replay(bus, random.Random(18)) == witnesses[0].digests


def test_split_votes_kill_round_1_and_round_2_seals_the_epoch() -> None:
    """Four organizations propose epoch 1 and each cosigns its own text (as witnesses whose
    clock tolerance refused the others' *t_e* would: four texts, one vote each, no text can
    reach k = 4 any more); every reader opens round 2 at that record and forgets round 1's
    proposals; a witness refuses a text of the dead round; round 2's first proposer is
    organization (1 + 2 - 1) mod 6; every witness, the proposer included, cosigns its text,
    which is final in round 2; an auditor reading in another order finds the same."""
    rng = random.Random(7)
    bus = Bus()
    publish_trust(bus)
    publish_reports(bus, rng, 4)
    witnesses = [Witness(org, new_reader()) for org in ORGS]
    for w in witnesses:
        w.catch_up(bus, rng)
    split = witnesses[:4]
    texts = [propose(w, bus, NOW_MS + i) for i, w in enumerate(split)]
    assert len({p.digest for p in texts if p is not None}) == 4
    for w, p in zip(split, texts, strict=True):
        assert p is not None
        w.voted[(1, 1)] = p.digest
        key = M.scenario.node_keys[w.org]
        bus.seals.append(cosign_seal(p.text(), key, name(w.org), now_ms=NOW_MS))
    late = witnesses[4].reader.propose(org=witnesses[4].org, now_ms=NOW_MS + 9)
    assert late is not None and late.round == 1
    for w in witnesses:
        w.catch_up(bus, rng)
        assert w.rounds == [(1, 2, 7)]
        assert (w.reader.chain.open_epoch, w.reader.chain.open_round) == (1, 2)
        assert w.reader.proposals() == []
    # A round-1 text published now is ignored by the chain and refused by a witness's rule.
    bus.seals.append(
        sign_proposal(late, M.scenario.node_keys[witnesses[4].org], name(witnesses[4].org))
    )
    update = witnesses[5].reader.offer_seal(len(bus.seals) - 1, bus.seals[-1])
    assert [v.reason for v in update.seal_verdicts] == [Reason.SEAL_ROUND_CLOSED]
    witnesses[5].seal_pos = len(bus.seals)
    d = decide_cosign(
        late, witnesses[5].reader.view(), None, mandate_id=MANDATE.mandate_id,
        now_ms=NOW_MS + 9, tolerance_ms=10**9, voted={}, open_round=2,
    )  # fmt: skip
    assert (d.verdict, d.reason) == (Cosign.REFUSE, Reason.SEAL_ROUND_CLOSED)
    owner = next(w for w in witnesses if w.org == turn_of(w.reader))
    assert owner.org == ORGS[2]
    p2 = propose(owner, bus, NOW_MS + 100)
    assert p2 is not None and (p2.epoch, p2.round) == (1, 2)
    cosigned = []
    for w in witnesses:
        w.catch_up(bus, rng)
        cosigned.append(cosign(w, bus, NOW_MS + 100))
    # k = 4 cosignatures make it final: the last two witnesses find the epoch final.
    assert cosigned == [p2, p2, p2, p2, None, None]
    for w in witnesses:
        w.catch_up(bus, rng)
        latest = w.reader.latest
        assert latest is not None and (latest.digest, latest.round) == (p2.digest, 2)
        assert w.reader.judge.epoch == 1
        assert w.digests == witnesses[0].digests
    final = witnesses[0].reader.latest
    assert final is not None and final_from_json(final_to_json(final)) == final
    assert replay(bus, random.Random(8)) == witnesses[0].digests


def test_a_registry_record_altered_under_seal_one_is_named_not_waited_on() -> None:
    """The operator shows one reader a registry whose observer accreditation was replaced by a
    copy of another genuine record: seal 1 still becomes final there (the node keys it holds
    are genuine), and judging epoch 1 names the altered record."""
    bus = Bus()
    publish_trust(bus)
    honest = new_reader()
    for ref, values in bus.parts.items():
        honest.offer_records(ref, 0, values)
    p = honest.propose(org="un", now_ms=NOW_MS)
    assert p is not None
    seals = [sign_proposal(p, M.scenario.node_keys["un"], name("un"))]
    seals += [
        cosign_seal(p.text(), M.scenario.node_keys[o], name(o), now_ms=NOW_MS)
        for o in ORGS[: MANDATE.threshold]
    ]
    shown = list(bus.parts[REGISTRY])
    shown[0] = shown[1]  # an observer's accreditation replaced by a copy of another one
    victim = new_reader()
    for off, raw in enumerate(seals):
        victim.offer_seal(off, raw)
    with pytest.raises(SealedRootMismatchError) as exc:
        victim.offer_records(REGISTRY, 0, shown)
    assert exc.value.context["topic"] == TOPICS.registry
    assert victim.latest is not None and victim.latest.epoch == 1


def test_a_bogus_first_proposal_claiming_10_to_the_9_registry_records_blocks_nobody() -> None:
    """EU publishes, first on the seals topic, an epoch-1 proposal claiming 10^9 registry
    records (and carrying the genuine node accreditations, so that it looks electable). Its
    trust is a function of its text, so no reader ever waits on it: the chain judges it and
    every record after it at once. Witnesses that know the registry's end refuse it
    (``seal_beyond_log``), the turn's proposer proposes the honest text, and it becomes final
    at every witness and at an auditor reading the seals topic before any record."""
    rng = random.Random(8)
    bus = Bus()
    publish_trust(bus)
    publish_reports(bus, rng, 3)
    witnesses = [Witness(org, new_reader()) for org in ORGS]
    for w in witnesses:
        w.catch_up(bus, rng)
    honest = witnesses[0].reader.propose(org=ORGS[0], now_ms=NOW_MS)
    assert honest is not None and len(honest.carried) == len(ORGS)
    from bus.epoch import PartitionSeal  # noqa: PLC0415

    bogus = dataclasses.replace(
        honest,
        partitions={**honest.partitions, REGISTRY: PartitionSeal(10**9, bytes(32))},
    )
    bus.seals.append(sign_proposal(bogus, M.scenario.node_keys["eu"], name("eu")))
    ends = {r: len(v) for r, v in bus.parts.items()}
    for w in witnesses:
        w.catch_up(bus, rng)
        assert not w.reader.chain.waiting and w.reader.chain.queued == 0
        assert w.reader.proposals()[0][1] == bogus
        proposal, decisions = w.reader.cosign_candidate(
            org=w.org, now_ms=NOW_MS, tolerance_ms=10**9, voted={}, ends=ends
        )
        assert proposal is None and decisions[0][1].reason is Reason.SEAL_BEYOND_LOG
    p = propose(next(w for w in witnesses if w.org == turn_of(w.reader)), bus, NOW_MS + 1)
    assert p is not None and p.carried == honest.carried
    for w in witnesses:
        w.catch_up(bus, rng)
        got = cosign(w, bus, NOW_MS + 1, ends=ends)
        assert got == p or (w.reader.latest is not None and w.reader.latest.digest == p.digest)
    auditor = new_reader()
    for off, raw in enumerate(bus.seals):  # the seals topic alone: nothing waits
        update = auditor.offer_seal(off, raw)
        assert not auditor.chain.waiting and not update.alarms
    assert auditor.latest is not None and auditor.latest.digest == p.digest
    for w in witnesses:
        w.catch_up(bus, rng)
        assert w.reader.latest is not None and w.reader.latest.digest == p.digest
        assert w.reader.judge.epoch == 1
    assert replay(bus, random.Random(9)) == witnesses[0].digests


def test_a_final_seal_one_carrying_other_trust_is_named_and_stands() -> None:
    """Four organizations (k) sign an epoch-1 text that leaves out the other two's node
    accreditations (an honest witness refuses it: ``seal_carried_trust_mismatch``). It is final
    all the same, k signed it; once epoch 1 is judged, every reader names the mismatch."""
    rng = random.Random(12)
    bus = Bus()
    publish_trust(bus)
    publish_reports(bus, rng, 2)
    reader = new_reader()
    reader.offer_records(REGISTRY, 0, bus.parts[REGISTRY])
    honest = reader.propose(org=ORGS[0], now_ms=NOW_MS)
    assert honest is not None
    signers = ORGS[: MANDATE.threshold]
    mine = {
        raw
        for raw in honest.carried
        if Accreditation.decode(Envelope.decode(raw).payload).org in signers
    }
    short = dataclasses.replace(honest, carried=tuple(sorted(mine)))
    assert len(short.carried) == len(signers)
    d = decide_cosign(
        short, reader.view(), None, mandate_id=MANDATE.mandate_id, now_ms=NOW_MS,
        tolerance_ms=10**9, voted={}, open_round=1, carried=lambda _p: honest.carried,
    )  # fmt: skip
    assert d.verdict is Cosign.REFUSE and d.reason is Reason.SEAL_CARRIED_TRUST_MISMATCH
    bus.seals.append(sign_proposal(short, M.scenario.node_keys["un"], name("un")))
    for org in signers:
        key = M.scenario.node_keys[org]
        bus.seals.append(cosign_seal(short.text(), key, name(org), now_ms=NOW_MS))
    for order in range(3):
        auditor = Witness("auditor", new_reader())
        auditor.catch_up(bus, random.Random(order))
        alarms = auditor.alarms
        assert auditor.reader.judge.epoch == 1
        assert auditor.reader.latest is not None and auditor.reader.latest.digest == short.digest
        assert [(a.reason, a.epoch) for a in alarms] == [(Reason.SEAL_CARRIED_TRUST_MISMATCH, 1)]
        assert alarms[0].notes == (short.text(),)


def test_a_2_2_split_with_two_silent_organizations_ends_by_withdrawals() -> None:
    """k = 4: four witnesses split 2-2 over two proposals of round 1, the other two
    organizations never speak, so both texts can still reach k and round 1 stays open. Each
    voter then withdraws (the sealer does so a timeout after its vote); the withdrawal that
    leaves no text able to reach k opens round 2 at every reader, whose proposals list is
    emptied; the four cosign round 2's text, which is final; every witness and an auditor
    reading in another order stand at the same final seal and state digest."""
    rng = random.Random(11)
    bus = Bus()
    publish_trust(bus)
    publish_reports(bus, rng, 4)
    witnesses = [Witness(org, new_reader()) for org in ORGS]
    running = witnesses[:4]  # ORGS[4:] silent
    for w in running:
        w.catch_up(bus, rng)
    first = propose(running[0], bus, NOW_MS)
    second = propose(running[2], bus, NOW_MS + 1)
    assert first is not None and second is not None and first.digest != second.digest
    for w, p in zip(running, (first, first, second, second), strict=True):
        w.voted[(1, 1)] = p.digest
        bus.seals.append(
            cosign_seal(p.text(), M.scenario.node_keys[w.org], name(w.org), now_ms=NOW_MS)
        )
    for w in running:
        w.catch_up(bus, rng)
        assert w.rounds == [] and w.reader.chain.open_round == 1
        assert cosign(w, bus, NOW_MS + 2) is None  # voted: nothing more to sign in round 1
    for w in (running[0], running[2]):  # one voter of each text withdraws
        withdrawal = SealWithdrawal(MANDATE.mandate_id, 1, 1)
        key = M.scenario.node_keys[w.org]
        bus.seals.append(sign_withdrawal(withdrawal, key, name(w.org), now_ms=NOW_MS + 30_000))
    opened_at = len(bus.seals) - 1
    for w in running:
        w.catch_up(bus, rng)
        assert w.rounds == [(1, 2, opened_at)]
        assert w.reader.chain.open_round == 2 and w.reader.proposals() == []
    p2 = propose(running[1], bus, NOW_MS + 40_000)
    assert p2 is not None and p2.round == 2
    for w in running:
        w.catch_up(bus, rng)
        assert cosign(w, bus, NOW_MS + 40_000) == p2
    auditor = Witness("auditor", new_reader())
    for w in [*running, auditor]:
        w.catch_up(bus, rng)
        latest = w.reader.latest
        assert latest is not None and (latest.epoch, latest.round) == (1, 2)
        assert latest.digest == p2.digest and latest.signers == {w.org for w in running}
        assert w.digests == running[0].digests and 1 in w.digests
