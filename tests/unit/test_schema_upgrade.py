"""A node of the last release reads what main's writers sign (no broker).

The code of the baseline commit (``schemas/baseline/v0.2.0/COMMIT``) is checked out into a
``git worktree`` and run with the same interpreter, ``PYTHONPATH`` pointing at it: it verifies
reports main signed with the version 2 field ``language`` under a mandate allowing version 2,
accepts every one and shows the unknown field 100; under a mandate allowing only version 1 it
quarantines them as ``schema_not_allowed``, as main does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.model import encode
from bus.sign import ReportSigner
from tests.mission import make_mission

ROOT = Path(__file__).resolve().parents[2]
COMMIT = (ROOT / "schemas" / "baseline" / "v0.2.0" / "COMMIT").read_text().strip()

# Run inside the baseline's code: verify each report, print the verdicts as JSON.
_OLD_NODE = """
import json, sys
from bus.crypto import SigningKey
from bus.model import Envelope, Mandate
from bus.trust import KeyRing
from bus.verify import verify_report
from bus.errors import VerificationError
job = json.load(sys.stdin)
ring = KeyRing(Mandate.decode(bytes.fromhex(job["mandate"])))
for raw in job["registry"]:
    ring.apply(Envelope.decode(bytes.fromhex(raw)))
out = []
for raw in job["reports"]:
    try:
        vr = verify_report(bytes.fromhex(raw), expected_org="un", keyring=ring,
                           reference_ms=job["now"])
        out.append(["accepted", list(vr.report.unknown_fields), vr.report.schema_version])
    except VerificationError as exc:
        out.append([exc.reason.value, exc.message])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    have = subprocess.run(["git", "cat-file", "-e", f"{COMMIT}^{{commit}}"], cwd=ROOT, check=False)
    if have.returncode != 0:
        pytest.skip(f"the baseline commit {COMMIT[:12]} is not in this clone (shallow?)")
    tree = tmp_path_factory.mktemp("baseline") / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), COMMIT],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )


def _old_node(tree: Path, job: dict[str, object]) -> list[list[object]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _OLD_NODE],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
        env=env,
    )
    verdicts: list[list[object]] = json.loads(out.stdout)
    return verdicts


def test_the_last_release_accepts_main_s_version_2_reports_and_shows_the_new_field(
    baseline: Path,
) -> None:
    m = make_mission()
    allowing = dataclasses.replace(m.scenario.mandate, max_schema_version=2)
    signer = ReportSigner(m.observer()[1], mandate=allowing)
    reports = [
        signer.sign(m.draft(language="uk")),
        signer.sign(m.draft()),  # no new field: version 1
        signer.sign(m.draft(language="sr-Latn")),
    ]
    job = {
        "mandate": encode(allowing).hex(),
        "registry": [r.hex() for r in m.scenario.accreditations],
        "reports": [r.hex() for r in reports],
        "now": m.now,
    }
    assert _old_node(baseline, job) == [
        ["accepted", [100], 2],
        ["accepted", [], 1],
        ["accepted", [100], 2],
    ]
    # under a mandate of version 1 only, the old node quarantines version 2 as main does
    job["mandate"] = encode(m.scenario.mandate).hex()
    verdicts = _old_node(baseline, job)
    assert [v[0] for v in verdicts] == ["schema_not_allowed", "accepted", "schema_not_allowed"]
