"""Inclusion proofs verified against the log, never against themselves.

A proof names the checkpoint records that carry its signatures; the verifier reads each one
from the log (here: the export file) and judges its signatures at that record's real position on
the checkpoints topic and its real log time. Node keys revoked at a position prove nothing from
there on, and a proof that states another position or time than the log holds is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bus.checkpoint import Checkpoint, Note, cosign, key_name, sign_note
from bus.errors import Reason, VerificationError
from bus.export import LogRecord
from bus.merkle import leaf_hash
from bus.model import Revocation
from bus.sign import sign_revocation
from nodes.auditor.prove import (
    CheckpointRecord,
    InclusionProof,
    proof_from_json,
    prove_from_file,
    verify_proof_from_file,
)
from nodes.cli.main import main
from tests.mission import NOW_MS
from tests.witnessed_log import ORGS, PREFIX, Log, build_log, write

T = f"{PREFIX}reports.eu"
CHECKPOINTS = f"{PREFIX}checkpoints"
FORGERS = ORGS[:4]  # a quorum of the six


@pytest.fixture(scope="module")
def log() -> Log:
    return build_log()


def _checkpoint_records(records: list[LogRecord]) -> list[LogRecord]:
    return [r for r in records if r.section == "checkpoints"]


def _revoke_node_keys(log: Log, records: list[LogRecord], orgs: list[str], at: int) -> None:
    """Append to the registry the revocation of each org's node key after checkpoint
    position ``at`` (``last_valid_seq``: records at offsets >= ``at`` no longer count)."""
    last = max(i for i, r in enumerate(records) if r.section == "registry")
    for n, org in enumerate(orgs, start=1):
        rev = Revocation(org, log.keys[org].key_id, at, NOW_MS, "stolen", 1, log.mission.mandate_id)
        raw = sign_revocation(rev, log.mission.scenario.org_roots[org]).encode()
        prev = records[last + n - 1]
        records.insert(
            last + n,
            LogRecord("registry", prev.topic, 0, prev.offset + 1, NOW_MS - 3000, None, raw),
        )


def _forged_note(log: Log, cp: Checkpoint) -> bytes:
    text = cp.text()
    first, *others = FORGERS
    lines = [sign_note(text, log.keys[first], key_name(first, f"{first}-node"))]
    lines += [cosign(text, log.keys[o], key_name(o, f"{o}-node"), NOW_MS // 1000) for o in others]
    return Note(text, tuple(lines)).encode()


def _genuine(log: Log, tmp_path: Path) -> tuple[Path, InclusionProof]:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    proof = prove_from_file(path, log.mission.scenario.mandate, where=(T, 1, 2), report_id=None)
    return path, proof


def _refused(proof: InclusionProof, path: Path, log: Log) -> VerificationError:
    with pytest.raises(VerificationError) as exc:
        verify_proof_from_file(proof, path, log.mission.scenario.mandate)
    return exc.value


def test_a_fabricated_record_proved_with_revoked_node_keys_is_refused(
    log: Log, tmp_path: Path
) -> None:
    """Four organizations' node keys are stolen and revoked from checkpoint position K on. The
    thief signs a one-leaf checkpoint of a fabricated record with them and publishes it (it
    lands at position K); the proof names that record, then (lying) an earlier position, then
    one the log does not hold: none proves anything."""
    records = list(log.records)
    k = len(_checkpoint_records(records))  # every genuine checkpoint record is below K
    _revoke_node_keys(log, records, FORGERS, at=k)
    fabricated = b"a report nobody sent"
    cp = Checkpoint(f"obus/{log.mission.mandate_id}/{T}/0", 1, leaf_hash(fabricated))
    note = _forged_note(log, cp)
    records.insert(
        records.index(_checkpoint_records(records)[-1]) + 1,
        LogRecord("checkpoints", CHECKPOINTS, 0, k, NOW_MS - 500, None, note),
    )
    path = write(tmp_path / "stolen.jsonl", log.header, records)

    def claim(offset: int, time_ms: int) -> InclusionProof:
        return InclusionProof(
            T, 0, 0, 0, fabricated, cp, note, tuple(sorted(FORGERS)), 4, (),
            (CheckpointRecord(CHECKPOINTS, 0, offset, time_ms),),
        )  # fmt: skip

    published = _refused(claim(k, NOW_MS - 500), path, log)
    assert published.reason is Reason.KEY_REVOKED
    assert f"{CHECKPOINTS}[0]@{k}" in published.message
    first = _checkpoint_records(records)[0]
    earlier = _refused(claim(first.offset, first.timestamp_ms), path, log)
    assert earlier.reason is Reason.INVALID_FIELD
    assert "carries another checkpoint" in earlier.message
    nowhere = _refused(claim(k + 50, NOW_MS - 500), path, log)
    assert nowhere.reason is Reason.RECORD_MISSING
    # The prover ignores the revoked checkpoint: the genuine record 0 is proven as before.
    proof = prove_from_file(path, log.mission.scenario.mandate, where=(T, 0, 0), report_id=None)
    assert proof.checkpoint.size == 6 and proof.value != fabricated
    assert all(r.offset < k for r in proof.records)


def test_a_proof_made_before_its_signers_were_revoked_no_longer_verifies(
    log: Log, tmp_path: Path
) -> None:
    """Revoked at position 0: the checkpoint records that carried the proof's signatures are
    now judged revoked at their own positions."""
    path, proof = _genuine(log, tmp_path)
    assert verify_proof_from_file(proof, path, log.mission.scenario.mandate) == frozenset(ORGS)
    records = list(log.records)
    _revoke_node_keys(log, records, ORGS[:3], at=0)
    revoked = write(tmp_path / "revoked.jsonl", log.header, records)
    assert _refused(proof, revoked, log).reason is Reason.KEY_REVOKED


@pytest.mark.parametrize(
    "lie",
    ["log time", "another record's position", "a position past the end", "a report topic"],
)
def test_a_proof_claiming_another_position_or_time_than_the_log_is_refused(
    log: Log, tmp_path: Path, lie: str
) -> None:
    path, proof = _genuine(log, tmp_path)
    ref = proof.records[0]
    other = next(
        r
        for r in _checkpoint_records(log.records)
        if r.offset not in {x.offset for x in proof.records}
    )
    changed = {
        "log time": (dataclasses.replace(ref, log_time_ms=ref.log_time_ms - 1), Reason.INVALID_FIELD, "logged at"),
        "another record's position": (dataclasses.replace(ref, offset=other.offset, log_time_ms=other.timestamp_ms), Reason.INVALID_FIELD, "carries another checkpoint"),
        "a position past the end": (dataclasses.replace(ref, offset=10_000), Reason.RECORD_MISSING, "no checkpoint record"),
        "a report topic": (dataclasses.replace(ref, topic=T), Reason.INVALID_FIELD, "not on the checkpoints topic"),
    }  # fmt: skip
    bad_ref, reason, words = changed[lie]
    bad = dataclasses.replace(proof, records=(bad_ref, *proof.records[1:]))
    exc = _refused(bad, path, log)
    assert exc.reason is reason, exc.message
    assert words in exc.message


def test_a_proof_overstating_its_signers_is_refused(log: Log, tmp_path: Path) -> None:
    path, proof = _genuine(log, tmp_path)
    fewer = dataclasses.replace(proof, records=proof.records[:4])  # lines no named record carries
    assert _refused(fewer, path, log).reason is Reason.INVALID_FIELD
    other_quorum = dataclasses.replace(proof, quorum=1)
    assert _refused(other_quorum, path, log).reason is Reason.INVALID_FIELD


def test_genuine_proofs_verify_against_the_export(log: Log, tmp_path: Path) -> None:
    path, proof = _genuine(log, tmp_path)
    again = proof_from_json(json.loads(json.dumps(proof.to_json())))
    assert again == proof
    assert verify_proof_from_file(again, path, log.mission.scenario.mandate) == frozenset(ORGS)
    doc = proof.to_json()["checkpoint"]
    assert "note_time_ms" not in doc and "note_seq" not in doc
    positions = {(r["topic"], r["offset"], r["log_time_ms"]) for r in doc["records"]}
    held = {(r.topic, r.offset, r.timestamp_ms) for r in _checkpoint_records(log.records)}
    assert positions <= held and len(positions) == len(ORGS)


def test_obus_audit_prove_check(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, proof = _genuine(log, tmp_path)
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(log.mission.scenario.mandate_envelope)
    saved = tmp_path / "proof.json"
    saved.write_text(json.dumps(proof.to_json()))
    base = ["audit", "prove", "--from", str(path), "--mandate", str(mandate)]
    assert main([*base, "--check", str(saved)]) == 0
    assert "verified" in capsys.readouterr().err
    doc = proof.to_json()
    doc["checkpoint"]["records"][0]["log_time_ms"] += 1
    saved.write_text(json.dumps(doc))
    assert main([*base, "--check", str(saved)]) == 1
    assert "invalid_field" in capsys.readouterr().err
