"""The observer's chain head statement (bus.receipt): one definition that the gateway signs with
and the observer verifies with; its canonical bytes, and every way a statement is refused."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from typing import Any

import pytest

from bus.crypto import SigningKey, pae, verify
from bus.errors import Reason, VerificationError
from bus.model import Accreditation, Role
from bus.receipt import HEAD_PAYLOAD_TYPE, ObserverHead, head_payload, sign_head, verify_head
from tests.mission import demo_key

NOW = 1_793_491_200_000
NODE = demo_key("observer-head:un-node")
OTHER = demo_key("observer-head:another-node")
DIGEST = hashlib.sha256(b"the envelope of seq 3").digest()


def _acc(key: SigningKey) -> Accreditation:
    return Accreditation("un-node", "un", Role.NODE, key.public_key, NOW - 1, NOW + 10**9, 1,
                         "test-mandate")  # fmt: skip


def _doc(**changes: Any) -> dict[str, Any]:
    doc = sign_head(ObserverHead("un", "un-obs-7", 3, DIGEST, NOW, NODE.key_id), NODE)
    doc.update(changes)
    return doc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_canonical_bytes_are_sorted_compact_json() -> None:
    payload = head_payload(org="un", observer_id="un-obs-7", seq=3, digest=b"\x01" * 32,
                           as_of_ms=NOW, node_key_id=b"\x02" * 32)  # fmt: skip
    assert (
        payload
        == (
            '{"as_of_ms":1793491200000,"digest_b64":"' + _b64(b"\x01" * 32) + '",'
            '"node_key_id_b64":"' + _b64(b"\x02" * 32) + '","observer_id":"un-obs-7","org":"un",'
            '"seq":3}'
        ).encode()
    )
    assert HEAD_PAYLOAD_TYPE == "application/vnd.obus.observer-head.v1+json"


def test_a_signed_statement_verifies_and_says_what_was_signed() -> None:
    doc = _doc()
    head = verify_head(doc, _acc(NODE))
    assert head == ObserverHead("un", "un-obs-7", 3, DIGEST, NOW, NODE.key_id)
    # the signature is over DSSE PAE of the payload type and the canonical bytes
    message = pae(HEAD_PAYLOAD_TYPE, head_payload(**{
        f.name: getattr(head, f.name) for f in dataclasses.fields(head)
    }))  # fmt: skip
    verify(NODE.public_key, message, base64.b64decode(doc["signature_b64"]))


def test_no_report_yet_is_seq_zero_with_an_empty_digest() -> None:
    doc = sign_head(ObserverHead("un", "un-obs-7", 0, b"", NOW, NODE.key_id), NODE)
    assert verify_head(doc, _acc(NODE)).seq == 0


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (_doc(seq=4), Reason.BAD_SIGNATURE),  # changed after signing
        (_doc(observer_id="un-obs-8"), Reason.BAD_SIGNATURE),
        (_doc(as_of_ms=NOW + 1), Reason.BAD_SIGNATURE),
        (_doc(digest_b64=_b64(bytes(32))), Reason.BAD_SIGNATURE),
        (_doc(node_key_id_b64=_b64(OTHER.key_id)), Reason.SUBJECT_MISMATCH),
        (_doc(digest_b64=_b64(DIGEST[:31])), Reason.INVALID_FIELD),
        (_doc(seq=0), Reason.INVALID_FIELD),  # seq 0 names no digest
        (_doc(seq=-1), Reason.INVALID_FIELD),
        (_doc(seq=2**64), Reason.INVALID_FIELD),
        (_doc(seq="3"), Reason.MALFORMED),
        (_doc(seq=True), Reason.MALFORMED),
        (_doc(seq=3.0), Reason.MALFORMED),
        (_doc(digest_b64="not base64!"), Reason.MALFORMED),
        (_doc(signature_b64=None), Reason.MALFORMED),
        ({k: v for k, v in _doc().items() if k != "org"}, Reason.MALFORMED),
        ([1, 2, 3], Reason.MALFORMED),
        ("{}", Reason.MALFORMED),
    ],
    ids=lambda v: v.value if isinstance(v, Reason) else "",
)
def test_a_statement_that_is_not_the_signed_one_is_refused(doc: object, reason: Reason) -> None:
    with pytest.raises(VerificationError) as info:
        verify_head(doc, _acc(NODE))
    assert info.value.reason is reason


def test_a_statement_signed_by_another_key_is_refused() -> None:
    forged = sign_head(ObserverHead("un", "un-obs-7", 3, DIGEST, NOW, OTHER.key_id), OTHER)
    forged["node_key_id_b64"] = _b64(NODE.key_id)  # claims the accredited key
    with pytest.raises(VerificationError) as info:
        verify_head(forged, _acc(NODE))
    assert info.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(VerificationError) as info:  # names its own key: not the gateway's
        verify_head(sign_head(ObserverHead("un", "un-obs-7", 3, DIGEST, NOW, OTHER.key_id),
                              OTHER), _acc(NODE))  # fmt: skip
    assert info.value.reason is Reason.SUBJECT_MISMATCH


def test_a_head_is_signed_only_by_the_key_it_names() -> None:
    with pytest.raises(ValueError, match="node_key_id"):
        sign_head(ObserverHead("un", "un-obs-7", 3, DIGEST, NOW, OTHER.key_id), NODE)
