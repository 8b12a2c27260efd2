"""Attachments end to end on a real broker: observer outbox -> gateway -> chunks -> every node.

One mission per test with its own topic prefix. The gateway runs in this process; five
organizations' nodes (OrgNode + AttachmentNode) run in this process and the sixth, UN's, runs as
``obus node`` (so the CLI wiring, reassembler on by default, is what is tested there). Everything
listens on 127.0.0.1 and every task and process started is stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bus.attachment import CHUNK_BYTES, AttachmentLimits, Chunk, split
from bus.crypto import SigningKey
from bus.errors import Reason
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.kafka.replay import replay
from bus.model import Role
from bus.topics import Topics, standard_topics
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.gateway.http import GatewayServer
from nodes.gateway.service import GatewayConfig
from nodes.observer.client import GatewayClient
from nodes.observer.delivery import Backoff, sync
from nodes.observer.device import Home, init_observer, now_ms, submit_file
from nodes.observer.outbox import EXTERNAL, UPLOADED, Outbox
from nodes.org_node.attachment_store import AttachmentStore
from nodes.org_node.attachments import AttachmentNode, config_for_node, default_paths
from nodes.org_node.config import NodeConfig
from nodes.org_node.ingest import OrgNode
from nodes.org_node.process import build_node
from nodes.runtime.files import write_key
from tests.integration.test_observer_gateway import TrustSealer
from tests.kafka_broker import free_ports
from tests.mission import Mission, make_mission

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
ORGS = [o for o, _ in ORGANIZATIONS]
WAIT_S = 120
MIB = 1024 * 1024
PHOTO = random.Random(3).randbytes(3 * MIB)  # 3 MiB: six chunks of 512 KiB
SCAN = random.Random(4).randbytes(MIB + 12_345)  # three chunks, the last one short


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class World:
    bootstrap: str
    topics: Topics
    m: Mission
    tmp: Path
    home: Home
    observer_key: SigningKey
    node_key: SigningKey
    port: int
    sealer: TrustSealer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(
            org="un", bootstrap=self.bootstrap, db_path=self.tmp / "gateway.db",
            mandate=self.m.scenario.mandate, node_key=self.node_key, topics=self.topics,
            port=self.port, registry_refresh_s=1.0, final_db=self.sealer.path,
            attachments=AttachmentLimits(max_bytes=4 * MIB),
        )  # fmt: skip

    def attachment_db(self, org: str) -> Path:
        return default_paths(self.tmp / f"{org}.db")[0]


async def _world(bootstrap: str, tmp: Path) -> World:
    t0 = now_ms()
    m = make_mission(1, now_ms=t0)
    topics = Topics(f"a{uuid.uuid4().hex[:10]}.")
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    node_key = demo_key(f"attachments-test:{topics.prefix}")
    m.accredit("un-node", "un", node_key, Role.NODE)
    home = Home(tmp / "observer")
    (port,) = free_ports(1)
    observer_key = init_observer(
        home, observer_id="un-obs-field", org="un", mandate_envelope=m.scenario.mandate_envelope,
        gateway=f"http://127.0.0.1:{port}", passphrase="field observer passphrase", at_ms=t0,
        scrypt_n=2**12,
    )  # fmt: skip
    m.accredit("un-obs-field", "un", observer_key, Role.OBSERVER)
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for raw in m.registry:
            await producer.send_and_wait(topics.registry, raw)
    finally:
        await producer.stop()
    (tmp / "mandate.bin").write_bytes(m.scenario.mandate_envelope)
    write_key(tmp / "node-key.json", node_key)
    # The gateway judges with a final trust state; the trust topics sealed as they stand
    # (UN's own node, started later, keeps its final store at un.final.db).
    sealer = TrustSealer(bootstrap, topics, m.scenario.mandate, tmp / "gateway-trust.final.db")
    await sealer.seal()
    return World(bootstrap, topics, m, tmp, home, observer_key, node_key, port, sealer)


def _report(w: World, name: str, attachments: str) -> Path:
    observed = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    text = (
        (REPO / "examples" / "report.yaml")
        .read_text()
        .replace("2026-11-01T06:30:00Z", observed.strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    path = w.tmp / "field" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text + "\nattachments:\n" + attachments)
    return path


@asynccontextmanager
async def _nodes(w: World) -> AsyncIterator[None]:
    """Six organizations' nodes with their reassemblers: UN's as `obus node`, the rest here."""
    tasks: list[asyncio.Task[None]] = []
    parts: list[OrgNode | AttachmentNode] = []
    for org in ORGS[1:]:
        cfg = NodeConfig(
            org, w.bootstrap, w.tmp / f"{org}.db", w.m.scenario.mandate, topics=w.topics,
            poll_timeout_ms=200,
        )  # fmt: skip
        node = build_node(cfg)
        att = AttachmentNode(config_for_node(cfg, cfg.attachments))
        parts += [node, att]
        tasks += [asyncio.create_task(node.run()), asyncio.create_task(att.run())]
    log = (w.tmp / "un-node.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.cli", "node", "--org", "un",
        "--mandate", str(w.tmp / "mandate.bin"), "--db", str(w.tmp / "un.db"),
        "--bootstrap", w.bootstrap, "--topic-prefix", w.topics.prefix,
        cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )  # fmt: skip
    try:
        yield
    finally:
        for part in parts:
            part.stop()
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        log.close()
        for t in tasks:
            await t


def _look(w: World, org: str) -> tuple[dict[bytes, Path], list[tuple[bytes | None, str]]]:
    """(stored attachments with their files, quarantine (sha256, reason)) of one node."""
    db = w.attachment_db(org)
    if not db.exists():
        return {}, []
    store = AttachmentStore(db, default_paths(w.tmp / f"{org}.db")[1], None, read_only=True)
    try:
        stored = {s.sha256: s.path for s in store.all_stored()}
        return stored, [(q.sha256, q.reason) for q in store.quarantine_rows()]
    except sqlite3.Error:  # the schema is not there yet (node still starting)
        return {}, []
    finally:
        store.close()


async def _until(check: Callable[[str], bool]) -> float:
    """Wait until check(org) holds for every organization; returns the seconds it took."""
    t = time.perf_counter()
    async with asyncio.timeout(WAIT_S):
        while not all(check(org) for org in ORGS):  # noqa: ASYNC110 - other processes write it
            await asyncio.sleep(0.1)
    return time.perf_counter() - t


async def _sync(w: World, max_failures: int | None = None) -> tuple[int, int, int, int]:
    box = Outbox(w.home.outbox)
    try:
        async with GatewayClient(w.url, timeout_s=60) as client:
            r = await sync(
                w.home, box, client, backoff=Backoff(0.05, 0.5), max_failures=max_failures
            )
        return r.delivered, r.uploaded, r.remaining, r.remaining_uploads
    finally:
        box.close()


async def _publish_raw(w: World, records: list[Chunk]) -> None:
    """Publish chunk records directly on UN's attachments topic, as a rogue operator could."""
    producer = reliable_producer(w.bootstrap)
    await producer.start()
    try:
        for c in records:
            await producer.send_and_wait(w.topics.attachments("un"), c.encode(), key=c.key)
    finally:
        await producer.stop()


def _tampered(c: Chunk) -> Chunk:
    return Chunk(c.layout, c.index, bytes([c.data[0] ^ 0xFF]) + c.data[1:])


async def test_offline_report_with_a_3_mib_photo_reaches_every_node_and_tampering_is_caught(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    w = await _world(kafka_bootstrap, tmp_path)
    photo = tmp_path / "field" / "crater.jpg"
    photo.parent.mkdir()
    photo.write_bytes(PHOTO)
    # 1. Offline: the report with its photo, and one that references a scan by hash only.
    box = Outbox(w.home.outbox)
    try:
        first = submit_file(
            w.home, box, w.observer_key, _report(w, "shelling.yaml", "  - path: crater.jpg\n"),
            at_ms=now_ms(),
        )  # fmt: skip
        scan_ref = f"  - sha256: {_sha(SCAN).hex()}\n    size: {len(SCAN)}\n    media_type: application/pdf\n    name: clinic-log.pdf\n"
        submit_file(
            w.home, box, w.observer_key, _report(w, "clinic.yaml", scan_ref), at_ms=now_ms()
        )
        assert [u.state for u in box.uploads()][1:] == [EXTERNAL]
    finally:
        box.close()
    photo.rename(tmp_path / "moved-away.jpg")  # the outbox has its own copy
    assert await _sync(w, max_failures=1) == (0, 0, 2, 1)  # nobody listens yet

    # 2. Coverage: gateway and nodes up, sync.
    async with GatewayServer(w.gateway_config()) as server, _nodes(w):
        t0 = time.perf_counter()
        assert await _sync(w) == (2, 1, 0, 0)
        sync_s = time.perf_counter() - t0
        await _until(lambda org: _sha(PHOTO) in _look(w, org)[0])
        all_s = time.perf_counter() - t0
        for org in ORGS:
            path = _look(w, org)[0][_sha(PHOTO)]
            assert _sha(path.read_bytes()) == _sha(PHOTO), org
            assert _look(w, org)[1] == [], org  # nothing quarantined
        assert not w.home.blob(_sha(PHOTO)).exists()  # released after the confirmed upload
        print(
            f"\nFIGURES attachments: 3 MiB photo synced (report + upload) in {sync_s:.2f} s"
            f" ({3 / sync_s:.1f} MiB/s), stored and verified at all 6 nodes after {all_s:.2f} s"
            f" ({3 / all_s:.1f} MiB/s end to end)"
        )

        # The chunks on the bus: one partition, in order, keyed by the SHA-256.
        chunks = [r async for r in replay(w.bootstrap, [w.topics.attachments("un")])]
        assert len(chunks) == 3 * MIB // CHUNK_BYTES == 6
        assert {r.key for r in chunks} == {_sha(PHOTO).hex().encode()}
        assert len({r.partition for r in chunks}) == 1
        assert [Chunk.decode(r.value).index for r in chunks] == list(range(6))
        assert all(len(r.value) <= CHUNK_BYTES + 100 for r in chunks)

        async with aiohttp.ClientSession() as s:

            async def put(hexd: str, body: bytes) -> tuple[int, dict[str, object]]:
                async with s.put(f"{w.url}/v1/attachments/{hexd}", data=io.BytesIO(body)) as resp:
                    return resp.status, json.loads(await resp.read())

            # Idempotent: the same upload again is answered from the store, nothing published.
            status, doc = await put(_sha(PHOTO).hex(), PHOTO)
            assert (status, doc["chunks"], doc["partition"]) == (200, 6, chunks[0].partition)
            # Refusals, each with its reason, nothing published.
            refusals = {
                "not a sha256": (await put("xyz", b"x"), 400, Reason.MALFORMED),
                "nobody references it": (await put(_sha(b"other").hex(), b"other"), 422, Reason.ATTACHMENT_UNREFERENCED),
                "other bytes": (await put(_sha(SCAN).hex(), bytes(len(SCAN))), 422, Reason.ATTACHMENT_HASH_MISMATCH),
                "longer than the report says": (await put(_sha(SCAN).hex(), SCAN + b"!"), 422, Reason.ATTACHMENT_SIZE_MISMATCH),
            }  # fmt: skip
            for name, ((status, doc), want_status, reason) in refusals.items():
                assert (status, doc["reason"]) == (want_status, reason.value), name
            assert len([r async for r in replay(w.bootstrap, [w.topics.attachments("un")])]) == 6

            # 3. A rogue operator publishes the scan with a tampered chunk, before the gateway
            #    ever had it: every node names the mismatch and stores nothing.
            genuine = split(SCAN)
            await _publish_raw(w, [genuine[0], _tampered(genuine[1]), genuine[2]])
            mismatch = (_sha(SCAN), Reason.ATTACHMENT_HASH_MISMATCH.value)
            await _until(lambda org: mismatch in _look(w, org)[1])
            assert all(_sha(SCAN) not in _look(w, org)[0] for org in ORGS)
            # The genuine upload (the observer had only the hash; someone with the file sends
            # it) is published by the gateway and completes it despite the forged chunk.
            status, doc = await put(_sha(SCAN).hex(), SCAN)
            assert (status, doc["chunks"]) == (201, 3)
            await _until(lambda org: _sha(SCAN) in _look(w, org)[0])

            # 4. A tampered chunk of the stored photo: quarantined, the stored file unchanged.
            await _publish_raw(w, [_tampered(split(PHOTO)[4])])
            mismatch = (_sha(PHOTO), Reason.ATTACHMENT_HASH_MISMATCH.value)
            await _until(lambda org: mismatch in _look(w, org)[1])
            for org in ORGS:
                stored, quarantine = _look(w, org)
                assert _sha(stored[_sha(PHOTO)].read_bytes()) == _sha(PHOTO)
                assert _sha(stored[_sha(SCAN)].read_bytes()) == _sha(SCAN)
                assert (
                    sorted(r for _, r in quarantine) == [Reason.ATTACHMENT_HASH_MISMATCH.value] * 2
                ), (org, quarantine)
        assert server.gateway.store.attachment_count() == 2

    box = Outbox(w.home.outbox, read_only=True)
    try:
        assert [u.state for u in box.uploads() if u.seq == first.seq] == [UPLOADED]
    finally:
        box.close()
