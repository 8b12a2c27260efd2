"""Signed receipts: named bad receipts and the reason code each must be refused with (pure)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.crypto import SigningKey
from bus.errors import Reason, VerificationError
from bus.model import (
    PAYLOAD_RECEIPT,
    Envelope,
    Receipt,
    Report,
    Revocation,
    Role,
    Signature,
    encode,
    sha256,
)
from bus.receipt import sign_receipt, verify_receipt
from bus.sign import sign_envelope, sign_revocation
from tests.mission import NOW_MS, Mission, demo_key, make_mission

NODE = demo_key("receipt-test:un-node")
OSCE_NODE = demo_key("receipt-test:osce-node")


def mission() -> Mission:
    m = make_mission(1)
    m.accredit("un-node", "un", NODE, Role.NODE)
    m.accredit("osce-node", "osce", OSCE_NODE, Role.NODE)
    return m


def receipt_for(envelope: bytes, **changes: object) -> Receipt:
    r = Report.decode(Envelope.decode(envelope).payload)
    base = Receipt(
        report_id=r.report_id,
        envelope_digest=sha256(envelope),
        topic="obus.reports.un",
        partition=1,
        offset=41,
        logged_at_ms=NOW_MS - 1000,
        issued_at_ms=NOW_MS - 900,
        org="un",
        node_id="un-node",
        node_key_id=NODE.key_id,
        observer_id=r.observer_id,
        seq=r.seq,
        mandate_id=r.mandate_id,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# A case: mission, delivered envelope -> (receipt bytes, envelope to check against or None).
Case = Callable[[Mission, bytes], tuple[bytes, bytes | None]]


def _signed(rc: Receipt, key: SigningKey = NODE) -> bytes:
    """Signed without sign_receipt's own check (a receipt naming another key)."""
    payload = encode(rc)
    sig = Signature(key.key_id, key.sign_pae(PAYLOAD_RECEIPT, payload))
    return Envelope(PAYLOAD_RECEIPT, payload, (sig,)).encode()


def _flip(raw: bytes) -> bytes:
    env = Envelope.decode(raw)
    s = env.signatures[0]
    return dataclasses.replace(
        env, signatures=(Signature(s.key_id, bytes([s.sig[0] ^ 1]) + s.sig[1:]),)
    ).encode()


def _revoked(m: Mission, env: bytes) -> tuple[bytes, bytes | None]:
    rev = Revocation("un", NODE.key_id, 10**6, NOW_MS, "lost laptop", 5, m.mandate_id)
    m.apply(sign_revocation(rev, m.scenario.org_roots["un"]))
    return sign_receipt(receipt_for(env), NODE), env


def _expired(m: Mission, env: bytes) -> tuple[bytes, bytes | None]:
    key = demo_key("receipt-test:short-node")
    m.accredit("un-node-2", "un", key, Role.NODE, not_after_ms=NOW_MS - 10_000)
    rc = receipt_for(env, node_id="un-node-2", node_key_id=key.key_id)
    return sign_receipt(rc, key), env


def _observer_signs(m: Mission, env: bytes) -> tuple[bytes, bytes | None]:
    oid, key = m.observer("un", 1)
    return sign_receipt(receipt_for(env, node_id=oid, node_key_id=key.key_id), key), env


CASES: dict[str, tuple[Case, Reason]] = {
    "not protobuf": (lambda m, e: (b"\xff\x00garbage", e), Reason.MALFORMED),
    "empty": (lambda m, e: (b"", e), Reason.MALFORMED),
    "no signature": (lambda m, e: (Envelope(PAYLOAD_RECEIPT, encode(receipt_for(e)), ()).to_pb().SerializeToString(), e), Reason.MISSING_SIGNATURE),
    "a report, not a receipt": (lambda m, e: (e, e), Reason.WRONG_PAYLOAD_TYPE),
    "two signatures": (lambda m, e: (sign_envelope(PAYLOAD_RECEIPT, encode(receipt_for(e)), [NODE, NODE]).encode(), e), Reason.INVALID_FIELD),
    "signature flipped": (lambda m, e: (_flip(sign_receipt(receipt_for(e), NODE)), e), Reason.BAD_SIGNATURE),
    "unaccredited node key": (lambda m, e: (sign_receipt(receipt_for(e, node_key_id=demo_key("rogue").key_id), demo_key("rogue")), e), Reason.UNKNOWN_KEY),
    "names another node key": (lambda m, e: (_signed(receipt_for(e, node_key_id=OSCE_NODE.key_id)), e), Reason.SUBJECT_MISMATCH),
    "names another node id": (lambda m, e: (sign_receipt(receipt_for(e, node_id="un-node-9"), NODE), e), Reason.SUBJECT_MISMATCH),
    "other org's node claims un": (lambda m, e: (sign_receipt(receipt_for(e, node_id="osce-node", node_key_id=OSCE_NODE.key_id), OSCE_NODE), e), Reason.WRONG_ORG),
    "observer key signs a receipt": (_observer_signs, Reason.WRONG_ROLE),
    "node accreditation expired": (_expired, Reason.KEY_EXPIRED),
    "node key revoked": (_revoked, Reason.KEY_REVOKED),
    "other mandate": (lambda m, e: (sign_receipt(receipt_for(e, mandate_id="other-2027"), NODE), e), Reason.WRONG_MANDATE),
    "other envelope digest": (lambda m, e: (sign_receipt(receipt_for(e, envelope_digest=sha256(b"x")), NODE), e), Reason.RECEIPT_MISMATCH),
    "answers another report": (lambda m, e: (sign_receipt(receipt_for(e), NODE), m.next_report()), Reason.RECEIPT_MISMATCH),
    "other seq": (lambda m, e: (sign_receipt(receipt_for(e, seq=7), NODE), e), Reason.RECEIPT_MISMATCH),
    "bad report id": (lambda m, e: (_signed(dataclasses.replace(receipt_for(e), report_id="x")), e), Reason.INVALID_FIELD),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_bad_receipt_is_refused_with_its_reason(name: str) -> None:
    build, reason = CASES[name]
    m = mission()
    envelope = m.next_report()
    try:
        raw, against = build(m, envelope)
    except VerificationError as exc:  # refused already when built (domain invariants)
        assert exc.reason is reason, exc.message
        return
    with pytest.raises(VerificationError) as info:
        verify_receipt(raw, m.keyring, envelope=against)
    assert info.value.reason is reason, info.value.message


def test_genuine_receipt_verifies_with_and_without_the_envelope() -> None:
    m = mission()
    envelope = m.next_report()
    raw = sign_receipt(receipt_for(envelope), NODE)
    assert verify_receipt(raw, m.keyring) == receipt_for(envelope)
    got = verify_receipt(raw, m.keyring, envelope=envelope)
    assert (got.topic, got.partition, got.offset) == ("obus.reports.un", 1, 41)
    assert Receipt.decode(Envelope.decode(raw).payload) == got


def test_sign_receipt_refuses_a_key_other_than_the_named_one() -> None:
    m = mission()
    with pytest.raises(ValueError, match="node_key_id"):
        sign_receipt(receipt_for(m.next_report(), node_key_id=OSCE_NODE.key_id), NODE)


_FUZZ = mission()
_FUZZ_ENV = _FUZZ.next_report()
_FUZZ_RECEIPT = sign_receipt(receipt_for(_FUZZ_ENV), NODE)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_mutation_of_a_receipt_is_refused(data: st.DataObject) -> None:
    raw = bytearray(_FUZZ_RECEIPT)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(VerificationError):
        verify_receipt(bytes(raw), _FUZZ.keyring, envelope=_FUZZ_ENV)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_any_bytes_verify_or_raise_verification_error(data: bytes) -> None:
    with contextlib.suppress(VerificationError):
        verify_receipt(data, _FUZZ.keyring)
