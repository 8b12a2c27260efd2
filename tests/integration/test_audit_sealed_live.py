"""The auditor's final verdicts from a real broker: a sealed bus (:mod:`tests.sealed_bus`:
real proposals and cosignatures on the seals topic) published to Kafka, audited live and from
an export, gives the verdicts a bus reader reaches over the same log; ``obus audit
--final-digest`` prints the last epoch and its state digest; records the operator deletes from
a sealed partition (delete-records) are named and fail the audit. Each test has its own topic
prefix.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from bus.errors import Reason
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.topics import Topics, standard_topics
from nodes.auditor.log_export import export_log
from nodes.auditor.run import audit, audit_export
from tests.sealed_bus import SealedBus, build, final_seals, reference

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]


async def _publish(bootstrap: str, bus: SealedBus) -> None:
    """Every partition's records at their partitions, in offset order, and the seals topic."""
    orgs = bus.orgs
    await ensure_topics(bootstrap, standard_topics(bus.topics, orgs, partitions=2))
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for (topic, partition), values in sorted(bus.parts.items()):
            for value in values:
                await producer.send_and_wait(topic, value, partition=partition)
        for value in bus.seals:
            await producer.send_and_wait(bus.topics.seals, value, partition=0)
    finally:
        await producer.stop()


async def test_live_and_exported_audits_reach_the_bus_readers_verdicts(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    bus = build(topics=topics, now_ms=time.time_ns() // 1_000_000)
    await _publish(kafka_bootstrap, bus)
    mandate = bus.m.scenario.mandate
    want, reader = reference(bus)

    live = await audit(kafka_bootstrap, mandate, topics=topics, work_dir=tmp_path)
    assert live.final is not None
    got = {pos: (r.epoch, r.status, r.reason) for pos, r in live.final.verdicts.items()}
    assert got == want
    assert live.final.last_epoch == reader.judge.epoch == 4
    assert live.final.state_digest == reader.judge.digest
    assert sum(u.records for u in live.final.not_sealed) == 2
    assert live.final.mismatch is None and live.final.stuck is None

    path = tmp_path / "log.jsonl"
    counts = await export_log(kafka_bootstrap, topics, mandate, bus.m.scenario.mandate_envelope,
                              path)  # fmt: skip
    assert counts["seals"] == len(bus.seals)
    assert counts["decisions"] == counts["statements"] == counts["attachments"] == 1
    exported = audit_export(path, mandate, work_dir=tmp_path)
    assert exported.to_json()["final"] == live.to_json()["final"]
    assert exported.violations == live.violations

    # What a person runs: the pair to compare with a node's.
    (tmp_path / "mandate.bin").write_bytes(bus.m.scenario.mandate_envelope)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.cli", "audit", "--mandate", str(tmp_path / "mandate.bin"),
        "--topic-prefix", topics.prefix, "--final-digest", cwd=REPO,
        env={**os.environ, "OBUS_BOOTSTRAP": kafka_bootstrap, "OBUS_LOG_JSON": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 1, err.decode()  # the junk records the log holds
    pair = json.loads(out.decode().strip().splitlines()[-1])
    assert pair == {"epoch": 4, "state_digest": base64.b64encode(reader.judge.digest).decode()}


async def test_records_deleted_from_a_sealed_partition_are_named(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The operator deletes the first records of UN's report partition (delete-records moves
    its log start): the live audit names the partition and the sealed size, and fails."""
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    bus = build(topics=topics, junk=False, now_ms=time.time_ns() // 1_000_000)
    await _publish(kafka_bootstrap, bus)
    ref = (topics.reports("un"), 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(*ref): RecordsToDelete(2)})
    finally:
        await admin.close()
    result = await audit(kafka_bootstrap, bus.m.scenario.mandate, topics=topics,
                         work_dir=tmp_path)  # fmt: skip
    assert result.final is not None and result.final.mismatch is not None
    m = result.final.mismatch
    first = next(s for s in final_seals(bus) if s.size(ref) > 0)
    assert (m.topic, m.partition, m.size) == (*ref, first.size(ref))
    assert "offset 0" in m.message and "deleted" in m.message
    assert not result.ok
    assert Reason.SEALED_ROOT_MISMATCH.value in {v.reason for v in result.violations}
