"""What one compressed hostile record costs a node: store size and peak memory.

    .venv/bin/python -m bench.quarantine_amplification [--mib 50] [--codec gzip]
        [--topic-compression uncompressed]

Publishes to a fresh report topic one ``--codec``-compressed record holding ``--mib`` MiB of
zeros, then one genuine report, and runs one node (``build_node``, as ``obus node`` does) in a
child process of its own until it has stored both positions. It prints, as one JSON object: the
compressed size of the bomb's batch on the broker, the node's peak resident set (``VmHWM``)
before it started consuming and at the end, its resident set at the end, the store's size
(database + WAL), and the quarantine row kept for the bomb. It uses only names that exist
before and after the quarantine bounds, so the same script measures both. Figures only;
nothing asserts on them (tests/integration/test_quarantine_bounds.py does).

``--topic-compression`` sets the report topic's ``compression.type``: with ``uncompressed``
the broker decompresses the batch itself to store it, checks the result against the topic's
``max.message.bytes`` (1 MiB here) and refuses the bomb; the figures then say so.

A broker is started on free ports (``deploy/local/kafka.sh``) unless ``OBUS_BOOTSTRAP`` names
one; the topics get a unique prefix either way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.child import peak_rss_mib
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.topics import Topics, standard_topics
from nodes.demo.mission import LocalBroker
from tests.mission import make_mission

ORGS = ("un", "osce")
# The producer may send a record this large (its check is on the uncompressed size).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def publish(
    bootstrap: str, prefix: str, now_ms: int, mib: int, codec: str, topic_compression: str | None
) -> tuple[int, str | None]:
    """Create the topics, publish the trust state, the bomb and one genuine report.

    Returns:
        How many report records landed (the node is done when it stored them all), and the
        broker's refusal of the bomb, if it refused it.
    """
    topics = Topics(prefix)
    extra = () if topic_compression is None else (("compression.type", topic_compression),)
    specs = [
        dataclasses.replace(s, configs=(*s.configs, *extra))
        if s.name == topics.reports("un")
        else s
        for s in standard_topics(topics, list(ORGS), partitions=1)
    ]
    await ensure_topics(bootstrap, specs)
    mission = make_mission(now_ms=now_ms)
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for raw in mission.registry:
            await producer.send_and_wait(topics.registry, raw)
    finally:
        await producer.stop()
    bomb = reliable_producer(bootstrap, compression_type=codec, max_request_size=MAX_REQUEST_BYTES)
    await bomb.start()
    refused = None
    try:
        try:
            await bomb.send_and_wait(topics.reports("un"), bytes(mib * 1024 * 1024), key=b"bomb")
        except Exception as exc:  # noqa: BLE001 - the broker's refusal is the figure
            refused = f"{type(exc).__name__}: {exc}"
        await bomb.send_and_wait(topics.reports("un"), mission.next_report("un"), key=b"genuine")
    finally:
        await bomb.stop()
    return (1 if refused else 2), refused


async def run_node(bootstrap: str, prefix: str, now_ms: int, db: Path, expect: int) -> None:
    """Run one node until ``expect`` report positions are stored; print its figures as JSON."""
    from bus.store.node import NodeStore  # noqa: PLC0415
    from nodes.org_node.config import NodeConfig  # noqa: PLC0415
    from nodes.org_node.process import build_node  # noqa: PLC0415

    mission = make_mission(now_ms=now_ms)
    topics = Topics(prefix)
    node = build_node(
        NodeConfig(
            org="osce",
            bootstrap=bootstrap,
            db_path=db,
            mandate=mission.scenario.mandate,
            topics=topics,
            poll_timeout_ms=200,
        )
    )
    before = peak_rss_mib()
    task = asyncio.create_task(node.run())
    started = time.monotonic()
    try:
        async with asyncio.timeout(180):
            while True:
                if task.done():
                    await task
                reader = NodeStore(db, read_only=True)
                stored = sum(o for (t, _), o in reader.positions().items() if ".reports." in t)
                reader.close()
                if stored >= expect:
                    break
                await asyncio.sleep(0.2)
    finally:
        node.stop()
        await task
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        cols = {r[1] for r in con.execute("PRAGMA table_info(quarantine)")}
        size = "size" if "size" in cols else "length(raw)"
        rows = con.execute(
            f'SELECT "offset", reason, {size}, length(raw) FROM quarantine'
        ).fetchall()
        reports = con.execute("SELECT count(*) FROM reports").fetchone()[0]
    store = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    print(
        json.dumps(
            {
                "node_peak_rss_mib_before_consuming": round(before, 1),
                "node_peak_rss_mib": round(peak_rss_mib(), 1),
                "node_rss_mib_at_end": round(_rss_mib(), 1),
                "store_bytes": store,
                "quarantine": [
                    {"offset": o, "reason": r, "size": s, "raw_kept": k} for o, r, s, k in rows
                ],
                "reports_accepted": reports,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )


def _log_bytes(data_dir: Path, prefix: str) -> int | None:
    """Size of the report partition's log on a broker we started (the bomb's batch + one)."""
    for part in data_dir.rglob(f"{prefix}reports.un-0"):
        return sum(f.stat().st_size for f in part.glob("*.log"))
    return None


def main() -> None:
    """Parent: broker, topics and records; the node runs in a child process of its own."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=50, help="MiB of zeros in the bomb")
    parser.add_argument("--codec", default="gzip", choices=["gzip", "lz4", "zstd", "snappy"])
    parser.add_argument(
        "--topic-compression", help="the report topic's compression.type (default: producer)"
    )
    parser.add_argument(
        "--node", nargs=5, metavar=("BOOTSTRAP", "PREFIX", "NOW_MS", "DB", "EXPECT")
    )
    args = parser.parse_args()
    if args.node:
        bootstrap, prefix, now_ms, db, expect = args.node
        asyncio.run(run_node(bootstrap, prefix, int(now_ms), Path(db), int(expect)))
        return
    work = Path(tempfile.mkdtemp(prefix="obus-bench-qa-"))
    broker = None
    bootstrap = os.environ.get("OBUS_BOOTSTRAP")
    if bootstrap is None:
        broker = LocalBroker(work / "kafka")
        broker.start()
        bootstrap = broker.bootstrap
    try:
        prefix = f"qa{uuid.uuid4().hex[:8]}."
        now_ms = int(time.time() * 1000)
        expect, refused = asyncio.run(
            publish(bootstrap, prefix, now_ms, args.mib, args.codec, args.topic_compression)
        )
        out = subprocess.run(
            [sys.executable, "-m", "bench.quarantine_amplification", "--node", bootstrap, prefix,
             str(now_ms), str(work / "node.db"), str(expect)],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout  # fmt: skip
        figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        figures["bomb"] = {
            "mib_of_zeros": args.mib,
            "codec": args.codec,
            "topic_compression": args.topic_compression or "producer",
            "refused_by_broker": refused,
        }
        figures["report_log_on_broker_bytes"] = _log_bytes(work, prefix)
        print(json.dumps(figures, indent=2))
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
