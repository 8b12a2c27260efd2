"""Inclusion proofs of single records against quorum checkpoints, from an export file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bus.checkpoint import Note, parse_note
from bus.errors import Reason, VerificationError
from bus.model import Envelope, Receipt, Report, sha256
from nodes.auditor.prove import (
    InclusionProof,
    LogView,
    check_receipt_inclusion,
    log_view_from_file,
    proof_from_json,
    prove_from_file,
    verify_proof,
    verify_proof_from_file,
)
from tests.witnessed_log import ORGS, PREFIX, Log, build_log, write

T = f"{PREFIX}reports.eu"


@pytest.fixture(scope="module")
def log() -> Log:
    return build_log()


def _view(path: Path, log: Log, proof: InclusionProof) -> LogView:
    return log_view_from_file(
        path, log.mission.scenario.mandate, [r.position for r in proof.records]
    )


@pytest.mark.parametrize("offset", range(6))
def test_every_record_is_provable(log: Log, tmp_path: Path, offset: int) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    proof = prove_from_file(
        path, log.mission.scenario.mandate, where=(T, 1, offset), report_id=None
    )
    assert proof.leaf_index == offset
    assert proof.checkpoint.size == 6  # the largest quorum checkpoint covering it
    assert sorted(proof.orgs) == sorted(ORGS)
    doc = json.loads(json.dumps(proof.to_json()))
    again = proof_from_json(doc)
    assert verify_proof_from_file(again, path, log.mission.scenario.mandate) == frozenset(ORGS)


def test_by_report_id(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    rec = next(r for r in log.reports() if (r.topic, r.partition, r.offset) == (T, 0, 4))
    rid = Report.decode(Envelope.decode(rec.value or b"").payload).report_id
    proof = prove_from_file(path, log.mission.scenario.mandate, where=None, report_id=rid)
    assert (proof.topic, proof.partition, proof.offset) == (T, 0, 4)
    assert proof.to_json()["report_id"] == rid


def test_tampered_proofs_fail(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    proof = prove_from_file(path, log.mission.scenario.mandate, where=(T, 0, 2), report_id=None)
    view = _view(path, log, proof)
    bad_path = dataclasses.replace(proof, proof=(bytes(32), *proof.proof[1:]))
    other_value = dataclasses.replace(proof, value=proof.value + b"x")
    other_index = dataclasses.replace(proof, leaf_index=3)
    for bad in (bad_path, other_value, other_index):
        with pytest.raises(VerificationError) as exc:
            verify_proof(bad, view)
        assert exc.value.reason is Reason.INCLUSION_PROOF_INVALID
    note = parse_note(proof.note)
    one_org = dataclasses.replace(proof, note=Note(note.text, note.signatures[:1]).encode())
    with pytest.raises(VerificationError) as exc:
        verify_proof(one_org, view)
    assert exc.value.reason is Reason.WITNESS_QUORUM_NOT_MET


def test_unprovable_records(tmp_path: Path) -> None:
    log = build_log(cosign=False)
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    mandate = log.mission.scenario.mandate
    with pytest.raises(VerificationError) as exc:
        prove_from_file(path, mandate, where=(T, 0, 1), report_id=None)
    assert exc.value.reason is Reason.WITNESS_QUORUM_NOT_MET
    with pytest.raises(VerificationError) as exc:
        prove_from_file(path, mandate, where=(T, 0, 99), report_id=None)
    assert exc.value.reason is Reason.RECORD_MISSING
    with pytest.raises(VerificationError) as exc:
        prove_from_file(path, mandate, where=None, report_id="0190a000-0000-7000-8000-000000000000")
    assert exc.value.reason is Reason.RECORD_MISSING


def test_log_that_does_not_match_the_quorum(log: Log, tmp_path: Path) -> None:
    records = [
        dataclasses.replace(r, value=(r.value or b"") + b"!")
        if (r.section, r.topic, r.partition, r.offset) == ("reports", T, 0, 0)
        else r
        for r in log.records
    ]
    path = write(tmp_path / "log.jsonl", log.header, records)
    with pytest.raises(VerificationError) as exc:
        prove_from_file(path, log.mission.scenario.mandate, where=(T, 0, 3), report_id=None)
    assert exc.value.reason is Reason.CHECKPOINT_ROOT_MISMATCH


def test_a_receipt_is_checked_against_its_proof(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    proof = prove_from_file(path, log.mission.scenario.mandate, where=(T, 0, 2), report_id=None)
    rep = Report.decode(Envelope.decode(proof.value).payload)
    receipt = Receipt(
        report_id=rep.report_id, envelope_digest=sha256(proof.value), topic=T, partition=0,
        offset=2, logged_at_ms=1, issued_at_ms=1, org="eu", node_id="eu-node",
        node_key_id=bytes(32), observer_id=rep.observer_id, seq=rep.seq,
        mandate_id=rep.mandate_id,
    )  # fmt: skip
    check_receipt_inclusion(proof, receipt, _view(path, log, proof))
    for bad in (
        dataclasses.replace(receipt, offset=3),
        dataclasses.replace(receipt, envelope_digest=bytes(32)),
    ):
        with pytest.raises(VerificationError) as exc:
            check_receipt_inclusion(proof, bad, _view(path, log, proof))
        assert exc.value.reason is Reason.RECEIPT_MISMATCH
