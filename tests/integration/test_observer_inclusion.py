"""Receipts checked for inclusion in the sealed log, end to end on a real broker with real sealers.

Four organizations' nodes run their sealers (the mandate's k = 4: each final seal needs all of
them); UN's gateway judges with UN's node's final store. An observer submits reports with the
CLI (``obus observer submit``, one restricted to UN and OSCE with ``--to un,osce``; two, then a
third once the first two are sealed); once every sealer has judged them, ``obus observer
receipts --verify --inclusion`` fetches each report's proof from the gateway (``GET
/v1/proofs/...``) and checks it with the mandate file alone: every receipt is verified, with its
epoch (the third's a later one) and the four cosigning organizations. The proof
the gateway serves is the one ``obus audit prove`` builds from the log, and the full check
against the log passes. Then a hostile gateway (a proxy in front of the real one) serves a proof
for another offset and a note with a cosignature line removed, and the outbox holds another
report's receipt: the same command refuses each with its reason (exit 1).

:func:`sealed_world` and its helpers are shared with tests/integration/test_observer_recovery.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bus.crypto import SigningKey
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.model import EncryptionKey, Role
from bus.receipt import verify_receipt
from bus.seal_proof import SealProof
from bus.sealed import DecryptionKey
from bus.sign import sign_encryption_key
from bus.topics import Topics, TopicSpec, standard_topics
from nodes.auditor.prove import check_live, prove_live
from nodes.demo.scenario import ORGANIZATIONS, demo_key
from nodes.gateway.http import GatewayServer
from nodes.gateway.service import GatewayConfig
from nodes.observer.client import GatewayClient
from nodes.observer.device import Home, init_observer, now_ms, receipt_keyring
from nodes.observer.outbox import DELIVERED, Outbox
from nodes.runtime.files import write_key
from tests.integration.test_observer_gateway import PASSPHRASE, _report_file
from tests.kafka_broker import free_ports
from tests.mission import Mission, make_mission
from tests.sealers import Fleet, sealer_config

pytestmark = [pytest.mark.kafka]
REPO = Path(__file__).resolve().parents[2]
ORGS = [o for o, _ in ORGANIZATIONS]
SEALING = ("un", "osce", "eu", "nato")  # the mandate's k = 4 organizations, all reachable
WAIT_S = 120


@dataclass
class SealedWorld:
    """One mission on the broker whose organizations' nodes run their sealers: topics, the
    sealers (``fleet``), UN's gateway key and one UN observer's home."""

    bootstrap: str
    topics: Topics
    m: Mission
    tmp: Path
    node_key: SigningKey
    home: Home
    observer_key: SigningKey
    port: int
    fleet: Fleet
    sealing: tuple[str, ...]
    registry_size: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def final_db(self, org: str) -> Path:
        """The final store of ``org``'s node (written by its sealer)."""
        return self.tmp / f"{org}.final.db"

    def config(self, **changes: object) -> GatewayConfig:
        """UN's gateway on UN's node's final store."""
        base: dict[str, object] = {
            "org": "un",
            "bootstrap": self.bootstrap,
            "db_path": self.tmp / "gateway.db",
            "mandate": self.m.scenario.mandate,
            "node_key": self.node_key,
            "topics": self.topics,
            "port": self.port,
            "registry_refresh_s": 0.5,
            "final_db": self.final_db("un"),
        }
        base.update(changes)
        return GatewayConfig(**base)  # type: ignore[arg-type]


def _count(db: Path, topic: str) -> int:
    """How many records of ``topic`` the final store holds a settled final verdict on (a
    ``deferred`` row is settled by the next epoch: tests/final_rows.py)."""
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        (n,) = con.execute(
            "SELECT count(*) FROM verdicts WHERE topic = ? AND status <> 'deferred'", (topic,)
        ).fetchone()
    return int(n)


async def until_judged(w: SealedWorld, topic: str, size: int) -> None:
    """Until every sealing node's final store holds a final verdict on ``size`` records of
    ``topic`` (bounded by WAIT_S; a sealer that stopped fails the test at once)."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not all(_count(w.final_db(o), topic) >= size for o in w.sealing):
                w.fleet.check()
                await asyncio.sleep(0.3)
    except TimeoutError:
        counts = {o: _count(w.final_db(o), topic) for o in w.sealing}
        pytest.fail(f"waited {WAIT_S} s for {size} final verdicts on {topic}: {counts}")


def final_verdicts(w: SealedWorld, org: str, topic: str) -> list[tuple[int, int, str, str, str]]:
    """(partition, offset, status, reason, report id) of every final verdict on ``topic`` in
    ``org``'s node's final store, by position."""
    with sqlite3.connect(f"file:{w.final_db(org)}?mode=ro", uri=True) as con:
        rows = con.execute(
            'SELECT partition, "offset", status, reason, report_id FROM verdicts WHERE topic = ?'
            ' ORDER BY partition, "offset"',
            (topic,),
        )
        return [(p, o, s, r, rid) for p, o, s, r, rid in rows]


async def publish_trust(w: SealedWorld, *records: bytes) -> None:
    """Publish registry records and wait until every sealing node has judged them (sealed)."""
    producer = reliable_producer(w.bootstrap)
    await producer.start()
    try:
        for raw in records:
            await producer.send_and_wait(w.topics.registry, raw)
    finally:
        await producer.stop()
    w.registry_size += len(records)
    await until_judged(w, w.topics.registry, w.registry_size)


@asynccontextmanager
async def sealed_world(
    bootstrap: str, tmp: Path, sealing: tuple[str, ...] = SEALING
) -> AsyncIterator[SealedWorld]:
    """A mission whose registry (observers, the organizations' node keys, UN's gateway key and
    the field observer ``un-obs-field``) is sealed by the sealers of ``sealing``, which run
    until the block ends."""
    t0 = now_ms()
    m = make_mission(2, now_ms=t0)
    sc = m.scenario
    topics = Topics(f"oi{uuid.uuid4().hex[:10]}.")
    specs = standard_topics(topics, ORGS, partitions=2)
    if not any(s.name == topics.seals for s in specs):
        specs.append(TopicSpec(topics.seals, 1))
    await ensure_topics(bootstrap, specs)
    node_key = demo_key(f"inclusion-gateway:{topics.prefix}")
    m.accredit("un-gateway", "un", node_key, Role.NODE)
    home = Home(tmp / "observer")
    (port,) = free_ports(1)
    observer_key = init_observer(
        home, observer_id="un-obs-field", org="un", mandate_envelope=sc.mandate_envelope,
        gateway=f"http://127.0.0.1:{port}", passphrase=PASSPHRASE, at_ms=t0, scrypt_n=2**12,
    )  # fmt: skip
    m.accredit("un-obs-field", "un", observer_key, Role.OBSERVER)
    registry = [*m.registry, *sc.node_accreditations]
    producer = reliable_producer(bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.mandate, sc.mandate_envelope)
        for raw in registry:
            await producer.send_and_wait(topics.registry, raw)
    finally:
        await producer.stop()
    (tmp / "mandate.bin").write_bytes(sc.mandate_envelope)
    write_key(tmp / "node-key.json", node_key)
    fleet = Fleet()
    try:
        for org in sealing:
            fleet.start(
                sealer_config(bootstrap, topics, sc, org, tmp / f"{org}.final.db", snapshot_every=2)
            )
        w = SealedWorld(bootstrap, topics, m, tmp, node_key, home, observer_key, port, fleet,
                        sealing, len(registry))  # fmt: skip
        await until_judged(w, topics.registry, len(registry))
        yield w
    finally:
        await fleet.stop()


async def publish_encryption_keys(w: SealedWorld, orgs: tuple[str, ...]) -> None:
    """Each of ``orgs`` publishes an encryption key for restricted reports (sealed)."""
    mandate = w.m.scenario.mandate
    records = []
    for org in orgs:
        k = DecryptionKey(org, demo_key(f"x25519:{org}:{w.topics.prefix}").seed)
        ek = EncryptionKey(org, k.public_key, mandate.not_before_ms, mandate.not_after_ms, 1,
                           mandate.mandate_id)  # fmt: skip
        records.append(sign_encryption_key(ek, w.m.scenario.org_roots[org]).encode())
    await publish_trust(w, *records)


async def obus(home: Home, *args: str) -> tuple[int, str]:
    """Run ``obus observer ARGS --home HOME`` as a subprocess; (exit code, stdout)."""
    env = {**os.environ, "OBUS_PASSPHRASE": PASSPHRASE}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.cli", "observer", *args, "--home", str(home.root),
        cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    if proc.returncode not in (0, 1):
        pytest.fail(f"obus observer {' '.join(args)} exited {proc.returncode}: {err.decode()}")
    return proc.returncode, out.decode()


@asynccontextmanager
async def hostile_gateway(
    upstream: str, tamper: Callable[[str, dict[str, Any]], dict[str, Any]]
) -> AsyncIterator[str]:
    """A proxy in front of the real gateway that answers every request as the gateway does,
    except proofs: ``tamper(path, proof)`` changes each before it is served. Yields its URL."""

    async def forward(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as s, s.get(upstream + request.path) as r:
            body = await r.read()
            if request.path.startswith("/v1/proofs/") and r.status == 200:
                body = json.dumps(tamper(request.path, json.loads(body))).encode()
            return web.Response(status=r.status, body=body, content_type=r.content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _deliver(w: SealedWorld) -> None:
    """``obus observer sync``: whatever ``submit`` could not deliver at once is delivered."""
    code, out = await obus(w.home, "sync", "--max-seconds", "60", "--backoff-cap", "1")
    assert code == 0 and "still queued 0" in out, out


def _without_last_cosignature(note: str) -> str:
    lines = note.splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if line.startswith("\u2014 "))
    return "".join(lines[:last] + lines[last + 1 :])


async def test_receipts_are_verified_in_the_log_the_sealers_sealed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with sealed_world(kafka_bootstrap, tmp_path) as w:
        await publish_encryption_keys(w, ("un", "osce"))
        path = _report_file(tmp_path)
        topic = w.topics.reports("un")
        async with GatewayServer(w.config()):
            assert (await obus(w.home, "submit", str(path)))[0] == 0
            code, out = await obus(w.home, "submit", "--to", "un,osce", str(path))
            assert code == 0 and "restricted to un, osce" in out, out
            await _deliver(w)
            await until_judged(w, topic, 2)
            code, out = await obus(w.home, "receipts", "--verify", "--inclusion", "--json")
            assert code == 0 and [c["state"] for c in json.loads(out)] == ["verified"] * 2, out

            # a third report, sealed in a later epoch: the gateway's proofs grow with the log
            assert (await obus(w.home, "submit", str(path)))[0] == 0
            await _deliver(w)
            box = Outbox(w.home.outbox, read_only=True)
            try:
                entries = box.entries(DELIVERED)
                ring = receipt_keyring(w.home, box, at_ms=now_ms())
            finally:
                box.close()
            assert [e.seq for e in entries] == [1, 2, 3]
            receipts = [verify_receipt(e.receipt or b"", ring, envelope=e.envelope)
                        for e in entries]  # fmt: skip
            await until_judged(w, topic, 3)
            for org in w.sealing:  # every node's final verdict: the three accepted
                assert final_verdicts(w, org, topic) == sorted(
                    (r.partition, r.offset, "accepted", "", r.report_id) for r in receipts
                ), org

            code, out = await obus(w.home, "receipts", "--verify", "--inclusion", "--json")
            checks = json.loads(out)
            assert code == 0, out
            assert [c["state"] for c in checks] == ["verified"] * 3, checks
            assert all(c["epoch"] > 0 and c["orgs"] == sorted(SEALING) for c in checks), checks
            assert checks[2]["epoch"] > checks[0]["epoch"], checks
            code, out = await obus(w.home, "receipts", "--verify", "--inclusion")
            assert code == 0 and "3 of 3 receipted reports verified" in out, out
            assert f"cosigned by {', '.join(sorted(SEALING))}" in out, out

            # the proof served is the one `obus audit prove` builds from the log
            async with GatewayClient(w.url) as client:
                served = [
                    json.loads((await client.proof(r.topic, r.partition, r.offset)).body)
                    for r in receipts
                ]
            mandate = w.m.scenario.mandate
            for r, doc in zip(receipts, served, strict=True):
                where = (r.topic, r.partition, r.offset)
                built = await prove_live(w.bootstrap, w.topics, mandate, where=where,
                                         report_id=None)  # fmt: skip
                assert built.to_json() == doc
                orgs = await check_live(SealProof.from_json(doc), w.bootstrap, w.topics, mandate)
                assert orgs == frozenset(SEALING)

            # A hostile gateway, and another report's receipt in the outbox: each refused.
            evil = Home(tmp_path / "observer-copy")
            shutil.copytree(w.home.root, evil.root)
            by_offset = {(r.partition, r.offset): d for r, d in zip(receipts, served, strict=True)}
            first, second, third = receipts

            def tamper(path: str, proof: dict[str, Any]) -> dict[str, Any]:
                _, _, _, _, partition, offset = path.split("/")
                at = (int(partition), int(offset))
                if at == (first.partition, first.offset):  # the proof of another offset
                    other: dict[str, Any] = by_offset[(second.partition, second.offset)]
                    return other
                if at == (second.partition, second.offset):  # a cosignature line removed
                    seal = dict(proof["seal"])
                    seal["note"] = _without_last_cosignature(seal["note"])
                    return {**proof, "seal": seal}
                return proof

            async with hostile_gateway(w.url, tamper) as url:
                config = json.loads(evil.config.read_text())
                evil.config.write_text(json.dumps({**config, "gateway": url}))
                with sqlite3.connect(evil.outbox) as con:  # seq 3 holds seq 1's receipt
                    con.execute(
                        "UPDATE outbox SET receipt = ? WHERE seq = 3", (entries[0].receipt,)
                    )
                code, out = await obus(evil, "receipts", "--verify", "--inclusion", "--json")
            assert code == 1, out
            refused = {c["seq"]: (c["state"], c["reason"]) for c in json.loads(out)}
            assert refused == {
                1: ("refused", "receipt_mismatch"),
                2: ("refused", "seal_quorum_not_met"),
                3: ("refused", "receipt_mismatch"),
            }, out
            assert third.seq == 3
