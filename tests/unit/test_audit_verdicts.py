"""The auditor's verdicts on trust changes, by final verdicts: mandate rotations, membership
changes, revocations and registry records under the version in force at their epoch.

Logs are built in memory (:mod:`tests.witnessed_log`: six organizations, quorum 4, every round
sealed by all six), extended with trust records and reports in later epochs, written as export
files and audited offline, through the judge and through ``obus audit``. Trust records of epoch
*e* take effect from epoch *e+1* (:mod:`bus.judge`), so each change below is sealed in an epoch
of its own before the reports it should affect.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bus.crypto import SigningKey
from bus.errors import Reason
from bus.judge import Status
from bus.model import Accreditation, Envelope, Mandate, Organization, Revocation, Role
from bus.sign import sign_accreditation, sign_mandate, sign_revocation
from nodes.auditor.run import AuditResult, audit_export
from nodes.cli.main import main
from nodes.demo.scenario import demo_key
from tests.mission import NOW_MS
from tests.witnessed_log import ORGS, PREFIX, Log, build_log

UN = f"{PREFIX}reports.un"
NEW_UN_ROOT = demo_key("test:new-root:un")


def _log() -> Log:
    """Epoch 1 seals the trust records, epoch 2 one report of each observer. (Each test's
    epochs then fall to proposers that its trust changes leave accredited.)"""
    return build_log(reports_per_observer=1)


def _audit(log: Log, tmp_path: Path) -> AuditResult:
    path = log.bus.export(tmp_path / "log.jsonl", version=3)
    return audit_export(path, log.mission.scenario.mandate, work_dir=tmp_path)


def _obus(log: Log, tmp_path: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    path = log.bus.export(tmp_path / "cli.jsonl", version=3)
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(log.mission.scenario.mandate_envelope)
    out = tmp_path / "audit.json"
    code = main(
        ["audit", "--from", str(path), "--mandate", str(mandate), "--json-out", str(out), *flags]
    )
    return code, json.loads(out.read_text())


def _version(log: Log, version: int, organizations: tuple[Organization, ...]) -> bytes:
    old = log.mission.scenario.mandate
    new: Mandate = dataclasses.replace(old, version=version, organizations=organizations)
    roots = log.mission.scenario.org_roots
    signers: list[SigningKey] = [roots[o] for o in ORGS[1:5]]
    if any(o.root_public_key == NEW_UN_ROOT.public_key for o in organizations):
        signers.append(NEW_UN_ROOT)
    return sign_mandate(new, signers).encode()


def _rotated(log: Log) -> tuple[Organization, ...]:
    return tuple(
        dataclasses.replace(o, root_public_key=NEW_UN_ROOT.public_key) if o.org == "un" else o
        for o in log.mission.scenario.mandate.organizations
    )


def _un_reaccredited(log: Log) -> list[bytes]:
    """Every UN accreditation of the log signed again by UN's new root key."""
    out = []
    for value in log.bus.parts[log.bus.registry]:
        acc = Accreditation.decode(Envelope.decode(value or b"").payload)
        if acc.org == "un":
            out.append(sign_accreditation(acc, NEW_UN_ROOT).encode())
    return out


def _round(log: Log) -> None:
    """One report by each of the two observers of every organization, then a seal."""
    for org in ORGS:
        for i in (1, 2):
            log.bus.put(log.bus.topics.reports(org), log.mission.next_report(org, i), i - 1)
    log.bus.seal()


def test_a_root_rotation_leaves_old_registry_records_valid(tmp_path: Path) -> None:
    """UN rotates its root key in version 2 and re-accredits its keys under the new one: every
    report before and after is accepted, and the version is followed."""
    log = _log()
    bus = log.bus
    bus.put(bus.topics.mandate, _version(log, 2, _rotated(log)))
    bus.seal()
    # Under version 2 (from the next epoch), only what UN's new root signs counts.
    for raw in _un_reaccredited(log):
        bus.put(bus.topics.registry, raw)
    bus.seal()
    _round(log)
    result = _audit(log, tmp_path)
    assert result.ok, result.violations
    assert result.mandate_versions == [2]
    assert sum(result.accepted.values()) == 2 * 2 * len(ORGS) and result.rejected == {}
    code, doc = _obus(log, tmp_path, "--strict")
    assert code == 0 and doc["mandate_versions"] == [2]


def test_a_membership_change_leaves_earlier_reports_accepted(tmp_path: Path) -> None:
    """SCO leaves in version 2: its reports sealed before stay accepted; its reports after the
    version takes effect are refused, and only those."""
    log = _log()
    bus = log.bus
    remaining = tuple(o for o in log.mission.scenario.mandate.organizations if o.org != "sco")
    bus.put(bus.topics.mandate, _version(log, 2, remaining))
    bus.seal()
    _round(log)
    result = _audit(log, tmp_path)
    assert result.mandate_versions == [2]
    assert result.accepted["sco"] == 2
    assert result.rejected == {"sco": 2}
    assert {(v.topic, v.partition) for v in result.violations} == {
        (f"{PREFIX}reports.sco", 0),
        (f"{PREFIX}reports.sco", 1),
    }
    code, _ = _obus(log, tmp_path)
    assert code == 1


def test_a_revocation_withdraws_the_keys_reports_at_every_reader(tmp_path: Path) -> None:
    """UN revokes its second observer's key (no report counts): its accepted reports become
    ``revoked_after_acceptance`` once the revocation takes effect, its later ones are
    ``key_revoked``; nothing else changes."""
    log = _log()
    bus = log.bus
    _, key = log.mission.observer("un", 2)
    rev = Revocation("un", key.key_id, 0, NOW_MS, "lost", 1, log.mission.mandate_id)
    roots = log.mission.scenario.org_roots
    bus.put(bus.topics.registry, sign_revocation(rev, roots["un"]).encode())
    revoked_in = bus.seal().epoch
    _round(log)
    result = _audit(log, tmp_path)
    assert not result.ok
    got = {(v.topic, v.partition, v.offset, v.reason) for v in result.violations}
    assert got == {
        (UN, 1, 0, Status.REVOKED_AFTER_ACCEPTANCE.value),
        (UN, 1, 1, Reason.KEY_REVOKED.value),
    }
    assert result.rejected == {"un": 2} and result.accepted["un"] == 2
    assert result.final is not None
    row = result.final.verdicts[(UN, 1, 0)]
    assert row.changed_at == revoked_in + 1  # trust takes effect at the next epoch
    code, doc = _obus(log, tmp_path)
    assert code == 1 and doc["ok"] is False
    assert doc["violations_by_kind"] == {
        Status.REVOKED_AFTER_ACCEPTANCE.value: 1,
        Reason.KEY_REVOKED.value: 1,
    }


def test_a_registry_record_of_an_organization_that_left_is_quarantined(tmp_path: Path) -> None:
    """SCO accredits an observer after the version that drops it took effect: the record is
    quarantined with its reason, a violation at its position, and the key counts nowhere."""
    log = _log()
    bus = log.bus
    mandate = log.mission.scenario.mandate
    remaining = tuple(o for o in mandate.organizations if o.org != "sco")
    bus.put(bus.topics.mandate, _version(log, 2, remaining))
    bus.seal()
    sco_obs = Accreditation("sco-obs-9", "sco", Role.OBSERVER, demo_key("sco-obs-9").public_key,
                            mandate.not_before_ms, mandate.not_after_ms, 1, mandate.mandate_id)  # fmt: skip
    late = sign_accreditation(sco_obs, log.mission.scenario.org_roots["sco"]).encode()
    at = bus.put(bus.topics.registry, late)
    bus.seal()
    result = _audit(log, tmp_path)
    (v,) = result.violations
    assert (v.topic, v.partition, v.offset) == (bus.topics.registry, 0, at)
    assert v.reason == Reason.WRONG_ORG.value
    assert result.final is not None
    assert result.final.verdicts[(bus.topics.registry, 0, at)].status == Status.QUARANTINED.value
