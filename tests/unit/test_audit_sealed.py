"""The auditor's final verdicts: a sealed bus built in memory, exported, and audited offline.

The bus is built as nodes would build it (no broker, :mod:`tests.sealed_bus`): the trust
records, reports on two partitions per organization, a decision, a statement and an attachment
chunk; every few records one node proposes a seal over everything and the others cosign it, so
the seals topic holds real proposals and cosignatures whose finality the auditor derives
itself. The log is
written as an export file and audited with :func:`nodes.auditor.run.audit_export` and
``obus audit``; its final verdicts are compared with those of a bus reader fed the same log
directly.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from bus.epoch import GENESIS_DIGEST, PartitionRef, PartitionSeal
from bus.errors import Reason
from bus.export import ExportReader, LogRecord
from bus.judge import Status
from bus.seal import SealProposal, cosign_seal, make_proposal, sign_proposal
from bus.topics import Topics
from nodes.auditor.run import AuditResult, audit_export, write_json
from nodes.cli.main import main
from tests.mission import NOW_MS, make_mission
from tests.sealed_bus import SealedBus, build, final_seals, name, reference

TOPICS = Topics("obus.")
REGISTRY: PartitionRef = (TOPICS.registry, 0)


def audit(bus: SealedBus, path: Path, records: list[LogRecord] | None = None) -> AuditResult:
    return audit_export(bus.export(path, records), bus.m.scenario.mandate, work_dir=path.parent)


def obus(bus: SealedBus, tmp_path: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "cli.jsonl"
    if not path.exists():
        bus.export(path)
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(bus.m.scenario.mandate_envelope)
    out = tmp_path / "audit.json"
    code = main(
        ["audit", "--from", str(path), "--mandate", str(mandate), "--json-out", str(out), *flags]
    )
    return code, json.loads(out.read_text())


def reasons(result: AuditResult) -> set[str]:
    return {v.reason for v in result.violations}


def unsealed(result: AuditResult) -> set[tuple[str, int, int]]:
    """The positions listed as not sealed yet."""
    assert result.final is not None
    return {
        (u.topic, u.partition, o)
        for u in result.final.not_sealed
        for o in range(u.first_offset, u.last_offset + 1)
    }


# -- the final verdicts are the bus reader's -------------------------------------------------


def test_final_verdicts_are_a_bus_readers(tmp_path: Path) -> None:
    bus = build()
    result = audit(bus, tmp_path / "log.jsonl")
    want, reader = reference(bus)
    final = result.final
    assert final is not None
    got = {pos: (r.epoch, r.status, r.reason) for pos, r in final.verdicts.items()}
    assert got == want
    # Every record of the four sealed epochs has its final verdict (decisions, statements and
    # attachments too, whatever the final judge says of them), and the statuses the log was
    # built to produce are there: trust applied, reports accepted, the record that is no
    # report quarantined.
    held = {(t, p, o) for (t, p), values in bus.parts.items() for o in range(len(values))}
    assert set(got) == held - unsealed(result)
    statuses = {(t.split(".")[1], s, r) for (t, _, _), (_, s, r) in got.items()}
    assert ("registry", Status.APPLIED.value, "") in statuses
    assert ("mandate", Status.APPLIED.value, "") in statuses
    assert ("reports", Status.ACCEPTED.value, "") in statuses
    assert ("reports", Status.QUARANTINED.value, Reason.MALFORMED.value) in statuses
    # Per epoch: the final seal and the state digest, as the reader holds them.
    assert [e.epoch for e in final.epochs] == [1, 2, 3, 4]
    assert final.last_epoch == reader.judge.epoch == 4
    assert final.state_digest == reader.judge.digest
    latest = reader.latest
    assert latest is not None
    last = final.epochs[-1]
    assert (last.digest, last.time_ms, last.seal_offset, last.round) == (
        latest.digest,
        latest.time_ms,
        latest.offset,
        latest.round,
    )
    assert set(last.signers) == set(latest.signers) and len(last.signers) >= 4
    assert [e.prev_digest for e in final.epochs[1:]] == [e.digest for e in final.epochs[:-1]]
    # The two reports published after the last seal: not sealed yet, no final verdict.
    assert len(unsealed(result)) == sum(u.records for u in final.not_sealed) == 2
    assert final.mismatch is None and final.stuck is None and final.equivocations == []
    # The violations are the final verdicts that reject a record, the record that is no
    # report among them.
    failed = {p for p, (_, s, _) in got.items() if s == Status.QUARANTINED.value}
    assert {(v.topic, v.partition, v.offset) for v in result.violations} == failed
    assert (TOPICS.reports("eu"), 0, 0) in failed


def test_obus_audit_prints_the_final_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bus = build()
    _, reader = reference(bus)
    code, doc = obus(bus, tmp_path, "--final-digest")
    assert code == 1  # the record that is no report
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pair = {"epoch": 4, "state_digest": base64.b64encode(reader.judge.digest).decode()}
    assert printed == pair == doc["final_digest"]
    assert doc["final"]["last_epoch"] == 4
    assert doc["final"]["state_digest"] == pair["state_digest"]
    assert [e["epoch"] for e in doc["final"]["epochs"]] == [1, 2, 3, 4]
    assert doc["final"]["epochs"][-1]["state_digest"] == pair["state_digest"]
    assert "counts" in doc["final"]["note"]
    assert doc["final"]["sealed_root_mismatch"] is None


# -- a sealed record altered or deleted -------------------------------------------------------


def _replace(records: list[LogRecord], ref: PartitionRef, offset: int, value: bytes) -> None:
    i = next(i for i, r in enumerate(records) if (r.topic, r.partition, r.offset) == (*ref, offset))
    records[i] = dataclasses.replace(records[i], value=value)


def _drop(records: list[LogRecord], ref: PartitionRef, offset: int) -> None:
    i = next(i for i, r in enumerate(records) if (r.topic, r.partition, r.offset) == (*ref, offset))
    del records[i]


@pytest.mark.parametrize(
    "ref", [(TOPICS.reports("un"), 0), (TOPICS.decisions("un"), 0), REGISTRY], ids=str
)
def test_an_altered_sealed_record_is_named_and_fails_the_audit(
    tmp_path: Path, ref: PartitionRef
) -> None:
    bus = build()
    records = bus.records()
    _replace(records, ref, 0, b"altered by the operator")
    result = audit(bus, tmp_path / "log.jsonl", records)
    final = result.final
    assert final is not None and final.mismatch is not None
    m = final.mismatch
    # Named at the first epoch that seals the partition; nothing from there on is final.
    first = next(e for e in final_seals(bus) if e.size(ref) > 0)
    assert (m.topic, m.partition, m.size) == (*ref, first.size(ref))
    assert final.last_epoch == first.epoch - 1
    assert "altered or deleted" in m.message
    assert not result.ok
    assert (ref[0], ref[1], m.size, Reason.SEALED_ROOT_MISMATCH.value) in {
        (v.topic, v.partition, v.offset, v.reason) for v in result.violations
    }
    # The CLI fails, and its JSON names the partition and size.
    bus.export(tmp_path / "cli.jsonl", records)
    code, doc = obus(bus, tmp_path)
    assert code == 1 and doc["ok"] is False
    named = doc["final"]["sealed_root_mismatch"]
    assert (named["topic"], named["partition"], named["size"]) == (*ref, first.size(ref))


def test_a_registry_record_replaced_by_another_genuine_one_is_named(tmp_path: Path) -> None:
    """The operator puts a copy of a genuine accreditation where another one was, in the
    registry the first seal covers: every signature verifies, the first seal becomes final all
    the same (its node keys are genuine), and judging epoch 1 names the registry instead of
    passing a log with no final verdict."""
    bus = build(junk=False, unsealed=0)
    records = bus.records()
    _replace(records, REGISTRY, 0, bus.parts[REGISTRY][1] or b"")
    result = audit(bus, tmp_path / "log.jsonl", records)
    final = result.final
    assert final is not None and final.last_epoch == 0 and final.mismatch is not None
    m = final.mismatch
    assert (m.topic, m.partition, m.size) == (*REGISTRY, final_seals(bus)[0].size(REGISTRY))
    assert "hash to another root than the final seal of epoch 1" in m.message
    assert Reason.SEALED_ROOT_MISMATCH.value in reasons(result) and not result.ok


def test_a_first_proposal_signed_by_a_minority_names_nothing(tmp_path: Path) -> None:
    """A proposal for epoch 1 that the log contradicts, signed by three organizations (k = 4):
    no seal is final and nobody is named; the records are simply not sealed yet."""
    bus = SealedBus(make_mission(observers_per_org=1))
    sc = bus.m.scenario
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        bus.put(TOPICS.registry, raw, at_ms=NOW_MS - 4000)
    bus.catch_up()
    p = bus.witness.propose(org="un", now_ms=NOW_MS)
    assert p is not None
    bogus = dataclasses.replace(
        p, partitions={REGISTRY: PartitionSeal(p.size(REGISTRY), bytes(32))}
    )
    keys = sc.node_keys
    bus.seals.append(sign_proposal(bogus, keys["un"], name("un")))
    for org in ("un", "osce", "eu"):
        bus.seals.append(cosign_seal(bogus.text(), keys[org], name(org), now_ms=NOW_MS))
    result = audit(bus, tmp_path / "log.jsonl")
    assert result.final is not None and result.final.mismatch is None
    assert result.ok and len(unsealed(result)) == len(bus.parts[REGISTRY])


def test_a_deleted_sealed_record_is_named(tmp_path: Path) -> None:
    """An offset missing inside a sealed partition (a gap) is named as deleted."""
    bus = build()
    ref = (TOPICS.reports("un"), 0)
    records = bus.records()
    _drop(records, ref, 1)
    result = audit(bus, tmp_path / "log.jsonl", records)
    assert result.final is not None and result.final.mismatch is not None
    m = result.final.mismatch
    first = next(e for e in final_seals(bus) if e.size(ref) > 1)
    assert (m.topic, m.partition, m.size) == (*ref, first.size(ref))
    assert "offset 1" in m.message and "deleted" in m.message
    assert Reason.SEALED_ROOT_MISMATCH.value in reasons(result) and not result.ok


def test_sealed_records_cut_off_at_a_partitions_end_are_named(tmp_path: Path) -> None:
    """The last sealed records of a partition are missing: no later offset shows the gap, the
    seal's size does."""
    bus = build(unsealed=0)
    ref = (TOPICS.reports("osce"), 1)
    size = final_seals(bus)[-1].size(ref)
    records = [r for r in bus.records() if (r.topic, r.partition) != ref or r.offset < size - 2]
    result = audit(bus, tmp_path / "log.jsonl", records)
    assert result.final is not None and result.final.mismatch is not None
    m = result.final.mismatch
    assert (m.topic, m.partition, m.size) == (*ref, size)
    assert f"offset {size - 2} " in m.message and "deleted" in m.message
    assert not result.ok


def test_a_whole_sealed_topic_left_out_is_named(tmp_path: Path) -> None:
    """An export that lacks the attachments the seals cover (or a log they were deleted from)
    cannot pass for complete."""
    bus = build()
    records = [r for r in bus.records() if r.section != "attachments"]
    result = audit(bus, tmp_path / "log.jsonl", records)
    assert result.final is not None and result.final.mismatch is not None
    assert result.final.mismatch.topic == TOPICS.attachments("un")
    assert not result.ok


# -- equivocation ----------------------------------------------------------------------------


def test_an_equivocation_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NATO signs another text for epoch 5, then cosigns the honest one: evidence against
    NATO; the honest text becomes final with the others' votes."""
    bus = build(junk=False, unsealed=0)
    bus.put(TOPICS.reports("un"), bus.m.next_report("un", 1))
    bus.catch_up()
    latest = bus.witness.latest
    assert latest is not None
    keys = bus.m.scenario.node_keys
    other = make_proposal(bus.witness.view(), latest, mandate_id=latest.mandate_id,
                          now_ms=bus.clock + 777)  # fmt: skip
    assert other is not None and other.epoch == 5
    bus.seals.append(cosign_seal(other.text(), keys["nato"], name("nato"), now_ms=bus.clock))
    honest = bus.seal(cosigners=["nato", "un", "osce", "eu", "csto"])
    assert honest.text() != other.text()
    result = audit(bus, tmp_path / "log.jsonl")
    final = result.final
    assert final is not None and final.last_epoch == 5
    (eq,) = final.equivocations
    assert (eq.org, eq.epoch) == ("nato", 5)
    assert (eq.first_text, eq.second_text) == (other.text(), honest.text())
    assert "nato" not in final.epochs[-1].signers
    assert result.ok and not result.clean  # evidence against NATO, not a fault of the log
    code, doc = obus(bus, tmp_path, "--strict")
    assert code == 1
    (shown,) = doc["final"]["equivocations"]
    assert shown["org"] == "nato" and shown["epoch"] == 5
    assert shown["first"]["text"] == other.text().decode()
    assert "seal equivocation: nato" in capsys.readouterr().out
    code, _ = obus(bus, tmp_path)
    assert code == 0


# -- read order ------------------------------------------------------------------------------


def _json_of(bus: SealedBus, path: Path, order: str) -> bytes:
    result = audit(bus, path, bus.records(order))
    out = path.with_suffix(".json")
    write_json(result, out)
    # The header names the audit's time and the file's digest (another file per order): the
    # rest of the report must be byte for byte the same.
    doc = json.loads(out.read_bytes())
    assert doc.pop("header")["source"]["kind"] == "export"
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def test_two_partition_orders_give_byte_identical_json(tmp_path: Path) -> None:
    """The same log with its partitions exported in another order (and interleaved), with a
    quarantined record, an equivocation and records not sealed yet: the same JSON."""
    bus = build()
    keys = bus.m.scenario.node_keys
    latest = bus.witness.latest
    assert latest is not None
    other = make_proposal(bus.witness.view(), latest, mandate_id=latest.mandate_id,
                          now_ms=bus.clock + 5)  # fmt: skip
    assert other is not None
    bus.seals.append(cosign_seal(other.text(), keys["eu"], name("eu"), now_ms=bus.clock))
    bus.seal()
    bus.put(TOPICS.reports("un"), bus.m.next_report("un", 1))
    path = tmp_path / "log.jsonl"
    docs = [_json_of(bus, path, order) for order in ("forward", "reverse", "interleaved")]
    assert docs[0] == docs[1] == docs[2]
    doc = json.loads(docs[0])
    assert doc["final"]["equivocations"] and doc["final"]["not_sealed_yet"]
    assert doc["final"]["verdicts_by_status"][Status.QUARANTINED.value] >= 1


def test_chains_spread_over_two_partitions_give_one_verdict_in_every_read_order(
    tmp_path: Path,
) -> None:
    """Observers whose chains a producer spread over two partitions: the final verdicts are the
    same whichever order the partitions are read in, every report is accepted, and the audit
    passes."""
    bus = build(split_chains=True, junk=False, unsealed=0)
    path = tmp_path / "log.jsonl"
    finals = []
    for order in ("forward", "reverse", "interleaved"):
        result = audit(bus, path, bus.records(order))
        assert result.final is not None
        assert result.ok, result.violations
        doc = result.to_json()["final"]
        finals.append(doc)
        assert {r["status"] for r in doc["verdicts"] if ".reports." in r["topic"]} == {"accepted"}
    assert finals[0] == finals[1] == finals[2]


# -- seals the log cannot back ---------------------------------------------------------------


def test_a_first_proposal_beyond_the_registry_blocks_nobody(tmp_path: Path) -> None:
    """A proposal for epoch 1 that seals more registry records than the log holds, first on
    the seals topic: an epoch-1 text carries the trust its votes count under, so nothing waits
    on it; the genuine seal after it becomes final and the audit passes on its verdicts."""
    bus = SealedBus(make_mission(observers_per_org=1))
    sc = bus.m.scenario
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        bus.put(TOPICS.registry, raw, at_ms=NOW_MS - 4000)
    beyond = SealProposal(sc.mandate.mandate_id, 1, NOW_MS, GENESIS_DIGEST,
                          {REGISTRY: PartitionSeal(999, bytes(32))})  # fmt: skip
    bus.seals.append(sign_proposal(beyond, sc.node_keys["csto"], name("csto")))
    bus.seal()
    result = audit(bus, tmp_path / "log.jsonl")
    assert result.final is not None and result.final.stuck is None
    assert result.final.last_epoch == 1 and result.ok, result.violations


# -- hostile exports and old exports -----------------------------------------------------------


def test_an_offset_given_two_values_in_an_export_is_named(tmp_path: Path) -> None:
    """The genuine record first, a forged one under the same offset after it: the first is
    judged (it matches the seal) and the second is named."""
    bus = build()
    records = bus.records()
    ref = (TOPICS.reports("osce"), 1)
    i = next(i for i, r in enumerate(records) if (r.topic, r.partition, r.offset) == (*ref, 2))
    records.insert(i + 1, dataclasses.replace(records[i], value=b"forged"))
    result = audit(bus, tmp_path / "log.jsonl", records)
    assert result.final is not None and result.final.mismatch is None
    assert (ref[0], ref[1], 2, Reason.EXPORT_CORRUPT.value) in {
        (v.topic, v.partition, v.offset, v.reason) for v in result.violations
    }


def test_a_version_1_export_still_loads(tmp_path: Path) -> None:
    """An export written before seals: four sections, no final verdict, every record not
    sealed yet, no violation (nothing is judged), and its checkpoints section skipped with a
    note."""
    bus = build()
    records = [r for r in bus.records() if r.section in ("mandate", "registry", "reports")]
    checkpoint = LogRecord("checkpoints", TOPICS.checkpoints, 0, 0, NOW_MS, None, b"a note")
    records.insert(next(i for i, r in enumerate(records) if r.section == "reports"), checkpoint)
    path = bus.export(tmp_path / "v1.jsonl", records, version=1)
    assert b'"version":1' in path.read_bytes().splitlines()[0]
    result = audit_export(path, bus.m.scenario.mandate)
    final = result.final
    assert final is not None and final.seals_records == 0 and final.epochs == []
    assert len(final.verdicts) == 0 and final.last_epoch == 0
    assert result.final_digest() == {"epoch": 0, "state_digest": None}  # as a node prints it
    assert len(unsealed(result)) == len(records) - 1
    assert result.ok and result.accepted == {}
    assert result.checkpoint_records_skipped == 1
    assert result.notes == [
        "1 record(s) of the checkpoints section of this export (format version 1) were skipped:"
        " per-partition checkpoints are no longer verified, final seals replace them"
    ]
    # A version 1 file has no seals section.
    with path.open("rb") as f:
        reader = ExportReader(f)
        assert reader.header.version == 1
        items = list(reader)
    assert all(isinstance(i, LogRecord) for i in items)
    seal_line = LogRecord("seals", TOPICS.seals, 0, 0, NOW_MS, None, b"x").encode()
    data = path.read_bytes().splitlines(keepends=True)
    bad = list(ExportReader(io.BytesIO(data[0] + seal_line + b"".join(data[1:]))))
    assert "no seals section in version 1" in bad[0].detail  # type: ignore[union-attr]


def test_the_html_report_shows_the_final_verdicts(tmp_path: Path) -> None:
    from nodes.auditor.report import render_html  # noqa: PLC0415

    bus = build()
    clean = audit(bus, tmp_path / "log.jsonl")
    page = render_html(clean)
    digest = clean.final_digest()
    assert digest is not None and digest["epoch"] == 4
    assert f"<code>{digest['state_digest']}</code>" in page
    assert "Records not sealed yet (no final verdict): 2." in page
    records = bus.records()
    _replace(records, (TOPICS.reports("osce"), 1), 0, b"altered")
    page = render_html(audit(bus, tmp_path / "altered.jsonl", records))
    assert f"Sealed record altered or deleted: {TOPICS.reports('osce')}[1]" in page
    assert "<script" not in page
