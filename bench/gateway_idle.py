"""The gateway holding 10,000 idle connections: does a genuine submit still get its answer?

    python -m bench.gateway_idle [--connections 10000] [--header-timeout 300]

Uses ``OBUS_BOOTSTRAP`` or starts a single-node broker with deploy/local/kafka.sh. The gateway
runs as ``obus gateway`` in a child process (its own open-files budget, started at the usual
soft limit of 1,024, which it must raise itself; its own log, JSON lines at info level); this
process is the client. Idle connections are plain TCP connections that
never send a byte, opened at most :data:`CONNECT_PARALLEL` at a time. ``--header-timeout`` is
set high enough that the gateway still holds every one while the submit runs (with the default
of 20 s it drops each 20 s after it opened, which is what it is for); the connection limit is
the default (16,384), so none is refused.

Prints (and ``tests/integration/test_gateway_abuse.py`` prints the same with ``-s``):

* connections opened by the client, and open at the gateway (its ``/healthz``) meanwhile;
* the answer time of a genuine submit (a fresh connection, ``POST /v1/reports``, acks=all)
  before the idle connections, and while the gateway holds them, with its status;
* the log lines the gateway wrote from the first idle connection until all were closed, by
  level and event;
* the gateway's resident memory before and while holding them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bus.epoch import GENESIS_DIGEST, FinalSeal, PartitionSeal
from bus.kafka.admin import ensure_topics
from bus.kafka.client import reliable_producer
from bus.kafka.replay import replay
from bus.merkle import MerkleTree
from bus.model import Accreditation, Category, Location, Mandate, Report, Role, encode, sha256
from bus.sealed_reader import SealedReader
from bus.sign import sign_accreditation
from bus.store.final import FinalStore
from bus.topics import Topics, standard_topics
from bus.uuid7 import uuid7
from nodes.demo.mission import LocalBroker
from nodes.demo.scenario import ORGANIZATIONS, build_scenario, demo_key
from nodes.observer.client import GatewayClient
from nodes.runtime.files import write_key

REPO = Path(__file__).resolve().parents[1]
CONNECT_PARALLEL = 256  # connections being opened at once by the client
SPARE_FDS = 256  # the client's descriptors besides the idle connections
WAIT_S = 120.0  # bound on every wait (opening, the gateway taking them, its start)
# The gateway starts with the open-files soft limit a login session usually gives (it raises
# its own to fit its connection limit).
LOGIN_OPEN_FILES = 1024


def raise_open_files(need: int) -> int | None:
    """Raise this process's open-files soft limit to ``need`` if below; the soft limit then,
    or None when the hard limit is below ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        return None
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        soft = need
    return soft


@asynccontextmanager
async def idle_connections(host: str, port: int, count: int) -> AsyncIterator[list[socket.socket]]:
    """``count`` TCP connections to ``host:port`` that send nothing, closed on exit."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one() -> None:
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (host, port))
            except BaseException:
                sock.close()
                raise
            socks.append(sock)

    try:
        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
            for _ in range(count):
                tasks.create_task(one())
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def health(url: str) -> dict[str, object]:
    """The gateway's ``/healthz`` document."""
    async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as resp:
        doc: dict[str, object] = await resp.json()
        return doc


async def open_at_gateway(url: str, at_least: int) -> int:
    """Wait until the gateway holds ``at_least`` connections besides the one asking; returns how
    many it holds besides that one."""
    async with asyncio.timeout(WAIT_S):
        while True:
            conns = (await health(url))["connections"]
            assert isinstance(conns, dict)
            if int(conns["open"]) - 1 >= at_least:
                return int(conns["open"]) - 1
            await asyncio.sleep(0.2)


async def timed_submit(url: str, envelope: bytes) -> tuple[int, float]:
    """POST one envelope as the observer does; (status, seconds until the answer)."""
    async with GatewayClient(url, timeout_s=60) as client:
        t = time.perf_counter()
        answer = await client.submit(envelope)
        return answer.status, time.perf_counter() - t


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class Figures:
    """What one run measured."""

    connections: int  # opened by the client
    held: int  # open at the gateway while the submit ran
    baseline_status: int
    baseline_s: float
    status: int
    answer_s: float
    log_lines: int
    log_events: dict[str, int]  # "level event" -> lines
    rss_before_mib: float
    rss_held_mib: float

    def lines(self) -> list[str]:
        """The figures, one per line."""
        events = ", ".join(f"{k} x{n}" for k, n in sorted(self.log_events.items())) or "none"
        return [
            f"idle connections opened by the client : {self.connections:,}",
            f"open at the gateway during the submit  : {self.held:,}",
            f"genuine submit, no idle connections    : {self.baseline_status} in"
            f" {self.baseline_s * 1000:.1f} ms",
            f"genuine submit, idle connections held  : {self.status} in"
            f" {self.answer_s * 1000:.1f} ms",
            f"gateway log lines during the run       : {self.log_lines} ({events})",
            f"gateway resident memory                : {self.rss_before_mib:.0f} MiB before,"
            f" {self.rss_held_mib:.0f} MiB holding them",
        ]


async def measure(
    url: str,
    pid: int,
    log: Path,
    count: int,
    envelopes: Callable[[], bytes],
) -> Figures:
    """Baseline submit, then ``count`` idle connections held while a genuine submit runs."""
    baseline_status, baseline_s = await timed_submit(url, envelopes())
    rss_before = rss_mib(pid)
    log_from = log.stat().st_size  # noqa: ASYNC240 - one stat, before the run
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with idle_connections(host, int(port), count) as socks:
        held = await open_at_gateway(url, len(socks))
        rss_held = rss_mib(pid)
        status, answer_s = await timed_submit(url, envelopes())
        opened = len(socks)
    await _until_closed(url)
    written = _lines_since(log, log_from)
    events: Counter[str] = Counter()
    for line in written:
        try:
            doc = json.loads(line)
            events[f"{doc.get('level')} {doc.get('event')}"] += 1
        except ValueError:
            events["(not JSON)"] += 1
    return Figures(opened, held, baseline_status, baseline_s, status, answer_s, len(written),
                   dict(events), rss_before, rss_held)  # fmt: skip


def _lines_since(log: Path, offset: int) -> list[str]:
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace").splitlines()


async def _until_closed(url: str) -> None:
    """Wait until the gateway saw the idle connections close (only the asking one is open)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            conns = (await health(url))["connections"]
            assert isinstance(conns, dict)
            if int(conns["open"]) <= 1:
                return
            await asyncio.sleep(0.2)


@asynccontextmanager
async def gateway_process(
    argv: list[str], url: str, log: Path, *, open_files: int = LOGIN_OPEN_FILES
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``obus gateway <argv>`` as a child process logging JSON lines to ``log``, started with
    ``open_files`` as its open-files soft limit; yields once its ``/healthz`` answers; stopped
    (SIGTERM, then SIGKILL) on exit."""
    env = {**os.environ, "OBUS_LOG_JSON": "1"}
    command = [sys.executable, "-m", "nodes.cli", "gateway", *argv]
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", f'ulimit -Sn {int(open_files)} && exec "$@"', "sh", *command,
            cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"the gateway exited {proc.returncode}: see {log}")
                try:
                    await health(url)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def seal_trust(bootstrap: str, topics: Topics, root: Mandate, path: Path) -> None:
    """A final store holding one final seal of the trust topics as they stand (the gateway
    judges with its node's final trust state, and no node runs here): epoch 1 over the RFC 6962
    roots of the real registry and mandate records, judged by a SealedReader as a sealer
    would, so the gateway checks those roots itself and the submit is really published."""
    held: dict[tuple[str, int], list[bytes | None]] = defaultdict(list)
    async for rec in replay(bootstrap, [topics.registry, topics.mandate]):
        held[(rec.topic, rec.partition)].append(rec.value)
    parts = {}
    for ref, values in sorted(held.items()):
        tree = MerkleTree(store_leaves=False)
        for v in values:
            tree.append(v or b"")
        parts[ref] = PartitionSeal(len(values), tree.root())
    seal = FinalSeal(root.mandate_id, 1, time.time_ns() // 1_000_000, parts,
                     hashlib.sha256(b"bench trust seal").digest(), GENESIS_DIGEST,
                     frozenset(o for o, _ in ORGANIZATIONS))  # fmt: skip
    reader = SealedReader(root, topics)
    for ref, values in held.items():
        reader.offer_records(ref, 0, values)
    store = FinalStore(path)
    try:
        store.check_identity("un", root.mandate_id, sha256(encode(root)))
        store.record(reader.offer_final_seal(seal), [seal])
    finally:
        store.close()


async def run(bootstrap: str, work: Path, count: int, header_timeout_s: float) -> Figures:
    """A mission on the broker, the gateway as a child process, and :func:`measure`."""
    now = time.time_ns() // 1_000_000
    sc = build_scenario(now, observers_per_org=1)
    topics = Topics(f"b{uuid.uuid4().hex[:8]}.")
    await ensure_topics(bootstrap, standard_topics(topics, [o for o, _ in ORGANIZATIONS]))
    node_key = demo_key(f"bench-gateway-idle:{topics.prefix}")
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
    (work / "mandate.bin").write_bytes(sc.mandate_envelope)
    write_key(work / "node-key.json", node_key)
    await seal_trust(bootstrap, topics, m, work / "un.final.db")
    observer = next(o for o in sc.observers if o.org == "un")
    signer = sc.signers[observer.observer_id]

    def envelope() -> bytes:
        t = time.time_ns() // 1_000_000
        return signer.sign(
            Report(
                report_id=uuid7(t), mandate_id=m.mandate_id, zone="north",
                observer_id=observer.observer_id, org="un", seq=1, prev_digest=b"",
                observed_at_ms=t - 60_000, signed_at_ms=t, location=Location(48.2, 38.0, 100, ""),
                category=Category.SHELLING, severity=3, confidence=0.8,
            )
        )  # fmt: skip

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    argv = ["--org", "un", "--mandate", str(work / "mandate.bin"),
            "--node-key", str(work / "node-key.json"), "--db", str(work / "gateway.db"),
            "--port", str(port), "--bootstrap", bootstrap, "--topic-prefix", topics.prefix,
            "--final-db", str(work / "un.final.db"),
            "--header-timeout", str(header_timeout_s)]  # fmt: skip
    log = work / "gateway.log"
    async with gateway_process(argv, url, log) as proc:
        return await measure(url, proc.pid, log, count, envelope)


def main() -> int:
    """``python -m bench.gateway_idle``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--header-timeout", type=float, default=300.0, metavar="SECONDS")
    args = parser.parse_args()
    if raise_open_files(args.connections + SPARE_FDS) is None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(f"the open-files hard limit ({hard}) is below {args.connections + SPARE_FDS}")
        return 2
    with tempfile.TemporaryDirectory(prefix="obus-gateway-idle-") as tmp:
        work = Path(tmp)
        broker = None
        bootstrap = os.environ.get("OBUS_BOOTSTRAP")
        if not bootstrap:
            broker = LocalBroker(work / "kafka")
            broker.start()
            bootstrap = broker.bootstrap
        try:
            figures = asyncio.run(run(bootstrap, work, args.connections, args.header_timeout))
        finally:
            if broker is not None:
                broker.stop()
    print("\n".join(figures.lines()))
    return 0 if figures.status == 201 and figures.held >= args.connections else 1


if __name__ == "__main__":
    sys.exit(main())
