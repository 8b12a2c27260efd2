"""Organization nodes that crash or cannot write: nothing lost, nothing doubled, nothing skipped.

* kill -9 one node (a real ``obus node`` process) at 10 random points during ingest and
  restart it each time: at the end its store equals that of a node that never crashed (report
  ids and digests, quarantine positions and reasons, chain heads).
* a full disk and a read-only database: the node stops consuming, says why
  (``store_failed_stopping``, exit code 1) and never commits a Kafka group offset beyond what
  its store holds; once the disk has room again it resumes and ends with the exact store.

How the faults are made without root tricks (no tmpfs or loop mount here):
* full disk: the node process runs with RLIMIT_FSIZE (``ulimit -f``), an OS limit on the size
  of any file it writes: the write that would grow the SQLite WAL past it fails with EFBIG
  (CPython ignores SIGXFSZ), which SQLite reports as a disk I/O or full error. Real writes
  fail in the kernel, exactly where a full file system would fail them.
* read-only database: the store file (and its WAL/SHM files, if any) are made mode 0444. As root, permission bits do not bind, so the node process then runs without the
  capabilities that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER dropped
  from its bounding set before exec, via prctl): the kernel refuses its writes as it would for
  any unprivileged owner.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import random
import resource
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from bus.kafka.admin import topic_partitions
from bus.kafka.client import reliable_producer
from bus.sign import ReportSigner
from bus.topics import Topics
from nodes.demo.scenario import demo_key
from nodes.org_node.config import NodeConfig
from tests.faults.harness import (
    NodeProcesses,
    Stream,
    make_stream,
    prepare_topics,
    snapshot,
    stored_positions,
)
from tests.kafka_cluster import LocalKafkaCluster

pytestmark = [pytest.mark.faults, pytest.mark.timeout(1800)]
CRASH_RECORDS = int(os.environ.get("OBUS_CRASH_RECORDS", "20000"))
KILLS = 10
SEED = int(os.environ.get("OBUS_CRASH_SEED", str(int(time.time()))))


async def _publish(bootstrap: str, topics: Topics, stream: Stream, bad_every: int = 0) -> int:
    """Publish the stream, plus a bad record after every `bad_every` genuine ones; count all."""
    m = stream.mission
    producer = reliable_producer(bootstrap, linger_ms=20)
    sent = 0
    async with asyncio.timeout(600):
        await producer.start()
        try:
            futures = []
            for k, p in enumerate(stream.records):
                futures.append(
                    await producer.send(topics.reports(p.org), p.raw, key=p.observer_id.encode())
                )
                if bad_every and k % bad_every == bad_every // 2:
                    kind = (k // bad_every) % 3
                    if kind == 0:  # not an envelope at all
                        bad = (topics.reports("eu"), b"\x00not a protobuf", b"junk")
                    elif kind == 1:  # signed by a key nobody accredited
                        rogue = ReportSigner(demo_key(f"rogue-{k}")).sign(m.draft("nato", 1))
                        bad = (topics.reports("nato"), rogue, b"nato-obs-1")
                    else:  # an earlier genuine envelope again
                        old = stream.records[k // 2]
                        bad = (topics.reports(old.org), old.raw, old.observer_id.encode())
                    futures.append(await producer.send(bad[0], bad[1], key=bad[2]))
            await asyncio.gather(*futures)
            sent = len(futures)
        finally:
            await producer.stop()
    return sent


async def _committed(bootstrap: str, topics: Topics, org: str) -> dict[tuple[str, int], int]:
    """The node group's committed offsets (what Kafka believes the node has processed)."""
    tps = await topic_partitions(bootstrap, pattern=topics.reports_pattern)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"{topics.prefix}node.{org}", enable_auto_commit=False
    )
    out = {}
    async with asyncio.timeout(120):
        await consumer.start()
        try:
            for tp in tps:
                off = await consumer.committed(tp)
                out[(tp.topic, tp.partition)] = -1 if off is None else off
        finally:
            await consumer.stop()
    return out


async def test_kill_9_node_at_ten_random_points_equals_a_node_that_never_crashed(
    healthy_cluster: LocalKafkaCluster, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    stream = make_stream(CRASH_RECORDS, tmp_path / "stream")
    topics = Topics(f"c{uuid.uuid4().hex[:8]}.")
    await prepare_topics(healthy_cluster.bootstrap, topics, stream)
    total = await _publish(healthy_cluster.bootstrap, topics, stream, bad_every=1000)
    # victim "un" crashes; reference "osce" never does (another group, same records)
    nodes = NodeProcesses(
        healthy_cluster.bootstrap, topics, stream.mandate_file, tmp_path, ("un", "osce")
    )
    # The last point leaves two batches' worth of records (the node's max_batch) and the
    # random extra below, so even a node that stores a whole batch at once is killed before
    # the end.
    batch = NodeConfig.__dataclass_fields__["max_batch"].default
    assert isinstance(batch, int)
    last = total - 2 * batch - total // 50
    assert last > total // 20 + KILLS, "the stream is too short for the node's batches"
    points = sorted(rng.sample(range(total // 20, last), KILLS))
    killed_at: list[int] = []
    try:
        nodes.start()
        async with asyncio.timeout(1200):
            for point in points:
                while nodes.progress("un") < point:
                    assert nodes.procs["un"].poll() is None, nodes.tails(["un"])
                    await asyncio.sleep(0.02)
                # land anywhere: mid-batch, mid-transaction, between commits — a random number
                # of records further on, or at most 0.3 s later. (A random *time* alone let an
                # idle machine store the rest of the stream first: a kill after the last record.)
                further = point + rng.randint(0, total // 50)
                deadline = asyncio.get_running_loop().time() + rng.uniform(0, 0.3)
                while asyncio.get_running_loop().time() < deadline:
                    if nodes.progress("un") >= further:
                        break
                    await asyncio.sleep(0.005)
                killed_at.append(nodes.progress("un"))
                nodes.kill("un")
                nodes.start("un")
            await nodes.wait_for(total, 1200)
    finally:
        codes = nodes.stop()
    assert codes == {"un": 0, "osce": 0}, nodes.tails(codes)
    crashed, reference = snapshot(nodes.db("un")), snapshot(nodes.db("osce"))
    print(f"\nFIGURES node_kill9: seed {SEED}, {total} records, killed at stored={killed_at}")
    assert len(killed_at) == KILLS and all(k < total for k in killed_at), killed_at
    assert crashed.reports == reference.reports == stream.expected
    assert crashed.quarantine == reference.quarantine
    assert sorted(set(crashed.quarantine.values())) == ["malformed", "replayed", "unknown_key"]
    assert crashed.heads == reference.heads
    assert crashed.positions == reference.positions
    assert crashed.duplicate_rows == 0
    assert nodes.starts["un"] == KILLS + 1


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


_PR_CAPBSET_DROP = 24  # linux/prctl.h
_DAC_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER (linux/capability.h)


def _without_dac_override() -> None:
    """preexec: a root process loses the capabilities that ignore file permissions at exec."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _stop_events(log: Path) -> list[dict[str, Any]]:
    """The events that say the node stopped because its store failed: the ingest's
    ``store_failed_stopping``, or a part of the node (the follow-up writes the store too)
    failing on a store error, which stops every part."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        error = str(event.get("error", ""))
        if event.get("event") == "store_failed_stopping" or (
            str(event.get("event", "")).endswith("_failed")
            and ("store" in error.lower() or "database" in error.lower())
        ):
            out.append(event)
    return out


async def _store_failure_then_recovery(
    cluster: LocalKafkaCluster,
    tmp_path: Path,
    break_store: Callable[[NodeProcesses], Callable[[], None]],
    repair: Callable[[NodeProcesses], None],
) -> dict[str, object]:
    """First half stored normally; then the store breaks for the second half; then repaired."""
    stream = make_stream(6000, tmp_path / "stream")
    half = Stream(stream.mission, stream.mandate_file, stream.records[:3000])
    rest = Stream(stream.mission, stream.mandate_file, stream.records[3000:])
    topics = Topics(f"d{uuid.uuid4().hex[:8]}.")
    await prepare_topics(cluster.bootstrap, topics, stream)
    nodes = NodeProcesses(cluster.bootstrap, topics, stream.mandate_file, tmp_path, ("un",))
    try:
        nodes.start()
        await _publish(cluster.bootstrap, topics, half)
        await nodes.wait_for(len(half.records), 600)
    finally:
        assert nodes.stop() == {"un": 0}, nodes.tails(["un"])
    before = stored_positions(nodes.db("un"), topics)

    await _publish(cluster.bootstrap, topics, rest)
    preexec = break_store(nodes)
    proc_env = {**os.environ, "OBUS_LOG_JSON": "1"}
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    log = tmp_path / "broken.log"
    with log.open("wb") as logf:
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "nodes.cli", "node", "--org", "un", "--mandate",
             str(stream.mandate_file), "--db", str(nodes.db("un")), "--bootstrap",
             cluster.bootstrap, "--topic-prefix", topics.prefix, "--no-seal"],
            stdout=logf, stderr=subprocess.STDOUT, env=proc_env,
            preexec_fn=preexec,  # noqa: PLW1509 - rlimit/capabilities of the child only
        )  # fmt: skip
    try:
        await asyncio.to_thread(proc.wait, 300)  # bounded: TimeoutExpired fails the test
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    repair(nodes)
    stopped = _stop_events(log)
    stored_after_failure = stored_positions(nodes.db("un"), topics)
    committed = await _committed(cluster.bootstrap, topics, "un")
    positions = snapshot(nodes.db("un")).positions
    assert proc.returncode == 1, text[-3000:]
    assert stopped, f"no store_failed_stopping event:\n{text[-3000:]}"
    assert stored_after_failure < len(stream.records), "the failure stopped nothing"
    over = {
        tp: (c, positions.get(tp, 0)) for tp, c in committed.items() if c > positions.get(tp, 0)
    }
    assert over == {}, f"offsets committed beyond the store: {over}"

    # room again: the same node resumes from its store and ends with everything, once
    nodes.start("un")
    try:
        await nodes.wait_for(len(stream.records), 600)
    finally:
        assert nodes.stop() == {"un": 0}, nodes.tails(["un"])
    snap = snapshot(nodes.db("un"))
    assert snap.reports == stream.expected and snap.quarantine == {}
    out = {
        "stored_before": before,
        "stored_when_stopped": stored_after_failure,
        "committed_max_over_store": max(
            (c - positions.get(tp, 0) for tp, c in committed.items()), default=0
        ),
        "reason": stopped[0].get("exception", stopped[0].get("error", ""))[-300:],
        "recovered": len(snap.reports),
    }
    print(f"\nFIGURES store_failure: {json.dumps(out)}")
    return out


async def test_full_disk_stops_the_node_without_committing_what_it_could_not_store(
    healthy_cluster: LocalKafkaCluster, tmp_path: Path
) -> None:
    def full(nodes: NodeProcesses) -> Callable[[], None]:
        # no file of the node may grow past 64 KiB any more: the store (megabytes already) can
        # be read, but its WAL fills after a few pages, like a disk with 64 KiB left
        return _limit_file_size(64 * 1024)

    out = await _store_failure_then_recovery(healthy_cluster, tmp_path, full, lambda n: None)
    assert "full" in str(out["reason"]).lower() or "i/o" in str(out["reason"]).lower()


async def test_read_only_database_stops_the_node_without_committing(
    healthy_cluster: LocalKafkaCluster, tmp_path: Path
) -> None:
    def read_only(nodes: NodeProcesses) -> Callable[[], None]:
        db = nodes.db("un")
        # the store file only: the node's other files (attachments, final store) stay writable,
        # so what fails is the store's commit, not the start
        for path in db.parent.glob(db.name + "*"):
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return _without_dac_override

    def writable(nodes: NodeProcesses) -> None:
        db = nodes.db("un")
        for path in db.parent.glob(db.name + "*"):
            path.chmod(0o644)

    out = await _store_failure_then_recovery(healthy_cluster, tmp_path, read_only, writable)
    assert "readonly" in str(out["reason"]).lower().replace("-", "").replace(" ", "")
