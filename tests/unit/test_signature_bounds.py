"""Bounded work per trust and statement record: size limits and signature bounds.

Every test counts the Ed25519 verifications it causes (``bus.crypto.verify``, which every
signature check ends in) instead of timing anything: a hostile record must be refused before a
single signature of it is verified, and a genuine one must cost at most one verification per
key. ``bench/signature_flood.py`` prints the CPU time of the same records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator

import pytest

import bus.crypto
from bus import ceremony
from bus.crypto import SigningKey
from bus.errors import Reason, VerificationError
from bus.lifecycle import TrustTimeline
from bus.model import (
    SIGNATURE_WIRE_BYTES,
    EncryptionKey,
    Envelope,
    Mandate,
    Organization,
    Revocation,
    Role,
    Signature,
)
from bus.policy import Evidence
from bus.sign import (
    sign_encryption_key,
    sign_envelope,
    sign_mandate,
    sign_revocation,
)
from bus.statement import (
    MAX_STATEMENT_RECORD_BYTES,
    PAYLOAD_STATEMENT,
    JointStatement,
    StatementBook,
    cosign,
    sign_statement,
)
from bus.trust import (
    MAX_MANDATE_RECORD_BYTES,
    MAX_REGISTRY_RECORD_BYTES,
    KeyRing,
    decode_mandate_record,
    decode_registry_record,
    verify_mandate,
)
from bus.uuid7 import uuid7
from nodes.demo.scenario import demo_key
from tests.mission import NOW_MS, Mission, make_mission

FLOOD = 10_000


@contextlib.contextmanager
def counting_verifies() -> Iterator[list[int]]:
    """Count the Ed25519 verifications run inside the block (a one-element list)."""
    calls = [0]
    real = bus.crypto.verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> None:
        calls[0] += 1
        real(public_key, message, signature)

    bus.crypto.verify = counting  # verify_pae calls the module global
    try:
        yield calls
    finally:
        bus.crypto.verify = real


def _refused(fn: Callable[[], object]) -> VerificationError:
    with pytest.raises(VerificationError) as exc:
        fn()
    return exc.value


def _garbage(key_ids: list[bytes], count: int) -> tuple[Signature, ...]:
    """``count`` invalid signatures naming the given key ids in turn."""
    return tuple(
        Signature(key_ids[i % len(key_ids)], bytes([i % 251 + 1]) * 64) for i in range(count)
    )


def _roots(m: Mission) -> list[SigningKey]:
    return list(m.scenario.org_roots.values())


def _v2(m: Mission, **changes: object) -> Mandate:
    return dataclasses.replace(m.scenario.mandate, version=2, **changes)  # type: ignore[arg-type]


# -- mandate records ------------------------------------------------------------------------


def test_mandate_record_with_10000_garbage_signatures_is_refused_without_verifying() -> None:
    m = make_mission()
    genuine = sign_mandate(_v2(m), _roots(m)[:4])
    root_ids = [k.key_id for k in _roots(m)]
    flood = dataclasses.replace(
        genuine, signatures=(*_garbage(root_ids, FLOOD), *genuine.signatures)
    )
    raw = flood.encode()
    assert len(raw) > 1_000_000
    timeline = TrustTimeline(m.scenario.mandate)
    with counting_verifies() as verifies:
        # The path nodes take: the record decoded, then offered.
        err = _refused(lambda: timeline.offer_mandate(Envelope.decode(raw), now_ms=NOW_MS))
        assert err.reason is Reason.OVERSIZED
        assert err.context["size"] == len(raw)
        err = _refused(lambda: verify_mandate(flood, previous=m.scenario.mandate, now_ms=NOW_MS))
        assert err.reason is Reason.OVERSIZED
        assert _refused(lambda: decode_mandate_record(raw)).reason is Reason.OVERSIZED
    assert verifies[0] == 0
    assert timeline.mandate.version == 1
    # The genuine record still applies afterwards.
    assert timeline.offer_mandate(genuine, now_ms=NOW_MS) is not None


def test_oversized_mandate_record_is_refused_before_decoding() -> None:
    m = make_mission()
    junk = b"\xff" * (MAX_MANDATE_RECORD_BYTES + 1)  # malformed, were it decoded
    # A genuinely signed version, too large only because of its text.
    big = sign_mandate(_v2(m, description="x" * MAX_MANDATE_RECORD_BYTES), _roots(m))
    timeline = TrustTimeline(m.scenario.mandate)
    with counting_verifies() as verifies:
        assert _refused(lambda: decode_mandate_record(junk)).reason is Reason.OVERSIZED
        assert _refused(lambda: decode_mandate_record(big.encode())).reason is Reason.OVERSIZED
        err = _refused(lambda: timeline.offer_mandate(big, now_ms=NOW_MS))
        assert err.reason is Reason.OVERSIZED
        assert err.context["limit"] == MAX_MANDATE_RECORD_BYTES
    assert verifies[0] == 0
    genuine = sign_mandate(_v2(m), _roots(m)).encode()
    assert decode_mandate_record(genuine) == Envelope.decode(genuine)


def test_mandate_record_with_more_signatures_than_root_keys_is_refused() -> None:
    m = make_mission()
    genuine = sign_mandate(_v2(m), _roots(m))  # six organizations, all six sign
    outsider = sign_mandate(_v2(m), [demo_key("outsider")]).signatures
    seventh = dataclasses.replace(genuine, signatures=(*genuine.signatures, *outsider))
    # As many garbage signatures as fit under the size limit.
    fits = (MAX_MANDATE_RECORD_BYTES - genuine.wire_size()) // SIGNATURE_WIRE_BYTES
    root_ids = [k.key_id for k in _roots(m)]
    flood = dataclasses.replace(
        genuine, signatures=(*_garbage(root_ids, fits), *genuine.signatures)
    )
    assert flood.wire_size() <= MAX_MANDATE_RECORD_BYTES
    timeline = TrustTimeline(m.scenario.mandate)
    with counting_verifies() as verifies:
        err = _refused(lambda: verify_mandate(seventh, previous=m.scenario.mandate, now_ms=NOW_MS))
        assert err.reason is Reason.TOO_MANY_SIGNATURES
        assert (err.context["signatures"], err.context["allowed"]) == (7, 6)
        err = _refused(lambda: timeline.offer_mandate(flood, now_ms=NOW_MS))
        assert err.reason is Reason.TOO_MANY_SIGNATURES
    assert verifies[0] == 0


def test_second_mandate_signature_by_one_key_id_is_refused_without_verifying() -> None:
    m = make_mission()
    genuine = sign_mandate(_v2(m), _roots(m)[:4])
    first = genuine.signatures[0]
    with counting_verifies() as verifies:
        for second in (first, Signature(first.key_id, bytes(64))):  # a copy, or garbage
            env = dataclasses.replace(genuine, signatures=(*genuine.signatures, second))
            err = _refused(
                functools.partial(verify_mandate, env, previous=m.scenario.mandate, now_ms=NOW_MS)
            )
            assert err.reason is Reason.TOO_MANY_SIGNATURES
            assert err.context["key_id"] == first.key_id.hex()
    assert verifies[0] == 0


def test_unknown_key_ids_are_skipped_without_verifying() -> None:
    m = make_mission()
    v1 = m.scenario.mandate
    outsiders = sign_mandate(v1, [demo_key("outsider-1"), demo_key("outsider-2")]).signatures
    genuine = sign_mandate(v1, _roots(m)[:4])
    env = dataclasses.replace(genuine, signatures=(*outsiders, *genuine.signatures))
    with counting_verifies() as verifies:
        assert verify_mandate(env, previous=None, now_ms=NOW_MS) == v1
    assert verifies[0] == 4


def _un_rotated(m: Mission) -> tuple[Mandate, SigningKey]:
    """Version 2 with UN's root key replaced, and the new key."""
    new_un = demo_key("rotated:un")
    orgs = tuple(
        dataclasses.replace(o, root_public_key=new_un.public_key) if o.org == "un" else o
        for o in m.scenario.mandate.organizations
    )
    return _v2(m, organizations=orgs), new_un


def test_k_of_n_rotation_verifies_each_signature_once() -> None:
    m = make_mission()
    v2, new_un = _un_rotated(m)
    roots = m.scenario.org_roots
    env = sign_mandate(v2, [roots["un"], new_un, roots["osce"], roots["eu"], roots["csto"]])
    timeline = TrustTimeline(m.scenario.mandate)
    with counting_verifies() as verifies:
        assert timeline.offer_mandate(env, now_ms=NOW_MS) == v2
    # Five signatures, each verified once although four organizations are in both versions.
    assert verifies[0] == 5


def test_rotation_signed_by_every_old_and_new_root_key_is_accepted() -> None:
    # Seven signatures over six organizations: the bound counts root keys, not organizations.
    m = make_mission()
    v2, new_un = _un_rotated(m)
    env = sign_mandate(v2, [*_roots(m), new_un])
    assert len(env.signatures) == 7
    with counting_verifies() as verifies:
        assert verify_mandate(env, previous=m.scenario.mandate, now_ms=NOW_MS) == v2
    assert verifies[0] == 7


def test_offered_version_organizations_are_not_tried_before_the_previous_threshold() -> None:
    # The author of a forged version chooses its organizations: 20 of its own, all signing,
    # beside garbage under each of the six real root keys. Only those six are ever tried.
    m = make_mission()
    v1 = m.scenario.mandate
    fakes = [demo_key(f"fake:{i}") for i in range(20)]
    orgs = (
        *v1.organizations,
        *(Organization(f"fake{i}", "", k.public_key) for i, k in enumerate(fakes)),
    )
    forged = sign_mandate(_v2(m, organizations=orgs, threshold=20), fakes)
    env = dataclasses.replace(
        forged, signatures=(*_garbage([k.key_id for k in _roots(m)], 6), *forged.signatures)
    )
    with counting_verifies() as verifies:
        err = _refused(lambda: verify_mandate(env, previous=v1, now_ms=NOW_MS))
    assert err.reason is Reason.THRESHOLD_NOT_MET
    assert verifies[0] == 6


def test_largest_plausible_mandate_fits_its_limit() -> None:
    # 100 organizations with 63-character ids and 200-character names, every root key rotated
    # in one version: signed by 100 old and 100 new keys.
    base = make_mission().scenario.mandate
    old = [demo_key(f"old:{i}") for i in range(100)]
    new = [demo_key(f"new:{i}") for i in range(100)]

    def version(n: int, keys: list[SigningKey]) -> Mandate:
        orgs = tuple(
            Organization(f"{i:03d}" + "o" * 60, "N" * 200, k.public_key) for i, k in enumerate(keys)
        )
        return dataclasses.replace(base, version=n, organizations=orgs, threshold=67)

    v1, v2 = version(1, old), version(2, new)
    env = sign_mandate(v2, [*old, *new])
    assert env.wire_size() <= MAX_MANDATE_RECORD_BYTES
    assert verify_mandate(env, previous=v1, now_ms=NOW_MS) == v2


def test_ceremony_merges_copies_of_a_signature_without_verifying_them_again() -> None:
    m = make_mission()
    draft = ceremony.Draft.of(m.scenario.mandate)
    sigs = [ceremony.sign_draft(draft, k) for k in _roots(m)[:4]]
    with counting_verifies() as verifies:
        env = ceremony.combine(draft, sigs * 250, previous=None, now_ms=NOW_MS)
    assert len(env.signatures) == 4
    assert verifies[0] == 4 + 4  # each once in combine, each once in verify_mandate


# -- registry records -----------------------------------------------------------------------


def _registry_records(m: Mission) -> dict[str, Envelope]:
    un = m.scenario.org_roots["un"]
    mandate = m.scenario.mandate
    rev = Revocation("un", demo_key("lost").key_id, 3, NOW_MS, "lost", 1, mandate.mandate_id)
    ek = EncryptionKey(
        "un", bytes(range(32)), mandate.not_before_ms, mandate.not_after_ms, 1, mandate.mandate_id
    )
    return {
        "accreditation": Envelope.decode(m.scenario.accreditations[0]),
        "revocation": sign_revocation(rev, un),
        "encryption key": sign_encryption_key(ek, un),
    }


@pytest.mark.parametrize("kind", ["accreditation", "revocation", "encryption key"])
def test_registry_record_with_two_signatures_is_refused(kind: str) -> None:
    m = make_mission()
    genuine = _registry_records(m)[kind]
    osce = m.scenario.org_roots["osce"]
    also_osce = sign_envelope(genuine.payload_type, genuine.payload, [osce])
    env = dataclasses.replace(genuine, signatures=(*genuine.signatures, *also_osce.signatures))
    mandate = m.scenario.mandate
    with counting_verifies() as verifies:
        for apply in (KeyRing(mandate).apply, TrustTimeline(mandate).apply_registry):
            err = _refused(functools.partial(apply, env))
            assert err.reason is Reason.TOO_MANY_SIGNATURES
        err = _refused(lambda: decode_registry_record(env.encode()))
        assert err.reason is Reason.TOO_MANY_SIGNATURES
        assert verifies[0] == 0
        KeyRing(mandate).apply(genuine)
    assert verifies[0] == 1


def test_accreditation_with_two_signatures_is_refused() -> None:
    # A garbage signature by the right key first, the genuine one second: it used to count.
    m = make_mission()
    genuine = Envelope.decode(m.scenario.accreditations[0])
    un_root = m.scenario.org_roots["un"].key_id
    env = dataclasses.replace(genuine, signatures=(*_garbage([un_root], 1), *genuine.signatures))
    with counting_verifies() as verifies:
        err = _refused(lambda: KeyRing(m.scenario.mandate).apply(env))
    assert err.reason is Reason.TOO_MANY_SIGNATURES
    assert (err.context["signatures"], err.context["allowed"]) == (2, 1)
    assert verifies[0] == 0


def test_revocation_with_a_duplicate_key_signature_is_refused() -> None:
    m = make_mission()
    genuine = _registry_records(m)["revocation"]
    twice = dataclasses.replace(genuine, signatures=genuine.signatures * 2)
    timeline = TrustTimeline(m.scenario.mandate)
    with counting_verifies() as verifies:
        err = _refused(lambda: timeline.apply_registry(twice))
    assert err.reason is Reason.TOO_MANY_SIGNATURES
    assert verifies[0] == 0
    assert timeline.revocations() == []


def test_refused_registry_record_is_not_kept_for_later_versions() -> None:
    m = make_mission()
    timeline = TrustTimeline(m.scenario.mandate)
    for raw in m.registry:
        timeline.apply_registry(decode_registry_record(raw))
    genuine = Envelope.decode(m.scenario.accreditations[0])
    flood = dataclasses.replace(
        genuine, signatures=(*_garbage([genuine.signatures[0].key_id], 60), *genuine.signatures)
    )
    assert flood.wire_size() <= MAX_REGISTRY_RECORD_BYTES
    assert _refused(lambda: timeline.apply_registry(flood)).reason is Reason.TOO_MANY_SIGNATURES
    v2 = sign_mandate(_v2(m), _roots(m)[:4])
    with counting_verifies() as verifies:
        assert timeline.offer_mandate(v2, now_ms=NOW_MS) is not None
    assert verifies[0] == 4 + len(m.registry)  # the version, then each kept record once


def test_oversized_registry_record_is_refused() -> None:
    m = make_mission()
    junk = b"\xff" * (MAX_REGISTRY_RECORD_BYTES + 1)  # malformed, were it decoded
    # A genuinely signed revocation, too large only because of its reason text.
    rev = Revocation(
        "un", demo_key("lost").key_id, 3, NOW_MS, "r" * MAX_REGISTRY_RECORD_BYTES, 1, m.mandate_id
    )
    env = sign_revocation(rev, m.scenario.org_roots["un"])
    mandate = m.scenario.mandate
    with counting_verifies() as verifies:
        assert _refused(lambda: decode_registry_record(junk)).reason is Reason.OVERSIZED
        err = _refused(lambda: decode_registry_record(env.encode()))
        assert err.reason is Reason.OVERSIZED
        for apply in (KeyRing(mandate).apply, TrustTimeline(mandate).apply_registry):
            err = _refused(functools.partial(apply, env))
            assert err.reason is Reason.OVERSIZED
            assert err.context["limit"] == MAX_REGISTRY_RECORD_BYTES
    assert verifies[0] == 0


def test_genuine_registry_records_still_apply() -> None:
    m = make_mission()
    ring = KeyRing(m.scenario.mandate)
    records = _registry_records(m)
    with counting_verifies() as verifies:
        for raw in m.registry:
            ring.apply(decode_registry_record(raw))
        ring.apply(records["revocation"])
        ring.apply(records["encryption key"])
    assert verifies[0] == len(m.registry) + 2
    assert len(ring) == len(m.registry)
    assert [r.key_id for r in ring.revocations()] == [demo_key("lost").key_id]
    assert ring.encryption_key("un") is not None
    # The limit leaves room for thirty times the demo's largest record.
    assert max(len(raw) for raw in m.registry) * 30 < MAX_REGISTRY_RECORD_BYTES


# -- statements -----------------------------------------------------------------------------


def _statement(**changes: object) -> JointStatement:
    s = JointStatement(
        statement_id=uuid7(NOW_MS, bytes(range(10))),
        mandate_id="jmm-2026",
        drafted_by="un",
        title="Escalation in the east",
        text="Ceasefire violations doubled week over week.",
        references=(Evidence(uuid7(NOW_MS, bytes(10)), bytes(32)),),
        created_at_ms=NOW_MS,
    )
    return dataclasses.replace(s, **changes)  # type: ignore[arg-type]


def _node_keys(m: Mission) -> dict[str, SigningKey]:
    keys = {}
    for org in m.scenario.org_roots:
        keys[org] = demo_key(f"test:node:{org}")
        m.accredit(f"{org}-node", org, keys[org], Role.NODE)
    return keys


def test_statement_with_more_signatures_than_organizations_is_refused() -> None:
    m = make_mission()
    keys = _node_keys(m)
    draft = Envelope.decode(sign_statement(_statement(), keys["un"]))
    strangers = tuple(Signature(os.urandom(32), bytes(64)) for _ in range(6))
    seven = dataclasses.replace(draft, signatures=(*draft.signatures, *strangers))
    flood = dataclasses.replace(
        draft, signatures=(*_garbage([keys["un"].key_id], 2000), *draft.signatures)
    )
    assert len(flood.encode()) <= MAX_STATEMENT_RECORD_BYTES
    with counting_verifies() as verifies:
        err = _refused(lambda: StatementBook(m.keyring).apply(seven.encode()))
        assert err.reason is Reason.TOO_MANY_SIGNATURES
        assert (err.context["signatures"], err.context["allowed"]) == (7, 6)
        err = _refused(lambda: StatementBook(m.keyring).apply(flood.encode()))
        assert err.reason is Reason.TOO_MANY_SIGNATURES
    assert verifies[0] == 0


def test_statement_with_two_signatures_by_one_key_is_refused() -> None:
    m = make_mission()
    keys = _node_keys(m)
    draft = Envelope.decode(sign_statement(_statement(), keys["un"]))
    twice = dataclasses.replace(draft, signatures=draft.signatures * 2)
    with counting_verifies() as verifies:
        err = _refused(lambda: StatementBook(m.keyring).apply(twice.encode()))
    assert err.reason is Reason.TOO_MANY_SIGNATURES
    assert verifies[0] == 0


def test_oversized_statement_record_is_refused_before_decoding() -> None:
    m = make_mission()
    junk = b"\xff" * (MAX_STATEMENT_RECORD_BYTES + 1)  # malformed, were it decoded
    with counting_verifies() as verifies:
        err = _refused(lambda: StatementBook(m.keyring).apply(junk))
    assert err.reason is Reason.OVERSIZED
    assert err.context["size"] == len(junk)
    assert verifies[0] == 0


def test_largest_valid_statement_fits_its_limit() -> None:
    m = make_mission()
    keys = _node_keys(m)
    largest = _statement(
        title="\U0001f600" * 200,
        text="\U0001f600" * 10_000,
        references=tuple(
            Evidence(uuid7(NOW_MS, i.to_bytes(10, "big")), bytes(32)) for i in range(2000)
        ),
    )
    payload = Envelope.decode(sign_statement(largest, keys["un"])).payload
    raw = sign_envelope(PAYLOAD_STATEMENT, payload, list(keys.values())).encode()
    assert len(raw) <= MAX_STATEMENT_RECORD_BYTES
    status, added = StatementBook(m.keyring).apply(raw)
    assert status.valid and len(added) == 6


def test_statement_signatures_of_a_counted_organization_are_not_verified() -> None:
    m = make_mission()
    keys = _node_keys(m)
    payload = Envelope.decode(sign_statement(_statement(), keys["un"])).payload
    both = sign_envelope(PAYLOAD_STATEMENT, payload, [keys["un"], m.scenario.org_roots["un"]])
    with counting_verifies() as verifies:
        status, added = StatementBook(m.keyring).apply(both.encode())
    assert added == ["un"] and status.signed_by["un"] == "un-node"
    assert verifies[0] == 1


def test_k_of_n_statement_still_becomes_valid() -> None:
    m = make_mission()
    keys = _node_keys(m)
    book = StatementBook(m.keyring)
    draft = sign_statement(_statement(), keys["un"])
    with counting_verifies() as verifies:
        status, _ = book.apply(draft)
        for org in ("osce", "eu", "nato"):
            status, _ = book.apply(cosign(draft, keys[org]))
    assert status.valid and sorted(status.signed_by) == ["eu", "nato", "osce", "un"]
    assert verifies[0] == 4


# -- the wire size every limit is checked against -------------------------------------------


@pytest.mark.parametrize("payload_len", [0, 1, 127, 128, 16_383, 16_384, 2_097_152])
@pytest.mark.parametrize("signatures", [1, 2, 300])
def test_envelope_wire_size_is_its_encoded_length(payload_len: int, signatures: int) -> None:
    sigs = tuple(Signature(os.urandom(32), os.urandom(64)) for _ in range(signatures))
    for payload_type in ("a", "application/vnd.obus.mandate.v1+protobuf", "\u00e9" * 70):
        env = Envelope(payload_type, os.urandom(payload_len), sigs)
        assert env.wire_size() == len(env.encode())
