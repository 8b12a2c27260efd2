"""Inclusion proofs against final seals (bus.seal_proof): built from a real seals topic (proposals
and cosignatures by the organizations' node keys), checked fully against the log's final seals
and lightly from the mandate file alone; every kind of forgery is refused with its reason."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.epoch import FinalSeal, PartitionRef
from bus.errors import Reason, VerificationError
from bus.merkle import MerkleTree
from bus.model import Accreditation, Envelope, Receipt, Revocation
from bus.note import cosign
from bus.seal import cosign_seal, sign_proposal
from bus.seal_proof import (
    MAX_PATH_HASHES,
    SealedTrust,
    SealProof,
    build_proof,
    check_receipt_inclusion,
    verify_full,
    verify_light,
)
from bus.sign import sign_accreditation, sign_revocation
from tests.mission import NOW_MS, make_mission
from tests.sealed_bus import SealedBus, build, final_seals, name


def trusted(bus: SealedBus) -> SealedTrust:
    """The prover's reader fed the bus's seals topic and trust topics."""
    t = bus.topics
    out = SealedTrust(bus.m.scenario.mandate, t)
    for off, v in enumerate(bus.seals):
        out.offer_seal(off, v)
    for ref, values in sorted(bus.parts.items()):
        if ref[0] in (t.registry, t.mandate):
            for o, value in enumerate(values):
                out.offer_trust(ref, o, value)
    return out


def prove(
    bus: SealedBus, ref: PartitionRef, offset: int, st_: SealedTrust | None = None
) -> SealProof:
    st_ = st_ or trusted(bus)
    seal = st_.covering(ref, offset)
    assert seal is not None
    note = st_.note(seal.epoch)
    assert note is not None
    return build_proof(*ref, offset, bus.parts[ref], seal=seal, note=note,
                       registry=st_.registry_for(seal.epoch))  # fmt: skip


def full(proof: SealProof, st_: SealedTrust) -> frozenset[str]:
    epoch = proof.seal().epoch
    final, ring = st_.final(epoch), st_.keyring(epoch)
    assert final is not None and ring is not None
    return verify_full(proof, final, ring)


def refused(reason: Reason, check: Callable[..., object], *args: object, **kw: object) -> None:
    with pytest.raises(VerificationError) as info:
        check(*args, **kw)
    assert info.value.reason is reason, info.value.message


def lines_of(text: bytes, bus: SealedBus, orgs: list[str]) -> bytes:
    """``text`` with cosignature lines of ``orgs``' node keys: a note."""
    keys = bus.m.scenario.node_keys
    return (
        text
        + b"\n"
        + b"".join(cosign(text, keys[o], name(o), bus.clock // 1000).line() for o in orgs)
    )


@pytest.fixture(scope="module")
def bus() -> SealedBus:
    return build()


def test_reader_derives_the_final_seals_a_bus_reader_derives(bus: SealedBus) -> None:
    assert trusted(bus).finals == final_seals(bus)


def test_a_proof_of_every_sealed_record_verifies_both_ways(bus: SealedBus) -> None:
    st_ = trusted(bus)
    mandate = bus.m.scenario.mandate
    last = st_.finals[-1]
    proven = 0
    for ref in sorted(last.partitions):
        for offset in range(last.size(ref)):
            p = prove(bus, ref, offset, st_)
            assert p.leaf_index == offset and len(p.registry) == len(full(p, st_))
            assert full(p, st_) == verify_light(p, mandate)
            assert len(verify_light(p, mandate)) >= mandate.threshold
            assert SealProof.from_json(json.loads(json.dumps(p.to_json()))) == p
            proven += 1
    assert proven == sum(last.size(r) for r in last.partitions) > 20


def test_the_first_covering_seal_or_a_later_one_on_request(bus: SealedBus) -> None:
    st_ = trusted(bus)
    ref = (bus.topics.reports("un"), 0)
    first = prove(bus, ref, 0, st_)
    assert first.seal().epoch == 2
    later = st_.finals[-1]
    note = st_.note(later.epoch)
    assert note is not None
    p = build_proof(*ref, 0, bus.parts[ref], seal=later, note=note,
                    registry=st_.registry_for(later.epoch))  # fmt: skip
    assert p.size == later.size(ref) > first.size
    assert full(p, st_) and verify_light(p, bus.m.scenario.mandate)


def test_records_not_sealed_yet_have_no_proof(bus: SealedBus) -> None:
    st_ = trusted(bus)
    ref = (bus.topics.reports("un"), 0)
    assert st_.covering(ref, len(bus.parts[ref]) - 1) is None  # the unsealed tail
    beyond = st_.finals[-1].size(ref)
    refused(Reason.RECORD_NOT_SEALED, build_proof, *ref, beyond, bus.parts[ref],
            seal=st_.finals[-1], note=st_.note(st_.finals[-1].epoch))  # fmt: skip


def test_a_tree_proves_with_the_value_beside_it(bus: SealedBus) -> None:
    st_ = trusted(bus)
    ref = (bus.topics.reports("osce"), 1)
    tree = MerkleTree()
    for v in bus.parts[ref]:
        tree.append(v or b"")
    seal = st_.covering(ref, 1)
    assert seal is not None
    note = st_.note(seal.epoch) or b""
    p = build_proof(*ref, 1, tree, seal=seal, note=note, value=bus.parts[ref][1])
    assert p == dataclasses.replace(prove(bus, ref, 1, st_), registry=())
    refused(Reason.INVALID_FIELD, build_proof, *ref, 1, tree, seal=seal, note=note, value=b"x")


def test_records_altered_under_the_seal_give_no_proof(bus: SealedBus) -> None:
    st_ = trusted(bus)
    ref = (bus.topics.reports("un"), 0)
    seal = st_.covering(ref, 0)
    assert seal is not None
    values = list(bus.parts[ref])
    values[1] = b"altered"
    refused(Reason.SEALED_ROOT_MISMATCH, build_proof, *ref, 0, values, seal=seal,
            note=st_.note(seal.epoch))  # fmt: skip


# -- forgeries, each refused with its reason ------------------------------------------------------


def test_tampered_value_index_path_note_are_refused(bus: SealedBus) -> None:
    st_ = trusted(bus)
    mandate = bus.m.scenario.mandate
    p = prove(bus, (bus.topics.reports("un"), 0), 2, st_)
    value = dataclasses.replace(p, value=p.value[:-1] + bytes([p.value[-1] ^ 1]))
    index = dataclasses.replace(p, leaf_index=p.leaf_index + 1)
    moved = dataclasses.replace(p, offset=p.offset + 1, leaf_index=p.leaf_index + 1)
    path = dataclasses.replace(p, path=(bytes(32), *p.path[1:]))
    short = dataclasses.replace(p, path=p.path[:-1])
    for forged, reason in (
        (value, Reason.INCLUSION_PROOF_INVALID),
        (index, Reason.INVALID_FIELD),
        (moved, Reason.INCLUSION_PROOF_INVALID),
        (path, Reason.INCLUSION_PROOF_INVALID),
        (short, Reason.INCLUSION_PROOF_INVALID),
        (dataclasses.replace(p, size=p.size + 1), Reason.INVALID_FIELD),
        (dataclasses.replace(p, path=p.path * 40), Reason.OVERSIZED),
    ):
        refused(reason, full, forged, st_)
        refused(reason, verify_light, forged, mandate)
    assert len(p.path * 40) > MAX_PATH_HASHES


def test_a_note_with_another_text_is_refused(bus: SealedBus) -> None:
    st_ = trusted(bus)
    p = prove(bus, (bus.topics.reports("un"), 0), 2, st_)
    text = p.seal().text()
    other = text.replace(str(p.seal().time_ms).encode(), str(p.seal().time_ms + 1).encode())
    forged = dataclasses.replace(p, note=other + p.note[len(text) :])
    refused(Reason.SEAL_NOT_FINAL, full, forged, st_)
    refused(Reason.BAD_SIGNATURE, verify_light, forged, bus.m.scenario.mandate)


def test_a_seal_offset_other_than_the_log_s_is_refused(bus: SealedBus) -> None:
    st_ = trusted(bus)
    p = prove(bus, (bus.topics.reports("un"), 0), 2, st_)
    refused(Reason.SEAL_NOT_FINAL, full, dataclasses.replace(p, seal_offset=p.seal_offset - 1), st_)


def test_cosignatures_of_fewer_than_k_organizations_are_refused(bus: SealedBus) -> None:
    st_ = trusted(bus)
    p = prove(bus, (bus.topics.reports("un"), 0), 2, st_)
    lines = p.note.split(b"\n\n")[1].splitlines(keepends=True)
    assert len(lines) == bus.m.scenario.mandate.threshold
    short = dataclasses.replace(p, note=p.seal().text() + b"\n" + b"".join(lines[:-1]))
    refused(Reason.SEAL_QUORUM_NOT_MET, full, short, st_)
    refused(Reason.SEAL_QUORUM_NOT_MET, verify_light, short, bus.m.scenario.mandate)
    twice = dataclasses.replace(p, note=short.note + lines[0])  # one line twice counts once
    refused(Reason.SEAL_QUORUM_NOT_MET, full, twice, st_)


def test_a_line_by_a_key_nobody_accredited_is_refused(bus: SealedBus) -> None:
    st_ = trusted(bus)
    p = prove(bus, (bus.topics.reports("un"), 0), 2, st_)
    keys = bus.m.scenario.node_keys
    stranger = cosign(p.seal().text(), keys["un"], "obus/un/un-node-9", 1).line()
    forged = dataclasses.replace(p, note=p.note + stranger)
    refused(Reason.UNKNOWN_KEY, full, forged, st_)
    refused(Reason.UNKNOWN_KEY, verify_light, forged, bus.m.scenario.mandate)


def test_a_note_in_another_encoding_is_refused(bus: SealedBus) -> None:
    st_ = trusted(bus)
    p = prove(bus, (bus.topics.reports("un"), 0), 2, st_)
    # The last base64 character before "==" carries 4 unused bits: another value decodes to
    # the same signature, and is refused all the same (one note, one encoding).
    at = p.note.index(b"==\n") - 1
    char = p.note[at : at + 1]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = bytes([alphabet[alphabet.index(char) ^ 1]])
    forged = dataclasses.replace(p, note=p.note[:at] + twin + p.note[at + 1 :])
    refused(Reason.MALFORMED, verify_light, forged, bus.m.scenario.mandate)


def test_an_accreditation_not_signed_by_the_mandate_s_roots_is_refused(bus: SealedBus) -> None:
    st_ = trusted(bus)
    p = prove(bus, (bus.topics.reports("un"), 0), 2, st_)
    sc = bus.m.scenario
    acc = Accreditation.decode(Envelope.decode(p.registry[0]).payload)
    other_root = sc.org_roots["sco" if acc.org != "sco" else "un"]
    forged = sign_accreditation(acc, other_root).encode()
    refused(Reason.UNKNOWN_KEY, verify_light, dataclasses.replace(p, registry=(forged, *p.registry[1:])),
            sc.mandate)  # fmt: skip
    # A line whose key no carried record accredits counts for nothing, and is named.
    refused(Reason.UNKNOWN_KEY, verify_light, dataclasses.replace(p, registry=p.registry[1:]),
            sc.mandate)  # fmt: skip
    refused(Reason.MALFORMED, verify_light, dataclasses.replace(p, registry=(b"junk",)), sc.mandate)


def test_a_seal_that_is_not_final_is_refused() -> None:
    """Two proposals for epoch 2: the first gets the votes of two organizations, the second
    those of four and is final; a proof against the first is refused."""
    bus = build(junk=False, unsealed=0)
    t = bus.topics
    for _ in range(3):
        bus.put(t.reports("un"), bus.m.next_report("un", 1))
    bus.catch_up()
    bus.clock += 1000
    minority = bus.witness.propose(org="csto", now_ms=bus.clock)
    majority = bus.witness.propose(org="un", now_ms=bus.clock + 1)
    assert minority is not None and majority is not None
    keys = bus.m.scenario.node_keys
    bus.seals.append(sign_proposal(minority, keys["csto"], name("csto")))
    at = len(bus.seals)
    for org in ("csto", "sco"):
        bus.seals.append(cosign_seal(minority.text(), keys[org], name(org), now_ms=bus.clock))
    bus.seals.append(sign_proposal(majority, keys["un"], name("un")))
    for org in ("un", "osce", "eu", "nato"):
        bus.seals.append(cosign_seal(majority.text(), keys[org], name(org), now_ms=bus.clock))
    st_ = trusted(bus)
    final = st_.finals[-1]
    assert final.digest == majority.digest
    ref = (t.reports("un"), 0)
    offset = len(bus.parts[ref]) - 1
    fake = minority.final(digest=minority.digest, signers=["csto", "sco"], offset=at + 1)
    p = build_proof(*ref, offset, bus.parts[ref], seal=fake,
                    note=lines_of(minority.text(), bus, ["csto", "sco"]),
                    registry=bus.m.scenario.node_accreditations)  # fmt: skip
    refused(Reason.SEAL_NOT_FINAL, full, p, st_)
    refused(Reason.SEAL_QUORUM_NOT_MET, verify_light, p, bus.m.scenario.mandate)
    four = lines_of(minority.text(), bus, ["csto", "sco", "eu", "nato"])
    refused(Reason.SEAL_NOT_FINAL, full, dataclasses.replace(p, note=four), st_)
    assert verify_full(prove(bus, ref, offset, st_), final, st_.keyring(final.epoch)) == {  # type: ignore[arg-type]
        "un",
        "osce",
        "eu",
        "nato",
    }


def test_a_revoked_node_key_s_cosignature_is_refused() -> None:
    """EU revokes its node key after epoch 1; the seal of epoch 3 counts the others' votes
    only, and a note carrying EU's line is refused (full: the log's trust; light: the
    revocation carried)."""
    bus = build(junk=False, unsealed=0)
    t, sc = bus.topics, bus.m.scenario
    eu_key = sc.node_keys["eu"]
    rev = Revocation("eu", eu_key.key_id, 2, NOW_MS, "stolen", 1, sc.mandate.mandate_id)
    rev_raw = sign_revocation(rev, sc.org_roots["eu"]).encode()
    bus.put(t.registry, rev_raw)
    bus.put(t.reports("un"), bus.m.next_report("un", 1))
    bus.seal()  # epoch 5: the revocation takes effect from epoch 6
    bus.put(t.reports("un"), bus.m.next_report("un", 1))
    p6 = bus.seal()
    st_ = trusted(bus)
    assert st_.finals[-1].epoch == p6.epoch == 6 and "eu" not in st_.finals[-1].signers
    ref = (t.reports("un"), 0)
    p = prove(bus, ref, len(bus.parts[ref]) - 1, st_)
    assert "eu" not in verify_light(p, sc.mandate)
    with_eu = dataclasses.replace(
        p, note=p.note + lines_of(p.seal().text(), bus, ["eu"]).split(b"\n\n")[1]
    )
    refused(Reason.KEY_REVOKED, full, with_eu, st_)
    eu_acc = next(
        raw for raw in sc.node_accreditations
        if Accreditation.decode(Envelope.decode(raw).payload).org == "eu"
    )  # fmt: skip
    carried = dataclasses.replace(with_eu, registry=(*p.registry, eu_acc, rev_raw))
    refused(Reason.KEY_REVOKED, verify_light, carried, sc.mandate)
    # Without the revocation the light check cannot know it (module docstring): EU counts.
    assert "eu" in verify_light(
        dataclasses.replace(with_eu, registry=(*p.registry, eu_acc)), sc.mandate
    )


def test_a_receipt_s_proof_must_be_of_its_record(bus: SealedBus) -> None:
    st_ = trusted(bus)
    ref = (bus.topics.reports("un"), 0)
    p = prove(bus, ref, 2, st_)
    receipt = Receipt(
        report_id=json.loads(json.dumps(p.to_json()))["report_id"],
        envelope_digest=hashlib.sha256(p.value).digest(), topic=ref[0], partition=0, offset=2,
        logged_at_ms=NOW_MS, issued_at_ms=NOW_MS, org="un", node_id="un-node-1",
        node_key_id=bytes(32), observer_id="un-obs-1", seq=3, mandate_id="jmm-2026",
    )  # fmt: skip
    assert check_receipt_inclusion(p, receipt, bus.m.scenario.mandate)
    refused(Reason.RECEIPT_MISMATCH, check_receipt_inclusion, p,
            dataclasses.replace(receipt, offset=3), bus.m.scenario.mandate)  # fmt: skip
    refused(Reason.RECEIPT_MISMATCH, check_receipt_inclusion, p,
            dataclasses.replace(receipt, envelope_digest=bytes(32)), bus.m.scenario.mandate)  # fmt: skip


def test_json_forms_that_are_not_proofs_are_refused(bus: SealedBus) -> None:
    p = prove(bus, (bus.topics.reports("un"), 0), 2)
    doc = p.to_json()
    broken: object
    for broken in (
        [], {}, {**doc, "format": "other"}, {**doc, "offset": "2"},
        {**doc, "value_base64": "!!"}, {**doc, "inclusion_proof": ["zz"]},
        {**doc, "seal": {**doc["seal"], "note": "no note"}},
    ):  # fmt: skip
        refused(Reason.MALFORMED, SealProof.from_json, broken)
    refused(Reason.INVALID_FIELD, SealProof.from_json, {**doc, "report_id": None})
    refused(Reason.INVALID_FIELD, SealProof.from_json, {**doc, "seal": {**doc["seal"], "epoch": 1}})
    refused(Reason.OVERSIZED, SealProof.from_json, {**doc, "registry": ["AA=="] * 201})


# -- property: every record of a random sealed log, and every single-byte change ------------------


_MISSION = make_mission(observers_per_org=1)


@st.composite
def sealed_logs(draw: st.DrawFn) -> SealedBus:
    m = dataclasses.replace(_MISSION)
    bus = SealedBus(m, clock=NOW_MS)
    t, sc = bus.topics, m.scenario
    bus.put(t.mandate, sc.mandate_envelope)
    for raw in sc.node_accreditations:
        bus.put(t.registry, raw)
    bus.seal()
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 3))):
        for _ in range(draw(st.integers(1, 6))):
            org = rng.choice(["un", "osce", "eu"])
            bus.put(t.reports(org), rng.randbytes(rng.randrange(0, 40)) or None, rng.randrange(3))
        bus.seal()
    return bus


def _flip(data: bytes, at: int, bit: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sealed_logs(), st.data())
def test_property_every_record_proves_and_any_byte_change_is_refused(
    bus: SealedBus, data: st.DataObject
) -> None:
    st_ = trusted(bus)
    mandate = bus.m.scenario.mandate
    last: FinalSeal = st_.finals[-1]
    proofs = [
        prove(bus, ref, o, st_) for ref in sorted(last.partitions) for o in range(last.size(ref))
    ]
    for p in proofs:
        assert len(full(p, st_)) >= mandate.threshold
        assert len(verify_light(p, mandate)) >= mandate.threshold
    p = data.draw(st.sampled_from(proofs))
    field = data.draw(st.sampled_from(["value", "note", "path", "registry"]))
    at, bit = data.draw(st.integers(0, 2**20)), data.draw(st.integers(0, 7))
    if field == "value":
        forged = dataclasses.replace(p, value=_flip(p.value, at, bit) if p.value else b"\0")
    elif field == "note":
        forged = dataclasses.replace(p, note=_flip(p.note, at, bit))
    elif field == "path":
        flat = b"".join(p.path)
        if not flat:
            forged = dataclasses.replace(p, path=(bytes(32),))
        else:
            flat = _flip(flat, at, bit)
            forged = dataclasses.replace(
                p, path=tuple(flat[i : i + 32] for i in range(0, len(flat), 32))
            )
    else:
        i = at % len(p.registry)
        forged = dataclasses.replace(
            p, registry=(*p.registry[:i], _flip(p.registry[i], at // 7, bit), *p.registry[i + 1 :])
        )
    with pytest.raises(VerificationError):
        verify_light(forged, mandate)
    if field != "registry":  # the full check reads accreditations from the log, not the proof
        with pytest.raises(VerificationError):
            full(forged, st_)
    assert SealProof.from_json(json.loads(json.dumps(p.to_json()))) == p
