"""The auditor's signature workers (``obus audit --verify-workers N``) change no verdict: the
audit JSON of one log is byte for byte the same with 0, 1 and 2 workers, on a log with damaged
signatures, copies on other partitions, chains spread over two partitions, a revoked key and
records not sealed yet; and the workers' answers only ever name signatures that verified."""

from __future__ import annotations

import json
from pathlib import Path

from bus.errors import Reason
from bus.model import Revocation
from bus.sign import sign_revocation
from bus.topics import Topics
from nodes.auditor.index import AuditIndex
from nodes.auditor.preverify import EpochPreverifier
from nodes.auditor.run import audit_export, write_json
from nodes.cli.main import main
from tests.mission import NOW_MS
from tests.sealed_bus import SealedBus, build

TOPICS = Topics("obus.")


def _flip_signature(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def hostile_bus() -> tuple[SealedBus, list[bytes]]:
    """The auditor tests' bus (chains over two partitions), then an epoch with damaged copies
    of reports, a genuine copy on the other partition, and a revocation of UN's observer key
    behind its head; more reports after it, some not sealed."""
    bus = build(split_chains=True, unsealed=0)
    reports = [
        v
        for ref, values in sorted(bus.parts.items())
        if TOPICS.org_of_report_topic(ref[0]) is not None
        for v in values
        if v is not None and len(v) > 64
    ]
    damaged = [_flip_signature(v) for v in reports[:4]]
    for i, bad in enumerate(damaged):
        bus.put(TOPICS.reports("un"), bad, i % 2)
    bus.put(TOPICS.reports("un"), reports[0], 1)
    bus.put(TOPICS.reports("osce"), reports[1], 0)
    _, key = bus.m.observer("un", 1)
    sc = bus.m.scenario
    rev = Revocation("un", key.key_id, 2, NOW_MS, "lost", 77, sc.mandate.mandate_id)
    bus.put(TOPICS.registry, sign_revocation(rev, sc.org_roots["un"]).encode())
    bus.seal()
    for _ in range(3):
        bus.put(TOPICS.reports("osce"), bus.m.next_report("osce", 1), 1)
    bus.seal()
    bus.put(TOPICS.reports("osce"), bus.m.next_report("osce", 1), 0)
    return bus, damaged


def _json(bus: SealedBus, tmp_path: Path, workers: int) -> bytes:
    path = tmp_path / "log.jsonl"
    if not path.exists():
        bus.export(path)
    result = audit_export(path, bus.m.scenario.mandate, work_dir=tmp_path, verify_workers=workers)
    out = tmp_path / f"audit-{workers}.json"
    write_json(result, out)
    doc = json.loads(out.read_bytes())
    doc.pop("header")  # the audit's own time and command
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def test_zero_one_and_two_workers_give_byte_identical_audit_json(tmp_path: Path) -> None:
    bus, _ = hostile_bus()
    docs = [_json(bus, tmp_path, n) for n in (0, 1, 2)]
    assert docs[0] == docs[1] == docs[2]
    final = json.loads(docs[0])["final"]
    by_status = final["verdicts_by_status"]
    assert by_status["accepted"] > 0 and by_status["quarantined"] >= 6
    assert by_status.get("revoked_after_acceptance", 0) >= 1
    reasons = {v["reason"] for v in final["verdicts"]}
    assert Reason.BAD_SIGNATURE.value in reasons
    assert Reason.REPLAYED.value in reasons
    assert final["not_sealed_yet"]


def test_obus_audit_verify_workers_flag(tmp_path: Path) -> None:
    """``--verify-workers 2`` and ``0`` print the same final digest; a negative count is a
    usage error."""
    bus, _ = hostile_bus()
    path = bus.export(tmp_path / "cli.jsonl")
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(bus.m.scenario.mandate_envelope)
    outs = []
    for n in ("0", "2"):
        out = tmp_path / f"cli-{n}.json"
        code = main(["audit", "--from", str(path), "--mandate", str(mandate),
                     "--json-out", str(out), "--verify-workers", n])  # fmt: skip
        assert code == 1  # the damaged signatures are violations
        outs.append(json.loads(out.read_text())["final"]["state_digest"])
    assert outs[0] == outs[1]
    code = main(["audit", "--from", str(path), "--mandate", str(mandate),
                 "--verify-workers", "-1"])  # fmt: skip
    assert code == 2


def test_workers_vouch_only_for_signatures_that_verified(tmp_path: Path) -> None:
    """Damaged signatures are never in an epoch's pairs; genuine ones are, under their own
    key only; an epoch's pairs are handed over once."""
    bus, damaged = hostile_bus()
    ref = (TOPICS.reports("un"), 0)
    index = AuditIndex(tmp_path)
    try:
        values = bus.parts[ref]
        index.add_sealed([(ref[0], ref[1], o, v) for o, v in enumerate(values)])
        keys = {k.key_id: k.public_key for _, k in (bus.m.observer(o, 1) for o in ("un", "osce"))}
        with EpochPreverifier(2, index, max_record_bytes=256 * 1024) as pre:
            pre.set_keys(keys)
            pre.ahead(ref, 0, len(values))
            pairs = pre.epoch_pairs(1, {ref: (0, values)})
            assert pre.epoch_pairs(2, {ref: (0, values)}).__len__() == 0
        held = [
            v for v in values if v is not None and any((pk, v) in pairs for pk in keys.values())
        ]
        assert held
        assert not set(damaged) & set(held)
        for v in held:
            assert sum((pk, v) in pairs for pk in keys.values()) == 1
            assert (b"\x00" * 32, v) not in pairs
    finally:
        index.close()
