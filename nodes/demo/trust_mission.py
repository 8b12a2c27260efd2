"""``make demo-trust``: the trust lifecycle of a mission on a real local Kafka broker.

1. starts a single-node KRaft broker on free 127.0.0.1 ports (or uses ``OBUS_BOOTSTRAP`` with a
   unique topic prefix);
2. mandate version 1 (six organizations, threshold 4) is published with ``obus mandate publish``;
   observers are accredited; UN, OSCE and EU publish X25519 encryption keys with
   ``obus org enckey``; six organization nodes start as separate processes, each with its own
   store (and its encryption key file where it has one);
3. **rotation**: the African Union joins. ``obus mandate draft --previous`` writes version 2,
   UN, OSCE, EU and CSTO sign it on "their own machines" (``obus mandate sign``, one key file
   each), ``obus mandate combine`` checks 4 of 6 and writes the signed file, ``obus mandate
   publish`` puts it on the mandate topic. An AU report sent before version 2 is quarantined
   (``unknown_key``), one after it is accepted, at every node. A forged version 3 signed by 3
   organizations and version 1 published again are refused at every node (alarms);
4. **revocation**: an UN observer's reports 1-3 are accepted, then ``obus org revoke
   --last-valid-seq 2``; report 3 is marked ``revoked_after_acceptance`` at nodes that had
   accepted it, reports 4-5 are quarantined ``key_revoked`` everywhere;
5. **restricted report**: an OSCE observer seals a report to UN and OSCE only. Every node
   accepts it (authorship and chain verified); UN and OSCE read it, the other four cannot;
6. the auditor replays everything and names exactly the expected violations.

**On seals.** Every node's sealer proposes and cosigns a seal a second with its node key
(:mod:`nodes.demo.sealing`); trust records take effect from the epoch after the one that seals
them. So the mission waits for version 2's epoch to be final before the African Union accredits
its observer (under version 1 the AU root signs nothing that counts), for the UN observer's
first reports to be final before the revocation, and for the revocation's epoch to be final
before that observer's reports 4-5: final verdicts then say what the provisional ones say
(report 3 accepted at its epoch and revoked after acceptance at the revocation's next epoch,
4-5 ``key_revoked``). Halfway through, SCO's node is restarted from the version 2 file (with
``--root-mandate`` version 1: final verdicts are judged from the root every reader shares). At
the end all six final stores, and the auditor, hold the same final state, and the summary
shows the rotation's epoch and the revoked key's reports with their final verdicts.

Exit code 0 when everything above holds, 1 otherwise. Everything it starts is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
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
from bus.model import (
    PAYLOAD_SEALED_REPORT,
    Envelope,
    Report,
    SealedReport,
)
from bus.sign import ReportSigner, sign_mandate
from bus.topics import Topics, report_headers, standard_topics
from bus.trust import KeyRing
from nodes.auditor.run import audit, render
from nodes.demo.mission import (
    REPO,
    LocalBroker,
    _fingerprint,
    _node_progress,
    _same_final,
    _stop_nodes,
    free_ports,
)
from nodes.demo.scenario import (
    ORGANIZATIONS,
    ObserverIdentity,
    build_scenario,
    demo_key,
    draft_report,
)
from nodes.demo.sealing import (
    SEAL_INTERVAL_S,
    BusEnds,
    FinalSummary,
    seal_args,
    show_final,
    wait_until_final,
)
from nodes.runtime.files import write_key

log = structlog.get_logger(__name__)

WAIT_FOR_NODES_S: Final = 180
ORGS: Final = [o for o, _ in ORGANIZATIONS]
ROTATION_SIGNERS: Final = ("un", "osce", "eu", "csto")  # 4 of 6
READERS: Final = ("un", "osce")  # the restricted report's recipients
KEY_HOLDERS: Final = ("un", "osce", "eu")  # organizations that published encryption keys


async def _cli(console: Console, *argv: str) -> int:
    """Run one ``obus`` command as its own process, as an operator would, echoing it."""
    console.print(f"[bold]$ obus {' '.join(argv)}[/bold]")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.cli", *argv, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    stdout, _ = await proc.communicate()
    out = stdout.decode(errors="replace").rstrip()
    if out:
        console.print(out, markup=False, highlight=False)
    return await proc.wait()


class Mission:
    """Keys, files and signers of the demo mission."""

    def __init__(self, work: Path, now: int) -> None:
        self.work = work
        self.now = now
        self.scenario = build_scenario(now, observers_per_org=2, threshold=4, seed="trust-demo")
        self.rng = random.Random(4)
        for org, key in self.scenario.org_roots.items():
            write_key(self.root_file(org), key)
        for org, key in self.scenario.node_keys.items():
            write_key(self.node_key_file(org), key)
        # each node's ops server (/healthz, /readyz, /metrics) on a port of its own, kept when
        # the node restarts: six nodes on one host cannot all take the default ops port
        self.ops_ports = dict(zip(ORGS, free_ports(len(ORGS)), strict=True))
        self.au_root = demo_key("trust-demo:root:au")
        self.au_observer = ObserverIdentity("au-obs-1", "au", demo_key("trust-demo:obs:au-obs-1"))
        self.au_signer = ReportSigner(self.au_observer.key)
        (work / "v1.bin").write_bytes(self.scenario.mandate_envelope)

    def root_file(self, org: str) -> Path:
        return self.work / "keys" / f"{org}-root.key"

    def node_key_file(self, org: str) -> Path:
        """The organization's node key (role NODE): its sealer signs seals with it."""
        return self.work / "keys" / f"{org}-node.key"

    def observer(self, oid: str) -> ObserverIdentity:
        return next(o for o in self.scenario.observers if o.observer_id == oid)

    def report(self, oid: str) -> bytes:
        obs = self.observer(oid)
        draft = draft_report(self.rng, obs, self.scenario.mandate, self.now)
        draft = dataclasses.replace(draft, signed_at_ms=min(draft.signed_at_ms, self.now))
        return self.scenario.signers[oid].sign(draft)

    def au_report(self, *, fresh_chain: bool = False) -> bytes:
        """An AU observer report; ``fresh_chain``: signed at seq 1 by a throwaway signer (a
        quarantined report never extends the chain, so the next accepted one is seq 1 again)."""
        draft = draft_report(self.rng, self.au_observer, self.scenario.mandate, self.now)
        signer = ReportSigner(self.au_observer.key) if fresh_chain else self.au_signer
        return signer.sign(dataclasses.replace(draft, signed_at_ms=self.now - 60_000))


async def _send(producer: AIOKafkaProducer, topics: Topics, raw: bytes) -> tuple[str, int, int]:
    env = Envelope.decode(raw)
    head: Report | SealedReport = (
        SealedReport.decode(env.payload)
        if env.payload_type == PAYLOAD_SEALED_REPORT
        else Report.decode(env.payload)
    )
    md = await producer.send_and_wait(
        topics.reports(head.org),
        raw,
        key=head.observer_id.encode(),
        headers=report_headers(head.report_id, head.org, head.observer_id),
    )
    return md.topic, md.partition, md.offset


async def _wait_until_processed(
    work: Path, bootstrap: str, topics: Topics, procs: dict[str, subprocess.Popen[bytes]]
) -> bool:
    total = sum((await end_offsets(bootstrap, topics.reports_pattern)).values())
    deadline = time.monotonic() + WAIT_FOR_NODES_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs.values()):
            return False
        if all(_node_progress(work / f"{o}.db") >= total for o in procs):
            return True
        await asyncio.sleep(0.3)
    return False


def _start_node(
    m: Mission,
    org: str,
    common: list[str],
    *,
    mandate: str = "v1.bin",
) -> subprocess.Popen[bytes]:
    """Start ``org``'s node as its own process (log appended to logs/<org>.log). From a mandate
    file other than version 1 it is given ``--root-mandate`` version 1: final verdicts are
    judged from the root every reader shares, whatever file a node was started from."""
    work = m.work
    keys = work / "keys" / f"{org}.x25519"
    extra = ["--decryption-key", str(keys)] if keys.exists() else []
    if mandate != "v1.bin":
        extra += ["--root-mandate", str(work / "v1.bin")]
    logf = (work / "logs" / f"{org}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "nodes.cli", "node", "--org", org, "--mandate",
         str(work / mandate), "--db", str(work / f"{org}.db"),
         "--node-key", str(m.node_key_file(org)), "--ops-listen",
         f"127.0.0.1:{m.ops_ports[org]}", *seal_args(), *extra, *common],
        stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, "OBUS_LOG_JSON": "1"},
    )  # fmt: skip


def _alarms(work: Path, org: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in (work / "logs" / f"{org}.log").read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and doc.get("event") == "mandate_alarm":
                out[str(doc.get("reason"))] += 1
    return out


async def _run(console: Console, work: Path) -> bool:
    external = os.environ.get("OBUS_BOOTSTRAP")
    broker: LocalBroker | None = None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    bus: BusEnds | None = None  # the sealed topics' end offsets, for the waits
    try:
        if external:
            bootstrap, topics = external, Topics(f"obus.trust{int(time.time())}.")
            console.print(f"Using your broker at {bootstrap}, topic prefix {topics.prefix}")
        else:
            console.rule("1. Local Apache Kafka (KRaft) on 127.0.0.1")
            broker = LocalBroker(work / "kafka")
            broker.start()
            bootstrap, topics = broker.bootstrap, Topics()
        common = ["--bootstrap", bootstrap, "--topic-prefix", topics.prefix]
        victim_at: dict[int, tuple[str, int, int]] = {}  # un-obs-2's reports by seq
        m = Mission(work, int(time.time() * 1000))
        await ensure_topics(bootstrap, standard_topics(topics, [*ORGS, "au"]))
        bus = BusEnds(bootstrap, topics)
        await bus.start()

        console.rule("2. Mandate v1, accreditations, encryption keys, six nodes")
        ok = await _cli(console, "mandate", "publish", str(work / "v1.bin"), *common) == 0
        producer = reliable_producer(bootstrap)
        await producer.start()
        try:
            for raw in m.scenario.accreditations:
                await producer.send_and_wait(topics.registry, raw)
            console.print(f"{len(m.scenario.accreditations)} observers accredited")
            for raw in m.scenario.node_accreditations:
                await producer.send_and_wait(topics.registry, raw)
            console.print(
                f"{len(m.scenario.node_accreditations)} node keys accredited (role NODE): each"
                f" node's sealer proposes and cosigns a seal every {SEAL_INTERVAL_S:g}s with it"
            )
            for org in KEY_HOLDERS:
                ok &= await _cli(console, "org", "enckey", "--org", org, "--root-key",
                                 str(m.root_file(org)), "--mandate", str(work / "v1.bin"),
                                 "--private-out", str(work / "keys" / f"{org}.x25519"),
                                 "--plaintext-key", *common) == 0  # fmt: skip
            for org in ORGS:
                procs[org] = _start_node(m, org, common)
            console.print(f"nodes: {', '.join(f'{o} (pid {p.pid})' for o, p in procs.items())}")
            for org in ORGS:
                console.print(
                    f"  {org:5} ops (healthz, readyz, metrics): http://127.0.0.1:{m.ops_ports[org]}/"
                )
            for oid in ("un-obs-1", "osce-obs-2", "eu-obs-1", "nato-obs-1", "csto-obs-1"):
                await _send(producer, topics, m.report(oid))

            console.rule("3. Rotation: the African Union joins, signed by 4 of 6")
            au_before = await _send(producer, topics, m.au_report(fresh_chain=True))
            console.print(f"AU observer report before version 2 at {au_before}")
            v2_draft = work / "v2.draft"
            ok &= await _cli(console, "mandate", "draft", "--previous", str(work / "v1.bin"),
                       "--add-org", "au", "African Union", m.au_root.public_key.hex(),
                       "--text", "Joint monitoring mission, with the African Union",
                       "--out", str(v2_draft)) == 0  # fmt: skip
            sigs = []
            for org in ROTATION_SIGNERS:
                sig = work / f"v2.{org}.sig"
                ok &= await _cli(console, "mandate", "sign", "--key", str(m.root_file(org)),
                           str(v2_draft), "--previous", str(work / "v1.bin"), "--out",
                           str(sig)) == 0  # fmt: skip
                sigs.append(str(sig))
            ok &= await _cli(console, "mandate", "combine", str(v2_draft), *sigs, "--previous",
                       str(work / "v1.bin"), "--out", str(work / "v2.bin")) == 0  # fmt: skip
            ok &= await _cli(console, "mandate", "publish", str(work / "v2.bin"), "--previous",
                       str(work / "v1.bin"), *common) == 0  # fmt: skip
            # Version 2 takes effect from the epoch after the one that seals it: until then
            # the AU root signs nothing that counts, so the AU waits for that seal.
            if await wait_until_final(
                console, work, procs, bus,
                only=lambda t: t == topics.mandate, what="mandate version 2",
            ) is None:  # fmt: skip
                return False
            console.print(
                "version 2 is in force from the next epoch: the AU accredits its observer under"
                f" it. SCO restarts its node from {work.name}/v2.bin (--root-mandate v1.bin)"
            )
            _stop_nodes({"sco": procs["sco"]})
            procs["sco"] = _start_node(m, "sco", common, mandate="v2.bin")
            write_key(work / "keys" / "au-root.key", m.au_root)
            ok &= await _cli(console, "org", "accredit", "--org", "au", "--root-key",
                       str(work / "keys" / "au-root.key"), "--mandate", str(work / "v2.bin"),
                       "--subject", "au-obs-1", "--role", "observer", "--public-key",
                       m.au_observer.key.public_key.hex(), *common) == 0  # fmt: skip
            await asyncio.sleep(0.05)  # a later broker timestamp than version 2
            au_after = await _send(producer, topics, m.au_report())
            console.print(f"AU observer report after version 2 at {au_after}")
            forged = dataclasses.replace(m.scenario.mandate, version=3, threshold=1)
            env = sign_mandate(forged, [m.scenario.org_roots[o] for o in ("nato", "sco", "eu")])
            md3 = await producer.send_and_wait(topics.mandate, env.encode(), key=b"jmm-2026:3")
            md1 = await producer.send_and_wait(
                topics.mandate, m.scenario.mandate_envelope, key=b"jmm-2026:1"
            )
            console.print(
                f"[yellow]injected[/yellow] a version 3 signed by nato, sco, eu (3 of 6) at offset"
                f" {md3.offset}, and version 1 again at offset {md1.offset}"
            )

            console.rule("4. Revocation after seq 2 of un-obs-2")
            for seq in (1, 2, 3):
                victim_at[seq] = await _send(producer, topics, m.report("un-obs-2"))
            if not await _wait_until_processed(work, bootstrap, topics, procs):
                console.print("[red]nodes did not process the first reports[/red]")
                return False
            if await wait_until_final(
                console, work, procs, bus,
                only=lambda t: topics.org_of_report_topic(t) is not None,
                what="un-obs-2's reports 1-3",
            ) is None:  # fmt: skip
                return False
            victim = m.observer("un-obs-2").key
            ok &= await _cli(console, "org", "revoke", "--org", "un", "--root-key",
                       str(m.root_file("un")), "--mandate", str(work / "v1.bin"), "--key-id",
                       victim.key_id.hex(), "--last-valid-seq", "2", "--reason",
                       "device seized at a checkpoint", *common) == 0  # fmt: skip
            # In force from the epoch after the one that seals it: reports 4-5 come later.
            if await wait_until_final(
                console, work, procs, bus,
                only=lambda t: t == topics.registry, what="the revocation",
            ) is None:  # fmt: skip
                return False
            console.print("in force from the next epoch: un-obs-2 sends reports 4 and 5")
            for seq in (4, 5):
                victim_at[seq] = await _send(producer, topics, m.report("un-obs-2"))

            console.rule("5. A restricted report for UN and OSCE only")
            ring = KeyRing(m.scenario.mandate)
            for raw in await _registry(bootstrap, topics):
                with contextlib.suppress(Exception):
                    ring.apply(Envelope.decode(raw))
            recipients = [ring.encryption_key(o) for o in READERS]
            obs = m.observer("osce-obs-1")
            draft = draft_report(m.rng, obs, m.scenario.mandate, m.now)
            draft = dataclasses.replace(
                draft, signed_at_ms=m.now - 1000, narrative="Names of two detainees: restricted."
            )
            sealed_raw = m.scenario.signers[obs.observer_id].sign_sealed(
                draft, [r for r in recipients if r is not None]
            )
            where = restricted_at = await _send(producer, topics, sealed_raw)
            console.print(f"osce-obs-1 sealed a report to {', '.join(READERS)} at {where}")
            for oid in ("sco-obs-1", "un-obs-1"):
                await _send(producer, topics, m.report(oid))
        finally:
            await producer.stop()

        if not await _wait_until_processed(work, bootstrap, topics, procs):
            console.print(f"[red]nodes did not finish; see {work / 'logs'}[/red]")
            return False
        settled = await wait_until_final(
            console, work, procs, bus, settle=True,
            what="the whole bus",
        )  # fmt: skip
        _stop_nodes(procs)
        if settled is None:
            return False

        console.rule("6. What every node holds")
        ok &= _show(console, work, victim_id="un-obs-2")

        console.rule("7. Seals: rotation and revocation in the one order; final verdicts")
        final = show_final(console, work, ORGS, topics)
        ok &= final.ok and _show_trust_final(
            console, final, topics, victim_at=victim_at, au=(au_before, au_after),
            injected=(md3.offset, md1.offset), restricted=restricted_at,
        )  # fmt: skip

        console.rule("8. The auditor replays the log")
        result = await audit(bootstrap, m.scenario.mandate, topics=topics, console=console)
        render(result, console)
        reasons = Counter(v.reason for v in result.violations)
        # Report 3 of un-obs-2 was accepted at its epoch; the revocation voids it from the
        # epoch after its own: the final verdict (which counts) is revoked_after_acceptance.
        expected = Counter(
            {
                "key_revoked": 2,
                "revoked_after_acceptance": 1,
                "unknown_key": 1,
                "threshold_not_met": 1,
                "mandate_rollback": 1,
            }
        )
        audit_ok = reasons == expected and result.mandate_versions == [2]
        audit_ok &= result.sealed_verified == 1
        console.print(
            ("[green]" if audit_ok else "[red]")
            + f"auditor: mandate versions followed {result.mandate_versions}, restricted reports"
            f" verified without reading {result.sealed_verified}, violations {dict(reasons)}"
            f" (expected {dict(expected)})"
        )
        audit_ok &= _same_final(console, "the auditor", result.final_digest(), final)
        return ok and audit_ok
    finally:
        _stop_nodes(procs)
        if bus is not None:
            await bus.stop()
        if broker is not None:
            console.rule("Stopping Kafka")
            broker.stop()


async def _registry(bootstrap: str, topics: Topics) -> list[bytes]:
    from bus.kafka.replay import replay  # noqa: PLC0415

    return [rec.value async for rec in replay(bootstrap, [topics.registry]) if rec.value]


def _show(console: Console, work: Path, *, victim_id: str) -> bool:
    ok = True
    table = Table(title="Per node after rotation, revocation and a restricted report")
    for col in ("node", "accepted", "fingerprint", "quarantined", "revoked after acc.",
                f"invalid seqs {victim_id}", "mandate alarms", "restricted"):  # fmt: skip
        table.add_column(col)
    prints, invalid_sets = set(), set()
    for org in ORGS:
        with sqlite3.connect(f"file:{work / f'{org}.db'}?mode=ro", uri=True) as con:
            rows = [(r, bytes(d)) for r, d in con.execute("SELECT report_id, digest FROM reports")]
            q = list(con.execute("SELECT reason, raw FROM quarantine"))
            rev = list(con.execute("SELECT seq FROM revoked_after_acceptance"))
            sealed = list(con.execute("SELECT readability FROM sealed_reports"))
        invalid = {s for (s,) in rev}
        for reason, raw in q:
            with contextlib.suppress(Exception):
                rep = Report.decode(Envelope.decode(bytes(raw)).payload)
                if rep.observer_id == victim_id and reason == "key_revoked":
                    invalid.add(rep.seq)
        fp = _fingerprint(sorted(rows))
        prints.add(fp)
        invalid_sets.add(frozenset(invalid))
        alarms = _alarms(work, org)
        reasons = Counter(r for r, _ in q)
        state = sealed[0][0] if len(sealed) == 1 else f"{len(sealed)} rows"
        expect_state = "readable" if org in READERS else "not_recipient"
        node_ok = (
            invalid == {3, 4, 5}
            and reasons["unknown_key"] == 1
            and alarms == Counter({"threshold_not_met": 1, "mandate_rollback": 1})
            and state == expect_state
        )
        ok &= node_ok
        table.add_row(
            org, str(len(rows)), fp, ", ".join(f"{k}x{v}" for k, v in sorted(reasons.items())),
            str(len(rev)), ",".join(map(str, sorted(invalid))),
            ", ".join(f"{k}x{v}" for k, v in sorted(alarms.items())), state,
            style=None if node_ok else "red",
        )  # fmt: skip
    console.print(table)
    same = len(prints) == 1 and len(invalid_sets) == 1
    console.print(
        "[green]all six nodes hold the identical set of reports and agree that seq 3-5 of"
        f" {victim_id} do not count[/green]"
        if same
        else "[red]nodes disagree[/red]"
    )
    return ok and same


Position = tuple[str, int, int]


def _show_trust_final(
    console: Console,
    final: FinalSummary,
    topics: Topics,
    *,
    victim_at: dict[int, Position],
    au: tuple[Position, Position],
    injected: tuple[int, int],
    restricted: Position,
) -> bool:
    """The rotation and the revocation as the final verdicts have them: which epoch sealed
    version 2 and from which epoch seals are judged under it, the injected mandate records,
    the revoked key's reports and the AU observer's, each with its final verdict."""
    node = final.any
    rows = {r.pos: r for r in node.rows}
    revoked_at = {c.pos: c.at_epoch for c in node.changes}

    def verdict(pos: Position) -> str:
        r = rows.get(pos)
        if r is None:
            return "not sealed"
        text = " ".join(filter(None, (r.status, r.reason)))
        if pos in revoked_at:
            text += f", revoked after acceptance at epoch {revoked_at[pos]}"
        return text

    mt = Table(title="Mandate records (final verdicts)")
    for col in ("offset", "sealed in epoch", "final verdict"):
        mt.add_column(col)
    mandate_rows = [r for r in node.rows if r.topic == topics.mandate]
    for r in mandate_rows:
        mt.add_row(str(r.offset), str(r.epoch), verdict(r.pos))
    console.print(mt)
    applied = [r for r in mandate_rows if r.status == "applied"]
    rotation = applied[-1].epoch if len(applied) >= 2 else None
    versions = {int(s["epoch"]): node.judged_under(int(s["epoch"])) for s in node.seals}
    ok = rotation is not None and all(v == (2 if e > rotation else 1) for e, v in versions.items())
    forged, again = ((topics.mandate, 0, o) for o in injected)
    ok &= rows[forged].reason == "threshold_not_met" and rows[again].reason == "mandate_rollback"
    newest = max(versions, default=0)
    console.print(
        ("[green]" if ok else "[red]")
        + f"rotation: version 2 sealed in epoch {rotation}, in force from epoch"
        f" {None if rotation is None else rotation + 1}: seals {versions and min(versions)}-"
        f"{None if rotation is None else rotation} judged under version 1, the later ones up"
        f" to {newest} under version 2; the forged version 3 and version 1 again are"
        f" {rows[forged].reason} and {rows[again].reason}"
    )
    registry = [r for r in node.rows if r.topic == topics.registry and r.status == "applied"]
    vt = Table(title="un-obs-2's reports (key revoked after seq 2; final verdicts)")
    for col in ("seq", "position", "sealed in epoch", "final verdict"):
        vt.add_column(col)
    for seq, pos in sorted(victim_at.items()):
        vt.add_row(str(seq), f"{pos[0]}[{pos[1]}]@{pos[2]}", str(rows[pos].epoch), verdict(pos))
    console.print(vt)
    void = {
        seq for seq, pos in victim_at.items() if rows[pos].status != "accepted" or pos in revoked_at
    }
    revocation = registry[-1].epoch if registry else None
    victim_ok = void == {3, 4, 5}
    console.print(
        ("[green]" if victim_ok else "[red]")
        + f"revocation sealed in epoch {revocation}, in force from epoch"
        f" {None if revocation is None else revocation + 1}: final verdicts void seq"
        f" {','.join(map(str, sorted(void)))} of un-obs-2 (expected 3,4,5)"
    )
    before, after = au
    au_ok = rows[before].reason == "unknown_key" and rows[after].status == "accepted"
    au_ok &= rows[restricted].status == "accepted"
    console.print(
        ("[green]" if au_ok else "[red]")
        + f"AU observer: the report before version 2 is {verdict(before)}, the one after"
        f" it {verdict(after)}; the restricted report is {verdict(restricted)}"
    )
    return ok and victim_ok and au_ok


def main(*, keep: bool = False) -> int:
    """Run the trust demo; returns the process exit code."""
    console = Console(width=max(Console().width, 132))  # the per-node table is wide
    work = REPO / "var" / "demo-trust"
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    (work / "keys").mkdir(parents=True)
    started = time.monotonic()
    ok = asyncio.run(_run(console, work))
    console.rule()
    console.print(
        ("[bold green]DEMO-TRUST OK" if ok else "[bold red]DEMO-TRUST FAILED")
        + f"[/] in {time.monotonic() - started:.0f}s; logs and stores in {work.relative_to(REPO)}"
    )
    if not keep and ok:
        shutil.rmtree(work / "kafka", ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(keep="--keep" in sys.argv))
