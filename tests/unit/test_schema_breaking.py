"""The breaking-change check of ``make proto-check`` (schemas/breaking.py) against the baseline.

Each case copies the current schemas, makes one change and runs the check as ``make`` does (a
subprocess, exit status and message) or through its function: a deliberately breaking change
fails it, an addition in the addition range of an open message passes.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "schemas" / "breaking.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("obus_schema_breaking", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


breaking = _load()


def _run(schemas: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = [] if schemas is None else ["--schemas", str(schemas)]
    return subprocess.run(
        [sys.executable, str(SCRIPT), *extra], capture_output=True, text=True, check=False
    )


def _changed(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of the current schemas with ``old`` replaced by ``new`` (once) in ``file``."""
    copy = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas" / "obus", copy / "obus")
    path = copy / "obus" / "v1" / file
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return copy


def test_the_current_schemas_pass_against_the_last_release() -> None:
    out = _run()
    assert out.returncode == 0, out.stderr
    assert "compatible with v0.2.0" in out.stdout


def test_the_baseline_names_its_release_commit() -> None:
    folder = breaking.latest_baseline()
    assert folder.name == "v0.2.0"
    assert re.fullmatch(r"[0-9a-f]{40}\n", (folder / "COMMIT").read_text())


BREAKING = [
    (
        "field renumbered",
        "report.proto",
        "string corrects = 18;",
        "string corrects = 120;",
        "field 18 (corrects) renumbered to 120",
    ),
    (
        "type changed",
        "report.proto",
        "uint32 severity = 13;",
        "int64 severity = 13;",
        "field 13 (severity) changed type uint32 -> int64",
    ),
    (
        "field removed without reserving",
        "report.proto",
        "  string sub_type = 12;\n",
        "",
        "field 12 (sub_type) removed",
    ),
    (
        "field removed, number reserved",
        "report.proto",
        "  string sub_type = 12;\n",
        "  reserved 12;\n",
        "field 12 (sub_type) removed",
    ),
    (
        "field renamed",
        "trust.proto",
        "string reason = 5;",
        "string why = 5;",
        "field 5 (reason) renamed to why",
    ),
    (
        "singular made repeated",
        "envelope.proto",
        "bytes payload = 2;",
        "repeated bytes payload = 2;",
        "field 2 (payload) changed from singular to repeated",
    ),
    (
        "field added to a closed message",
        "report.proto",
        "string place = 4;",
        "string place = 4;\n  string country = 5;",
        "obus.v1.Location field 5 (country) added",
    ),
    (
        "field added to an open message below the addition range",
        "report.proto",
        "uint32 schema_version = 19;",
        "uint32 schema_version = 19;\n  string extra = 20;",
        "obus.v1.ObserverReport field 20 (extra) added",
    ),
    (
        "enum value added",
        "report.proto",
        "OTHER = 10;",
        "OTHER = 10;\n  LOOTING = 11;",
        "value 11 (LOOTING) added",
    ),
    (
        "enum value removed",
        "trust.proto",
        "  AUDITOR = 3;\n",
        "",
        "enum obus.v1.Role value 3 (AUDITOR) removed",
    ),
]


@pytest.mark.parametrize(
    ("name", "file", "old", "new", "expected"), BREAKING, ids=[c[0] for c in BREAKING]
)
def test_a_breaking_change_fails_the_check(
    tmp_path: Path, name: str, file: str, old: str, new: str, expected: str
) -> None:
    schemas = _changed(tmp_path, file, old, new)
    out = _run(schemas)
    assert out.returncode == 1, (name, out.stdout)
    assert expected in out.stderr, out.stderr


def test_a_message_removed_fails_the_check(tmp_path: Path) -> None:
    schemas = _changed(
        tmp_path,
        "receipt.proto",
        "message Receipt {",
        "message ReceiptRenamed {",
    )
    problems = breaking.breaking_changes(
        breaking.FDS.FromString((breaking.latest_baseline() / breaking.BASELINE_FILE).read_bytes()),
        breaking.compile_schemas(schemas),
    )
    assert "message obus.v1.Receipt removed" in problems


def test_an_addition_in_the_addition_range_of_an_open_message_passes(tmp_path: Path) -> None:
    schemas = _changed(
        tmp_path,
        "report.proto",
        "string language = 100;",
        "string language = 100;\n  string position_source = 103;\n  repeated string tags = 104;",
    )
    out = _run(schemas)
    assert out.returncode == 0, out.stderr
    # ... and a new message type likewise
    path = schemas / "obus" / "v1" / "report.proto"
    path.write_text(path.read_text() + "\nmessage Note {\n  string text = 1;\n}\n")
    assert _run(schemas).returncode == 0


def test_an_addition_above_the_range_fails(tmp_path: Path) -> None:
    schemas = _changed(
        tmp_path,
        "report.proto",
        "string language = 100;",
        "string language = 100;\n  string extra = 200;",
    )
    out = _run(schemas)
    assert out.returncode == 1
    assert "additions allowed: only" in out.stderr
