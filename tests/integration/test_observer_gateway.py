"""Observers, the organization gateway and a real Kafka broker: exactly once, whatever crashes.

Each test has its own topic prefix and its own observer home. Gateways run either in this
process (``GatewayServer``) or, where a test kills them, as ``obus gateway`` subprocesses; the
observer's ``sync`` runs in-process or as ``obus observer sync`` when it is the one killed.
Everything listens on 127.0.0.1 on free ports, and every process started is stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from bus.crypto import SigningKey
from bus.errors import Reason
from bus.kafka.admin import end_offsets, ensure_topics
from bus.kafka.client import reliable_producer
from bus.kafka.replay import replay
from bus.model import Envelope, Mandate, Report, Role, encode, sha256
from bus.receipt import verify_receipt
from bus.sealed_reader import SealedReader
from bus.sign import ReportSigner
from bus.store.final import FinalStore
from bus.store.node import NodeStore
from bus.topics import Topics, standard_topics
from bus.trust import verify_accreditation
from bus.verify import ChainBook, ChainHead, verify_report
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.gateway.http import GatewayServer
from nodes.gateway.service import GatewayConfig
from nodes.observer.client import GatewayClient
from nodes.observer.delivery import Backoff, sync
from nodes.observer.device import Home, check_receipts, init_observer, now_ms, submit_file
from nodes.observer.outbox import DELIVERED, QUEUED, REJECTED, Entry, Outbox
from nodes.org_node.config import NodeConfig
from nodes.org_node.process import build_node
from nodes.runtime.files import write_key
from tests.kafka_broker import free_ports
from tests.mission import Mission, make_mission
from tests.sealed_log import SealedLog

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]
ORGS = [o for o, _ in ORGANIZATIONS]
WAIT_S = 60
N = 100
PASSPHRASE = "field observer passphrase"


class TrustSealer:
    """Stands in for the organization's node's sealer where the node is not what a test is
    about: each :meth:`seal` seals the trust topics as they stand on the broker in the next
    epoch (the RFC 6962 roots of their real records) and stores the epoch as judged by a
    :class:`~bus.sealed_reader.SealedReader`, with its final seal, in a final store, exactly
    the rows a sealer writes for those partitions. The gateway reads that store and the
    topics, and checks the roots itself. Tests of sealing run real sealers
    (tests/integration/test_gateway_final_trust.py)."""

    def __init__(self, bootstrap: str, topics: Topics, root: Mandate, path: Path) -> None:
        self.bootstrap, self.topics, self.path = bootstrap, topics, path
        self.log = SealedLog(root)
        self.reader = SealedReader(root, topics)
        store = FinalStore(path)
        try:
            store.check_identity("un", root.mandate_id, sha256(encode(root)))
        finally:
            store.close()

    async def seal(self) -> int:
        """Seal the trust topics as they stand; the epoch sealed."""
        held = {ref: len(v) for ref, v in self.log.partitions.items()}
        async for rec in replay(self.bootstrap, [self.topics.registry, self.topics.mandate]):
            ref = (rec.topic, rec.partition)
            if rec.offset >= held.get(ref, 0):
                self.log.put(rec.topic, rec.value, rec.partition)
        seal = self.log.seal(now_ms())
        for ref, values in self.log.partitions.items():
            self.reader.offer_records(ref, 0, values)
        epochs = self.reader.offer_final_seal(seal)
        store = FinalStore(self.path)
        try:
            store.record(epochs, [seal])
        finally:
            store.close()
        return seal.epoch


@dataclass
class World:
    """One mission on the broker: topics, registry (sealed once), a node key and one
    observer's home."""

    bootstrap: str
    topics: Topics
    m: Mission
    tmp: Path
    node_key: SigningKey
    home: Home
    observer_key: SigningKey
    port: int
    sealer: TrustSealer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def final_db(self) -> Path:
        return self.sealer.path

    def config(self, **changes: object) -> GatewayConfig:
        base: dict[str, object] = {
            "org": "un",
            "bootstrap": self.bootstrap,
            "db_path": self.tmp / "gateway.db",
            "mandate": self.m.scenario.mandate,
            "node_key": self.node_key,
            "topics": self.topics,
            "port": self.port,
            "registry_refresh_s": 1.0,
            "final_db": self.final_db,
        }
        base.update(changes)
        return GatewayConfig(**base)  # type: ignore[arg-type]


async def _world(
    bootstrap: str, tmp: Path, *, extra: Sequence[tuple[str, str, SigningKey, dict[str, int]]] = ()
) -> World:
    t0 = now_ms()
    m = make_mission(2, now_ms=t0)
    topics = Topics(f"g{uuid.uuid4().hex[:10]}.")
    await ensure_topics(bootstrap, standard_topics(topics, ORGS, partitions=2))
    node_key = demo_key(f"gateway-test:{topics.prefix}")
    m.accredit("un-node", "un", node_key, Role.NODE)
    home = Home(tmp / "observer")
    (port,) = free_ports(1)
    observer_key = init_observer(
        home,
        observer_id="un-obs-field",
        org="un",
        mandate_envelope=m.scenario.mandate_envelope,
        gateway=f"http://127.0.0.1:{port}",
        passphrase=PASSPHRASE,
        at_ms=t0,
        scrypt_n=2**12,
    )
    m.accredit("un-obs-field", "un", observer_key, Role.OBSERVER)
    for subject, org, key, changes in extra:
        m.accredit(subject, org, key, Role.OBSERVER, **changes)
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        for raw in m.registry:
            await producer.send_and_wait(topics.registry, raw)
    finally:
        await producer.stop()
    (tmp / "mandate.bin").write_bytes(m.scenario.mandate_envelope)
    write_key(tmp / "node-key.json", node_key)
    sealer = TrustSealer(bootstrap, topics, m.scenario.mandate, tmp / "un.final.db")
    await sealer.seal()
    return World(bootstrap, topics, m, tmp, node_key, home, observer_key, port, sealer)


def _report_file(tmp: Path) -> Path:
    observed = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    path = tmp / "report.yaml"
    path.write_text(
        (REPO / "examples" / "report.yaml")
        .read_text()
        .replace("2026-11-01T06:30:00Z", observed.strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    return path


def _submit(w: World, n: int) -> float:
    """Submit n reports in-process (as `obus observer submit --no-deliver`); returns seconds."""
    path = _report_file(w.tmp)
    box = Outbox(w.home.outbox)
    try:
        t = time.perf_counter()
        for _ in range(n):
            submit_file(w.home, box, w.observer_key, path, at_ms=now_ms())
        return time.perf_counter() - t
    finally:
        box.close()


async def _sync(w: World, **kw: object) -> tuple[int, int, int]:
    box = Outbox(w.home.outbox)
    try:
        async with GatewayClient(w.url, timeout_s=15) as client:
            r = await sync(w.home, box, client, backoff=Backoff(0.05, 0.5), **kw)  # type: ignore[arg-type]
        return r.delivered, r.duplicates, r.remaining
    finally:
        box.close()


async def _assert_exactly_once(w: World, n: int) -> None:
    """n reports on the topic, each outbox report exactly once, chain intact, receipts verify."""
    records = [r async for r in replay(w.bootstrap, [w.topics.reports("un")])]
    box = Outbox(w.home.outbox, read_only=True)
    try:
        entries = box.entries()
        checks = check_receipts(w.home, box, at_ms=now_ms())
        assert box.counts()[QUEUED] == 0
    finally:
        box.close()
    digests = Counter(sha256(r.value) for r in records)
    assert len(records) == n
    assert max(digests.values()) == 1, "a report is doubled on Kafka"
    assert set(digests) == {e.digest for e in entries}, "a report is missing on Kafka"
    # the chain: one observer, one partition, offsets in seq order; every record verifies
    chain = ChainBook({}, lambda _rid: None)
    where: dict[bytes, tuple[int, int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        vr = verify_report(
            r.value, expected_org="un", keyring=w.m.keyring, reference_ms=r.timestamp
        )
        chain.accept(vr)  # raises chain_gap / chain_fork / replayed
        where[vr.envelope_digest] = (r.partition, r.offset)
    assert [e.seq for e in entries] == list(range(1, n + 1))
    assert all(e.state == DELIVERED for e in entries)
    assert len(checks) == n and all(c.ok for c in checks), [c for c in checks if not c.ok][:3]
    by_seq = {e.seq: e for e in entries}
    for c in checks:  # each receipt names where its report really is
        assert (c.partition, c.offset) == where[by_seq[c.seq].digest]


@asynccontextmanager
async def _gateway_process(
    w: World, log: Path, fault_after: int | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {k: v for k, v in os.environ.items() if k != "OBUS_FAULT_EXIT_AFTER_PUBLISHES"}
    if fault_after is not None:
        env["OBUS_FAULT_EXIT_AFTER_PUBLISHES"] = str(fault_after)
    env["OBUS_LOG_JSON"] = "1"
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodes.cli", "gateway", "--org", "un",
            "--mandate", str(w.tmp / "mandate.bin"), "--node-key", str(w.tmp / "node-key.json"),
            "--db", str(w.tmp / "gateway.db"), "--port", str(w.port),
            "--final-db", str(w.final_db), "--bootstrap", w.bootstrap, "--topic-prefix", w.topics.prefix,
            cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        await _wait_healthy(w, proc, log)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _wait_healthy(w: World, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as s, asyncio.timeout(WAIT_S):
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"gateway exited {proc.returncode}:\n{log.read_text()}")  # noqa: ASYNC240 - failure path
            try:
                async with s.get(f"{w.url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


def _delivered(w: World) -> int:
    box = Outbox(w.home.outbox, read_only=True)
    try:
        return box.counts()[DELIVERED]
    finally:
        box.close()


async def _wait_delivered(w: World, at_least: int) -> int:
    async with asyncio.timeout(WAIT_S):
        while (d := _delivered(w)) < at_least:  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.01)
    return d


# ---------------------------------------------------------------------------------------------


async def test_offline_then_sync_delivers_exactly_once_with_verifying_receipts(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    w = await _world(kafka_bootstrap, tmp_path)
    seconds = _submit(w, N)  # the gateway is down: nothing listens on w.port
    delivered, _, remaining = await _sync(w, max_failures=1)
    assert (delivered, remaining) == (0, N)
    box = Outbox(w.home.outbox, read_only=True)
    [first] = box.entries()[:1]
    box.close()
    assert first.attempts == 1 and "cannot connect" in first.last_error

    async with GatewayServer(w.config()):
        t = time.perf_counter()
        delivered, duplicates, remaining = await _sync(w)
        sync_s = time.perf_counter() - t
    assert (delivered, duplicates, remaining) == (N, 0, 0)
    await _assert_exactly_once(w, N)
    print(f"\nsubmit: {N / seconds:.0f} reports/s; sync: {N / sync_s:.0f} reports/s")


async def test_observer_killed_mid_sync_then_run_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    w = await _world(kafka_bootstrap, tmp_path)
    _submit(w, N)
    async with GatewayServer(w.config()) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodes.cli", "observer", "sync", "--home", str(w.home.root),
            "--backoff-cap", "0.5",
            cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            at_kill = await _wait_delivered(w, 25)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert at_kill < N, "sync finished before it could be killed"
        _, _, remaining = await _sync(w)
        assert remaining == 0 and _delivered(w) == N

        # A resend after a lost answer gets the very same receipt, and nothing is published.
        box = Outbox(w.home.outbox, read_only=True)
        e = box.entries()[7]
        box.close()
        async with GatewayClient(w.url) as client:
            answer = await client.submit(e.envelope)
        assert (answer.status, answer.body) == (200, e.receipt)
        assert server.gateway.store.counts()["published"] == N
    await _assert_exactly_once(w, N)


async def test_gateway_killed_mid_batch_and_restarted(kafka_bootstrap: str, tmp_path: Path) -> None:
    w = await _world(kafka_bootstrap, tmp_path)
    _submit(w, N)
    log = tmp_path / "gateway.log"
    syncing = asyncio.create_task(_sync(w, max_seconds=WAIT_S))
    try:
        # 1. Exits right after Kafka confirmed its 40th publication, before recording it.
        async with _gateway_process(w, log, fault_after=40) as gw:
            async with asyncio.timeout(WAIT_S):
                assert await gw.wait() == 86
        # 2. Restarted: finds report 40 on the topic, then is SIGKILLed mid-batch.
        async with _gateway_process(w, log) as gw:
            await _wait_delivered(w, 70)
            gw.send_signal(signal.SIGKILL)
            await gw.wait()
        # 3. Restarted again: the rest.
        async with _gateway_process(w, log):
            _, _, remaining = await syncing
    finally:
        syncing.cancel()
    assert remaining == 0
    events = [
        json.loads(line).get("event") for line in log.read_text().splitlines() if line[:1] == "{"
    ]
    assert "fault_injection_exit" in events
    assert "pending_found_on_topic" in events  # recovered from the topic, not re-published
    await _assert_exactly_once(w, N)

    # and one organization node's store holds each report once, nothing quarantined
    db = tmp_path / "node.db"
    node = build_node(
        NodeConfig(
            "un", w.bootstrap, db, w.m.scenario.mandate, topics=w.topics, poll_timeout_ms=200
        )
    )
    task = asyncio.create_task(node.run())
    reader = NodeStore(db, read_only=True)
    try:
        async with asyncio.timeout(WAIT_S):
            while sum(reader.positions().values()) < N:
                if task.done():
                    await task
                await asyncio.sleep(0.2)
        assert reader.count_reports() == N and reader.quarantine_rows() == []
    finally:
        reader.close()
        node.stop()
        await task


async def test_bad_submissions_are_refused_with_their_reason_and_nothing_is_published(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    short = demo_key(f"short-lived:{tmp_path.name}")
    t0 = now_ms()
    w = await _world(kafka_bootstrap, tmp_path, extra=[("un-obs-short", "un", short, {"not_after_ms": t0 - 60_000})])  # fmt: skip
    m = w.m
    expired_draft = m.draft(observer_id="un-obs-short", signed_at_ms=now_ms())
    cases = {
        "observer of another organization": (m.next_report("osce", 1), 403, Reason.WRONG_TOPIC),
        "expired accreditation": (ReportSigner(short).sign(expired_draft), 403, Reason.KEY_EXPIRED),
        "oversized body": (b"\x0a" * (256 * 1024 + 1), 413, Reason.OVERSIZED),
        "malformed body": (b"this is not a signed envelope", 400, Reason.MALFORMED),
        "unaccredited key": (ReportSigner(demo_key("rogue")).sign(m.draft()), 403, Reason.UNKNOWN_KEY),
        "chain gap": (ReportSigner(m.observer("un", 2)[1], ChainHead(5, b"\x01" * 32)).sign(m.draft("un", 2)), 409, Reason.CHAIN_GAP),
    }  # fmt: skip
    good = m.next_report("un", 1)
    rid = Report.decode(Envelope.decode(good).payload).report_id
    conflict = ReportSigner(m.observer("un", 1)[1]).sign(m.draft(report_id=rid, narrative="other"))
    async with GatewayServer(w.config(burst=3, rate_per_s=0.2)) as server:
        async with aiohttp.ClientSession() as s:

            async def post(body: bytes) -> tuple[int, bytes, Mapping[str, str]]:
                async with s.post(f"{w.url}/v1/reports", data=body) as resp:
                    return resp.status, await resp.read(), resp.headers

            for name, (body, status, reason) in cases.items():
                got, payload, _ = await post(body)
                assert (got, json.loads(payload)["reason"]) == (status, reason.value), name
            ends = await end_offsets(
                w.bootstrap, "^" + w.topics.reports("un").replace(".", r"\.") + "$"
            )
            assert sum(ends.values()) == 0, "a refused report was published"

            status, receipt, _ = await post(good)
            assert status == 201
            assert (await post(good))[:2] == (200, receipt)  # idempotent, same receipt
            got, payload, _ = await post(conflict)
            assert (got, json.loads(payload)["reason"]) == (409, Reason.DUPLICATE_CONFLICT.value)
            got, payload, headers = await post(m.next_report("un", 1))  # third token
            assert got == 201
            got, payload, headers = await post(m.next_report("un", 1))
            assert (got, json.loads(payload)["reason"]) == (429, Reason.RATE_LIMITED.value)
            assert int(headers["Retry-After"]) >= 1

            async with s.get(f"{w.url}/v1/node") as resp:
                acc = verify_accreditation(Envelope.decode(await resp.read()), m.scenario.mandate)
            assert (acc.org, acc.role, acc.key_id) == ("un", Role.NODE, w.node_key.key_id)
            rc = verify_receipt(receipt, m.keyring, envelope=good)
            assert (rc.topic, rc.report_id) == (w.topics.reports("un"), rid)
        assert server.gateway.store.counts()["published"] == 2

        # An observer whose accreditation is not published yet is told unknown_key; its
        # report stays queued (not rejected), so the chain survives until it is accredited.
        newcomer = Home(tmp_path / "newcomer")
        key = init_observer(
            newcomer, observer_id="un-obs-new", org="un", gateway=w.url, passphrase=PASSPHRASE,
            mandate_envelope=m.scenario.mandate_envelope, at_ms=now_ms(), scrypt_n=2**12,
        )  # fmt: skip
        box = Outbox(newcomer.outbox)
        try:
            submit_file(newcomer, box, key, _report_file(tmp_path), at_ms=now_ms())
            async with GatewayClient(w.url) as client:
                result = await sync(newcomer, box, client, max_failures=1)
            assert (result.delivered, result.rejected, result.remaining) == (0, 0, 1)
            assert "unknown_key" in box.entries()[0].last_error
        finally:
            box.close()
    ends = await end_offsets(w.bootstrap, "^" + w.topics.reports("un").replace(".", r"\.") + "$")
    assert sum(ends.values()) == 2


async def test_scan_ends_when_records_below_the_watermark_end_were_deleted(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The resolve scan reads from its watermarks (0 here) to the end; records deleted below
    the end (log start offset above the watermark) must end the scan, not hang it."""
    w = await _world(kafka_bootstrap, tmp_path)
    topic = w.topics.reports("un")
    values = {(p, i): f"record {p}/{i}".encode() for p in (0, 1) for i in range(6)}
    async with GatewayServer(w.config()) as server:
        producer = reliable_producer(w.bootstrap)
        await producer.start()
        try:  # past the gateway: its watermarks stay at 0
            for (p, _), value in values.items():
                await producer.send_and_wait(topic, value, partition=p)
        finally:
            await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=w.bootstrap)
        await admin.start()
        try:  # partition 0: everything deleted; partition 1: the first half
            await admin.delete_records(
                {
                    TopicPartition(topic, 0): RecordsToDelete(6),
                    TopicPartition(topic, 1): RecordsToDelete(3),
                }
            )
        finally:
            await admin.close()
        wanted = {sha256(values[k]): k for k in ((0, 1), (1, 1), (1, 4))}
        async with asyncio.timeout(WAIT_S):
            found = await server.gateway._scan(set(wanted))
    # only what survived is found, at its offset
    assert {wanted[d]: (p, o) for d, (p, o, _ts) in found.items()} == {(1, 4): (1, 4)}


async def test_restricted_reports_the_head_the_clock_and_the_recipients(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A restricted report is published through the gateway (verified without decrypting) and
    continues the chain; the signed head, the clock and the recipients' keys are served."""
    import base64  # noqa: PLC0415

    from bus.crypto import verify_pae  # noqa: PLC0415
    from bus.model import EncryptionKey  # noqa: PLC0415
    from bus.receipt import HEAD_PAYLOAD_TYPE, head_payload  # noqa: PLC0415
    from bus.sealed import DecryptionKey  # noqa: PLC0415
    from bus.sign import sign_encryption_key  # noqa: PLC0415

    w = await _world(kafka_bootstrap, tmp_path)
    m = w.m
    mandate = m.scenario.mandate
    eks = {}
    producer = reliable_producer(kafka_bootstrap)
    await producer.start()
    try:
        for org in ("un", "osce"):
            k = DecryptionKey(org, demo_key(f"x25519:{org}:{w.topics.prefix}").seed)
            ek = EncryptionKey(org, k.public_key, mandate.not_before_ms, mandate.not_after_ms, 1,
                               m.mandate_id)  # fmt: skip
            m.apply(sign_encryption_key(ek, m.scenario.org_roots[org]))
            await producer.send_and_wait(w.topics.registry, m.registry[-1])
            eks[org] = ek
    finally:
        await producer.stop()
    await w.sealer.seal()
    plain = m.next_report("un", 1)
    sealed = m.signer("un", 1).sign_sealed(m.draft("un", 1), [eks["un"], eks["osce"]])
    async with GatewayServer(w.config()), aiohttp.ClientSession() as s:

        async def get(path: str) -> tuple[int, dict[str, object]]:
            async with s.get(w.url + path) as r:
                return r.status, await r.json()

        status, clock = await get("/v1/time")
        assert status == 200 and clock["max_skew_ms"] == 5 * 60 * 1000
        assert abs(int(clock["now_ms"]) - now_ms()) < 60_000  # type: ignore[call-overload]
        status, rec = await get("/v1/recipients")
        assert status == 200
        listed = {r["org"]: r for r in rec["recipients"]}  # type: ignore[attr-defined]
        assert sorted(listed) == ["osce", "un"]
        assert base64.b64decode(listed["osce"]["public_key_b64"]) == eks["osce"].public_key
        status, head = await get("/v1/observers/un-obs-1/head")
        assert status == 200 and (head["seq"], head["digest_b64"]) == (0, "")
        for body, want in ((plain, 201), (sealed, 201), (sealed, 200)):
            async with s.post(w.url + "/v1/reports", data=body,
                              headers={"content-type": "application/protobuf"}) as r:  # fmt: skip
                assert r.status == want, await r.read()
                # bus.receipt checks the envelope's fields for plain reports only: for a
                # restricted one, the signature and the digest it names
                rc = verify_receipt(await r.read(), m.keyring)
                assert rc.envelope_digest == sha256(body) and rc.observer_id == "un-obs-1"
        status, head = await get("/v1/observers/un-obs-1/head")
        assert (head["seq"], base64.b64decode(str(head["digest_b64"]))) == (2, sha256(sealed))
        payload = head_payload(
            org="un", observer_id="un-obs-1", seq=2, digest=sha256(sealed),
            as_of_ms=int(head["as_of_ms"]),  # type: ignore[call-overload]
            node_key_id=w.node_key.key_id,
        )  # fmt: skip
        signature = base64.b64decode(str(head["signature_b64"]))
        verify_pae(w.node_key.public_key, HEAD_PAYLOAD_TYPE, payload, signature)
        status, bad = await get("/v1/observers/UN OBS/head")
        assert status == 422 and bad["reason"] == "invalid_field"
    records = [r async for r in replay(w.bootstrap, [w.topics.reports("un")])]
    assert sorted(r.value for r in records) == sorted([plain, sealed])


async def test_a_correction_the_nodes_would_quarantine_is_refused_at_submission(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The observer learns at submission, not from a quarantine it never sees: a correction of
    a report that is not in its chain, and a second correction of a report already corrected,
    are refused by the gateway with the nodes' reason codes and never reach the topic; the fix
    (signed again at the same seq, naming the latest version) is published with a receipt."""
    w = await _world(kafka_bootstrap, tmp_path)
    base = _report_file(tmp_path).read_text()

    def file(name: str, corrects: str) -> Path:
        path = tmp_path / name
        path.write_text(f"{base}\ncorrects: {corrects}\n")
        return path

    async def submit_and_sync(path: Path, fixes: str | None = None) -> Entry:
        box = Outbox(w.home.outbox)
        try:
            entry = submit_file(w.home, box, w.observer_key, path, at_ms=now_ms(), fixes=fixes)
        finally:
            box.close()
        await _sync(w)
        box = Outbox(w.home.outbox, read_only=True)
        try:
            return next(e for e in box.entries() if e.report_id == entry.report_id)
        finally:
            box.close()

    async with GatewayServer(w.config()):
        original = await submit_and_sync(_report_file(tmp_path))
        assert original.state == DELIVERED
        nowhere = w.m.draft().report_id  # a report id no chain holds
        refused = await submit_and_sync(file("nowhere.yaml", nowhere))
        assert (refused.state, refused.http_status, refused.reason) == (
            REJECTED, 422, Reason.AMEND_TARGET_MISSING.value,
        )  # fmt: skip
        fixed = await submit_and_sync(file("fixed.yaml", original.report_id), refused.report_id)
        assert (fixed.state, fixed.seq, fixed.report_id) == (DELIVERED, 2, refused.report_id)
        stale = await submit_and_sync(file("stale.yaml", original.report_id))
        assert (stale.state, stale.reason) == (REJECTED, Reason.AMEND_SUPERSEDED.value)
        assert original.report_id in stale.detail and fixed.report_id in stale.detail
    records = [r async for r in replay(w.bootstrap, [w.topics.reports("un")])]
    assert [sha256(r.value) for r in records] == [original.digest, fixed.digest]
    rc = verify_receipt(fixed.receipt or b"", w.m.keyring, envelope=records[1].value)
    assert (rc.report_id, rc.seq) == (fixed.report_id, 2)
