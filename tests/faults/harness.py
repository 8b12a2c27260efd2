"""What the fault tests share: a signed report stream, node processes, store snapshots, figures.

Nodes run as real ``python -m nodes.cli node`` processes (one per organization, own SQLite
store), so a test can kill -9 one and the others use both cores of the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bus.kafka.admin import ensure_topics
from bus.kafka.client import KafkaSecurity, reliable_producer
from bus.kafka.replay import replay
from bus.model import Envelope, Report, sha256
from bus.topics import Topics, standard_topics
from tests.kafka_broker import REPO
from tests.mission import Mission, make_mission

ORGS = ("un", "osce", "eu", "nato", "csto", "sco")
OBSERVERS_PER_ORG = 3
FIGURES_DIR = REPO / "var" / "faults"


@dataclass(frozen=True)
class Published:
    """One report of the stream: its topic's organization, record key and envelope bytes."""

    org: str
    observer_id: str
    report_id: str
    raw: bytes


@dataclass
class Stream:
    """A signed, chained report stream of 18 observers, generated once per session."""

    mission: Mission
    mandate_file: Path
    records: list[Published]

    @property
    def expected(self) -> dict[str, bytes]:
        """report id -> envelope digest of every report published."""
        return {p.report_id: sha256(p.raw) for p in self.records}

    @property
    def last_seq(self) -> dict[str, int]:
        return dict(Counter(p.observer_id for p in self.records))


def make_stream(count: int, work: Path) -> Stream:
    """`count` valid reports, round-robin over every observer (each observer's chain in order)."""
    m = make_mission(observers_per_org=OBSERVERS_PER_ORG, now_ms=int(time.time() * 1000))
    records = []
    for k in range(count):
        org = ORGS[k % len(ORGS)]
        i = (k // len(ORGS)) % OBSERVERS_PER_ORG + 1
        raw = m.next_report(org, i)
        report = Report.decode(Envelope.decode(raw).payload)
        records.append(Published(org, report.observer_id, report.report_id, raw))
    work.mkdir(parents=True, exist_ok=True)
    mandate_file = work / "mandate.bin"
    mandate_file.write_bytes(m.scenario.mandate_envelope)
    return Stream(m, mandate_file, records)


async def prepare_topics(
    bootstrap: str,
    topics: Topics,
    stream: Stream,
    *,
    replication: int = 3,
    partitions: int = 3,
    security: KafkaSecurity | None = None,
) -> None:
    """Create the topics (replicated) and publish the stream's accreditations."""
    specs = standard_topics(topics, ORGS, partitions=partitions)
    await ensure_topics(bootstrap, specs, replication=replication, security=security)
    producer = reliable_producer(bootstrap, security=security)
    async with asyncio.timeout(120):
        await producer.start()
        try:
            for raw in stream.mission.registry:
                await producer.send_and_wait(topics.registry, raw)
        finally:
            await producer.stop()


def fault_producer(bootstrap: str) -> AIOKafkaProducer:
    """The idempotent acks=all producer, with a request timeout that outlasts a failover.

    A broker SIGSTOPped for FREEZE_S plus the controller's fencing delay must not turn into a
    KafkaTimeoutError (aiokafka expires batches after request_timeout_ms).
    """
    return reliable_producer(bootstrap, request_timeout_ms=180_000, linger_ms=20)


@dataclass
class PublishResult:
    sent: int = 0
    failed: list[str] = field(default_factory=list)  # repr of each send that raised


async def publish_with_fault(
    producer: AIOKafkaProducer,
    topics: Topics,
    stream: Stream,
    at: int,
    fault: Callable[[], Coroutine[Any, Any, None]] | None = None,
    result: PublishResult | None = None,
) -> PublishResult:
    """Send the whole stream without waiting per record; start the fault after `at` sends.

    Every send's outcome is awaited at the end (bounded by the producer's request timeout).
    ``result.sent`` counts the sends handed to the producer so far (the fault can read it).
    """
    result = result if result is not None else PublishResult()
    futures: list[asyncio.Future[object]] = []
    task: asyncio.Task[None] | None = None
    for k, p in enumerate(stream.records):
        if k == at and fault is not None:
            task = asyncio.create_task(fault())
        futures.append(
            await producer.send(topics.reports(p.org), p.raw, key=p.observer_id.encode())
        )
        result.sent += 1
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    result.failed = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    if task is not None:
        await task
    return result


# -- node processes ----------------------------------------------------------------------


class NodeProcesses:
    """One ``obus node`` process per organization, each with its own SQLite store and log."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        mandate_file: Path,
        work: Path,
        orgs: Iterable[str] = ORGS,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        org_args: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``org_args``: arguments of one organization's node only (e.g. its ``--node-key``);
        a node seals only when its own arguments or ``extra_args`` say ``--seal``."""
        self.bootstrap = bootstrap
        self.topics = topics
        self.mandate_file = mandate_file
        self.work = work
        self.orgs = tuple(orgs)
        self.extra_args = extra_args
        self.env = env or {}
        self.org_args = org_args or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()

    def db(self, org: str) -> Path:
        return self.work / f"{org}.db"

    def log(self, org: str) -> Path:
        return self.work / f"{org}.log"

    def start(self, org: str | None = None) -> None:
        for o in [org] if org else self.orgs:
            assert o not in self.procs or self.procs[o].poll() is not None, f"{o} runs"
            self.starts[o] += 1
            with self.log(o).open("ab") as logf:
                self.procs[o] = subprocess.Popen(
                    [sys.executable, "-m", "nodes.cli", "node", "--org", o,
                     "--mandate", str(self.mandate_file), "--db", str(self.db(o)),
                     "--bootstrap", self.bootstrap, "--topic-prefix", self.topics.prefix,
                     "--log-level", "info", "--no-seal", *self.extra_args,
                     *self.org_args.get(o, ())],
                    stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                    env={**os.environ, "OBUS_LOG_JSON": "1", **self.env},
                )  # fmt: skip

    def kill(self, org: str) -> None:
        """kill -9 one node and reap it."""
        proc = self.procs[org]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def started(self, org: str) -> bool:
        """The latest process of ``org`` has logged ``node_started`` (its signal handlers are
        installed: SIGTERM now asks it to stop instead of killing it)."""
        if not self.log(org).exists():
            return False
        text = self.log(org).read_text(errors="replace")
        return text.count('"event": "node_started"') >= self.starts[org]

    def stop(self, timeout_s: float = 60) -> dict[str, int | None]:
        """SIGTERM every node, SIGKILL what is still there after timeout_s; exit codes.

        A node restarted just before (the crash tests restart one right after its kill) is
        first given up to timeout_s to finish starting: a SIGTERM that lands while Python is
        still importing would kill it (exit -15) before it could stop cleanly, and what the
        tests check is the clean stop.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
            p.poll() is None and not self.started(o) for o, p in self.procs.items()
        ):
            time.sleep(0.1)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for org, p in self.procs.items():
            try:
                codes[org] = p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)
                codes[org] = None  # had to be killed: it hung
        return codes

    def exited(self) -> dict[str, int]:
        return {o: p.returncode for o, p in self.procs.items() if p.poll() is not None}

    def progress(self, org: str) -> int:
        """Records the node has stored (accepted or quarantined), from its own positions."""
        return stored_positions(self.db(org), self.topics)

    async def wait_for(
        self, total: int, timeout_s: float, orgs: Iterable[str] | None = None
    ) -> None:
        """Wait (bounded) until every node stored `total` records; fail if one exits."""
        orgs = tuple(orgs or self.orgs)
        deadline = time.monotonic() + timeout_s
        while True:
            dead = {o: c for o, c in self.exited().items() if o in orgs}
            if dead:
                raise AssertionError(f"node(s) exited early {dead}:\n{self.tails(dead)}")
            done = {o: self.progress(o) for o in orgs}
            if all(v >= total for v in done.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes did not store {total} records in {timeout_s}s: {done}")
            await asyncio.sleep(1)

    def tails(self, orgs: Iterable[str], lines: int = 15) -> str:
        out = []
        for o in orgs:
            text = (
                self.log(o).read_text(errors="replace").splitlines() if self.log(o).exists() else []
            )
            out.append(f"--- {o}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


def stored_positions(db: Path, topics: Topics) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute(
                "SELECT coalesce(sum(next_offset), 0) FROM positions WHERE topic LIKE ?",
                (f"{topics.prefix}reports.%",),
            ).fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


@dataclass(frozen=True)
class StoreSnapshot:
    """What a node holds, in a form two nodes can be compared by."""

    reports: dict[str, bytes]  # report id -> envelope digest
    quarantine: dict[tuple[str, int, int], str]  # position -> reason
    heads: dict[str, tuple[int, bytes]]  # observer -> (seq, digest)
    positions: dict[tuple[str, int], int]
    duplicate_rows: int  # report rows minus distinct report ids (the schema forbids > 0)


def snapshot(db: Path) -> StoreSnapshot:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        rows = con.execute("SELECT report_id, digest FROM reports").fetchall()
        q = con.execute('SELECT topic, partition, "offset", reason FROM quarantine').fetchall()
        heads = con.execute("SELECT observer_id, seq, digest FROM chain_heads").fetchall()
        pos = con.execute("SELECT topic, partition, next_offset FROM positions").fetchall()
    reports = {r: bytes(d) for r, d in rows}
    return StoreSnapshot(
        reports=reports,
        quarantine={(t, p, o): reason for t, p, o, reason in q},
        heads={o: (s, bytes(d)) for o, s, d in heads},
        positions={(t, p): o for t, p, o in pos},
        duplicate_rows=len(rows) - len(reports),
    )


@dataclass
class LogCount:
    records: int
    distinct: int
    by_id: Counter[str]


async def count_log(bootstrap: str, topics: Topics, timeout_s: float = 600) -> LogCount:
    """Every record on the report topics (a replay without a group), counted by report id."""
    by_id: Counter[str] = Counter()
    records = 0
    async with asyncio.timeout(timeout_s):
        async for rec in replay(bootstrap, pattern=topics.reports_pattern):
            records += 1
            by_id[Report.decode(Envelope.decode(rec.value).payload).report_id] += 1
    return LogCount(records, len(by_id), by_id)


def figures(
    name: str, stream: Stream, log: LogCount, stores: dict[str, StoreSnapshot], **extra: object
) -> dict[str, object]:
    """Lost / doubled per node and on the log; written to var/faults/<name>.json."""
    expected = stream.expected
    per_node = {}
    for org, snap in stores.items():
        per_node[org] = {
            "accepted": len(snap.reports),
            "lost": len(expected.keys() - snap.reports.keys()),
            "unexpected": len(snap.reports.keys() - expected.keys()),
            "digest_mismatch": sum(
                1 for r, d in snap.reports.items() if r in expected and expected[r] != d
            ),
            "doubled": snap.duplicate_rows,
            "quarantined": len(snap.quarantine),
        }
    out: dict[str, object] = {
        "fault": name,
        "published": len(stream.records),
        "log_records": log.records,
        "log_lost": len(expected.keys() - log.by_id.keys()),
        "log_doubled": sum(c - 1 for c in log.by_id.values() if c > 1),
        "nodes": per_node,
        **extra,
    }
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nFIGURES {name}: {json.dumps(out)}")
    return out
