"""Archive mode: a mandate after its end is read, never signed or published under.

The mission here ran from 430 to 35 days ago (a sealed log built as six nodes would have
built it, every epoch sealed by the organizations' node keys, exported today). Read-only commands (``obus audit --from``, ``obus audit prove
--from``, ``obus dashboard``) work on it and say so; commands that sign or publish refuse with an
error naming the end; the follow-up keeps its decisions unpublished and the gateway refuses new
reports. None of this needs a broker (tests/integration/test_archive_mode.py covers the live
audit, the export and a whole node).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bus.ceremony import format_time_ms
from bus.errors import ConfigError, Reason
from bus.model import Envelope, Mandate, Signature
from bus.policy_file import load_policy
from bus.store.node import NodeStore
from bus.topics import Topics
from nodes.cli.main import main
from nodes.demo.scenario import Scenario, build_scenario
from nodes.gateway.service import Gateway, GatewayConfig, Outcome
from nodes.org_node import statements
from nodes.org_node.dashboard.auth import add_user
from nodes.org_node.followup import FollowUp, FollowUpConfig
from nodes.runtime.files import ended_on, load_mandate, mandate_ended, write_key
from tests.logcapture import capture_all_logs
from tests.mission import make_mission
from tests.sealed_bus import SealedBus, build, final_seals
from tests.unit.test_dashboard_auth import PASSWORD, USER, logged_in

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000
NOW = time.time_ns() // 1_000_000
PAST = NOW - 400 * DAY_MS  # the mission's "now": its mandate ended 35 days ago
NOWHERE = ["--bootstrap", "127.0.0.1:9"]


@dataclasses.dataclass
class Ended:
    """An ended mission's files: mandate, keys, and an export of its log made today."""

    scenario: Scenario
    mandate: Path
    export: Path
    un_root: Path
    un_node: Path
    bus: SealedBus

    @property
    def end(self) -> str:
        return ended_on(self.scenario.mandate)


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> Ended:
    bus = build(junk=False, unsealed=0, now_ms=PAST)  # every record sealed, 400 days ago
    sc = bus.m.scenario
    assert mandate_ended(sc.mandate) and not mandate_ended(sc.mandate, now_ms=PAST)
    root = tmp_path_factory.mktemp("ended")
    (root / "mandate.bin").write_bytes(sc.mandate_envelope)
    bus.clock = NOW  # exported after the end
    export = bus.export(root / "log.jsonl")
    write_key(root / "un-root.key", sc.org_roots["un"])
    write_key(root / "un-node.key", sc.node_keys["un"])
    return Ended(sc, root / "mandate.bin", export, root / "un-root.key", root / "un-node.key", bus)


# -- load_mandate: normal and archive mode ----------------------------------------------------


def test_normal_mode_refuses_an_ended_mandate_naming_its_end_and_the_fix(ended: Ended) -> None:
    with pytest.raises(ConfigError) as exc:
        load_mandate(ended.mandate)
    assert exc.value.key == "mandate"
    msg = str(exc.value)
    assert f"ended on {ended.end}" in msg and str(ended.mandate) in msg
    assert "archive mode" in msg and "obus audit" in msg


def test_archive_mode_accepts_an_ended_mandate_and_still_verifies_it(
    ended: Ended, tmp_path: Path
) -> None:
    mandate, raw = load_mandate(ended.mandate, archive=True)
    assert mandate == ended.scenario.mandate and raw == ended.mandate.read_bytes()
    # Archive mode is no way around the signatures: forged ones are still refused.
    env = Envelope.decode(raw)
    forged = dataclasses.replace(
        env, signatures=tuple(Signature(s.key_id, bytes(64)) for s in env.signatures)
    )
    bad = tmp_path / "forged.bin"
    bad.write_bytes(forged.encode())
    with pytest.raises(ConfigError, match="does not verify"):
        load_mandate(bad, archive=True)


def test_a_current_mandate_loads_in_both_modes(tmp_path: Path) -> None:
    sc = build_scenario(NOW, observers_per_org=1)
    assert not mandate_ended(sc.mandate)
    path = tmp_path / "mandate.bin"
    path.write_bytes(sc.mandate_envelope)
    assert load_mandate(path)[0] == load_mandate(path, archive=True)[0] == sc.mandate


def test_organizations_can_extend_a_mandate_after_its_end(ended: Ended, tmp_path: Path) -> None:
    """The ended version is read in archive mode as --previous; the new one must not have ended."""
    v1, draft, v2 = str(ended.mandate), tmp_path / "v2.draft", tmp_path / "v2.bin"
    future = format_time_ms(NOW + 30 * DAY_MS)
    assert (
        main(["mandate", "draft", "--previous", v1, "--not-after", future, "--out", str(draft)])
        == 0
    )
    sigs = []
    for org in ("un", "osce", "eu", "nato"):
        write_key(tmp_path / f"{org}.key", ended.scenario.org_roots[org])
        sigs.append(str(tmp_path / f"{org}.sig"))
        argv = ["mandate", "sign", "--key", str(tmp_path / f"{org}.key"), str(draft),
                "--previous", v1, "--out", sigs[-1]]  # fmt: skip
        assert main(argv) == 0
    assert main(["mandate", "combine", str(draft), *sigs, "--previous", v1, "--out", str(v2)]) == 0
    mandate, _ = load_mandate(v2)  # normal mode: the mission goes on
    assert mandate.version == 2 and not mandate_ended(mandate)


# -- read-only commands work, saying so --------------------------------------------------------


def test_audit_from_an_export_made_after_the_end_works_in_archive_mode(
    ended: Ended, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    js = tmp_path / "audit.json"
    argv = ["audit", "--from", str(ended.export), "--mandate", str(ended.mandate),
            "--json-out", str(js)]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"ended on {ended.end}: archive mode, read-only" in err
    assert "VERDICT: every" in out and "record verified" in out
    doc = json.loads(js.read_text())
    assert doc["ok"] is True and doc["trust_root"] == "given"


def test_audit_from_without_mandate_trusts_the_embedded_ended_mandate(
    ended: Ended, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    js = tmp_path / "audit.json"
    assert main(["audit", "--from", str(ended.export), "--json-out", str(js)]) == 0
    _, err = capsys.readouterr()
    assert "trusting the mandate embedded in the export" in err
    assert "archive mode, read-only" in err
    doc = json.loads(js.read_text())
    assert doc["ok"] is True and doc["trust_root"] == "embedded"


def test_prove_from_an_export_after_the_end_works_in_archive_mode(
    ended: Ended, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["audit", "prove", "--from", str(ended.export), "--mandate", str(ended.mandate),
            "--topic", "obus.reports.un", "--partition", "0", "--offset", "0"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "archive mode, read-only" in err
    assert "verified" in err and '"inclusion_proof"' in out


async def test_dashboard_serves_the_store_of_an_ended_mission(ended: Ended, tmp_path: Path) -> None:
    db = tmp_path / "un.db"
    NodeStore(db).close()
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD, log2_n=4)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.cli", "dashboard", "--org", "un", "--db", str(db),
        "--mandate", str(ended.mandate), "--http-port", "0", "--dashboard-users", str(users),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("dashboard of un: http://"), (
            line + (await proc.stderr.read(4000)).decode()
        )
        url = line.split(": ", 1)[1].strip()
        async with logged_in(url) as http, http.get(url + "api/summary") as resp:
            assert resp.status == 200
            summary = await resp.json()
        assert summary["mandate"]["id"] == ended.scenario.mandate.mandate_id
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    err = (await proc.stderr.read()).decode()
    assert f"ended on {ended.end}: archive mode, read-only" in err
    assert proc.returncode == 0


# -- whatever signs or publishes refuses, naming the end ---------------------------------------


def _signing_commands(e: Ended, tmp: Path) -> dict[str, list[str]]:
    m, node = f"--mandate {e.mandate}", f"--node-key {e.un_node}"
    org = f"--org un --root-key {e.un_root} {m}"
    argv = {
        "statement draft": f"statement draft --org un {node} {m} --db {tmp / 'un.db'} --title t "
        "--text x",
        "statement sign": f"statement sign some-id --org un {node} {m}",
        "org accredit": f"org accredit {org} --subject un-obs-9 --role observer "
        f"--public-key {'00' * 32}",
        "org revoke": f"org revoke {org} --key-id {'00' * 32} --last-valid-seq 1 --reason lost",
        "org enckey": f"org enckey {org} --private-out {tmp / 'enc.key'}",
        "gateway": f"gateway --org un {m} {node} --db {tmp / 'gw.db'}",
    }
    return {name: [*line.split(), *NOWHERE] for name, line in argv.items()}


@pytest.mark.parametrize(
    "command",
    ["statement draft", "statement sign", "org accredit", "org revoke", "org enckey", "gateway"],
)
def test_commands_that_sign_or_publish_refuse_an_ended_mandate_naming_its_end(
    ended: Ended, capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    assert main(_signing_commands(ended, tmp_path)[command]) == 2
    err = capsys.readouterr().err
    assert "config mandate:" in err and f"ended on {ended.end}" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "enc.key").exists()


async def test_statements_refuse_to_draft_or_sign_after_the_end(ended: Ended) -> None:
    mandate, topics = ended.scenario.mandate, Topics()
    key = ended.scenario.node_keys["un"]
    with pytest.raises(ConfigError, match=f"ended on {ended.end}"):
        await statements.draft(
            "127.0.0.1:9", topics, mandate, org="un", key=key, title="t", text="x",
            references=(),
        )  # fmt: skip
    with pytest.raises(ConfigError, match=f"ended on {ended.end}"):
        await statements.sign("127.0.0.1:9", topics, mandate, statement_id="s", key=key)


class _NoProducer:
    """A producer that must not be used."""

    async def send_and_wait(self, *_a: Any, **_k: Any) -> Any:
        raise AssertionError("published under an ended mandate")


async def test_followup_keeps_decisions_unpublished_after_the_end_and_logs_why(
    ended: Ended, tmp_path: Path
) -> None:
    mandate: Mandate = ended.scenario.mandate
    waiting = [SimpleNamespace(decision=SimpleNamespace(decision_id="un:1"))]
    store = SimpleNamespace(own_decisions=lambda unpublished: waiting if unpublished else [])
    with capture_all_logs() as logs:
        f = FollowUp(
            FollowUpConfig(
                org="un", bootstrap="127.0.0.1:9", db_path=tmp_path / "un.db", mandate=mandate,
                policy=load_policy(REPO / "deploy" / "policies" / "un.toml"),
                node_key=ended.scenario.node_keys["un"],
            )
        )  # fmt: skip
        # Started after the end (no producer), or running when the mandate ended: nothing sent.
        for producer in (None, _NoProducer()):
            await f._publish(store, producer)  # type: ignore[arg-type]
    said = [e for e in logs if e["event"] == "decisions_unpublished_mandate_ended"]
    assert len(said) == 1 and said[0]["waiting"] == 1 and said[0]["ended"] == ended.end
    assert f.counts["published"] == 0


async def test_gateway_refuses_a_new_report_after_the_end(ended: Ended, tmp_path: Path) -> None:
    """The gateway holds the ended mission's final trust state (its trust topics sealed, as
    its node's sealer hands them over) with its node key usable, and still publishes nothing
    new: the mandate in force has ended."""
    sc = ended.scenario
    gw = Gateway(
        GatewayConfig(
            org="un", bootstrap="127.0.0.1:9", db_path=tmp_path / "gw.db", mandate=sc.mandate,
            node_key=sc.node_keys["un"],
        )
    )  # fmt: skip
    try:
        for ref, values in ended.bus.parts.items():
            gw.trust.offer_records(ref, 0, values)  # the trust partitions; others are ignored
        assert gw.trust.advance(final_seals(ended.bus)) == 4
        # What start() does once a final seal is judged, without a broker: check the node key
        # in the final trust state; recovery has nothing to resolve (nothing was published).
        gw._check_node_key()
        gw._recovered = True
        assert gw.ready, gw.not_ready().body
        m = make_mission(now_ms=PAST)
        reply = await gw.submit(m.next_report("un", 1))
    finally:
        gw.store.close()
    assert reply.outcome is Outcome.REFUSED and reply.reason is Reason.MANDATE_EXPIRED
    body = json.loads(reply.body)
    assert body["reason"] == "mandate_expired" and f"ended on {ended.end}" in body["detail"]
