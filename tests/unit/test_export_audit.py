"""The export format, and the offline auditor on clean and tampered export files (no broker).

A small sealed log is built in memory the way six organization nodes would build it
(:mod:`tests.witnessed_log`): signed reports in two partitions per organization, every round
sealed and cosigned by all six. Tampered copies are written back through the writer, so the
trailer (counts and digest) always matches: what catches the tampering is the content, against
the final seals.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from bus.errors import Reason, VerificationError
from bus.export import ExportProblem, ExportReader, ExportWriter, LogRecord
from bus.judge import Status
from bus.model import Envelope, Report
from nodes.auditor.run import EXPORT_TOPIC, AuditResult, audit_export
from tests.mission import NOW_MS
from tests.witnessed_log import ORGS, PREFIX, Log, build_log, write

T = f"{PREFIX}reports.osce"


def reasons(result: AuditResult) -> set[str]:
    return {v.reason for v in result.violations}


def named(result: AuditResult) -> set[tuple[str, str, int]]:
    """(reason, topic, partition) of every violation."""
    return {(v.reason, v.topic, v.partition) for v in result.violations}


@pytest.fixture(scope="module")
def log() -> Log:
    return build_log()


def _audit(log: Log, tmp_path: Path, records: list[LogRecord]) -> AuditResult:
    path = write(tmp_path / "log.jsonl", log.header, records)
    return audit_export(path, log.mission.scenario.mandate, work_dir=tmp_path)


def _at(records: list[LogRecord], topic: str, partition: int, offset: int) -> int:
    return next(
        i
        for i, r in enumerate(records)
        if r.section == "reports" and (r.topic, r.partition, r.offset) == (topic, partition, offset)
    )


# -- format --------------------------------------------------------------------------------


def test_export_round_trip(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    with path.open("rb") as f:
        reader = ExportReader(f)
        assert reader.header == log.header and reader.header.version == 3
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
    assert b'"version":3' in lines[0]
    assert lines[1].startswith(b'{"key":null,"offset":')
    assert lines[2].startswith(
        b'{"counts":{"attachments":0,"decisions":0,"mandate":0,"registry":0,"reports":1,'
        b'"seals":0,"statements":0}'
    )


def test_version_3_has_no_checkpoints_section(log: Log) -> None:
    w = ExportWriter(io.BytesIO(), log.header)
    with pytest.raises(ValueError, match="no section checkpoints"):
        w.write(LogRecord("checkpoints", f"{PREFIX}checkpoints", 0, 0, NOW_MS, None, b"x"))
    # A reader names such a line as a problem of the file, not a record.
    line = LogRecord("checkpoints", f"{PREFIX}checkpoints", 0, 0, NOW_MS, None, b"x").encode()
    items = list(ExportReader(io.BytesIO(log.header.encode() + line + b"{}\n")))
    assert isinstance(items[0], ExportProblem)
    assert "no checkpoints section in version 3" in items[0].detail


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
    assert not result.ok


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
    """Each topic's records go in one section: a report line under "decisions", or a topic
    that is no part of the bus, is a problem of the file, not a record."""
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


def _with_checkpoints(log: Log, n: int) -> list[LogRecord]:
    """The log with ``n`` records of the old checkpoints section before the reports."""
    cps = [
        LogRecord("checkpoints", f"{PREFIX}checkpoints", 0, o, NOW_MS, None, b"o/x/0\n1\nAQE=\n")
        for o in range(n)
    ]
    first = min(i for i, r in enumerate(log.records) if r.section == "reports")
    return [*log.records[:first], *cps, *log.records[first:]]


def test_a_version_2_file_is_read_and_its_checkpoints_skipped_with_a_note(
    log: Log, tmp_path: Path
) -> None:
    """A version 2 file (seals and checkpoints): read as before; the auditor skips the
    checkpoints (they decide nothing) and says so, and the final verdicts are those of the
    same log in version 3."""
    records = _with_checkpoints(log, 3)
    v2 = write(tmp_path / "v2.jsonl", dataclasses.replace(log.header, version=2), records)
    with v2.open("rb") as f:
        reader = ExportReader(f)
        assert reader.header.version == 2
        assert list(reader) == records  # no problem: the trailer's eight counts match
    old = audit_export(v2, log.mission.scenario.mandate, work_dir=tmp_path)
    new = _audit(log, tmp_path, log.records)
    assert old.ok and new.ok, (old.violations, new.violations)
    assert old.checkpoint_records_skipped == 3 and new.checkpoint_records_skipped == 0
    assert old.notes == [
        "3 record(s) of the checkpoints section of this export (format version 2) were skipped:"
        " per-partition checkpoints are no longer verified, final seals replace them"
    ]
    assert new.notes == []
    assert old.final is not None and new.final is not None
    assert old.final.to_json() == new.final.to_json()
    assert old.to_json()["checkpoint_records_skipped"] == 3


def test_a_version_1_file_reads_with_its_four_sections(log: Log) -> None:
    header = dataclasses.replace(log.header, version=1)
    kept = [r for r in _with_checkpoints(log, 2) if r.section != "seals"]
    buf = io.BytesIO()
    w = ExportWriter(buf, header)
    for r in kept:
        w.write(r)
    with pytest.raises(ValueError, match="no section seals"):
        w.write(LogRecord("seals", f"{PREFIX}seals", 0, 0, NOW_MS, None, b"x"))
    w.finish()
    data = buf.getvalue()
    assert data.splitlines()[-1].startswith(b'{"counts":{"checkpoints":2,"mandate":1,')
    reader = ExportReader(io.BytesIO(data))
    assert reader.header == header
    assert list(reader) == kept  # no problem: the trailer's four counts match


# -- the auditor on clean and tampered logs ------------------------------------------------


def test_clean_export_audits_clean(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", log.header, log.records)
    result = audit_export(path, log.mission.scenario.mandate, work_dir=tmp_path)
    assert result.ok and result.clean, result.violations
    assert sum(result.accepted.values()) == len(log.reports())
    assert sorted(result.accepted) == sorted(ORGS) and result.rejected == {}
    final = result.final
    assert final is not None and final.last_epoch == 7 and final.not_sealed == []
    assert all(len(e.signers) >= 4 and set(e.signers) <= set(ORGS) for e in final.epochs)
    assert final.by_status()[Status.ACCEPTED.value] == len(log.reports())
    assert result.trust_root == "given"
    embedded = audit_export(path, None, work_dir=tmp_path)
    assert embedded.ok and embedded.trust_root == "embedded"
    assert embedded.to_json()["final"] == result.to_json()["final"]


def test_dropped_record_is_named(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    del records[_at(records, T, 0, 1)]
    result = _audit(log, tmp_path, records)
    assert (Reason.SEALED_ROOT_MISMATCH.value, T, 0) in named(result)
    assert not result.ok


def test_records_in_another_line_order_change_nothing(log: Log, tmp_path: Path) -> None:
    """Two records of a partition written in the wrong order, under their own offsets: each is
    judged at its offset, so the verdicts are those of the log as it is."""
    records = list(log.records)
    i = _at(records, T, 0, 1)
    records[i], records[i + 1] = records[i + 1], records[i]
    result = _audit(log, tmp_path, records)
    clean = _audit(log, tmp_path, log.records)
    assert result.ok, result.violations
    assert result.to_json()["final"] == clean.to_json()["final"]


def test_values_swapped_under_the_same_offsets_are_named(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    i = _at(records, T, 0, 1)
    a, b = records[i], records[i + 1]
    records[i], records[i + 1] = (
        dataclasses.replace(a, value=b.value),
        dataclasses.replace(b, value=a.value),
    )
    result = _audit(log, tmp_path, records)
    assert (Reason.SEALED_ROOT_MISMATCH.value, T, 0) in named(result)


def test_altered_record_is_named(log: Log, tmp_path: Path) -> None:
    records = list(log.records)
    i = _at(records, T, 1, 2)
    value = records[i].value or b""
    pos = value.index(b"Impacts counted.")
    records[i] = dataclasses.replace(
        records[i], value=value[:pos] + b"Nothing seen at." + value[pos + 16 :]
    )
    result = _audit(log, tmp_path, records)
    assert (Reason.SEALED_ROOT_MISMATCH.value, T, 1) in named(result)
    assert result.final is not None and result.final.mismatch is not None
    assert "altered" in result.final.mismatch.message


def test_truncated_partition_is_named(log: Log, tmp_path: Path) -> None:
    last = max(r.offset for r in log.reports() if (r.topic, r.partition) == (T, 0))
    records = [
        r
        for r in log.records
        if (r.section, r.topic, r.partition, r.offset) != ("reports", T, 0, last)
    ]
    result = _audit(log, tmp_path, records)
    (v,) = result.violations
    assert (v.reason, v.topic, v.partition, v.offset) == (
        Reason.SEALED_ROOT_MISMATCH.value, T, 0, last + 1,
    )  # fmt: skip
    assert f"offset {last} is sealed" in v.detail and "deleted" in v.detail


def test_a_copy_of_a_sealed_report_is_a_violation(tmp_path: Path) -> None:
    """The operator appends a byte-identical copy of a report to another partition and a
    quorum seals it: its final verdict is ``replayed``, wherever it sits."""
    log = build_log(reports_per_observer=1)
    bus = log.bus
    first = log.reports()[0]
    bus.put(first.topic, first.value, 1 - first.partition)
    bus.seal()
    result = audit_export(
        bus.export(tmp_path / "copy.jsonl"), log.mission.scenario.mandate, work_dir=tmp_path
    )
    (v,) = result.violations
    copy_at = len(bus.parts[(first.topic, 1 - first.partition)]) - 1
    assert (v.reason, v.topic, v.partition, v.offset) == (
        Reason.REPLAYED.value, first.topic, 1 - first.partition, copy_at,
    )  # fmt: skip
    org = first.topic.removeprefix(f"{PREFIX}reports.")
    assert result.rejected == {org: 1}


def test_report_counts_by_zone_and_day(log: Log, tmp_path: Path) -> None:
    result = _audit(log, tmp_path, log.records)
    assert sum(result.by_zone.values()) == sum(result.by_day.values()) == len(log.reports())
    reports = [Report.decode(Envelope.decode(r.value or b"").payload) for r in log.reports()]
    assert set(result.by_zone) == {r.zone for r in reports}
    doc = result.to_json()
    assert doc["reports_by_zone"] == dict(result.by_zone)


def test_html_report_is_self_contained(log: Log, tmp_path: Path) -> None:
    from nodes.auditor.report import render_html  # noqa: PLC0415

    records = list(log.records)
    del records[_at(records, T, 0, 1)]
    result = audit_export(write(tmp_path / "t.jsonl", log.header, records), None)
    page = render_html(result)
    assert page.count("<svg") == 4
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "sealed_root_mismatch" in page and "VERDICT" in page
    assert "Final seals (" in page
    assert "mandate embedded in the export" in page
