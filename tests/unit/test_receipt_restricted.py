"""Receipts of restricted (sealed) reports: the receipt answers the sealed envelope's digest and
its clear fields; nothing is decrypted (pure)."""

from __future__ import annotations

import dataclasses

import pytest

from bus.crypto import sign_single
from bus.errors import Reason, VerificationError
from bus.model import (
    PAYLOAD_RECEIPT,
    EncryptionKey,
    Envelope,
    Receipt,
    Role,
    SealedReport,
    sha256,
)
from bus.receipt import sign_receipt, verify_receipt
from bus.sealed import DecryptionKey
from bus.sign import sign_encryption_key
from tests.mission import NOW_MS, Mission, demo_key, make_mission

NODE = demo_key("receipt-restricted:un-node")


def _mission() -> Mission:
    m = make_mission(1)
    m.accredit("un-node", "un", NODE, Role.NODE)
    mandate = m.scenario.mandate
    for org in ("un", "osce"):
        key = DecryptionKey(org, demo_key(f"receipt-restricted:x25519:{org}").seed)
        ek = EncryptionKey(
            org, key.public_key, mandate.not_before_ms, mandate.not_after_ms, 1, m.mandate_id
        )
        m.apply(sign_encryption_key(ek, m.scenario.org_roots[org]))
    return m


def _sealed(m: Mission) -> bytes:
    eks = [m.keyring.encryption_key(o) for o in ("un", "osce")]
    return m.signer("un", 1).sign_sealed(m.draft("un", 1), [e for e in eks if e is not None])


def _receipt(envelope: bytes, **changes: object) -> Receipt:
    s = SealedReport.decode(Envelope.decode(envelope).payload)
    base = Receipt(
        report_id=s.report_id, envelope_digest=sha256(envelope), topic="obus.reports.un",
        partition=0, offset=3, logged_at_ms=NOW_MS - 1000, issued_at_ms=NOW_MS - 900,
        org="un", node_id="un-node", node_key_id=NODE.key_id, observer_id=s.observer_id,
        seq=s.seq, mandate_id=s.mandate_id,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_restricted_reports_receipt_verifies_against_the_sealed_envelope() -> None:
    m = _mission()
    sealed = _sealed(m)
    raw = sign_receipt(_receipt(sealed), NODE)
    assert verify_receipt(raw, m.keyring, envelope=sealed) == _receipt(sealed)


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("other digest", {"envelope_digest": sha256(b"other")}),
        ("other seq", {"seq": 2}),
        ("other observer", {"observer_id": "un-obs-9"}),
        ("other report id", {"report_id": "01890a5d-ac96-774b-bcce-b302099a8057"}),
    ],
)
def test_a_receipt_naming_other_clear_fields_of_a_restricted_report_is_refused(
    name: str, changes: dict[str, object]
) -> None:
    m = _mission()
    sealed = _sealed(m)
    raw = sign_receipt(_receipt(sealed, **changes), NODE)
    with pytest.raises(VerificationError) as info:
        verify_receipt(raw, m.keyring, envelope=sealed)
    assert info.value.reason is Reason.RECEIPT_MISMATCH, name


def test_an_envelope_that_is_neither_report_is_still_refused() -> None:
    m = _mission()
    receipt = sign_receipt(_receipt(_sealed(m)), NODE)
    other = sign_single(PAYLOAD_RECEIPT, b"", NODE).encode()
    rc = sign_receipt(_receipt(_sealed(m), envelope_digest=sha256(other)), NODE)
    with pytest.raises(VerificationError) as info:
        verify_receipt(rc, m.keyring, envelope=other)
    assert info.value.reason is Reason.WRONG_PAYLOAD_TYPE
    assert verify_receipt(receipt, m.keyring).org == "un"
