"""Signed delivery receipts: made by an organization's gateway, kept and checked by observers.

A receipt is a :class:`~bus.model.Receipt` in a :class:`~bus.model.Envelope` of type
:data:`~bus.model.PAYLOAD_RECEIPT`, signed (over DSSE PAE, like every envelope) by exactly one
node key that the receipt's organization accredited with role ``NODE``.

Verification rule (:func:`verify_receipt`), the same for observers and auditors:

1. the bytes are a canonical envelope of type ``receipt`` with exactly one signature (the
   rule of every singly signed envelope, :func:`bus.crypto.open_single`);
2. the signing key is accredited in the key ring, its signature verifies under the pinned
   Ed25519 rule (:mod:`bus.crypto`), and the receipt names that key (``node_key_id``), the
   accredited subject (``node_id``) and organization (``org``);
3. the key is accredited as ``NODE`` and ``issued_at_ms`` lies in its validity window;
4. the key has **no** revocation at all. Revocations cut an observer's chain at a sequence
   number (see :mod:`bus.trust`); receipts have no sequence, so a receipt signed by a node key
   that was ever revoked fails closed with ``key_revoked``. The log stays the ground truth: the
   observer can still find its report at the receipt's position;
5. when the caller passes the envelope it delivered, the receipt must name exactly that
   envelope (report id, digest, observer, seq), else ``receipt_mismatch``. The envelope is a
   plain report or a restricted one (:mod:`bus.sealed`): a restricted report's receipt answers
   the sealed envelope's digest and its clear fields (report id, observer, organization, seq),
   which are the ones the gateway judged and published; nothing is decrypted.

Pure: no asyncio, Kafka, socket or HTTP imports.
"""

from __future__ import annotations

from typing import Final

from bus.crypto import SigningKey, open_single, sign_single
from bus.errors import Reason, VerificationError
from bus.model import (
    PAYLOAD_RECEIPT,
    PAYLOAD_REPORT,
    PAYLOAD_SEALED_REPORT,
    Envelope,
    Receipt,
    Report,
    Role,
    SealedReport,
    encode,
    sha256,
)
from bus.trust import KeyRing

# check_usable() cuts at a sequence number; a receipt has none, so it is judged as if it came
# after every sequence number: any revocation of the node key then applies (fail closed).
_AFTER_EVERY_SEQ: Final = 2**64


def sign_receipt(receipt: Receipt, node_key: SigningKey) -> bytes:
    """The envelope bytes of a receipt signed by the node key.

    Raises:
        ValueError: ``receipt.node_key_id`` is not the id of ``node_key``.
    """
    if receipt.node_key_id != node_key.key_id:
        raise ValueError("receipt.node_key_id must be the signing node key's id")
    return sign_single(PAYLOAD_RECEIPT, encode(receipt), node_key).encode()


def verify_receipt(raw: bytes, keyring: KeyRing, *, envelope: bytes | None = None) -> Receipt:
    """Verify receipt envelope bytes (see the module docstring for the rule).

    Args:
        raw: the receipt envelope bytes as the gateway sent them.
        keyring: accreditations (at least the node's) under the mandate.
        envelope: the report envelope bytes the receipt should answer, or None to check the
            signature and accreditation only.

    Returns:
        The verified receipt.

    Raises:
        VerificationError: ``malformed``, ``missing_signature``, ``wrong_payload_type``,
            ``invalid_field``, ``unknown_key``, ``bad_signature``, ``malformed_key``,
            ``subject_mismatch``, ``wrong_org``, ``wrong_role``, ``key_expired``,
            ``key_revoked``, ``wrong_mandate`` or ``receipt_mismatch``.
    """
    env, acc = open_single(raw, PAYLOAD_RECEIPT, keyring.lookup, what="receipt")
    receipt = Receipt.decode(env.payload)
    if receipt.node_key_id != env.signatures[0].key_id:
        raise VerificationError(
            Reason.SUBJECT_MISMATCH, "receipt names another node key than the one that signed it"
        )
    if receipt.node_id != acc.subject_id:
        raise VerificationError(
            Reason.SUBJECT_MISMATCH,
            f"signed by {acc.org}/{acc.subject_id}, claims node {receipt.node_id}",
        )
    if receipt.org != acc.org:
        raise VerificationError(
            Reason.WRONG_ORG, f"claims org {receipt.org!r}, key accredited by {acc.org!r}"
        )
    if receipt.mandate_id != keyring.mandate.mandate_id:
        raise VerificationError(Reason.WRONG_MANDATE, f"receipt for {receipt.mandate_id!r}")
    keyring.check_usable(acc, role=Role.NODE, at_ms=receipt.issued_at_ms, seq=_AFTER_EVERY_SEQ)
    if envelope is not None:
        _check_answers(receipt, envelope)
    return receipt


def _check_answers(receipt: Receipt, envelope: bytes) -> None:
    if receipt.envelope_digest != sha256(envelope):
        raise VerificationError(
            Reason.RECEIPT_MISMATCH,
            "receipt names another envelope digest",
            report_id=receipt.report_id,
        )
    env = Envelope.decode(envelope)
    report: Report | SealedReport
    if env.payload_type == PAYLOAD_REPORT:
        report = Report.decode(env.payload)
    elif env.payload_type == PAYLOAD_SEALED_REPORT:  # restricted: its clear fields
        report = SealedReport.decode(env.payload)
    else:
        raise VerificationError(Reason.WRONG_PAYLOAD_TYPE, "the receipted envelope is no report")
    mine = (report.report_id, report.observer_id, report.seq, report.org)
    theirs = (receipt.report_id, receipt.observer_id, receipt.seq, receipt.org)
    if mine != theirs:
        raise VerificationError(
            Reason.RECEIPT_MISMATCH,
            f"receipt names {theirs}, the report is {mine}",
            report_id=report.report_id,
        )
