"""The offline mandate ceremony through the real `obus mandate` CLI path, as named scenarios.

In the style of python-tuf's key-rotation tests: each case names who signs the next version
and the outcome (accepted, or the reason code the command fails with).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bus import ceremony
from bus.crypto import SigningKey
from bus.errors import ConfigError, Reason, VerificationError
from bus.model import Envelope, Mandate
from bus.trust import verify_mandate
from nodes.cli.main import main
from nodes.runtime.files import write_key
from tests.mission import demo_key

ORGS = ["un", "osce", "eu", "nato", "csto", "sco"]
NAMES = {"un": "United Nations", "osce": "OSCE", "eu": "European Union", "nato": "NATO",
         "csto": "CSTO", "sco": "SCO", "au": "African Union", "asean": "ASEAN"}  # fmt: skip

DESCRIPTION = """\
mandate_id = "jmm-2026"
description = "Joint monitoring mission"
threshold = 4
not_before = "2026-01-01T00:00:00Z"
not_after = "2099-01-01T00:00:00Z"

[[zones]]
id = "north"
name = "River Line"
min_lat = 48.0
min_lon = 37.5
max_lat = 48.6
max_lon = 38.5
"""


@dataclass
class Ceremony:
    """Key files for every organization (and a spare key per org) in a temporary directory."""

    root: Path
    keys: dict[str, SigningKey] = field(default_factory=dict)

    def key(self, name: str) -> Path:
        path = self.root / f"{name}.key"
        if name not in self.keys:
            self.keys[name] = demo_key(f"ceremony:{name}")
            write_key(path, self.keys[name])
        return path

    def pub(self, name: str) -> str:
        self.key(name)
        return self.keys[name].public_key.hex()

    def description(self, orgs: list[str] = ORGS, extra: str = "") -> Path:
        text = DESCRIPTION + extra
        for o in orgs:
            text += f'\n[[organizations]]\norg = "{o}"\nname = "{NAMES[o]}"\nroot_public_key = "{self.pub(o)}"\n'
        path = self.root / "mandate.toml"
        path.write_text(text)
        return path

    def run(self, *argv: str) -> int:
        return main([*argv])

    def sign_all(self, draft: Path, signers: list[str], previous: Path | None = None) -> list[str]:
        files: list[str] = []
        for s in signers:
            out = self.root / f"{draft.name}.{s}.{len(files)}.sig"
            prev = ["--previous", str(previous)] if previous else []
            assert (
                self.run(
                    "mandate",
                    "sign",
                    "--key",
                    str(self.key(s)),
                    str(draft),
                    "--out",
                    str(out),
                    *prev,
                )
                == 0
            )
            files.append(str(out))
        return files

    def version(
        self, name: str, draft_args: list[str], signers: list[str], previous: Path | None
    ) -> int:
        draft = self.root / f"{name}.draft"
        prev = ["--previous", str(previous)] if previous else []
        assert self.run("mandate", "draft", *draft_args, *prev, "--out", str(draft)) == 0
        sigs = self.sign_all(draft, signers, previous)
        return self.run(
            "mandate", "combine", str(draft), *sigs, *prev, "--out", str(self.root / f"{name}.bin")
        )


@pytest.fixture
def cer(tmp_path: Path) -> Ceremony:
    return Ceremony(tmp_path)


def _v1(cer: Ceremony) -> Path:
    assert cer.version("v1", [str(cer.description())], ORGS[:4], None) == 0
    return cer.root / "v1.bin"


def test_first_version_signed_by_four_of_six(
    cer: Ceremony, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = _v1(cer)
    assert cer.run("mandate", "verify", str(v1)) == 0
    out = capsys.readouterr().out
    assert "signed by 4 of its organizations (eu, nato, osce, un)" in out
    m = verify_mandate(Envelope.decode(v1.read_bytes()), previous=None, now_ms=1_800_000_000_000)
    assert (m.version, m.threshold, len(m.organizations)) == (1, 4, 6)


def test_first_version_with_three_signatures_is_refused(
    cer: Ceremony, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cer.version("v1", [str(cer.description())], ORGS[:3], None) == 2
    assert "threshold_not_met" in capsys.readouterr().err
    assert not (cer.root / "v1.bin").exists()


def test_yaml_description_gives_the_same_draft(cer: Ceremony) -> None:
    toml_path = cer.description()
    doc = tomllib.loads(toml_path.read_text())
    yaml_path = cer.root / "mandate.yaml"
    yaml_path.write_text(yaml.safe_dump(doc))
    assert cer.run("mandate", "draft", str(toml_path), "--out", str(cer.root / "a.draft")) == 0
    assert cer.run("mandate", "draft", str(yaml_path), "--out", str(cer.root / "b.draft")) == 0
    assert (cer.root / "a.draft").read_bytes() == (cer.root / "b.draft").read_bytes()


# name -> (draft changes given v1 = six orgs, k=4, signers, expected failure or None)
Rotation = tuple[Callable[[Ceremony], list[str]], list[str], Reason | None]
ROTATIONS: dict[str, Rotation] = {
    "threshold raised, 4 of 6 sign": (lambda c: ["--threshold", "5"], ["un", "osce", "eu", "nato", "csto"], None),
    "nothing but the version, 4 of 6 sign": (lambda c: [], ORGS[:4], None),
    "k-1 organizations sign": (lambda c: [], ORGS[:3], Reason.THRESHOLD_NOT_MET),
    "k signatures by one organization's key": (lambda c: [], ["un", "un", "un", "un"], Reason.THRESHOLD_NOT_MET),
    "an organization joins, 4 old sign": (lambda c: ["--add-org", "au", NAMES["au"], c.pub("au")], ORGS[:4], None),
    "two leave, two join; old-only signatures": (
        lambda c: ["--remove-org", "csto", "--remove-org", "sco", "--add-org", "au", "AU", c.pub("au"),
                   "--add-org", "asean", "ASEAN", c.pub("asean")],
        ["csto", "sco", "un", "osce"], Reason.THRESHOLD_NOT_MET,
    ),
    "two leave, two join; new-only signatures": (
        lambda c: ["--remove-org", "csto", "--remove-org", "sco", "--add-org", "au", "AU", c.pub("au"),
                   "--add-org", "asean", "ASEAN", c.pub("asean")],
        ["au", "asean", "un", "osce"], Reason.THRESHOLD_NOT_MET,
    ),
    "two leave, two join; staying four sign": (
        lambda c: ["--remove-org", "csto", "--remove-org", "sco", "--add-org", "au", "AU", c.pub("au"),
                   "--add-org", "asean", "ASEAN", c.pub("asean")],
        ["un", "osce", "eu", "nato"], None,
    ),
    "removed organization's signature counts only for the old threshold": (
        lambda c: ["--remove-org", "sco"], ["sco", "un", "osce", "eu"], Reason.THRESHOLD_NOT_MET,
    ),
    "key rotated inside one organization, signed with the old key only": (
        lambda c: ["--replace-key", "un", c.pub("un-2")], ["un", "osce", "eu", "csto"], Reason.THRESHOLD_NOT_MET,
    ),
    "key rotated inside one organization, old and new key sign": (
        lambda c: ["--replace-key", "un", c.pub("un-2")], ["un", "un-2", "osce", "eu", "csto"], None,
    ),
    "threshold above the organizations": (lambda c: ["--threshold", "7"], ORGS, Reason.INVALID_FIELD),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ROTATIONS))
def test_rotation_through_the_cli(
    cer: Ceremony, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, signers, reason = ROTATIONS[name]
    v1 = _v1(cer)
    draft_args = changes(cer)
    if reason is Reason.INVALID_FIELD:  # refused while drafting
        assert (
            cer.run(
                "mandate", "draft", *draft_args, "--previous", str(v1), "--out", str(cer.root / "x")
            )
            == 2
        )
        assert "threshold" in capsys.readouterr().err
        return
    code = cer.version("v2", draft_args, signers, v1)
    err = capsys.readouterr().err
    if reason is None:
        assert code == 0, err
        assert cer.run("mandate", "verify", str(cer.root / "v2.bin"), "--previous", str(v1)) == 0
        assert "OK: version 2 verifies as the successor of version 1" in capsys.readouterr().out
    else:
        assert code == 2
        assert reason.value in err
        assert not (cer.root / "v2.bin").exists()


def test_skipped_version_rollback_and_expiry(
    cer: Ceremony, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = _v1(cer)
    assert cer.version("v2", [], ORGS[:4], v1) == 0
    v2 = cer.root / "v2.bin"
    assert cer.version("v3", [], ORGS[:4], v2) == 0
    v3 = cer.root / "v3.bin"
    capsys.readouterr()
    # v3 presented as the successor of v1 (a skipped version), v1 as the successor of v2.
    assert cer.run("mandate", "verify", str(v3), "--previous", str(v1)) == 1
    assert "REJECTED (mandate_rollback)" in capsys.readouterr().out
    assert cer.run("mandate", "verify", str(v1), "--previous", str(v2)) == 1
    assert "REJECTED (mandate_rollback)" in capsys.readouterr().out
    # An expired version cannot be combined (freeze attack).
    assert cer.run("mandate", "draft", "--previous", str(v1), "--not-after", "2026-02-01T00:00:00Z",
                   "--out", str(cer.root / "exp.draft")) == 0  # fmt: skip
    sigs = cer.sign_all(cer.root / "exp.draft", ORGS, v1)
    assert cer.run("mandate", "combine", str(cer.root / "exp.draft"), *sigs, "--previous", str(v1),
                   "--out", str(cer.root / "exp.bin")) == 2  # fmt: skip
    assert "mandate_expired" in capsys.readouterr().err


def test_bundle_collects_signatures_and_dedups_a_key(cer: Ceremony) -> None:
    v1 = _v1(cer)
    assert (
        cer.run("mandate", "draft", "--previous", str(v1), "--out", str(cer.root / "v2.draft")) == 0
    )
    bundle = cer.root / "bundle.json"
    for s in ["un", "osce", "un", "eu", "nato"]:
        assert (
            cer.run(
                "mandate",
                "sign",
                "--key",
                str(cer.key(s)),
                str(cer.root / "v2.draft"),
                "--bundle",
                str(bundle),
            )
            == 0
        )
    sigs = ceremony.decode_signatures(bundle.read_bytes())
    assert sorted(s.org for s in sigs) == ["eu", "nato", "osce", "un"]
    assert cer.run("mandate", "combine", str(cer.root / "v2.draft"), str(bundle), "--previous", str(v1),
                   "--out", str(cer.root / "v2.bin")) == 0  # fmt: skip


def test_signature_over_another_draft_or_tampered_is_refused(cer: Ceremony) -> None:
    v1 = _v1(cer)
    m1 = Mandate.decode(Envelope.decode(v1.read_bytes()).payload)
    a = ceremony.Draft.of(ceremony.next_version(m1, ceremony.RotationChanges()))
    b = ceremony.Draft.of(ceremony.next_version(m1, ceremony.RotationChanges(threshold=5)))
    sig_b = ceremony.sign_draft(b, cer.keys["un"])
    with pytest.raises(VerificationError) as exc:
        ceremony.combine(a, [sig_b], previous=m1, now_ms=1_800_000_000_000)
    assert exc.value.reason is Reason.INVALID_FIELD
    sig_a = ceremony.sign_draft(a, cer.keys["un"])
    bad = ceremony.DetachedSignature(sig_a.payload_sha256, "un", sig_a.key_id, bytes(64))
    with pytest.raises(VerificationError) as exc:
        ceremony.combine(a, [bad], previous=m1, now_ms=1_800_000_000_000)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    outsider = ceremony.sign_draft(a, demo_key("outsider"))
    with pytest.raises(VerificationError) as exc:
        ceremony.combine(a, [outsider], previous=m1, now_ms=1_800_000_000_000)
    assert exc.value.reason is Reason.UNKNOWN_KEY


def test_combine_is_independent_of_signature_order(cer: Ceremony) -> None:
    v1 = _v1(cer)
    m1 = Mandate.decode(Envelope.decode(v1.read_bytes()).payload)
    d = ceremony.Draft.of(ceremony.next_version(m1, ceremony.RotationChanges()))
    sigs = [ceremony.sign_draft(d, cer.keys[o]) for o in ORGS[:4]]
    one = ceremony.combine(d, sigs, previous=m1, now_ms=1_800_000_000_000)
    two = ceremony.combine(d, sigs[::-1], previous=m1, now_ms=1_800_000_000_000)
    assert one.encode() == two.encode()


DRAFT_DAMAGE: dict[str, tuple[Callable[[dict[str, object]], object], Reason]] = {
    "not JSON": (lambda d: None, Reason.MALFORMED),
    "other file type": (lambda d: d.update(type="obus-mandate-signatures"), Reason.MALFORMED),
    "digest does not match": (lambda d: d.update(payload_sha256="00" * 32), Reason.INVALID_FIELD),
    "payload not a mandate": (lambda d: d.update(payload="0a", payload_sha256=hashlib.sha256(b"\x0a").hexdigest()), Reason.MALFORMED),
    "payload type is a report": (lambda d: d.update(payload_type="application/vnd.obus.report.v1+protobuf"), Reason.WRONG_PAYLOAD_TYPE),
}  # fmt: skip


@pytest.mark.parametrize("name", list(DRAFT_DAMAGE))
def test_damaged_draft_file_is_refused_with_a_reason(cer: Ceremony, name: str) -> None:
    damage, reason = DRAFT_DAMAGE[name]
    v1 = _v1(cer)
    m1 = Mandate.decode(Envelope.decode(v1.read_bytes()).payload)
    doc = json.loads(ceremony.Draft.of(m1).encode())
    data = b"{not json" if damage(doc) is None and name == "not JSON" else json.dumps(doc).encode()
    with pytest.raises(VerificationError) as exc:
        ceremony.Draft.decode(data)
    assert exc.value.reason is reason


DESCRIPTION_ERRORS = {
    "missing threshold": ("threshold = 4\n", "", "threshold"),
    "bad time": ('not_after = "2099-01-01T00:00:00Z"', 'not_after = "next year"', "not_after"),
    "naive time": (
        'not_after = "2099-01-01T00:00:00Z"',
        'not_after = "2099-01-01T00:00:00"',
        "not_after",
    ),
}


@pytest.mark.parametrize("name", list(DESCRIPTION_ERRORS))
def test_description_errors_name_the_key_and_the_fix(cer: Ceremony, name: str) -> None:
    old, new, key = DESCRIPTION_ERRORS[name]
    text = cer.description().read_text().replace(old, new)
    with pytest.raises(ConfigError) as exc:
        ceremony.mandate_from_description(tomllib.loads(text))
    assert exc.value.key == key
    assert exc.value.fix


def test_bad_root_key_in_description(cer: Ceremony) -> None:
    text = cer.description().read_text().replace(cer.pub("eu"), "abcd")
    with pytest.raises(ConfigError) as exc:
        ceremony.mandate_from_description(tomllib.loads(text))
    assert exc.value.key == "organizations[2].root_public_key"


def test_show_prints_draft_and_changes(cer: Ceremony, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = _v1(cer)
    assert cer.run("mandate", "draft", "--previous", str(v1), "--remove-org", "sco", "--threshold", "3",
                   "--out", str(cer.root / "v2.draft")) == 0  # fmt: skip
    capsys.readouterr()
    assert cer.run("mandate", "show", str(cer.root / "v2.draft"), "--previous", str(v1)) == 0
    out = capsys.readouterr().out
    assert "- organization sco" in out
    assert "~ threshold 4 -> 3" in out
    assert "(a draft: not signed yet)" in out
