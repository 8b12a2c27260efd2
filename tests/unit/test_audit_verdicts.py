"""The auditor's verdicts on checkpoints and trust records: what is a fork of the log, what is
evidence against one organization, and registry records judged under the version in force when
they were logged.

Logs are built in memory (:mod:`tests.witnessed_log`: six organizations, quorum 4, UN's witness
publishing checkpoints at sizes 3 and 6 of every partition and the five others cosigning them),
changed, written as export files and audited offline, through the judge and through
``obus audit``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from bus.checkpoint import Checkpoint, Note, cosign, key_name, sign_note, signed_checkpoint
from bus.crypto import SigningKey
from bus.errors import Reason
from bus.export import LogRecord
from bus.model import Accreditation, Envelope, Mandate, Organization, Revocation, Role
from bus.sign import sign_accreditation, sign_mandate, sign_revocation
from nodes.auditor.judge import FindingKind
from nodes.auditor.run import AuditResult, audit_export
from nodes.cli.main import main
from nodes.demo.scenario import demo_key
from tests.mission import NOW_MS
from tests.witnessed_log import ORGS, PREFIX, Log, build_log, write

T = f"{PREFIX}reports.osce"
CHECKPOINTS = f"{PREFIX}checkpoints"


@pytest.fixture(scope="module")
def log() -> Log:
    return build_log()


def _origin(log: Log, partition: int = 0) -> str:
    return f"obus/{log.mission.mandate_id}/{T}/{partition}"


def _signed_by(log: Log, cp: Checkpoint, orgs: list[str]) -> bytes:
    """A checkpoint note signed by the node keys of ``orgs`` (the first publishes, the others
    cosign, as witnesses do)."""
    text = cp.text()
    first, *others = orgs
    lines = [sign_note(text, log.keys[first], key_name(first, f"{first}-node"))]
    lines += [cosign(text, log.keys[o], key_name(o, f"{o}-node"), NOW_MS // 1000) for o in others]
    return Note(text, tuple(lines)).encode()


def _with_checkpoints(log: Log, *notes: bytes) -> list[LogRecord]:
    """The log with notes appended to its checkpoints topic."""
    records = list(log.records)
    last = max(i for i, r in enumerate(records) if r.section == "checkpoints")
    offset = records[last].offset
    for i, note in enumerate(notes, start=1):
        rec = LogRecord("checkpoints", CHECKPOINTS, 0, offset + i, NOW_MS - 1000, b"x", note)
        records.insert(last + i, rec)
    return records


def _audit(
    log: Log, tmp_path: Path, records: list[LogRecord], *, require_witnessed: bool = False
) -> AuditResult:
    path = write(tmp_path / "log.jsonl", log.header, records)
    return audit_export(path, log.mission.scenario.mandate, require_witnessed=require_witnessed)


def _obus(
    log: Log, tmp_path: Path, records: list[LogRecord], *flags: str
) -> tuple[int, dict[str, Any]]:
    path = write(tmp_path / "cli.jsonl", log.header, records)
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(log.mission.scenario.mandate_envelope)
    out = tmp_path / "audit.json"
    code = main(
        ["audit", "--from", str(path), "--mandate", str(mandate), "--json-out", str(out), *flags]
    )
    return code, json.loads(out.read_text())


# -- one organization's bogus checkpoint: evidence against it, not a fork -----------------------


def test_one_organizations_bogus_checkpoint_is_an_equivocation_not_a_fork(
    log: Log, tmp_path: Path
) -> None:
    """NATO, which cosigned the genuine size-3 checkpoint, signs another root for that size."""
    bogus = signed_checkpoint(
        Checkpoint(_origin(log), 3, bytes(32)), log.keys["nato"], key_name("nato", "nato-node")
    )
    records = _with_checkpoints(log, bogus)
    result = _audit(log, tmp_path, records, require_witnessed=True)
    assert result.ok, result.violations  # the log is consistent and every record verifies
    assert sum(result.accepted.values()) == len(log.reports())
    assert not result.clean
    (finding,) = result.findings
    assert finding.kind == FindingKind.EQUIVOCATION
    assert finding.against == ("nato",)
    assert (finding.topic, finding.partition, finding.size) == (T, 0, 3)
    assert result.findings_by_org() == {"nato": 1}
    # Both texts, both of NATO's signature lines, and where each was logged.
    genuine, forged = finding.evidence
    assert {e.org for e in finding.evidence} == {"nato"}
    assert forged.text == Checkpoint(_origin(log), 3, bytes(32)).text().decode()
    assert genuine.text != forged.text and genuine.text.startswith(_origin(log) + "\n3\n")
    assert all(e.line.startswith("\u2014 obus/nato/nato-node ") for e in finding.evidence)
    assert forged.offset == records[[r.value for r in records].index(bogus)].offset
    assert forged.line.encode() in bogus
    # The records are judged as usual: no root mismatch, no split view, fully witnessed.
    assert all(w["checkpoints_mismatched"] == 0 for w in result.witness)
    assert all(w["unwitnessed"] == 0 for w in result.witness)

    code, doc = _obus(log, tmp_path, records)
    assert code == 0
    assert doc["ok"] is True and doc["clean"] is False
    assert doc["findings_by_org"] == {"nato": 1}
    assert doc["findings"][0]["kind"] == "equivocation"
    assert len(doc["findings"][0]["evidence"]) == 2
    code, _ = _obus(log, tmp_path, records, "--strict")
    assert code == 1


def test_a_minority_checkpoint_the_quorum_contradicts_counts_against_its_signer(
    log: Log, tmp_path: Path
) -> None:
    """A root for a size nobody else signed: the quorum-witnessed records contradict it."""
    bogus = _signed_by(log, Checkpoint(_origin(log), 4, bytes(32)), ["nato", "csto"])
    result = _audit(log, tmp_path, _with_checkpoints(log, bogus))
    assert result.ok, result.violations
    (finding,) = result.findings
    assert finding.kind == FindingKind.CHECKPOINT_CONTRADICTS_QUORUM
    assert finding.against == finding.signers == ("csto", "nato")
    assert {e.org for e in finding.evidence} == {"csto", "nato"}
    assert result.findings_by_org() == {"csto": 1, "nato": 1}


def test_a_minority_checkpoint_beyond_the_log_decides_nothing(log: Log, tmp_path: Path) -> None:
    """One organization signing a size the log never reached cannot fail the audit."""
    bogus = _signed_by(log, Checkpoint(_origin(log), 1000, bytes(32)), ["nato"])
    result = _audit(log, tmp_path, _with_checkpoints(log, bogus))
    assert result.ok, result.violations
    (finding,) = result.findings
    assert finding.kind == FindingKind.CHECKPOINT_UNCONFIRMED
    assert finding.against == () and finding.signers == ("nato",)
    assert result.findings_by_org() == {}


# -- the log forked: a quorum against the records, or two quorums against each other ------------


def test_a_quorum_checkpoint_against_the_records_is_a_fork(log: Log, tmp_path: Path) -> None:
    """Four organizations (a quorum) sign a root at size 4 that the records do not have."""
    forged = _signed_by(log, Checkpoint(_origin(log), 4, bytes(32)), ORGS[:4])
    records = _with_checkpoints(log, forged)
    result = _audit(log, tmp_path, records)
    assert {v.reason for v in result.violations} == {Reason.CHECKPOINT_ROOT_MISMATCH.value}
    (v,) = result.violations
    assert (v.topic, v.partition) == (T, 0)
    assert result.findings == []
    code, doc = _obus(log, tmp_path, records)
    assert code == 1 and doc["ok"] is False


def test_two_quorum_checkpoints_of_one_size_are_a_split_view(log: Log, tmp_path: Path) -> None:
    """A quorum signs another root for a size all six signed: a fork, and each of the four
    organizations that signed both is named for equivocation."""
    forged = _signed_by(log, Checkpoint(_origin(log), 3, bytes(32)), ORGS[:4])
    result = _audit(log, tmp_path, _with_checkpoints(log, forged))
    assert {v.reason for v in result.violations} == {
        Reason.SPLIT_VIEW.value,
        Reason.CHECKPOINT_ROOT_MISMATCH.value,
    }
    assert [f.kind for f in result.findings] == [FindingKind.EQUIVOCATION] * 4
    assert result.findings_by_org() == dict.fromkeys(ORGS[:4], 1)


def test_a_record_that_is_not_what_the_quorum_signed_is_a_fork(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    i = next(
        i
        for i, r in enumerate(records)
        if r.section == "reports" and (r.topic, r.partition, r.offset) == (T, 1, 4)
    )
    records[i] = dataclasses.replace(records[i], value=(records[i].value or b"") + b"!")
    result = _audit(log, tmp_path, records)
    assert Reason.CHECKPOINT_ROOT_MISMATCH.value in {v.reason for v in result.violations}
    assert not result.ok


# -- registry records under the version in force when they were logged --------------------------

T_V2 = NOW_MS - 3000  # between the registry (NOW_MS - 4000) and the checkpoints (NOW_MS - 1000)
NEW_UN_ROOT = demo_key("test:new-root:un")


def _version(log: Log, version: int, organizations: tuple[Organization, ...]) -> Envelope:
    old = log.mission.scenario.mandate
    new: Mandate = dataclasses.replace(old, version=version, organizations=organizations)
    roots = log.mission.scenario.org_roots
    signers: list[SigningKey] = [roots[o] for o in ORGS[1:5]]
    if any(o.root_public_key == NEW_UN_ROOT.public_key for o in organizations):
        signers.append(NEW_UN_ROOT)
    return sign_mandate(new, signers)


def _rotated(log: Log) -> tuple[Organization, ...]:
    return tuple(
        dataclasses.replace(o, root_public_key=NEW_UN_ROOT.public_key) if o.org == "un" else o
        for o in log.mission.scenario.mandate.organizations
    )


def _insert(records: list[LogRecord], section: str, time_ms: int, *values: bytes) -> None:
    """Append values to a trust section at a log time."""
    last = max(i for i, r in enumerate(records) if r.section == section)
    for i, value in enumerate(values, start=1):
        prev = records[last + i - 1]
        records.insert(
            last + i, LogRecord(section, prev.topic, 0, prev.offset + 1, time_ms, None, value)
        )


def _un_reaccredited(log: Log) -> list[bytes]:
    """Every UN accreditation of the log signed again by UN's new root key."""
    out = []
    for rec in log.records:
        if rec.section != "registry":
            continue
        acc = Accreditation.decode(Envelope.decode(rec.value or b"").payload)
        if acc.org == "un":
            out.append(sign_accreditation(acc, NEW_UN_ROOT).encode())
    return out


def test_a_root_rotation_leaves_old_registry_records_valid(log: Log, tmp_path: Path) -> None:
    """UN rotates its root key in version 2 and re-accredits its keys under the new one: the
    records its old root signed before were genuine when logged and stay so."""
    records = list(log.records)
    _insert(records, "mandate", T_V2, _version(log, 2, _rotated(log)).encode())
    _insert(records, "registry", T_V2 + 500, *_un_reaccredited(log))
    result = _audit(log, tmp_path, records, require_witnessed=True)
    assert result.mandate_versions == [2]
    assert result.ok, result.violations
    assert result.findings == []
    assert sum(result.accepted.values()) == len(log.reports())


def test_a_membership_change_leaves_old_registry_records_valid(log: Log, tmp_path: Path) -> None:
    """SCO leaves in version 2, after every record: its accreditations were genuine."""
    records = list(log.records)
    remaining = tuple(o for o in log.mission.scenario.mandate.organizations if o.org != "sco")
    _insert(records, "mandate", NOW_MS + 1000, _version(log, 2, remaining).encode())
    result = _audit(log, tmp_path, records)
    assert result.mandate_versions == [2]
    assert result.ok, result.violations
    code, _ = _obus(log, tmp_path, records, "--strict")
    assert code == 0


def test_a_revocation_logged_before_a_rotation_stays_in_force(log: Log, tmp_path: Path) -> None:
    """UN revokes an observer, then rotates its root and re-accredits every key (that one
    too): the revocation, signed by the old root before the rotation, still holds."""
    _, key = log.mission.observer("un", 2)
    rev = Revocation("un", key.key_id, 0, NOW_MS, "lost", 1, log.mission.mandate_id)
    revocation = sign_revocation(rev, log.mission.scenario.org_roots["un"]).encode()
    records = list(log.records)
    _insert(records, "registry", T_V2 - 500, revocation)
    _insert(records, "mandate", T_V2, _version(log, 2, _rotated(log)).encode())
    _insert(records, "registry", T_V2 + 500, *_un_reaccredited(log))
    result = _audit(log, tmp_path, records)
    reasons = {(v.topic, v.partition, v.reason) for v in result.violations}
    assert reasons == {(f"{PREFIX}reports.un", 1, Reason.KEY_REVOKED.value)}
    assert result.rejected == {"un": 6}


def test_a_registry_record_counts_from_the_version_that_admits_it(log: Log, tmp_path: Path) -> None:
    """The African Union accredits an observer just before the version admitting it is logged
    (every node counts the key from that version on): no violation. SCO accredits one after
    the version that drops it: no version counts it, a violation."""
    mandate = log.mission.scenario.mandate
    au_root = demo_key("test:root:au")
    au = Organization("au", "African Union", au_root.public_key)
    au_obs = Accreditation("au-obs-1", "au", Role.OBSERVER, demo_key("au-obs-1").public_key,
                           mandate.not_before_ms, mandate.not_after_ms, 1, mandate.mandate_id)  # fmt: skip
    sco_obs = dataclasses.replace(au_obs, subject_id="sco-obs-9", org="sco",
                                  public_key=demo_key("sco-obs-9").public_key)  # fmt: skip
    joined = (*mandate.organizations, au)
    left = tuple(o for o in joined if o.org != "sco")
    records = list(log.records)
    _insert(records, "registry", T_V2 - 500, sign_accreditation(au_obs, au_root).encode())
    _insert(records, "mandate", T_V2, _version(log, 2, joined).encode())
    _insert(records, "mandate", NOW_MS + 1000, _version(log, 3, left).encode())
    sco_late = sign_accreditation(sco_obs, log.mission.scenario.org_roots["sco"]).encode()
    _insert(records, "registry", NOW_MS + 2000, sco_late)
    result = _audit(log, tmp_path, records)
    assert result.mandate_versions == [2, 3]
    (v,) = result.violations
    late = next(r for r in records if r.value == sco_late)
    assert (v.topic, v.offset, v.reason) == (late.topic, late.offset, Reason.WRONG_ORG.value)
