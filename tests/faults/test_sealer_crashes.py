"""A sealing node killed -9 again and again while the bus grows: the same final store as the
nodes that never crashed, and as an auditor that replays the log afterwards.

Four organizations (k = 4 of the mandate's six) run real ``obus node`` processes with their
sealers on, each with its own node key, SQLite store and final store. The reports arrive in
chunks; after each of the first six, UN's node is killed -9 at a random moment of the epoch
that seals it (before its proposal, between votes, while it is stored: wherever the moment
lands) and restarted at once, and the next chunk waits until that epoch is final everywhere. With k = 4 no epoch can become final while UN is down, so every epoch after the
first kill needs the restarted sealer to pick up its own votes and rounds from its store.

At the end every sealer has a settled final verdict for every report, the four final stores
are the same bytes (:meth:`bus.store.final.FinalStore.fingerprint`), no sealer raised a fork
alarm, and the auditor, replaying the sealed log from Kafka, reaches the same state digest at
the same last epoch. The seed is printed and can be replayed with ``OBUS_CRASH_SEED``.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from bus.kafka.client import reliable_producer
from bus.store.final import FinalStore
from bus.topics import Topics
from nodes.auditor.run import audit
from nodes.runtime.keyfile import plaintext_key
from tests.faults.harness import (
    NodeProcesses,
    Published,
    Stream,
    make_stream,
    prepare_topics,
    snapshot,
)
from tests.kafka_cluster import LocalKafkaCluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1800)]
SEALERS = ("un", "osce", "eu", "nato")  # the mandate's k = 4 of six
VICTIM = "un"
RECORDS = int(os.environ.get("OBUS_SEAL_CRASH_RECORDS", "4800"))
CHUNKS = 12
KILLS = 6
SEED = int(os.environ.get("OBUS_CRASH_SEED", str(int(time.time()))))


def _final_counts(db: Path) -> tuple[int, int]:
    """(settled verdicts, accepted verdicts) in a final store; (0, 0) before it exists."""
    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            settled, accepted = con.execute(
                "SELECT count(*), coalesce(sum(status = 'accepted'), 0) FROM verdicts"
                " WHERE status <> 'deferred' AND topic LIKE '%.reports.%'"
            ).fetchone()
            return int(settled), int(accepted)
    except sqlite3.Error:  # created but not initialised yet
        return 0, 0


def _final(db: Path) -> tuple[bytes, tuple[int, bytes] | None, list[dict[str, object]]]:
    """(fingerprint, last epoch and its state digest, fork alarms) of a final store."""
    store = FinalStore(db, read_only=True)
    try:
        return store.fingerprint(), store.last_epoch(), store.alarms()
    finally:
        store.close()


async def _publish_node_keys(bootstrap: str, topics: Topics, stream: Stream) -> None:
    """The organizations' node accreditations (role NODE): the keys seals are voted with."""
    producer = reliable_producer(bootstrap)
    async with asyncio.timeout(120):
        await producer.start()
        try:
            for raw in stream.mission.scenario.node_accreditations:
                await producer.send_and_wait(topics.registry, raw)
        finally:
            await producer.stop()


async def _publish(bootstrap: str, topics: Topics, records: list[Published]) -> None:
    producer = reliable_producer(bootstrap, linger_ms=20)
    async with asyncio.timeout(300):
        await producer.start()
        try:
            futures = [
                await producer.send(topics.reports(p.org), p.raw, key=p.observer_id.encode())
                for p in records
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()


async def test_kill_9_a_sealing_node_mid_sealing_ends_in_the_same_final_store(
    healthy_cluster: LocalKafkaCluster, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    stream = make_stream(RECORDS, tmp_path / "stream")
    topics = Topics(f"s{uuid.uuid4().hex[:8]}.")
    await prepare_topics(healthy_cluster.bootstrap, topics, stream)
    await _publish_node_keys(healthy_cluster.bootstrap, topics, stream)
    keys = tmp_path / "keys"
    keys.mkdir()
    org_args: dict[str, tuple[str, ...]] = {}
    for org in SEALERS:
        key_file = keys / f"{org}.node.key"
        key_file.write_bytes(plaintext_key(stream.mission.scenario.node_keys[org]))
        key_file.chmod(0o600)
        org_args[org] = ("--seal", "--node-key", str(key_file), "--seal-interval", "1")
    nodes = NodeProcesses(
        healthy_cluster.bootstrap, topics, stream.mandate_file, tmp_path, SEALERS,
        org_args=org_args,
    )  # fmt: skip
    final_dbs = {org: tmp_path / f"{org}.final.db" for org in SEALERS}
    total = len(stream.records)
    killed: list[tuple[int, int]] = []  # (records published, victim's settled verdicts)
    size = -(-total // CHUNKS)
    chunks = [stream.records[i : i + size] for i in range(0, total, size)]
    published = 0

    async def settled(count: int) -> None:
        """Until every sealer holds ``count`` settled, accepted final verdicts."""
        async with asyncio.timeout(600):
            while not all(_final_counts(db) == (count, count) for db in final_dbs.values()):
                dead = nodes.exited()
                assert not dead, f"node(s) exited early {dead}:\n{nodes.tails(dead)}"
                await asyncio.sleep(0.2)

    try:
        nodes.start()
        for k, chunk in enumerate(chunks):
            await _publish(healthy_cluster.bootstrap, topics, chunk)
            published += len(chunk)
            if k < KILLS:
                # Strike at a random moment of the epoch that seals this chunk: before its
                # proposal, between votes, while it is stored, or just after.
                while not nodes.started(VICTIM):
                    assert nodes.procs[VICTIM].poll() is None, nodes.tails([VICTIM])
                    await asyncio.sleep(0.05)
                await asyncio.sleep(rng.uniform(0.0, 2.5))
                killed.append((published, _final_counts(final_dbs[VICTIM])[0]))
                nodes.kill(VICTIM)
                nodes.start(VICTIM)
            # k = 4 of the 4 running: nothing more is final until the victim is back and votes
            await settled(published)
        # The sealers read the log on their own; each node's ingest (its provisional store,
        # compared below) may still be storing the last chunk.
        await nodes.wait_for(total, 600)
    finally:
        codes = nodes.stop()
    assert codes == dict.fromkeys(SEALERS, 0), nodes.tails(codes)
    print(
        f"\nFIGURES sealer_kill9: seed {SEED}, {total} records, killed at"
        f" (published, settled at the victim)={killed}"
    )
    assert len(killed) == KILLS and nodes.starts[VICTIM] == KILLS + 1
    # every kill after the first struck a sealer holding final verdicts of earlier epochs
    assert all(done > 0 for _, done in killed[1:]), killed

    finals = {org: _final(db) for org, db in final_dbs.items()}
    assert len({fp for fp, _, _ in finals.values()}) == 1, {
        org: fp.hex()[:16] for org, (fp, _, _) in finals.items()
    }
    assert all(alarms == [] for _, _, alarms in finals.values())
    last = finals[VICTIM][1]
    assert last is not None
    # The node stores agree too (the provisional side survived the kills as before).
    crashed, reference = snapshot(nodes.db(VICTIM)), snapshot(nodes.db("osce"))
    assert crashed.reports == reference.reports == stream.expected
    assert crashed.duplicate_rows == 0

    # An auditor replaying the sealed log from Kafka reaches the same state at the same epoch.
    result = await audit(
        healthy_cluster.bootstrap, stream.mission.scenario.mandate, topics=topics,
        work_dir=tmp_path,
    )  # fmt: skip
    assert result.final is not None
    assert result.final.mismatch is None and result.final.stuck is None
    digests = {row.epoch: row.state_digest for row in result.final.epochs}
    assert digests.get(last[0]) == last[1]
