"""``obus audit prove`` on seals: proofs of single records against final seals, from an export
file, and the command line that prints them and checks printed ones (fully against the export,
or lightly with the mandate file alone)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bus.errors import Reason, VerificationError
from bus.model import Envelope, Report
from bus.seal_proof import SealProof, verify_light
from nodes.auditor.prove import check_from_file, prove_from_file
from nodes.cli.main import main
from tests.sealed_bus import SealedBus, build, final_seals

UN = "obus.reports.un"


@pytest.fixture(scope="module")
def bus() -> SealedBus:
    return build()


@pytest.fixture(scope="module")
def files(bus: SealedBus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("prove")
    mandate = d / "mandate.bin"
    mandate.write_bytes(bus.m.scenario.mandate_envelope)
    return bus.export(d / "log.jsonl"), mandate


def test_every_sealed_report_is_proven_against_its_first_final_seal(
    bus: SealedBus, files: tuple[Path, Path]
) -> None:
    export, _ = files
    root = bus.m.scenario.mandate
    finals = final_seals(bus)
    for ref in [(UN, 0), ("obus.reports.osce", 1), ("obus.registry", 0), ("obus.mandate", 0)]:
        for offset in range(finals[-1].size(ref)):
            p = prove_from_file(export, root, where=(*ref, offset), report_id=None)
            first = next(s for s in finals if s.size(ref) > offset)
            assert p.seal().epoch == first.epoch and p.value == (bus.parts[ref][offset] or b"")
            assert check_from_file(p, export, root) == first.signers
            assert verify_light(p, root) == first.signers


def test_by_report_id_and_against_a_later_seal(bus: SealedBus, files: tuple[Path, Path]) -> None:
    export, _ = files
    root = bus.m.scenario.mandate
    raw = bus.parts[(UN, 0)][1]
    assert raw is not None
    rid = Report.decode(Envelope.decode(raw).payload).report_id
    p = prove_from_file(export, root, where=None, report_id=rid)
    assert p.position == (UN, 0, 1) and p.to_json()["report_id"] == rid
    later = prove_from_file(export, root, where=(UN, 0, 1), report_id=None, epoch=4)
    assert later.seal().epoch == 4 and later.size > p.size
    assert check_from_file(later, export, root)


@pytest.mark.parametrize(
    ("where", "report_id", "epoch", "reason"),
    [
        ((UN, 0, 99), None, None, Reason.RECORD_MISSING),
        (None, "01900000-0000-7000-8000-000000000000", None, Reason.RECORD_MISSING),
        ((UN, 0, 1), None, 1, Reason.RECORD_NOT_SEALED),  # epoch 1 sealed no report
        ((UN, 0, 1), None, 9, Reason.RECORD_NOT_SEALED),  # no such epoch
    ],
)
def test_what_cannot_be_proven_is_named(
    bus: SealedBus,
    files: tuple[Path, Path],
    where: tuple[str, int, int] | None,
    report_id: str | None,
    epoch: int | None,
    reason: Reason,
) -> None:
    with pytest.raises(VerificationError) as info:
        prove_from_file(files[0], bus.m.scenario.mandate, where=where, report_id=report_id,
                        epoch=epoch)  # fmt: skip
    assert info.value.reason is reason


def test_records_after_the_last_final_seal_are_not_sealed_yet(
    bus: SealedBus, files: tuple[Path, Path]
) -> None:
    last = len(bus.parts[(UN, 0)]) - 1
    assert final_seals(bus)[-1].size((UN, 0)) <= last
    with pytest.raises(VerificationError) as info:
        prove_from_file(files[0], bus.m.scenario.mandate, where=(UN, 0, last), report_id=None)
    assert info.value.reason is Reason.RECORD_NOT_SEALED


def test_cli_prints_a_proof_and_checks_it_fully_and_lightly(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, mandate = files
    out_file = tmp_path / "proof.json"
    argv = ["audit", "prove", "--from", str(export), "--mandate", str(mandate), "--topic", UN,
            "--partition", "0", "--offset", "2", "--json-out", str(out_file)]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc == json.loads(out_file.read_text()) and doc["format"] == "obus-seal-proof/v1"
    assert "verified" in err and doc["seal"]["epoch"] == 2
    check = ["audit", "prove", "--mandate", str(mandate), "--check", str(out_file)]
    assert main([*check, "--from", str(export)]) == 0
    assert "against the log in" in capsys.readouterr().err
    assert main([*check, "--light"]) == 0
    assert "(light)" in capsys.readouterr().err
    proof = SealProof.from_json(doc)
    bad = dataclasses.replace(proof, value=proof.value[:-1] + b"\0")
    out_file.write_text(json.dumps(bad.to_json()))
    assert main([*check, "--from", str(export)]) == 1
    assert "refused: inclusion_proof_invalid" in capsys.readouterr().err
    assert main([*check, "--light"]) == 1
    assert "refused: inclusion_proof_invalid" in capsys.readouterr().err
