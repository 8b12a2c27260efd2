"""A schema upgrade on a real broker: a node of the last release and a node of main read one log.

The last release is the baseline commit (``schemas/baseline/v0.2.0/COMMIT``), checked out into a
``git worktree`` and run as OSCE's ``obus node`` in a subprocess with the same interpreter and
``PYTHONPATH`` at the worktree; UN's node runs main the same way from this checkout (two
organizations upgrading on different days). The log: the
root mandate (schema version 1 only), the accreditations, a mandate version 2 signed by k
organizations that allows schema version 2, then reports main's writer signed under it, two of
them using version 2's ``language`` (field 100). Both nodes accept every report and quarantine
nothing; the old node keeps the exact bytes and shows field 100 as a field it cannot read; main's
node reads the language. Before the mandate allows version 2, main's writer refuses the field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.errors import Reason, VerificationError
from bus.model import Envelope, Report
from bus.sign import ReportSigner, sign_mandate
from bus.topics import Topics
from tests.mission import live_mission
from tests.sealers import publish_records

pytestmark = [pytest.mark.kafka]
ROOT = Path(__file__).resolve().parents[2]
COMMIT = (ROOT / "schemas" / "baseline" / "v0.2.0" / "COMMIT").read_text().strip()
FOUR = ["un", "osce", "eu", "nato"]
WAIT_S = 120

# Run inside a release's code: the unknown field numbers and the language (when that release
# knows it) of every report a node store holds, in storage order.
_SHOW = """
import json, sqlite3, sys
from bus.model import Envelope, Report
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
out = []
for (env,) in db.execute("SELECT envelope FROM reports ORDER BY rowid"):
    r = Report.decode(Envelope.decode(bytes(env)).payload)
    out.append([list(r.unknown_fields), getattr(r, "language", None), r.schema_version])
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def _start_node(
    tree: Path, work: Path, name: str, org: str, bootstrap: str, topics: Topics
) -> subprocess.Popen[bytes]:
    """``obus node`` of ``org`` from the release at ``tree`` (ingest only: provisional
    verdicts; every organization's node reads every organization's reports)."""
    with (work / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", "node", "--org", org, "--mandate",
             str(work / "mandate.bin"), "--db", str(work / f"{name}.db"), "--ingest-only",
             "--bootstrap", bootstrap, "--topic-prefix", topics.prefix,
             "--http-port", str(_free_port())],
            cwd=tree, env=_env(tree), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _counts(db: Path) -> tuple[int, list[tuple[str, str]]]:
    """(reports stored, quarantined (reason, detail)) of a node store; (0, []) before it exists."""
    if not db.exists():
        return 0, []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        n = con.execute("SELECT count(*) FROM reports").fetchone()[0]
        q = con.execute("SELECT reason, detail FROM quarantine").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return 0, []
    finally:
        con.close()
    return int(n), [(str(r), str(d)) for r, d in q]


def _shown(tree: Path, db: Path) -> list[list[object]]:
    out = subprocess.run(
        [sys.executable, "-c", _SHOW, str(db)],
        capture_output=True, text=True, check=True, cwd=tree, env=_env(tree),
    )  # fmt: skip
    shown: list[list[object]] = json.loads(out.stdout)
    return shown


def test_old_and_new_nodes_accept_main_s_version_2_reports_once_the_mandate_allows_them(
    kafka_bootstrap: str, baseline: Path, tmp_path: Path
) -> None:
    m = live_mission()
    root = m.scenario.mandate
    _, key = m.observer("un", 1)
    # Before the mandate allows version 2, main's writer refuses to use its field.
    with pytest.raises(VerificationError) as err:
        ReportSigner(key, mandate=root).sign(m.draft(language="uk"))
    assert err.value.reason is Reason.SCHEMA_NOT_ALLOWED
    # Mandate version 2, signed by k organizations, allows schema versions 1..2.
    v2 = dataclasses.replace(root, version=2, max_schema_version=2)
    v2_env = sign_mandate(v2, [m.scenario.org_roots[o] for o in FOUR]).encode()
    signer = ReportSigner(key, mandate=v2)
    reports = [
        signer.sign(m.draft(language="uk")),
        signer.sign(m.draft()),  # no new field: version 1
        signer.sign(m.draft(language="sr-Latn", narrative="Udari izbrojani.")),
    ]
    topics = Topics(f"up{uuid.uuid4().hex[:10]}.")
    records = [(topics.mandate, m.scenario.mandate_envelope), (topics.mandate, v2_env)]
    records += [(topics.registry, raw) for raw in m.scenario.accreditations]
    records += [(topics.reports("un"), raw) for raw in reports]
    asyncio.run(publish_records(kafka_bootstrap, topics, records))

    (tmp_path / "mandate.bin").write_bytes(m.scenario.mandate_envelope)
    nodes = {
        # OSCE has not upgraded yet; UN runs main
        "old": _start_node(baseline, tmp_path, "old", "osce", kafka_bootstrap, topics),
        "main": _start_node(ROOT, tmp_path, "main", "un", kafka_bootstrap, topics),
    }
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            seen = {name: _counts(tmp_path / f"{name}.db") for name in nodes}
            if all(n + len(q) >= len(reports) for n, q in seen.values()):
                break
            for name, proc in nodes.items():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, seen
            time.sleep(0.5)
    finally:
        for proc in nodes.values():
            _stop(proc)
    # Both accept every report and quarantine nothing.
    assert seen == {"old": (3, []), "main": (3, [])}
    # The old node kept the exact bytes and shows field 100 as one it cannot read ...
    assert _shown(baseline, tmp_path / "old.db") == [
        [[100], None, 2],
        [[], None, 1],
        [[100], None, 2],
    ]
    # ... and main's node reads it.
    assert _shown(ROOT, tmp_path / "main.db") == [[[], "uk", 2], [[], "", 1], [[], "sr-Latn", 2]]
    con = sqlite3.connect(f"file:{tmp_path / 'old.db'}?mode=ro", uri=True)
    stored = [bytes(e) for (e,) in con.execute("SELECT envelope FROM reports ORDER BY rowid")]
    con.close()
    assert stored == reports  # byte for byte what main's writer signed
    assert [Report.decode(Envelope.decode(r).payload).language for r in stored] == [
        "uk",
        "",
        "sr-Latn",
    ]
