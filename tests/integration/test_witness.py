"""The witnessed log on a real Kafka broker: six witnesses agree and cosign, a forged checkpoint
raises the split-view alarm (and the auditor names its signer), a restarted witness resumes, an
exported log audits clean offline while tampered copies are named, and inclusion proofs verify
against the live log and the export.

Every test uses its own topic prefix; the witnesses run in this process as asyncio tasks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bus.checkpoint import Checkpoint, key_name, origin_for, signed_checkpoint
from bus.errors import Reason
from bus.export import ExportReader, ExportWriter, LogRecord
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.topics import Topics, standard_topics
from bus.witness import WitnessPolicy
from nodes.auditor.log_export import export_log
from nodes.auditor.prove import prove_live, verify_proof_from_file, verify_proof_live
from nodes.auditor.run import audit, audit_export
from nodes.demo.scenario import (
    ORGANIZATIONS,
    Scenario,
    build_scenario,
    node_subject,
    signed_reports,
)
from nodes.org_node.witness import Witness, WitnessConfig
from nodes.org_node.witness_store import split_view_alarms, witness_fingerprint, witness_status
from tests.logcapture import capture_all_logs

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]
ORGS = [o for o, _ in ORGANIZATIONS]
WAIT_S = 120


@pytest.fixture
def topics() -> Topics:
    return Topics(f"t{uuid.uuid4().hex[:10]}.")


def _now() -> int:
    return time.time_ns() // 1_000_000


async def _setup(bootstrap: str, topics: Topics, sc: Scenario) -> AIOKafkaProducer:
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    for raw in [*sc.accreditations, *sc.node_accreditations]:
        await producer.send_and_wait(topics.registry, raw)
    return producer


async def _publish(producer: AIOKafkaProducer, topics: Topics, sc: Scenario, n: int) -> int:
    stream = signed_reports(sc, n, _now(), random.Random(n))
    futures = [
        await producer.send(topics.reports(obs.org), raw, key=obs.observer_id.encode())
        for obs, _, raw in stream
    ]
    await asyncio.gather(*futures)
    return len(stream)


def _config(bootstrap: str, topics: Topics, sc: Scenario, org: str, tmp: Path) -> WitnessConfig:
    return WitnessConfig(
        org=org,
        bootstrap=bootstrap,
        db_path=tmp / f"{org}.witness.db",
        mandate=sc.mandate,
        node_key=sc.node_keys[org],
        topics=topics,
        policy=WitnessPolicy(checkpoint_every=5, checkpoint_interval_ms=300),
        poll_timeout_ms=100,
    )


class Fleet:
    """Witnesses running as tasks; stop() stops and awaits them all."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[Witness, asyncio.Task[None]]] = {}

    def start(self, cfg: WitnessConfig) -> Witness:
        w = Witness(cfg)
        self.tasks[cfg.org] = (w, asyncio.create_task(w.run()))
        return w

    async def stop(self, org: str | None = None) -> None:
        for o in [org] if org else list(self.tasks):
            w, task = self.tasks.pop(o)
            w.stop()
            await task

    def check(self) -> None:
        for w, task in self.tasks.values():
            if task.done():
                task.result()  # surfaces the witness's exception
                raise AssertionError(f"witness {w.config.org} stopped")


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        await f.stop()


async def _until_agreed(fleet: Fleet, dbs: list[Path], total: int, orgs: int = 6) -> None:
    """Until every witness holds, for every partition, a full-size checkpoint signed by all."""
    async with asyncio.timeout(WAIT_S):
        while True:
            fleet.check()
            done = 0
            for db in dbs:
                parts = witness_status(db, orgs)["partitions"]
                size = sum(w["size"] for w in parts)
                done += size == total and all(w["quorum_size"] == w["size"] for w in parts)
            if done == len(dbs):
                return
            await asyncio.sleep(0.3)


async def test_six_witnesses_agree_cosign_and_resume(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    sc = build_scenario(_now(), observers_per_org=2)
    producer = await _setup(kafka_bootstrap, topics, sc)
    try:
        total = await _publish(producer, topics, sc, 4)
        for org in ORGS:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, tmp_path))
        dbs = [tmp_path / f"{org}.witness.db" for org in ORGS]
        await _until_agreed(fleet, dbs, total)
        assert len({witness_fingerprint(db) for db in dbs}) == 1
        assert all(split_view_alarms(db) == [] for db in dbs)
        counts = {o: w.counts for o, (w, _) in fleet.tasks.items()}
        # Each organization attests each text once: as publisher or as cosigner (which one
        # depends on who reached that size first).
        assert all(
            c["checkpoints_published"] + c["cosignatures_published"] > 0 for c in counts.values()
        )
        assert all(c["checkpoints_rejected"] == 0 for c in counts.values())

        # A witness stopped while the log grows resumes from its own SQLite file.
        await fleet.stop("osce")
        total += await _publish(producer, topics, sc, 3)
        fleet.start(_config(kafka_bootstrap, topics, sc, "osce", tmp_path))
        await _until_agreed(fleet, dbs, total)
        assert len({witness_fingerprint(db) for db in dbs}) == 1
    finally:
        await producer.stop()

    # The live auditor agrees: every record covered by a quorum checkpoint.
    result = await audit(kafka_bootstrap, sc.mandate, topics=topics, require_witnessed=True)
    assert result.ok, result.violations
    assert sum(w["records"] for w in result.witness) == total


async def test_forged_checkpoint_raises_the_split_view_alarm(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    sc = build_scenario(_now(), observers_per_org=1)
    producer = await _setup(kafka_bootstrap, topics, sc)
    orgs = ["un", "osce", "eu"]
    try:
        total = await _publish(producer, topics, sc, 3)
        for org in orgs:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, tmp_path))
        dbs = [tmp_path / f"{org}.witness.db" for org in orgs]
        await _until_agreed(fleet, dbs, total, orgs=3)
        # NATO's genuinely accredited node key signs another root for a size everyone has:
        # what a node shown a different copy of the partition would publish.
        status = witness_status(dbs[0], 3)["partitions"][0]
        topic, partition, size = status["topic"], status["partition"], status["size"]
        forged = Checkpoint(origin_for(sc.mandate.mandate_id, topic, partition), size, bytes(32))
        note = signed_checkpoint(
            forged, sc.node_keys["nato"], key_name("nato", node_subject("nato"))
        )
        with capture_all_logs() as logs:
            md = await producer.send_and_wait(topics.checkpoints, note, key=b"forged")
            async with asyncio.timeout(WAIT_S):
                while not all(split_view_alarms(db) for db in dbs):
                    fleet.check()
                    await asyncio.sleep(0.2)
    finally:
        await producer.stop()
    for db in dbs:
        (alarm,) = split_view_alarms(db)
        assert (alarm["topic"], alarm["partition"], alarm["size"]) == (topic, partition, size)
        assert alarm["their_root"] == "00" * 32
        assert alarm["signed_by"] == ["nato"]
        assert alarm["offset"] == md.offset
    events = [e for e in logs if e["event"] == "split_view_detected"]
    assert {e["org"] for e in events} == set(orgs)
    assert all(w.counts["split_view_alarms"] == 1 for w, _ in fleet.tasks.values())
    # Nobody cosigned the forged checkpoint. One organization's word is no fork of the log:
    # the auditor names NATO's checkpoint as a finding (three witnesses of six are no quorum,
    # so it is counted against nobody) and the log still verifies.
    result = await audit(kafka_bootstrap, sc.mandate, topics=topics)
    assert result.ok, result.violations
    assert [(f.kind, f.signers, f.against) for f in result.findings] == [
        ("checkpoint_unconfirmed", ("nato",), ())
    ]


async def test_export_audits_clean_offline_and_tampering_is_named(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    sc = build_scenario(_now(), observers_per_org=2)
    producer = await _setup(kafka_bootstrap, topics, sc)
    try:
        total = await _publish(producer, topics, sc, 5)
        for org in ORGS:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, tmp_path))
        await _until_agreed(fleet, [tmp_path / f"{o}.witness.db" for o in ORGS], total)
    finally:
        await producer.stop()
    await fleet.stop()

    path = tmp_path / "log.jsonl"
    counts = await export_log(kafka_bootstrap, topics, sc.mandate, sc.mandate_envelope, path)
    assert counts["reports"] == total
    assert counts["registry"] == len(sc.accreditations) + len(ORGS)
    clean = audit_export(path, sc.mandate, require_witnessed=True)
    assert clean.ok, clean.violations
    assert clean.quorum == 4

    # A proof from the live log verifies against the live log and against the export.
    with path.open("rb") as f:
        first = next(
            r for r in ExportReader(f) if isinstance(r, LogRecord) and r.section == "reports"
        )
    proof = await prove_live(
        kafka_bootstrap, topics, sc.mandate, where=(first.topic, first.partition, first.offset),
        report_id=None,
    )  # fmt: skip
    assert len(await verify_proof_live(proof, kafka_bootstrap, topics, sc.mandate)) >= 4
    assert verify_proof_from_file(proof, path, sc.mandate) == frozenset(proof.orgs)

    # Tampered copies (the trailer rewritten to match): each is named.
    with path.open("rb") as f:
        reader = ExportReader(f)
        header, records = reader.header, [r for r in reader if isinstance(r, LogRecord)]
    victim = next(i for i, r in enumerate(records) if r.section == "reports" and r.offset == 1)
    dropped = records[:victim] + records[victim + 1 :]
    swapped = list(records)
    swapped[victim], swapped[victim + 1] = swapped[victim + 1], swapped[victim]
    altered = list(records)
    v = altered[victim].value or b""
    altered[victim] = dataclasses.replace(altered[victim], value=v[:-1] + bytes([v[-1] ^ 1]))
    cases = {
        "dropped": (dropped, Reason.RECORD_MISSING),
        "reordered": (swapped, Reason.RECORD_OUT_OF_ORDER),
        "altered": (altered, Reason.BAD_SIGNATURE),
    }
    where = (records[victim].topic, records[victim].partition, 1)
    for label, (recs, reason) in cases.items():
        tampered = tmp_path / f"{label}.jsonl"
        with tampered.open("wb") as f:
            w = ExportWriter(f, header)
            for r in recs:
                w.write(r)
            w.finish()
        result = audit_export(tampered, sc.mandate, require_witnessed=True)
        named = {(x.reason, x.topic, x.partition, x.offset) for x in result.violations}
        assert (reason.value, *where) in named, (label, named)
        # ... and the witnessed checkpoints no longer match the records: another root at a
        # signed size, or (a record fewer) a signed size the partition no longer reaches.
        assert {x.reason for x in result.violations} & {
            Reason.CHECKPOINT_ROOT_MISMATCH.value,
            Reason.CHECKPOINT_BEYOND_LOG.value,
        }, label


async def test_cli_export_audit_and_prove(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, fleet: Fleet
) -> None:
    """`obus log export`, `obus audit --from` and `obus audit prove` as a person runs them."""
    sc = build_scenario(_now(), observers_per_org=1)
    producer = await _setup(kafka_bootstrap, topics, sc)
    try:
        total = await _publish(producer, topics, sc, 3)
        for org in ORGS:
            fleet.start(_config(kafka_bootstrap, topics, sc, org, tmp_path))
        await _until_agreed(fleet, [tmp_path / f"{o}.witness.db" for o in ORGS], total)
    finally:
        await producer.stop()
    await fleet.stop()
    mandate = tmp_path / "mandate.bin"
    mandate.write_bytes(sc.mandate_envelope)
    export = tmp_path / "log.jsonl"
    env = {**os.environ, "OBUS_BOOTSTRAP": kafka_bootstrap, "OBUS_LOG_JSON": "1"}
    common = ["--topic-prefix", topics.prefix]

    async def obus(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodes.cli", *args, cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
        return proc.returncode or 0, out.decode(errors="replace")

    code, out = await obus("log", "export", str(export), "--mandate", str(mandate), *common)
    assert code == 0, out
    html, js = tmp_path / "audit.html", tmp_path / "audit.json"
    code, out = await obus(
        "audit", "--from", str(export), "--mandate", str(mandate), "--require-witnessed",
        "--html-out", str(html), "--json-out", str(js),
    )  # fmt: skip
    assert code == 0, out
    assert "VERDICT: every record verified" in out
    assert "<svg" in html.read_text() and '"ok": true' in js.read_text()
    topic = topics.reports("un")
    code, out = await obus(
        "audit", "prove", "--mandate", str(mandate), "--topic", topic, "--partition", "0",
        "--offset", "0", *common,
    )  # fmt: skip
    if "no record at" in out:  # the UN observer's reports landed in partition 1
        code, out = await obus(
            "audit", "prove", "--mandate", str(mandate), "--topic", topic, "--partition", "1",
            "--offset", "0", *common,
        )  # fmt: skip
    assert code == 0, out
    assert '"inclusion_proof"' in out and "verified" in out
    # A tampered export (one report record dropped) fails with exit 1 naming the violation.
    with export.open("rb") as f:
        reader = ExportReader(f)
        header, records = reader.header, [r for r in reader if isinstance(r, LogRecord)]
    drop = next(i for i, r in enumerate(records) if r.section == "reports" and r.offset == 1)
    with (tmp_path / "cut.jsonl").open("wb") as cut:
        w = ExportWriter(cut, header)
        for r in records[:drop] + records[drop + 1 :]:
            w.write(r)
        w.finish()
    code, out = await obus(
        "audit", "--from", str(tmp_path / "cut.jsonl"), "--mandate", str(mandate)
    )
    assert code == 1, out
    assert "record_missing" in out
    assert "checkpoint_root_mismatch" in out or "checkpoint_beyond_log" in out
