"""``make demo``: a whole joint monitoring mission on a real local Kafka broker.

1. starts a single-node KRaft broker on free 127.0.0.1 ports (deploy/local/kafka.sh), unless
   ``OBUS_BOOTSTRAP`` names one you run (then topics get a unique prefix);
2. creates a mandate for UN, OSCE, EU, NATO, CSTO and SCO with threshold 4 and accredits three
   observers per organization on ``obus.registry``;
3. starts six organization nodes as separate processes with separate SQLite stores, each with
   its dashboard and its ops server (``/healthz``, ``/readyz``, ``/metrics``) on free ports of
   127.0.0.1 of its own (printed);
4. publishes a stream of signed, chained reports through each organization's idempotent
   producer, then injects directly into Kafka one report with a broken signature and one signed
   by an unaccredited key; an observer reports through UN's gateway from the web form, driven in
   headless Chromium (:mod:`nodes.demo.webform`; skipped, saying so, without Chromium);
5. waits until every node has stored or quarantined every record, stops the nodes, and shows:
   identical accepted sets on all six nodes, both bad records quarantined with their reasons at
   every node, each organization's own decisions, and the auditor's verdict;
6. (exported log) exports the log with its seals (``obus log export``), audits the export
   offline (``obus audit --from``, JSON and HTML reports in the working directory: ``obus demo
   --dir``, var/demo for ``make demo``) and proves one report's inclusion against the first
   final seal that covers it (``obus audit prove``), checked against the export and with the
   mandate file alone;
7. (sealed bus) every node's sealer proposes and cosigns a seal a second
   (:data:`nodes.demo.sealing.SEAL_INTERVAL_S`). The mission waits until every node's final
   store has judged the epoch that covers every report, and before stopping the nodes until all
   six stand at the same epoch with the whole bus sealed; then it shows the final seals, each
   organization's proposals and cosignatures, the final verdicts, how provisional verdicts
   became final, and that the six final stores, the live auditor and the offline audit hold the
   same final state (identical fingerprints, the same state digest).

Exit code 0 when everything above holds, 1 otherwise. Everything it starts is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Final

import structlog
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from bus.kafka.admin import end_offsets, ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import Envelope, Signature
from bus.seal_proof import verify_light
from bus.sign import ReportSigner
from bus.topics import Topics, report_headers, standard_topics
from nodes.auditor.log_export import export_log
from nodes.auditor.prove import check_from_file, prove_from_file
from nodes.auditor.report import write_html
from nodes.auditor.run import audit, audit_export, render, write_json
from nodes.demo.scenario import (
    DAY_MS,
    ORGANIZATIONS,
    ObserverIdentity,
    Scenario,
    build_scenario,
    demo_key,
    draft_report,
    escalation_reports,
    signed_reports,
)
from nodes.demo.sealing import (
    SEAL_INTERVAL_S,
    BusEnds,
    FinalSummary,
    seal_args,
    show_final,
    wait_until_final,
)
from nodes.demo.webform import WebForm, report_through_form
from nodes.org_node.dashboard.auth import add_user
from nodes.runtime.files import write_key

log = structlog.get_logger(__name__)

REPO: Final = Path(__file__).resolve().parents[2]
KAFKA_SH: Final = REPO / "deploy" / "local" / "kafka.sh"
POLICIES: Final = REPO / "deploy" / "policies"
DEMO_MARKER: Final = ".obus-demo"  # in the demo's working directory
WAIT_FOR_NODES_S: Final = 180
# The escalation's reports were signed up to three weeks ago (escalation_reports): the mandate
# lets reports arrive that late, or their final verdict would be delivery_lag.
MAX_DELIVERY_LAG_MS: Final = 30 * DAY_MS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that are free right now (all held bound until
    every one is chosen, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class LocalBroker:
    """A broker started with deploy/local/kafka.sh for this process (stopped in ``stop``)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start and wait until the broker answers (the script waits)."""
        subprocess.run(
            [str(KAFKA_SH), "up", "--port", str(self.port), "--controller-port",
             str(free_port()), "--data-dir", str(self.data_dir), "--exit-with", str(os.getpid())],
            check=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the broker."""
        subprocess.run([str(KAFKA_SH), "down", "--data-dir", str(self.data_dir)], check=False)


def _fingerprint(rows: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for rid, digest in rows:
        h.update(rid.encode() + b"\0" + digest)
    return h.hexdigest()[:16]


def _node_progress(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM positions WHERE topic LIKE ?",
                ("%reports.%",),
            ).fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


async def _run(console: Console, work: Path, reports_per_observer: int) -> bool:
    external = os.environ.get("OBUS_BOOTSTRAP")
    broker: LocalBroker | None = None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    bus: BusEnds | None = None  # the sealed topics' end offsets, for the waits
    form: WebForm | None = None  # UN's gateway serving the web form
    try:
        if external:
            bootstrap = external
            topics = Topics(f"obus.demo{int(time.time())}.")
            console.print(f"Using your broker at {bootstrap}, topic prefix {topics.prefix}")
        else:
            broker = LocalBroker(work / "kafka")
            console.rule("1. Local Apache Kafka (KRaft) on 127.0.0.1")
            broker.start()
            bootstrap, topics = broker.bootstrap, Topics()
        now = int(time.time() * 1000)
        scenario = build_scenario(
            now, observers_per_org=3, threshold=4, max_delivery_lag_ms=MAX_DELIVERY_LAG_MS
        )
        orgs = [o for o, _ in ORGANIZATIONS]
        await ensure_topics(bootstrap, standard_topics(topics, orgs))
        bus = BusEnds(bootstrap, topics)
        await bus.start()
        mandate_file = work / "mandate.bin"
        mandate_file.write_bytes(scenario.mandate_envelope)

        console.rule("2. Mandate and accreditations")
        console.print(
            f"mandate {scenario.mandate.mandate_id} v{scenario.mandate.version}: "
            f"{len(orgs)} organizations, threshold {scenario.mandate.threshold}, "
            f"zones {', '.join(z.id for z in scenario.mandate.zones)}, reports delivered up to"
            f" {scenario.mandate.delivery_lag_ms // DAY_MS} days after signing; "
            f"signed by {len(Envelope.decode(scenario.mandate_envelope).signatures)} root keys"
        )
        producer = reliable_producer(bootstrap)
        await producer.start()
        try:
            for raw in scenario.accreditations:
                await producer.send_and_wait(topics.registry, raw)
            console.print(
                f"{len(scenario.accreditations)} observers accredited on {topics.registry}"
            )
            node_keys = await _accredit_node_keys(producer, scenario, topics, work)
            console.print(
                f"{len(node_keys)} node keys accredited (role NODE): each node's sealer signs"
                " its seal proposals and cosignatures with it"
            )

            console.rule("3. Six organization nodes")
            # Each node's dashboard and its ops server (/healthz, /readyz, /metrics) on ports
            # of their own: six nodes on one host cannot all take the default ops port.
            chosen = free_ports(2 * len(orgs))
            ports = dict(zip(orgs, chosen[: len(orgs)], strict=True))
            ops_ports = dict(zip(orgs, chosen[len(orgs) :], strict=True))
            # The dashboards need a login: one demo user, a fresh password shown once.
            users, password = work / "dashboard-users", secrets.token_urlsafe(12)
            users.unlink(missing_ok=True)
            add_user(users, "demo", password)
            for org in orgs:
                logf = (work / "logs" / f"{org}.log").open("wb")
                procs[org] = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                    [sys.executable, "-m", "nodes.cli", "node", "--org", org,
                     "--mandate", str(mandate_file), "--db", str(work / f"{org}.db"),
                     "--policy", str(POLICIES / f"{org}.toml"), "--bootstrap", bootstrap,
                     "--topic-prefix", topics.prefix, "--node-key", str(node_keys[org]),
                     "--http-port", str(ports[org]), "--dashboard-users", str(users),
                     "--ops-listen", f"127.0.0.1:{ops_ports[org]}", *seal_args()],
                    stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                    env={**os.environ, "OBUS_LOG_JSON": "1"},
                )  # fmt: skip
            console.print(
                f"started nodes: {', '.join(f'{o} (pid {p.pid})' for o, p in procs.items())};"
                f" each judges what it reads at once (provisional) and its sealer proposes or"
                f" cosigns a seal every {SEAL_INTERVAL_S:g}s: verdicts are final once their"
                f" epoch is sealed by {scenario.mandate.threshold} of {len(orgs)}"
            )
            for org in orgs:
                console.print(f"  {org:5} dashboard and API: http://127.0.0.1:{ports[org]}/")
                console.print(
                    f"        ops (healthz, readyz, metrics): http://127.0.0.1:{ops_ports[org]}/"
                )
            console.print(f"  log in to the dashboards as demo, password {password}")

            console.rule("4. Observers publish signed reports")
            rng = random.Random(2026)
            stream = signed_reports(scenario, reports_per_observer, now, rng)
            # and an escalation the OSCE's early-warning rule sees (ceasefire violations in the
            # east zone more than doubling week over week)
            escalation = escalation_reports(scenario, now, rng, surge=SURGE)
            stream += escalation
            futures = [
                await producer.send(
                    topics.reports(obs.org), raw, key=obs.observer_id.encode(),
                    headers=report_headers(rid, obs.org, obs.observer_id),
                )
                for obs, rid, raw in stream
            ]  # fmt: skip
            await asyncio.gather(*futures)
            console.print(
                f"{len(stream)} genuine reports published by {len(scenario.observers)} observers"
            )
            injected = await _inject(producer, scenario, topics, now, rng)
            for label, (topic, partition, offset) in injected.items():
                console.print(f"[yellow]injected[/yellow] {label} at {topic}[{partition}]@{offset}")
        finally:
            await producer.stop()
        form = await report_through_form(
            console, work, bootstrap=bootstrap, topics=topics, scenario=scenario
        )
        genuine = len(stream) + len(form.envelopes)  # the form's reports are genuine too
        published_at = time.monotonic()

        ends = await end_offsets(bootstrap, topics.reports_pattern)
        total = sum(ends.values())
        deadline = time.monotonic() + WAIT_FOR_NODES_S
        while time.monotonic() < deadline:
            done = {o: _node_progress(work / f"{o}.db") for o in orgs}
            dead = [o for o, p in procs.items() if p.poll() is not None]
            if dead:
                console.print(f"[red]node(s) exited early: {dead}; see {work / 'logs'}[/red]")
                return False
            if all(v >= total for v in done.values()):
                break
            await asyncio.sleep(0.5)
        else:
            console.print(f"[red]nodes did not finish within {WAIT_FOR_NODES_S}s: {done}[/red]")
            return False
        reports_final = await wait_until_final(
            console, work, procs, bus,
            only=lambda t: topics.org_of_report_topic(t) is not None,
            what="every report published", since=published_at,
        )  # fmt: skip
        if reports_final is None:
            return False

        console.rule("Follow-up: decisions, early warning, a joint statement (4 of 6)")
        followup_ok = await _joint_statement(
            console, work, bootstrap=bootstrap, topics=topics, scenario=scenario,
            escalation=[rid for _, rid, _ in escalation[-SURGE:]], orgs=orgs, ports=ports,
        )  # fmt: skip
        settled = await wait_until_final(
            console, work, procs, bus, settle=True,
            what="the whole bus (reports, trust records, decisions, statements)",
        )  # fmt: skip
        _stop_nodes(procs)
        if settled is None:
            return False

        console.rule("5. What every node holds")
        ok = form.ok and _show_nodes(console, work, orgs, genuine, injected)

        console.rule("6. Seals: one order and one clock for the whole bus; final verdicts")
        final = show_final(console, work, orgs, topics)
        ok &= final.ok and _final_as_expected(console, final, topics, genuine, injected)

        console.rule("7. The auditor replays the log")
        result = await audit(bootstrap, scenario.mandate, topics=topics, console=console)
        render(result, console)
        expected = {(t, p, o) for t, p, o in injected.values()}
        found = {(v.topic, v.partition, v.offset) for v in result.violations}
        audit_ok = found == expected and sum(result.accepted.values()) == genuine
        console.print(
            ("[green]" if audit_ok else "[red]")
            + f"auditor named {len(found)} violation(s);"
            + f" expected exactly the {len(expected)} injected"
        )
        audit_ok &= _same_final(console, "the auditor", result.final_digest(), final)

        console.rule("8. Export the log and audit the copy offline")
        export_ok = await _export_and_audit(
            console, work, bootstrap=bootstrap, topics=topics, scenario=scenario,
            expected=expected, report_id=stream[0][1], final=final,
        )  # fmt: skip
        console.rule("9. Follow-up: each organization's own decisions, shown to the others")
        followup_ok &= _show_followup(console, work, orgs)
        return ok and audit_ok and export_ok and followup_ok
    finally:
        _stop_nodes(procs)
        if form is not None:
            await form.stop()
        if bus is not None:
            await bus.stop()
        if broker is not None:
            console.rule("Stopping Kafka")
            broker.stop()


async def _inject(
    producer: AIOKafkaProducer, scenario: Scenario, topics: Topics, now: int, rng: random.Random
) -> dict[str, tuple[str, int, int]]:
    """Publish two bad records straight into Kafka; returns where they landed."""
    out: dict[str, tuple[str, int, int]] = {}
    # (a) a genuine OSCE observer's next report with one bit of the signature flipped.
    victim = next(o for o in scenario.observers if o.org == "osce")
    signer = ReportSigner(victim.key, scenario.signers[victim.observer_id].head)
    raw = signer.sign(draft_report(rng, victim, scenario.mandate, now))
    env = Envelope.decode(raw)
    sig = env.signatures[0]
    broken = bytes([sig.sig[0] ^ 0x01]) + sig.sig[1:]
    tampered = dataclasses.replace(env, signatures=(Signature(sig.key_id, broken),)).encode()
    md = await producer.send_and_wait(
        topics.reports("osce"), tampered, key=victim.observer_id.encode()
    )
    out["broken signature (expect bad_signature)"] = (md.topic, md.partition, md.offset)
    # (b) a report by a key no organization accredited, claiming to be an EU observer.
    rogue = ObserverIdentity("eu-obs-9", "eu", demo_key("rogue"))
    raw = ReportSigner(rogue.key).sign(draft_report(rng, rogue, scenario.mandate, now))
    md = await producer.send_and_wait(topics.reports("eu"), raw, key=rogue.observer_id.encode())
    out["unaccredited key (expect unknown_key)"] = (md.topic, md.partition, md.offset)
    return out


async def _accredit_node_keys(
    producer: AIOKafkaProducer, scenario: Scenario, topics: Topics, work: Path
) -> dict[str, Path]:
    """Publish each organization's NODE accreditation; write its key file for its node."""
    files: dict[str, Path] = {}
    for raw in scenario.node_accreditations:
        await producer.send_and_wait(topics.registry, raw)
    for org, key in scenario.node_keys.items():
        files[org] = work / "keys" / f"{org}-node.json"
        write_key(files[org], key)
    return files


async def _export_and_audit(
    console: Console,
    work: Path,
    *,
    bootstrap: str,
    topics: Topics,
    scenario: Scenario,
    expected: set[tuple[str, int, int]],
    report_id: str,
    final: FinalSummary,
) -> bool:
    """`obus log export` (the seals with every sealed topic), then `obus audit --from` (JSON +
    HTML): the copy names the injected records and holds the nodes' final state; and one
    report's inclusion proof against a final seal, checked fully and lightly."""
    path = work / "log.obus.jsonl"
    counts = await export_log(bootstrap, topics, scenario.mandate, scenario.mandate_envelope, path)
    console.print(
        f"exported {shown(path)} ({path.stat().st_size // 1024} KiB): "
        + ", ".join(f"{n} {k}" for k, n in counts.items())
    )
    result = audit_export(path, scenario.mandate, console=console)
    render(result, console)
    write_json(result, work / "audit.json")
    write_html(result, work / "audit.html")
    found = {(v.topic, v.partition, v.offset) for v in result.violations}
    ok = found == expected
    console.print(
        ("[green]" if ok else "[red]")
        + f"offline audit named {len(found)} violation(s) (expected the {len(expected)}"
        + f" injected); reports in {shown(work / 'audit.html')} and audit.json"
    )
    ok &= _same_final(console, "the offline audit", result.final_digest(), final)
    proof = prove_from_file(path, scenario.mandate, where=None, report_id=report_id)
    full = check_from_file(proof, path, scenario.mandate)
    light = verify_light(proof, scenario.mandate)
    seal = proof.seal()
    console.print(
        f"inclusion proof of report {report_id}: leaf {proof.leaf_index} of"
        f" {proof.topic}[{proof.partition}] at size {proof.size} in the final seal of epoch"
        f" {seal.epoch}, {len(proof.path)} hashes, cosigned by {len(full)} organizations:"
        f" [green]verified[/green] against the export and with the mandate file alone"
        f" ({len(light)} organizations)"
        f" (obus audit prove --from {shown(path)} --report-id {report_id})"
    )
    return ok and full == light and len(full) >= scenario.mandate.threshold


def _stop_nodes(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _show_nodes(
    console: Console,
    work: Path,
    orgs: list[str],
    genuine: int,
    injected: dict[str, tuple[str, int, int]],
) -> bool:
    ok = True
    table = Table(title="Per node: accepted set and quarantine")
    for col in ("node", "accepted", "set fingerprint", "quarantined", "reasons"):
        table.add_column(col)
    prints, decisions = set(), {}
    expected_q = {(t, p, o) for t, p, o in injected.values()}
    for org in orgs:
        with sqlite3.connect(f"file:{work / f'{org}.db'}?mode=ro", uri=True) as con:
            rows = [
                (r, bytes(d))
                for r, d in con.execute("SELECT report_id, digest FROM reports ORDER BY report_id")
            ]
            q = list(con.execute('SELECT topic, partition, "offset", reason FROM quarantine'))
            decisions[org] = list(con.execute("SELECT rule, action, priority FROM decisions"))
        fp = _fingerprint(rows)
        prints.add(fp)
        reasons = Counter(r for *_, r in q)
        node_ok = len(rows) == genuine and {(t, p, o) for t, p, o, _ in q} == expected_q
        ok &= node_ok
        table.add_row(
            org, str(len(rows)), fp, str(len(q)),
            ", ".join(f"{k}x{v}" for k, v in sorted(reasons.items())),
            style=None if node_ok else "red",
        )  # fmt: skip
    console.print(table)
    same = len(prints) == 1
    ok &= same
    console.print(
        "[green]all six nodes hold the identical set of reports[/green]"
        if same
        else "[red]nodes disagree on the accepted set[/red]"
    )
    dt = Table(title="Each organization's own follow-up decisions (same data, own policy)")
    for col in ("organization", "decisions", "by action"):
        dt.add_column(col)
    for org in orgs:
        by = Counter(f"{a} ({p})" for _, a, p in decisions[org])
        dt.add_row(
            org, str(len(decisions[org])), "; ".join(f"{k}: {v}" for k, v in by.most_common())
        )
    console.print(dt)
    distinct = len({tuple(sorted(d)) for d in decisions.values()})
    differ = distinct >= 2
    ok &= differ
    console.print(f"{distinct} distinct decision sets across {len(orgs)} organizations")
    return ok


def _final_as_expected(
    console: Console,
    final: FinalSummary,
    topics: Topics,
    genuine: int,
    injected: dict[str, tuple[str, int, int]],
) -> bool:
    """The final verdicts on reports: every genuine one accepted, the injected ones quarantined
    (and nothing left deferred)."""
    reports = [r for r in final.any.rows if topics.org_of_report_topic(r.topic) is not None]
    by = Counter(r.status for r in reports)
    quarantined = {r.pos: r.reason for r in reports if r.status == "quarantined"}
    ok = by["accepted"] == genuine and set(quarantined) == set(injected.values())
    ok &= by["deferred"] == 0
    console.print(
        ("[green]" if ok else "[red]")
        + f"final: {by['accepted']} reports accepted (expected {genuine}), quarantined"
        f" {', '.join(sorted(quarantined.values())) or 'none'} (expected exactly the"
        f" {len(injected)} injected)"
    )
    return ok


def _same_final(
    console: Console, who: str, digest: dict[str, object] | None, final: FinalSummary
) -> bool:
    """Whether ``who`` (an audit's final digest) holds the nodes' final state."""
    want = {"epoch": final.any.epoch, "state_digest": final.state_digest_b64}
    ok = digest == want
    console.print(
        f"[green]{who} derived the same final state as the six nodes: epoch {want['epoch']},"
        f" state digest {want['state_digest']}[/green]"
        if ok
        else f"[red]{who}'s final state {digest} differs from the nodes' {want}[/red]"
    )
    return ok


STATEMENT_SIGNERS: Final = ("un", "osce", "eu", "nato")  # 4 of 6: the mandate's threshold
SURGE: Final = 9  # ceasefire violations in the east zone last week (3 the week before)


async def _joint_statement(
    console: Console,
    work: Path,
    *,
    bootstrap: str,
    topics: Topics,
    scenario: Scenario,
    escalation: list[str],
    orgs: list[str],
    ports: dict[str, int],
) -> bool:
    """UN drafts a statement on the escalation; OSCE, EU and NATO co-sign it after checking the
    references against their own stores; CSTO and SCO do not sign. Then wait until every node
    shows it valid (and has made and published its own decisions meanwhile)."""
    from nodes.org_node.statements import draft, references_from_store, sign  # noqa: PLC0415

    mandate = scenario.mandate
    drafter, *cosigners = STATEMENT_SIGNERS
    stmt = await draft(
        bootstrap, topics, mandate, org=drafter, key=scenario.node_keys[drafter],
        title="Ceasefire violations in the east zone more than doubled",
        text="Observers of three organizations report ceasefire violations in the Hill "
        "Country (east) zone at three times the rate of the week before. The signatories "
        "call on all parties to observe the ceasefire.",
        references=references_from_store(work / f"{drafter}.db", escalation),
    )  # fmt: skip
    console.print(
        f"{drafter} drafted statement {stmt.statement_id} citing {len(stmt.references)} reports"
    )
    status = None
    for org in cosigners:
        status = await sign(
            bootstrap, topics, mandate, statement_id=stmt.statement_id,
            key=scenario.node_keys[org], db=work / f"{org}.db",
        )  # fmt: skip
        console.print(
            f"  {org} checked the references against its own store and signed: "
            f"{len(status.signed_by)} of {status.organizations} (k = {status.threshold}),"
            f" {status.state}"
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = {org: _followup_counts(work / f"{org}.db", org) for org in orgs}
        if all(
            s["statement_signers"] == len(STATEMENT_SIGNERS) and s["peers"] for s in seen.values()
        ):
            break
        await asyncio.sleep(0.5)
    else:
        console.print(f"[red]nodes did not show the statement and others' decisions: {seen}")
        return False
    console.print(
        "[green]every node shows the statement valid (4 of 6) and others' published decisions"
    )
    for org in orgs:
        console.print(f"  {org:5} http://127.0.0.1:{ports[org]}/#statements")
    return status is not None and status.valid


def _followup_counts(db: Path, org: str) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        peers = con.execute(
            "SELECT count(*) FROM peer_decisions WHERE org != ?", (org,)
        ).fetchone()[0]
        signers = con.execute(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM statement_signatures"
            " GROUP BY statement_id)"
        ).fetchone()[0]
    return {"peers": int(peers), "statement_signers": int(signers)}


def _show_followup(console: Console, work: Path, orgs: list[str]) -> bool:
    from bus.store.node import NodeStore  # noqa: PLC0415

    table = Table(title="Follow-up per organization (decided alone, published for transparency)")
    for col in ("org", "own decisions", "published", "early warnings", "others' decisions seen",
                "statements (valid)"):  # fmt: skip
        table.add_column(col)
    alerts = []
    ok = True
    for org in orgs:
        store = NodeStore(work / f"{org}.db", read_only=True)
        try:
            own = store.own_decisions()
            peers = [d for d in store.peer_decisions() if d["org"] != org]
            stmts = store.statements()
        finally:
            store.close()
        trend = [sd.decision for sd in own if sd.decision.kind == "trend"]
        alerts += trend
        valid = [s for s in stmts if len(s["signed_by"]) >= s["threshold"]]
        table.add_row(
            org, str(len(own)), str(sum(1 for sd in own if sd.pub_state == "published")),
            str(len(trend)), f"{len(peers)} from {len({d['org'] for d in peers})} orgs",
            f"{len(stmts)} ({len(valid)})",
        )  # fmt: skip
        ok &= bool(peers) and len(valid) == 1
    console.print(table)
    for d in alerts:
        console.print(
            f"[bold red]EARLY WARNING[/] {d.org}: {d.rule} in zone {d.zone}, week of "
            f"{time.strftime('%Y-%m-%d', time.gmtime(d.window_start_ms / 1000))}: {d.summary}"
            f" -> {d.action} ({d.priority})"
        )
    ok &= bool(alerts)
    console.print(
        ("[green]" if alerts else "[red]") + f"{len(alerts)} early-warning alert(s);"
        f" the joint statement is valid at {len(STATEMENT_SIGNERS)} of {len(orgs)}"
    )
    console.print(
        "dashboards stop with the nodes; serve a store again with: .venv/bin/obus dashboard"
        f" --org un --db {work / 'un.db'} --mandate {work / 'mandate.bin'}"
        f" --policy {POLICIES / 'un.toml'} --http-port 8080"
        f" --dashboard-users {work / 'dashboard-users'}"
    )
    return ok


def shown(path: Path) -> str:
    """A path for people: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(*, reports_per_observer: int = 12, keep: bool = False, work: Path | None = None) -> int:
    """Run the demo; returns the process exit code."""
    console = Console()
    # absolute: the nodes run in another working directory
    work = (REPO / "var" / "demo" if work is None else work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    (work / DEMO_MARKER).touch()  # `obus demo --dir` clears only a directory holding this
    started = time.monotonic()
    ok = asyncio.run(_run(console, work, reports_per_observer))
    console.rule()
    console.print(
        ("[bold green]DEMO OK" if ok else "[bold red]DEMO FAILED")
        + f"[/] in {time.monotonic() - started:.0f}s;"
        + f" node logs and stores in {shown(work)}"
    )
    if not keep and ok:
        shutil.rmtree(work / "kafka", ignore_errors=True)
    return 0 if ok else 1
