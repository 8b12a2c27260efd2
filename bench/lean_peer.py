"""The lean peer: the simplest honest node, written out, as the bench's second yardstick.

``make bench`` runs it on the same records, in the same run, as the project's node, and prints
every ingest ratio against it as well as against the Ed25519 ceiling: it says what a node that
does only the necessary work costs per record here, so the gap to it is the project's own
overhead, not Python's nor Kafka's.

What it does per record, and nothing more:

* aiokafka ``getmany`` with large fetches over every report partition (no consumer group);
* upb parse of the envelope (``bus._pb`` generated classes); the canonical check: discard
  unknown fields, re-serialize deterministically, compare with the bytes read;
* exactly one signature, by a key the registry accredited (an observer of the topic's
  organization), verified over DSSE PAE by the chosen verifier (PyNaCl, or the compiled
  ``obus_ed25519`` with ``verifier="native"``);
* upb parse and canonical check of the report; its own fields in range (report id a UUIDv7,
  category, severity, confidence, chain fields, timestamps, narrative length, schema version 1:
  what a hostile observer could otherwise sign); its claims against the key's accreditation
  and the mandate (observer id, organization, topic, mandate id, zone and its box, validity
  and mandate windows, clock skew) and the report id not seen before;
* the per-observer hash chain: ``seq`` one past the head, ``prev_digest`` its SHA-256;
* one SQLite ``executemany`` per batch, in a thread, overlapped with judging the next batch.

It gives the project's accept/reject verdict on the bench's records: :func:`agreement` runs
both on valid records and on damaged copies (bit flips, unknown and repeated fields, truncation,
wrong topic, replays) and counts where they agree. It does not give the project's reason codes,
quarantine rows, seal trees, follow-up nor the other checks of :mod:`bus.model` (field
formats and ranges) that the bench's records never exercise: it is a yardstick, not a node.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import math
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaConsumer
from google.protobuf.message import DecodeError

from bench.gen import GenSpec, read
from bus._pb.obus.v1 import envelope_pb2, report_pb2
from bus.crypto import pae
from bus.ingest import Accepted, Ingestor, RecordRef, wall_clock_ms
from bus.kafka.admin import topic_partitions
from bus.model import (
    MAX_NARRATIVE_CHARS,
    MAX_SUB_TYPE_CHARS,
    PAYLOAD_REPORT,
    Accreditation,
    Envelope,
    Mandate,
    Role,
)
from bus.topics import Topics
from bus.trust import KeyRing
from bus.verify import ChainBook, Limits
from nodes.demo.scenario import ORGANIZATIONS, Scenario

Verify = Callable[[bytes, bytes, bytes], bool]
ORGS: Final = [o for o, _ in ORGANIZATIONS]
_PAE_HEAD: Final = pae(PAYLOAD_REPORT, b"")[: -len(b"0 ")]  # b"DSSEv1 <n> <type> "
_UUID7: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_CATEGORIES: Final = range(1, max(report_pb2.Category.values()) + 1)
_SCHEMA = """CREATE TABLE IF NOT EXISTS reports (
    topic TEXT, partition INTEGER, "offset" INTEGER, report_id TEXT PRIMARY KEY,
    observer_id TEXT, seq INTEGER, digest BLOB, raw BLOB)"""


def verifier(name: str) -> Verify:
    """``verify(public_key, message, signature) -> bool`` of PyNaCl or of ``obus_ed25519``."""
    if name == "native":
        # optional, built by make native; a ModuleNotFoundError says it is not
        native: Verify = importlib.import_module("obus_ed25519").verify
        return native
    import nacl.exceptions  # noqa: PLC0415
    import nacl.signing  # noqa: PLC0415

    def pynacl(public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            nacl.signing.VerifyKey(public_key).verify(message, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    return pynacl


@dataclass(frozen=True, slots=True)
class _Key:
    public_key: bytes
    subject_id: str
    org: str
    not_before_ms: int
    not_after_ms: int


class LeanJudge:
    """Accept or reject report records, in log order, as the lean peer does (module docstring).

    Args:
        scenario: the mandate and the registry's accreditations (read once, at start).
        verify: the signature verifier.
        clock: "now" in milliseconds, for the clock-skew check.
        max_clock_skew_ms: how far ``signed_at`` may run ahead of now (the project's default).
    """

    def __init__(
        self,
        scenario: Scenario,
        verify: Verify,
        clock: Callable[[], int] = wall_clock_ms,
        max_clock_skew_ms: int = Limits().max_clock_skew_ms,
    ) -> None:
        mandate: Mandate = scenario.mandate
        self.keys: dict[bytes, _Key] = {}
        for raw in scenario.accreditations:
            acc = Accreditation.decode(Envelope.decode(raw).payload)
            if acc.role == Role.OBSERVER and acc.mandate_id == mandate.mandate_id:
                self.keys[acc.key_id] = _Key(
                    acc.public_key, acc.subject_id, acc.org, acc.not_before_ms, acc.not_after_ms
                )
        self.mandate_id = mandate.mandate_id
        self.window = (mandate.not_before_ms, mandate.not_after_ms)
        self.zones = {z.id: (z.min_lat, z.max_lat, z.min_lon, z.max_lon) for z in mandate.zones}
        self.max_record_bytes = Limits().max_record_bytes
        self.skew = max_clock_skew_ms
        self.verify = verify
        self.clock = clock
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.seen: set[str] = set()

    def judge(self, raw: bytes | None, org: str | None) -> report_pb2.ObserverReport | None:
        """The report when the record is accepted (and the chain extended), else None."""
        if org is None or not raw or len(raw) > self.max_record_bytes:
            return None
        env = envelope_pb2.SignedEnvelope()
        rep = report_pb2.ObserverReport()
        try:
            env.ParseFromString(raw)
            env.DiscardUnknownFields()
            if env.SerializeToString(deterministic=True) != raw:
                return None
            if env.payload_type != PAYLOAD_REPORT or len(env.signatures) != 1:
                return None
            sig = env.signatures[0]
            key = self.keys.get(sig.key_id)
            payload = env.payload
            if key is None or not self.verify(
                key.public_key, b"%s%d %s" % (_PAE_HEAD, len(payload), payload), sig.sig
            ):
                return None
            rep.ParseFromString(payload)
            rep.DiscardUnknownFields()
            if rep.SerializeToString(deterministic=True) != payload:
                return None
        except DecodeError:
            return None
        observer, signed_at, observed_at = rep.observer_id, rep.signed_at_ms, rep.observed_at_ms
        seq, digest = self.heads.get(observer, (0, b""))
        box = self.zones.get(rep.zone)
        lo, hi = self.window
        loc = rep.location
        if (
            rep.seq != seq + 1
            or rep.prev_digest != digest
            or rep.category not in _CATEGORIES
            or not 1 <= rep.severity <= 5
            or not (math.isfinite(rep.confidence) and 0.0 <= rep.confidence <= 1.0)
            or rep.schema_version
            or not _UUID7.fullmatch(rep.report_id)
            or (rep.corrects and not _UUID7.fullmatch(rep.corrects))
            or rep.corrects == rep.report_id
            or len(rep.narrative) > MAX_NARRATIVE_CHARS
            or len(rep.sub_type) > MAX_SUB_TYPE_CHARS
            or observed_at <= 0
        ):
            return None
        if (
            observer != key.subject_id
            or rep.org != key.org
            or rep.org != org
            or not key.not_before_ms <= signed_at <= key.not_after_ms
            or rep.mandate_id != self.mandate_id
            or box is None
            or not (box[0] <= loc.lat <= box[1] and box[2] <= loc.lon <= box[3])
            or not lo <= observed_at <= hi
            or not lo <= signed_at <= hi
            or signed_at > self.clock() + self.skew
            or observed_at > signed_at + self.skew
            or rep.report_id in self.seen
        ):
            return None
        self.heads[observer] = (rep.seq, hashlib.sha256(raw).digest())
        self.seen.add(rep.report_id)
        return rep


def _damaged(raw: bytes, rng: random.Random, key: Any) -> Iterator[tuple[str, bytes]]:
    """Damaged copies of one valid envelope; ``key`` re-signs those damaged inside the payload
    (so the signature holds and the report's own rules must refuse them)."""
    b = bytearray(raw)
    i = rng.randrange(len(b) * 8)
    b[i // 8] ^= 1 << (i % 8)
    yield "bit flip", bytes(b)
    yield "truncated", raw[: rng.randrange(len(raw))]
    yield "envelope unknown field", raw + b"\xa0\x06\x01"  # field 100, varint 1
    env = envelope_pb2.SignedEnvelope()
    env.ParseFromString(raw)
    # repeated payload_type (field 1): the last one wins when parsed
    yield "envelope repeated field", b"\x0a\x01x" + raw

    def resigned(payload: bytes) -> bytes:
        out = envelope_pb2.SignedEnvelope(
            payload_type=env.payload_type,
            payload=payload,
            signatures=[
                envelope_pb2.Signature(key_id=key.key_id, sig=key.sign_pae(PAYLOAD_REPORT, payload))
            ],
        )
        return out.SerializeToString(deterministic=True)

    payload = env.payload
    yield "report unknown field", resigned(payload + b"\xa0\x06\x01")
    yield "report unknown field 20", resigned(payload + b"\xa0\x01\x05")
    yield "report repeated field", resigned(payload + b"\x30\x01")  # seq (6) again: 1
    yield "report truncated", resigned(payload[: rng.randrange(len(payload))])


def agreement(spec: GenSpec, parts: list[Path], records: int, seed: int = 19) -> dict[str, Any]:
    """Judge ``records`` valid records and damaged copies with the project's
    :class:`~bus.ingest.Ingestor` and with :class:`LeanJudge`, in the same order; count the
    records on which they agree (accepted by both or rejected by both).

    Before each valid record come its damaged copies and, once in a while, the record on
    another organization's topic or on a topic that is not a report topic; after it, a replay.
    """
    sc = spec.scenario()
    keyring = KeyRing(sc.mandate)
    for raw in sc.accreditations:
        keyring.apply(Envelope.decode(raw))
    project = Ingestor(keyring, ChainBook({}, lambda _rid: None))
    lean = LeanJudge(sc, verifier("pynacl"))
    observers = spec.observers
    keys = {o.observer_id: o.key for o in sc.observers}
    rng = random.Random(seed)
    total = agree = accepted = 0
    kinds: dict[str, int] = {}
    offset = 0

    def both(kind: str, raw: bytes, org: str | None) -> None:
        nonlocal total, agree, accepted, offset
        offset += 1
        ref = RecordRef("bench.reports", 0, offset, 0)
        theirs = isinstance(project.judge(ref, raw, org), Accepted)
        ours = lean.judge(raw, org) is not None
        total += 1
        agree += theirs == ours
        accepted += theirs
        if theirs != ours:
            kinds[kind] = kinds.get(kind, 0) + 1

    for n, (i, raw) in enumerate(read(parts)):
        if n >= records:
            break
        observer = observers[i]
        org = observer.split("-obs-")[0]
        for kind, bad in _damaged(raw, rng, keys[observer]):
            both(kind, bad, org)
        if n % 4 == 0:
            both("wrong topic", raw, ORGS[(ORGS.index(org) + 1) % len(ORGS)])
            both("not a report topic", raw, None)
        both("valid", raw, org)
        both("replay", raw, org)
    return {"records": total, "agree": agree, "accepted": accepted, "disagreements": kinds}


async def run(a: dict[str, Any], tree_cpu_s: Callable[[], float]) -> dict[str, Any]:
    """Consume every report record once as the lean peer; rate from the first batch on."""
    spec = GenSpec(**a["spec"])
    topics = Topics(a["prefix"])
    org_of = {topics.reports(o): o for o in ORGS}
    judge = LeanJudge(spec.scenario(), verifier(a.get("verifier", "pynacl")))
    db = sqlite3.connect(Path(a["db"]), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(_SCHEMA)
    tps = await topic_partitions(a["bootstrap"], pattern=topics.reports_pattern)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=a["bootstrap"], group_id=None, enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_wait_ms=50,
    )  # fmt: skip

    def write(rows: list[tuple[Any, ...]]) -> None:
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    await consumer.start()
    pending: asyncio.Future[None] | None = None
    n = rejected = n_first = 0
    t_first = c_first = 0.0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while n < a["total"]:
            batch = await consumer.getmany(timeout_ms=1000, max_records=a.get("max_records", 5000))
            rows: list[tuple[Any, ...]] = []
            for tp, records in batch.items():
                org = org_of.get(tp.topic)
                for r in records:
                    rep = judge.judge(r.value, org)
                    if rep is None:
                        rejected += 1
                        continue
                    rows.append(
                        (tp.topic, tp.partition, r.offset, rep.report_id, rep.observer_id,
                         rep.seq, judge.heads[rep.observer_id][1], r.value)
                    )  # fmt: skip
                if records and not t_first:
                    t_first, c_first, n_first = time.perf_counter(), tree_cpu_s(), len(records)
                n += len(records)
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(asyncio.to_thread(write, rows))
        if pending is not None:
            await pending
        wall, cpu = time.perf_counter() - t_first, tree_cpu_s() - c_first
    finally:
        await consumer.stop()
        stored = db.execute("SELECT count(*) FROM reports").fetchone()[0]
        db.close()
    return {
        "records": n, "rejected": rejected, "stored": stored, "seconds": wall,
        "rate": (n - n_first) / wall, "cpu_s": cpu, "per_cpu_s": (n - n_first) / cpu,
        "verifier": a.get("verifier", "pynacl"),
    }  # fmt: skip
