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

**The observer's chain head statement** (``GET /v1/observers/{id}/head``): the gateway's
node key states the last report of an observer's chain it accepted, so that a new device (a new
key accredited for the same observer id) continues the chain there. Its canonical bytes
(:func:`head_payload`) are UTF-8 JSON of exactly the keys ``as_of_ms``, ``digest_b64``,
``node_key_id_b64``, ``observer_id``, ``org``, ``seq``, sorted, without whitespace, integers as
JSON numbers and bytes in standard base64 with padding; the signature is the node key's Ed25519
signature of DSSE ``pae(HEAD_PAYLOAD_TYPE, those bytes)``, domain-separated from every envelope,
receipt and seal by its payload type. The JSON document served is those fields plus
``signature_b64`` (:func:`sign_head`); :func:`verify_head` checks one against the accreditation
of the node key that signed it. ``seq`` 0 with an empty digest: no report of that observer yet.

Pure: no asyncio, Kafka, socket or HTTP imports.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

from bus.crypto import SigningKey, open_single, sign_single, verify_pae
from bus.errors import Reason, VerificationError
from bus.model import (
    PAYLOAD_RECEIPT,
    PAYLOAD_REPORT,
    PAYLOAD_SEALED_REPORT,
    Accreditation,
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
HEAD_PAYLOAD_TYPE: Final = "application/vnd.obus.observer-head.v1+json"
"""The payload type a chain head statement's signature is domain-separated by."""
_DIGEST_BYTES: Final = 32
_MAX_SEQ: Final = 2**64 - 1  # a report's seq is a uint64


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


# ---------------------------------------------------------------------------------------------
# The observer's chain head statement


@dataclass(frozen=True, slots=True)
class ObserverHead:
    """What a chain head statement states: the last report of (``org``, ``observer_id``)'s
    chain that the gateway accepted (``seq``, its envelope's SHA-256 ``digest``; 0 and empty
    bytes before the first), as of ``as_of_ms``, signed by the node key ``node_key_id``."""

    org: str
    observer_id: str
    seq: int
    digest: bytes
    as_of_ms: int
    node_key_id: bytes


def head_payload(
    *, org: str, observer_id: str, seq: int, digest: bytes, as_of_ms: int, node_key_id: bytes
) -> bytes:
    """The canonical bytes a chain head statement signs (module docstring)::

    {"as_of_ms":N,"digest_b64":"...","node_key_id_b64":"...","observer_id":"...",
     "org":"...","seq":N}
    """
    doc = {
        "org": org,
        "observer_id": observer_id,
        "seq": seq,
        "digest_b64": base64.b64encode(digest).decode(),
        "as_of_ms": as_of_ms,
        "node_key_id_b64": base64.b64encode(node_key_id).decode(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _payload_of(head: ObserverHead) -> bytes:
    return head_payload(
        org=head.org, observer_id=head.observer_id, seq=head.seq, digest=head.digest,
        as_of_ms=head.as_of_ms, node_key_id=head.node_key_id,
    )  # fmt: skip


def sign_head(head: ObserverHead, node_key: SigningKey) -> dict[str, Any]:
    """The JSON document of a chain head statement signed by ``node_key``.

    Raises:
        ValueError: ``head.node_key_id`` is not the id of ``node_key``.
    """
    if head.node_key_id != node_key.key_id:
        raise ValueError("head.node_key_id must be the signing node key's id")
    signature = node_key.sign_pae(HEAD_PAYLOAD_TYPE, _payload_of(head))
    return {
        "org": head.org,
        "observer_id": head.observer_id,
        "seq": head.seq,
        "digest_b64": base64.b64encode(head.digest).decode(),
        "as_of_ms": head.as_of_ms,
        "node_key_id_b64": base64.b64encode(head.node_key_id).decode(),
        "signature_b64": base64.b64encode(signature).decode(),
    }


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _number(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    if type(value) is not int:
        raise TypeError(f"{key} must be an integer")
    return value


def verify_head(doc: object, node: Accreditation) -> ObserverHead:
    """Verify a chain head statement (the JSON document :func:`sign_head` makes) as signed by
    the node key that ``node`` accredits. The caller checks that ``node`` is a verified
    accreditation of its organization's node key (role ``NODE``) and that the head is of the
    observer it asks about.

    Raises:
        VerificationError: ``malformed`` (not the document: a key missing, a field of the wrong
            type, base64 that does not decode); ``invalid_field`` (a seq outside 0..2^64-1, a
            digest that is not 32 bytes, or not empty at seq 0); ``subject_mismatch`` (it names
            another node key than ``node``'s); ``bad_signature`` (the signature does not verify
            over the statement's canonical bytes).
    """
    if not isinstance(doc, dict):
        raise VerificationError(Reason.MALFORMED, "a chain head statement is a JSON object")
    try:
        head = ObserverHead(
            org=_text(doc, "org"),
            observer_id=_text(doc, "observer_id"),
            seq=_number(doc, "seq"),
            digest=base64.b64decode(_text(doc, "digest_b64"), validate=True),
            as_of_ms=_number(doc, "as_of_ms"),
            node_key_id=base64.b64decode(_text(doc, "node_key_id_b64"), validate=True),
        )
        signature = base64.b64decode(_text(doc, "signature_b64"), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise VerificationError(Reason.MALFORMED, f"not a chain head statement: {exc}") from exc
    if not 0 <= head.seq <= _MAX_SEQ:
        raise VerificationError(Reason.INVALID_FIELD, f"seq {head.seq} is not a uint64")
    if len(head.digest) != (0 if head.seq == 0 else _DIGEST_BYTES):
        raise VerificationError(
            Reason.INVALID_FIELD,
            f"a digest of {len(head.digest)} bytes at seq {head.seq} (32 bytes, none at seq 0)",
        )
    if head.node_key_id != node.key_id:
        raise VerificationError(
            Reason.SUBJECT_MISMATCH,
            f"the statement names node key {head.node_key_id.hex()[:16]}, the gateway's"
            f" accreditation is of {node.key_id.hex()[:16]}",
        )
    verify_pae(node.public_key, HEAD_PAYLOAD_TYPE, _payload_of(head), signature)
    return head
