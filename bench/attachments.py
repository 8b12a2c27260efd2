"""Attachment throughput on a real broker: gateway uploads, node reassembly, warm latency.

    python -m bench.attachments [--count 8] [--mib 4] [--nodes 3]

Uses ``OBUS_BOOTSTRAP`` or starts a single-node broker with deploy/local/kafka.sh. One
gateway (this process) and ``--nodes`` organization nodes (OrgNode + AttachmentNode, this
process). Three figures:

1. upload: ``--count`` reports, each with a fresh attachment of ``--mib`` MiB, delivered as the
   observer does (POST the report, then PUT the bytes); MiB/s of attachment bytes confirmed by
   Kafka (acks=all);
2. catch-up: the nodes start only then and reassemble everything from the topic; MiB/s per node
   and summed over the nodes (they share this machine's cores);
3. warm latency: with the nodes running, one more report and attachment: seconds from the start
   of the upload until every node holds the verified file.

Prints the figures and writes bench/results/attachments-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bus.attachment import AttachmentLimits
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import Accreditation, Attachment, Category, Location, Report, Role, sha256
from bus.sign import sign_accreditation
from bus.topics import Topics, standard_topics
from bus.uuid7 import uuid7
from nodes.demo.mission import LocalBroker
from nodes.demo.scenario import ORGANIZATIONS, build_scenario, demo_key
from nodes.gateway.http import GatewayServer
from nodes.gateway.service import GatewayConfig
from nodes.org_node.attachment_store import AttachmentStore
from nodes.org_node.attachments import AttachmentNode, config_for_node, default_paths
from nodes.org_node.config import NodeConfig
from nodes.org_node.ingest import OrgNode
from nodes.org_node.process import build_node

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(bootstrap: str, work: Path, count: int, mib: int, nodes: int) -> dict[str, Any]:
    now = time.time_ns() // 1_000_000
    sc = build_scenario(now, observers_per_org=1)
    topics = Topics(f"b{uuid.uuid4().hex[:8]}.")
    orgs = [o for o, _ in ORGANIZATIONS]
    await ensure_topics(bootstrap, standard_topics(topics, orgs, partitions=3))
    node_key = demo_key(f"bench-attachments:{topics.prefix}")
    m = sc.mandate
    node_acc = sign_accreditation(
        Accreditation("un-node", "un", Role.NODE, node_key.public_key, m.not_before_ms,
                      m.not_after_ms, 1, m.mandate_id),
        sc.org_roots["un"],
    ).encode()  # fmt: skip
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for raw in [*sc.accreditations, node_acc]:
            await producer.send_and_wait(topics.registry, raw)
    finally:
        await producer.stop()
    observer = next(o for o in sc.observers if o.org == "un")
    signer = sc.signers[observer.observer_id]
    rng = random.Random(1)

    def report_with(data: bytes) -> bytes:
        t = time.time_ns() // 1_000_000
        return signer.sign(
            Report(
                report_id=uuid7(t), mandate_id=m.mandate_id, zone="north",
                observer_id=observer.observer_id, org="un", seq=1, prev_digest=b"",
                observed_at_ms=t - 60_000, signed_at_ms=t, location=Location(48.2, 38.0, 100, ""),
                category=Category.SHELLING, severity=3, confidence=0.8,
                attachments=(Attachment(sha256(data), len(data), "image/jpeg", "photo.jpg"),),
            )
        )  # fmt: skip

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    gw_cfg = GatewayConfig(
        org="un", bootstrap=bootstrap, db_path=work / "gateway.db", mandate=m,
        node_key=node_key, topics=topics, port=port,
        attachments=AttachmentLimits(max_bytes=max(mib, 1) * MIB),
    )  # fmt: skip
    blobs = [rng.randbytes(mib * MIB) for _ in range(count + 1)]
    node_orgs = orgs[:nodes]
    parts: list[OrgNode | AttachmentNode] = []
    tasks: list[asyncio.Task[None]] = []

    def stored_everywhere(digests: list[bytes]) -> bool:
        for org in node_orgs:
            db, files = default_paths(work / f"{org}.db")
            if not db.exists():
                return False
            store = AttachmentStore(db, files, None, read_only=True)
            try:
                have = {s.sha256 for s in store.all_stored()}
            except Exception:  # noqa: BLE001 - schema not created yet
                return False
            finally:
                store.close()
            if not set(digests) <= have:
                return False
        return True

    async def wait_stored(digests: list[bytes]) -> None:
        while not stored_everywhere(digests):  # noqa: ASYNC110 - other tasks write it
            await asyncio.sleep(0.05)

    async with GatewayServer(gw_cfg), aiohttp.ClientSession() as s:

        async def deliver(data: bytes) -> None:
            async with s.post(f"{url}/v1/reports", data=io.BytesIO(report_with(data))) as r:
                assert r.status == 201, await r.text()
            hexd = sha256(data).hex()
            async with s.put(f"{url}/v1/attachments/{hexd}", data=io.BytesIO(data)) as r:
                assert r.status == 201, await r.text()

        t = time.perf_counter()
        for data in blobs[:count]:
            await deliver(data)
        upload_s = time.perf_counter() - t

        t = time.perf_counter()
        for org in node_orgs:
            cfg = NodeConfig(org, bootstrap, work / f"{org}.db", m, topics=topics,
                             poll_timeout_ms=100)  # fmt: skip
            parts += [build_node(cfg), AttachmentNode(config_for_node(cfg, cfg.attachments))]
        tasks = [asyncio.create_task(p.run()) for p in parts]
        try:
            await asyncio.wait_for(wait_stored([sha256(b) for b in blobs[:count]]), 600)
            catch_up_s = time.perf_counter() - t
            t = time.perf_counter()
            await deliver(blobs[count])
            await asyncio.wait_for(wait_stored([sha256(blobs[count])]), 120)
            warm_s = time.perf_counter() - t
        finally:
            for p in parts:
                p.stop()
            for task in tasks:
                await task
    total = count * mib
    return {
        "count": count,
        "mib_each": mib,
        "nodes": nodes,
        "upload_s": round(upload_s, 3),
        "upload_mib_s": round(total / upload_s, 1),
        "catch_up_s": round(catch_up_s, 3),
        "reassembly_mib_s_per_node": round(total / catch_up_s, 1),
        "reassembly_mib_s_all_nodes": round(total * nodes / catch_up_s, 1),
        "warm_latency_s": round(warm_s, 3),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--mib", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="obus-bench-att-") as tmp:
        work = Path(tmp)
        broker = None
        bootstrap = os.environ.get("OBUS_BOOTSTRAP")
        if not bootstrap:
            broker = LocalBroker(work / "kafka")
            broker.start()
            bootstrap = broker.bootstrap
        try:
            result = asyncio.run(run(bootstrap, work, args.count, args.mib, args.nodes))
        finally:
            if broker is not None:
                broker.stop()
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results" / f"attachments-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
