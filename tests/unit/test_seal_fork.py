"""Seal 1's carried trust (the text format, the trust it gives, the honest set) and the fork
alarm (k votes on a text of the open epoch that does not follow this reader's final seal, or on
a second text of its newest final epoch), with the evidence kept in the final store."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path

import pytest

from bus.epoch import GENESIS_DIGEST, PartitionRef, PartitionSeal
from bus.errors import Reason, VerificationError
from bus.model import Accreditation, Envelope
from bus.note import key_name
from bus.seal import (
    MAX_CARRIED,
    MAX_CARRIED_RECORD_BYTES,
    SealChain,
    SealProposal,
    carried_trust,
    cosign_seal,
    node_accreditations,
    node_electorate,
    parse_seal,
)
from bus.store.final import FinalStore
from bus.topics import Topics
from bus.trust import KeyRing
from nodes.demo.scenario import node_subject
from tests.mission import NOW_MS, make_mission

M = make_mission(observers_per_org=1)
MANDATE = M.scenario.mandate
MID = MANDATE.mandate_id
ORGS = tuple(o.org for o in MANDATE.organizations)
K = MANDATE.threshold
TOPICS = Topics("obus.")
REGISTRY: PartitionRef = (TOPICS.registry, 0)
REPORTS: PartitionRef = (TOPICS.reports("un"), 0)
NODE_ACCS = tuple(M.scenario.node_accreditations)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _root(label: object) -> bytes:
    return hashlib.sha256(repr(label).encode()).digest()


def seal_one(carried: tuple[bytes, ...] = NODE_ACCS) -> SealProposal:
    return SealProposal(
        MID,
        1,
        NOW_MS,
        GENESIS_DIGEST,
        {REGISTRY: PartitionSeal(len(NODE_ACCS), _root("r")), REPORTS: PartitionSeal(3, _root(3))},
        1,
        carried,
    )


def cosigned(p: SealProposal, org: str) -> bytes:
    key = M.scenario.node_keys[org]
    return cosign_seal(p.text(), key, key_name(org, node_subject(org)), now_ms=p.time_ms)


def chain() -> SealChain:
    return SealChain(MID, lambda p: carried_trust(MANDATE, TOPICS, p))


# -- the carried lines -----------------------------------------------------------------------


def test_carried_lines_round_trip_sorted_after_the_partitions() -> None:
    p = seal_one()
    lines = p.text().decode().splitlines()
    carried = [ln for ln in lines if ln.startswith("accreditation ")]
    assert carried == sorted(f"accreditation {_b64(r)}" for r in NODE_ACCS)
    assert lines[-len(carried) :] == carried
    assert parse_seal(p.text()) == p
    assert SealProposal.of_final(p.final(digest=p.digest, signers=(), offset=0)).text() == p.text()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t, c: t.replace(c[0], c[0] + "A"),  # not canonical base64
        lambda t, c: t.replace(c[0] + "\n", "") + c[0] + "\n" if len(c) > 1 else t + "x",
        lambda t, c: t + c[-1] + "\n",  # repeated
        lambda t, c: t.replace(c[0], "accreditation  " + c[0][14:]),  # two spaces
        lambda t, c: t.replace(c[0], "accreditation "),  # empty
        lambda t, c: t.replace("obus.reports.un", "zzz").replace("\nzzz", "\n" + c[0] + "\nzzz"),
    ],
)
def test_malformed_carried_lines_are_refused(mangle: object) -> None:
    p = seal_one()
    text = p.text().decode()
    carried = sorted(ln for ln in text.splitlines() if ln.startswith("accreditation "))
    bad = mangle(text, carried)  # type: ignore[operator]
    with pytest.raises(VerificationError) as exc:
        parse_seal(bad.encode())
    assert exc.value.reason is Reason.MALFORMED


def test_only_epoch_one_carries_and_the_bounds_hold() -> None:
    p = seal_one()
    later = p.text().replace(b"\n1\n1\n", b"\n2\n1\n", 1)
    with pytest.raises(VerificationError):
        parse_seal(later)
    with pytest.raises(VerificationError):
        dataclasses.replace(p, epoch=2)
    with pytest.raises(VerificationError):
        seal_one(carried=(b"x" * (MAX_CARRIED_RECORD_BYTES + 1),))
    with pytest.raises(VerificationError):
        seal_one(carried=tuple(bytes([i % 256, i // 256]) for i in range(MAX_CARRIED + 1)))
    assert seal_one(carried=(*NODE_ACCS, NODE_ACCS[0])).carried == seal_one().carried


# -- the trust a text carries ----------------------------------------------------------------


def test_the_trust_of_seal_one_is_its_carried_node_keys_only() -> None:
    everyone = node_electorate(carried_trust(MANDATE, TOPICS, seal_one()), seal_one())
    assert everyone == frozenset(ORGS)
    # Observer accreditations and garbage carried count for nothing.
    junk = seal_one(carried=(*M.scenario.accreditations[:2], b"not a registry record"))
    assert node_electorate(carried_trust(MANDATE, TOPICS, junk), junk) == frozenset()
    # An accreditation re-signed by another organization's root does not verify.
    un_acc = NODE_ACCS[ORGS.index("un")]
    env = Envelope.decode(un_acc)
    forged = dataclasses.replace(env, signatures=Envelope.decode(NODE_ACCS[1]).signatures)
    p = seal_one(carried=(forged.encode(),))
    assert node_electorate(carried_trust(MANDATE, TOPICS, p), p) == frozenset()


def test_the_honest_set_is_the_registry_s_node_accreditations_capped_per_organization() -> None:
    registry = [*M.scenario.accreditations, *NODE_ACCS, NODE_ACCS[0]]  # a copy changes nothing
    got = node_accreditations(MANDATE, TOPICS, {REGISTRY: registry})
    assert got == tuple(sorted(NODE_ACCS, key=_b64))
    assert node_accreditations(MANDATE, TOPICS, {REGISTRY: list(M.scenario.accreditations)}) == ()
    orgs = {Accreditation.decode(Envelope.decode(r).payload).org for r in got}
    assert orgs == set(ORGS)


def test_a_bogus_claim_is_judged_at_once_and_the_honest_text_is_final() -> None:
    """No trust state waits: the bogus text's record is judged when offered, then the honest
    text gathers k votes and is final."""
    bogus = dataclasses.replace(
        seal_one(), partitions={REGISTRY: PartitionSeal(10**9, _root("bogus"))}
    )
    c = chain()
    v = c.offer(0, cosigned(bogus, "eu")).verdicts
    assert len(v) == 1 and not c.waiting
    honest = seal_one()
    voters = [o for o in ORGS if o != "eu"][:K]  # EU voted for its own text in this round
    finals = [
        f for i, org in enumerate(voters) for f in c.offer(1 + i, cosigned(honest, org)).finals
    ]
    assert [f.digest for f in finals] == [honest.digest]


# -- forks -----------------------------------------------------------------------------------


def _final_one(c: SealChain) -> SealProposal:
    p = seal_one()
    for i, org in enumerate(ORGS[:K]):
        c.offer(i, cosigned(p, org))
    assert c.latest is not None and c.latest.digest == p.digest
    return p


def test_k_votes_on_a_second_text_of_the_final_epoch_are_a_fork() -> None:
    c = chain()
    p = _final_one(c)
    other = dataclasses.replace(p, time_ms=p.time_ms + 1)
    alarms = []
    for i, org in enumerate(ORGS[-K:]):
        v = c.offer(10 + i, cosigned(other, org)).verdicts[0]
        assert v.reason is Reason.SEAL_EPOCH_FINAL and v.final is None
        alarms += [v.alarm] if v.alarm else []
    assert len(alarms) == 1 and c.alarms == alarms
    a = alarms[0]
    assert (a.reason, a.epoch, a.offset, a.signers) == (
        Reason.SEAL_FORK,
        1,
        10 + K - 1,
        frozenset(ORGS[-K:]),
    )
    ours, theirs = a.notes
    assert ours.startswith(p.text() + b"\n") and ours.count(b"\n\xe2\x80\x94 ") == K
    assert theirs.startswith(other.text() + b"\n") and theirs.count(b"\n\xe2\x80\x94 ") == K
    assert c.latest is not None and c.latest.digest == p.digest  # the final seal stands


def test_k_votes_on_a_text_naming_another_prev_are_a_fork() -> None:
    c = chain()
    p = _final_one(c)
    ring = carried_trust(MANDATE, TOPICS, p)
    c2 = SealChain(MID, lambda q: ring if q.epoch == 2 else carried_trust(MANDATE, TOPICS, q))
    for i, org in enumerate(ORGS[:K]):
        c2.offer(i, cosigned(p, org))
    elsewhere = dataclasses.replace(p, time_ms=p.time_ms + 1)  # the other side's seal 1
    nxt = SealProposal(MID, 2, p.time_ms + 5, elsewhere.digest, dict(elsewhere.partitions))
    alarms = [
        a for i, org in enumerate(ORGS[-K:]) for a in c2.offer(20 + i, cosigned(nxt, org)).alarms
    ]
    assert [(a.reason, a.epoch, a.signers) for a in alarms] == [
        (Reason.SEAL_FORK, 2, frozenset(ORGS[-K:]))
    ]
    assert c2.latest is not None and c2.latest.epoch == 1
    assert isinstance(ring, KeyRing)


def test_fewer_than_k_votes_on_another_text_are_no_fork() -> None:
    c = chain()
    p = _final_one(c)
    other = dataclasses.replace(p, time_ms=p.time_ms + 1)
    for i, org in enumerate(ORGS[-(K - 1) :]):
        assert c.offer(10 + i, cosigned(other, org)).alarms == ()
    # The same lines again, and a line on another text by those organizations, add nothing.
    assert c.offer(20, cosigned(other, ORGS[-1])).alarms == ()
    assert c.alarms == []


def test_alarms_are_kept_once_in_the_final_store(tmp_path: Path) -> None:
    c = chain()
    p = _final_one(c)
    other = dataclasses.replace(p, time_ms=p.time_ms + 1)
    for i, org in enumerate(ORGS[-K:]):
        c.offer(10 + i, cosigned(other, org))
    store = FinalStore(tmp_path / "final.db")
    store.save_alarms(c.alarms)
    store.save_alarms(c.alarms)
    kept = store.alarms()
    assert len(kept) == 1 and kept[0]["reason"] == "seal_fork"
    assert [n.encode() for n in kept[0]["notes"]] == list(c.alarms[0].notes)
    store.close()
