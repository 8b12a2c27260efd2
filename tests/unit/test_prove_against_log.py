"""Seal proofs checked against the log, never against themselves.

The full check reads the seals topic and the trust topics of the log (here: an export file),
derives the final seal of the proof's epoch and the key ring in force for it, and checks the
proof against those: a proof whose seal the log does not make final, whose note carries a line
that does not count there, or that rests on trust records the log has lost or altered, is
refused with its reason.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bus.errors import Reason, VerificationError
from bus.export import LogRecord
from bus.model import Revocation
from bus.note import cosign
from bus.seal_proof import SealProof, verify_light
from bus.sign import sign_revocation
from nodes.auditor.prove import check_from_file, prove_from_file
from tests.mission import NOW_MS
from tests.sealed_bus import SealedBus, build, name

UN = ("obus.reports.un", 0)


@pytest.fixture(scope="module")
def bus() -> SealedBus:
    return build()


@pytest.fixture(scope="module")
def proven(bus: SealedBus, tmp_path_factory: pytest.TempPathFactory) -> tuple[SealProof, Path]:
    export = bus.export(tmp_path_factory.mktemp("log") / "log.jsonl")
    return prove_from_file(export, bus.m.scenario.mandate, where=(*UN, 2), report_id=None), export


def _refused(reason: Reason, proof: SealProof, path: Path, bus: SealedBus) -> None:
    with pytest.raises(VerificationError) as info:
        check_from_file(proof, path, bus.m.scenario.mandate)
    assert info.value.reason is reason, info.value.message


def _without(bus: SealedBus, path: Path, drop: object) -> Path:
    """The export with the records ``drop(record)`` selects left out."""
    return bus.export(path, [r for r in bus.records() if not drop(r)])  # type: ignore[operator]


def test_the_proof_verifies_against_the_log(bus: SealedBus, proven: tuple[SealProof, Path]) -> None:
    proof, export = proven
    assert check_from_file(proof, export, bus.m.scenario.mandate) == verify_light(
        proof, bus.m.scenario.mandate
    )


def test_a_log_without_the_votes_that_made_the_seal_final_refuses_it(
    bus: SealedBus, proven: tuple[SealProof, Path], tmp_path: Path
) -> None:
    proof, _ = proven
    seals = [r for r in bus.records() if r.section == "seals"]
    final_at = proof.seal_offset

    def drop(r: LogRecord) -> bool:  # every seals record from the deciding vote on
        return r.section == "seals" and r.offset >= final_at

    assert any(drop(r) for r in seals)
    _refused(Reason.SEAL_NOT_FINAL, proof, _without(bus, tmp_path / "a.jsonl", drop), bus)


def test_trust_records_lost_or_altered_under_a_seal_are_named(
    bus: SealedBus, proven: tuple[SealProof, Path], tmp_path: Path
) -> None:
    proof, _ = proven
    lost = _without(
        bus, tmp_path / "lost.jsonl", lambda r: r.section == "registry" and r.offset == 3
    )
    _refused(Reason.RECORD_MISSING, proof, lost, bus)
    altered = [
        dataclasses.replace(r, value=b"altered") if r.section == "registry" and r.offset == 3 else r
        for r in bus.records()
    ]
    _refused(Reason.SEALED_ROOT_MISMATCH, proof, bus.export(tmp_path / "alt.jsonl", altered), bus)


def test_a_line_that_counts_nowhere_in_the_log_is_refused(
    bus: SealedBus, proven: tuple[SealProof, Path]
) -> None:
    proof, export = proven
    text = proof.seal().text()
    stranger = cosign(text, bus.m.scenario.node_keys["un"], "obus/un/un-node-7", 1).line()
    _refused(
        Reason.UNKNOWN_KEY, dataclasses.replace(proof, note=proof.note + stranger), export, bus
    )
    _refused(Reason.SEAL_NOT_FINAL, dataclasses.replace(proof, seal_offset=0), export, bus)


def test_a_node_key_revoked_in_the_log_counts_for_nothing(tmp_path: Path) -> None:
    """EU revokes its node key for epochs after 5; a proof of a record sealed in epoch 6 whose
    note carries EU's cosignature is refused by the log's trust (the light check cannot know
    the revocation unless the proof carries it)."""
    bus = build(junk=False, unsealed=0)
    t, sc = bus.topics, bus.m.scenario
    rev = Revocation("eu", sc.node_keys["eu"].key_id, 5, NOW_MS, "stolen", 1, sc.mandate.mandate_id)
    bus.put(t.registry, sign_revocation(rev, sc.org_roots["eu"]).encode())
    bus.put(t.reports("un"), bus.m.next_report("un", 1))
    bus.seal()
    bus.put(t.reports("un"), bus.m.next_report("un", 1))
    bus.seal()
    export = bus.export(tmp_path / "log.jsonl")
    offset = len(bus.parts[UN]) - 1
    proof = prove_from_file(export, sc.mandate, where=(*UN, offset), report_id=None)
    assert proof.seal().epoch == 6 and "eu" not in check_from_file(proof, export, sc.mandate)
    eu_line = cosign(proof.seal().text(), sc.node_keys["eu"], name("eu"), bus.clock // 1000).line()
    _refused(Reason.KEY_REVOKED, dataclasses.replace(proof, note=proof.note + eu_line), export, bus)
