"""Every decoder and verifier of bus/, as a function of untrusted bytes, for fuzzing.

The invariant: for any input a target returns a verified object or raises a
:class:`~bus.errors.BusError` subclass, never anything else. ``Ingestor.judge`` is stricter: it
never raises at all. Shared by the Hypothesis tests (tests/unit/test_fuzz_invariant.py) and the
long run (``make fuzz``, tests/fuzz/run.py).

Seeds are valid inputs of each kind (a signed report, accreditation, mandate, receipt,
seal record, export lines, a report file, a policy), so mutations reach past the first length
check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import struct
from collections.abc import Callable
from typing import Final

from bus import (
    ceremony,
    crypto,
    decision,
    export,
    merkle,
    model,
    note,
    receipt,
    report_file,
    seal,
    sealed,
    statement,
    trust,
)
from bus.epoch import GENESIS_DIGEST, PartitionSeal
from bus.errors import BusError
from bus.ingest import Accepted, Ingestor, Quarantined
from bus.policy_file import parse_policy
from bus.verify import ChainBook, verify_report
from nodes.demo.scenario import node_subject
from tests.mission import NOW_MS, make_mission, ref

Target = Callable[[bytes], object]

_M = make_mission()
for _raw in _M.scenario.node_accreditations:  # node keys, so seal lines reach verification
    _M.apply(model.Envelope.decode(_raw))
_KEYRING = _M.keyring
_MANDATE = _M.scenario.mandate
# open_note with no known key: every signature is "unknown"
_NOTE_KEYS: Final[note.VerifierIndex] = {}
_IDENTITY = report_file.Identity("un-obs-1", "un", _MANDATE.mandate_id)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _ints(data: bytes, count: int) -> tuple[list[int], bytes]:
    """`count` small integers from the front of data (zero-padded), and the rest."""
    head = data[: 2 * count].ljust(2 * count, b"\0")
    return list(struct.unpack(f">{count}H", head)), data[2 * count :]


def _chunks(data: bytes, size: int = 32) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _judge(data: bytes) -> object:
    """Ingestor.judge must never raise, whatever the bytes (topic org 'un')."""
    ingestor = Ingestor(_KEYRING, ChainBook({}, lambda _rid: None), clock=_M.clock)
    out = ingestor.judge(ref(), data, "un")
    if not isinstance(out, Accepted | Quarantined):
        raise TypeError(f"judge returned {out!r}")
    return out


def _inclusion(data: bytes) -> object:
    (index, size), rest = _ints(data, 2)
    leaf, root, proof = rest[:32], rest[32:64], _chunks(rest[64:])
    merkle.verify_inclusion(leaf, index, size, proof, root)
    return True


def _consistency(data: bytes) -> object:
    (old, new), rest = _ints(data, 2)
    merkle.verify_consistency(old, new, rest[:32], rest[32:64], _chunks(rest[64:]))
    return True


def _mandate_from_json(data: bytes) -> object:
    try:
        doc = json.loads(data)
    except ValueError:
        return None  # not a document: nothing for the decoder to judge
    if not isinstance(doc, dict):
        return None
    return ceremony.mandate_from_description(doc)


TARGETS: dict[str, Target] = {
    "envelope": model.Envelope.decode,
    "report": model.Report.decode,
    "mandate": model.Mandate.decode,
    "accreditation": model.Accreditation.decode,
    "revocation": model.Revocation.decode,
    "receipt_message": model.Receipt.decode,
    "verify_report": lambda d: verify_report(
        d, expected_org="un", keyring=_KEYRING, reference_ms=NOW_MS
    ),
    "ingest_judge": _judge,
    "verify_mandate": lambda d: trust.verify_mandate(
        model.Envelope.decode(d), previous=None, now_ms=NOW_MS
    ),
    "verify_mandate_rotation": lambda d: trust.verify_mandate(
        model.Envelope.decode(d), previous=_MANDATE, now_ms=NOW_MS
    ),
    "verify_accreditation": lambda d: trust.verify_accreditation(
        model.Envelope.decode(d), _MANDATE
    ),
    "verify_revocation": lambda d: trust.verify_revocation(model.Envelope.decode(d), _MANDATE),
    "keyring_apply": lambda d: trust.KeyRing(_MANDATE).apply(model.Envelope.decode(d)),
    "decode_registry_record": trust.decode_registry_record,
    "verify_receipt": lambda d: receipt.verify_receipt(d, _KEYRING),
    "verify_receipt_for": lambda d: receipt.verify_receipt(d, _KEYRING, envelope=_M.next_report()),
    "crypto_verify": lambda d: crypto.verify(d[:32], d[96:], d[32:96]),
    "crypto_verify_pae": lambda d: crypto.verify_pae(
        d[:32], model.PAYLOAD_REPORT, d[96:], d[32:96]
    ),
    "note": note.parse_note,
    "open_note": lambda d: note.open_note(d, _NOTE_KEYS),
    "vkey": lambda d: note.parse_vkey(_text(d)),
    "seal": seal.parse_seal,
    "seal_record": seal.parse_seal_record,
    "verify_seal": lambda d: seal.verify_seal(d, _KEYRING),
    "withdrawal_record": seal.parse_withdrawal_record,
    "merkle_inclusion": _inclusion,
    "merkle_consistency": _consistency,
    "export_header": export.ExportHeader.decode,
    "export_record": export.LogRecord.decode,
    "export_reader": lambda d: list(export.ExportReader(io.BytesIO(d))),
    "ceremony_draft": ceremony.Draft.decode,
    "ceremony_signatures": ceremony.decode_signatures,
    "ceremony_description": _mandate_from_json,
    "report_file_yaml": lambda d: report_file.parse_report(
        _text(d), identity=_IDENTITY, now_ms=NOW_MS, fmt="yaml", mandate=_MANDATE
    ),
    "report_file_json": lambda d: report_file.parse_report(
        _text(d), identity=_IDENTITY, now_ms=NOW_MS, fmt="json", mandate=_MANDATE
    ),
    "policy": lambda d: parse_policy(_text(d)),
}

TARGETS.update(
    {
        "sealed_report": lambda d: sealed.verify_sealed_report(
            d, expected_org="un", keyring=_KEYRING, reference_ms=NOW_MS
        ),
        "encryption_key": model.EncryptionKey.decode,
        "verify_encryption_key": lambda d: trust.verify_encryption_key(
            model.Envelope.decode(d), _MANDATE
        ),
        "decision": decision.PublishedDecision.decode,
        "verify_decision": lambda d: decision.verify_decision(d, _KEYRING, topic_org="un"),
        "statement": statement.JointStatement.decode,
    }
)


def _seeds() -> dict[str, list[bytes]]:
    report = _M.next_report()
    acc_env = model.Envelope.decode(_M.scenario.accreditations[0])
    export_header = json.dumps({"format": "obus-log-export", "version": 1}).encode()
    proposal = seal.SealProposal(
        _MANDATE.mandate_id, 1, NOW_MS, GENESIS_DIGEST,
        {("obus.reports.un", 0): PartitionSeal(1, b"\1" * 32)},
    )  # fmt: skip
    node_key, node_name = _M.scenario.node_keys["un"], note.key_name("un", node_subject("un"))
    seal_note = seal.cosign_seal(proposal.text(), node_key, node_name, now_ms=NOW_MS)
    yaml_report = (
        b"category: shelling\nseverity: 3\nzone: north\nobserved_at: 2026-10-31T23:00:00Z\n"
        b"location: {lat: 48.2, lon: 38.0}\nnarrative: Impacts counted.\n"
    )
    policy = b'org = "un"\n[[rule]]\nname = "r"\nwhen = { severity_at_least = 4 }\naction = "a"\n'
    envelopes = [report, _M.scenario.mandate_envelope, *_M.scenario.accreditations[:2]]
    return {
        "bytes": [
            *envelopes, acc_env.payload, seal_note, export_header, yaml_report, policy,
            dataclasses.replace(model.Envelope.decode(report), signatures=()).encode(),
        ],
        "text": [yaml_report, policy, b"un/un-obs-1+01234567+AQ", seal_note, export_header],
    }  # fmt: skip


SEEDS: Final = _seeds()


def run(target: Target, data: bytes) -> None:
    """Apply the invariant: a BusError is an answer; any other exception is a finding."""
    with contextlib.suppress(BusError):
        target(data)
