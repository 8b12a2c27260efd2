"""The export format, and the offline auditor on clean and tampered export files (no broker).

A small witnessed log is built in memory the way six organization nodes would build it: signed
reports in two partitions per organization, each node's witness core publishing checkpoints and
the others cosigning them. Tampered copies are written back through the writer, so the trailer
(counts and digest) always matches: what catches the tampering is the content.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from bus.checkpoint import Checkpoint, key_name, signed_checkpoint
from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, ExportReader, ExportWriter, LogRecord
from bus.model import Envelope, Report
from nodes.auditor.run import EXPORT_TOPIC, AuditResult, audit_export
from nodes.demo.scenario import demo_key
from tests.mission import NOW_MS
from tests.witnessed_log import ORGS, PREFIX, Log, build_log, write


def reasons(result: AuditResult) -> set[str]:
    return {v.reason for v in result.violations}


@pytest.fixture(scope="module")
def log() -> Log:
    return build_log()


# -- format --------------------------------------------------------------------------------


def test_export_round_trip(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    with path.open("rb") as f:
        reader = ExportReader(f)
        assert reader.header == log.header
        assert list(reader) == log.records
        assert reader.bytes_read == path.stat().st_size


def test_export_lines_are_documented_json(log: Log) -> None:
    buf = io.BytesIO()
    w = ExportWriter(buf, log.header)
    w.write(log.records[-1])
    w.finish()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith(b'{"created_at_ms":')
    assert b'"format":"obus-log-export"' in lines[0]
    assert lines[1].startswith(b'{"key":"aw==","offset":')
    assert b'"version":2' in lines[0]
    assert lines[2].startswith(
        b'{"counts":{"attachments":0,"checkpoints":0,"decisions":0,"mandate":0,"registry":0,'
        b'"reports":1,"seals":0,"statements":0}'
    )


FILE_DAMAGE = {
    "truncated mid-line": lambda b: b[: len(b) // 2],
    "trailer cut off": lambda b: b[: b.rindex(b'{"counts"')],
    "a byte flipped in a value": lambda b: b.replace(b'"value":"C', b'"value":"D', 1),
    "garbage line": lambda b: b.replace(b"\n", b"\nnot json\n", 3),
    "data after the trailer": lambda b: b + b"{}\n",
}


@pytest.mark.parametrize("damage", FILE_DAMAGE, ids=str)
def test_damaged_file_is_named_not_crashed(log: Log, tmp_path: Path, damage: str) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    path.write_bytes(FILE_DAMAGE[damage](path.read_bytes()))
    result = audit_export(path, log.mission.scenario.mandate, work_dir=tmp_path)
    assert Reason.EXPORT_CORRUPT.value in reasons(result)
    assert any(v.topic == EXPORT_TOPIC for v in result.violations)


def test_unusable_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"format":"something else"}\n')
    with pytest.raises(VerificationError) as exc:
        audit_export(path, None)
    assert exc.value.reason is Reason.EXPORT_CORRUPT


def test_sections_out_of_order_are_named(log: Log) -> None:
    buf = io.BytesIO(
        log.header.encode() + log.reports()[0].encode() + log.records[1].encode() + b"{}\n"
    )
    items = list(ExportReader(buf))
    assert isinstance(items[0], LogRecord)
    assert isinstance(items[1], ExportProblem)
    assert "after the reports section" in items[1].detail


def test_a_record_outside_its_topics_section_is_named(log: Log) -> None:
    """Version 2 puts each topic's records in one section: a report line under "decisions", or
    a topic that is no part of the bus, is a problem of the file, not a record."""
    report = log.reports()[0]
    moved = dataclasses.replace(report, section="decisions")
    stranger = dataclasses.replace(report, topic="obus.elsewhere", offset=0)
    buf = io.BytesIO()
    w = ExportWriter(buf, log.header)
    w.write(report)
    w.write(stranger)
    w.write(moved)
    w.finish()
    items = list(ExportReader(io.BytesIO(buf.getvalue())))
    assert items[0] == report
    assert isinstance(items[1], ExportProblem) and "not a topic of the bus" in items[1].detail
    assert isinstance(items[2], ExportProblem) and "not in reports" in items[2].detail


def test_a_version_1_file_reads_with_its_four_sections(log: Log) -> None:
    header = dataclasses.replace(log.header, version=1)
    buf = io.BytesIO()
    w = ExportWriter(buf, header)
    for r in log.records:
        w.write(r)
    with pytest.raises(ValueError, match="no section seals"):
        w.write(LogRecord("seals", f"{PREFIX}seals", 0, 0, NOW_MS, None, b"x"))
    w.finish()
    data = buf.getvalue()
    assert data.splitlines()[-1].startswith(
        b'{"counts":{"checkpoints":%d,"mandate":1,'
        % len([r for r in log.records if r.section == "checkpoints"])
    )
    reader = ExportReader(io.BytesIO(data))
    assert reader.header == header
    assert list(reader) == log.records  # no problem: the trailer's four counts match


# -- the auditor on clean and tampered logs ------------------------------------------------


def test_clean_export_audits_clean(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    result = audit_export(path, log.mission.scenario.mandate, require_witnessed=True)
    assert result.ok, result.violations
    assert sum(result.accepted.values()) == len(log.reports())
    assert result.quorum == 4
    assert all(w["witnessed_size"] == w["records"] > 0 for w in result.witness)
    assert all(sorted(w["witnessed_by"]) == sorted(ORGS) for w in result.witness)
    assert result.trust_root == "given"
    embedded = audit_export(path, None)
    assert embedded.ok and embedded.trust_root == "embedded"


def _tamper(log: Log, tmp_path: Path, records: list[LogRecord]) -> AuditResult:
    path = write(tmp_path / "tampered.jsonl", log.header, records)
    return audit_export(path, log.mission.scenario.mandate, require_witnessed=True)


def _at(records: list[LogRecord], topic: str, partition: int, offset: int) -> int:
    return next(
        i
        for i, r in enumerate(records)
        if r.section == "reports" and (r.topic, r.partition, r.offset) == (topic, partition, offset)
    )


T = f"{PREFIX}reports.osce"


def test_dropped_record_is_named(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    del records[_at(records, T, 0, 1)]
    result = _tamper(log, tmp_path, records)
    named = {(v.reason, v.topic, v.partition, v.offset) for v in result.violations}
    assert (Reason.RECORD_MISSING.value, T, 0, 1) in named
    assert Reason.CHECKPOINT_ROOT_MISMATCH.value in reasons(result)
    assert Reason.CHAIN_GAP.value in reasons(result)  # the observer's next report


def test_reordered_records_are_named(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    i = _at(records, T, 0, 1)
    records[i], records[i + 1] = records[i + 1], records[i]
    result = _tamper(log, tmp_path, records)
    named = {(v.reason, v.topic, v.partition, v.offset) for v in result.violations}
    assert (Reason.RECORD_OUT_OF_ORDER.value, T, 0, 1) in named
    assert Reason.RECORD_MISSING.value not in reasons(result)
    assert Reason.CHECKPOINT_ROOT_MISMATCH.value in reasons(result)


def test_values_swapped_under_the_same_offsets_are_named(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    i = _at(records, T, 0, 1)
    a, b = records[i], records[i + 1]
    records[i], records[i + 1] = (
        dataclasses.replace(a, value=b.value),
        dataclasses.replace(b, value=a.value),
    )
    result = _tamper(log, tmp_path, records)
    assert Reason.CHECKPOINT_ROOT_MISMATCH.value in reasons(result)
    assert reasons(result) & {Reason.CHAIN_GAP.value, Reason.CHAIN_FORK.value}


def test_altered_record_is_named(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    i = _at(records, T, 1, 2)
    value = records[i].value or b""
    pos = value.index(b"Impacts counted.")
    records[i] = dataclasses.replace(
        records[i], value=value[:pos] + b"Nothing seen at." + value[pos + 16 :]
    )
    result = _tamper(log, tmp_path, records)
    named = {(v.reason, v.topic, v.partition, v.offset) for v in result.violations}
    assert (Reason.BAD_SIGNATURE.value, T, 1, 2) in named
    assert Reason.CHECKPOINT_ROOT_MISMATCH.value in reasons(result)


def test_truncated_partition_is_named(log: Log, tmp_path: Path) -> None:
    last = max(r.offset for r in log.reports() if (r.topic, r.partition) == (T, 0))
    records = [
        r
        for r in log.records
        if (r.section, r.topic, r.partition, r.offset) != ("reports", T, 0, last)
    ]
    result = _tamper(log, tmp_path, records)
    # The checkpoint at 3 still matches; the one at 6 signs a record the file lacks.
    assert reasons(result) == {
        Reason.CHECKPOINT_BEYOND_LOG.value,
        Reason.WITNESS_QUORUM_NOT_MET.value,
    }


def test_forged_checkpoint_by_one_organization_is_named_against_it(
    log: Log, tmp_path: Path
) -> None:
    """NATO's node key signs another root for a size everyone else (NATO too) signed: evidence
    against NATO, not a fork of the log (tests/unit/test_audit_verdicts.py has the rules)."""
    origin = f"obus/{log.mission.mandate_id}/{T}/0"
    forged = Checkpoint(origin, 3, bytes(32))
    note = signed_checkpoint(forged, log.keys["nato"], key_name("nato", "nato-node"))
    cps = [r for r in log.records if r.section == "checkpoints"]
    records = [*log.records]
    records.insert(
        records.index(cps[-1]) + 1,
        LogRecord("checkpoints", cps[-1].topic, 0, cps[-1].offset + 1, NOW_MS - 1000, None, note),
    )
    result = _tamper(log, tmp_path, records)
    assert result.ok, result.violations
    assert [(f.kind, f.against) for f in result.findings] == [("equivocation", ("nato",))]


def test_checkpoint_by_an_unaccredited_key_is_named(log: Log, tmp_path: Path) -> None:
    origin = f"obus/{log.mission.mandate_id}/{T}/0"
    note = signed_checkpoint(Checkpoint(origin, 1, bytes(32)), demo_key("rogue"), "obus/un/un-node")
    records = [*log.records]
    cps = [r for r in records if r.section == "checkpoints"]
    records.insert(
        records.index(cps[-1]) + 1,
        LogRecord("checkpoints", cps[-1].topic, 0, cps[-1].offset + 1, NOW_MS, None, note),
    )
    result = _tamper(log, tmp_path, records)
    assert reasons(result) == {Reason.UNKNOWN_KEY.value}


def test_unwitnessed_records_fail_only_when_required(tmp_path: Path) -> None:
    log = build_log(cosign=False)  # only UN signed: 1 of the 4 needed
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    assert audit_export(path, log.mission.scenario.mandate).ok
    result = audit_export(path, log.mission.scenario.mandate, require_witnessed=True)
    assert reasons(result) == {Reason.WITNESS_QUORUM_NOT_MET.value}
    assert len(result.violations) == len(result.witness) == 12


def test_duplicate_report_id_across_the_flush_boundary(tmp_path: Path) -> None:
    """Report ids live in the on-disk index: a replay far later is still caught."""
    log = build_log(reports_per_observer=1)
    first = log.reports()[0]
    again = dataclasses.replace(first, offset=first.offset + 100)
    records = [*log.records, again]
    path = write(tmp_path / "log.jsonl", log.header, records)
    result = audit_export(path, log.mission.scenario.mandate)
    assert Reason.REPLAYED.value in reasons(result)
    assert Reason.RECORD_MISSING.value in reasons(result)  # offsets 1..100 of that partition


def test_report_counts_by_zone_and_day(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    result = audit_export(path, log.mission.scenario.mandate)
    assert sum(result.by_zone.values()) == sum(result.by_day.values()) == len(log.reports())
    reports = [Report.decode(Envelope.decode(r.value or b"").payload) for r in log.reports()]
    assert set(result.by_zone) == {r.zone for r in reports}


def test_html_report_is_self_contained(log: Log, tmp_path: Path) -> None:
    from nodes.auditor.report import render_html  # noqa: PLC0415

    records = list(log.records)
    del records[_at(records, T, 0, 1)]
    result = audit_export(write(tmp_path / "t.jsonl", log.header, records), None)
    page = render_html(result)
    assert page.count("<svg") == 4
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "record_missing" in page and "VERDICT" in page
    assert "mandate embedded in the export" in page
